"""Pure image functions for the overlay videos: heat maps, text, borders and a score strip.

Everything here takes and returns numpy uint8 RGB images of shape (H, W, 3); nothing reads
files, keeps state or touches a GPU, so the functions are cheap to test one by one and the
video writer can call them per frame from any thread. Pillow and OpenCV are deliberately not
dependencies: a 5x7 bitmap font and a few numpy masks cover what a report overlay needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

RGB = tuple[int, int, int]

ABNORMAL_RED: RGB = (230, 30, 30)
_BAND = 128  # image rows processed at a time: memory per frame stays small for any resolution

# 5x7 glyphs, one string per row; "#" is ink. Only what labels like
# "FRAME 120  T=4.00S  SCORE=0.83 [ABNORMAL]" need; anything else is drawn as a space.
_GLYPHS: dict[str, tuple[str, ...]] = {
    " ": ("     ",) * 7,
    "0": (" ### ", "#   #", "#  ##", "# # #", "##  #", "#   #", " ### "),
    "1": ("  #  ", " ##  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### "),
    "2": (" ### ", "#   #", "    #", "   # ", "  #  ", " #   ", "#####"),
    "3": ("#####", "   # ", "  #  ", "   # ", "    #", "#   #", " ### "),
    "4": ("   # ", "  ## ", " # # ", "#  # ", "#####", "   # ", "   # "),
    "5": ("#####", "#    ", "#### ", "    #", "    #", "#   #", " ### "),
    "6": ("  ## ", " #   ", "#    ", "#### ", "#   #", "#   #", " ### "),
    "7": ("#####", "    #", "   # ", "  #  ", " #   ", " #   ", " #   "),
    "8": (" ### ", "#   #", "#   #", " ### ", "#   #", "#   #", " ### "),
    "9": (" ### ", "#   #", "#   #", " ####", "    #", "   # ", " ##  "),
    "A": (" ### ", "#   #", "#   #", "#####", "#   #", "#   #", "#   #"),
    "B": ("#### ", "#   #", "#   #", "#### ", "#   #", "#   #", "#### "),
    "C": (" ### ", "#   #", "#    ", "#    ", "#    ", "#   #", " ### "),
    "D": ("###  ", "#  # ", "#   #", "#   #", "#   #", "#  # ", "###  "),
    "E": ("#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#####"),
    "F": ("#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#    "),
    "G": (" ### ", "#   #", "#    ", "# ###", "#   #", "#   #", " ####"),
    "H": ("#   #", "#   #", "#   #", "#####", "#   #", "#   #", "#   #"),
    "I": (" ### ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### "),
    "J": ("  ###", "   # ", "   # ", "   # ", "   # ", "#  # ", " ##  "),
    "K": ("#   #", "#  # ", "# #  ", "##   ", "# #  ", "#  # ", "#   #"),
    "L": ("#    ", "#    ", "#    ", "#    ", "#    ", "#    ", "#####"),
    "M": ("#   #", "## ##", "# # #", "# # #", "#   #", "#   #", "#   #"),
    "N": ("#   #", "#   #", "##  #", "# # #", "#  ##", "#   #", "#   #"),
    "O": (" ### ", "#   #", "#   #", "#   #", "#   #", "#   #", " ### "),
    "P": ("#### ", "#   #", "#   #", "#### ", "#    ", "#    ", "#    "),
    "Q": (" ### ", "#   #", "#   #", "#   #", "# # #", "#  # ", " ## #"),
    "R": ("#### ", "#   #", "#   #", "#### ", "# #  ", "#  # ", "#   #"),
    "S": (" ####", "#    ", "#    ", " ### ", "    #", "    #", "#### "),
    "T": ("#####", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  "),
    "U": ("#   #", "#   #", "#   #", "#   #", "#   #", "#   #", " ### "),
    "V": ("#   #", "#   #", "#   #", "#   #", "#   #", " # # ", "  #  "),
    "W": ("#   #", "#   #", "#   #", "# # #", "# # #", "# # #", " # # "),
    "X": ("#   #", "#   #", " # # ", "  #  ", " # # ", "#   #", "#   #"),
    "Y": ("#   #", "#   #", " # # ", "  #  ", "  #  ", "  #  ", "  #  "),
    "Z": ("#####", "    #", "   # ", "  #  ", " #   ", "#    ", "#####"),
    ".": ("     ", "     ", "     ", "     ", "     ", " ##  ", " ##  "),
    ":": ("     ", " ##  ", " ##  ", "     ", " ##  ", " ##  ", "     "),
    "-": ("     ", "     ", "     ", " ### ", "     ", "     ", "     "),
    "/": ("    #", "    #", "   # ", "  #  ", " #   ", "#    ", "#    "),
    "=": ("     ", "     ", "#####", "     ", "#####", "     ", "     "),
    "%": ("##   ", "##  #", "   # ", "  #  ", " #   ", "#  ##", "   ##"),
    "(": ("   # ", "  #  ", " #   ", " #   ", " #   ", "  #  ", "   # "),
    ")": (" #   ", "  #  ", "   # ", "   # ", "   # ", "  #  ", " #   "),
    "[": (" ### ", " #   ", " #   ", " #   ", " #   ", " #   ", " ### "),
    "]": (" ### ", "   # ", "   # ", "   # ", "   # ", "   # ", " ### "),
}
GLYPH_W, GLYPH_H = 5, 7
_ADVANCE = GLYPH_W + 1  # one blank column between glyphs
_PAD = 1  # blank border (in glyph pixels) inside the background box


# --------------------------------------------------------------------------- colour and resize


@lru_cache(maxsize=8)
def colormap_lut(name: str = "inferno") -> np.ndarray:
    """A (256, 3) uint8 lookup table for a matplotlib colormap.

    Cached because every overlay frame needs it and building it goes through matplotlib's
    registry; callers must treat the returned array as read-only (it is flagged so).
    """
    import matplotlib

    cmap = matplotlib.colormaps[name]
    lut = np.rint(cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255.0).astype(np.uint8)
    lut.flags.writeable = False
    return lut


def _source_index(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left/right source indices and right-hand weights for one axis.

    align_corners=False: output pixel centres map to (i + 0.5) * n_in / n_out - 0.5 in the
    input, clamped at 0 like torch so the first row is not extrapolated.
    """
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.intp), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0


