"""GraphedCallable's fallback on a CPU (capture simulated): what it reports when capture fails."""

import pytest
import torch

from fastfree.engine.graphs import GraphedCallable


def test_a_failed_capture_reports_its_cause_not_cudas_follow_up_error(monkeypatch):
    """When something inside the captured region breaks the capture (say a .item()), CUDA's end of
    capture raises its own error while the first is handled: the report names the first."""
    def capture_fails(self, flat, spec):
        try:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")  # the cause
        except RuntimeError:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")

    monkeypatch.setattr(GraphedCallable, "_capture", capture_fails)
    graphed = GraphedCallable(lambda x: x * 2, name="the test function")
    with pytest.warns(RuntimeWarning, match="capture of the test function failed"):
        out = graphed(torch.ones(3))
    assert torch.equal(out, torch.full((3,), 2.0))
    assert graphed.fallback == "RuntimeError: CUDA error: operation not permitted when stream is capturing"


def test_a_capture_out_of_memory_frees_its_static_copies_and_runs_eagerly(monkeypatch):
    def capture_runs_out(self, flat, spec):
        self.static_in = [a.clone() for a in flat]  # as _capture does before it records
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")

    monkeypatch.setattr(GraphedCallable, "_capture", capture_runs_out)
    graphed = GraphedCallable(lambda x: x + 1, name="the epoch")
    with pytest.warns(RuntimeWarning, match="capture of the epoch failed"):
        out = graphed(torch.zeros(4))
    assert torch.equal(out, torch.ones(4)) and graphed.fallback.startswith("OutOfMemoryError: CUDA out of memory")
    assert graphed.static_in is None and graphed.static_out is None  # nothing held for a graph that never replays
