"""Recipe families, one subpackage each; each registers through ``register_recipes``."""
