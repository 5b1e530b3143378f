"""The built-in procedural few-shot data set: 100 classes of small RGB images made from a seed.

It is the embedded default, so every command works without downloaded data. Each class is
one combination of three factors,

    5 shapes (circle, square, triangle, ring, cross)
  x 5 colour families (red, yellow, green, blue, purple)
  x 4 textures (solid, stripes, checker, dots)            = 100 classes,

named "<shape>-<colour>-<texture>" (e.g. "circle-red-stripes"). Every factor value is shared
by 20-25 classes, so no single factor identifies a class: a classifier has to see the shape,
the object's colour *and* its texture together.

Every image also gets random nuisance, drawn per image:

* position, scale (10-21 px across at 32 px) and rotation of the object; the texture
  rotates and scales with it and has a random phase, frequency and contrast;
* colour jitter inside the family (hue +-25 degrees, so neighbouring families nearly touch;
  saturation; value);
* a background that is a gradient between two random colours in a random direction; it
  covers most of the image and is often as saturated as the object;
* a distractor: a smaller ellipse of a random colour, anywhere, behind the object;
* a global brightness and per-channel gain (a colour cast), and per-pixel noise of random
  strength on object and background alike.

Why this is learnable but not trivial: the class evidence is local (one object) and
conjunctive (shape x colour x texture), while the nuisance is global and large, so the
mean colour of the whole image says little about the class. Measured on 5 meta-train
classes (480 training images each): a Conv4 with Adam reaches ~60% held-out after one epoch
and ~80-90% after five; a nearest-mean classifier on the image's mean RGB gets ~25-30%
(chance 20%). tests/data/test_procedural.py checks both.

Determinism: class `c`'s images come from `numpy.random.default_rng([seed, c])` only, so
they are bit-identical for the same seed and do not depend on `num_classes`; classes go to
meta-train / meta-val / meta-test (64/16/20 like CIFAR-FS) by a permutation seeded from
`seed`. Rendering is vectorised over all images of a class (float32 numpy, signed-distance
shapes with 1-pixel anti-aliasing), so 60,000 images build in a few seconds.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fastfree.data.split import FewShotDataset, ImageSplit, Normalization
from fastfree.errors import FastFreeError

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "ring", "cross")
# Colour family -> hue centre in degrees.
COLOURS: dict[str, float] = {"red": 0.0, "yellow": 55.0, "green": 120.0, "blue": 220.0, "purple": 285.0}
TEXTURES: tuple[str, ...] = ("solid", "stripes", "checker", "dots")
HUE_JITTER = 25.0  # degrees either side of the family's centre
MAX_CLASSES = len(SHAPES) * len(COLOURS) * len(TEXTURES)

# Class id -> factor combination goes through a fixed bijection k = (c * 37) mod 100 (37 is
# coprime with 100), so that any prefix of classes (num_classes < 100) still mixes all shapes,
# colours and textures instead of being, say, only circles.
_STRIDE = 37
_SPLIT_SALT = 0x5EED5  # keeps the split permutation's stream apart from every class's stream


def _class_factors(class_id: int) -> tuple[int, int, int]:
    """class id -> (shape index, colour index, texture index)."""
    k = (class_id * _STRIDE) % MAX_CLASSES
    n_col, n_tex = len(COLOURS), len(TEXTURES)
    return k // (n_col * n_tex), (k // n_tex) % n_col, k % n_tex


def _class_name(class_id: int) -> str:
    s, c, t = _class_factors(class_id)
    return f"{SHAPES[s]}-{list(COLOURS)[c]}-{TEXTURES[t]}"


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB; h in degrees, s and v in [0, 1]; returns [..., 3]."""
    h = np.mod(h, 360.0) / 60.0
    c = v * s
    x = c * (1.0 - np.abs(np.mod(h, 2.0) - 1.0))
    zero = np.zeros_like(c)
    sector = np.floor(h).astype(np.int64) % 6
    table = np.stack(
        [
            np.stack([c, x, zero], -1),
            np.stack([x, c, zero], -1),
            np.stack([zero, c, x], -1),
            np.stack([zero, x, c], -1),
            np.stack([x, zero, c], -1),
            np.stack([c, zero, x], -1),
        ],
        0,
    )
    rgb = np.take_along_axis(table, sector[None, ..., None].repeat(3, -1), 0)[0]
    return rgb + (v - c)[..., None]


