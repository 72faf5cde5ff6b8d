"""Scoring: hand-computed numbers, edge cases (constant curve, zero loss, short clip, NaN edges)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from stan_cli.scoring import (
    calibration_mismatch,
    DEFAULT_MERGE_GAP,
    DEFAULT_MIN_LENGTH,
    Segment,
    calibrate,
    fallback_threshold,
    find_segments,
    flag,
    lambda_s,
    normalise_per_clip,
    raw_score,
)

NAN = np.nan


def edges(values: list[float]) -> np.ndarray:
    """A clip's per-frame array with the 5 unscored frames at each end as NaN."""
    return np.array([NAN] * 5 + values + [NAN] * 5)


def segs(flags: str, raw: list[float] | None = None, **kw: int) -> list[tuple[int, int]]:
    """find_segments on a flag string like '..XX.'; returns (start, end) pairs."""
    f = np.array([c == "X" for c in flags])
    r = np.ones(len(flags)) if raw is None else np.array(raw, dtype=float)
    return [(s.start, s.end) for s in find_segments(f, r, **kw)]


# --- lambda_s -------------------------------------------------------------------------------


def test_lambda_s_tiny_example() -> None:
    # max pixel 0.02, max d 0.5 -> 0.02 / 0.5 / 10 = 0.004
    pixel = np.array([NAN, 0.01, 0.02, 0.015, NAN])
    d = np.array([NAN, 0.5, 0.25, 0.1, NAN])
    assert lambda_s(pixel, d) == pytest.approx(0.004)


def test_lambda_s_zero_when_d_max_not_positive() -> None:
    assert lambda_s(np.zeros(4), np.zeros(4)) == 0.0
    assert lambda_s(np.array([1.0, 2.0]), np.array([-1.0, 0.0])) == 0.0


def test_lambda_s_zero_when_nothing_finite() -> None:
    assert lambda_s(np.full(3, NAN), np.full(3, NAN)) == 0.0
    assert lambda_s(np.array([]), np.array([])) == 0.0


# --- raw_score ------------------------------------------------------------------------------


def test_raw_score_kinds() -> None:
    pixel = np.array([NAN, 0.01, 0.02, NAN])
    d = np.array([NAN, 0.5, 0.25, NAN])
    np.testing.assert_array_equal(raw_score(pixel, d, "g", 0.004), pixel)
    np.testing.assert_array_equal(raw_score(pixel, d, "d", 0.004), d)
    # 0.01 + 0.004 * 0.5 = 0.012; 0.02 + 0.004 * 0.25 = 0.021
    np.testing.assert_allclose(raw_score(pixel, d, "gd", 0.004), [NAN, 0.012, 0.021, NAN])


def test_raw_score_gd_with_zero_lambda_is_pixel() -> None:
    pixel, d = np.array([1.0, 2.0]), np.array([5.0, 7.0])
    np.testing.assert_array_equal(raw_score(pixel, d, "gd", 0.0), [1.0, 2.0])


def test_raw_score_returns_a_copy() -> None:
    pixel = np.array([1.0, 2.0])
    out = raw_score(pixel, np.zeros(2), "g", 0.0)
    out[0] = 99.0
    assert pixel[0] == 1.0


def test_raw_score_rejects_unknown_kind_and_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="kind"):
        raw_score(np.zeros(2), np.zeros(2), "pixel", 0.0)
    with pytest.raises(ValueError, match="shape"):
        raw_score(np.zeros(2), np.zeros(3), "gd", 0.0)


# --- normalise_per_clip ---------------------------------------------------------------------


def test_normalise_keeps_nan_edges() -> None:
    out = normalise_per_clip(edges([2.0, 4.0, 6.0, 3.0]))
    assert out.dtype == np.float64
    np.testing.assert_array_equal(np.isnan(out), np.isnan(edges([0.0] * 4)))
    np.testing.assert_allclose(out[5:9], [0.0, 0.5, 1.0, 0.25])


def test_normalise_constant_curve_is_zero() -> None:
    out = normalise_per_clip(edges([3.0, 3.0, 3.0]))
    np.testing.assert_array_equal(out[5:8], [0.0, 0.0, 0.0])
    assert np.isnan(out[:5]).all() and np.isnan(out[8:]).all()


def test_normalise_zero_loss_is_zero() -> None:
    np.testing.assert_array_equal(normalise_per_clip(np.zeros(6)), np.zeros(6))


def test_normalise_all_nan_clip_stays_nan() -> None:
    # a clip of 8 frames has no full 11-frame window: nothing is scored
    out = normalise_per_clip(np.full(8, NAN))
    assert out.shape == (8,) and np.isnan(out).all()


