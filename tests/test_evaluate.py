"""`evaluate(...)` and `stan eval` on a tiny Ped2-layout test set, and the label readers."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import torch

from stan_cli import baseline, evaluate as evaluate_module, metrics
from stan_cli.cli import app
from stan_cli.detect import detect
from stan_cli.errors import InputError, OutputError, StanError
from stan_cli.model import split_window, with_middle
from stan_cli.video import read_frames
from stan_cli.weights import load_weights
from stan_cli.windows import scored_range, to_grey_square, to_tensor
from stan_cli.evaluate import PER_CLIP_HEADER, SCORES_HEADER, evaluate, paper_for
from stan_cli.testset import find_clips, parse_matlab_labels, read_csv_labels, read_json_labels, read_labels, read_mat_labels

from conftest import HEIGHT, WIDTH, make_clip, write_frame_folder, write_video

N = 24  # frames per clip: 14 scored
ANOMALIES = {"01": range(12, 20), "02": range(16, N)}  # clip 02 ends abnormal
PED2 = Path("/work/shared/data/ped2/testing")


def _mask_frames(anomaly: range) -> np.ndarray:
    """White where make_clip draws the bright square, black elsewhere."""
    masks = np.zeros((N, HEIGHT, WIDTH, 3), np.uint8)
    for t in anomaly:
        x = int((t - anomaly.start) / len(anomaly) * (WIDTH - 12))
        masks[t, HEIGHT - 16 : HEIGHT - 4, x : x + 12] = 255
    return masks


def _m_file(path: Path, entries: list[str]) -> Path:
    lines = ["TestVideoFile = {};", "% frame-level ground truth"]
    lines += [f"TestVideoFile{{end+1}}.gt_frame = [{e}];" for e in entries]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def ped2_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ped2") / "testing"
    for k, (name, anomaly) in enumerate(ANOMALIES.items()):
        write_frame_folder(root / "frames" / name, make_clip(N, anomaly=anomaly, seed=k), "{:03d}.png")
        write_frame_folder(root / "masks" / name, _mask_frames(anomaly), "{:03d}.png")
    _m_file(root / "UCSDmini.m", ["13:20", "17:24"])  # 1-based inclusive
    return root


@pytest.fixture(scope="module")
def evaluated(ped2_dir, tiny_weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "results"
    return out, evaluate(ped2_dir, weights=tiny_weights, out=out, device="cpu")


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------------------ results


def test_results_folder_contract(evaluated):
    out, r = evaluated
    assert sorted(p.name for p in out.iterdir()) == ["per_clip.csv", "results.json", "roc.png", "scores"]
    assert sorted(p.name for p in (out / "scores").iterdir()) == ["01.csv", "02.csv"]
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "results.json").read_text())
    assert saved["warnings"] == []
    for key in ("labels", "weights", "lambda_s", "lambda_s_source", "protocols", "headline", "frame_level",
                "event_level", "pixel_level", "per_clip", "paper", "timings", "files"):
        assert key in saved, key
    assert saved["clips"] == 2 and saved["frames"] == 2 * N and saved["scored_frames"] == 2 * (N - 10)
    assert saved["abnormal_frames"] == 8 + 8
    assert saved["labels"]["format"] == "matlab-m" and saved["labels"]["file"].endswith("UCSDmini.m")
    assert "test set" in saved["lambda_s_source"] and saved["lambda_s_calibration"] is None
    assert len(saved["weights"]["sha256"]) == 64 and saved["weights"]["training"] == {"untrained": True}
    assert saved["paper"] is None and saved["headline"]["paper"] is None  # nothing in its names says which data set
    assert saved["timings"]["wall_s"] > 0
    for kind in ("g", "d", "gd"):
        pooled = saved["frame_level"][kind]["pooled"]
        assert 0.0 <= pooled["auc"] <= 1.0 and 0.0 <= pooled["eer"] <= 1.0 and pooled["frames"] == 28
        assert saved["frame_level"][kind]["macro"]["clips"] == 2
    assert saved["headline"]["auc"] == saved["frame_level"]["gd"]["pooled"]["auc"]
    for key in ("frame_difference", "d_generated", "gd_generated"):  # the reference and the variant, never the headline
        pooled = saved["frame_level"][key]["pooled"]
        assert 0.0 <= pooled["auc"] <= 1.0 and 0.0 <= pooled["eer"] <= 1.0 and pooled["frames"] == 28, key
        assert saved["frame_level"][key]["macro"]["clips"] == 2, key
    assert "no learning" in saved["frame_level"]["frame_difference"]["score"]
    assert saved["frame_level"]["frame_difference"]["image_size"] == 32  # the tiny networks' input size
    assert "generated" in saved["frame_level"]["gd_generated"]["d_term"]
    assert all(0.0 <= c["auc_frame_difference"] <= 1.0 for c in saved["per_clip"])
    # the L2-norm variant ranks frames within a clip as the MSE does: same macro AUC
    assert saved["frame_level"]["g_l2_norm"]["macro"]["auc"] == pytest.approx(saved["frame_level"]["g"]["macro"]["auc"])
    ev = saved["event_level"]
    assert ev["ground_truth_events"] == 2 and ev["detections_correct"] + ev["false_alarms"] == len(ev["detections"])
    assert ev["correct"] <= ev["detections_correct"] and ev["correct"] <= 2
    assert {d["clip"] for d in ev["detections"]} <= {"01", "02"}
    px = saved["pixel_level"]
    assert px["available"] and px["frames"] == 28 and px["label_mask_disagreements"] == 0  # masks in step
    assert px["edr"] == pytest.approx(1 - px["eer"])
    assert px["median_normal_map_max"] > 0 and px["median_abnormal_critical"] >= 0
    assert (px["auc"] < 0.5) == any("pixel-level AUC" in w for w in saved["warnings"])


def test_csv_files(evaluated):
    out, r = evaluated
    rows = _rows(out / "per_clip.csv")
    assert (out / "per_clip.csv").read_text().splitlines()[0] == PER_CLIP_HEADER
    assert [(x["clip"], int(x["frames"]), int(x["abnormal_frames"])) for x in rows] == [("01", N, 8), ("02", N, 8)]
    for x in rows:
        assert 0.0 <= float(x["auc_gd"]) <= 1.0
    scores = _rows(out / "scores" / "01.csv")
    assert (out / "scores" / "01.csv").read_text().splitlines()[0] == SCORES_HEADER
    assert [int(x["frame"]) for x in scores] == list(range(N))
    assert [int(x["label"]) for x in scores] == [int(t in ANOMALIES["01"]) for t in range(N)]
    for x in scores[:5] + scores[-5:]:
        assert x["pixel_loss"] == x["d_loss"] == x["pixel_critical"] == x["d_loss_patch_max"] == ""
        assert x["d_loss_generated"] == x["frame_difference"] == ""
    for x in scores[5:-5]:
        assert float(x["pixel_loss"]) >= 0 and float(x["d_loss"]) >= 0 and float(x["pixel_critical"]) >= 0
        assert float(x["d_loss_patch_max"]) >= float(x["d_loss"]) * (1 - 1e-6)  # the largest patch >= their mean
        assert float(x["d_loss_generated"]) >= 0 and float(x["frame_difference"]) >= 0


def test_scores_are_detects_scores(evaluated, ped2_dir, tiny_weights):
    """One scoring loop: evaluate's losses are detect's, frame for frame."""
    out, _ = evaluated
    ours = _rows(out / "scores" / "02.csv")
    theirs = detect(ped2_dir / "frames" / "02", weights=tiny_weights, device="cpu", write_video=False)
    got = np.array([float(x["pixel_loss"]) if x["pixel_loss"] else np.nan for x in ours])
    np.testing.assert_allclose(got, theirs.pixel_loss, rtol=1e-6, equal_nan=True)


def test_output_folder_refused_when_not_empty(evaluated, ped2_dir, tiny_weights):
    out, _ = evaluated
    with pytest.raises(OutputError, match="already holds files"):
        evaluate(ped2_dir, weights=tiny_weights, out=out, device="cpu")


def test_the_test_folder_itself_is_refused_as_output(ped2_dir, tiny_weights):
    before = sorted(p.name for p in ped2_dir.iterdir())
    with pytest.raises(OutputError, match="is the input folder itself"):
        evaluate(ped2_dir, weights=tiny_weights, out=ped2_dir, device="cpu", overwrite=True)
    assert sorted(p.name for p in ped2_dir.iterdir()) == before


@pytest.mark.parametrize("where", ["results", "frames/results", "frames/01/results"])
def test_an_output_inside_the_test_folder_is_refused(ped2_dir, tiny_weights, where):
    """Results inside the test set would be read as a clip (or sit among a clip's frames) next time."""
    out = ped2_dir / where
    if not out.parent.is_dir():
        pytest.skip(f"{out.parent} is not in this test set's layout")
    before = sorted(p.relative_to(ped2_dir) for p in ped2_dir.rglob("*"))
    with pytest.raises(OutputError, match=rf"{re.escape(str(out))}: is inside the input folder .*outside it"):
        evaluate(ped2_dir, weights=tiny_weights, out=out, device="cpu")
    assert sorted(p.relative_to(ped2_dir) for p in ped2_dir.rglob("*")) == before


def test_a_clip_name_that_is_not_utf8_is_refused_by_name(tmp_path, tiny_weights):
    root = tmp_path / "testing"
    name = os.fsdecode(b"c\xff")  # a folder from a Latin-1 system
    write_frame_folder(root / "frames" / name, make_clip(N, anomaly=ANOMALIES["01"], seed=0), "{:03d}.png")
    (root / "labels.json").write_text(json.dumps({"c\u00ff": [[12, 19]]}))
    with pytest.raises(InputError, match=re.escape(f"{root / 'frames'}/c\\xff: the clip's name is not valid UTF-8")):
        evaluate(root, weights=tiny_weights, out=tmp_path / "results", device="cpu")
    assert not (tmp_path / "results").exists()


def test_videos_with_json_labels_and_calibrated_weights(tmp_path, tiny_weights_calibrated):
    for k, (name, anomaly) in enumerate(ANOMALIES.items()):
        write_video(tmp_path / f"cam{name}.mp4", make_clip(N, anomaly=anomaly, seed=k))
    (tmp_path / "labels.json").write_text(json.dumps({"cam01": [[12, 19]], "cam02.mp4": [[16, 23]]}))
    r = evaluate(tmp_path, weights=tiny_weights_calibrated, device="cpu")  # no out: data only
    assert r["layout"] == "videos" and r["labels"]["format"] == "json"
    assert [c["clip"] for c in r["per_clip"]] == ["cam01", "cam02"] and r["abnormal_frames"] == 16
    assert r["pixel_level"]["available"] is False
    assert r["lambda_s_calibration"] == load_weights(tiny_weights_calibrated).calibration["lambda_s"]
    assert "gd_calibration_lambda" in r["frame_level"]


# ------------------------------------------------------------------------------------------ labels


def test_matlab_label_lines(tmp_path):
    m = _m_file(tmp_path / "gt.m", ["61:180", "1:10, 20:30", "1:10 20:30", "", "5", " 7:8 "])
    assert parse_matlab_labels(m) == [[(60, 179)], [(0, 9), (19, 29)], [(0, 9), (19, 29)], [], [(4, 4)], [(6, 7)]]
    bad = _m_file(tmp_path / "bad.m", ["10:5"])
    with pytest.raises(InputError, match="bad.m"):
        parse_matlab_labels(bad)
    (tmp_path / "none.m").write_text("x = 1;\n")
    with pytest.raises(InputError, match="none.m.*gt_frame"):
        parse_matlab_labels(tmp_path / "none.m")


@pytest.mark.skipif(not (PED2 / "ped2.mat").is_file(), reason="Ped2 test labels not present")
def test_mat_file_agrees_with_m_file():
    labels = read_mat_labels(PED2 / "ped2.mat")
    assert labels == parse_matlab_labels(PED2 / "UCSDped2.m")
    assert labels[0] == [(60, 179)] and len(labels) == 12


def test_mat_file_refuses_other_files(tmp_path):
    (tmp_path / "x.mat").write_bytes(b"\x89HDF\r\n" + bytes(200))
    with pytest.raises(InputError, match="x.mat.*v5"):
        read_mat_labels(tmp_path / "x.mat")


def test_json_and_csv_labels(tmp_path):
    (tmp_path / "l.json").write_text('{"a": [[0, 4], [10, 12]], "b": []}')
    assert read_json_labels(tmp_path / "l.json") == {"a": [(0, 4), (10, 12)], "b": []}
    (tmp_path / "l.csv").write_text("clip,start,end\na,0,4\na,10,12\nb,,\n")
    assert read_csv_labels(tmp_path / "l.csv") == {"a": [(0, 4), (10, 12)], "b": []}
    (tmp_path / "bad.json").write_text('{"a": [[4, 1]]}')
    with pytest.raises(InputError, match="bad.json"):
        read_json_labels(tmp_path / "bad.json")
    (tmp_path / "l.txt").write_text("")
    with pytest.raises(InputError, match="l.txt.*unknown labels format"):
        read_labels(tmp_path / "l.txt")


def test_no_abnormal_scored_frame_is_a_warning_and_csv_hints_say_how_to_list_a_clean_clip(tmp_path, tiny_weights):
    for k, (name, anomaly) in enumerate(ANOMALIES.items()):
        write_video(tmp_path / f"cam{name}.mp4", make_clip(N, anomaly=anomaly, seed=k))
    (tmp_path / "edges.json").write_text(json.dumps({"cam01": [[0, 3]], "cam02": []}))  # only unscored frames
    r = evaluate(tmp_path, weights=tiny_weights, labels=tmp_path / "edges.json", device="cpu")
    [message] = r["warnings"]
    assert "no abnormal frame among the" in message and "undefined" in message
    assert r["headline"]["auc"] is None or r["headline"]["auc"] != r["headline"]["auc"]
    (tmp_path / "l.csv").write_text("clip,start,end\ncam01,12,19\n")
    with pytest.raises(InputError, match="a row `NAME,,`"):
        evaluate(tmp_path, weights=tiny_weights, labels=tmp_path / "l.csv", device="cpu")


def test_label_count_must_match_clips(ped2_dir, tiny_weights, tmp_path):
    labels = _m_file(tmp_path / "three.m", ["1:5", "1:5", "1:5"])
    with pytest.raises(InputError, match=r"three\.m: 3 label entries for 2 clips"):
        evaluate(ped2_dir, weights=tiny_weights, labels=labels, device="cpu")
    (tmp_path / "names.json").write_text('{"01": [], "03": []}')
    with pytest.raises(InputError, match=r"names\.json.*no labels for clip\(s\) 02.*unknown clip\(s\) 03"):
        evaluate(ped2_dir, weights=tiny_weights, labels=tmp_path / "names.json", device="cpu")


def test_label_range_beyond_clip(ped2_dir, tiny_weights, tmp_path):
    labels = _m_file(tmp_path / "long.m", ["13:20", "17:25"])
    with pytest.raises(InputError, match=r"long\.m: clip 02 has 24 frames.*17:25 \(1-based\)"):
        evaluate(ped2_dir, weights=tiny_weights, labels=labels, device="cpu")


def test_missing_frames_folder_and_labels(tmp_path, tiny_weights):
    with pytest.raises(InputError, match="frames: no such folder"):
        find_clips(tmp_path)
    with pytest.raises(InputError, match=f"looks like the frames/ folder itself: point to {tmp_path} instead"):
        (tmp_path / "frames").mkdir()
        find_clips(tmp_path / "frames")
    (tmp_path / "frames").rmdir()
    (tmp_path / "frames" / "01").mkdir(parents=True)
    with pytest.raises(InputError, match="01: clip folder holds no frames"):
        find_clips(tmp_path)
    with pytest.raises(InputError, match="no such folder"):
        find_clips(tmp_path / "nope")


# ------------------------------------------------------------------------------------------ CLI

runner = CliRunner()


def test_cli_eval(ped2_dir, tiny_weights, tmp_path):
    out = tmp_path / "res"
    result = runner.invoke(app, ["eval", str(ped2_dir), "--weights", str(tiny_weights), "--out", str(out), "--device", "cpu",
                                 "--paper", "ped2"])
    assert result.exit_code == 0, result.output
    assert "paper (Ped2)" in result.output and "96.5 %" in result.output and "12 / 0 (100.0 %)" in result.output
    assert "chosen by --paper" in " ".join(result.output.split())
    assert json.loads((out / "results.json").read_text())["headline"]["paper"] == 0.965
    text = " ".join(result.output.split())
    assert "events found" in text and "L2-norm" in text, result.output
    assert "difference (no learning)" in text and "the generated window (variant)" in text, result.output  # rows wrap
    last = result.output.strip().splitlines()[-1]
    assert "Results written to" in last and str(out.name) in last
    assert (out / "results.json").is_file()

    bad = _m_file(tmp_path / "bad.m", ["1:5"])
    result = runner.invoke(app, ["eval", str(ped2_dir), "--weights", str(tiny_weights), "--out", str(tmp_path / "r2"),
                                 "--labels", str(bad)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    text = " ".join(ln.strip() for ln in result.output.strip().splitlines())
    assert text.startswith("error:") and "bad.m" in text and "1 label entries for 2 clips" in text

    assert runner.invoke(app, ["eval", str(ped2_dir)]).exit_code == 2  # --out is required


@pytest.mark.parametrize("exc", [KeyboardInterrupt, OSError(28, "No space left on device")])
def test_a_failed_run_removes_the_folder_it_made_and_keeps_an_existing_one(ped2_dir, tiny_weights, tmp_path, monkeypatch, exc):
    import stan_cli.evaluate as evaluate_module

    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(evaluate_module, "_write_results", fail)
    new = tmp_path / "new"
    with pytest.raises(exc if isinstance(exc, type) else type(exc)):
        evaluate(ped2_dir, out=new, weights=tiny_weights, device="cpu")
    assert not new.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "mine.txt").write_text("keep")
    with pytest.raises(exc if isinstance(exc, type) else type(exc)):
        evaluate(ped2_dir, out=existing, weights=tiny_weights, device="cpu", overwrite=True)
    assert (existing / "mine.txt").read_text() == "keep"


def test_overwrite_replaces_an_earlier_runs_per_clip_scores(ped2_dir, tiny_weights, tmp_path):
    out = tmp_path / "results"
    (out / "scores").mkdir(parents=True)
    (out / "scores" / "99.csv").write_text(SCORES_HEADER + "\n0,0,,,,,,\n")  # an earlier run's clip
    (out / "notes.txt").write_text("mine")
    evaluate(ped2_dir, out=out, weights=tiny_weights, device="cpu", overwrite=True)
    clips = sorted(p.name for p in (ped2_dir / "frames").iterdir())
    assert sorted(p.name for p in (out / "scores").iterdir()) == [f"{c}.csv" for c in clips]
    assert (out / "notes.txt").read_text() == "mine"  # not the command's own file: kept


def test_patch_max_variant_by_hand():
    # the discriminator term is the largest patch's -log D; lambda_s = max pixel / max term / 10
    nan = float("nan")
    pixel = [np.array([nan, 0.01, 0.04, 0.09, nan]), np.array([nan, 0.0001, 0.3, 1.0, nan])]
    d_max = [np.array([nan, 2.0, 1.0, 4.0, nan]), np.array([nan, 5.0, 3.0, 0.5, nan])]
    y = [np.array([0, 0, 1, 1, 0]), np.array([0, 1, 0, 1, 0])]
    v = evaluate_module._patch_max_variant(pixel, d_max, y, ["a", "b"])
    # clip a: min-max 1/3, 0, 1 with labels 0, 1, 1; clip b: 1, 0.56, 0 with labels 1, 0, 1 ->
    # pooled normals {1/3, 0.56}, abnormals {0, 1, 1, 0}: 4 of 8 pairs above, none tied
    assert v["d_patch_max"]["pooled"]["auc"] == pytest.approx(4 / 8)
    lam = 1.0 / 5.0 / 10
    assert v["gd_patch_max"]["lambda_s"] == pytest.approx(lam)
    gd = [p + lam * q for p, q in zip(pixel, d_max)]
    assert v["gd_patch_max"]["pooled"]["auc"] == pytest.approx(metrics.frame_auc(gd, y, "pooled").auc)
    assert "largest patch" in v["d_patch_max"]["d_term"]


def test_l2_norm_variant_is_eq5_literally():
    # pixel term sqrt(N x MSE) over the N = 32 x 32 pixels the networks see; lambda_s from it
    nan = float("nan")
    pixel = [np.array([nan, 0.01, 0.04, 0.09, nan]), np.array([nan, 0.0001, 0.3, 1.0, nan])]
    d = [np.array([nan, 0.7, 0.6, 0.9, nan]), np.array([nan, 0.2, 0.8, 0.3, nan])]
    y = [np.array([0, 0, 1, 1, 0]), np.array([0, 1, 0, 1, 0])]
    v = evaluate_module._l2_norm_variant(pixel, d, y, ["a", "b"], 32)
    norm = [np.sqrt(1024 * p) for p in pixel]
    assert v["g_l2_norm"]["pooled"]["auc"] == metrics.frame_auc(norm, y, "pooled").auc
    lam = np.sqrt(1024 * 1.0) / 0.9 / 10
    assert v["gd_l2_norm"]["lambda_s"] == pytest.approx(lam)
    gd = [n + lam * q for n, q in zip(norm, d)]
    assert v["gd_l2_norm"]["pooled"]["auc"] == pytest.approx(metrics.frame_auc(gd, y, "pooled").auc)
    # per-clip min-max of a square root is not that of the MSE: the pooled AUC can differ
    assert v["g_l2_norm"]["pooled"]["auc"] == pytest.approx(5.5 / 8)
    assert metrics.frame_auc(pixel, y, "pooled").auc == pytest.approx(6.5 / 8)


def test_generated_variant_by_hand():
    # the discriminator term is -log D(S^_t); lambda_s = max pixel / max term / 10
    nan = float("nan")
    pixel = [np.array([nan, 0.01, 0.04, 0.09, nan]), np.array([nan, 0.0001, 0.3, 1.0, nan])]
    d_gen = [np.array([nan, 2.0, 3.0, 1.0, nan]), np.array([nan, 2.5, 0.5, 1.5, nan])]
    y = [np.array([0, 0, 1, 1, 0]), np.array([0, 1, 0, 1, 0])]
    v = evaluate_module._generated_variant(pixel, d_gen, y, ["a", "b"])
    # clip a: min-max 0.5, 1, 0 with labels 0, 1, 1; clip b: 1, 0, 0.5 with labels 1, 0, 1 ->
    # normals {0.5, 0}, abnormals {1, 0, 1, 0.5}: above 0.5: 2 + one tie; above 0: 3 + one tie -> 6 of 8
    assert v["d_generated"]["pooled"]["auc"] == pytest.approx(6 / 8)
    lam = 1.0 / 3.0 / 10
    assert v["gd_generated"]["lambda_s"] == pytest.approx(lam)
    gd = [p + lam * q for p, q in zip(pixel, d_gen)]
    assert v["gd_generated"]["pooled"]["auc"] == pytest.approx(metrics.frame_auc(gd, y, "pooled").auc)
    assert "generated" in v["d_generated"]["d_term"]


# ------------------------------------------------------------------------------------------ eval-only terms


def test_frame_difference_by_hand():
    clip = np.full((20, 4, 4), 100, np.uint8)
    assert np.array_equal(baseline.frame_difference(clip), np.zeros(10))  # nothing moves: 0 everywhere
    clip[12] = 200  # one bright frame
    got = baseline.frame_difference(clip)  # windows with middles 5 .. 14
    # middle 12: |200 - 100| = 100; middles 7 .. 11 and 13, 14 hold it as a neighbour:
    # |100 - (9 x 100 + 200) / 10| = 10; middles 5, 6 do not reach it: 0
    assert got.tolist() == [0, 0, 10, 10, 10, 10, 10, 100, 10, 10]


def test_frame_buffer_gives_the_same_scores_in_any_chunking():
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, (30, 5, 5), dtype=np.uint8)
    buffer, got = baseline.FrameBuffer(), []
    for a, b in ((0, 11), (11, 12), (12, 15), (15, 22), (22, 30)):
        frames = buffer.push(clip[a:b])
        assert len(frames) == b - a + min(a, 10)  # the chunk and the (up to) 10 frames before it
        got.extend(baseline.frame_difference(frames))
    np.testing.assert_array_equal(got, baseline.frame_difference(clip))
    assert baseline.FrameBuffer().push(clip[:10]) is None  # not yet one window


def test_frame_difference_of_a_clip_without_a_network(tmp_path):
    frames = np.full((16, HEIGHT, WIDTH, 3), 100, np.uint8)
    frames[8] = 200
    got = baseline.clip_frame_difference(write_frame_folder(tmp_path / "c", frames), 32)
    nan = float("nan")
    expected = [nan] * 5 + [10, 10, 10, 100, 10, 10] + [nan] * 5  # decoded, made grey and small: still 100 and 200
    np.testing.assert_array_equal(got, expected)


def test_eval_terms_by_hand(ped2_dir, tiny_weights):
    """-log D(S^_t) and the baseline of each window, one window at a time from the decoded frames,
    against score_clip's streamed batches (3 windows: the kept frames cross every batch)."""
    model = load_weights(tiny_weights)
    model.eval()
    clip = find_clips(ped2_dir)[1][0]
    s = evaluate_module.score_clip(clip, model, "cpu", 3, "fp32", lambda *a: None)
    _, stream = read_frames(clip.path)
    grey = to_grey_square(np.stack(list(stream)), model.config.image_size)  # (N, 32, 32) uint8
    x = to_tensor(torch.from_numpy(grey))  # (N, 1, 32, 32)
    d_gen, diff = np.full(N, np.nan), np.full(N, np.nan)
    with torch.no_grad():
        for t in scored_range(N):
            window = x[t - 5 : t + 6][None]  # (1, 11, 1, S, S)
            fake = with_middle(window, model.generator(split_window(window)[0]))
            d_gen[t] = -torch.log(torch.sigmoid(model.discriminator(fake).double())).mean().item()
            g = grey[t - 5 : t + 6].astype(np.float64)
            diff[t] = np.abs(g[5] - (g.sum(axis=0) - g[5]) / 10).mean()
    np.testing.assert_allclose(s.d_generated, d_gen, rtol=1e-5, equal_nan=True)
    np.testing.assert_allclose(s.frame_diff, diff, rtol=1e-12, equal_nan=True)
    assert not np.allclose(s.d_generated[5:-5], s.d[5:-5])  # a window of its own, not the real one


def test_eval_baseline_is_the_no_network_path(evaluated, ped2_dir):
    out, r = evaluated
    cheap = evaluate_module.evaluate_frame_difference(ped2_dir, image_size=32)
    assert cheap["frame_difference"] == r["frame_level"]["frame_difference"]
    rows = _rows(out / "scores" / "02.csv")
    got = np.array([float(x["frame_difference"]) if x["frame_difference"] else np.nan for x in rows])
    np.testing.assert_allclose(got, baseline.clip_frame_difference(ped2_dir / "frames" / "02", 32), rtol=1e-7, equal_nan=True)


def test_a_non_finite_loss_is_left_out_of_every_score_with_a_warning(ped2_dir, tiny_weights, tmp_path, monkeypatch):
    # weights that overflow on one window: the frame leaves g, d, gd and the reference alike, and
    # results.json says so, where before it silently shrank only the d and gd frame sets
    real = evaluate_module.score_clip

    def one_nan(clip, *args, **kwargs):
        s = real(clip, *args, **kwargs)
        if clip.name == "01":
            s.d[8] = np.nan
        return s

    monkeypatch.setattr(evaluate_module, "score_clip", one_nan)
    results = evaluate(ped2_dir, out=tmp_path / "r", weights=tiny_weights, device="cpu")
    rows = {r["clip"]: r for r in results["per_clip"]}
    assert rows["01"]["scored_frames"] == len(scored_range(N)) - 1 and rows["02"]["scored_frames"] == len(scored_range(N))
    scores = _rows(tmp_path / "r" / "scores" / "01.csv")
    assert all(scores[8][k] == "" for k in ("pixel_loss", "d_loss")), scores[8]
    (warning,) = results["warnings"]
    assert warning.startswith("01: 1 of 14 windows got a non-finite loss") and "every metric" in warning


def test_paper_column_follows_the_data_set(tmp_path):
    ped1 = tmp_path / "UCSD_Anomaly_Dataset" / "UCSDped1" / "Test"
    chosen, note = paper_for("auto", ped1, ped1 / "labels.csv", (238, 158))
    assert note is None and chosen["dataset"] == "UCSD Ped1" and chosen["frame_auc"]["gd"] == 0.821
    assert chosen["event_level"]["ground_truth_events"] == 40 and "'UCSDped1'" in chosen["chosen_by"]
    assert "36" in chosen["note"]  # a part of Ped1 compares only roughly
    assert paper_for("auto", tmp_path / "cam", tmp_path / "cam" / "ped2.mat")[0]["dataset"] == "UCSD Ped2"  # the labels' name
    assert paper_for("auto", tmp_path / "cuhk_avenue" / "testing", tmp_path / "l.json", (640, 360))[0]["event_level"] is None
    for unnamed in ("speed2", "ped10", "car-park"):  # no data set of the paper's in these names
        assert paper_for("auto", tmp_path / unnamed / "testing", tmp_path / unnamed / "labels.json") == (None, None)
    assert paper_for("none", ped1, ped1 / "UCSDped1.m") == (None, None)
    assert paper_for(" PED2", tmp_path, tmp_path / "l.csv")[0]["chosen_by"] == "--paper"  # as the table writes it
    with pytest.raises(StanError, match="--paper ped3: unknown data set. Use one of auto, ped1, ped2, avenue, none"):
        paper_for("ped3", tmp_path, tmp_path / "l.csv")


def test_paper_column_not_for_a_camera_named_like_a_data_set(tmp_path):
    own = tmp_path / "5th-avenue-cam" / "testing"  # a street camera, 1280 x 720
    chosen, note = paper_for("auto", own, own / "labels.json", (1280, 720))
    assert chosen is None and "'5th-avenue-cam' says CUHK Avenue, but the frames are 1280 x 720, not its 640 x 360" in note
    assert "--paper avenue" in note
    mixed = tmp_path / "ped1" / "testing"  # the folder says Ped1, the labels file Ped2
    chosen, note = paper_for("auto", mixed, mixed / "UCSDped2.m", (238, 158))
    assert chosen is None and "says UCSD Ped2" in note and "says UCSD Ped1" in note and "--paper" in note
    assert paper_for("ped2", mixed, mixed / "UCSDped2.m", (238, 158))[0]["dataset"] == "UCSD Ped2"  # by hand: as asked
    link = tmp_path / "links" / "ped2"  # the folder's name as typed, not where a link leads
    link.parent.mkdir()
    link.symlink_to(tmp_path / "mycam", target_is_directory=True)
    assert paper_for("auto", link, tmp_path / "mycam" / "labels.csv", (360, 240))[0]["dataset"] == "UCSD Ped2"


def test_cli_eval_without_a_paper_column(ped2_dir, tiny_weights, tmp_path):
    result = runner.invoke(app, ["eval", str(ped2_dir), "--weights", str(tiny_weights), "--out", str(tmp_path / "res"),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    table = result.output.split("Results written")[0]
    assert "paper" not in table and "96.5" not in table  # a data set of one's own: ours alone


# ------------------------------------------------------------------------------------------ hostile input


def _copy_results(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("mine", ["results.json", "per_clip.csv", "roc.png", "scores/thesis_table.csv", "scores"])
def test_overwrite_never_replaces_a_file_stan_did_not_write(evaluated, ped2_dir, tiny_weights, tmp_path, mine):
    out = _copy_results(evaluated[0], tmp_path / "res")
    target = out / mine
    if mine == "scores":  # a file where stan's folder of scores would go
        import shutil

        shutil.rmtree(target)
    target.write_text("my own notes\n")
    before = _tree(out)
    with pytest.raises(OutputError, match=re.escape(str(target)) + ".*(stan did not write|is not stan's folder)"):
        evaluate(ped2_dir, weights=tiny_weights, out=out, device="cpu", overwrite=True)
    assert _tree(out) == before


def test_a_run_that_fails_while_writing_leaves_the_earlier_results_whole(evaluated, ped2_dir, tiny_weights, tmp_path,
                                                                       monkeypatch):
    out = _copy_results(evaluated[0], tmp_path / "res")
    before = _tree(out)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate_module, "plot_roc", interrupted)  # after per_clip.csv and scores/ are written
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"01": [], "02": [[0, 20]]}))
    with pytest.raises(KeyboardInterrupt):
        evaluate(ped2_dir, weights=tiny_weights, out=out, labels=other, device="cpu", overwrite=True)
    assert _tree(out) == before  # no new per_clip.csv or scores/ beside the old results.json
    assert sorted(p.name for p in out.iterdir()) == ["per_clip.csv", "results.json", "roc.png", "scores"]
    new = tmp_path / "new"
    with pytest.raises(KeyboardInterrupt):
        evaluate(ped2_dir, weights=tiny_weights, out=new, device="cpu")
    assert not new.exists()  # a folder this run made goes with it


