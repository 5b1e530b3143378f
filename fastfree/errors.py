"""One exception type for bad user input, so the CLI can print it without a traceback."""

from collections.abc import Callable
from typing import NoReturn


class FastFreeError(ValueError):
    """A problem with the user's input: the message names the problem and the fix."""


def exit_like_the_cli(main: Callable[[], int]) -> NoReturn:
    """Run a `python -m` tool's main: a refusal ends it as the `fastfree` command's do, with its one-line
    message on stderr and exit status 1, and no traceback; anything else propagates."""
    try:
        raise SystemExit(main())
    except FastFreeError as e:
        raise SystemExit(f"error: {e}") from None
