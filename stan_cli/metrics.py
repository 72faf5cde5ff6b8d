"""Benchmark metrics: frame-level ROC/AUC/EER, event-level detection, UCSD pixel level. Pure numpy.

Conventions shared by every function here:
- a clip is a 1-D array of per-frame scores (higher = more abnormal) and a same-length array of
  0/1 (or bool) labels; NaN scores mark frames without a full window and are dropped, never
  filled in;
- ROC curves are computed exactly (no binning): a frame is called abnormal at threshold ``tau``
  when its score is ``>= tau``, and tied scores move together, so a tie is one diagonal step.

Frame-level protocols (STAN.md, "How the field evaluates"):
- ``"pooled"``, the field's standard (assumed for the paper's Table 2, which does not say): each clip's scores
  are min-max normalised over its scored frames (Eq. 6; a constant clip becomes all 0), the
  scored frames of all clips are pooled into one ROC; no smoothing.
- ``"macro"``: the mean of the per-clip AUCs, over the clips whose scored frames hold both
  classes; clips with a single class have no AUC and are skipped (and counted).

Event level (Hasan et al., CVPR 2016) and pixel level (UCSD, Mahadevan et al., CVPR 2010): see
``event_level`` and ``pixel_critical_value``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .scoring import normalise_per_clip

PROTOCOLS: tuple[str, ...] = ("pooled", "macro")

# Event-level rule. FIXED A PRIORI, before any Ped2 result was looked at, from Hasan et al.'s
# description ("local peaks of the score, grouped when closer than 50 frames"), and never tuned.
# All of them act on the per-clip min-max normalised score s (Eq. 6), in frames:
PEAK_RADIUS = 25  # a peak is the highest scored frame within +-25 frames (the earliest on ties) ...
PEAK_LEVEL = 0.5  # ... whose normalised score is at least 0.5 (half the clip's range): no noise bumps
DETECTION_HALF_WIDTH = 25  # a detected event is the window peak-25 .. peak+25 (51 frames), clipped to the scored frames
MERGE_DISTANCE = 50  # peaks fewer than 50 frames apart are one event (chained): its extent is the union
MIN_OVERLAP = 0.5  # correct: overlap with a ground-truth event >= half of the shorter of the two
PIXEL_COVERAGE = 0.4  # UCSD: an abnormal frame is detected when >= 40 % of its anomaly pixels are covered


# ----------------------------------------------------------------------------------- ROC, AUC, EER


def _scores_labels(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.size} vs {y.size}")
    if np.isnan(s).any():
        raise ValueError("scores hold NaN; drop unscored frames first")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1 or bool")
    return s, y.astype(bool)


def has_both_classes(labels: np.ndarray) -> bool:
    """True when ``labels`` holds at least one 0 and one 1 (a ROC needs both)."""
    y = np.asarray(labels).astype(bool)
    return bool(y.any() and (~y).any())


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact ROC: (fpr, tpr, thresholds), one point per distinct score, plus the origin.

    thresholds run from +inf (nothing called abnormal: the point (0, 0)) down to the lowest
    score (everything abnormal: (1, 1)); point k is "score >= thresholds[k]". Tied scores
    cross the threshold together, so they form a single (diagonal) step. Scores may be +-inf
    but not NaN. ValueError when labels hold only one class or lengths differ.
    """
    s, y = _scores_labels(scores, labels)
    if not has_both_classes(y):
        raise ValueError("a ROC needs both normal (0) and abnormal (1) frames")
    order = np.argsort(-s, kind="mergesort")  # descending score
    s, y = s[order], y[order]
    last_of_value = np.flatnonzero(s[1:] != s[:-1])  # index of the last frame of each tie group ... (inf ties too)
    last_of_value = np.append(last_of_value, s.size - 1)  # ... including the final group
    tp = np.cumsum(y)[last_of_value]
    fp = np.cumsum(~y)[last_of_value]
    tpr = np.concatenate(([0.0], tp / tp[-1]))
    fpr = np.concatenate(([0.0], fp / fp[-1]))
    thresholds = np.concatenate(([np.inf], s[last_of_value]))
    return fpr, tpr, thresholds


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under a curve by the trapezoid rule; fpr must be sorted (either direction)."""
    x = np.asarray(fpr, dtype=np.float64)
    y = np.asarray(tpr, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size < 2:
        raise ValueError("fpr and tpr must be 1-D of the same length, at least 2 points")
    dx = np.diff(x)
    if (dx < 0).any() and (dx > 0).any():
        raise ValueError("fpr is not monotonic")
    area = float(np.sum(dx * (y[1:] + y[:-1]) / 2.0))
    return abs(area)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the exact ROC (= probability that an abnormal frame outscores a normal one,
    ties counting one half). ValueError when labels hold only one class."""
    fpr, tpr, _ = roc_curve(scores, labels)
    return auc(fpr, tpr)


