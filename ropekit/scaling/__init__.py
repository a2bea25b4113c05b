"""The scaling core: closed-form methods, the config view, the request model, and the engine (plan, apply, policy)."""