def test_normalise_accepts_integers() -> None:
    np.testing.assert_allclose(normalise_per_clip(np.array([0, 5, 10])), [0.0, 0.5, 1.0])


# --- fallback_threshold ---------------------------------------------------------------------


def test_fallback_threshold_hand_computed() -> None:
    # median 3; |x - 3| = 2, 1, 0, 1, 97 -> MAD 1; 3 + 3 * 1.4826 * 1 = 7.4478
    raw = edges([1.0, 2.0, 3.0, 4.0, 100.0])
    assert fallback_threshold(raw) == pytest.approx(7.4478)
    np.testing.assert_array_equal(flag(raw, fallback_threshold(raw))[5:10], [0, 0, 0, 0, 1])


def test_fallback_threshold_constant_zero_and_nan_flag_nothing() -> None:
    assert fallback_threshold(np.full(7, 0.3)) == math.inf
    assert fallback_threshold(np.zeros(7)) == math.inf
    assert fallback_threshold(np.full(7, NAN)) == math.inf
    assert not flag(np.zeros(7), fallback_threshold(np.zeros(7))).any()


# --- calibrate ------------------------------------------------------------------------------


def test_calibrate_thresholds_on_arange() -> None:
    pixel = np.arange(101, dtype=float)  # 0..100
    d = np.arange(101) / 10.0  # 0..10 -> lambda_s = 100 / 10 / 10 = 1.0
    cal = calibrate(np.append(pixel, NAN), np.append(d, NAN), false_alarm_rate=0.01)
    assert cal["lambda_s"] == pytest.approx(1.0)
    assert cal["n_windows"] == 101
    assert cal["false_alarm_rate"] == 0.01
    g = cal["kinds"]["g"]
    assert g["threshold"] == pytest.approx(99.0)
    assert g["mean"] == pytest.approx(50.0)
    assert g["median"] == pytest.approx(50.0)
    assert g["p95"] == pytest.approx(95.0)
    assert g["p99"] == pytest.approx(99.0)
    assert g["max"] == pytest.approx(100.0)
    assert g["std"] == pytest.approx(math.sqrt(850.0))  # (101**2 - 1) / 12 = 850
    assert cal["kinds"]["d"]["threshold"] == pytest.approx(9.9)
    assert cal["kinds"]["gd"]["threshold"] == pytest.approx(108.9)  # 1.1 * 99
    json.dumps(cal)  # goes into the weights metadata


def test_calibrate_rate_five_percent() -> None:
    cal = calibrate(np.arange(101, dtype=float), np.zeros(101), false_alarm_rate=0.05)
    assert cal["kinds"]["g"]["threshold"] == pytest.approx(95.0)
    assert cal["lambda_s"] == 0.0  # d max 0: the discriminator term is ignored
    assert cal["kinds"]["gd"]["threshold"] == pytest.approx(95.0)


def test_calibrate_ignores_windows_with_any_nan() -> None:
    pixel = np.array([1.0, NAN, 3.0, 5.0])
    d = np.array([1.0, 1.0, NAN, 1.0])
    cal = calibrate(pixel, d, false_alarm_rate=0.5)
    assert cal["n_windows"] == 2
    assert cal["kinds"]["g"]["threshold"] == pytest.approx(3.0)  # midpoint of 1 and 5


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.1, 1.5])
def test_calibrate_rejects_bad_rate(rate: float) -> None:
    with pytest.raises(ValueError, match="false_alarm_rate"):
        calibrate(np.arange(10.0), np.arange(10.0), false_alarm_rate=rate)


def test_calibrate_rejects_too_few_windows() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        calibrate(np.array([1.0, NAN]), np.array([1.0, 1.0]))


# --- flag -----------------------------------------------------------------------------------


def test_flag_is_strict_and_never_flags_nan() -> None:
    out = flag(np.array([NAN, 1.0, 2.0, 3.0, NAN]), 2.0)
    assert out.dtype == bool
    np.testing.assert_array_equal(out, [False, False, False, True, False])
    assert not flag(np.array([NAN, NAN]), -math.inf).any()


# --- find_segments --------------------------------------------------------------------------


def test_defaults() -> None:
    assert DEFAULT_MERGE_GAP == 10 and DEFAULT_MIN_LENGTH == 5


def test_gap_exactly_merge_gap_merges() -> None:
    assert segs("XX..XX", merge_gap=2, min_length=1) == [(0, 5)]


def test_gap_one_more_than_merge_gap_splits() -> None:
    assert segs("XX...XX", merge_gap=2, min_length=1) == [(0, 1), (5, 6)]


def test_merge_gap_zero_keeps_runs_apart() -> None:
    assert segs("X.X", merge_gap=0, min_length=1) == [(0, 0), (2, 2)]


