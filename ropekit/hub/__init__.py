"""Resolve a Hub ID, a local folder or a config file: HF cache, Hub, model-card lineage, bundled catalog."""
