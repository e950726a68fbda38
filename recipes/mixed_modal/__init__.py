"""The ``mixed_modal`` recipe family, registered through the same hook a third-party family uses."""

from jevons.framework.plugin import hookimpl
from jevons.recipes.mixed_modal.family import MixedModalFamily


@hookimpl
def register_recipes(register):
    register(MixedModalFamily())
