"""Per-frame losses -> abnormality scores -> thresholds -> segments. Pure numpy, no I/O.

Every per-frame array here is 1-D, one value per frame of a clip. Frames without a full
11-frame window (the first and last 5 of a clip) are unscored: they are NaN on the way in,
stay NaN on the way out, and are never flagged. No function invents a score for them.

Terms (STAN, Eq. 5 and 6):
- ``pixel``: the generator term, the mean squared error of G(neighbours) against X_t, per frame
  (Eq. 5 writes the L2 norm; docs/evaluation.md says why the MSE).
- ``d``: the discriminator term, already -log D(S_t), per frame.
- raw score ``l_s = pixel + lambda_s * d``; normalised score ``s = (l_s - min) / (max - min)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS: tuple[str, ...] = ("g", "d", "gd")
DEFAULT_MERGE_GAP = 10
DEFAULT_MIN_LENGTH = 5
_MAD_TO_SIGMA = 1.4826  # MAD * 1.4826 estimates the standard deviation of a normal law


def _finite(x: np.ndarray) -> np.ndarray:
    """The finite values of ``x`` as a flat float64 array."""
    a = np.asarray(x, dtype=np.float64).ravel()
    return a[np.isfinite(a)]


def lambda_s(pixel: np.ndarray, d: np.ndarray) -> float:
    """The paper's weight of the discriminator term: "the maximum value ratio divided by 10".

    lambda_s = max(finite pixel) / max(finite d) / 10. When either array has no finite value,
    or max(d) <= 0 (a discriminator that is always sure, or no discriminator term), it is 0.0:
    the discriminator term is then ignored and "gd" equals "g".
    """
    p, q = _finite(pixel), _finite(d)
    if p.size == 0 or q.size == 0 or q.max() <= 0.0:
        return 0.0
    return float(p.max() / q.max() / 10.0)


def raw_score(pixel: np.ndarray, d: np.ndarray, kind: str, lam: float) -> np.ndarray:
    """The unnormalised score l_s per frame (Eq. 5), float64, NaN where unscored.

    kind "g" -> pixel; "d" -> d; "gd" -> pixel + lam * d (d is already -log D(S_t)).
    Any other kind is a ValueError.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown score kind {kind!r}; expected one of {', '.join(KINDS)}")
    p = np.asarray(pixel, dtype=np.float64)
    q = np.asarray(d, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError(f"pixel and d differ in shape: {p.shape} vs {q.shape}")
    if kind == "g":
        return p.copy()
    if kind == "d":
        return q.copy()
    return p + lam * q


def normalise_per_clip(raw: np.ndarray) -> np.ndarray:
    """Per-clip min-max normalisation (Eq. 6): (raw - min) / (max - min) over finite values.

    NaN (and +-inf: a non-finite loss is an unscored frame everywhere in stan) stays unscored, as
    NaN; an all-NaN clip stays all-NaN. A constant curve (max == min) gives 0.0 at
    every scored frame: nothing stands out from the rest of the clip, so no frame is more
    abnormal than another. Returns float64.
    """
    a = np.asarray(raw, dtype=np.float64)
    out = np.full(a.shape, np.nan)
    scored = np.isfinite(a)
    if not scored.any():
        return out
    lo, hi = a[scored].min(), a[scored].max()
    out[scored] = 0.0 if hi == lo else (a[scored] - lo) / (hi - lo)
    return out


def fallback_threshold(raw: np.ndarray) -> float:
    """A threshold for weights that carry no calibration: robust z-score above 3.

    threshold = median + 3 * 1.4826 * MAD over the finite raw values of the clip itself.
    When MAD == 0 (a constant curve) or there is no finite value, it is +inf: nothing flagged.
    """
    a = _finite(raw)
    if a.size == 0:
        return float("inf")
    med = float(np.median(a))
    mad = float(np.median(np.abs(a - med)))
    if mad == 0.0:
        return float("inf")
    return med + 3.0 * _MAD_TO_SIGMA * mad


def calibrate(pixel: np.ndarray, d: np.ndarray, false_alarm_rate: float = 0.01) -> dict:
    """Thresholds from the scores of NORMAL held-out windows, as a JSON-serialisable dict.

    Only windows where both pixel and d are finite count (n_windows). lambda_s comes from those
    windows (see ``lambda_s``). For each kind "g", "d", "gd" the dict holds mean, std, median,
    p95, p99, max, and "threshold": the (1 - false_alarm_rate) quantile (numpy's linear rule)
    of that kind's raw score, so about false_alarm_rate of normal windows score above it.
    ValueError when fewer than 2 such windows or false_alarm_rate is not in (0, 1).
    """
    if not 0.0 < false_alarm_rate < 1.0:
        raise ValueError(f"false_alarm_rate must be in (0, 1), got {false_alarm_rate}")
    p = np.asarray(pixel, dtype=np.float64).ravel()
    q = np.asarray(d, dtype=np.float64).ravel()
    if p.shape != q.shape:
        raise ValueError(f"pixel and d differ in length: {p.size} vs {q.size}")
    both = np.isfinite(p) & np.isfinite(q)
    n = int(both.sum())
    if n < 2:
        raise ValueError(f"calibration needs at least 2 scored normal windows, got {n}")
    p, q = p[both], q[both]
    lam = lambda_s(p, q)
    kinds: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        r = raw_score(p, q, kind, lam)
        kinds[kind] = {
            "mean": float(r.mean()),
            "std": float(r.std()),
            "median": float(np.median(r)),
            "p95": float(np.quantile(r, 0.95)),
            "p99": float(np.quantile(r, 0.99)),
            "max": float(r.max()),
            "threshold": float(np.quantile(r, 1.0 - false_alarm_rate)),
        }
    return {
        "lambda_s": lam,
        "false_alarm_rate": float(false_alarm_rate),
        "n_windows": n,
        "kinds": kinds,
    }


MISMATCH_SHARE = 0.5  # calibrated for 1 % false alarms: half the footage above it is not noise


def calibration_mismatch(raw: np.ndarray, threshold: float, stats: dict) -> dict | None:
    """Does this footage score like the normal footage the threshold was calibrated on?

    The calibrated threshold lets about 1 % of normal calibration windows through. When at
    least MISMATCH_SHARE of this clip's scored frames exceed it, the clip is either mostly
    abnormal or unlike the calibration footage (another camera, light, crowd or codec), and the
    threshold should not be trusted blindly. Returns None when the clip looks like the
    calibration footage (or has no scored frame), else {"share": fraction above, "median": the
    clip's median, "calibration_median": the calibration's}.
    """
    a = _finite(raw)
    if a.size == 0:
        return None
    share = float((a > threshold).mean())
    if share < MISMATCH_SHARE:
        return None
    return {"share": share, "median": float(np.median(a)), "calibration_median": float(stats["median"])}


def flag(raw: np.ndarray, threshold: float) -> np.ndarray:
    """Abnormal frames: raw > threshold (strictly). Unscored (NaN) frames are never flagged."""
    a = np.asarray(raw, dtype=np.float64)
    return ~np.isnan(a) & (a > threshold)


@dataclass(frozen=True)
class Segment:
    """A detected event: frames start..end (0-based, end inclusive) and its highest frame."""

    start: int
    end: int
    peak: int
    peak_score: float

    @property
    def length(self) -> int:
        """Number of frames, both ends included."""
        return self.end - self.start + 1


def find_segments(
    flags: np.ndarray,
    raw: np.ndarray,
    merge_gap: int = DEFAULT_MERGE_GAP,
    min_length: int = DEFAULT_MIN_LENGTH,
) -> list[Segment]:
    """Group flagged frames into events.

    Maximal runs of flagged frames; two runs with at most ``merge_gap`` unflagged frames
    between them merge into one segment (those frames become part of it). After merging,
    segments shorter than ``min_length`` frames are dropped. peak is the frame of the highest
    raw score inside the segment (NaN ignored; first one on ties), peak_score the raw score
    there. A flag on an unscored (NaN) frame is ignored. ValueError when merge_gap < 0,
    min_length < 1, or flags and raw differ in length.
    """
    if merge_gap < 0:
        raise ValueError(f"merge_gap must be >= 0, got {merge_gap}")
    if min_length < 1:
        raise ValueError(f"min_length must be >= 1, got {min_length}")
    r = np.asarray(raw, dtype=np.float64).ravel()
    f = np.asarray(flags, dtype=bool).ravel()
    if f.shape != r.shape:
        raise ValueError(f"flags and raw differ in length: {f.size} vs {r.size}")
    f = f & ~np.isnan(r)

    # Run boundaries from the edges of the 0/1 signal, padded so runs at either end close.
    edges = np.diff(np.concatenate(([0], f.astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)  # first frame of each run
    ends = np.flatnonzero(edges == -1) - 1  # last frame of each run, inclusive

    merged: list[tuple[int, int]] = []
    for s, e in zip(starts.tolist(), ends.tolist()):
        if merged and s - merged[-1][1] - 1 <= merge_gap:
            merged[-1] = (merged[-1][0], e)
        else:
            merged.append((s, e))

    segments: list[Segment] = []
    for s, e in merged:
        if e - s + 1 < min_length:
            continue
        peak = s + int(np.nanargmax(r[s : e + 1]))
        segments.append(Segment(start=s, end=e, peak=peak, peak_score=float(r[peak])))
    return segments


def frame_end(time_s: np.ndarray, last: int, first: int | None = None) -> float:
    """When frame `last` stops being shown: the next frame's time, but no later than one typical
    frame period after it (the median spacing of frames first..last, or of the whole clip), so that
    a pause in the recording (a motion-triggered camera) is not counted as footage."""
    t = np.asarray(time_s, dtype=np.float64)
    inner = np.diff(t[first : last + 1]) if first is not None and last > first else np.diff(t)
    inner = inner[np.isfinite(inner)]
    typical = float(np.median(inner)) if inner.size else 0.0
    if last + 1 < len(t) and np.isfinite(t[last + 1]):
        return float(t[last] + min(t[last + 1] - t[last], typical))
    return float(t[last] + typical)
