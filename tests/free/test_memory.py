"""The memory bank: FIFO per global class, replay tasks mixing teachers, reproducibility, checkpoints."""

import io

import pytest
import torch

from fastfree.errors import FastFreeError
from fastfree.free.memory import MemoryBank

SHAPE = (3, 8, 8)


def tagged(classes, start=0):
    """Images whose pixels encode (class, serial number): channel 0 = class / 1000, channels 1-2 = serial / 1e4."""
    classes = torch.as_tensor(classes, dtype=torch.int64)
    serial = torch.arange(start, start + len(classes), dtype=torch.float64)
    images = torch.empty(len(classes), *SHAPE, dtype=torch.float64)
    images[:, 0] = (classes.double() / 1000)[:, None, None]
    images[:, 1:] = (serial / 1e4)[:, None, None, None]
    return images, classes


def serials(images):
    return (images[:, 1, 0, 0].double() * 1e4).round().long().tolist()


def test_fifo_keeps_exactly_the_newest_images_across_calls():
    bank = MemoryBank(capacity_per_class=5, image_shape=SHAPE, dtype=torch.float64)
    serial = 0
    for n in (3, 4, 2):  # 9 images of class 7 in three calls
        images, labels = tagged([7] * n, serial)
        bank.add(images, labels)
        serial += n
    assert bank.count(7) == 5 and len(bank) == 5 and bank.classes() == [7]
    assert serials(bank.images_of(7)) == [4, 5, 6, 7, 8]  # oldest first
    # the ring slots: 5, 6, 7, 8 overwrote 0, 1, 2, 3 in that order, 4 survives
    images, labels = tagged([7], serial)
    bank.add(images, labels)
    assert serials(bank.images_of(7)) == [5, 6, 7, 8, 9]


def test_one_call_larger_than_capacity_keeps_its_newest_images():
    bank = MemoryBank(capacity_per_class=4, image_shape=SHAPE, dtype=torch.float64)
    images, labels = tagged([1, 2, 1, 1, 2, 1, 1, 1, 1])  # class 1: serials 0, 2, 3, 5, 6, 7, 8
    bank.add(images, labels)
    assert serials(bank.images_of(1)) == [5, 6, 7, 8]
    assert serials(bank.images_of(2)) == [1, 4]
    images, labels = tagged([1, 1], 9)
    bank.add(images, labels)
    assert serials(bank.images_of(1)) == [7, 8, 9, 10]


def test_capacity_is_per_class_and_classes_are_independent():
    bank = MemoryBank(capacity_per_class=3, image_shape=SHAPE, dtype=torch.float64)
    images, labels = tagged([0, 0, 1, 0, 0, 0, 5])
    bank.add(images, labels)
    assert [bank.count(c) for c in (0, 1, 5, 9)] == [3, 1, 1, 0]
    assert serials(bank.images_of(0)) == [3, 4, 5]
    assert serials(bank.images_of(1)) == [2] and serials(bank.images_of(5)) == [6]
    assert len(bank) == 5 and bank.classes() == [0, 1, 5]
    # any integer ids: negative, large, non-contiguous; new classes grow the buffer past its first rows
    images, labels = tagged([-3, 10**9] + list(range(100, 120)), 100)
    bank.add(images, labels.int())
    assert bank.classes()[:2] == [-3, 0] and bank.classes()[-1] == 10**9
    assert serials(bank.images_of(10**9)) == [101] and serials(bank.images_of(0)) == [3, 4, 5]
    assert serials(bank.images_of(119)) == [121]


def test_stores_detached_copies():
    bank = MemoryBank(capacity_per_class=4, image_shape=SHAPE)
    images = torch.rand(4, *SHAPE, requires_grad=True)
    out = images * 1.0
    bank.add(out, torch.tensor([0, 0, 1, 1]))
    stored = bank.images_of(0)
    assert not stored.requires_grad and stored.grad_fn is None
    with torch.no_grad():
        out.zero_()
    torch.testing.assert_close(bank.images_of(0), images.detach()[:2])


