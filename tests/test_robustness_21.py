"""Issue #21, robustness round two: concurrent runs, what a killed run leaves, non-finite weights,
damaged frames, names that are not UTF-8, very large frames, and numeric options.

The style of test_robustness.py (whose helpers are used here): inputs made on the fly with the
bundled ffmpeg, tiny networks, and for a user's mistake exactly one `error:` line, exit code 1,
no traceback, nothing of the user's lost.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_clip
from test_robustness import assert_one_error, h264, listing, run
from stan_cli import detect as detect_module
from stan_cli import heatmaps
from stan_cli.detect import OVERLAY_PIXEL, REPORT_FILES, detect
from stan_cli.errors import OutputError
from stan_cli.explain import explain
from stan_cli.fileio import LOCK_NAME, FolderLock, scratch_path

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def clip16(tmp_path) -> Path:
    return h264(tmp_path / "clip16.mp4", make_clip(n=16))


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------- 1. two runs into one folder


@pytest.mark.parametrize("second_args", [["--overwrite"], [], ["--overwrite", "--no-video"]])
def test_a_second_detect_into_a_folder_being_written_is_refused(tmp_path, clip16, tiny_weights, monkeypatch, second_args):
    """Run B starts while run A draws its overlays into the same folder: B is refused with one
    line before it touches anything (without --overwrite too: A's temporaries are not an
    interrupted run's leftovers), and A finishes with its own heat maps."""
    other = h264(tmp_path / "other.mp4", make_clip(n=16, seed=3))
    out = tmp_path / "report"
    detect(clip16, out=out, weights=tiny_weights, device="cpu")
    real = detect_module.overlay.compose_frame
    second: list = []

    def meanwhile(*args, **kwargs):
        if not second:
            second.append(run("detect", other, "--out", out, "--weights", tiny_weights, *second_args))
        return real(*args, **kwargs)

    monkeypatch.setattr(detect_module.overlay, "compose_frame", meanwhile)
    result = detect(clip16, out=out, weights=tiny_weights, device="cpu", overwrite=True)
    assert_one_error(second[0], str(out), "another stan run is writing this folder", f"pid {os.getpid()}")
    assert result.summary["input"]["path"] == str(clip16)
    assert json.loads((out / "summary.json").read_text())["input"]["path"] == str(clip16)
    assert hidden(out) == []  # the lock and the scratch files are gone


def test_explain_and_batch_lock_their_folders_too(tmp_path, clip16, tiny_weights):
    out = tmp_path / "ex"
    out.mkdir()
    lock = FolderLock(out)
    lock.acquire()
    try:
        with pytest.raises(OutputError, match="another stan run is writing this folder"):
            explain(clip16, 7, out=out, weights=tiny_weights, overwrite=True)
        assert_one_error(run("detect", clip16, clip16, "--out", out, "--weights", tiny_weights, "--overwrite"),
                         "another stan run is writing this folder")
    finally:
        lock.release()
    assert list(out.iterdir()) == []


def test_scratch_files_have_names_no_other_run_shares(tmp_path, clip16, tiny_weights, monkeypatch):
    made = []
    real = heatmaps.MapStore.__init__

    def init(self, path):
        made.append(Path(path).name)
        real(self, path)

    monkeypatch.setattr(heatmaps.MapStore, "__init__", init)
    detect(clip16, out=tmp_path / "r", weights=tiny_weights, device="cpu")
    assert len(made) == 2 and all(name.startswith(".") and f".{os.getpid()}-" in name for name in made)
    assert scratch_path(tmp_path, "x", ".u8") != scratch_path(tmp_path, "x", ".u8")  # the random part
    assert hidden(tmp_path / "r") == []


# --------------------------------------------------------------------- 4. a run killed outright

_KILLED_RUN = """
import os, signal, sys
from stan_cli import detect as d
real, calls = d.overlay.compose_frame, []
def killed(*args, **kwargs):
    calls.append(1)
    if len(calls) == 6:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
d.overlay.compose_frame = killed
d.detect(sys.argv[1], out=sys.argv[2], weights=sys.argv[3], device="cpu")
"""


@pytest.mark.parametrize("again", [["--overwrite"], ["--overwrite", "--no-video"]])
def test_what_a_killed_run_leaves_is_named_and_any_overwrite_removes_it(tmp_path, clip16, tiny_weights, again):
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-c", _KILLED_RUN, str(clip16), str(out), str(tiny_weights)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = hidden(out)
    assert any(name.endswith(".u8") for name in left) and LOCK_NAME in left
    assert [p for p in out.iterdir() if not p.name.startswith(".")] == []
    line = assert_one_error(run("detect", clip16, "--out", out, "--weights", tiny_weights),
                            str(out), "interrupted stan run", "--overwrite")
    assert "already holds files" not in line
    result = run("detect", clip16, "--out", out, "--weights", tiny_weights, *again)
    assert result.exit_code == 0, result.output
    assert hidden(out) == []


def test_leftovers_beside_an_earlier_report_are_counted_and_removed_by_overwrite(tmp_path, clip16, tiny_weights):
    out = tmp_path / "report"
    detect(clip16, out=out, weights=tiny_weights, device="cpu", write_video=False)
    for name in (".pixel_loss_maps.u8", ".guided_backprop_maps.123-0a1b2c3d.u8", ".scores.csv.tmp.csv",
                 ".summary.json.old", f".{OVERLAY_PIXEL}.tmp.mp4", LOCK_NAME):
        (out / name).write_bytes(b"x" * 1000)
    (out / ".my-notes.txt.old").write_text("the user's own hidden file")
    assert_one_error(run("detect", clip16, "--out", out, "--weights", tiny_weights),
                     "already holds files", "5 hidden scratch files an interrupted stan run left")
    assert run("detect", clip16, "--out", out, "--weights", tiny_weights, "--overwrite", "--no-video").exit_code == 0
    assert hidden(out) == [".my-notes.txt.old"]


def test_an_explain_killed_in_a_report_folder_leaves_what_detect_recognises(tmp_path, clip16, tiny_weights):
    out = tmp_path / "report"
    out.mkdir()
    for name in (".panel.png.tmp.png", ".explanation.json.tmp.json", ".pixel_loss.npy.tmp.npy", ".index.html.old"):
        (out / name).write_bytes(b"x")
    assert_one_error(run("detect", clip16, "--out", out, "--weights", tiny_weights), "interrupted stan run")
    assert run("detect", clip16, "--out", out, "--weights", tiny_weights, "--overwrite", "--no-video").exit_code == 0
    assert hidden(out) == []


# ---------------------------------------- a file --overwrite would replace is checked to be stan's


@pytest.mark.parametrize("name", ["index.html", "scores.csv", "summary.json", "scores.png", OVERLAY_PIXEL, "index.csv"])
def test_overwrite_refuses_to_replace_a_file_stan_did_not_write(tmp_path, clip16, tiny_weights, name):
    out = tmp_path / "report"
    out.mkdir()
    (out / name).write_text("the user's own file, under one of a report's names\n")
    before = listing(out)
    assert_one_error(run("detect", clip16, "--out", out, "--weights", tiny_weights, "--overwrite"),
                     str(out / name), "stan did not write it")
    assert listing(out) == before


def test_overwrite_replaces_stans_own_files_of_every_kind(tmp_path, clip16, tiny_weights):
    """An earlier report (overlays included), an earlier explain folder, an earlier index of many
    inputs: all are recognised as stan's and replaced."""
    out = tmp_path / "report"
    assert run("detect", clip16, clip16, "--out", out, "--weights", tiny_weights).exit_code == 0
    assert run("detect", clip16, clip16, "--out", out, "--weights", tiny_weights, "--overwrite").exit_code == 0
    single = out / "clip16"
    assert run("detect", clip16, "--out", single, "--weights", tiny_weights, "--overwrite").exit_code == 0
    assert sorted(p.name for p in single.iterdir()) == sorted([*REPORT_FILES, OVERLAY_PIXEL, "overlay_guided_backprop.mp4"])
    ex = tmp_path / "ex"
    explain(clip16, 7, out=ex, weights=tiny_weights)
    explain(clip16, 8, out=ex, weights=tiny_weights, overwrite=True)
    assert json.loads((ex / "explanation.json").read_text())["frame"] == 8


# ------------------------------------------------------ 2. non-finite weights, damaged calibration


def _weights_with(tmp_path: Path, name: str, *, tensor: str | None = None, value: float = float("nan"),
                  calibration: object = "valid") -> Path:
    """Tiny weights with one tensor's first value replaced, or the calibration metadata replaced."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from conftest import tiny_models
    from stan_cli import scoring
    from stan_cli.model import TINY
    from stan_cli.weights import save_weights

    g, d = tiny_models()
    rng = np.random.default_rng(1)
    path = tmp_path / name
    save_weights(path, g, d, TINY, calibration=scoring.calibrate(0.04 + 0.01 * rng.random(50), 0.69 + 0.01 * rng.random(50)))
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata()
    if tensor is not None:
        flat = tensors[tensor].flatten().clone()
        flat[0] = value
        tensors[tensor] = flat.reshape(tensors[tensor].shape)
    if calibration != "valid":
        metadata["calibration"] = calibration if isinstance(calibration, str) else json.dumps(calibration)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    assert torch.isfinite(tensors["generator.encoder.0.weight"]).any()
    return path


@pytest.mark.parametrize("tensor,value", [("discriminator.convs.0.weight", float("nan")),
                                          ("generator.encoder.0.weight", float("inf"))])
def test_weights_holding_nan_or_inf_are_refused_when_loaded(tmp_path, clip16, tensor, value):
    path = _weights_with(tmp_path, "nan.safetensors", tensor=tensor, value=value)
    out = tmp_path / "r"
    assert_one_error(run("detect", clip16, "--out", out, "--weights", path),
                     str(path), "NaN or infinite", tensor)
    assert not out.exists()
    assert_one_error(run("explain", clip16, "--frame", "7", "--out", tmp_path / "ex", "--weights", path), "NaN or infinite")


@pytest.mark.parametrize("calibration,what", [
    ('{"lambda_s": NaN, "false_alarm_rate": 0.01, "kinds": {}}', "lambda_s is nan"),
    ({"lambda_s": 0.1, "false_alarm_rate": 0.01, "kinds": [1, 2, 3]}, "kinds is list"),
    ({"lambda_s": 0.1, "false_alarm_rate": 0.01, "kinds": {"g": {"threshold": 1, "median": 1}}}, "kinds.d is missing"),
    ({"lambda_s": 0.1, "false_alarm_rate": 0.01,
      "kinds": {k: {"threshold": None, "median": 0.1} for k in ("g", "d", "gd")}}, "kinds.g.threshold is None"),
    ({"lambda_s": "0.1", "false_alarm_rate": 0.01}, "lambda_s is '0.1'"),
    ({"lambda_s": 0.1, "false_alarm_rate": 2}, "false_alarm_rate is 2"),
    ({"lambda_s": 0.1, "false_alarm_rate": 0.01,  # a finite threshold no score reaches: the plot overflowed
      "kinds": {k: {"threshold": 1e308, "median": 0.1} for k in ("g", "d", "gd")}}, "kinds.g.threshold is 1e+308"),
    ({"lambda_s": 0.1, "false_alarm_rate": 0.01,  # below every score: every frame flagged, exit 0
      "kinds": {k: {"threshold": -5, "median": 0.1} for k in ("g", "d", "gd")}}, "kinds.g.threshold is -5"),
    ('[1, 2]', "not an object"),
])
def test_a_damaged_calibration_is_refused_when_loaded_not_after_scoring(tmp_path, clip16, calibration, what):
    path = _weights_with(tmp_path, "cal.safetensors", calibration=calibration)
    out = tmp_path / "r"
    assert_one_error(run("detect", clip16, "--out", out, "--weights", path),
                     str(path), "calibration stored with the weights is damaged", what)
    assert not out.exists()


def test_a_run_that_scores_no_frame_is_an_error_not_a_clean_report(tmp_path, clip16, tiny_weights):
    """Networks that give NaN on this input (weights damaged in memory, an overflow): no report
    saying "abnormal frames 0"."""
    import torch

    from stan_cli.errors import WeightsError
    from stan_cli.weights import load_weights

    model = load_weights(tiny_weights)
    with torch.no_grad():
        model.discriminator.convs[-1].bias.fill_(float("nan"))
    out = tmp_path / "r"
    with pytest.raises(WeightsError, match="no frame could be scored"):
        detect(clip16, out=out, weights=model, device="cpu")
    assert not out.exists()
    with pytest.raises(WeightsError, match="no finite score"):
        explain(clip16, 7, weights=model, device="cpu")


# -------------------------------------------------------------- 3. damaged but decodable frames


def _jpeg_folder(folder: Path, n: int = 14) -> Path:
    from test_robustness import ffmpeg

    folder.mkdir()
    for t, frame in enumerate(make_clip(n=n, height=96, width=128)):
        ffmpeg("-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "128x96", "-i", "-", "-frames:v", "1", "-update", "1",
               folder / f"{t}.jpg", stdin=frame.tobytes())
    return folder


@pytest.mark.parametrize("damage", ["truncated", "bit-flipped", "both"])
def test_a_folder_with_a_damaged_jpeg_is_refused_naming_it(tmp_path, tiny_weights, damage):
    """ffmpeg would decode these with concealment (a third of the frame grey or green) and the
    frame would be scored as an anomaly; refused like an unreadable image, naming the image."""
    folder = _jpeg_folder(tmp_path / "frames")
    bad = []
    if damage in ("truncated", "both"):
        data = (folder / "7.jpg").read_bytes()
        (folder / "7.jpg").write_bytes(data[: len(data) // 2])
        bad.append("7.jpg")
    if damage in ("bit-flipped", "both"):
        data = bytearray((folder / "9.jpg").read_bytes())
        for k in range(700, len(data) - 10, 97):
            data[k] ^= 0x55
        (folder / "9.jpg").write_bytes(bytes(data))
        bad.append("9.jpg")
    out = tmp_path / "r"
    line = assert_one_error(run("detect", folder, "--out", out, "--weights", tiny_weights), str(folder), "damaged", *bad)
    assert "11.jpg" not in line and not out.exists()
    assert_one_error(run("explain", folder, "--frame", "12", "--out", tmp_path / "ex", "--weights", tiny_weights), *bad)


def _damaged_video(tmp_path: Path) -> tuple[Path, Path]:
    """60 frames, a keyframe every 12; 300 bytes of noise 45 % into the media data."""
    from test_robustness import encode

    whole = encode(tmp_path / "whole.mp4", make_clip(n=60, height=96, width=128), "-c:v", "libx264", "-g", "12",
                   "-crf", "12", "-pix_fmt", "yuv420p", "-movflags", "+faststart")
    data = bytearray(whole.read_bytes())
    start = data.find(b"mdat")
    at = start + (len(data) - start) * 45 // 100
    data[at : at + 300] = np.random.default_rng(45).integers(0, 256, 300, dtype=np.uint8).tobytes()
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    return whole, damaged


def test_a_video_damaged_in_the_middle_is_scored_warned_and_marked_incomplete_naming_the_frames(tmp_path, tiny_weights):
    from stan_cli.video import read_frames

    whole, damaged = _damaged_video(tmp_path)
    frames_whole, frames_damaged = (list(read_frames(p)[1]) for p in (whole, damaged))
    differ = [k for k, (a, b) in enumerate(zip(frames_whole, frames_damaged)) if not np.array_equal(a, b)]
    assert differ, "the noise must reach a picture for this test to mean anything"
    out = tmp_path / "r"
    result = run("detect", damaged, "--out", out, "--weights", tiny_weights, "--no-video")
    assert result.exit_code == 0, result.output
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("warning:") and "damaged data" in ln]
    assert len(warnings) == 1 and "damaged.mp4" in warnings[0] and "corrupt decoded frame" in warnings[0], result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is False and summary["input"]["frames"] == 60
    runs = summary["decode_errors"]["frames"]
    assert summary["decode_errors"]["exact"] is True
    flagged = {k for a, b in runs for k in range(a, b + 1)}
    assert set(differ) <= flagged and len(flagged) <= 24, (differ, runs)  # the damaged GOP, not the clip
    assert f"{runs[0][0]}-{runs[0][1]}" in warnings[0]
    assert "damaged data" in (out / "index.html").read_text()
    batch = run("detect", damaged, whole, "--out", tmp_path / "b", "--weights", tiny_weights, "--no-video")
    assert batch.exit_code == 0, batch.output
    statuses = {e["name"]: e["status"] for e in json.loads((tmp_path / "b" / "summary.json").read_text())["entries"]}
    assert statuses == {"damaged": "incomplete", "whole": "ok"}


def test_explain_on_a_damaged_video_says_so(tmp_path, tiny_weights):
    _, damaged = _damaged_video(tmp_path)
    out = tmp_path / "ex"
    result = run("explain", damaged, "--frame", "30", "--out", out, "--weights", tiny_weights)
    assert result.exit_code == 0, result.output
    assert any(ln.startswith("warning:") and "damaged data" in ln for ln in result.stderr.splitlines()), result.stderr
    assert json.loads((out / "explanation.json").read_text())["warnings"]


def test_explain_on_a_whole_video_warns_of_nothing(tmp_path, tiny_weights):
    """explain stops reading at its window's end; what ffmpeg then says about the closed pipe
    ("Error submitting a packet to the muxer: Broken pipe") is not damage. 24 frames after the
    window, 36 kB each, are more than a pipe's buffer holds."""
    whole, _ = _damaged_video(tmp_path)
    out = tmp_path / "ex"
    result = run("explain", whole, "--frame", "30", "--out", out, "--weights", tiny_weights)
    assert result.exit_code == 0, result.output
    assert "warning:" not in result.stderr, result.stderr
    assert json.loads((out / "explanation.json").read_text())["warnings"] == []


def test_without_concealment_to_compare_the_damage_is_bounded_by_keyframes(tmp_path, monkeypatch):
    """A decoder that conceals nothing leaves the two decodes alike: the run reported is where the
    damage can be, from the keyframe before the first complaint to the keyframe after the last one
    (and its lead)."""
    from stan_cli import video as video_module

    _, damaged = _damaged_video(tmp_path)
    monkeypatch.setattr(video_module, "concealed_frames", lambda path: [])
    _, stream = video_module.read_frames(damaged)
    list(stream)
    errors = stream.decode_errors
    assert errors is not None and errors["exact"] is False
    (first, last), = errors["frames"]
    keys = video_module.keyframes(damaged)
    assert keys[:3] == [0, 12, 24] and first in keys and last + 1 in [*keys, 60] and first <= 24 <= last


@pytest.mark.parametrize("read_at, expected", [
    (27, (24, 59)),  # read 3 frames late, the damage at 24: the start goes back to 24's keyframe
    (23, (12, 59)),  # read early (ffmpeg decodes ahead): the keyframe before, a group more than needed
    (36, (36, 71)),  # read on a keyframe (36 + 32 = 68: up to the keyframe 72)
    (5, (0, 47)),    # the end: the keyframe after the last complaint plus the lead (5 + 32 = 37 -> 48)
])
def test_the_estimated_damage_starts_at_the_keyframe_before_the_complaint(monkeypatch, read_at, expected):
    """The estimate alone, with made-up complaint positions and keyframes every 12 frames of 200."""
    from types import SimpleNamespace

    from stan_cli import video as video_module

    monkeypatch.setattr(video_module, "keyframes", lambda path: list(range(0, 200, 12)))
    fake = SimpleNamespace(_gen=SimpleNamespace(errors=[(read_at, "corrupt decoded frame")]), count=200,
                           info=SimpleNamespace(path=Path("x.mp4")))
    assert video_module.DECODE_LEAD == 32
    assert video_module.FrameStream._damage_estimate(fake) == [expected]


# ---------------------------------------------------------------- 5. names that are not UTF-8

LATIN1 = os.fsdecode(b"caf\xe9 \xff")  # how Python holds a name whose bytes are not UTF-8


def test_an_input_whose_name_is_not_utf8_is_refused_before_any_work(tmp_path, tiny_weights, monkeypatch):
    video = h264(tmp_path / f"{LATIN1}.mp4", make_clip(n=16))
    scored = []
    monkeypatch.setattr(detect_module, "StreamScorer", lambda *a, **k: scored.append(1))
    out = tmp_path / "r"
    line = assert_one_error(run("detect", video, "--out", out, "--weights", tiny_weights),
                            "caf\\xe9 \\xff.mp4", "not valid UTF-8", "Rename")
    assert "\udcff" not in line and not scored and not out.exists()
    assert_one_error(run("explain", video, "--frame", "7", "--out", tmp_path / "ex", "--weights", tiny_weights),
                     "caf\\xe9 \\xff.mp4", "not valid UTF-8")


def test_an_out_or_weights_name_that_is_not_utf8_is_refused(tmp_path, clip16, tiny_weights):
    import shutil

    out = tmp_path / LATIN1
    assert_one_error(run("detect", clip16, "--out", out, "--weights", tiny_weights), "\\xff", "--out", "UTF-8")
    assert not out.exists()
    weights = tmp_path / f"{LATIN1}.safetensors"
    shutil.copy(tiny_weights, weights)
    assert_one_error(run("detect", clip16, "--out", tmp_path / "r", "--weights", weights), "\\xff.safetensors", "UTF-8")


def test_among_many_inputs_one_not_utf8_is_an_error_row_and_the_index_stays_valid(tmp_path, clip16, tiny_weights):
    folder = tmp_path / "clips"
    folder.mkdir()
    h264(folder / "a.mp4", make_clip(n=16))
    h264(folder / f"{LATIN1}.mp4", make_clip(n=16))
    h264(folder / "z.mp4", make_clip(n=16))
    out = tmp_path / "r"
    result = subprocess.run([sys.executable, "-m", "stan_cli.cli", "detect", folder, "--out", out, "--weights", tiny_weights,
                             "--no-video"], capture_output=True, env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"})
    assert result.returncode == 1, result.stderr.decode(errors="replace")
    assert b"Traceback" not in result.stderr
    summary = json.loads((out / "summary.json").read_bytes().decode("utf-8"))
    assert [e["status"] for e in summary["entries"]] == ["ok", "error", "ok"]
    assert "not valid UTF-8" in summary["entries"][1]["error"]
    (out / "index.csv").read_bytes().decode("utf-8")
    assert "caf\\xe9 \\xff.mp4" in (out / "index.html").read_bytes().decode("utf-8")


def test_frame_images_whose_names_are_not_utf8_are_read(tmp_path, tiny_weights):
    """The names of a folder's images appear in no report: they are read as they are."""
    from test_robustness import image

    folder = tmp_path / "frames"
    folder.mkdir()
    for t, frame in enumerate(make_clip(n=12)):
        image(folder / f"{t} {LATIN1}.png", frame, "rgb24")
    result = detect(folder, out=tmp_path / "r", weights=tiny_weights, device="cpu", write_video=False)
    assert result.n_frames == 12


# ---------------------------------------------------------------------- 7. very large frames


def test_overlays_of_large_frames_are_capped_with_even_sides(tmp_path, tiny_weights):
    from test_robustness import image

    from stan_cli.video import probe

    folder = tmp_path / "frames"
    folder.mkdir()
    for t, frame in enumerate(make_clip(n=12, height=600, width=1001)):
        image(folder / f"{t}.png", frame, "rgb24")
    out = tmp_path / "r"
    result = run("detect", folder, "--out", out, "--weights", tiny_weights, "--overlay-max-size", "321")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["input"]["width"], summary["input"]["height"]) == (1001, 600)  # the input is described as it is
    for name in (OVERLAY_PIXEL, "overlay_guided_backprop.mp4"):
        info = probe(out / name)
        assert (info.width, info.height) == (320, 192 + 24), name  # 321 x 192.4 -> even, not past 321; strip 24


@pytest.mark.parametrize("size", ["10", "100000", "-5"])
def test_overlay_max_size_out_of_range_is_refused(tmp_path, clip16, tiny_weights, size):
    assert_one_error(run("detect", clip16, "--out", tmp_path / "r", "--weights", tiny_weights, "--overlay-max-size", size),
                     "--overlay-max-size", "64 to 4,096")
    assert not (tmp_path / "r").exists()


_EXPLAIN_MEMORY = """
import json, resource, sys
from stan_cli.explain import explain
from stan_cli.weights import load_weights
model = load_weights(sys.argv[2])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
explain(sys.argv[1], 5, out=sys.argv[3], weights=model, device="cpu")
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"growth": after - before}))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss units differ by platform")
def test_explain_of_8000_by_6000_frames_keeps_one_full_size_frame(tmp_path, tiny_weights):
    """11 JPEGs of 8000 x 6000: explain kept all 11 full-size frames and stacked them as float
    (11.7 GB); now the window is made 224 x 224 as it is decoded and only the frame explained is
    kept at full size, with its maps (float32, the .npy contract) and one PNG at a time."""
    from test_robustness import ffmpeg

    folder = tmp_path / "big"
    folder.mkdir()
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=8000x6000:rate=10", "-frames:v", "11", "-q:v", "5", folder / "%02d.jpg")
    proc = subprocess.run([sys.executable, "-c", _EXPLAIN_MEMORY, str(folder), str(tiny_weights), str(tmp_path / "ex")],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    growth = json.loads(proc.stdout.strip().splitlines()[-1])["growth"]
    assert growth < 2.0e9, growth  # about 1.1 GB: the frame, its two float maps, one PNG being written
    assert np.load(tmp_path / "ex" / "pixel_loss.npy").shape == (6000, 8000)


# ------------------------------------------------------- numeric options, checked before any work


@pytest.mark.parametrize("option,value", [
    ("--fps", "inf"), ("--fps", "nan"), ("--fps", "1e300"), ("--fps", "1e-9"), ("--fps", "-25"),
    ("--batch-size", "0"), ("--batch-size", "1000000000000"),
    ("--merge-gap", "-1"), ("--merge-gap", "100000000000000"),
    ("--min-length", "0"), ("--min-length", "100000000000000"),
    ("--threshold", "inf"), ("--threshold", "nan"), ("--threshold", "1e400"), ("--threshold", "-1"),
    ("--threshold", "1e308"),  # finite, but it overflowed the plot after the whole scoring pass
])
def test_detect_refuses_an_out_of_range_number_before_any_work(tmp_path, clip16, tiny_weights, monkeypatch, option, value):
    decoded = []
    monkeypatch.setattr(detect_module, "read_frames", lambda *a, **k: decoded.append(1))
    for inputs in ([clip16], [clip16, clip16]):  # one input, and many
        out = tmp_path / "r"
        assert_one_error(run("detect", *inputs, "--out", out, "--weights", tiny_weights, f"{option}={value}"), option)
        assert not out.exists() and not decoded


@pytest.mark.parametrize("option,value", [("--frame", "-1"), ("--fps", "inf"), ("--threshold", "nan"), ("--fps", "0")])
def test_explain_refuses_an_out_of_range_number_before_any_work(tmp_path, clip16, tiny_weights, option, value):
    args = ["--frame", "7"] if option != "--frame" else []
    out = tmp_path / "ex"
    assert_one_error(run("explain", clip16, *args, f"{option}={value}", "--out", out, "--weights", tiny_weights), option)
    assert not out.exists()


@pytest.mark.parametrize("value", ["0", "1000000"])
def test_eval_refuses_a_batch_size_out_of_range(tmp_path, tiny_weights, value):
    from conftest import write_frame_folder

    test_dir = tmp_path / "testing"
    for name in ("01", "02"):
        write_frame_folder(test_dir / "frames" / name, make_clip(n=12))
    (test_dir / "labels.json").write_text(json.dumps({"01": [[5, 6]], "02": []}))
    out = tmp_path / "res"
    assert_one_error(run("eval", test_dir, "--out", out, "--weights", tiny_weights, "--batch-size", value), "--batch-size")
    assert not out.exists()


def test_a_batch_size_memory_cannot_hold_is_refused_naming_one_that_fits(tmp_path, clip16, tiny_weights, monkeypatch):
    from stan_cli import inference

    per_window = inference.batch_bytes(__import__("stan_cli.model", fromlist=["TINY"]).TINY, 1)
    monkeypatch.setattr(inference, "free_memory", lambda device: int(100 * per_window) + 1)
    out = tmp_path / "r"
    line = assert_one_error(run("detect", clip16, "--out", out, "--weights", tiny_weights, "--batch-size", "500"),
                            "--batch-size 500", "MB free", "Use --batch-size 80 or less")
    assert not out.exists(), line
    assert run("detect", clip16, "--out", out, "--weights", tiny_weights, "--batch-size", "80").exit_code == 0


@pytest.mark.parametrize("env", [{"RANK": "abc"}, {"WORLD_SIZE": "0"}, {"RANK": "3", "WORLD_SIZE": "2"}, {"LOCAL_RANK": "-1"}])
def test_torchrun_variables_that_are_not_process_numbers_are_one_error_line(tmp_path, clip16, tiny_weights, monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert_one_error(run("detect", clip16, "--out", tmp_path / "r", "--weights", tiny_weights), "torchrun")
    assert not (tmp_path / "r").exists()


# ------------------------------------- many inputs: whatever makes one unreadable, it is its row


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_every_unreadable_input_is_an_error_row_and_the_rest_run(tmp_path, clip16, tiny_weights):
    """A link to a missing file, a named pipe (which ffmpeg would wait on forever) and a name too
    long for the file system, given by name or lying in a folder of videos."""
    folder = tmp_path / "clips"
    folder.mkdir()
    h264(folder / "a.mp4", make_clip(n=16))
    (folder / "dangling.mp4").symlink_to(tmp_path / "gone.mp4")
    os.mkfifo(folder / "pipe.mp4")
    too_long = tmp_path / ("x" * 300 + ".mp4")
    out = tmp_path / "r"
    proc = subprocess.run([sys.executable, "-m", "stan_cli.cli", "detect", folder, too_long, clip16, "--out", out,
                           "--weights", tiny_weights, "--no-video"], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    entries = json.loads((out / "summary.json").read_text())["entries"]
    got = {Path(e["input"]).name[:12]: (e["status"], e["error"]) for e in entries}
    assert got["a.mp4"][0] == got["clip16.mp4"][0] == "ok"
    assert got["dangling.mp4"][0] == "error" and "a link to" in got["dangling.mp4"][1]
    assert got["pipe.mp4"][0] == "error" and "named pipe" in got["pipe.mp4"][1]
    assert got["x" * 12][0] == "error" and "File name too long" in got["x" * 12][1]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 3, proc.stderr


def test_a_named_pipe_alone_is_refused_not_waited_on(tmp_path, tiny_weights):
    os.mkfifo(tmp_path / "live.mp4")
    assert_one_error(run("detect", tmp_path / "live.mp4", "--out", tmp_path / "r", "--weights", tiny_weights),
                     "live.mp4", "named pipe")


def test_ffmpegs_version_banner_is_never_given_as_the_reason():
    from stan_cli.video import _ffmpeg_message

    banner = "\n".join([
        "Could not load meta information", "=== stderr ===", "ffmpeg version n9.0.2 Copyright (c) 2000-2026",
        "  built with gcc 14", "  configuration: --enable-gpl", "  libavutil      60.  8.100 / 60.  8.100",
        "  libpostproc    59.  1.100 / 59.  1.100",
    ])
    assert _ffmpeg_message(OSError(banner)) == "ffmpeg gave no reason"
    assert _ffmpeg_message(OSError(banner + "\n[in#0 @ 0x1] Error opening input: Invalid data")) == \
        "[in#0 @ 0x1] Error opening input: Invalid data"