def eer(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Equal error rate: the false-positive rate where it equals the miss rate 1 - TPR.

    Found on the piecewise-linear ROC: the first segment on which fpr - (1 - tpr) changes sign,
    linearly interpolated. 0.0 for a perfect detector, 0.5 for a useless one. The ROC must run
    from (0, 0) to (1, 1) as ``roc_curve`` returns it.
    """
    x = np.asarray(fpr, dtype=np.float64)
    y = np.asarray(tpr, dtype=np.float64)
    gap = x + y - 1.0  # fpr - (1 - tpr): -1 at (0, 0), +1 at (1, 1), non-decreasing along the curve
    k = int(np.argmax(gap >= 0.0))
    if gap[k] < 0.0:
        raise ValueError("the ROC never reaches fpr = 1 - tpr; pass a complete curve")
    if k == 0 or gap[k] == 0.0:
        return float(x[k])
    a = -gap[k - 1] / (gap[k] - gap[k - 1])
    return float(x[k - 1] + a * (x[k] - x[k - 1]))


# ----------------------------------------------------------------------------------- frame level


@dataclass(frozen=True)
class FrameAUC:
    """A frame-level AUC and what went into it."""

    protocol: str
    auc: float  # NaN when no clip (macro) or the pool (pooled) has both classes
    frames: int  # scored frames used
    clips: int  # clips that contributed
    skipped_clips: tuple[int, ...] = ()  # macro only: indices of clips without both classes
    per_clip: tuple[float, ...] = field(default=(), repr=False)  # macro only: NaN where skipped


def _check_clips(per_clip_scores: Sequence[np.ndarray], per_clip_labels: Sequence[np.ndarray]) -> None:
    if len(per_clip_scores) != len(per_clip_labels):
        raise ValueError(f"{len(per_clip_scores)} score arrays but {len(per_clip_labels)} label arrays")
    for k, (s, y) in enumerate(zip(per_clip_scores, per_clip_labels)):
        if np.asarray(s).size != np.asarray(y).size:
            raise ValueError(f"clip {k}: {np.asarray(s).size} scores but {np.asarray(y).size} labels")


def pooled(per_clip_scores: Sequence[np.ndarray], per_clip_labels: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The "pooled" protocol's inputs: per-clip min-max normalised scores of all scored frames,
    concatenated, with their labels (NaN frames dropped)."""
    _check_clips(per_clip_scores, per_clip_labels)
    scores, labels = [], []
    for s, y in zip(per_clip_scores, per_clip_labels):
        norm = normalise_per_clip(np.asarray(s, dtype=np.float64).ravel())
        keep = np.isfinite(norm)
        scores.append(norm[keep])
        labels.append(np.asarray(y).ravel()[keep].astype(bool))
    if not scores:
        return np.zeros(0), np.zeros(0, dtype=bool)
    return np.concatenate(scores), np.concatenate(labels)


def clip_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """AUC of one clip over its scored frames; NaN when they hold only one class."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    keep = np.isfinite(s)
    if not has_both_classes(y[keep]):
        return float("nan")
    return roc_auc(s[keep], y[keep])


def frame_auc(
    per_clip_scores: Sequence[np.ndarray], per_clip_labels: Sequence[np.ndarray], protocol: str = "pooled"
) -> FrameAUC:
    """Frame-level AUC of raw per-clip scores under ``protocol`` ("pooled" or "macro", see the
    module docstring). NaN (unscored) frames are dropped; nothing is smoothed."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    _check_clips(per_clip_scores, per_clip_labels)
    if protocol == "pooled":
        s, y = pooled(per_clip_scores, per_clip_labels)
        value = roc_auc(s, y) if has_both_classes(y) else float("nan")
        used = sum(1 for c in per_clip_scores if np.isfinite(np.asarray(c, dtype=np.float64)).any())
        return FrameAUC("pooled", value, int(s.size), used)
    aucs = [clip_auc(s, y) for s, y in zip(per_clip_scores, per_clip_labels)]
    skipped = tuple(k for k, a in enumerate(aucs) if np.isnan(a))
    good = [a for a in aucs if not np.isnan(a)]
    frames = sum(
        int(np.isfinite(np.asarray(s, dtype=np.float64)).sum())
        for k, s in enumerate(per_clip_scores) if k not in skipped
    )
    value = float(np.mean(good)) if good else float("nan")
    return FrameAUC("macro", value, frames, len(good), skipped, tuple(aucs))


# ----------------------------------------------------------------------------------- event level


def events_from_labels(labels: np.ndarray) -> list[tuple[int, int]]:
    """Ground-truth events: maximal runs of abnormal frames, as (start, end), 0-based inclusive."""
    y = np.asarray(labels).ravel().astype(np.int8)
    edges = np.diff(np.concatenate(([0], y, [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1) - 1
    return [(int(s), int(e)) for s, e in zip(starts, ends)]


@dataclass(frozen=True)
class Detection:
    """A detected event of one clip: frames start..end (0-based, inclusive) around its peak."""

    clip: int
    start: int
    end: int
    peak: int
    peak_score: float  # normalised score at the peak
    outcome: str = ""  # "correct", "partial" or "false_alarm" once matched
    event: tuple[int, int] | None = None  # the overlapped ground-truth event with the highest overlap ratio

    def to_dict(self) -> dict:
        return {
            "clip": self.clip, "start": self.start, "end": self.end, "peak": self.peak,
            "peak_score": self.peak_score, "outcome": self.outcome,
            "event": list(self.event) if self.event is not None else None,
        }


def find_peaks(score: np.ndarray, radius: int = PEAK_RADIUS, level: float = PEAK_LEVEL) -> list[int]:
    """Frames t where score[t] >= level and score[t] is the highest scored value within
    +-radius frames: strictly above every earlier one, at least every later one (so a plateau
    gives one peak, its first frame). NaN frames are never peaks and never compete."""
    s = np.asarray(score, dtype=np.float64).ravel()
    peaks = []
    for t in np.flatnonzero(np.isfinite(s) & (s >= level)):
        before = s[max(0, t - radius) : t]
        after = s[t + 1 : t + radius + 1]
        if np.all(~(before >= s[t])) and np.all(~(after > s[t])):  # NaN comparisons are False
            peaks.append(int(t))
    return peaks


def detect_events(score: np.ndarray, clip: int = 0) -> list[Detection]:
    """Detected events of one clip from its RAW score curve, by the a-priori rule above.

    The score is min-max normalised over the clip's scored frames (Eq. 6); peaks are found by
    ``find_peaks``; peaks fewer than MERGE_DISTANCE frames apart are chained into one event
    whose extent is the union of the peaks' windows (+-DETECTION_HALF_WIDTH), clipped to the
    first..last scored frame, and whose peak is the highest of them.
    """
    norm = normalise_per_clip(np.asarray(score, dtype=np.float64).ravel())
    scored = np.flatnonzero(np.isfinite(norm))
    if scored.size == 0:
        return []
    groups: list[list[int]] = []
    for p in find_peaks(norm):
        if groups and p - groups[-1][-1] < MERGE_DISTANCE:
            groups[-1].append(p)
        else:
            groups.append([p])
    out = []
    for g in groups:
        top = max(g, key=lambda p: (norm[p], -p))
        start = max(g[0] - DETECTION_HALF_WIDTH, int(scored[0]))
        end = min(g[-1] + DETECTION_HALF_WIDTH, int(scored[-1]))
        out.append(Detection(clip, start, end, top, float(norm[top])))
    return out


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> int:
    return max(0, min(a[1], b[1]) - max(a[0], b[0]) + 1)


def _overlap_ratio(span: tuple[int, int], event: tuple[int, int]) -> float:
    """Overlap of a detection's span and an event, as a share of the shorter of the two."""
    shorter = min(span[1] - span[0] + 1, event[1] - event[0] + 1)
    return _overlap(span, event) / shorter


def match_detection(det: Detection, events: list[tuple[int, int]]) -> Detection:
    """Label one detection against a clip's ground-truth events.

    correct: it overlaps some event by >= MIN_OVERLAP x the length of the shorter of the two;
    false_alarm: it overlaps no event at all; partial: it overlaps an event, but by less than
    that. ``event_level`` counts a partial detection as a false alarm (it did not find the
    event, and a vague detector should not profit from it) and also reports it separately.
    ``event`` is the overlapped event with the highest ratio (the first on ties).
    """
    span = (det.start, det.end)
    best, best_ratio = None, 0.0
    for ev in events:
        ratio = _overlap_ratio(span, ev)
        if ratio > best_ratio:
            best, best_ratio = ev, ratio
    if best is None:
        outcome = "false_alarm"
    elif best_ratio >= MIN_OVERLAP:
        outcome = "correct"
    else:
        outcome = "partial"
    return Detection(det.clip, det.start, det.end, det.peak, det.peak_score, outcome, best)


def events_found(det: Detection, events: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The events one detection finds: every one it overlaps by >= MIN_OVERLAP x the shorter
    of the two (a detection chained over two nearby events can find both)."""
    return [ev for ev in events if _overlap_ratio((det.start, det.end), ev) >= MIN_OVERLAP]


def event_level(per_clip_scores: Sequence[np.ndarray], per_clip_labels: Sequence[np.ndarray]) -> dict:
    """Event-level detection (Hasan et al. 2016) over all clips, from RAW per-clip scores.

    Table 3 counts events, as Hasan et al. do: "correct detections" are ground-truth events
    found, at most the number of events (the paper's Ped2 12 / 0 means all 12 found, no false
    alarm). A long event can hold two peaks MERGE_DISTANCE or more frames apart, and so two correct
    detections; those are reported as ``detections_correct``, never as events found.

    Returns a dict:
      correct             ground-truth events found by at least one detection (``events_found``)
      false_alarms        detections that find no event: overlapping none, or less than half (partial)
      partial             of the false alarms, those that overlap an event by less than half
      precision           correct / (correct + false_alarms) (NaN when both are 0), as Table 3
      ground_truth_events maximal runs of abnormal frames over all clips
      unscored_events     of them, those with no scored frame (all in a clip's first or last 5 frames,
                          which have no full window): counted, as the field counts every event, and
                          named here, since no score can find them
      recall              correct / ground_truth_events (NaN without events)
      detections_correct  detections that find at least one event
      detections_total    detections_correct + false_alarms
      detections          list of Detection.to_dict() with "events_found", in clip and frame order
      rule                the a-priori constants
    """
    _check_clips(per_clip_scores, per_clip_labels)
    records: list[dict] = []
    n_events, found = 0, 0
    unscored: list[dict] = []
    for k, (s, y) in enumerate(zip(per_clip_scores, per_clip_labels)):
        events = events_from_labels(y)
        unscored += [{"clip": k, "start": a, "end": b} for a, b in events
                     if not np.isfinite(np.asarray(s[a : b + 1], dtype=float)).any()]
        n_events += len(events)
        found_in_clip: set[tuple[int, int]] = set()
        for d in detect_events(s, clip=k):
            found_by_d = events_found(d, events)
            found_in_clip.update(found_by_d)
            records.append(match_detection(d, events).to_dict() | {"events_found": [list(ev) for ev in found_by_d]})
        found += len(found_in_clip)
    hits = sum(r["outcome"] == "correct" for r in records)
    partial = sum(r["outcome"] == "partial" for r in records)
    false_alarms = len(records) - hits
    return {
        "correct": found,
        "false_alarms": false_alarms,
        "partial": partial,
        "precision": found / (found + false_alarms) if found + false_alarms else float("nan"),
        "ground_truth_events": n_events,
        "unscored_events": unscored,
        "recall": found / n_events if n_events else float("nan"),
        "detections_correct": hits,
        "detections_total": len(records),
        "detections": records,
        "rule": event_rule(),
    }


def event_rule() -> dict:
    """The event-level constants, for reports."""
    return {
        "score": "per-clip min-max normalised (Eq. 6)",
        "peak": f"highest frame within +-{PEAK_RADIUS} frames (earliest on ties) with score >= {PEAK_LEVEL}",
        "detection": f"peak-{DETECTION_HALF_WIDTH} .. peak+{DETECTION_HALF_WIDTH}, clipped to the scored frames",
        "merge": f"peaks fewer than {MERGE_DISTANCE} frames apart are one event (union of windows)",
        "correct": f"a ground-truth event counts as found (correct) when a detection overlaps it by >= {MIN_OVERLAP} x the shorter of the two; correct counts events, not detections",
        "partial": "overlaps an event by less than that: counted as a false alarm",
        "precision": "correct / (correct + false alarms), as Table 3",
        "fixed": "a priori, before any Ped2 result was seen (correct counted detections until 2026-11-29, which a long event with two peaks counted twice)",
    }


# ----------------------------------------------------------------------------------- pixel level


def pixel_critical_value(error_map: np.ndarray, mask: np.ndarray, abnormal: bool) -> float:
    """The largest threshold at which this frame still counts as a positive under the UCSD rule.

    Pixel-level rule (Mahadevan et al. 2010): at threshold tau, the detection is {map > tau};
    - an abnormal frame is a true positive when at least 40 % of its ground-truth anomaly
      pixels are detected. With n anomaly pixels and k = ceil(0.4 n), that holds iff tau is
      below the k-th largest map value inside the mask (about the 60th percentile), which is
      therefore the frame's critical value;
    - a normal frame is a false positive when any pixel is detected, i.e. iff tau is below the
      map's maximum, its critical value.
    Either way "positive at tau" <=> "critical value > tau", so a frame reduces to one number
    and ``pixel_level`` is an exact ROC over them. An abnormal frame whose mask is empty has no
    pixels to cover: NaN (left out, like an unscored frame). ``mask`` is bool, same shape.
    """
    m = np.asarray(error_map, dtype=np.float64)
    if not abnormal:
        return float(m.max())
    mk = np.asarray(mask, dtype=bool)
    if mk.shape != m.shape:
        raise ValueError(f"map {m.shape} and mask {mk.shape} differ in shape")
    inside = m[mk]
    n = inside.size
    if n == 0:
        return float("nan")
    k = (2 * n + 4) // 5  # ceil(0.4 n) in integers: no float rounding at the boundary
    return float(np.partition(inside, n - k)[n - k])  # the k-th largest


def pixel_level(critical_values: np.ndarray, labels: np.ndarray) -> dict:
    """Pixel-level AUC, EER and EDR (detection rate at the EER point, = 1 - EER) from critical
    values; NaN frames (unscored, or abnormal with an empty mask) are dropped and counted."""
    c = np.asarray(critical_values, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    keep = ~np.isnan(c)
    if not has_both_classes(y[keep]):
        return {"auc": float("nan"), "eer": float("nan"), "edr": float("nan"), "frames": int(keep.sum())}
    fpr, tpr, _ = roc_curve(c[keep], y[keep])
    e = eer(fpr, tpr)
    return {"auc": auc(fpr, tpr), "eer": e, "edr": 1.0 - e, "frames": int(keep.sum())}
