"""Teachers of another domain, seen from the meta-learner's input space.

In a multi-domain run (fastfree.data.domains) the generator draws at the largest image size
and every image reaching a model is normalised with the meta-learner's normalisation. A
teacher trained on another domain expects its own size and normalisation, so it is wrapped
in a `TeacherAdapter`: resize (bilinear, antialias off: F.interpolate as the authors' torch code
resizes) to the teacher's size, then the per-channel affine map from the learner's
normalisation to the teacher's, x_T = x_L * std_L / std_T + (mean_L - mean_T) / std_T, which is
"un-normalise, normalise with the teacher's mean/std" in one step (bilinear weights sum to 1, so
the map and the resize commute). FIVE, BELL and the alignment diagnostic then call every teacher
the same way, and the code of those algorithms (fastfree/free/five.py, bell.py) is unchanged: a
teacher whose domain already is the learner's (same size, same normalisation) is not wrapped at
all, so a single-domain run is bit for bit what it was.

The adapter is a plain module: fx-traceable (the fast engine folds its BatchNorms), and its two
buffers stack under vmap; `signature_extra` keeps teachers resized to different sizes in
different groups of the fast engine (fastfree.engine.groups).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastfree.data.split import Normalization


class TeacherAdapter(nn.Module):
    def __init__(self, model: nn.Module, image_size: int, teacher_norm: Normalization, learner_size: int,
                 learner_norm: Normalization):
        super().__init__()
        self.model = model
        self.image_size = image_size
        self.resize = image_size != learner_size  # a Python flag, decided once: the forward stays traceable
        ref = next(model.parameters())
        as_t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731  (exact, then cast once)
        scale = as_t(learner_norm.std) / as_t(teacher_norm.std)
        shift = (as_t(learner_norm.mean) - as_t(teacher_norm.mean)) / as_t(teacher_norm.std)
        self.register_buffer("scale", scale.view(1, 3, 1, 1).to(ref.dtype).to(ref.device))
        self.register_buffer("shift", shift.view(1, 3, 1, 1).to(ref.dtype).to(ref.device))
        self.train(model.training)

    @property
    def signature_extra(self) -> tuple:
        return ("resize", self.image_size) if self.resize else ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resize:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=False)
        return self.model(x * self.scale + self.shift)


def adapt_teacher(model: nn.Module, image_size: int, teacher_norm: Normalization, learner_size: int,
                  learner_norm: Normalization) -> nn.Module:
    """The teacher as the learner's input space needs it: itself when its domain is the learner's."""
    if image_size == learner_size and teacher_norm == learner_norm:
        return model
    return TeacherAdapter(model, image_size, teacher_norm, learner_size, learner_norm)