def resize_bilinear(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a 2-D float map to (height, width), matching torch's bilinear, align_corners=False.

    The explanation maps come out of the network at its input resolution; the overlay needs
    them at the video's, and this keeps torch out of the report path.
    """
    a = np.asarray(a, dtype=np.float32)  # float32 as the result: within 1e-6 of float64 on maps in [0, 1]
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"resize_bilinear expects a non-empty 2-D array, got shape {a.shape}")
    if height < 1 or width < 1:
        raise ValueError(f"resize_bilinear target must be at least 1x1, got {height}x{width}")
    y0, y1, wy = _source_index(a.shape[0], height)
    x0, x1, wx = _source_index(a.shape[1], width)
    wy, wx = wy.astype(np.float32), wx.astype(np.float32)
    out = np.empty((height, width), dtype=np.float32)
    for top in range(0, height, _BAND):  # bands keep temporaries small at 4K and above
        rows_of = slice(top, top + _BAND)
        rows = a[y0[rows_of]] * (1.0 - wy[rows_of])[:, None] + a[y1[rows_of]] * wy[rows_of][:, None]  # (band, w)
        out[rows_of] = rows[:, x0] * (1.0 - wx)[None, :] + rows[:, x1] * wx[None, :]  # (band, width)
    return out


def shrink(image: np.ndarray, max_side: int) -> np.ndarray:
    """An (H, W) or (H, W, C) image made at most `max_side` on its longest side by averaging
    k x k blocks (the smallest whole k that fits; the last rows and columns that make no whole
    block are dropped); the image itself when it fits already. uint8 stays uint8, anything else
    becomes float32. Works a band of rows at a time, so an 8000 x 6000 frame needs no float copy."""
    height, width = image.shape[:2]
    k = -(-max(height, width) // max(1, max_side))
    if k <= 1:
        return image
    rows, cols = height // k, width // k
    rest = image.shape[2:]
    out = np.empty((rows, cols, *rest), dtype=np.uint8 if image.dtype == np.uint8 else np.float32)
    for top in range(0, rows, _BAND):
        n = min(_BAND, rows - top)
        block = image[top * k : (top + n) * k, : cols * k].astype(np.float32)  # (n k, cols k, ...)
        means = block.reshape(n, k, cols, k, *rest).mean(axis=(1, 3))  # (n, cols, ...)
        out[top : top + n] = np.rint(means) if out.dtype == np.uint8 else means
    return out


def _check_frame(frame: np.ndarray) -> None:
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(
            f"expected a uint8 RGB image of shape (H, W, 3), got {frame.dtype} {frame.shape}"
        )


def heat_overlay(
    frame: np.ndarray,
    heat: np.ndarray | None,
    alpha_max: float = 0.6,
    cmap: str = "inferno",
) -> np.ndarray:
    """Blend a [0, 1] heat map over a frame, returning a new image.

    alpha = alpha_max * heat, so cold pixels show the frame untouched and only the hot regions
    are tinted. A missing map (None or all NaN, e.g. an unscored edge frame) leaves the frame
    as it is; isolated NaNs count as cold.
    """
    _check_frame(frame)
    if heat is None:
        return frame.copy()
    heat = np.asarray(heat, dtype=np.float32)
    finite = np.isfinite(heat)
    if not finite.any():
        return frame.copy()
    heat = np.clip(np.where(finite, heat, 0.0), 0.0, 1.0)
    height, width = frame.shape[:2]
    up = np.clip(resize_bilinear(heat, height, width), 0.0, 1.0)  # (H, W)
    keep, tint = _blend_tables(cmap, float(alpha_max))
    out = np.empty_like(frame)
    for top in range(0, height, _BAND):  # a band at a time: a 4K frame as float32 is 100 MB per copy
        rows = slice(top, top + _BAND)
        level = np.rint(up[rows] * 255.0).astype(np.uint8)  # (band, W)
        mixed = frame[rows] * keep[level][..., None] + tint[level]  # (band, W, 3): frame x (1 - a) + colour x a
        out[rows] = np.rint(mixed, out=mixed).astype(np.uint8)  # never past 255: a convex mix of two colours
    return out


@lru_cache(maxsize=8)
def _blend_tables(cmap: str, alpha_max: float) -> tuple[np.ndarray, np.ndarray]:
    """Per heat level k / 255: the frame's share 1 - a and the colour's part a x colour, a = alpha_max x k / 255,
    so that a blend is one multiply-add per pixel. Read-only (cached)."""
    alpha = (alpha_max * np.arange(256) / 255.0).astype(np.float32)  # (256,)
    keep, tint = 1.0 - alpha, alpha[:, None] * colormap_lut(cmap).astype(np.float32)  # (256,), (256, 3)
    keep.flags.writeable = tint.flags.writeable = False
    return keep, tint


# --------------------------------------------------------------------------- text and borders


def _text_mask(text: str) -> np.ndarray:
    """Ink mask (7, 6n - 1) of a one-line string; lowercase drawn as uppercase."""
    glyphs = [_GLYPHS.get(ch, _GLYPHS[" "]) for ch in text.upper()]
    mask = np.zeros((GLYPH_H, _ADVANCE * len(glyphs) - 1), dtype=bool)
    for i, glyph in enumerate(glyphs):
        cell = np.array([[c == "#" for c in row] for row in glyph], dtype=bool)
        mask[:, i * _ADVANCE : i * _ADVANCE + GLYPH_W] = cell
    return mask


def text_size(text: str, scale: int = 2) -> tuple[int, int]:
    """(width, height) in pixels of the box draw_text paints, for laying labels out."""
    if not text:
        return 0, 0
    return (
        (_ADVANCE * len(text) - 1 + 2 * _PAD) * scale,
        (GLYPH_H + 2 * _PAD) * scale,
    )


def draw_text(
    img: np.ndarray,
    text: str,
    x: int,
    y: int,
    scale: int = 2,
    color: RGB = (255, 255, 255),
    background: RGB | None = (0, 0, 0),
) -> None:
    """Draw one line of text in place, its box's top-left corner at (x, y).

    The background box keeps the label readable on any frame; whatever falls outside the image
    is clipped rather than raising, so callers need not measure first.
    """
    _check_frame(img)
    if not text or scale < 1:
        return
    mask = np.pad(_text_mask(text), _PAD)
    mask = mask.repeat(scale, axis=0).repeat(scale, axis=1)  # (box_h, box_w)
    img_h, img_w = img.shape[:2]
    y0, y1 = max(y, 0), min(y + mask.shape[0], img_h)
    x0, x1 = max(x, 0), min(x + mask.shape[1], img_w)
    if y0 >= y1 or x0 >= x1:
        return
    region = img[y0:y1, x0:x1]  # a view: writes land in img
    if background is not None:
        region[...] = background
    region[mask[y0 - y : y1 - y, x0 - x : x1 - x]] = color


def draw_border(img: np.ndarray, thickness: int, color: RGB = ABNORMAL_RED) -> None:
    """Paint a frame-edge border in place (the overlay marks abnormal frames with a red one)."""
    _check_frame(img)
    t = max(0, min(int(thickness), (min(img.shape[:2]) + 1) // 2))
    if t == 0:
        return
    img[:t] = color
    img[-t:] = color
    img[:, :t] = color
    img[:, -t:] = color


# --------------------------------------------------------------------------- score strip

_STRIP_BG: RGB = (24, 24, 28)
_STRIP_CURVE: RGB = (250, 190, 70)
_STRIP_FILL: RGB = (80, 64, 36)
_STRIP_HOT: RGB = (255, 70, 60)
_STRIP_HOT_FILL: RGB = (110, 36, 32)
_STRIP_THRESHOLD: RGB = (170, 170, 170)
_STRIP_MARKER: RGB = (255, 255, 255)


def _column_bins(n: int, width: int) -> np.ndarray:
    """First frame of each pixel column's bin; bins tile 0..n-1 (repeat when n < width)."""
    return (np.arange(width, dtype=np.int64) * n) // width


def _value_rows(values: np.ndarray, vmin: float, vmax: float, height: int) -> np.ndarray:
    """Map values to (float) pixel rows, top = vmax, keeping a one-pixel margin when possible."""
    margin = 1 if height >= 4 else 0
    span = max(height - 1 - 2 * margin, 0)
    frac = np.clip((values - vmin) / (vmax - vmin), 0.0, 1.0)
    return np.rint(margin + (1.0 - frac) * span)


def _strip_range(
    values: np.ndarray, threshold: float | None, vmax: float | None
) -> tuple[float, float]:
    """Vertical range: from 0 (or a lower value) to vmax, else to the data or threshold."""
    lo = min(0.0, float(values.min())) if values.size else 0.0
    candidates = [float(values.max())] if values.size else []
    if threshold is not None and np.isfinite(threshold):
        candidates.append(float(threshold))
    hi = float(vmax) if vmax is not None else max(candidates, default=1.0)
    if not np.isfinite(hi) or hi <= lo:
        hi = lo + 1.0
    return lo, hi


def score_strip(
    width: int,
    height: int,
    scores: np.ndarray,
    current: int,
    threshold: float | None = None,
    vmax: float | None = None,
) -> np.ndarray:
    """A (height, width, 3) sparkline of the whole clip's score with a marker at `current`.

    Each pixel column shows the max of its bin of frames, so a one-frame spike survives
    subsampling of a long clip; NaN (unscored) frames leave gaps. Columns above the threshold
    are drawn red so the flagged stretches read at a glance under the video.
    """
    if width < 1 or height < 1:
        raise ValueError(f"score_strip needs a positive size, got {width}x{height}")
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[...] = _STRIP_BG
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n = scores.size
    if n == 0:
        return img
    starts = _column_bins(n, width)
    col = np.fmax.reduceat(scores, starts)  # (width,), NaN only where the whole bin is NaN
    finite = np.isfinite(col)

    lo, hi = _strip_range(col[finite], threshold, vmax)

    rows = np.arange(height)[:, None]  # (height, 1)
    if threshold is not None and np.isfinite(threshold):
        t_row = int(_value_rows(np.array([threshold]), lo, hi, height)[0])
        dashes = (np.arange(width) // 4) % 2 == 0
        img[t_row, dashes] = _STRIP_THRESHOLD

    if finite.any():
        y = _value_rows(np.where(finite, col, lo), lo, hi, height)  # (width,)
        # Join each column to its left neighbour so steep changes stay one connected line.
        prev = np.concatenate([y[:1], y[:-1]])
        prev_ok = np.concatenate([[False], finite[:-1]])
        top = np.where(prev_ok, np.minimum(y, prev), y)
        bottom = np.where(prev_ok, np.maximum(y, prev), y)
        hot = finite & (col > threshold) if threshold is not None else np.zeros(width, bool)
        fill = finite[None, :] & (rows > bottom[None, :])  # (height, width)
        line = finite[None, :] & (rows >= top[None, :]) & (rows <= bottom[None, :])
        fill_rgb = np.where(hot[:, None], _STRIP_HOT_FILL, _STRIP_FILL).astype(np.uint8)
        line_rgb = np.where(hot[:, None], _STRIP_HOT, _STRIP_CURVE).astype(np.uint8)
        img[fill] = np.broadcast_to(fill_rgb, (height, width, 3))[fill]
        img[line] = np.broadcast_to(line_rgb, (height, width, 3))[line]

    if 0 <= current < n:
        # The column(s) showing `current`: one bin for long clips, a run for short ones.
        last = int(np.searchsorted(starts, current, side="right")) - 1
        first = int(np.searchsorted(starts, starts[last], side="left"))
        img[:, first : last + 1] = _STRIP_MARKER
    return img


# --------------------------------------------------------------------------- whole frame


def label_scale(width: int, height: int) -> int:
    """Text scale that keeps labels legible but small: 1 up to ~480 px, then grows."""
    return max(1, min(width, height) // 240)


def _fitting_index(labels: Sequence[str], room: int, scale: int) -> int:
    """Index of the first of `labels` (longest first) whose box fits in `room` pixels, else the last."""
    return next((i for i, label in enumerate(labels) if text_size(label, scale)[0] <= room), len(labels) - 1)


def fitting_label(labels: str | Sequence[str], room: int, scale: int) -> str:
    """The first of `labels` (longest first) whose box fits in `room` pixels, else the last one."""
    labels = [labels] if isinstance(labels, str) else list(labels)
    return labels[_fitting_index(labels, room, scale)] if labels else ""


def _border(width: int, height: int) -> int:
    """The red border of an abnormal frame, in pixels."""
    return max(2, min(height, width) // 80)


def label_level(labels: Sequence[str], width: int, height: int) -> int:
    """Index of the version compose_frame draws on a `width` x `height` frame with the abnormal
    border (the least room): a caller can keep one version for a whole video."""
    scale = label_scale(width, height)
    return max(0, _fitting_index(labels, width - 2 * (_border(width, height) + scale), scale))


def compose_frame(
    frame: np.ndarray,
    heat: np.ndarray | None,
    label: str | Sequence[str],
    abnormal: bool,
    strip: np.ndarray | None = None,
) -> np.ndarray:
    """One overlay-video frame: heat map, label top-left, red border if abnormal, strip below.

    `label` may be several versions of the text, longest first: the first that fits the frame's
    width is drawn, so a small video keeps a readable label instead of a clipped one. The strip
    goes under the frame rather than on top of it so no pixel of the scene is hidden; the output
    is (H + strip_h, W, 3) and W is unchanged.
    """
    out = heat_overlay(frame, heat)
    height, width = out.shape[:2]
    border = _border(width, height) if abnormal else 0
    if abnormal:
        draw_border(out, border, ABNORMAL_RED)
    scale = label_scale(width, height)
    label = fitting_label(label, width - 2 * (border + scale), scale)
    draw_text(out, label, border + scale, border + scale, scale=scale)
    if strip is None:
        return out
    if strip.ndim != 3 or strip.shape[1:] != (width, 3) or strip.dtype != np.uint8:
        raise ValueError(
            f"strip must be uint8 of shape (h, {width}, 3) to sit under the frame, "
            f"got {strip.dtype} {strip.shape}"
        )
    return np.concatenate([out, strip], axis=0)  # (H + strip_h, W, 3)