def test_merging_chains_several_runs() -> None:
    assert segs(".X.X.X.", merge_gap=1, min_length=1) == [(1, 5)]


def test_runs_at_clip_start_and_end() -> None:
    assert segs("XXX....XXX", merge_gap=2, min_length=3) == [(0, 2), (7, 9)]


def test_length_exactly_min_length_kept_shorter_dropped() -> None:
    assert segs("..XXX..", merge_gap=0, min_length=3) == [(2, 4)]
    assert segs("..XX...", merge_gap=0, min_length=3) == []


def test_min_length_applies_after_merging() -> None:
    # runs of 1 and 1 frames with a gap of 2 merge into 4 frames, which survives min_length 4
    assert segs("X..X", merge_gap=2, min_length=4) == [(0, 3)]


def test_nothing_flagged_gives_no_segments() -> None:
    assert segs("....") == []
    assert segs("") == []


def test_short_clip_all_nan_no_segments() -> None:
    raw = np.full(8, NAN)
    assert find_segments(flag(raw, 0.0), raw) == []
    # a flag on an unscored frame is ignored as well
    assert find_segments(np.ones(8, dtype=bool), raw, min_length=1) == []


def test_peak_selection_ignores_nan_and_takes_first_on_ties() -> None:
    raw = np.array([0.0, 0.5, 0.9, 0.3, 0.9, 0.1])
    flags = np.array([0, 1, 1, 0, 1, 0], dtype=bool)
    (seg,) = find_segments(flags, raw, merge_gap=1, min_length=1)
    assert seg == Segment(start=1, end=4, peak=2, peak_score=0.9)
    assert seg.length == 4
    raw_nan = np.array([NAN, 0.2, 0.7, 0.4, NAN])
    (seg,) = find_segments(np.array([0, 1, 1, 1, 0], dtype=bool), raw_nan, min_length=1)
    assert (seg.peak, seg.peak_score) == (2, 0.7)


def test_peak_can_fall_in_merged_gap() -> None:
    # the unflagged frame between two runs is part of the segment, peak included
    raw = [0.0, 3.0, 8.0, 3.0, 0.0]
    f = np.array([0, 1, 0, 1, 0], dtype=bool)
    (seg,) = find_segments(f, np.array(raw), merge_gap=1, min_length=1)
    assert (seg.start, seg.end, seg.peak, seg.peak_score) == (1, 3, 2, 8.0)


def test_segment_fields_are_plain_python_types() -> None:
    (seg,) = find_segments(np.array([1, 1], dtype=bool), np.array([1.0, 2.0]), min_length=1)
    assert type(seg.start) is int and type(seg.peak) is int and type(seg.peak_score) is float


def test_segment_is_frozen() -> None:
    seg = Segment(start=3, end=7, peak=5, peak_score=1.0)
    assert seg.length == 5
    with pytest.raises(AttributeError):
        seg.start = 0  # type: ignore[misc]


def test_find_segments_validates_arguments() -> None:
    f, r = np.zeros(3, dtype=bool), np.zeros(3)
    with pytest.raises(ValueError, match="merge_gap"):
        find_segments(f, r, merge_gap=-1)
    with pytest.raises(ValueError, match="min_length"):
        find_segments(f, r, min_length=0)
    with pytest.raises(ValueError, match="length"):
        find_segments(f, np.zeros(4))


def test_end_to_end_clip_with_nan_edges() -> None:
    # 5 NaN, 10 quiet frames at 1.0, a 6-frame event at 9.0 with a peak at 12.0, 4 quiet, 5 NaN
    values = [1.0] * 10 + [9.0, 9.0, 12.0, 9.0, 9.0, 9.0] + [1.0] * 4
    raw = edges(values)
    flags = flag(raw, 5.0)
    assert not flags[:5].any() and not flags[-5:].any()
    (seg,) = find_segments(flags, raw)
    assert (seg.start, seg.end, seg.peak, seg.peak_score, seg.length) == (15, 20, 17, 12.0, 6)


def test_calibration_mismatch_needs_half_the_scored_frames_above() -> None:
    stats = {"median": 0.5}
    raw = np.array([np.nan, 1.0, 2.0, 3.0, 4.0, np.nan])
    assert calibration_mismatch(raw, 2.5, stats) == {"share": 0.5, "median": 2.5, "calibration_median": 0.5}
    assert calibration_mismatch(raw, 3.0, stats) is None  # 1 of 4 above: strictly greater, like flag()
    assert calibration_mismatch(raw, 0.0, stats)["share"] == 1.0
    assert calibration_mismatch(np.full(4, np.nan), 0.0, stats) is None  # nothing scored, nothing to say
