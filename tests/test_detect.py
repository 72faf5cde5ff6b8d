"""`detect(...)`: the report folder contract, thresholds and flags, on a synthetic clip."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from stan_cli.detect import OVERLAY_GUIDED, OVERLAY_PIXEL, REPORT_FILES, detect
from stan_cli.errors import InputError, OutputError, StanError
from stan_cli.video import read_frames

from conftest import FPS, N_FRAMES, make_clip, write_video


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_report_folder_contract(clip_video, tiny_weights, tmp_path):
    out = tmp_path / "report"
    result = detect(clip_video, out=out, weights=tiny_weights, device="cpu")
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([*REPORT_FILES, OVERLAY_PIXEL, OVERLAY_GUIDED, "segments"])  # no temp files left behind
    assert result.segments and sorted(p.name for p in (out / "segments").iterdir()) == [
        f"segment_{k:03d}.mp4" for k in range(1, len(result.segments) + 1)
    ]

    rows = _rows(out / "scores.csv")
    assert list(rows[0]) == ["frame", "time_s", "pixel_loss", "d_loss", "score_raw", "score", "abnormal"]
    assert [int(r["frame"]) for r in rows] == list(range(N_FRAMES))
    assert float(rows[10]["time_s"]) == pytest.approx(10 / FPS)
    for r in rows[:5] + rows[-5:]:  # unscored edges: empty, never an invented score
        assert r["pixel_loss"] == r["d_loss"] == r["score_raw"] == r["score"] == r["abnormal"] == ""
    for r in rows[5:-5]:
        assert float(r["pixel_loss"]) >= 0 and float(r["d_loss"]) >= 0
        assert 0.0 <= float(r["score"]) <= 1.0
        assert r["abnormal"] in ("0", "1")
    scores = [float(r["score"]) for r in rows[5:-5]]
    assert max(scores) == pytest.approx(1.0) and min(scores) == pytest.approx(0.0)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["input"]["frames"] == N_FRAMES
    assert summary["input"]["fps"] == FPS
    assert (summary["input"]["width"], summary["input"]["height"]) == (64, 48)
    assert summary["weights"]["file"] == str(tiny_weights)
    assert len(summary["weights"]["sha256"]) == 64
    assert summary["device"] == "cpu"
    assert "fallback" in summary["threshold_source"]
    assert summary["unscored_frames"] == [0, 1, 2, 3, 4, 35, 36, 37, 38, 39]
    assert {"scoring_s", "total_s"} <= set(summary["timings"])
    assert len(summary["segments"]) == len(result.segments) == len(_rows(out / "segments.csv"))
    assert summary["clips"] == {"folder": "segments", "padding_s": 1.0, "count": len(result.segments)}
    assert summary["segments"][0]["clip"] == "segments/segment_001.mp4"
    assert "segments/segment_001.mp4" in summary["files"]

    assert (out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "index.html").read_text()
    assert "scores.png" in html and OVERLAY_PIXEL in html and OVERLAY_GUIDED in html and "http" not in html
    assert 'href="segments/segment_001.mp4"' in html and '<svg id="curve"' in html

    for name in (OVERLAY_PIXEL, OVERLAY_GUIDED):
        info, frames = read_frames(out / name)
        n = sum(1 for _ in frames)
        assert n == N_FRAMES
        assert info.width == 64 and info.height > 48  # the score strip sits below the frame


def test_no_video_skips_overlays(clip_folder, tiny_weights, tmp_path):
    out = tmp_path / "r"
    detect(clip_folder, out=out, weights=tiny_weights, write_video=False, clips=False, fps=5)
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT_FILES)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["input"]["kind"] == "frames" and summary["input"]["fps"] == 5


def test_folder_and_video_give_close_scores(clip_folder, clip_video, tiny_weights):
    a = detect(clip_folder, weights=tiny_weights)
    b = detect(clip_video, weights=tiny_weights)
    ok = np.isfinite(a.pixel_loss)
    # the video went through H.264; scores stay close to the lossless PNG frames
    np.testing.assert_allclose(a.pixel_loss[ok], b.pixel_loss[ok], rtol=0.05, atol=1e-3)


def test_calibrated_threshold_and_override(clip_video, tiny_weights_calibrated):
    result = detect(clip_video, weights=tiny_weights_calibrated, score="g")
    assert result.threshold_source.startswith("calibration")
    assert result.threshold == pytest.approx(np.quantile(0.04 + 0.01 * np.random.default_rng(1).random(200), 0.99))
    forced = detect(clip_video, weights=tiny_weights_calibrated, score="g", threshold=0.0, min_length=1)
    assert forced.threshold_source == "--threshold"
    assert forced.abnormal.sum() == N_FRAMES - 10  # every scored frame, none of the unscored
    assert len(forced.segments) == 1
    seg = forced.segments[0]
    assert (seg.start, seg.end) == (5, N_FRAMES - 6)


def test_a_clip_whose_scores_do_not_vary_says_nothing_can_be_flagged(tmp_path, tiny_weights_calibrated):
    still = write_video(tmp_path / "still.mp4", np.full((20, 48, 64, 3), 120, np.uint8))
    r = detect(still, weights=tiny_weights_calibrated, score="g", threshold="clip")
    assert r.threshold == float("inf") and not r.abnormal.any()
    assert any("scores do not vary" in w and "--threshold NUMBER" in w for w in r.warnings), r.warnings
    assert not any("do not vary" in w for w in detect(still, weights=tiny_weights_calibrated, score="g").warnings)


def test_threshold_rules_clip_and_calibrated(clip_video, tiny_weights_calibrated):
    from stan_cli import scoring

    calibrated = detect(clip_video, weights=tiny_weights_calibrated, score="g")
    named = detect(clip_video, weights=tiny_weights_calibrated, score="g", threshold="calibrated")
    assert named.threshold == calibrated.threshold and named.threshold_source == calibrated.threshold_source
    clip = detect(clip_video, weights=tiny_weights_calibrated, score="g", threshold="clip")
    assert clip.threshold_source.startswith("--threshold clip")
    assert clip.threshold == pytest.approx(scoring.fallback_threshold(clip.score_raw))
    assert np.array_equal(clip.abnormal, scoring.flag(clip.score_raw, clip.threshold))
    assert detect(clip_video, weights=tiny_weights_calibrated, threshold="0.5").threshold == 0.5
    with pytest.raises(StanError, match="--threshold lots: not a number"):
        detect(clip_video, weights=tiny_weights_calibrated, threshold="lots")
    for bad in ("nan", "inf", float("nan")):  # would flag nothing (or everything) and store null
        with pytest.raises(StanError, match="not a finite number"):
            detect(clip_video, weights=tiny_weights_calibrated, threshold=bad)
    with pytest.raises(StanError, match="--threshold -1: raw scores are never negative"):
        detect(clip_video, weights=tiny_weights_calibrated, threshold="-1")
    assert detect(clip_video, weights=tiny_weights_calibrated, threshold="0").threshold == 0.0


def test_untrained_placeholder_weights_are_named_in_a_warning(clip_video, tiny_weights):
    result = detect(clip_video, weights=tiny_weights, score="g")
    assert len(result.warnings) == 1 and "untrained placeholder weights" in result.warnings[0]
    assert str(tiny_weights) in result.warnings[0]


@pytest.mark.parametrize("level, warned", [(0.0, True), (1e6, False)])
def test_footage_unlike_the_calibration_is_warned_about(clip_video, tmp_path, level, warned):
    """A calibration far below every score of the clip flags it end to end: detect says why."""
    from stan_cli import scoring
    from stan_cli.model import TINY
    from stan_cli.weights import save_weights

    from conftest import tiny_models

    weights = tmp_path / "w.safetensors"
    rng = np.random.default_rng(0)
    save_weights(weights, *tiny_models(), TINY, training={},
                 calibration=scoring.calibrate(level + 1e-6 * rng.random(50), level + 1e-6 * rng.random(50)))
    out = tmp_path / "r"
    result = detect(clip_video, out=out, weights=weights, score="g", write_video=False)
    summary = json.loads((out / "summary.json").read_text())
    html = (out / "index.html").read_text()
    if warned:
        assert result.abnormal.sum() == N_FRAMES - 10
        assert len(result.warnings) == 1 and summary["warnings"] == result.warnings
        assert "100% of the scored frames exceed the calibrated threshold" in result.warnings[0]
        assert str(clip_video) in result.warnings[0] and "--threshold NUMBER" in result.warnings[0]
        assert '<div class="warn">' in html
    else:
        assert result.abnormal.sum() == 0 and result.warnings == summary["warnings"] == []
        assert '<div class="warn">' not in html
    # a threshold the user chose is theirs: no warning, however much it flags
    assert detect(clip_video, weights=weights, score="g", threshold=0.0).warnings == []


def test_score_kinds_pick_the_terms(clip_video, tiny_weights_calibrated):
    g = detect(clip_video, weights=tiny_weights_calibrated, score="g")
    d = detect(clip_video, weights=tiny_weights_calibrated, score="d")
    gd = detect(clip_video, weights=tiny_weights_calibrated, score="gd")
    ok = np.isfinite(g.score_raw)
    np.testing.assert_allclose(g.score_raw[ok], g.pixel_loss[ok])
    np.testing.assert_allclose(d.score_raw[ok], d.d_loss[ok])
    np.testing.assert_allclose(gd.score_raw[ok], g.pixel_loss[ok] + gd.lambda_s * d.d_loss[ok])


def test_bright_object_raises_the_pixel_loss(clip_video, tiny_weights):
    """Even untrained, the generator predicts a blurred mean of the neighbours: a bright square
    that moves fast is predicted worst where it appears, so the pixel loss peaks in the event."""
    result = detect(clip_video, weights=tiny_weights)
    peak = int(np.nanargmax(result.pixel_loss))
    assert 18 <= peak <= 27


def test_refuses_the_input_folder_as_output_even_with_overwrite(clip_folder, tiny_weights, tmp_path):
    import shutil

    frames = shutil.copytree(clip_folder, tmp_path / "frames")
    before = sorted(p.name for p in frames.iterdir())
    with pytest.raises(OutputError, match="is the input folder itself"):
        detect(frames, out=frames, weights=tiny_weights, overwrite=True, write_video=False)
    with pytest.raises(OutputError, match="is the input folder itself"):  # the same folder by another path
        detect(frames, out=tmp_path / "." / "frames", weights=tiny_weights, overwrite=True, write_video=False)
    assert sorted(p.name for p in frames.iterdir()) == before


def test_refuses_non_empty_output(clip_video, tiny_weights, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(OutputError, match="already holds files"):
        detect(clip_video, out=out, weights=tiny_weights)
    assert (out / "mine.txt").read_text() == "keep me"
    detect(clip_video, out=out, weights=tiny_weights, overwrite=True, write_video=False)
    assert (out / "mine.txt").exists() and (out / "scores.csv").exists()


def test_output_path_is_a_file(clip_video, tiny_weights, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        detect(clip_video, out=target, weights=tiny_weights)


def test_too_short_clip(tmp_path, tiny_weights):
    video = write_video(tmp_path / "short.mp4", make_clip(n=8))
    with pytest.raises(InputError, match="only 8 frames"):
        detect(video, weights=tiny_weights)


def test_bad_options(clip_video, tiny_weights):
    with pytest.raises(StanError, match="--score"):
        detect(clip_video, weights=tiny_weights, score="x")
    with pytest.raises(StanError, match="--batch-size"):
        detect(clip_video, weights=tiny_weights, batch_size=0)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_batch_size_does_not_change_scores(clip_video, tiny_weights, batch_size):
    ref = detect(clip_video, weights=tiny_weights, batch_size=8)
    other = detect(clip_video, weights=tiny_weights, batch_size=batch_size)
    np.testing.assert_allclose(ref.pixel_loss, other.pixel_loss, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ref.d_loss, other.d_loss, rtol=1e-5, atol=1e-7)
