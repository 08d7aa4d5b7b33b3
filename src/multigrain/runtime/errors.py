"""The one exception type for bad user input; the CLI prints its message as a single line."""


class MultiGrainError(ValueError):
    """A problem with the user's input or environment, with a message that says how to fix it."""
