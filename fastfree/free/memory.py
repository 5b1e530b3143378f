"""The memory bank of recovered tasks (Sec. 4.2, "Cross Task Replay"): FIFO per global class.

Storage is one preallocated ring buffer on the bank's device,
``images[row, slot]`` of shape [rows, capacity_per_class, *image_shape], with one row per
global class seen so far (rows are allocated geometrically as new classes appear, so the
buffer is copied O(log classes) times in a run). Per row the host keeps how many images are
stored (``count``, at most the capacity) and where the next one goes (``next``). While a
class is not full its images sit in slots 0..count-1; once full, each new image overwrites
the oldest one (slot ``next``). ``add`` writes all images of a call with a single indexed
copy (no Python loop per image).

Replay tasks ("interpolated tasks") draw their classes from every class in the bank, so
classes recovered from different teachers mix. All randomness comes from the caller's
``torch.Generator``: the same generator state gives the same tasks.
"""

from __future__ import annotations

import numpy as np
import torch

from fastfree.data.episodes import EpisodeBatch
from fastfree.errors import FastFreeError

_MIN_ROWS = 8


class MemoryBank:
    """FIFO store of generator images (un-normalised, in [0, 1]) keyed by global class id."""

    def __init__(self, capacity_per_class: int = 400, image_shape=(3, 32, 32), device="cpu",
                 dtype: torch.dtype = torch.float32):
        if not isinstance(capacity_per_class, (int, np.integer)) or isinstance(capacity_per_class, bool) \
                or capacity_per_class < 1:
            raise FastFreeError(
                f"the memory bank needs capacity_per_class >= 1 (an integer), got {capacity_per_class!r}: "
                f"use e.g. 400 (the paper's setting)"
            )
        shape = tuple(int(s) for s in image_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise FastFreeError(
                f"the memory bank needs image_shape = (channels, height, width) with positive sizes, "
                f"got {tuple(image_shape)}: use e.g. (3, 32, 32)"
            )
        if not dtype.is_floating_point:
            raise FastFreeError(
                f"the memory bank stores generator images in [0, 1] and needs a floating dtype, got {dtype}: "
                f"use torch.float32 (or float64 / bfloat16)"
            )
        self.capacity = int(capacity_per_class)
        self.image_shape = shape
        self.device = torch.device(device)
        self.dtype = dtype
        self._images = torch.empty((0, self.capacity, *shape), device=self.device, dtype=dtype)
        self._class_ids: list[int] = []          # row -> global class id
        self._row: dict[int, int] = {}           # global class id -> row
        self._count = np.zeros(0, dtype=np.int64)  # row -> images stored (<= capacity)
        self._next = np.zeros(0, dtype=np.int64)   # row -> slot the next image goes to

    # ------------------------------------------------------------------ queries
    def classes(self) -> list[int]:
        """Global ids of the classes holding at least one image, sorted."""
        return sorted(self._class_ids)

    def count(self, c: int) -> int:
        """Images stored for global class c (0 if never seen)."""
        row = self._row.get(int(c))
        return 0 if row is None else int(self._count[row])

    def __len__(self) -> int:
        return int(self._count.sum())

    def __repr__(self) -> str:
        return (f"MemoryBank({len(self._class_ids)} classes, {len(self)} images, capacity "
                f"{self.capacity}/class, {self.image_shape}, {self.dtype}, {self.device})")

    def images_of(self, c: int) -> torch.Tensor:
        """The images of class c, oldest first, as a new tensor [count, *image_shape]."""
        row = self._row.get(int(c))
        if row is None:
            return self._images.new_empty((0, *self.image_shape))
        n, nxt = int(self._count[row]), int(self._next[row])
        if n < self.capacity:
            return self._images[row, :n].clone()
        order = (torch.arange(self.capacity, device=self.device) + nxt) % self.capacity
        return self._images[row, order]

    # ------------------------------------------------------------------ writing
    def _ensure_rows(self, new_ids: list[int]) -> None:
        rows_needed = len(self._class_ids) + len(new_ids)
        if rows_needed > self._images.shape[0]:
            rows = max(_MIN_ROWS, self._images.shape[0])
            while rows < rows_needed:
                rows *= 2
            grown = torch.empty((rows, self.capacity, *self.image_shape), device=self.device, dtype=self.dtype)
            used = len(self._class_ids)
            grown[:used] = self._images[:used]
            self._images = grown
        for c in new_ids:
            self._row[c] = len(self._class_ids)
            self._class_ids.append(c)
        self._count = np.concatenate([self._count, np.zeros(len(new_ids), dtype=np.int64)])
        self._next = np.concatenate([self._next, np.zeros(len(new_ids), dtype=np.int64)])

    def add(self, images: torch.Tensor, global_labels: torch.Tensor) -> None:
        """Store detached copies of images [N, *image_shape] (in [0, 1]) under their global class ids [N].

        Within one call, a lower index counts as older. When a class is full its oldest images
        are overwritten first; if one call brings more than the capacity for a class, only its
        newest `capacity_per_class` images of that class are kept.
        """
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != self.image_shape:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise FastFreeError(
                f"memory bank images must be [N, {', '.join(map(str, self.image_shape))}], got {got}: "
                f"pass the generator's output batch (or build the bank with image_shape matching it)"
            )
        if not isinstance(global_labels, torch.Tensor):
            global_labels = torch.as_tensor(global_labels)
        if global_labels.dim() != 1 or global_labels.shape[0] != images.shape[0]:
            raise FastFreeError(
                f"memory bank labels must be one global class id per image: got labels of shape "
                f"{tuple(global_labels.shape)} for {images.shape[0]} images; pass an int64 tensor [N]"
            )
        if global_labels.dtype.is_floating_point or global_labels.dtype.is_complex or global_labels.dtype == torch.bool:
            raise FastFreeError(
                f"memory bank labels must be integer global class ids, got dtype {global_labels.dtype}: "
                f"pass e.g. labels.long()"
            )
        n = images.shape[0]
        if n == 0:
            return
        cap = self.capacity
        labels = global_labels.detach().to(self.device, torch.int64)
        uniq, inverse, counts = torch.unique(labels, sorted=True, return_inverse=True, return_counts=True)
        uniq_ids = uniq.tolist()
        self._ensure_rows([c for c in uniq_ids if c not in self._row])
        rows_np = np.array([self._row[c] for c in uniq_ids], dtype=np.int64)
        counts_np = counts.cpu().numpy()

        # rank of each image among the images of its class in this call (0 = oldest)
        order = torch.sort(inverse, stable=True).indices
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(inverse)
        rank[order] = torch.arange(n, device=self.device) - starts[inverse[order]]
        keep = rank >= (counts - cap)[inverse]        # drop images overwritten within this very call
        rows = torch.as_tensor(rows_np, device=self.device)
        nxt = torch.as_tensor(self._next[rows_np], device=self.device)
        slot = (nxt[inverse] + rank) % cap
        self._images[rows[inverse][keep], slot[keep]] = images.detach().to(self.device, self.dtype)[keep]

        self._next[rows_np] = (self._next[rows_np] + counts_np) % cap
        self._count[rows_np] = np.minimum(self._count[rows_np] + counts_np, cap)

    # ------------------------------------------------------------------ sampling
    def eligible_classes(self, shots: int, queries: int) -> list[int]:
        """Classes (sorted) with at least shots + queries images."""
        need = shots + queries
        return sorted(c for c, r in self._row.items() if self._count[r] >= need)

    def sample_tasks(self, n_tasks: int, ways: int, shots: int, queries: int,
                     generator: torch.Generator) -> EpisodeBatch | None:
        """n_tasks replay tasks, or None when fewer than `ways` classes hold shots + queries images.

        Each task draws `ways` distinct classes uniformly from all eligible classes of the bank,
        then shots + queries distinct images of each (uniformly, without replacement). Support
        and query are [n_tasks, ways*shots | ways*queries, *image_shape] in class-major order,
        un-normalised as stored; labels are task-local 0..ways-1; `classes` [n_tasks, ways]
        holds the global ids. No augmentation.
        """
        for name, value, low in (("n_tasks", n_tasks, 1), ("ways", ways, 1), ("shots", shots, 1),
                                 ("queries", queries, 1)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise FastFreeError(f"sample_tasks needs {name} >= {low} (an integer), got {value!r}")
        need = shots + queries
        if need > self.capacity:
            raise FastFreeError(
                f"replay tasks need shots + queries = {need} images per class but the bank keeps at most "
                f"{self.capacity} per class: raise capacity_per_class or lower shots/queries"
            )
        eligible = self.eligible_classes(shots, queries)
        if len(eligible) < ways:
            return None
        gen_device = generator.device
        # classes: the `ways` smallest of n_tasks x E uniform keys = a uniform random subset, random order
        class_keys = torch.rand((n_tasks, len(eligible)), generator=generator, device=gen_device)
        chosen = class_keys.topk(ways, dim=1, largest=False).indices.cpu()             # [T, ways]
        eligible_t = torch.as_tensor(eligible, dtype=torch.int64)
        global_ids = eligible_t[chosen]                                                  # [T, ways]
        rows = torch.as_tensor([self._row[c] for c in eligible], dtype=torch.int64)[chosen]
        counts = torch.as_tensor(self._count, dtype=torch.int64)[rows]                   # [T, ways]
        # images: the `need` smallest keys among the class's filled slots 0..count-1
        slot_keys = torch.rand((n_tasks, ways, self.capacity), generator=generator, device=gen_device).cpu()
        filled = torch.arange(self.capacity) < counts[..., None]
        slot_keys = torch.where(filled, slot_keys, torch.full_like(slot_keys, 2.0))
        slots = slot_keys.topk(need, dim=2, largest=False).indices                       # [T, ways, need]

        rows_d = rows.to(self.device)
        picked = self._images[rows_d[..., None], slots.to(self.device)]                  # [T, ways, need, C, H, W]
        support = picked[:, :, :shots].reshape(n_tasks, ways * shots, *self.image_shape)
        query = picked[:, :, shots:].reshape(n_tasks, ways * queries, *self.image_shape)
        local = torch.arange(ways, device=self.device)
        return EpisodeBatch(
            support=support,
            support_labels=local.repeat_interleave(shots).expand(n_tasks, -1).contiguous(),
            query=query,
            query_labels=local.repeat_interleave(queries).expand(n_tasks, -1).contiguous(),
            classes=global_ids.to(self.device),
        )

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything needed for an exact round trip (images, FIFO positions). Tensors are copies."""
        used = len(self._class_ids)
        return {
            "capacity_per_class": self.capacity,
            "image_shape": list(self.image_shape),
            "class_ids": torch.tensor(self._class_ids, dtype=torch.int64),
            "count": torch.from_numpy(self._count.copy()),
            "next": torch.from_numpy(self._next.copy()),
            "images": self._images[:used].clone(),  # a copy: saving a view would save the whole buffer
        }

    def load_state_dict(self, d: dict) -> None:
        """Restore a `state_dict`; the bank must have the same capacity and image shape."""
        missing = {"capacity_per_class", "image_shape", "class_ids", "count", "next", "images"} - set(d)
        if missing:
            raise FastFreeError(f"memory bank state is missing {sorted(missing)}: pass MemoryBank.state_dict()'s output")
        if int(d["capacity_per_class"]) != self.capacity or tuple(d["image_shape"]) != self.image_shape:
            raise FastFreeError(
                f"memory bank state has capacity {d['capacity_per_class']} and image shape {tuple(d['image_shape'])}, "
                f"this bank {self.capacity} and {self.image_shape}: build the bank with the checkpoint's settings"
            )
        class_ids = [int(c) for c in torch.as_tensor(d["class_ids"]).tolist()]
        images = torch.as_tensor(d["images"])
        count = torch.as_tensor(d["count"]).cpu().numpy().astype(np.int64)
        nxt = torch.as_tensor(d["next"]).cpu().numpy().astype(np.int64)
        rows = len(class_ids)
        # each class holds 1..capacity images; until it is full it writes at its count, then cycles
        if (tuple(images.shape) != (rows, self.capacity, *self.image_shape) or count.shape != (rows,)
                or nxt.shape != (rows,) or len(set(class_ids)) != rows
                or not ((count >= 1) & (count <= self.capacity) & (nxt >= 0) & (nxt < self.capacity)).all()
                or ((count < self.capacity) & (nxt != count)).any()):
            raise FastFreeError(
                "memory bank state is inconsistent (images, counts and class ids disagree): "
                "the checkpoint is damaged or not from MemoryBank.state_dict()"
            )
        buffer = torch.empty((max(_MIN_ROWS, rows), self.capacity, *self.image_shape), device=self.device,
                             dtype=self.dtype)
        buffer[:rows] = images.to(self.device, self.dtype)
        self._images = buffer
        self._class_ids = class_ids
        self._row = {c: i for i, c in enumerate(class_ids)}
        self._count = count.copy()
        self._next = nxt.copy()