def _shape_sdf(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (in object units, negative inside) of a unit-sized shape."""
    if shape == 0:  # circle, radius 1
        return np.sqrt(u * u + v * v) - 1.0
    if shape == 1:  # square, half-side 0.85 (about the circle's area)
        return np.maximum(np.abs(u), np.abs(v)) - 0.85
    if shape == 2:  # equilateral triangle, inradius 0.68: max over the three edges' half-planes
        d = -v  # edge normals at -90, 30 and 150 degrees
        d = np.maximum(d, u * (math.sqrt(3) / 2) + v * 0.5)
        d = np.maximum(d, -u * (math.sqrt(3) / 2) + v * 0.5)
        return d - 0.68
    if shape == 3:  # ring, radii 0.55..1
        r = np.sqrt(u * u + v * v)
        return np.maximum(r - 1.0, 0.55 - r)
    # cross: union of two bars, half-width 0.33, half-length 1
    au, av = np.abs(u), np.abs(v)
    return np.minimum(np.maximum(au - 1.0, av - 0.33), np.maximum(au - 0.33, av - 1.0))


def _texture(texture: int, u: np.ndarray, v: np.ndarray, freq: np.ndarray, phase: np.ndarray,
             px_per_unit: np.ndarray) -> np.ndarray:
    """Texture weight in [0, 1] (1 = second colour) in object coordinates."""
    if texture == 0:  # solid
        return np.zeros_like(u)
    # Soft edges ~1 px wide: a sine scaled by its pixel slope, clipped.
    if texture == 1:  # stripes, ~4 periods across the object
        w = np.sin(2 * np.pi * freq * u + phase)
        return np.clip(0.5 + w * (px_per_unit / (2 * np.pi * freq)) * 0.8, 0.0, 1.0)
    if texture == 2:  # checker
        w = np.sin(np.pi * freq * u + phase) * np.sin(np.pi * freq * v + phase)
        return np.clip(0.5 + w * 3.0, 0.0, 1.0)
    # dots on a square grid
    fu = u * freq + phase / (2 * np.pi)
    fv = v * freq + phase / (2 * np.pi)
    fu, fv = fu - np.floor(fu) - 0.5, fv - np.floor(fv) - 0.5  # np.mod is ~10x slower than this
    d_units = (np.sqrt(fu * fu + fv * fv) - 0.28) / freq  # distance to the dot's edge, object units
    return np.clip(0.5 - d_units * px_per_unit, 0.0, 1.0)


def _render_class(seed: int, class_id: int, n: int, size: int) -> np.ndarray:
    """All `n` images of one class as uint8 [n, 3, size, size], from rng([seed, class_id])."""
    shape, colour, texture = _class_factors(class_id)
    rng = np.random.default_rng([seed, class_id])
    f32 = np.float32

    def draw(lo: float, hi: float) -> np.ndarray:  # one value per image, shaped to broadcast
        return rng.uniform(lo, hi, n).astype(f32)[:, None, None]

    # The ranges below are tuned so a Conv4 needs a few epochs (see the module docstring).
    # Object geometry: radius 15-33% of the side (about 10-21 px across at 32 px), kept mostly
    # inside the frame, any rotation.
    radius = draw(0.15, 0.33) * size
    cx = draw(0.0, 1.0) * (size - 1.6 * radius) + 0.8 * radius
    cy = draw(0.0, 1.0) * (size - 1.6 * radius) + 0.8 * radius
    theta = draw(0.0, 2 * np.pi)
    # Object colour: jitter inside the family (neighbouring families nearly touch); the
    # texture's second colour is a darker shade of it, by a random amount.
    hue = rng.uniform(-HUE_JITTER, HUE_JITTER, n) + list(COLOURS.values())[colour]
    rgb = _hsv_to_rgb(hue, rng.uniform(0.4, 1.0, n), rng.uniform(0.5, 1.0, n)).astype(f32)
    shade = draw(0.25, 0.7)  # the texture darkens the object by 25-70%
    freq = draw(1.6, 2.4)  # texture periods per object unit
    phase = draw(0.0, 2 * np.pi)
    # Distractor: a smaller ellipse of a random colour, behind the object, anywhere.
    d_radius = draw(0.08, 0.18) * size
    d_aspect = draw(0.35, 1.0)
    d_cx, d_cy = draw(0.0, 1.0) * size, draw(0.0, 1.0) * size
    d_theta = draw(0.0, np.pi)
    d_rgb = rng.uniform(0.0, 1.0, (n, 3)).astype(f32)
    # Background: gradient between two random colours, random direction and steepness.
    bg_a = rng.uniform(0.0, 1.0, (n, 3)).astype(f32)
    bg_b = rng.uniform(0.0, 1.0, (n, 3)).astype(f32)
    bg_dir = draw(0.0, 2 * np.pi)
    bg_steep = draw(0.3, 1.5)
    # Global photometric nuisance.
    brightness = draw(0.75, 1.15)
    gain = rng.uniform(0.88, 1.12, (n, 3)).astype(f32)
    noise_sigma = draw(0.03, 0.13)
    # Uniform bytes -> zero-mean, unit-std noise: ~10x cheaper than standard_normal here, and
    # the noise's exact distribution does not matter.
    noise = (rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8).astype(f32) - f32(127.5)) / f32(73.9)

    coords = np.arange(size, dtype=f32) + f32(0.5)
    x, y = coords[None, None, :], coords[:, None][None]
    # Object coordinates: translate, rotate, scale to unit size (y points up).
    dx, dy = (x - cx) / radius, (cy - y) / radius
    cos, sin = np.cos(theta), np.sin(theta)
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    alpha = np.clip(0.5 - _shape_sdf(shape, u, v) * radius, 0.0, 1.0)  # 1-px anti-aliased edge
    tex = _texture(texture, u, v, freq, phase, radius)
    # Distractor mask (ellipse; the distance is approximate, fine for a 1-px edge).
    ex, ey = x - d_cx, y - d_cy
    eu = (ex * np.cos(d_theta) + ey * np.sin(d_theta)) / d_radius
    ev = (ey * np.cos(d_theta) - ex * np.sin(d_theta)) / (d_radius * d_aspect)
    d_alpha = np.clip(0.5 - (np.sqrt(eu * eu + ev * ev) - 1.0) * (d_radius * d_aspect), 0.0, 1.0)

    t = np.clip(0.5 + ((x - size / 2) * np.cos(bg_dir) + (y - size / 2) * np.sin(bg_dir)) / size * bg_steep,
                0.0, 1.0)[:, None]  # [n, 1, H, W]
    # The [n, 3, H, W] arithmetic dominates the build time: few passes, in place where possible.
    bg = bg_a[:, :, None, None] + (bg_b - bg_a)[:, :, None, None] * t
    bg += (d_rgb[:, :, None, None] - bg) * d_alpha[:, None]  # distractor over the background
    img = rgb[:, :, None, None] * (1 - tex * shade)[:, None]  # textured object
    img -= bg
    img *= alpha[:, None]
    img += bg  # = bg * (1 - alpha) + object * alpha
    img *= (brightness[:, None] * gain[:, :, None, None]) * f32(255.0)
    noise *= noise_sigma[:, None] * f32(255.0)
    img += noise
    img += f32(0.5)  # round to nearest on the cast below
    np.clip(img, 0.0, 255.0, out=img)
    return img.astype(np.uint8)


def _split_sizes(num_classes: int) -> tuple[int, int, int]:
    """64/16/20 proportions, each split at least 5 classes (a 5-way task needs 5)."""
    n_val = max(5, int(math.floor(0.16 * num_classes + 0.5)))
    n_test = max(5, int(math.floor(0.20 * num_classes + 0.5)))
    return num_classes - n_val - n_test, n_val, n_test


def _normalization(images: np.ndarray) -> Normalization:
    """Exact per-channel mean/std of uint8 images [N, 3, H, W] from integer sums (no float copy)."""
    total = np.zeros(3, dtype=np.int64)
    total_sq = np.zeros(3, dtype=np.int64)
    for start in range(0, images.shape[0], 4096):  # chunks keep the uint16 squares small
        chunk = images[start:start + 4096]
        total += chunk.sum(axis=(0, 2, 3), dtype=np.int64)
        total_sq += (chunk.astype(np.uint16) ** 2).sum(axis=(0, 2, 3), dtype=np.int64)  # 255^2 fits
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / (count * 255.0)
    var = total_sq / (count * 255.0**2) - mean**2
    std = np.sqrt(np.maximum(var, 1e-8))
    return Normalization(tuple(round(float(m), 4) for m in mean), tuple(round(float(d), 4) for d in std))


def build_procedural(seed: int = 0, images_per_class: int = 600, image_size: int = 32,
                     num_classes: int = 100) -> FewShotDataset:
    """Build the built-in data set "builtin": `num_classes` classes split 64/16/20 by class.

    Returns uint8 images [N, 3, image_size, image_size] (CPU) with global class ids
    0..num_classes-1; the normalisation is the meta-train split's per-channel mean/std.
    """
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise FastFreeError(f"builtin data set: seed must be a non-negative integer, got {seed!r}")
    if num_classes < 15:
        raise FastFreeError(
            f"builtin data set: num_classes must be at least 15 (5 per meta-train/val/test split), "
            f"got {num_classes}"
        )
    if num_classes > MAX_CLASSES:
        raise FastFreeError(
            f"builtin data set: num_classes must be at most {MAX_CLASSES} ({len(SHAPES)} shapes x "
            f"{len(COLOURS)} colours x {len(TEXTURES)} textures), got {num_classes}"
        )
    if images_per_class < 2:
        raise FastFreeError(f"builtin data set: images_per_class must be at least 2, got {images_per_class}")
    if image_size < 16:
        raise FastFreeError(
            f"builtin data set: image_size must be at least 16 px (Conv4 pools 4 times), got {image_size}"
        )

    n_train, n_val, _ = _split_sizes(num_classes)
    perm = np.random.default_rng([seed, _SPLIT_SALT]).permutation(num_classes)
    split_classes = (sorted(perm[:n_train].tolist()), sorted(perm[n_train:n_train + n_val].tolist()),
                     sorted(perm[n_train + n_val:].tolist()))

    splits = []
    for split_name, classes in zip(("train", "val", "test"), split_classes):
        # Preallocate and fill class by class: no concatenation copy of the whole split.
        images = np.empty((len(classes) * images_per_class, 3, image_size, image_size), dtype=np.uint8)
        for i, c in enumerate(classes):
            images[i * images_per_class:(i + 1) * images_per_class] = _render_class(
                seed, c, images_per_class, image_size)
        labels = torch.tensor(classes, dtype=torch.int64).repeat_interleave(images_per_class)
        splits.append((f"builtin/{split_name}", images, labels, {c: _class_name(c) for c in classes}))

    norm = _normalization(splits[0][1])
    train, val, test = (ImageSplit(name, torch.from_numpy(imgs), labels, names)
                        for name, imgs, labels, names in splits)
    return FewShotDataset("builtin", train, val, test, norm)