def two_teacher_bank(per_class=6):
    bank = MemoryBank(capacity_per_class=10, image_shape=SHAPE, dtype=torch.float64)
    serial = 0
    for teacher_classes in (range(0, 5), range(5, 10)):  # teacher A then teacher B
        cls = [c for _ in range(per_class) for c in teacher_classes]
        images, labels = tagged(cls, serial)
        serial += len(cls)
        bank.add(images, labels)
    return bank


def test_replay_tasks_mix_classes_of_different_teachers():
    bank = two_teacher_bank()
    batch = bank.sample_tasks(200, ways=5, shots=1, queries=2, generator=torch.Generator().manual_seed(0))
    classes = batch.classes
    assert classes.shape == (200, 5)
    assert all(len(set(row)) == 5 for row in classes.tolist())  # distinct classes per task
    from_a = (classes < 5).any(1)
    from_b = (classes >= 5).any(1)
    assert (from_a & from_b).sum() > 100  # most tasks mix the teachers (P(all from one) = 2/252)
    assert set(classes.flatten().tolist()) == set(range(10))


def test_task_labels_classes_and_images_are_consistent():
    bank = two_teacher_bank()
    ways, shots, queries = 4, 2, 3
    batch = bank.sample_tasks(30, ways, shots, queries, torch.Generator().manual_seed(1))
    assert batch.support.shape == (30, ways * shots, *SHAPE) and batch.query.shape == (30, ways * queries, *SHAPE)
    assert batch.support.dtype == torch.float64
    assert batch.support_labels.tolist() == [[c for c in range(ways) for _ in range(shots)]] * 30
    assert batch.query_labels.tolist() == [[c for c in range(ways) for _ in range(queries)]] * 30
    for t in range(30):
        # each image's encoded class is the global class of its task-local label
        for x, y in ((batch.support[t], batch.support_labels[t]), (batch.query[t], batch.query_labels[t])):
            encoded = (x[:, 0, 0, 0] * 1000).round().long()
            assert torch.equal(encoded, batch.classes[t][y])
        # shots + queries distinct stored images per class, never repeated between support and query
        all_serials = serials(torch.cat([batch.support[t], batch.query[t]]))
        assert len(set(all_serials)) == ways * (shots + queries)
    # images come back exactly as stored (no normalisation, no augmentation)
    c = int(batch.classes[0, 0])
    stored = {tuple(img.flatten().tolist()) for img in bank.images_of(c)}
    assert tuple(batch.support[0, 0].flatten().tolist()) in stored


def test_sampling_is_reproducible_from_the_generator():
    bank = two_teacher_bank()
    a = bank.sample_tasks(8, 5, 1, 3, torch.Generator().manual_seed(5))
    b = bank.sample_tasks(8, 5, 1, 3, torch.Generator().manual_seed(5))
    c = bank.sample_tasks(8, 5, 1, 3, torch.Generator().manual_seed(6))
    for x, y in ((a.support, b.support), (a.query, b.query), (a.classes, b.classes)):
        assert torch.equal(x, y)
    assert not torch.equal(a.query, c.query)
    # the generator advances: two draws from one generator differ
    g = torch.Generator().manual_seed(5)
    first, second = bank.sample_tasks(8, 5, 1, 3, g), bank.sample_tasks(8, 5, 1, 3, g)
    assert torch.equal(first.query, a.query) and not torch.equal(second.query, a.query)


def test_none_when_too_few_eligible_classes():
    g = torch.Generator().manual_seed(0)
    bank = MemoryBank(capacity_per_class=10, image_shape=SHAPE)
    assert bank.sample_tasks(2, 5, 1, 2, g) is None  # empty
    images, labels = tagged([c for _ in range(3) for c in range(4)])
    bank.add(images.float(), labels)
    assert bank.sample_tasks(2, 5, 1, 2, g) is None  # 4 classes < 5 ways
    images, labels = tagged([4, 4], 50)
    bank.add(images.float(), labels)
    assert bank.sample_tasks(2, 5, 1, 2, g) is None  # class 4 has 2 < shots + queries = 3 images
    assert bank.sample_tasks(2, 5, 1, 1, g) is not None
    images, labels = tagged([4], 60)
    bank.add(images.float(), labels)
    batch = bank.sample_tasks(2, 5, 1, 2, g)
    assert batch is not None and sorted(batch.classes[0].tolist()) == [0, 1, 2, 3, 4]


