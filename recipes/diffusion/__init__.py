"""The ``diffusion`` recipe family, registered through the same hook a third-party family uses."""

from jevons.framework.plugin import hookimpl
from jevons.recipes.diffusion.family import DiffusionFamily


@hookimpl
def register_recipes(register):
    register(DiffusionFamily())
