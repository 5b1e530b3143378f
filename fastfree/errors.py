"""One exception type for bad user input, so the CLI can print it without a traceback."""


class FastFreeError(ValueError):
    """A problem with the user's input: the message names the problem and the fix."""
