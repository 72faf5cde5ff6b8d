"""Writes the report folder: scores and segments as CSV, a summary as JSON, a plot (the page:
report_html).

Every file goes through fileio's `atomic_path` (a hidden temporary renamed into place), and
`detect` and `explain` write inside `fileio.staged(folder)`, so a failure half-way leaves the
folder as it was: an earlier report being overwritten and the user's own files stay untouched.
The overlay videos are encoded by video.py, which follows the same rule.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .fileio import (  # noqa: F401  (the writers' helpers, also used through this module by its callers)
    NO_PERMISSION,
    NO_SPACE,
    atomic_path,
    atomic_write_bytes,
    finish_temporary,
    output_error,
    remove_quietly,
    shown,
    staged,
)
from .scoring import Segment, frame_end

SCORES_HEADER = "frame,time_s,pixel_loss,d_loss,score_raw,score,abnormal"
SEGMENTS_HEADER = (
    "segment,start_frame,end_frame,start_s,end_s,duration_s,peak_frame,peak_time_s,peak_score"
)

# --------------------------------------------------------------------------- atomic writes


def _atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# --------------------------------------------------------------------------- CSV


def _g(x: float) -> str:
    """Up to 6 significant digits; NaN/inf (unscored frames) as an empty cell."""
    return f"{x:.6g}" if math.isfinite(x) else ""


def _t(x: float) -> str:
    """Times in seconds with millisecond resolution; NaN as an empty cell."""
    return f"{x:.3f}" if math.isfinite(x) else ""


def _columns(**arrays: np.ndarray) -> dict[str, np.ndarray]:
    """1-D float views of the arrays, checked to share one length (one row per frame)."""
    out = {name: np.asarray(a, dtype=np.float64).ravel() for name, a in arrays.items()}
    lengths = {name: a.size for name, a in out.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"per-frame arrays differ in length: {lengths}")
    return out


def write_scores_csv(
    path: str | os.PathLike[str],
    *,
    time_s: np.ndarray,
    pixel_loss: np.ndarray,
    d_loss: np.ndarray,
    score_raw: np.ndarray,
    score: np.ndarray,
    abnormal: np.ndarray,
) -> None:
    """One row per frame. Unscored frames (NaN score_raw) have empty loss/score/abnormal cells.

    Empty rather than "nan" or 0 so spreadsheet tools and pandas read them as missing, and
    nobody mistakes an edge frame that was never scored for a normal one.
    """
    c = _columns(
        time_s=time_s,
        pixel_loss=pixel_loss,
        d_loss=d_loss,
        score_raw=score_raw,
        score=score,
        abnormal=abnormal,
    )
    lines = [SCORES_HEADER]
    for i in range(c["time_s"].size):
        raw = c["score_raw"][i]
        flag = "" if not math.isfinite(raw) else str(int(c["abnormal"][i] > 0))
        lines.append(
            f"{i},{_t(c['time_s'][i])},{_g(c['pixel_loss'][i])},{_g(c['d_loss'][i])},"
            f"{_g(raw)},{_g(c['score'][i])},{flag}"
        )
    _atomic_write_text(path, "\n".join(lines) + "\n")


def write_segments_csv(
    path: str | os.PathLike[str], segments: Sequence[Segment], time_s: np.ndarray
) -> None:
    """One row per abnormal segment, numbered from 1; the header is written even with none.

    duration_s covers the frames start..end inclusive (segment_duration), so 5 frames at 25 fps
    last 0.2 s and a one-frame segment is not 0 s long.
    """
    t = np.asarray(time_s, dtype=np.float64)
    lines = [SEGMENTS_HEADER]
    for n, seg in enumerate(segments, start=1):
        start_s, end_s, peak_s = float(t[seg.start]), float(t[seg.end]), float(t[seg.peak])
        lines.append(
            f"{n},{seg.start},{seg.end},{_t(start_s)},{_t(end_s)},{_t(segment_duration(t, seg))},"
            f"{seg.peak},{_t(peak_s)},{_g(float(seg.peak_score))}"
        )
    _atomic_write_text(path, "\n".join(lines) + "\n")


# --------------------------------------------------------------------------- JSON


def sanitize_json(value: Any) -> Any:
    """Plain-JSON copy of `value`: numpy scalars/arrays unwrapped, paths as strings, NaN/inf None.

    Python's json writes NaN as a bare `NaN`, which is not JSON and breaks strict readers
    (jq, browsers); null is what "no value" means there.
    """
    if isinstance(value, Mapping):
        return {str(k): sanitize_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [sanitize_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return sanitize_json(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (str, os.PathLike)):
        return shown(value)  # a name that is not UTF-8 as \xff: valid JSON text
    return value


def write_json(path: str | os.PathLike[str], data: Mapping[str, Any]) -> None:
    """Pretty-printed JSON in the dict's own key order; NaN and inf written as null."""
    text = json.dumps(sanitize_json(data), indent=2, ensure_ascii=False, allow_nan=False)
    _atomic_write_text(path, text + "\n")


# --------------------------------------------------------------------------- plot


