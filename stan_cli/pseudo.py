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
             with a soft border, moving 4-12 pixels a frame (at 224 x 224) in a straight line;
- `fast-region`: `skip` inside one square region only (1/6 to 1/3 of the side, soft border, placed
             where the skipped window moves most), the rest of the window as it was: one thing
             moves k times faster than the normal motion around it (a local anomaly, as a cyclist
             among walkers is, where `skip` speeds up the whole scene);
- `fast-tube`: a moving square from another clip and time, its frames taken with stride k in 2..5
             (so what moves in it moves k times faster), pasted with a soft border at another
             place of the window: something that looks unlike what moves there, and faster (the
             cyclist's appearance and speed together);
- `fast-person`: `fast-region` at a person's scale and a cyclist's speed: a square of 1/10 to 1/6
             of the side (about a walker at 224 x 224 on the UCSD cameras), placed where the
             skipped window moves, with stride 2 or 3 only: one walker-sized thing moving a little
             faster along the walkers' paths, the hardest local kind (0.7.0; made for validation).

All functions take and return uint8 (11, S, S) arrays (the training frame cache's layout) and
draw from an explicit `numpy.random.Generator`, so a resumed run makes the same windows again.
"""

from __future__ import annotations

import numpy as np

from .model import CONTEXT, WINDOW

KINDS = ("skip", "reverse", "repeat", "patch", "fast-region", "fast-tube", "fast-person")
STRIDES = (2, 3, 4, 5)
PERSON_STRIDES = (2, 3)  # fast-person: a cyclist among walkers, not a car
REGION_SIDES = (6, 3)  # fast-region's square: a side between size // 6 and size // 3
PERSON_SIDES = (10, 6)  # fast-person's: a walker, between size // 10 and size // 6
Box = tuple[int, int, int, int]  # where a local pseudo-anomaly is: top, left, height, width (pixels)


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
    return placed_patch(window, donor, rng)[0]


def placed_patch(window: np.ndarray, donor: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, tuple[Box, ...]]:
    """patch_window's window and the square it covers in each of the 11 frames, in order (the same
    draws; a square may repeat where the path is slow or meets the frame's edge)."""
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
    places = [(int(y), int(x), side, side) for y, x in
              (np.clip(np.round(start + step * f).astype(int), 0, size - side) for f in range(WINDOW))]
    for f, (y, x, _, _) in enumerate(places):
        region = out[f, y : y + side, x : x + side]
        out[f, y : y + side, x : x + side] = mask * patch + (1 - mask) * region
    return np.clip(np.round(out), 0, 255).astype(np.uint8), tuple(places)


def fast_region_window(window: np.ndarray, fast: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`window` (11, S, S) with one square region taken from `fast`, the skipped window around the
    same centre frame, blended in with a feathered border. The region is drawn with a probability
    that grows with the skipped window's motion inside it (squared), so it holds a moving thing
    rather than still background; where nothing moves, anywhere."""
    return placed_fast_region(window, fast, rng)[0]


def placed_fast_region(window: np.ndarray, fast: np.ndarray, rng: np.random.Generator,
                       sides: tuple[int, int] = REGION_SIDES) -> tuple[np.ndarray, Box]:
    """fast_region_window's window and the square it replaced (the same draws); the square's side
    is drawn between size // sides[0] and size // sides[1]."""
    size = window.shape[-1]
    side = int(rng.integers(size // sides[0], size // sides[1] + 1))
    y, x = _moving_square(fast, side, rng)
    return _paste(window, fast[:, y : y + side, x : x + side], y, x), (y, x, side, side)


def fast_tube_window(window: np.ndarray, fast: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`window` (11, S, S) with a square tube of `fast` (a skipped window of another clip or time),
    drawn where it moves like `fast_region_window`'s region, pasted at a uniformly drawn place."""
    return placed_fast_tube(window, fast, rng)[0]


def placed_fast_tube(window: np.ndarray, fast: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Box]:
    """fast_tube_window's window and the square the tube was pasted into (the same draws)."""
    size = window.shape[-1]
    side = int(rng.integers(size // 6, size // 3 + 1))
    y, x = _moving_square(fast, side, rng)
    to_y, to_x = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    return _paste(window, fast[:, y : y + side, x : x + side], to_y, to_x), (to_y, to_x, side, side)


def _moving_square(fast: np.ndarray, side: int, rng: np.random.Generator) -> tuple[int, int]:
    """The top-left corner of a side x side square of `fast` (11, S, S), drawn with a probability
    that grows with the motion inside it (squared); where nothing moves, anywhere."""
    motion = np.abs(fast.astype(np.float32) - fast[CONTEXT].astype(np.float32)).mean(axis=0)
    box = _box_sums(motion, side)  # (S - side + 1, S - side + 1)
    weight = box.ravel().astype(np.float64) ** 2
    total = weight.sum()
    at = int(rng.choice(weight.size, p=weight / total)) if total > 0 else int(rng.integers(weight.size))
    y, x = divmod(at, box.shape[1])
    return y, x


def _paste(window: np.ndarray, tube: np.ndarray, y: int, x: int) -> np.ndarray:
    """`tube` (11, side, side) blended into every frame of `window` at (y, x), feathered border."""
    side = tube.shape[-1]
    mask = _feather(side)
    out = window.astype(np.float32)
    region = (slice(None), slice(y, y + side), slice(x, x + side))
    out[region] = mask * tube.astype(np.float32) + (1 - mask) * out[region]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _box_sums(image: np.ndarray, side: int) -> np.ndarray:
    """The sum of `image` over every side x side square inside it (an integral image)."""
    cum = np.pad(image.astype(np.float64), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    return cum[side:, side:] - cum[:-side, side:] - cum[side:, :-side] + cum[:-side, :-side]


def _feather(side: int, border: float = 0.2) -> np.ndarray:
    """(side, side) weights: 1 inside, falling linearly to 0 over the outer `border` of the side."""
    ramp = np.minimum(np.arange(side) + 0.5, side - np.arange(side) - 0.5) / max(border * side, 1.0)
    edge = np.clip(ramp, 0, 1)
    return np.outer(edge, edge).astype(np.float32)


def make(kind: str, clips: list, clip: int, t: int, rng: np.random.Generator) -> np.ndarray:
    """One pseudo-anomaly of `kind` from the window centred on frame t of clips[clip] (each clip
    has `.frames`, (N, S, S) uint8). Where no stride fits around t (a clip's first and last
    frames), a skip or fast region becomes a repeat: frozen frames, abnormal in any footage, where
    a reversed window is normal motion wherever things move both ways."""
    return make_boxed(kind, clips, clip, t, rng)[0]


def make_boxed(kind: str, clips: list, clip: int, t: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple[Box, ...] | None]:
    """`make`'s window (the same draws) and, for a local anomaly (LOCAL_LABELLED), the rectangles
    whose union holds it (one square; a moving patch's square in each frame); None for the kinds
    that change the whole window, and where a local kind fell back to a repeat."""
    frames = clips[clip].frames
    window = np.array(frames[t - CONTEXT : t + CONTEXT + 1])  # (11, S, S)
    if kind in ("skip", "fast-region", "fast-person"):
        strides = _kind_strides(kind, len(frames), t)
        if not strides:
            return repeat_window(window, rng), None
        fast = skip_window(frames, t, int(rng.choice(strides)))
        if kind == "skip":
            return fast, None
        return _one(placed_fast_region(window, fast, rng, PERSON_SIDES if kind == "fast-person" else REGION_SIDES))
    if kind == "reverse":
        return reverse_window(window), None
    if kind == "repeat":
        return repeat_window(window, rng), None
    if kind == "fast-tube":
        fast = _tube_source(clips, rng)
        return (repeat_window(window, rng), None) if fast is None else _one(placed_fast_tube(window, fast, rng))
    if kind == "patch":
        made, squares = _patch_from(clips, window, rng)
        return made, tuple(dict.fromkeys(squares))
    raise ValueError(f"unknown pseudo-anomaly {kind!r}")


def _kind_strides(kind: str, n_frames: int, t: int) -> list[int]:
    """The strides a skipping kind may draw around frame t of a clip of n_frames."""
    fitting = fitting_strides(n_frames, t)
    return [k for k in fitting if k in PERSON_STRIDES] if kind == "fast-person" else fitting


def _one(placed: tuple[np.ndarray, Box]) -> tuple[np.ndarray, tuple[Box, ...]]:
    return placed[0], (placed[1],)


LOCAL_LABELLED = ("fast-region", "fast-tube", "patch", "fast-person")  # the kinds make_boxed gives rectangles for


def patch_labels(regions: list, size: int, grid: tuple[int, int]) -> np.ndarray:
    """--local-labels: the label of every patch of D's map for fakes with these regions (make_boxed's
    rectangles; None: the whole window is fake): (n, h, w) float32, 0 (fake) everywhere except, in
    a local anomaly's window, 1 (real) in the patches that none of its rectangles covers (what is
    under them is the normal footage, though their receptive field may reach the anomaly)."""
    labels = np.zeros((len(regions), *grid), np.float32)
    for k, region in enumerate(regions):
        if region is not None:
            labels[k] = ~np.logical_or.reduce([box_cells(box, size, grid) for box in region])
    return labels


def box_cells(box: Box, size: int, grid: tuple[int, int]) -> np.ndarray:
    """Which cells of a grid over the S x S frame (the discriminator's patches, 7 x 7 at 224) a
    rectangle covers: (h, w) bool, a cell counted when the rectangle covers a quarter of it or
    more, and the cell under the rectangle's centre always (so a small one has a cell)."""
    top, left, height, width = box
    rows, cols = grid
    ys, xs = np.arange(rows + 1) * size / rows, np.arange(cols + 1) * size / cols  # cell edges
    over_y = np.clip(np.minimum(ys[1:], top + height) - np.maximum(ys[:-1], top), 0, None) / (size / rows)
    over_x = np.clip(np.minimum(xs[1:], left + width) - np.maximum(xs[:-1], left), 0, None) / (size / cols)
    cells = np.outer(over_y, over_x) >= 0.25
    cy = min(int((top + height / 2) * rows / size), rows - 1)
    cx = min(int((left + width / 2) * cols / size), cols - 1)
    cells[cy, cx] = True
    return cells


def _tube_source(clips: list, rng: np.random.Generator) -> np.ndarray | None:
    """A skipped window of a random clip and time long enough for stride 2 at least; None if no clip is."""
    long_enough = [i for i, c in enumerate(clips) if len(c.frames) > 2 * CONTEXT * STRIDES[0]]
    if not long_enough:
        return None
    frames = clips[long_enough[int(rng.integers(len(long_enough)))]].frames
    t = int(rng.integers(CONTEXT * STRIDES[0], len(frames) - CONTEXT * STRIDES[0]))
    return skip_window(frames, t, int(rng.choice(fitting_strides(len(frames), t))))


LOCAL_KINDS = ("fast-region", "fast-tube", "fast-person")  # the kinds whose anomaly has a place: make_located


def make_located(kind: str, clips: list, clip: int, t: int, rng: np.random.Generator) -> tuple[np.ndarray, Box] | None:
    """A local pseudo-anomaly (LOCAL_KINDS) from the window centred on frame t of clips[clip], and
    the square that holds it: what a map of the anomaly should point at (benchmarks/val_maps.py).
    None, drawing nothing, where the kind cannot be made there (no stride fits around t; no clip
    long enough), where `make_boxed` would fall back to a repeat."""
    if kind not in LOCAL_KINDS:
        raise ValueError(f"{kind!r} has no place; use one of {', '.join(LOCAL_KINDS)}")
    if kind in ("fast-region", "fast-person") and not _kind_strides(kind, len(clips[clip].frames), t):
        return None
    if kind == "fast-tube" and not any(len(c.frames) > 2 * CONTEXT * STRIDES[0] for c in clips):
        return None
    window, (square,) = make_boxed(kind, clips, clip, t, rng)
    return window, square


def make_moving(clips: list, clip: int, t: int, rng: np.random.Generator) -> tuple[np.ndarray, Box]:
    """A `patch` pseudo-anomaly (make's window, the same draws) and the square it covers in the
    middle frame: where a map of the window's middle frame should point at something that moves
    through the window (benchmarks/val_maps.py), as a test mask marks a cyclist in the frame
    scored, not along his path."""
    made, squares = _patch_from(clips, np.array(clips[clip].frames[t - CONTEXT : t + CONTEXT + 1]), rng)
    return made, squares[CONTEXT]


def _patch_from(clips: list, window: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, tuple[Box, ...]]:
    """placed_patch with a donor frame drawn from any clip."""
    other = int(rng.integers(len(clips)))
    donor = clips[other].frames[int(rng.integers(len(clips[other].frames)))]
    return placed_patch(window, np.asarray(donor), rng)
