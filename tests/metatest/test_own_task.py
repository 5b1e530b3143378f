"""A task of one's own: which outputs a smaller task starts from, which selected learner a shot count gets,
and BatchNorm on the support set's statistics."""

import pytest
import torch

from fastfree.errors import FastFreeError
from fastfree.free.run import learner_init
from fastfree.metatest.adapt import functional_template
from fastfree.metatest.own_task import adapted_probabilities, head_for_ways, nearest_shots, on_batch_statistics
from fastfree.models.conv4 import Conv4
from tests.conftest import DEVICES


def test_a_smaller_task_takes_the_classifiers_first_outputs():
    state = {"features.0.weight": torch.randn(4, 3), "classifier.weight": torch.arange(15.).view(5, 3),
             "classifier.bias": torch.arange(5.)}
    got = head_for_ways(state, 3)
    assert torch.equal(got["classifier.weight"], state["classifier.weight"][:3])
    assert torch.equal(got["classifier.bias"], torch.arange(3.))
    assert got["features.0.weight"] is state["features.0.weight"]
    assert head_for_ways(state, 5)["classifier.bias"].shape == (5,)
    with pytest.raises(FastFreeError, match="meta-trained on 5-way tasks"):
        head_for_ways(state, 6)


def test_the_nearest_selected_shot_count_ties_to_the_smaller():
    assert nearest_shots({1: 0, 5: 0}, 1) == 1
    assert nearest_shots({1: 0, 5: 0}, 3) == 1
    assert nearest_shots({1: 0, 5: 0}, 3.5) == 5
    assert nearest_shots({1: 0, 5: 0}, 20) == 5
    assert nearest_shots({None: 0}, 3) is None  # a single pick serves every shot count


def _task(ways=3, shots=2, queries=4, size=16, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    support = torch.randn(ways * shots, 3, size, size, generator=g, dtype=torch.float64)
    query = torch.randn(ways * queries, 3, size, size, generator=g, dtype=torch.float64)
    return support.to(device), torch.arange(ways).repeat_interleave(shots).to(device), query.to(device)


def _init(ways=3, size=16):
    torch.manual_seed(0)
    return learner_init(functional_template(Conv4(ways, 8, size)).double())


def test_support_statistics_are_the_ones_adaptation_trained_with():
    """The frozen copy gives the support set exactly what the training-mode model gives it."""
    support, _, query = _task()
    model = _init().template
    frozen = on_batch_statistics(model, support)
    with torch.no_grad():
        assert torch.allclose(frozen(support), model(support), rtol=0, atol=1e-12)
        assert not torch.allclose(frozen(query), model(query))  # the query's own statistics differ
    assert model.training and all(m.running_mean is None for m in model.modules() if hasattr(m, "running_mean"))


@pytest.mark.parametrize("device", DEVICES)
def test_with_support_statistics_each_query_image_is_predicted_on_its_own(device):
    support, labels, query = _task(device=device)
    init = _init()
    for bn, independent in (("support", True), ("query", False)):
        together = adapted_probabilities(init, support, labels, query, 3, 0.1, bn)
        alone = torch.cat([adapted_probabilities(init, support, labels, query[i:i + 1], 3, 0.1, bn)
                           for i in range(len(query))])
        assert torch.allclose(together, alone, rtol=0, atol=1e-12) == independent, bn
        assert torch.allclose(together.sum(-1), torch.ones(len(query), dtype=torch.float64, device=device))
    with pytest.raises(FastFreeError, match="use one of query, support"):
        adapted_probabilities(init, support, labels, query, 3, 0.1, "running")


@pytest.mark.parametrize("device", DEVICES)
def test_a_large_query_set_gets_the_whole_batchs_statistics_a_chunk_at_a_time(device):
    """Under the protocol's rule (the query batch's statistics) and the support's, predicting 12 query
    images 5 at a time (statistics gathered per layer over the chunks) gives what one batch gives."""
    support, labels, query = _task(queries=4, device=device)
    init = _init()
    for bn in ("query", "support"):
        whole = adapted_probabilities(init, support, labels, query, 3, 0.1, bn)
        chunked = adapted_probabilities(init, support, labels, query, 3, 0.1, bn, chunk=5)
        assert torch.allclose(whole, chunked, rtol=0, atol=1e-10), bn
    model = init.template.to(device)
    with torch.no_grad():
        assert torch.allclose(on_batch_statistics(model, query, chunk=5)(query), model(query), rtol=0, atol=1e-10)
    with pytest.raises(FastFreeError, match="chunk must be a positive"):
        adapted_probabilities(init, support, labels, query, 3, 0.1, "query", chunk=0)
