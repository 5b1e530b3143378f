"""One exception type for bad user input, so the CLI can print it without a traceback."""

from collections.abc import Callable
from typing import NoReturn


class FastFreeError(ValueError):
    """A problem with the user's input: the message names the problem and the fix."""


def exit_on_refusal(main: Callable[[], int]) -> NoReturn:
    """Run a `python -m` tool's main: a refusal ends it with its one-line message on stderr ("error: ...")
    and exit status 1, no traceback (the `fastfree` command prints the same line and exits 2); anything
    else propagates."""
    try:
        raise SystemExit(main())
    except FastFreeError as e:
        raise SystemExit(f"error: {e}") from None
