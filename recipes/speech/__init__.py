"""The ``speech`` recipe family, registered through the same hook a third-party family uses."""

from jevons.framework.plugin import hookimpl
from jevons.recipes.speech.family import SpeechFamily


@hookimpl
def register_recipes(register):
    register(SpeechFamily())
