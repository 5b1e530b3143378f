"""exit_on_refusal: a tool's refusal ends it with its one-line message, no traceback."""

import pytest

from fastfree.errors import FastFreeError, exit_on_refusal


def test_a_refusal_exits_with_its_message_and_a_clean_run_with_mains_status():
    def refuses() -> int:
        raise FastFreeError("--images 1: pass --images between 2 and 10")

    with pytest.raises(SystemExit) as stop:
        exit_on_refusal(refuses)
    assert stop.value.code == "error: --images 1: pass --images between 2 and 10"  # printed to stderr, status 1
    assert stop.value.__cause__ is None and stop.value.__suppress_context__
    with pytest.raises(SystemExit) as stop:
        exit_on_refusal(lambda: 0)
    assert stop.value.code == 0
    with pytest.raises(KeyError):  # a bug is not dressed as a refusal
        exit_on_refusal(lambda: {}["x"])
