"""Temporal pseudo-anomalies: abnormal-motion windows made from normal footage (not in the paper).

The discriminator phase of `stan train` labels these fake beside the windows with a generated
middle frame, so that the discriminator learns what normal *motion* of this camera looks like
rather than only "is the middle frame generated?" (docs/discriminator.md; the kinds follow the
pseudo-anomaly literature: skipped frames (LNTRA, BMVC 2021), reversed order, frozen frames, a
moving pasted patch). Each kind keeps the window's content and breaks its motion:

- `skip`:    the window sampled with stride k in 2..5 around the same centre: everything moves
             k times faster than anything in the footage (the cyclist and cart case);
- `reverse`: the 11 frames in reverse order: motion runs backwards;
- `repeat`:  a run of 3-6 consecutive frames frozen on its first frame: motion stalls, then jumps;
- `patch`:   a square patch from another place and time of the footage pasted into every frame
             with a soft border, moving 4-12 pixels a frame (at 224 x 224) in a straight line.

All functions take and return uint8 (11, S, S) arrays (the training frame cache's layout) and
draw from an explicit `numpy.random.Generator`, so a resumed run makes the same windows again.
"""

from __future__ import annotations

import numpy as np

from .model import CONTEXT, WINDOW

KINDS = ("skip", "reverse", "repeat", "patch")
STRIDES = (2, 3, 4, 5)


def parse_kinds(text: str) -> tuple[str, ...]:
    """'skip,reverse' -> ('skip', 'reverse'); 'none' or '' -> (). Raises ValueError on an unknown kind."""
    names = [k.strip() for k in text.split(",") if k.strip()]
    if names == ["none"]:
        return ()
    unknown = [k for k in names if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown pseudo-anomaly {', '.join(unknown)}; use a comma list of {', '.join(KINDS)}, or none")
    return tuple(dict.fromkeys(names))  # in the order given, each once


def skip_window(frames: np.ndarray, t: int, stride: int) -> np.ndarray:
    """Frames t - 5k, ..., t, ..., t + 5k of a clip (N, S, S): (11, S, S)."""
    lo, hi = t - CONTEXT * stride, t + CONTEXT * stride
    if lo < 0 or hi >= len(frames):
        raise ValueError(f"stride {stride} around frame {t} leaves the clip of {len(frames)} frames")
    return np.array(frames[lo : hi + 1 : stride])


def fitting_strides(n_frames: int, t: int) -> list[int]:
    """The strides of STRIDES whose skipped window around t stays inside a clip of n_frames."""
    return [k for k in STRIDES if t - CONTEXT * k >= 0 and t + CONTEXT * k < n_frames]


def reverse_window(window: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(window[::-1])


def repeat_window(window: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A run of 3-6 consecutive frames all equal to the run's first frame."""
    length = int(rng.integers(3, 7))
    start = int(rng.integers(0, WINDOW - length + 1))
    out = np.array(window)
    out[start : start + length] = window[start]
    return out


def patch_window(window: np.ndarray, donor: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`donor` (S, S), a frame from elsewhere in the footage: a square of it (1/8 to 1/4 of the
    side) pasted with a feathered border at a position that moves in a straight line."""
    size = window.shape[-1]
    side = int(rng.integers(size // 8, size // 4 + 1))
    speed = rng.uniform(4, 12) * size / 224  # pixels per frame
    angle = rng.uniform(0, 2 * np.pi)
    step = speed * np.array([np.sin(angle), np.cos(angle)])  # (dy, dx) per frame
    travel = np.abs(step) * (WINDOW - 1)
    # a start from which the whole path stays inside the frame
    start = np.array([rng.uniform(0, max(size - side - travel[i], 0)) for i in range(2)])
    start += np.where(step < 0, travel, 0)
    src = rng.integers(0, size - side + 1, size=2)
    patch = donor[src[0] : src[0] + side, src[1] : src[1] + side].astype(np.float32)
    mask = _feather(side)
    out = window.astype(np.float32)
    for f in range(WINDOW):
        y, x = np.clip(np.round(start + step * f).astype(int), 0, size - side)
        region = out[f, y : y + side, x : x + side]
        out[f, y : y + side, x : x + side] = mask * patch + (1 - mask) * region
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _feather(side: int, border: float = 0.2) -> np.ndarray:
    """(side, side) weights: 1 inside, falling linearly to 0 over the outer `border` of the side."""
    ramp = np.minimum(np.arange(side) + 0.5, side - np.arange(side) - 0.5) / max(border * side, 1.0)
    edge = np.clip(ramp, 0, 1)
    return np.outer(edge, edge).astype(np.float32)


def make(kind: str, clips: list, clip: int, t: int, rng: np.random.Generator) -> np.ndarray:
    """One pseudo-anomaly of `kind` from the window centred on frame t of clips[clip] (each clip
    has `.frames`, (N, S, S) uint8). A skip that no stride fits around t is reversed instead."""
    frames = clips[clip].frames
    window = np.array(frames[t - CONTEXT : t + CONTEXT + 1])  # (11, S, S)
    if kind == "skip":
        strides = fitting_strides(len(frames), t)
        if strides:
            return skip_window(frames, t, int(rng.choice(strides)))
        kind = "reverse"
    if kind == "reverse":
        return reverse_window(window)
    if kind == "repeat":
        return repeat_window(window, rng)
    if kind == "patch":
        other = int(rng.integers(len(clips)))
        donor = clips[other].frames[int(rng.integers(len(clips[other].frames)))]
        return patch_window(window, np.asarray(donor), rng)
    raise ValueError(f"unknown pseudo-anomaly {kind!r}")
