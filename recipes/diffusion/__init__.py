"""The ``diffusion`` recipe family, registered through the same hook a third-party family uses."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jevons.framework.plugin import hookimpl
from jevons.recipes.diffusion.family import DiffusionFamily

if TYPE_CHECKING:
    from jevons.framework.family import Family, RecipeDirectory


@hookimpl
def register_recipes(register: Callable[[Family[Any] | RecipeDirectory], None]) -> None:
    register(DiffusionFamily())
