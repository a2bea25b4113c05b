"""Integrations with training libraries (each imports its library; import them directly)."""
