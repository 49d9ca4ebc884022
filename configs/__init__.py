"""ml-collections experiment configs; each module has ``get_config()``."""