def segment_duration(time_s: np.ndarray, seg: Segment) -> float:
    """Seconds the frames seg.start..seg.end are shown: from the first's time to when the last
    stops being shown (scoring.frame_end: the next frame's time, at most the segment's typical
    frame period after it)."""
    t = np.asarray(time_s, dtype=np.float64)
    return frame_end(t, seg.end, seg.start) - float(t[seg.start])


def frame_period(t: np.ndarray) -> float:
    """Typical time between frames, used to give one-frame segments a visible width."""
    steps = np.diff(t[np.isfinite(t)])
    return float(np.median(steps)) if steps.size else 0.0


def _normalised_axis(score_raw: np.ndarray, score: np.ndarray):
    """(raw->score, score->raw) functions when score is a linear map of score_raw, else None.

    The per-clip normalised score is a min-max rescaling of the raw one, so it fits on a
    secondary y axis instead of a second, redundant curve.
    """
    ok = np.isfinite(score_raw) & np.isfinite(score)
    if ok.sum() < 2 or np.ptp(score_raw[ok]) == 0:
        return None
    slope, offset = np.polyfit(score_raw[ok], score[ok], 1)
    fit = slope * score_raw[ok] + offset
    if slope == 0 or not np.allclose(fit, score[ok], atol=1e-6 * max(1.0, np.ptp(score[ok]))):
        return None
    return (lambda r: slope * r + offset), (lambda s: (s - offset) / slope)


def add_normalised_axis(ax, score_raw: np.ndarray, score: np.ndarray):
    """The normalised score as a right-hand axis of the raw-score plot `ax`, or None.

    Ticks only at 0, 0.25, ..., 1: the normalised score lives in [0, 1] (the clip's lowest and
    highest scored frame), even where a threshold far from the curve stretches the raw axis.
    """
    axis = _normalised_axis(score_raw, score)
    if axis is None:
        return None
    secondary = ax.secondary_yaxis("right", functions=axis)
    secondary.set_yticks(np.linspace(0.0, 1.0, 5))
    secondary.set_ylabel("normalised score (clip min 0, max 1)")
    return secondary


def plot_scores(
    path: str | os.PathLike[str],
    *,
    time_s: np.ndarray,
    score: np.ndarray,
    score_raw: np.ndarray,
    threshold: float | None,
    segments: Sequence[Segment],
    title: str,
) -> None:
    """A 1200x400 PNG of the raw score over time, the threshold dashed, flagged segments shaded.

    The raw score is plotted because that is what the threshold applies to; the normalised
    score appears as a right-hand axis when it is a linear rescaling. Unscored edge frames are
    NaN and simply absent. Figure + FigureCanvasAgg keep pyplot's global state out of it.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    t = np.asarray(time_s, dtype=np.float64)
    raw = np.asarray(score_raw, dtype=np.float64)
    norm = np.asarray(score, dtype=np.float64)

    fig = Figure(figsize=(12, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(t, raw, color="#1f5fa8", linewidth=1.2, label="raw score")
    _draw_flagging(ax, t, segments, threshold)
    if not np.isfinite(raw).any():
        ax.text(0.5, 0.5, "no scored frames", transform=ax.transAxes, ha="center", va="center")

    add_normalised_axis(ax, raw, norm)
    if np.isfinite(t).any():
        ax.set_xlim(np.nanmin(t), max(np.nanmax(t), np.nanmin(t) + 1e-3))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("raw score")
    ax.set_title(shown(title), loc="left")
    ax.grid(True, alpha=0.25)
    if ax.get_legend_handles_labels()[0]:
        # Above the axes, beside the title, so it never hides a peak.
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=3, frameon=False, fontsize=9)
    fig.tight_layout()

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    fig.clear()
    atomic_write_bytes(path, buf.getvalue())


def _draw_flagging(ax, t: np.ndarray, segments: Sequence[Segment], threshold: float | None) -> None:
    """The flagged segments shaded (each a frame period wide at least) and the threshold dashed."""
    half = frame_period(t) / 2
    for i, seg in enumerate(segments):
        ax.axvspan(t[seg.start] - half, t[seg.end] + half, color="#d62728", alpha=0.18, linewidth=0,
                   label="abnormal segment" if i == 0 else None)
    if threshold is not None and math.isfinite(threshold):
        ax.axhline(threshold, color="#d62728", linestyle="--", linewidth=1.0, label=f"threshold {threshold:.4g}")


# --------------------------------------------------------------------------- words


def flagged_but_short(abnormal_frames: Any, min_length: Any) -> str | None:
    """Why a clip with flagged frames has no segment ("2 flagged frames, in runs shorter than
    --min-length 5 (see scores.csv)"); None when nothing was flagged."""
    if not isinstance(abnormal_frames, int) or abnormal_frames <= 0:
        return None
    frames = "1 flagged frame" if abnormal_frames == 1 else f"{abnormal_frames} flagged frames"
    shorter = f"shorter than --min-length {min_length}" if min_length else "too short to keep"
    return f"{frames}, in runs {shorter} (see scores.csv)"
