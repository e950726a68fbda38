"""Compute kernels: a plain-PyTorch reference per op, faster paths, one dispatch point.

This package is itself a built-in plugin: it registers its implementations
through ``register_kernels`` like any third-party kernel package would.
"""

from jevons.framework.plugin import hookimpl


@hookimpl
def register_kernels(register):
    """The built-in kernels. Ops arrive with the plugins that need them."""
