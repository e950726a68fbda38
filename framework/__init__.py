"""The Jevons framework: hooks, plugin manager, config, lifecycle, checkpoints, data.

It knows no model and no method; families and plugins bring those.
"""

__version__ = "0.1.0"