def test_state_dict_round_trip_including_fifo_positions():
    bank = MemoryBank(capacity_per_class=4, image_shape=SHAPE, dtype=torch.float64)
    images, labels = tagged([0] * 6 + [1] * 3 + [2] * 4 + [3] * 5 + [4] * 4)
    bank.add(images, labels)
    buf = io.BytesIO()
    torch.save(bank.state_dict(), buf)
    buf.seek(0)
    restored = MemoryBank(capacity_per_class=4, image_shape=SHAPE, dtype=torch.float64)
    restored.load_state_dict(torch.load(buf))
    assert restored.classes() == bank.classes() and len(restored) == len(bank)
    for c in bank.classes():
        assert torch.equal(restored.images_of(c), bank.images_of(c))
    # the same future: the same adds evict the same images, the same generator draws the same tasks
    more_images, more_labels = tagged([0, 1, 1, 7], 100)
    for b in (bank, restored):
        b.add(more_images, more_labels)
    for c in bank.classes():
        assert serials(restored.images_of(c)) == serials(bank.images_of(c))
    a = bank.sample_tasks(5, 3, 1, 2, torch.Generator().manual_seed(2))
    r = restored.sample_tasks(5, 3, 1, 2, torch.Generator().manual_seed(2))
    assert torch.equal(a.query, r.query) and torch.equal(a.classes, r.classes)
    # state tensors are copies, not views of the live buffer
    state = bank.state_dict()
    bank.add(*tagged([0] * 4, 200))
    assert not torch.equal(state["images"][bank._row[0]], bank._images[bank._row[0]])


def test_errors():
    with pytest.raises(FastFreeError, match="capacity_per_class"):
        MemoryBank(capacity_per_class=0)
    with pytest.raises(FastFreeError, match="image_shape"):
        MemoryBank(image_shape=(32, 32))
    bank = MemoryBank(capacity_per_class=4, image_shape=SHAPE)
    with pytest.raises(FastFreeError, match="images must be"):
        bank.add(torch.rand(2, 3, 16, 16), torch.tensor([0, 1]))
    with pytest.raises(FastFreeError, match="images must be"):
        bank.add(torch.rand(3, 8, 8), torch.tensor([0, 1, 2]))
    with pytest.raises(FastFreeError, match="one global class id per image"):
        bank.add(torch.rand(3, *SHAPE), torch.tensor([0, 1]))
    with pytest.raises(FastFreeError, match="integer"):
        bank.add(torch.rand(2, *SHAPE), torch.tensor([0.0, 1.0]))
    assert len(bank) == 0  # nothing stored by a failed add
    with pytest.raises(FastFreeError, match="shots \\+ queries"):
        bank.sample_tasks(1, 2, 2, 3, torch.Generator())
    for bad in (1.0, None, True, 0):  # counts must be integers >= 1 (1.0 crashed inside topk, None in int())
        with pytest.raises(FastFreeError, match="sample_tasks needs ways >= 1"):
            bank.sample_tasks(1, bad, 1, 1, torch.Generator())
    other = MemoryBank(capacity_per_class=5, image_shape=SHAPE)
    with pytest.raises(FastFreeError, match="checkpoint's settings"):
        other.load_state_dict(bank.state_dict())
    # counts and write positions a bank cannot reach are refused, not loaded (a 4-per-class bank with 9 images)
    bank.add(*tagged([0] * 5 + [1] * 2))
    good = bank.state_dict()
    for count, nxt in (([9, 2], [1, 2]), ([4, -2], [1, 2]), ([4, 2], [1, 0]), ([4, 2], [4, 2]), ([0, 2], [0, 2])):
        with pytest.raises(FastFreeError, match="inconsistent"):
            MemoryBank(capacity_per_class=4, image_shape=SHAPE).load_state_dict(
                {**good, "count": torch.tensor(count), "next": torch.tensor(nxt)})
    MemoryBank(capacity_per_class=4, image_shape=SHAPE).load_state_dict(good)  # the true state still loads
