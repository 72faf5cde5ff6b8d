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


def test_a_second_detect_into_a_folder_being_written_is_refused(tmp_path, clip16, tiny_weights, monkeypatch):
    """Run B starts while run A draws its overlays into the same folder (both --overwrite): B is
    refused with one line before it touches anything, and A finishes with its own heat maps."""
    other = h264(tmp_path / "other.mp4", make_clip(n=16, seed=3))
    out = tmp_path / "report"
    detect(clip16, out=out, weights=tiny_weights, device="cpu")
    real = detect_module.overlay.compose_frame
    second: list = []

    def meanwhile(*args, **kwargs):
        if not second:
            second.append(run("detect", other, "--out", out, "--weights", tiny_weights, "--overwrite"))
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
