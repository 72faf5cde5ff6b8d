"""Benchmark metrics against numbers computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from stan_cli import metrics
from stan_cli.metrics import (
    auc, clip_auc, detect_events, eer, event_level, events_from_labels, find_peaks, frame_auc,
    pixel_critical_value, pixel_level, roc_auc, roc_curve,
)

nan = float("nan")

# ------------------------------------------------------------------------------------- ROC / AUC


def test_perfect_inverted_and_tied():
    y = [0, 0, 1, 1]
    assert roc_auc([0.1, 0.2, 0.8, 0.9], y) == 1.0
    assert roc_auc([0.9, 0.8, 0.2, 0.1], y) == 0.0
    assert roc_auc([0.5, 0.5, 0.5, 0.5], y) == 0.5


def test_four_point_example_by_hand():
    # descending: 0.8(+) 0.4(-) 0.35(+) 0.1(-) -> (0,0) (0,.5) (.5,.5) (.5,1) (1,1): area 0.75
    fpr, tpr, thr = roc_curve([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    assert thr[0] == np.inf and list(thr[1:]) == [0.8, 0.4, 0.35, 0.1]
    assert auc(fpr, tpr) == pytest.approx(0.75)
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert eer(fpr, tpr) == pytest.approx(0.5)


def test_ties_form_one_diagonal_step():
    # a tie between one positive and one negative is worth 1/2, not 0 or 1 depending on order
    fpr, tpr, _ = roc_curve([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1])
    assert roc_auc([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(0.875)
    assert roc_auc([0.9, 0.5, 0.5, 0.1], [1, 0, 1, 0]) == pytest.approx(0.875)
    # infinite scores tie too (inf - inf is NaN, which must not split the group)
    inf = float("inf")
    assert roc_auc([inf, inf, 0.0], [0, 1, 0]) == roc_auc([inf, inf, 0.0], [1, 0, 0]) == pytest.approx(0.75)
    assert roc_auc([-inf, -inf, 1.0], [0, 1, 1]) == pytest.approx(0.75)


def test_roc_rejects_one_class_and_nan():
    with pytest.raises(ValueError, match="both"):
        roc_curve([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="NaN"):
        roc_curve([0.1, nan], [0, 1])


def test_eer_toys():
    assert eer(*roc_curve([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])[:2]) == 0.0
    assert eer(*roc_curve([0.5] * 4, [0, 0, 1, 1])[:2]) == pytest.approx(0.5)
    # (0,0) (0,1/3) (1/2,1/3) (1/2,2/3) (1/2,1) (1,1): gap = fpr+tpr-1 goes -1/6 -> +1/6 on the
    # segment (1/2,1/3)-(1/2,2/3), where fpr is 1/2 throughout
    fpr, tpr, _ = roc_curve([0.9, 0.8, 0.7, 0.6, 0.5], [1, 0, 1, 1, 0])
    assert eer(fpr, tpr) == pytest.approx(0.5)
    # interpolated inside a diagonal segment: (0,0)->(1,1) crossed at (0.5,0.5)
    assert eer(np.array([0.0, 0.2, 1.0]), np.array([0.0, 0.6, 1.0])) == pytest.approx(1 / 3)  # gap -0.2 -> 1.0: a = 1/6


# ------------------------------------------------------------------------------------- frame level


def _two_clips():
    # clip A: normal frames score low, abnormal high, but on a large scale
    # clip B: everything on a small scale, abnormal frame in the middle of the range
    a = np.array([nan, 10.0, 20.0, 90.0, 100.0, nan])
    la = np.array([0, 0, 0, 1, 1, 0])
    b = np.array([1.0, 3.0, 2.0, 1.5, 1.2])
    lb = np.array([0, 0, 1, 0, 0])
    return [a, b], [la, lb]


def test_pooled_normalises_per_clip_and_drops_nan():
    scores, labels = _two_clips()
    s, y = metrics.pooled(scores, labels)
    # A -> 0, 1/9, 8/9, 1 ; B -> 0, 1, 1/2, 1/4, 1/10
    np.testing.assert_allclose(s, [0, 1 / 9, 8 / 9, 1, 0, 1, 0.5, 0.25, 0.1])
    assert list(y) == [0, 0, 1, 1, 0, 0, 1, 0, 0]
    # positives 8/9, 1, 1/2 ; negatives 0, 1/9, 0, 1, 1/4, 1/10 : pairs won
    # 8/9: beats 5 of 6 ; 1: beats 5, ties 1 -> 5.5 ; 1/2: beats 5 -> (5 + 5.5 + 5) / 18
    r = frame_auc(scores, labels, "pooled")
    assert r.auc == pytest.approx(15.5 / 18)
    assert r.frames == 9 and r.clips == 2


def test_macro_differs_and_counts_skipped_clips():
    scores, labels = _two_clips()
    scores.append(np.array([0.3, 0.1, nan]))
    labels.append(np.array([0, 0, 1]))  # its only abnormal frame is unscored: one class left
    r = frame_auc(scores, labels, "macro")
    # A: 1.0 ; B: positive 2.0 beats 1.0, 1.5, 1.2 of 1.0, 3.0, 1.5, 1.2 -> 3/4 ; mean 7/8
    assert r.auc == pytest.approx((1.0 + 3 / 4) / 2)
    assert r.skipped_clips == (2,) and r.clips == 2 and r.frames == 9
    assert np.isnan(r.per_clip[2])
    assert frame_auc(scores, labels, "pooled").auc != pytest.approx(r.auc)
    with pytest.raises(ValueError, match="protocol"):
        frame_auc(scores, labels, "micro")


def test_clip_auc_single_class_is_nan():
    assert np.isnan(clip_auc([1.0, 2.0, 3.0], [1, 1, 1]))


# ------------------------------------------------------------------------------------- event level


def test_events_from_labels():
    assert events_from_labels([0, 1, 1, 0, 0, 1, 0, 1]) == [(1, 2), (5, 5), (7, 7)]
    assert events_from_labels([1, 1, 1]) == [(0, 2)]
    assert events_from_labels([0, 0]) == []


def _curve(n, bumps, base=0.0):
    """A score curve of n frames: base everywhere, triangular bumps (centre, height, half-width)."""
    s = np.full(n, base)
    t = np.arange(n)
    for c, h, w in bumps:
        s = np.maximum(s, h * np.clip(1 - np.abs(t - c) / w, 0, None))
    return s


def test_peaks_radius_level_and_plateau():
    s = _curve(200, [(50, 1.0, 5), (70, 0.8, 5), (150, 0.4, 5)])
    assert find_peaks(s) == [50]  # 70 is within 25 of a higher one; 150 is below the level
    plateau = np.zeros(100)
    plateau[20:80] = 1.0
    assert find_peaks(plateau) == [20]  # one peak, its first frame: each later one has an equal neighbour before it


def test_one_hit_one_false_alarm_one_miss():
    n = 300
    s = _curve(n, [(100, 1.0, 10), (250, 0.9, 10)])
    s[:5] = s[-5:] = nan
    y = np.zeros(n, int)
    y[90:131] = 1  # event 1: hit by the peak at 100
    y[180:201] = 1  # event 2: missed (nothing peaks near it)
    r = event_level([s], [y])
    assert r["ground_truth_events"] == 2 and r["detections_correct"] == 1 and r["detections_total"] == 2
    assert r["correct"] == 1 and r["false_alarms"] == 1 and r["partial"] == 0
    assert r["precision"] == pytest.approx(0.5) and r["recall"] == pytest.approx(0.5)
    d = r["detections"]
    assert (d[0]["start"], d[0]["end"], d[0]["peak"], d[0]["outcome"]) == (75, 125, 100, "correct")
    assert (d[1]["start"], d[1]["end"], d[1]["outcome"], d[1]["event"]) == (225, 275, "false_alarm", None)


def test_an_event_in_the_unscored_edge_frames_is_counted_and_named():
    n = 120
    s = _curve(n, [(60, 1.0, 10)])
    s[:5] = s[-5:] = nan  # no full 11-frame window there
    y = np.zeros(n, int)
    y[1:4] = 1  # entirely in the first 5 frames: no score can find it
    y[55:66] = 1
    y[113:118] = 1  # begins scored (113, 114), ends unscored: counted
    r = event_level([s], [y])
    assert r["ground_truth_events"] == 3 and r["unscored_events"] == [{"clip": 0, "start": 1, "end": 3}]
    assert r["correct"] == 1 and r["recall"] == pytest.approx(1 / 3)  # as the field counts: every event


def test_correct_counts_events_not_detections():
    # Table 3 counts events found: one long event with two peaks more than 50 frames apart gives
    # two correct detections but one correct event, and precision 1 / (1 + 0).
    n = 200
    s = _curve(n, [(50, 1.0, 10), (140, 0.9, 10)])
    s[:5] = s[-5:] = nan
    y = np.zeros(n, int)
    y[30:171] = 1
    r = event_level([s], [y])
    assert r["detections_correct"] == 2 and r["detections_total"] == 2
    assert r["correct"] == 1 and r["false_alarms"] == 0 and r["ground_truth_events"] == 1
    assert r["precision"] == 1.0 and r["recall"] == 1.0


def test_a_chained_detection_finds_every_event_it_covers():
    # peaks 40 frames apart are chained into one detection, 45..135; it covers both 20-frame
    # events entirely, so both are found (the detection itself is one correct detection)
    n = 180
    s = _curve(n, [(70, 1.0, 5), (110, 0.9, 5)])
    s[:5] = s[-5:] = nan
    y = np.zeros(n, int)
    y[60:80] = y[100:120] = 1
    r = event_level([s], [y])
    assert [(d["start"], d["end"]) for d in r["detections"]] == [(45, 135)]
    assert r["correct"] == 2 and r["recall"] == 1.0 and r["detections_correct"] == 1
    assert r["detections"][0]["events_found"] == [[60, 79], [100, 119]]


def test_no_detections_no_events_precision_is_nan():
    n = 60
    r = event_level([np.full(n, 0.3)], [np.zeros(n, int)])
    assert r["correct"] == r["false_alarms"] == r["ground_truth_events"] == 0
    assert np.isnan(r["precision"]) and np.isnan(r["recall"])


def test_overlap_half_of_the_shorter():
    n = 200
    s = _curve(n, [(100, 1.0, 3)])  # detection 75..125, 51 frames
    # a 10-frame event: the shorter is the event, needs >= 5 frames of overlap
    y = np.zeros(n, int)
    y[121:131] = 1  # overlap 121..125 = 5 frames: exactly half -> correct
    assert event_level([s], [y])["correct"] == 1
    y[:] = 0
    y[122:132] = 1  # overlap 4 frames: partial, counted as a false alarm
    r = event_level([s], [y])
    assert r["correct"] == 0 and r["false_alarms"] == 1 and r["partial"] == 1
    assert r["detections"][0]["outcome"] == "partial" and r["detections"][0]["event"] == [122, 131]
    # a long event: the shorter is the detection (51 frames), needs >= 25.5 -> 26 frames
    y[:] = 0
    y[100:200] = 1  # overlap 100..125 = 26
    assert event_level([s], [y])["correct"] == 1
    y[:] = 0
    y[101:200] = 1  # overlap 25
    assert event_level([s], [y])["partial"] == 1


def test_peaks_closer_than_50_frames_are_one_event():
    n = 300
    s = _curve(n, [(100, 1.0, 3), (140, 0.9, 3), (189, 0.95, 3)])
    events = detect_events(s)
    # 100 and 140 are 40 apart -> one event; 189 is 49 after 140 -> chained into it too
    assert [(e.start, e.end, e.peak) for e in events] == [(75, 214, 100)]
    s = _curve(n, [(100, 1.0, 3), (150, 0.9, 3)])  # exactly 50 apart: two events
    assert [(e.start, e.end) for e in detect_events(s)] == [(75, 125), (125, 175)]


def test_detection_clipped_to_scored_frames_and_constant_clip():
    s = _curve(60, [(8, 1.0, 3)])
    s[:5] = s[-5:] = nan
    assert [(e.start, e.end) for e in detect_events(s)] == [(5, 33)]
    assert detect_events(np.full(50, 0.3)) == []  # normalises to all 0: no peak reaches the level
    assert detect_events(np.full(20, nan)) == []


# ------------------------------------------------------------------------------------- pixel level


def test_critical_value_40_percent_boundary():
    m = np.array([[0.9, 0.8, 0.7, 0.6, 0.5], [5.0, 0.0, 0.0, 0.0, 0.0]])
    mask = np.zeros_like(m, dtype=bool)
    mask[0] = True  # 5 anomaly pixels: 40 % = 2 pixels -> the 2nd largest, 0.8
    c = pixel_critical_value(m, mask, abnormal=True)
    assert c == 0.8
    inside = m[mask]
    assert (inside > np.nextafter(c, -1)).mean() >= 0.4  # just below c: 2 of 5 covered, detected
    assert (inside > c).mean() < 0.4  # at c: only 1 of 5, missed
    mask[1, 1:3] = True  # 7 pixels: ceil(2.8) = 3 -> the 3rd largest, 0.7
    assert pixel_critical_value(m, mask, True) == 0.7
    mask[:] = False
    mask[0, :1] = True  # 1 pixel: it must be covered itself
    assert pixel_critical_value(m, mask, True) == 0.9
    assert pixel_critical_value(m, mask, abnormal=False) == 5.0  # normal: the map maximum
    assert np.isnan(pixel_critical_value(m, np.zeros_like(mask), True))


def test_pixel_level_auc_and_edr():
    # abnormal frames: critical 0.8, 0.3 ; normal: maxima 0.5, 0.1
    c = np.array([0.8, 0.3, 0.5, 0.1, nan])
    y = np.array([1, 1, 0, 0, 1])
    r = pixel_level(c, y)
    assert r["frames"] == 4 and r["auc"] == pytest.approx(0.75)
    assert r["edr"] == pytest.approx(1 - r["eer"]) and r["eer"] == pytest.approx(0.5)
    assert np.isnan(pixel_level(np.array([0.1, 0.2]), np.array([1, 1]))["auc"])
