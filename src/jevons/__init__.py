"""Jevons: a plugin-based training framework for efficient generative models.

The subpackages are the repository's top-level folders (``framework``,
``plugins``, ``recipes``, ``kernels``, ``launch``), reached through the
relative symlinks beside this file, so Python, type checkers and language
servers all resolve ``jevons.*`` the same way (docs/architecture.md, "Layout").
"""
