"""The ``llm`` recipe family, registered through the same hook a third-party family uses."""

from jevons.framework.plugin import hookimpl
from jevons.recipes.llm.family import LLMFamily


@hookimpl
def register_recipes(register):
    register(LLMFamily())