def test_overwrite_replaces_the_scores_of_clips_no_longer_there(evaluated, ped2_dir, tiny_weights, tmp_path):
    out = _copy_results(evaluated[0], tmp_path / "res")
    (out / "scores" / "03.csv").write_bytes((out / "scores" / "01.csv").read_bytes())  # an earlier run's third clip
    evaluate(ped2_dir, weights=tiny_weights, out=out, device="cpu", overwrite=True)
    assert sorted(p.name for p in (out / "scores").iterdir()) == ["01.csv", "02.csv"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_a_second_run_into_the_same_folder_is_refused(ped2_dir, tiny_weights, tmp_path):
    from stan_cli.fileio import FolderLock

    out = tmp_path / "res"
    out.mkdir()
    lock = FolderLock(out)
    lock.acquire()  # a run writing there now
    try:
        with pytest.raises(OutputError, match="another stan run|in use|is writing"):
            evaluate(ped2_dir, weights=tiny_weights, out=out, device="cpu", overwrite=True)
    finally:
        lock.release()


def _labels_run(ped2_dir, tiny_weights, tmp_path, name: str, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    return lambda: evaluate(ped2_dir, weights=tiny_weights, labels=path, device="cpu")


@pytest.mark.parametrize("name, content, says", [
    ("latin1.csv", "01,12,19\n02,16,23\nCaf\xe9,1,2\n".encode("latin-1"), "is not UTF-8 text"),
    ("inf.json", b'{"01": [[12, 1e400]], "02": []}', "not a pair of whole frame numbers"),
    ("nan.json", b'{"01": [[12, NaN]], "02": []}', "not a pair of whole frame numbers"),
    ("bool.json", b'{"01": [[true, true]], "02": []}', "not a pair of whole frame numbers"),
    ("text.json", b'{"01": [["12", "19"]], "02": []}', "not a pair of whole frame numbers"),
    ("twice.json", b'{"01": [[12, 19]], "01": [], "02": []}', "clip '01' is listed twice"),
])
def test_bad_labels_get_one_line_naming_the_file(ped2_dir, tiny_weights, tmp_path, name, content, says):
    with pytest.raises(InputError, match=re.escape(f"{tmp_path / name}: ") + ".*" + re.escape(says)):
        _labels_run(ped2_dir, tiny_weights, tmp_path, name, content)()


@pytest.mark.parametrize("name, content", [
    ("bom.csv", b"\xef\xbb\xbfclip,start,end\n01,12,19\n02,16,23\n"),  # Excel's "CSV UTF-8"
    ("bom.json", b'\xef\xbb\xbf{"01": [[12, 19]], "02": [[16, 23]]}'),  # Notepad's UTF-8
    ("float.csv", b"01,12.0,19\n02,16,23.0\n"),
])
def test_labels_as_editors_save_them_are_read(ped2_dir, tiny_weights, tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    assert read_labels(path).ranges == {"01": [(12, 19)], "02": [(16, 23)]}


def test_a_folder_given_as_the_labels_file(tmp_path):
    (tmp_path / "labels.json").mkdir()
    with pytest.raises(InputError, match="labels.json: is a folder, not a labels file"):
        read_labels(tmp_path / "labels.json")


def _mat_v5(cells: list[list[tuple[int, int]]]) -> bytes:
    """An uncompressed MATLAB v5 MAT-file with a cell array `gt` of 2 x K double matrices."""
    import struct

    def element(kind: int, data: bytes) -> bytes:
        return struct.pack("<II", kind, len(data)) + data + bytes(-len(data) % 8)

    def matrix(name: str, cls: int, dims: tuple[int, ...], body: bytes) -> bytes:
        head = element(6, struct.pack("<II", cls, 0)) + element(5, struct.pack(f"<{len(dims)}i", *dims))
        return element(14, head + element(1, name.encode()) + body)

    items = b"".join(
        matrix("", 6, (2, len(c)), element(9, struct.pack(f"<{2 * len(c)}d", *[v for pair in c for v in pair])))
        for c in cells
    )
    return b"MATLAB 5.0 MAT-file, stan test".ljust(116) + bytes(8) + b"\x00\x01IM" + matrix("gt", 1, (1, len(cells)), items)


def test_damaged_mat_labels_are_one_line_never_a_traceback(tmp_path):
    good = _mat_v5([[(13, 20)], [(17, 24), (30, 31)]])
    (tmp_path / "gt.mat").write_bytes(good)
    assert read_labels(tmp_path / "gt.mat").ranges == [[(12, 19)], [(16, 23), (29, 30)]]
    path = tmp_path / "damaged.mat"
    for pos in range(128, len(good)):  # every byte after the header, three ways
        for value in (0, 0x7F, 0xFF):
            damaged = bytearray(good)
            damaged[pos] = value
            path.write_bytes(bytes(damaged))
            try:
                read_labels(path)
            except InputError as err:
                assert str(err).startswith(f"{path}: ") and "\n" not in str(err), (pos, value, err)


def test_a_clip_too_short_is_refused_before_any_scoring(ped2_dir, tiny_weights, tmp_path):
    import shutil

    root = shutil.copytree(ped2_dir, tmp_path / "testing")
    for frame in sorted((root / "frames" / "02").iterdir())[8:]:
        frame.unlink()
    for frame in sorted((root / "masks" / "02").iterdir())[8:]:
        frame.unlink()
    (root / "UCSDmini.m").write_text("TestVideoFile{1}.gt_frame = [13:20];\nTestVideoFile{2}.gt_frame = [2:5];\n")
    scored = []
    with pytest.raises(InputError, match=re.escape(f"{root / 'frames' / '02'}: only 8 frames; STAN needs at least 11")):
        evaluate(root, weights=tiny_weights, device="cpu", on_progress=lambda *a: scored.append(a))
    assert scored == []


def test_an_unreadable_video_is_refused_before_any_scoring(tmp_path, tiny_weights):
    write_video(tmp_path / "01.mp4", make_clip(N, anomaly=ANOMALIES["01"], seed=0))
    (tmp_path / "02.mp4").write_bytes(b"")
    (tmp_path / "labels.json").write_text(json.dumps({"01": [[12, 19]], "02": []}))
    scored = []
    with pytest.raises(InputError, match="02.mp4"):
        evaluate(tmp_path, weights=tiny_weights, device="cpu", on_progress=lambda *a: scored.append(a))
    assert scored == []


def test_a_short_video_or_labels_past_its_end_are_refused_before_any_scoring(tmp_path, tiny_weights):
    write_video(tmp_path / "01.mp4", make_clip(N, anomaly=ANOMALIES["01"], seed=0))
    write_video(tmp_path / "02.mp4", make_clip(8, seed=1))
    (tmp_path / "labels.json").write_text(json.dumps({"01": [[12, 19]], "02": []}))
    scored = []
    with pytest.raises(InputError, match=re.escape(f"{tmp_path / '02.mp4'}: only 8 frames; STAN needs at least 11")):
        evaluate(tmp_path, weights=tiny_weights, device="cpu", on_progress=lambda *a: scored.append(a))
    assert scored == []
    write_video(tmp_path / "02.mp4", make_clip(N, seed=1))
    (tmp_path / "labels.json").write_text(json.dumps({"01": [[12, 19]], "02": [[20, 30]]}))  # ends past frame 23
    with pytest.raises(InputError, match=r"labels.json: clip 02 has 24 frames, but its label range 20:30 \(0-based\)"):
        evaluate(tmp_path, weights=tiny_weights, device="cpu", on_progress=lambda *a: scored.append(a))
    assert scored == []


def test_masks_of_another_shape_than_their_frames_say_so(ped2_dir, tiny_weights, tmp_path):
    import shutil

    root = shutil.copytree(ped2_dir, tmp_path / "testing")
    r = evaluate(root, weights=tiny_weights, device="cpu")
    assert not any("another shape" in w for w in r["warnings"]), r["warnings"]
    shutil.rmtree(root / "masks" / "02")  # square masks for wide frames: not this clip's masks
    write_frame_folder(root / "masks" / "02", np.zeros((N, HEIGHT, HEIGHT, 3), np.uint8))
    r = evaluate(root, weights=tiny_weights, device="cpu")
    assert any(f"in 1 clip(s): 02 ({HEIGHT} x {HEIGHT} masks, {WIDTH} x {HEIGHT} frames)" in w for w in r["warnings"]), r["warnings"]


def test_masks_for_some_clips_only_say_so(ped2_dir, tiny_weights, tmp_path):
    import shutil

    root = shutil.copytree(ped2_dir, tmp_path / "testing")
    shutil.rmtree(root / "masks" / "02")
    r = evaluate(root, weights=tiny_weights, device="cpu")
    assert r["pixel_level"]["available"] is False
    assert any("no mask folder for 1 of the 2 clips (02)" in w for w in r["warnings"]), r["warnings"]


def test_cli_names_an_event_no_score_can_find(ped2_dir, tiny_weights, tmp_path):
    edges = tmp_path / "edges.json"
    edges.write_text(json.dumps({"01": [[1, 3]], "02": [[16, 23]]}))  # 1-3: in the first 5 frames, no full window
    result = runner.invoke(app, ["eval", str(ped2_dir), "--weights", str(tiny_weights), "--out", str(tmp_path / "res"),
                                 "--device", "cpu", "--labels", str(edges)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "cannot be found" in text and "labels: " in text and "edges.json (json)" in text, result.output
    saved = json.loads((tmp_path / "res" / "results.json").read_text())
    assert saved["event_level"]["unscored_events"] == [{"clip": "01", "start": 1, "end": 3}]


def test_the_ucsd_download_layout_is_read_as_it_comes(ped2_dir, tiny_weights, tmp_path):
    """UCSDped2/Test/Test001/*.tif, Test001_gt/*.bmp, UCSDped2.m: no reshuffling into frames/ and masks/."""
    import shutil

    root = tmp_path / "UCSDped2" / "Test"
    for k, name in enumerate(("01", "02"), start=1):
        shutil.copytree(ped2_dir / "frames" / name, root / f"Test{k:03d}")
        shutil.copytree(ped2_dir / "masks" / name, root / f"Test{k:03d}_gt")
    shutil.copy(ped2_dir / "UCSDmini.m", root / "UCSDped2.m")
    layout, clips = find_clips(root)
    assert layout == "clip-folders" and [c.name for c in clips] == ["Test001", "Test002"]
    assert [c.mask.name for c in clips] == ["Test001_gt", "Test002_gt"]
    ours = evaluate(root, weights=tiny_weights, device="cpu")
    theirs = evaluate(ped2_dir, weights=tiny_weights, device="cpu")
    assert ours["layout"] == "clip-folders" and ours["pixel_level"]["available"]
    assert ours["frame_level"]["gd"]["pooled"]["auc"] == theirs["frame_level"]["gd"]["pooled"]["auc"]
    assert ours["abnormal_frames"] == theirs["abnormal_frames"]


def test_overwrite_takes_an_earlier_versions_scores_and_its_temporaries(evaluated, ped2_dir, tiny_weights, tmp_path):
    out = _copy_results(evaluated[0], tmp_path / "res")
    (out / "scores" / "03.csv").write_text("frame,label,pixel_loss,d_loss,pixel_critical\n0,0,,,\n")  # stan 0.1.0's columns
    (out / "scores" / ".01.csv.tmp.csv").write_text("")  # an interrupted run's temporary
    evaluate(ped2_dir, weights=tiny_weights, out=out, device="cpu", overwrite=True)
    assert sorted(p.name for p in (out / "scores").iterdir()) == ["01.csv", "02.csv"]


def test_the_frames_folder_itself_gets_the_hint(ped2_dir, tmp_path):
    with pytest.raises(InputError, match="looks like the frames/ folder itself: point to"):
        find_clips(ped2_dir / "frames")


def test_a_file_put_into_scores_while_a_run_goes_on_is_kept(tmp_path):
    from stan_cli.fileio import staged_folder

    out = tmp_path / "res"
    (out / "scores").mkdir(parents=True)
    (out / "scores" / "01.csv").write_text(SCORES_HEADER + "\n")
    with staged_folder(out, "scores", evaluate_module._is_scores_file, "per-clip scores") as run:
        run.mkdir()
        (run / "01.csv").write_text(SCORES_HEADER + "\n0,0,,,,,,\n")
        (out / "scores" / "my-analysis.txt").write_text("mine")  # saved there during a long run
    assert (out / "scores" / "01.csv").read_text().endswith("0,0,,,,,,\n")
    assert (out / "scores.earlier" / "my-analysis.txt").read_text() == "mine"
