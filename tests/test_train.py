"""`stan train`: a short run trains and calibrates; stops, crashes and kills resume exactly;
refusals are one red line; two processes train with Gloo on the CPU.

Everything uses the tiny preset on 30-frame synthetic clips and one torch thread (the CPU may
be shared with other work, and tiny convolutions only lose time to thread hand-offs).
"""

from __future__ import annotations

import csv
import json
import fcntl
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import make_clip, write_frame_folder, write_video
from stan_cli import cli
from stan_cli.detect import detect
from stan_cli.errors import InputError, OutputError, StanError, TrainingError
from stan_cli.model import TINY, Discriminator, Generator
from stan_cli.train import D_SELECTION_RULE, SELECTION_RULE, TrainOptions, _init_record, train
from stan_cli.weights import load_checkpoint, load_weights, read_checkpoint_progress

NORMAL = range(0)  # make_clip without the bright square: normal footage
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "200"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data3(tmp_path_factory) -> Path:
    """Three normal 30-frame clips, a frame folder and two videos: 1/, 2.mp4, 3.mp4."""
    root = tmp_path_factory.mktemp("train3")
    write_frame_folder(root / "1", make_clip(30, anomaly=NORMAL, seed=0))
    write_video(root / "2.mp4", make_clip(30, anomaly=NORMAL, seed=1))
    write_video(root / "3.mp4", make_clip(30, anomaly=NORMAL, seed=2))
    return root


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """Loose clips to copy into per-test folders: two normal, one short, one not a video."""
    root = tmp_path_factory.mktemp("clips")
    clips = {
        "a": write_video(root / "a.mp4", make_clip(30, anomaly=NORMAL, seed=3)),
        "b": write_video(root / "b.mp4", make_clip(30, anomaly=NORMAL, seed=4)),
        "short": write_video(root / "short.mp4", make_clip(8, anomaly=NORMAL, seed=5)),
        "short2": write_video(root / "short2.mp4", make_clip(10, anomaly=NORMAL, seed=6)),
        "c25": write_video(root / "c25.mp4", make_clip(25, anomaly=NORMAL, seed=7)),
    }
    bad = root / "bad.mp4"
    bad.write_text("this is a text file, not a video\n")
    clips["bad"] = bad
    return clips


@pytest.fixture(scope="module")
def folder44(tmp_path_factory) -> Path:
    """One clip as a single folder of 44 frames (the shortest that gets a validation tail)."""
    return write_frame_folder(tmp_path_factory.mktemp("single") / "clip44", make_clip(44, anomaly=NORMAL, seed=8))


def folder_of(tmp_path: Path, name: str, *clips: Path, names: list[str] | None = None) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for k, clip in enumerate(clips):
        shutil.copy(clip, folder / (names[k] if names else clip.name))
    return folder


def options(data: Path, out: Path, **kw) -> TrainOptions:
    """A tiny, quick run: one pretrain epoch, nothing held out, 4 windows a step."""
    base = dict(data=data, out=out, preset="tiny", device="cpu", pretrain_epochs=1, epochs=0, batch_size=4, val_clips=0)
    return TrainOptions(**{**base, **kw})


CALIBRATION_WARNINGS = ("no held-out normal footage", "the threshold comes from only")


class Events:
    """on_event recorder; optionally raises `exc` at the n-th event of kind `at`."""

    def __init__(self, at: str | None = None, n: int = 1, exc: BaseException | type = KeyboardInterrupt) -> None:
        self.at, self.n, self.exc = at, n, exc
        self.events: list[tuple[str, dict]] = []

    def __call__(self, kind: str, **info) -> None:
        self.events.append((kind, info))
        if kind == self.at and len(self.of(kind)) == self.n:
            raise self.exc

    def of(self, kind: str) -> list[dict]:
        return [info for k, info in self.events if k == kind]

    def data_warnings(self) -> list[str]:
        """Warnings about the footage; options() holds nothing out, so calibration's own is left out."""
        return [w["message"] for w in self.of("warning") if not any(c in w["message"] for c in CALIBRATION_WARNINGS)]


class _Stop(Exception):
    pass


def log_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def log_steps(path: Path) -> list[int]:
    return [int(r["step"]) for r in log_rows(path)]


def assert_steps_once(path: Path, n: int) -> None:
    steps = log_steps(path)
    assert len(steps) == len(set(steps)), f"duplicated steps in {path.name}: {steps}"
    assert steps == list(range(1, n + 1))


def ckpt_of(out: Path) -> Path:
    return out.with_name(out.name + ".ckpt") / "last.safetensors"


def lock_of(out: Path) -> Path:
    return out.with_name(out.name + ".lock")


def live_log(out: Path) -> Path:
    """The log of a run still in progress: in its checkpoint folder until it finishes."""
    return ckpt_of(out).with_name("log.csv")


def files_under(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def stan_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "stan_cli.cli", "train", *(str(a) for a in args)]


def wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"stan train exited ({proc.returncode}) before {what}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"timed out waiting for {what}:\n{out}\n{err}")
        time.sleep(0.01)


runner = CliRunner()


def run_cli(*args):
    return runner.invoke(cli.app, ["train", *(str(a) for a in args)])


# -------------------------------------------------------------------------------- 1. a short run


def test_short_run_trains_calibrates_and_detect_uses_it(data3, videos, tmp_path):
    out = tmp_path / "model.safetensors"
    events = Events()
    result = train(options(data3, out, pretrain_epochs=2, epochs=2, batch_size=3, val_clips=1), events)

    assert result.out == out and result.steps == 4 * math.ceil(40 / 3)
    stan = load_weights(out)
    assert stan.config == TINY
    cal = stan.calibration
    assert cal["source"] == "validation" and cal["clips"] == [str(data3 / "3.mp4")]
    assert math.isfinite(cal["lambda_s"]) and cal["lambda_s"] > 0
    assert set(cal["kinds"]) == {"g", "d", "gd"}
    assert all(math.isfinite(cal["kinds"][k]["threshold"]) for k in "g d gd".split())
    training = stan.training
    assert training["selection_rule"] == SELECTION_RULE
    assert re.fullmatch(r"model-\d{4}-\d{2}-\d{2}", training["name"])  # <out stem>-<date>, unless --name
    assert training["selected"]["phase"] == "adversarial" and training["selected"]["epoch"] in (1, 2)
    assert training["steps"] == result.steps and training["wall_s"] > 0
    assert training["train_clips"] == [str(data3 / "1"), str(data3 / "2.mp4")]

    # The pixel loss falls a lot within four epochs: per step and on the held-out clip.
    pixel = [float(r["loss_pixel"]) for r in log_rows(result.log)]
    assert np.mean(pixel[-5:]) < 0.7 * np.mean(pixel[:5]), pixel
    val = [float(r["val_pixel"]) for r in log_rows(out.with_name("model.val.csv"))]
    assert len(val) == 4 and min(val) < 0.7 * val[0], val
    assert [e["epoch"] for e in events.of("epoch_end")] == [1, 2, 1, 2]

    assert result.log == tmp_path / "model.log.csv" and result.log.exists()
    assert (tmp_path / "model.val.csv").exists()
    assert result.plot == tmp_path / "model.losses.png"
    assert result.plot.read_bytes()[:8] == PNG_SIGNATURE
    assert not lock_of(out).exists()

    report = detect(videos["a"], weights=out, out=tmp_path / "report", write_video=False, device="cpu")
    assert "calibration" in report.threshold_source and "in-sample" not in report.threshold_source
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["weights"]["name"] == training["name"]  # the version name reaches the report
    assert training["name"] in (tmp_path / "report" / "index.html").read_text()
    assert report.threshold == pytest.approx(cal["kinds"]["gd"]["threshold"])
    # the only warning: this tiny adversarial phase leaves the discriminator at chance, as ours on Ped2 did
    # (and the threshold's, from the few validation windows of such tiny footage)
    assert [w for w in training["warnings"] if "does not tell real" not in w and "the threshold comes from only" not in w] == []
    assert [w for w in events.of("warning") if not any(c in w["message"] for c in ("does not tell real", "the threshold comes from only"))] == []


def test_name_sets_the_weights_version_name_and_bad_names_are_refused(data3, tmp_path):
    out = tmp_path / "m.safetensors"
    result = run_cli(data3, "--out", out, "--preset", "tiny", "--device", "cpu", "--pretrain-epochs", "1",
                     "--epochs", "0", "--batch-size", "8", "--name", "mycam-v2")
    assert result.exit_code == 0, result.output
    assert load_weights(out).name == "mycam-v2"
    result = run_cli(data3, "--out", tmp_path / "n.safetensors", "--preset", "tiny", "--name", "a\nb")
    assert result.exit_code != 0 and "--name" in result.stderr


def test_calibrating_on_the_training_windows_is_warned_about(data3, videos, tmp_path):
    out = tmp_path / "model.safetensors"
    events = Events()
    train(options(data3, out, val_clips=0), events)
    stan = load_weights(out)
    assert stan.calibration["source"].startswith("training")
    early, message = [e["message"] for e in events.of("warning")]  # before training, and at calibration
    assert "no epoch is validated" in early and events.events.index(("warning", {"message": early})) < [k for k, _ in events.events].index("step")
    assert stan.training["warnings"] == [message] and "training windows themselves" in message
    assert stan.training["selected"]["val_pixel"] is None  # no validation: null, not NaN, in the JSON
    report = detect(videos["a"], weights=out, write_video=False, device="cpu")
    assert report.threshold_source.startswith("calibration on the training footage itself")


# ------------------------------------------------------------------------- 2. resume after a crash


def test_resume_after_a_crash_replays_exactly(data3, tmp_path):
    # 40 windows in steps of 8: 5 steps an epoch, 20 in all; a checkpoint every 3 steps and at
    # each epoch end. The crash at step 7 comes after the epoch-1 end (step 5) and a periodic
    # checkpoint (step 6), before the next one (step 9).
    kw = dict(pretrain_epochs=2, epochs=2, batch_size=8, val_clips=1, checkpoint_every=3)
    reference = train(options(data3, tmp_path / "ref.safetensors", **kw))
    assert reference.steps == 20

    out = tmp_path / "model.safetensors"
    crash = Events(at="step", n=7)
    with pytest.raises(KeyboardInterrupt):
        train(options(data3, out, **kw), crash)
    assert len(crash.of("step")) == 7
    assert read_checkpoint_progress(ckpt_of(out))["step"] == 6
    assert not out.exists() and not lock_of(out).exists()
    assert log_steps(live_log(out))[-1] == 7  # step 7 was logged, then lost
    assert not (tmp_path / "model.log.csv").exists()  # beside --out: finished runs only

    resumed = Events()
    result = train(options(data3, out, resume=True, **kw), resumed)
    assert result.steps == reference.steps == 20
    assert len(resumed.of("step")) == 14
    assert [(e["step"], e["phase"], e["epoch"], e["batch"]) for e in resumed.of("resume")] == [(6, "pretrain", 1, 1)]
    assert_steps_once(tmp_path / "model.log.csv", 20)
    assert [int(r["step"]) for r in log_rows(tmp_path / "model.val.csv")] == [5, 10, 15, 20]

    # Same seed, CPU, fp32: the resumed run is bit-identical to the uninterrupted one.
    got, want = load_file(str(out)), load_file(str(reference.out))
    assert got.keys() == want.keys()
    different = [k for k in want if not torch.equal(got[k], want[k])]
    assert not different, f"resumed weights differ from an uninterrupted run in {different[:5]}"
    assert load_weights(out).calibration == load_weights(reference.out).calibration
    assert read_checkpoint_progress(ckpt_of(out))["phase"] == "done"


# ----------------------------------------------------------------- 3. real kill -9 and Ctrl-C


def test_kill_9_then_resume_from_the_cli(data3, tmp_path):
    out = tmp_path / "model.safetensors"
    args = [data3, "--out", out, "--preset", "tiny", "--device", "cpu", "--pretrain-epochs", "2", "--epochs", "2",
            "--val-clips", "1", "--checkpoint-every", "2"]
    proc = subprocess.Popen(stan_cmd(*args), env=SUBPROCESS_ENV, cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(ckpt_of(out).exists, proc, "the first checkpoint")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    step = read_checkpoint_progress(ckpt_of(out))["step"]
    assert step >= 2 and step % 2 == 0  # every 2 steps (epoch ends, 14 and 28, are even too)
    assert lock_of(out).read_text().split()[-1] == str(proc.pid)  # the dead run's lock file stays behind

    result = run_cli(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert "Weights written to" in result.output
    said = [ln for ln in result.output.splitlines() if ln.startswith(f"resuming at step {step} from ")]
    assert len(said) == 1 and str(ckpt_of(out)) in said[0] and " epoch " in said[0] and " done" in said[0], result.output
    assert load_weights(out).training["steps"] == 4 * math.ceil(40 / 3)
    assert_steps_once(tmp_path / "model.log.csv", 4 * math.ceil(40 / 3))
    assert not lock_of(out).exists()


def test_ctrl_c_checkpoints_the_current_step_and_exits_130(data3, tmp_path):
    # 10,000 tiny epochs: the run never finishes before the signal arrives, however loaded the machine.
    # SIGINT back to its default in the child: a test run started as a background job (`pytest &`)
    # hands its children an ignored SIGINT, which stan rightly leaves ignored (as for nohup).
    out = tmp_path / "model.safetensors"
    log = live_log(out)
    proc = subprocess.Popen(
        stan_cmd(data3, "--out", out, "--preset", "tiny", "--device", "cpu", "--pretrain-epochs", "10000", "--epochs", "0",
                 "--val-clips", "0"),
        env=SUBPROCESS_ENV, cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 3, proc, "two logged steps")
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    stopped = int(re.search(r"stopped at step (\d+)", stderr).group(1))
    assert read_checkpoint_progress(ckpt_of(out))["step"] == stopped
    assert log_steps(log)[-1] == stopped
    assert not out.exists() and not lock_of(out).exists()


# ------------------------------------------------------------------- 4. continue a finished run


def test_finished_run_continues_with_more_epochs_only(data3, tmp_path):
    out = tmp_path / "model.safetensors"
    kw = dict(pretrain_epochs=1, epochs=1, batch_size=8, val_clips=1)
    assert train(options(data3, out, **kw)).steps == 10

    more = train(options(data3, out, resume=True, **{**kw, "epochs": 2}))
    assert more.steps == 15
    assert_steps_once(tmp_path / "model.log.csv", 15)
    training = load_weights(out).training
    assert training["epochs"] == 2 and training["steps"] == 15
    assert [r["phase"] for r in log_rows(tmp_path / "model.log.csv")[10:]] == ["adversarial"] * 5

    with pytest.raises(TrainingError, match=r"--epochs N \(N > 2\)"):
        train(options(data3, out, resume=True, **{**kw, "epochs": 2}))
    assert not lock_of(out).exists()


def test_a_run_finished_as_it_stood_mid_epoch_continues_exactly(data3, tmp_path):
    # 5 steps an epoch. Stopped after step 7 (checkpoint at 6: epoch 2, batch 1), finished as it
    # stood with the 1 epoch it had completed, then extended to 3: the same 15 steps and weights
    # as a run never stopped (the epoch is not begun again from its first batch).
    kw = dict(pretrain_epochs=3, epochs=0, batch_size=8, val_clips=1, checkpoint_every=1)
    reference = train(options(data3, tmp_path / "ref.safetensors", **kw))
    out = tmp_path / "model.safetensors"
    with pytest.raises(KeyboardInterrupt):
        train(options(data3, out, **kw), Events(at="step", n=7))
    assert train(options(data3, out, resume=True, **{**kw, "pretrain_epochs": 1})).steps == 6
    result = train(options(data3, out, resume=True, **kw))
    assert result.steps == reference.steps == 15
    assert_steps_once(tmp_path / "model.log.csv", 15)
    got, want = load_file(str(out)), load_file(str(reference.out))
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_finished_pretrain_only_run_continues_with_adversarial_epochs(data3, tmp_path):
    out = tmp_path / "model.safetensors"
    kw = dict(pretrain_epochs=1, epochs=0, batch_size=8, val_clips=1)
    assert train(options(data3, out, **kw)).steps == 5
    result = train(options(data3, out, resume=True, **{**kw, "epochs": 2}))
    adversarial = [int(r["epoch"]) for r in log_rows(tmp_path / "model.log.csv") if r["phase"] == "adversarial"]
    assert result.steps == 15 and adversarial == [1] * 5 + [2] * 5


# ------------------------------------------------------- the discriminator phase (not in the paper)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_the_discriminator_phase_trains_only_the_discriminator_and_selects_by_its_loss(data3, tmp_path):
    first = tmp_path / "first.safetensors"
    train(options(data3, first, pretrain_epochs=1, epochs=1, batch_size=8, val_clips=1))
    out = tmp_path / "d.safetensors"
    result = run_cli(data3, "--out", out, "--init", first, "--pretrain-epochs", "0", "--epochs", "0",
                     "--discriminator-epochs", "3", "--batch-size", "8", "--val-clips", "1", "--device", "cpu")
    assert result.exit_code == 0, result.output
    before, after = load_weights(first), load_weights(out)
    assert same_weights(before.generator, after.generator)  # frozen: bit for bit
    assert not same_weights(before.discriminator, after.discriminator)
    rows = log_rows(tmp_path / "d.log.csv")
    assert [r["phase"] for r in rows] == ["discriminator"] * 15
    assert all(r["loss_d"] and r["d_real"] and not r["loss_adv"] for r in rows)

    # selection: the lowest validation L_D in the training mix: -log D on real windows, -log(1 - D)
    # on pseudo-anomalies (3/4 of the fakes by default) and on generated windows (the rest)
    val = log_rows(tmp_path / "d.val.csv")
    losses = [float(r["val_loss_d"]) for r in val]
    for r in val:
        mix = float(r["val_d"]) + 0.75 * float(r["val_d_pseudo"]) + 0.25 * float(r["val_d_fake"])
        assert float(r["val_loss_d"]) == pytest.approx(mix, rel=1e-4)
        assert 0 <= float(r["val_pseudo_auc"]) <= 1
    assert [int(r["selected"]) for r in val] == [int(v < min(losses[:i], default=math.inf)) for i, v in enumerate(losses)]
    selected = after.training["selected"]
    assert (selected["phase"], selected["epoch"]) == ("discriminator", int(np.argmin(losses)) + 1)
    assert after.training["selection_rule"] == D_SELECTION_RULE and after.training["discriminator_epochs"] == 3
    assert len({float(r["val_pixel"]) for r in val}) == 1  # the generator did not move
    assert "discriminator epoch 1: validation discriminator loss" in result.stderr
    assert "chance 1.386" in result.stderr and "val discriminator loss" in result.stdout
    assert "on pseudo-anomalies" in result.stderr
    assert after.training["options"]["pseudo_anomalies"] == "skip,repeat,patch"  # reverse only when asked
    assert after.training["options"]["pseudo_share"] == 0.75


def test_without_pseudo_anomalies_the_phase_is_real_against_generated(data3, tmp_path):
    """--pseudo-anomalies none: the 0.1.0 phase, its loss real plus generated, no pseudo columns."""
    first = tmp_path / "first.safetensors"
    train(options(data3, first, pretrain_epochs=1, batch_size=8, val_clips=1))
    out = tmp_path / "d.safetensors"
    train(options(data3, out, init=first, pretrain_epochs=0, discriminator_epochs=2, batch_size=8, val_clips=1,
                  pseudo_anomalies="none"))
    val = log_rows(tmp_path / "d.val.csv")
    for r in val:
        assert float(r["val_loss_d"]) == pytest.approx(float(r["val_d"]) + float(r["val_d_fake"]), rel=1e-4)
        assert r["val_d_pseudo"] == "" and r["val_pseudo_auc"] == ""
    assert all(r["loss_pixel"] not in ("", "nan") for r in log_rows(tmp_path / "d.log.csv"))  # every fake generated


def test_with_only_pseudo_anomalies_the_generator_is_not_run(data3, tmp_path, monkeypatch):
    first = tmp_path / "first.safetensors"
    train(options(data3, first, pretrain_epochs=1, batch_size=8, val_clips=1))
    calls = []
    real_forward = Generator.forward
    monkeypatch.setattr(Generator, "forward", lambda self, x: calls.append(x.shape[0]) or real_forward(self, x))
    out = tmp_path / "d.safetensors"
    seen: list[int] = []  # generator calls so far, at each training step
    train(options(data3, out, init=first, pretrain_epochs=0, discriminator_epochs=1, batch_size=8, val_clips=1,
                  pseudo_anomalies="skip,patch", pseudo_share=1.0),
          lambda kind, **info: seen.append(len(calls)) if kind in ("epoch_start", "step") else None)
    rows = log_rows(tmp_path / "d.log.csv")
    assert all(r["loss_pixel"] == "nan" for r in rows) and len(rows) == 5
    assert len(seen) == 6 and len(set(seen)) == 1  # no generator call from the epoch's start to its last step
    assert calls  # (validation and calibration still score with it)


@pytest.mark.parametrize("flag, value, message", [
    ("--pseudo-anomalies", "skip,fast", "unknown pseudo-anomaly fast"),
    ("--pseudo-share", "1.5", "must be between 0 and 1"),
    ("--pseudo-share", "nan", "must be between 0 and 1"),
])
def test_pseudo_anomaly_options_are_checked_before_any_work(data3, tmp_path, flag, value, message):
    out = tmp_path / "m.safetensors"
    result = run_cli(data3, "--out", out, "--preset", "tiny", "--device", "cpu", flag, value)
    assert result.exit_code != 0 and message in result.stderr, result.output
    assert not out.exists() and not ckpt_of(out).exists()


def test_a_discriminator_at_chance_is_warned_about():
    from stan_cli.train import _discriminator_at_chance

    shipped_before = {"val_d": 0.691807, "val_d_fake": 0.694}  # the end of our adversarial phase
    assert "does not tell real validation windows from fakes" in _discriminator_at_chance(shipped_before)
    assert "--discriminator-epochs" in _discriminator_at_chance({"val_d": 0.705, "val_d_fake": 0.681})  # untrained
    assert _discriminator_at_chance({"val_d": 0.0058, "val_d_fake": 0.0539}) is None  # after the phase
    assert _discriminator_at_chance({"val_d": float("nan"), "val_d_fake": float("nan")}) is None  # no validation
    assert _discriminator_at_chance({"val_d": 0.69}) is None and _discriminator_at_chance(None) is None  # older runs


def test_a_pretrain_only_run_warns_that_its_discriminator_says_nothing(data3, tmp_path):
    events = Events()
    train(options(data3, tmp_path / "m.safetensors", batch_size=8, val_clips=1), events)
    assert any("does not tell real validation windows from fakes" in w["message"] for w in events.of("warning"))
    assert any("does not tell real" in w for w in load_weights(tmp_path / "m.safetensors").training["warnings"])


def test_a_discriminator_phase_resumes_exactly(data3, tmp_path):
    """With the default pseudo-anomalies: a resumed run makes the same fake batches again."""
    # pretrain (5 steps), then the discriminator (10): the crash at step 8 falls in the latter
    kw = dict(pretrain_epochs=1, epochs=0, discriminator_epochs=2, batch_size=8, val_clips=1, checkpoint_every=3)
    reference = train(options(data3, tmp_path / "ref.safetensors", **kw))
    assert reference.steps == 15
    out = tmp_path / "model.safetensors"
    with pytest.raises(KeyboardInterrupt):
        train(options(data3, out, **kw), Events(at="step", n=8))
    assert read_checkpoint_progress(ckpt_of(out))["phase"] == "discriminator"
    result = train(options(data3, out, resume=True, **{**kw, "discriminator_epochs": None}))  # the run's own
    assert result.steps == 15
    got, want = load_file(str(out)), load_file(str(reference.out))
    assert [k for k in want if not torch.equal(got[k], want[k])] == []


def test_the_discriminator_phase_trains_against_the_selected_generator(data3, tmp_path, monkeypatch):
    """After 2 pretrain epochs whose first validates better, the discriminator phase (and so the
    output) holds the first epoch's generator, not the last one's, also across a resume."""
    import stan_cli.train as train_module

    kw = dict(epochs=0, batch_size=8, val_clips=1)
    after = {n: load_weights(train(options(data3, tmp_path / f"p{n}.safetensors", pretrain_epochs=n, **kw)).out).generator
             for n in (1, 2)}  # the generator after 1 and after 2 pretrain epochs (same seed, same order)
    assert not same_weights(after[1], after[2])

    real_validate, calls = train_module.validate, []

    def validate(*args, **kwargs):  # pretrain epoch 1 scores 0.1, epoch 2 0.2; then the real numbers
        arrays = real_validate(*args, **kwargs)
        calls.append(1)
        if len(calls) <= 2:
            return (np.full_like(arrays[0], 0.1 * len(calls)), *arrays[1:])
        return arrays

    monkeypatch.setattr(train_module, "validate", validate)
    out = tmp_path / "model.safetensors"
    kw |= dict(pretrain_epochs=2, discriminator_epochs=1, checkpoint_every=100)
    with pytest.raises(KeyboardInterrupt):  # the second discriminator step, after the transition's checkpoint
        train(options(data3, out, **kw), Events(at="step", n=12))
    assert read_checkpoint_progress(ckpt_of(out))["phase"] == "discriminator"
    train(options(data3, out, resume=True, **kw))
    training = load_weights(out).training
    assert same_weights(load_weights(out).generator, after[1])
    assert training["generator_selected"]["epoch"] == 1 and training["selected"]["phase"] == "discriminator"


def test_resumed_epochs_keep_the_history_and_refuse_emptying_the_current_phase(data3, tmp_path):
    out = tmp_path / "model.safetensors"
    kw = dict(pretrain_epochs=1, epochs=0, discriminator_epochs=2, batch_size=8, val_clips=1, checkpoint_every=3)
    with pytest.raises(KeyboardInterrupt):  # step 8: in the first discriminator epoch
        train(options(data3, out, **kw), Events(at="step", n=8))
    with pytest.raises(TrainingError, match="discriminator phase: --discriminator-epochs must be at least 1 .it has not completed"):
        train(options(data3, out, resume=True, **{**kw, "discriminator_epochs": 0}))
    # more pretrain epochs asked of a run past its pretrain phase: history, not trained
    result = train(options(data3, out, resume=True, **{**kw, "pretrain_epochs": 3}))
    assert result.steps == 15 and load_weights(out).training["pretrain_epochs"] == 1


def test_reset_discriminator_on_a_recalibration_is_refused(data3, tmp_path):
    first = tmp_path / "first.safetensors"
    train(options(data3, first))
    with pytest.raises(TrainingError, match="random discriminator"):
        train(options(data3, tmp_path / "x.safetensors", init=first, pretrain_epochs=0, reset_discriminator=True))
    assert not (tmp_path / "x.safetensors").exists()


def test_a_finished_adversarial_run_continues_with_discriminator_epochs(data3, tmp_path):
    out = tmp_path / "model.safetensors"
    kw = dict(batch_size=8, val_clips=1)
    assert train(options(data3, out, pretrain_epochs=1, epochs=1, **kw)).steps == 10
    result = train(options(data3, out, resume=True, pretrain_epochs=None, epochs=None, discriminator_epochs=1, **kw))
    assert result.steps == 15 and result.selected["phase"] == "discriminator"
    training = load_weights(out).training
    assert (training["pretrain_epochs"], training["epochs"], training["discriminator_epochs"]) == (1, 1, 1)
    # fewer epochs asked of the phases it has gone past: history, kept as they were
    again = train(options(data3, out, resume=True, pretrain_epochs=0, epochs=0, discriminator_epochs=2, **kw))
    training = load_weights(out).training
    assert again.steps == 20 and (training["pretrain_epochs"], training["epochs"], training["discriminator_epochs"]) == (1, 1, 2)
    with pytest.raises(TrainingError, match=r"--discriminator-epochs N \(N > 2\)"):
        train(options(data3, out, resume=True, discriminator_epochs=2, **kw))


def test_crash_during_calibration_is_resumable(data3, tmp_path):
    out = tmp_path / "model.safetensors"
    kw = dict(pretrain_epochs=1, epochs=0, batch_size=8, val_clips=1)
    with pytest.raises(KeyboardInterrupt):
        train(options(data3, out, **kw), Events(at="calibrate"))
    assert not out.exists()
    result = train(options(data3, out, resume=True, **kw))
    assert result.steps == 5 and load_weights(out).calibration is not None


# --------------------------------------------------------------------------------- 5. the lock


def hold_lock(out: Path, text: str = "other-host pid 4242") -> int:
    """Play a live run: flock the lock file the way `stan train` does. Close the fd to release."""
    fd = os.open(lock_of(out), os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, text.encode())
    return fd


def test_a_live_lock_refuses_a_second_run(data3, tmp_path):
    out = tmp_path / "model.safetensors"
    fd = hold_lock(out)
    try:
        with pytest.raises(TrainingError, match="another `stan train`.*other-host pid 4242"):
            train(options(data3, out))
        assert lock_of(out).exists() and not out.exists()
    finally:
        os.close(fd)
    assert train(options(data3, out)).steps == 15  # released: the next run goes ahead


def test_a_refused_overwrite_leaves_the_live_runs_files_alone(data3, tmp_path):
    out = tmp_path / "model.safetensors"
    ckpt = ckpt_of(out)
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"the live run's checkpoint")
    (tmp_path / "model.log.csv").write_text("step,phase\n1,pretrain\n")
    fd = hold_lock(out)
    try:
        with pytest.raises(TrainingError, match="another"):
            train(options(data3, out, overwrite=True))
    finally:
        os.close(fd)
    assert ckpt.exists() and (tmp_path / "model.log.csv").exists()


def test_runs_sharing_a_checkpoint_dir_are_refused_like_runs_sharing_an_out(data3, tmp_path):
    """Two runs with different --out but one --checkpoint-dir would overwrite each other's
    checkpoints and frame cache: the second is refused, the first's files stay."""
    shared = tmp_path / "runs" / "ckpt"
    shared.parent.mkdir()
    fd = hold_lock(shared)  # a live run holds <checkpoint-dir>.lock
    try:
        with pytest.raises(TrainingError, match="another `stan train` is writing this --checkpoint-dir"):
            train(options(data3, tmp_path / "b.safetensors", checkpoint_dir=shared))
        assert not (tmp_path / "b.safetensors").exists() and not shared.exists()
    finally:
        os.close(fd)
    result = train(options(data3, tmp_path / "b.safetensors", checkpoint_dir=shared))
    assert result.steps == 15 and not lock_of(shared).exists()  # released at the end
    assert (shared / "last.safetensors").exists()

    # a run on the default folder (<out>.ckpt) locks it too, against one that names it
    a = tmp_path / "a.safetensors"
    fd = hold_lock(ckpt_of(a).parent)
    try:
        with pytest.raises(TrainingError, match="another `stan train` is writing this --checkpoint-dir"):
            train(options(data3, tmp_path / "c.safetensors", checkpoint_dir=ckpt_of(a).parent))
        with pytest.raises(TrainingError, match="another `stan train` is writing this --out"):
            train(options(data3, a))
    finally:
        os.close(fd)
    with pytest.raises(OutputError, match="Choose a folder of its own for --checkpoint-dir"):
        train(options(data3, tmp_path / "d.safetensors", checkpoint_dir=Path("/")))


def test_a_failed_run_leaves_no_checkpoint_dir_lock_or_folders(videos, tmp_path):
    short = folder_of(tmp_path, "short", videos["short"])
    with pytest.raises(InputError):
        train(options(short, tmp_path / "c.safetensors", checkpoint_dir=tmp_path / "x" / "y" / "c"))
    assert not (tmp_path / "x").exists()


def test_a_lock_file_nobody_holds_is_taken_over_and_released(data3, tmp_path):
    """What kill -9, a reboot or a requeued job leaves: a lock file, but no flock on it. Its
    text (another host, a pid now reused by someone else) does not matter."""
    for text in (f"{socket.gethostname()} pid {os.getpid()}", "another-node pid 1", ""):
        out = tmp_path / f"model-{len(text)}.safetensors"
        lock_of(out).write_text(text)
        held = []
        result = train(options(data3, out), lambda kind, **info: held.append(lock_of(out).read_text()))
        assert result.steps == 15 and load_weights(out).calibration["source"].startswith("training")
        assert set(held) == {f"{socket.gethostname()} pid {os.getpid()}"}  # ours while it ran
        assert not lock_of(out).exists()


def test_out_in_a_missing_folder_is_one_clear_error(data3, tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        train(options(data3, tmp_path / "nodir" / "m.safetensors"))


def move_run(out: Path, folder: Path) -> Path:
    """Move a finished run (weights, logs, plot, checkpoint folder) into `folder`, as a stan before
    0.2.0 wrote them into the footage (or a user puts them there); returns the weights' new path."""
    for path in (out, out.with_suffix(".log.csv"), out.with_suffix(".val.csv"), out.with_suffix(".losses.png"), ckpt_of(out).parent):
        shutil.move(path, folder / path.name)
    return folder / out.name


def test_an_earlier_run_inside_a_folder_of_videos_is_refused_not_resumed(videos, tmp_path):
    """Issue #21 item 6: no output of train lies in its footage, also for a run resumed from there
    (written by a stan before 0.2.0). Its loss plot there is still a stray image, not a clip."""
    from stan_cli.dataset import find_sources

    data = folder_of(tmp_path, "cam", videos["a"], videos["b"])
    (tmp_path / "runs").mkdir()
    out = move_run(train(options(data, tmp_path / "runs" / "cam.safetensors")).out, data)
    assert (data / "cam.losses.png").exists() and find_sources(data) == [data / "a.mp4", data / "b.mp4"]
    before = files_under(data)
    with pytest.raises(OutputError, match=f"{re.escape(str(out))}: --out lies in the footage folder .* Choose --out outside"):
        train(options(data, out, resume=True, epochs=1))
    assert files_under(data) == before and not lock_of(out).exists()


def test_stans_own_outputs_in_the_footage_folder_are_not_clips(videos, tmp_path):
    """Found by a review: a second run on footage holding the first one's outputs read its
    checkpoint folder as a clip and its loss plot as a stray image, and detect read both as clips.
    A detect report and an explain folder written there are not clips either. (Since 0.2.0 train
    writes nothing into its footage; an earlier stan did, and a user may move a run there.)"""
    from stan_cli.batch import expand_inputs
    from stan_cli.dataset import find_sources
    from stan_cli.video import list_frames

    data = folder_of(tmp_path, "cam", videos["a"], videos["b"])
    clips = [data / "a.mp4", data / "b.mp4"]
    (tmp_path / "runs").mkdir()
    move_run(train(options(data, tmp_path / "runs" / "m1.safetensors")).out, data)
    assert (data / "m1.safetensors.ckpt").is_dir() and (data / "m1.losses.png").is_file()
    events = Events()
    weights = train(options(data, tmp_path / "runs" / "m2.safetensors"), events).out
    assert events.data_warnings() == []
    for args in (["detect", clips[0], "--out", data / "report", "--no-video"],
                 ["explain", clips[0], "--frame", 10, "--out", data / "why"]):
        result = runner.invoke(cli.app, [*(str(a) for a in args), "--weights", str(weights)])
        assert result.exit_code == 0, result.output
    assert find_sources(data) == clips and expand_inputs([data]) == clips
    (data / "thumb.png").write_bytes((data / "m1.losses.png").read_bytes())  # a user's image still is one
    assert list_frames(data) == [data / "thumb.png"] and find_sources(data) == clips
    # a checkpoint folder of any name (--checkpoint-dir) is stan's too
    shutil.copytree(data / "m1.safetensors.ckpt", data / "ckpts")
    assert find_sources(data) == clips


def test_clip_folders_that_merely_look_like_stans_output_are_footage(tmp_path):
    """Found by a review: a folder of the user's frames is footage whatever else lies in it, a
    summary.json and scores.csv of the user's own, or a name ending in .ckpt."""
    from stan_cli.dataset import find_sources

    data = tmp_path / "cam"
    clips = [write_frame_folder(data / name, make_clip(12, anomaly=NORMAL, seed=k))
             for k, name in enumerate(["a.ckpt", "b", "c"])]
    (clips[0] / "log.csv").write_text("step\n")
    (clips[1] / "summary.json").write_text("{}")
    (clips[1] / "scores.csv").write_text("frame\n")
    (clips[2] / "explanation.json").write_text("{}")
    assert find_sources(data) == clips


def test_out_inside_a_frame_folder_is_refused(tmp_path):
    data = write_frame_folder(tmp_path / "frames", make_clip(30, anomaly=NORMAL, seed=0))
    with pytest.raises(OutputError, match="lies in the frame folder .* Choose --out outside"):
        train(options(data, data / "m.safetensors"))
    assert not (data / "m.safetensors").exists() and not ckpt_of(data / "m.safetensors").exists()


INSIDE_THE_FOOTAGE = {
    # case: (footage under tmp_path, --out under tmp_path, other options, what the line says)
    "checkpoint-dir is the footage folder": ("cam", "m.safetensors", {"checkpoint_dir": "cam"}, "--checkpoint-dir is the footage folder"),
    "checkpoint-dir in a clip": ("cam", "m.safetensors", {"checkpoint_dir": "cam/1/ckpt"}, "--checkpoint-dir lies in the clip"),
    "out in the footage folder": ("cam", "cam/m.safetensors", {}, "--out lies in the footage folder"),
    "out in a clip": ("cam", "cam/1/m.safetensors", {}, "--out lies in the clip"),
    "the frame cache is the footage": ("run/frames", "m.safetensors", {"checkpoint_dir": "run"}, "the frame cache in the checkpoint folder is the footage folder"),
    "out is the video": ("cam/2.mp4", "cam/2.mp4", {"overwrite": True}, "--out is the video"),
    "checkpoint-dir in a linked clip": ("cam", "m.safetensors", {"checkpoint_dir": "elsewhere/1"}, "--checkpoint-dir is the clip"),
}


@pytest.mark.parametrize("case", INSIDE_THE_FOOTAGE)
def test_no_output_of_train_lies_in_its_footage(data3, tmp_path, case):
    """Issue #21 item 6: `stan train F --checkpoint-dir F` wrote checkpoints, the frame cache and
    the loss plot into the footage. Every output of train (--out and what lies beside it, the
    checkpoint folder and its frame cache) inside the footage or a clip of it (also one linked from
    elsewhere, also a video --overwrite would replace) is refused with one line, touching nothing."""
    footage, out, kw, says = INSIDE_THE_FOOTAGE[case]
    data, out = tmp_path / footage, tmp_path / out
    shutil.copytree(data3, data.parent if data.suffix == ".mp4" else data)
    if case == "checkpoint-dir in a linked clip":
        (tmp_path / "elsewhere").mkdir()
        shutil.move(data / "1", tmp_path / "elsewhere" / "1")
        (data / "1").symlink_to(tmp_path / "elsewhere" / "1")
    kw = {k: tmp_path / v if k == "checkpoint_dir" else v for k, v in kw.items()}
    before, events = files_under(tmp_path), Events(at="decode", exc=_Stop)
    with pytest.raises(OutputError, match=f"{re.escape(says)} .*writes nothing into its footage.* Choose --"):
        train(options(data, out, **kw), events)
    assert files_under(tmp_path) == before and events.events == []


def test_checkpoint_dir_inside_the_footage_is_one_error_line(tmp_path):
    """The issue's own case, from the command line: the frame folder is left as it was."""
    data = write_frame_folder(tmp_path / "frames", make_clip(30, anomaly=NORMAL, seed=0))
    before = files_under(data)
    result = run_cli(data, "--checkpoint-dir", data, "--out", tmp_path / "m.safetensors", "--preset", "tiny", "--device", "cpu")
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert result.exit_code == 1 and len(errors) == 1, result.output
    assert f"{data}: --checkpoint-dir is the frame folder {data}" in errors[0] and "Choose --checkpoint-dir outside" in errors[0]
    assert files_under(data) == before and not (tmp_path / "m.safetensors").exists()


NUMERIC_REFUSALS = [
    ({"lr": math.inf}, "--lr inf: must be greater than 0 and at most 1"),
    ({"lr": 1e30}, "--lr 1e+30: must be"),
    ({"lam": math.inf}, "--lambda inf: must be between 0 and 1e6"),
    ({"lam": 1e300}, "--lambda 1e+300: must be"),
    ({"false_alarm_rate": 5e-324}, "--false-alarm-rate 5e-324: must be between 0 and 1"),
    ({"false_alarm_rate": math.nan}, "--false-alarm-rate nan: must be"),
    ({"pseudo_share": math.inf}, "--pseudo-share inf: must be between 0 and 1"),
    ({"epochs": 10**12}, "--epochs 1000000000000: must be a whole number from 0 to 100000"),
    ({"pretrain_epochs": math.inf}, "--pretrain-epochs inf: must be a whole number"),
    ({"discriminator_epochs": math.nan}, "--discriminator-epochs nan: must be a whole number"),
    ({"epochs": 2.5}, "--epochs 2.5: must be a whole number"),
    ({"batch_size": 10**12}, "--batch-size 1000000000000: must be a whole number from 1 to 1000000000"),
    ({"batch_size": math.inf}, "--batch-size inf: must be a whole number"),
    ({"checkpoint_every": 10**30}, f"--checkpoint-every {10**30}: must be a whole number from 1 to"),
    ({"checkpoint_every": math.nan}, "--checkpoint-every nan: must be a whole number"),
    ({"val_clips": 10**30}, f"--val-clips {10**30}: must be a whole number from 0 to"),
    ({"workers": 10**6}, "--workers 1000000: must be a whole number from 0 to"),
    ({"seed": -1}, "--seed -1: must be a whole number from 0 to 4294967295"),
    ({"seed": 2**70}, f"--seed {2**70}: must be"),
]


@pytest.mark.parametrize("bad, says", NUMERIC_REFUSALS, ids=[repr(b)[1:-1] for b, _ in NUMERIC_REFUSALS])
def test_numeric_options_are_checked_for_range_and_finiteness_before_any_work(data3, tmp_path, bad, says):
    """Issue #21: every number is checked before anything is locked, deleted or decoded; inf,
    NaN and extreme finite values used to be taken and fail late (a NaN loss with advice about
    --lr, an overflow after the whole run, a fork of a million workers)."""
    out = tmp_path / "m.safetensors"
    events = Events(at="decode", exc=_Stop)  # before the fix: stop at the first decode, not hours later
    with pytest.raises(TrainingError, match=re.escape(says)):
        train(options(data3, out, **bad), events)
    assert events.events == [] and not ckpt_of(out).parent.exists() and not lock_of(out).exists()


def test_an_inf_lr_on_the_command_line_is_one_error_line(data3, tmp_path):
    out = tmp_path / "m.safetensors"
    result = run_cli(data3, "--out", out, "--preset", "tiny", "--device", "cpu", "--lr", "inf")
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert result.exit_code == 1 and len(errors) == 1 and "--lr inf: must be" in errors[0], result.output
    assert "decoding" not in result.output and not ckpt_of(out).parent.exists()


def test_a_batch_that_memory_cannot_hold_is_refused_before_any_work(data3, tmp_path):
    """Issue #21: a --batch-size whose step cannot fit, by a lower bound of its memory (each
    convolution's output and its ELU's for one generator and three discriminator passes, from the
    frame size the networks see), is refused naming the largest batch that may fit."""
    from stan_cli.model import PAPER
    from stan_cli.training.checks import _total_memory, check_batch_memory, window_bytes

    per_window = window_bytes(PAPER)
    assert 140 * 2**20 < per_window < 200 * 2**20  # a step measured on the paper networks: about 195 MiB a window
    assert window_bytes(TINY) < per_window / 100  # 32 x 32 against 224 x 224, narrower layers
    total, _ = _total_memory(torch.device("cpu"))
    most = total // per_window
    out = tmp_path / "m.safetensors"
    check_batch_memory(options(data3, out, preset="paper", batch_size=most), torch.device("cpu"), 1)  # fits: no error
    with pytest.raises(TrainingError, match=f"--batch-size {most + 1}: a training step holds at least .* Choose --batch-size {most} or less"):
        train(options(data3, out, preset="paper", batch_size=most + 1), Events(at="decode", exc=_Stop))
    with pytest.raises(TrainingError, match=f"--batch-size {most}: .* 2 processes.* Choose --batch-size {most // 2} or less"):
        check_batch_memory(options(data3, out, preset="paper", batch_size=most), torch.device("cpu"), 2)  # two on one CPU
    assert not ckpt_of(out).parent.exists() and not lock_of(out).exists()


@pytest.mark.parametrize("env, says", [
    ({"WORLD_SIZE": "0"}, "$WORLD_SIZE='0': must be a whole number from 1 to"),
    ({"WORLD_SIZE": "two"}, "$WORLD_SIZE='two': must be a whole number"),
    ({"WORLD_SIZE": "2", "RANK": "5"}, "$RANK='5': must be a whole number from 0 to 1"),
    ({"LOCAL_RANK": "-1"}, "$LOCAL_RANK='-1': must be a whole number from 0 to 0"),
])
def test_torchrun_variables_are_checked_before_any_work(data3, tmp_path, monkeypatch, env, says):
    """The environment variables that stand for train's numbers (torchrun's) are checked like its options."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "m.safetensors"
    events = Events(at="decode", exc=_Stop)
    with pytest.raises(TrainingError, match=re.escape(says)):
        train(options(data3, out), events)
    assert events.events == [] and not ckpt_of(out).parent.exists()


@pytest.mark.parametrize("bad", [{"false_alarm_rate": 1.5}, {"precision": "fp16"}, {"lam": -1.0},
                                 {"pretrain_epochs": 0, "epochs": 0}, {"discriminator_epochs": -1},
                                 {"pretrain_epochs": 0, "epochs": 0, "discriminator_epochs": 1}])
def test_bad_options_are_refused_before_anything_is_touched(data3, tmp_path, bad):
    out = tmp_path / "model.safetensors"
    ckpt = ckpt_of(out)
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"an earlier run's checkpoint")
    with pytest.raises(TrainingError):
        train(options(data3, out, overwrite=True, **bad))
    assert ckpt.read_bytes() == b"an earlier run's checkpoint" and not lock_of(out).exists()


# ------------------------------------------------------------------------------- 6. refusals


def test_existing_out_is_refused(data3, tmp_path):
    out = tmp_path / "model.safetensors"
    out.write_bytes(b"someone's weights")
    with pytest.raises(OutputError, match="--overwrite"):
        train(options(data3, out))
    assert out.read_bytes() == b"someone's weights"


def test_resume_without_a_checkpoint_is_refused(data3, tmp_path):
    with pytest.raises(TrainingError, match="no checkpoint to resume"):
        train(options(data3, tmp_path / "model.safetensors", resume=True))


def test_empty_folder_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="found no frames"):
        train(options(tmp_path / "empty", tmp_path / "model.safetensors"))


def test_only_short_clips_is_refused(videos, tmp_path):
    data = folder_of(tmp_path, "short", videos["short"], videos["short2"])
    events = Events()
    with pytest.raises(InputError, match="at least 11"):
        train(options(data, tmp_path / "model.safetensors"), events)
    assert len(events.of("warning")) == 2


@pytest.mark.parametrize("odd", ["short", "bad"])
def test_an_unusable_clip_is_skipped_with_a_warning(videos, tmp_path, odd):
    data = folder_of(tmp_path, "data", videos["a"], videos["b"], videos[odd])
    events = Events()
    result = train(options(data, tmp_path / "model.safetensors"), events)
    warnings = events.data_warnings()
    assert len(warnings) == 1 and videos[odd].name in warnings[0], warnings
    assert events.of("data")[0]["clips"] == 2 and events.of("data")[0]["skipped"] == 1
    assert result.steps == 10  # 2 clips x 20 windows, 4 a step
    assert load_weights(result.out).training["warnings"][:-1] == warnings  # the last: calibrated in-sample


@pytest.fixture
def refusal(request, data3, videos, tmp_path):
    """(args, fragment) of a `stan train` the user gets wrong."""
    out = tmp_path / "model.safetensors"
    case = request.param
    if case == "existing out":
        out.write_bytes(b"x")
        return [data3, "--out", out], "already exists"
    if case == "resume without checkpoint":
        return [data3, "--out", out, "--resume"], "no checkpoint to resume"
    if case == "empty folder":
        (tmp_path / "empty").mkdir()
        return [tmp_path / "empty", "--out", out], "found no frames"
    if case == "missing folder":
        return [tmp_path / "nope", "--out", out], "no such folder"
    if case == "short clips":
        return [folder_of(tmp_path, "short", videos["short"]), "--out", out], "at least 11"
    if case == "live lock":
        fd = hold_lock(out)
        request.addfinalizer(lambda: os.close(fd))
        return [data3, "--out", out], "another `stan train`"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "refusal",
    ["existing out", "resume without checkpoint", "empty folder", "missing folder", "short clips", "live lock"],
    indirect=True,
)
def test_cli_user_errors_are_one_error_line(refusal):
    args, fragment = refusal
    result = run_cli(*args, "--preset", "tiny", "--device", "cpu")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr
    assert result.stdout.strip() == ""


def test_cli_error_line_is_red(tmp_path, monkeypatch):
    from rich.console import Console

    monkeypatch.setattr(cli, "err", Console(stderr=True, force_terminal=True, color_system="standard", width=200))
    result = run_cli(tmp_path / "nope", "--out", tmp_path / "m.safetensors", "--preset", "tiny")
    assert result.exit_code == 1
    assert "\x1b[1;31merror:" in result.stderr, repr(result.stderr)


# --------------------------------------------------------------------------------------- 7. NaN


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data3, tmp_path, monkeypatch):
    import stan_cli.train as train_module

    import stan_cli.training.plan as plan_module

    real, real_measure = train_module.pixel_term, plan_module.measure
    calls = {"n": 0, "timing": False}

    def pixel_term(pred, target, norm):
        calls["n"] += not calls["timing"]  # the steps timed before training (on copies) are not the run's
        loss = real(pred, target, norm)
        return loss * float("nan") if calls["n"] == 5 else loss

    def measure(*args, **kwargs):
        calls["timing"] = True
        try:
            return real_measure(*args, **kwargs)
        finally:
            calls["timing"] = False

    monkeypatch.setattr(train_module, "pixel_term", pixel_term)
    monkeypatch.setattr(plan_module, "measure", measure)
    out = tmp_path / "model.safetensors"
    with pytest.raises(TrainingError, match="step 5") as info:
        train(options(data3, out, checkpoint_every=2))
    message = str(info.value)
    assert "nan" in message and str(ckpt_of(out)) in message and "is kept" in message
    assert not out.exists() and not lock_of(out).exists()
    assert log_steps(live_log(out)) == [1, 2, 3, 4]

    torch.manual_seed(1)
    g, d = Generator(TINY), Discriminator(TINY)
    opt_g, opt_d = torch.optim.Adam(g.parameters()), torch.optim.Adam(d.parameters())
    progress = load_checkpoint(ckpt_of(out), g, d, opt_g, opt_d)
    assert progress["step"] == 4
    assert all(torch.isfinite(p).all() for p in [*g.parameters(), *d.parameters()])


# --------------------------------------------------------------------------------------- 8. DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_run_shards_the_windows(data3, tmp_path):
    out = tmp_path / "model.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "stan_cli.cli", "train", str(data3), "--out", str(out),
           "--preset", "tiny", "--device", "cpu", "--pretrain-epochs", "1", "--epochs", "1", "--discriminator-epochs", "1",
           "--val-clips", "1"]
    try:
        proc = subprocess.run(cmd, env=SUBPROCESS_ENV, cwd=tmp_path, text=True, capture_output=True, timeout=180)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"2-process training hung:\n{err.stdout}\n{err.stderr}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    stan = load_weights(out)
    steps_per_epoch = math.ceil((40 // 2) / 3)  # 40 training windows, half a rank, 3 a step
    assert stan.training["steps"] == 3 * steps_per_epoch  # every phase, the discriminator's too
    assert stan.training["machine"]["world_size"] == 2
    assert stan.training["generator_selected"]["phase"] == "adversarial"
    rows = log_rows(tmp_path / "model.log.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 3 * steps_per_epoch + 1))  # rank 0 logs, once
    assert all(float(r["samples_per_s"]) > 0 for r in rows)
    assert stan.calibration["n_windows"] == 20 and not lock_of(out).exists()


# ------------------------------------------------------------------------ 9. validation split


def _data_event(data: Path, out: Path, **kw) -> dict:
    events = Events(at="data", exc=_Stop)
    with pytest.raises(_Stop):
        train(options(data, out, **kw), events)
    return events.of("data")[0]


def test_the_last_clip_in_natural_order_is_held_out(videos, tmp_path):
    # 1.mp4 and 2.mp4 have 30 frames, 10.mp4 has 25: natural order puts 10 last.
    data = folder_of(tmp_path, "data", videos["a"], videos["b"], videos["c25"], names=["1.mp4", "2.mp4", "10.mp4"])
    info = _data_event(data, tmp_path / "model.safetensors", val_clips=1)
    assert info == dict(clips=3, train_clips=2, val_clips=1, train_windows=40, val_windows=15, skipped=0)


def test_a_single_long_clip_gives_its_tail(folder44, tmp_path):
    info = _data_event(folder44, tmp_path / "a.safetensors", val_clips=2)
    assert info["clips"] == 1 and info["val_clips"] == 1
    assert info["val_windows"] > 0 and info["train_windows"] + info["val_windows"] < 44 - 10
    assert info["train_windows"] == 44 - 12 - 10  # the tail: max(12, 15 %) frames (two windows)

    shorter = shutil.copytree(folder44, tmp_path / "clip43")
    (shorter / "43.png").unlink()
    info = _data_event(shorter, tmp_path / "b.safetensors", val_clips=2)
    assert info["val_windows"] == 0 and info["train_windows"] == 43 - 10


def test_a_single_44_frame_clip_trains_and_calibrates(folder44, tmp_path):
    result = train(options(folder44, tmp_path / "model.safetensors", val_clips=2))
    assert result.calibration["n_windows"] >= 2


# ------------------------------------------------------------- 8. the pixel term, --init, bf16


def test_pixel_term_is_the_l2_norm_or_the_mse_by_hand():
    from stan_cli.train import pixel_term

    target = torch.zeros(2, 1, 2, 2)
    pred = torch.tensor([[[[3.0, 0.0], [0.0, 4.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    assert pixel_term(pred, target, "l2").tolist() == pytest.approx([5.0, 2.0])
    assert pixel_term(pred, target, "mse").tolist() == pytest.approx([25 / 4, 1.0])
    # A perfect prediction has a finite (zero) gradient under the L2 norm.
    perfect = target.clone().requires_grad_(True)
    pixel_term(perfect, target, "l2").sum().backward()
    assert torch.equal(perfect.grad, torch.zeros_like(target))


def test_recalibration_scores_every_window_of_new_footage(data3, videos, folder44, tmp_path):
    """--init with zero epochs: the README's "Calibrate on your camera". Nothing is trained, every
    window counts, the threshold is the one detect's own scores of that footage give."""
    from stan_cli import scoring

    first = tmp_path / "first.safetensors"
    train(options(data3, first))
    cam = folder_of(tmp_path, "cam", videos["a"], videos["b"])
    events = Events()
    out = tmp_path / "cam.safetensors"
    train(options(cam, out, pretrain_epochs=0, epochs=0, init=first, val_clips=2), events)
    cal = load_weights(out).calibration
    assert cal["source"].startswith("recalibration") and cal["n_windows"] == 2 * 20
    # one long clip is scored whole: no validation tail cut off (which would lose the windows across the cut)
    whole = tmp_path / "whole.safetensors"
    train(options(folder44.parent, whole, pretrain_epochs=0, epochs=0, init=first, val_clips=2))
    assert load_weights(whole).calibration["n_windows"] == 44 - 10
    assert [w for w in events.of("warning") if "the threshold comes from only" not in w["message"]] == []  # not in-sample: never seen
    runs = [detect(cam / name, weights=out, write_video=False, device="cpu") for name in ("a.mp4", "b.mp4")]
    source = runs[0].threshold_source  # detect's own wording; what matters here: calibrated, not in-sample
    assert source.startswith("calibration") and "99th percentile" in source and "in-sample" not in source, source
    pixel = np.concatenate([r.pixel_loss for r in runs])
    d = np.concatenate([r.d_loss for r in runs])
    ok = np.isfinite(pixel)
    expected = scoring.calibrate(pixel[ok], d[ok])["kinds"]["gd"]["threshold"]
    assert cal["kinds"]["gd"]["threshold"] == pytest.approx(expected, rel=1e-3)


def test_recalibration_on_the_init_weights_own_training_footage_says_so(data3, tmp_path):
    """Clips the --init weights (or any run in their history) trained on are in-sample: the run
    warns, the calibration lists them, and detect's threshold label says the share is optimistic.
    Held-out clips and a recalibration in the history (which trains nothing) do not count."""
    first = tmp_path / "first.safetensors"
    train(options(data3, first, val_clips=1))  # trains on 1/ and 2.mp4; 3.mp4 held out
    recal = tmp_path / "recal.safetensors"
    events = Events()
    train(options(data3, recal, pretrain_epochs=0, epochs=0, init=first), events)
    cal = load_weights(recal).calibration
    assert [Path(c).name for c in cal["trained_on"]] == ["1", "2.mp4"]
    (warning,) = [e["message"] for e in events.of("warning") if "the threshold comes from only" not in e["message"]]
    assert "2 of the 3 clips were training footage of the --init weights (1, 2.mp4)" in warning
    label = detect(data3 / "3.mp4", weights=recal, write_video=False, device="cpu").threshold_source
    assert "of 3 clips (2 of them trained on, so optimistic)" in label, label
    # A recalibration of the recalibration: the history's trained clips are still the first run's.
    again = tmp_path / "again.safetensors"
    train(options(data3, again, pretrain_epochs=0, epochs=0, init=recal))
    assert [Path(c).name for c in load_weights(again).calibration["trained_on"]] == ["1", "2.mp4"]


def test_init_starts_a_new_run_from_existing_weights(data3, tmp_path):
    first = tmp_path / "first.safetensors"
    train(options(data3, first))
    before = load_weights(first)
    second = tmp_path / "second.safetensors"
    # Zero epochs of either phase: the output must be the init weights, recalibrated.
    train(options(data3, second, pretrain_epochs=0, epochs=0, init=first, preset="paper"))
    after = load_weights(second)
    assert after.config == TINY  # the config comes from the init file, not --preset
    for name, tensor in before.generator.state_dict().items():
        assert torch.equal(tensor, after.generator.state_dict()[name]), name
    for name, tensor in before.discriminator.state_dict().items():
        assert torch.equal(tensor, after.discriminator.state_dict()[name]), name
    init = after.training["init"]
    assert {k: init[k] for k in ("file", "sha256", "reset_discriminator")} == {
        "file": str(first),
        "sha256": before.sha256,
        "reset_discriminator": False,
    }
    # The init file's own history is kept, so the chain survives that file being replaced.
    assert init["training"] == before.training
    assert after.training["options"]["pixel_norm"] == "l2"
    # A record from an older checkpoint (no history) is completed from the file while its hash still matches.
    bare = {k: init[k] for k in ("file", "sha256", "reset_discriminator")}
    assert _init_record(bare)["training"] == before.training
    assert _init_record(bare | {"sha256": "0" * 64}) == bare | {"sha256": "0" * 64}
    assert _init_record(None) is None

    # One adversarial epoch from it trains on and moves both networks.
    third = tmp_path / "third.safetensors"
    train(options(data3, third, pretrain_epochs=0, epochs=1, init=first))
    moved = load_weights(third)
    assert any(not torch.equal(t, moved.discriminator.state_dict()[n]) for n, t in before.discriminator.state_dict().items())

    # --reset-discriminator keeps the generator only (here for a discriminator phase against it).
    fourth = tmp_path / "fourth.safetensors"
    train(options(data3, fourth, pretrain_epochs=0, epochs=0, discriminator_epochs=1, init=first, reset_discriminator=True, seed=5))
    reset = load_weights(fourth)
    assert all(torch.equal(t, reset.generator.state_dict()[n]) for n, t in before.generator.state_dict().items())
    assert not torch.equal(before.discriminator.convs[0].weight, reset.discriminator.convs[0].weight)
    with pytest.raises(TrainingError, match="--init"):
        train(options(data3, tmp_path / "fifth.safetensors", reset_discriminator=True))


def test_a_bad_init_with_overwrite_leaves_the_earlier_run_alone(data3, tmp_path):
    out = tmp_path / "model.safetensors"
    train(options(data3, out, val_clips=1))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not weights")
    before[bad] = bad.read_bytes()
    with pytest.raises(StanError):
        train(options(data3, out, overwrite=True, init=bad))
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    # Fine-tuning from the run's own selected state, in place, reads it before replacing anything.
    best = ckpt_of(out).with_name("best.safetensors")
    assert best.exists()
    train(options(data3, out, overwrite=True, init=best, pretrain_epochs=0, epochs=0, val_clips=1))
    assert load_weights(out).training["init"]["file"] == str(best)


def test_init_with_a_missing_file_is_one_clear_error(data3, tmp_path):
    out = tmp_path / "m.safetensors"
    result = run_cli(data3, "--out", out, "--init", tmp_path / "nope.safetensors", "--preset", "tiny", "--device", "cpu")
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "nope.safetensors" in errors[0] and "--init" in errors[0], result.stderr
    assert not out.exists() and not ckpt_of(out).exists()


def test_a_checkpoint_from_before_pixel_norm_resumes_with_the_mse(data3, tmp_path):
    """Runs started before --pixel-norm existed trained with the MSE; resuming keeps it."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    out = tmp_path / "model.safetensors"
    with pytest.raises(_Stop):
        train(options(data3, out, pretrain_epochs=2, checkpoint_every=2), Events(at="step", n=3, exc=_Stop))
    path = ckpt_of(out)
    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    progress = json.loads(metadata["progress"])
    del progress["options"]["pixel_norm"]
    save_file(tensors, str(path), {**metadata, "progress": json.dumps(progress)})
    events = Events()
    train(options(data3, out, pretrain_epochs=2, resume=True), events)
    assert load_weights(out).training["options"]["pixel_norm"] == "mse"
    assert any("pixel_norm" in w["message"] for w in events.of("warning"))


def test_a_checkpoint_from_before_pseudo_anomalies_resumes_without_them(data3, tmp_path):
    """A discriminator phase checkpointed by 0.1.0 trained on generated fakes only; it goes on so."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    first = tmp_path / "first.safetensors"
    train(options(data3, first, pretrain_epochs=1, batch_size=8, val_clips=1))
    out = tmp_path / "model.safetensors"
    kw = dict(init=first, pretrain_epochs=0, discriminator_epochs=2, batch_size=8, val_clips=1, checkpoint_every=2)
    with pytest.raises(_Stop):
        train(options(data3, out, **kw), Events(at="step", n=3, exc=_Stop))
    path = ckpt_of(out)
    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    progress = json.loads(metadata["progress"])
    del progress["options"]["pseudo_anomalies"], progress["options"]["pseudo_share"]
    save_file(tensors, str(path), {**metadata, "progress": json.dumps(progress)})
    events = Events()
    train(options(data3, out, resume=True, **kw), events)
    assert load_weights(out).training["options"]["pseudo_anomalies"] == "none"
    assert any("pseudo_anomalies" in w["message"] for w in events.of("warning"))
    assert all(r["val_d_pseudo"] == "" for r in log_rows(tmp_path / "model.val.csv"))


def test_bf16_on_a_cpu_without_native_bf16_is_warned(monkeypatch):
    from stan_cli import inference

    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: False)
    assert "fp32" in inference.precision_warning(torch.device("cpu"), "bf16")
    assert inference.precision_warning(torch.device("cpu"), "fp32") is None
    assert inference.precision_warning(torch.device("cuda"), "bf16") is None
    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: True)
    assert inference.precision_warning(torch.device("cpu"), "bf16") is None


def test_clips_of_different_frame_sizes_train_together(tmp_path):
    data = tmp_path / "mixed"
    data.mkdir()
    write_video(data / "wide.mp4", make_clip(30, height=48, width=96, anomaly=NORMAL, seed=11))
    write_frame_folder(data / "square", make_clip(30, height=40, width=40, anomaly=NORMAL, seed=12))
    events = Events()
    train(options(data, tmp_path / "m.safetensors"), events)
    (info,) = events.of("data")
    assert info["clips"] == 2 and info["train_windows"] == 2 * 20 and not events.data_warnings()


def test_one_unreadable_frame_skips_its_clip_with_a_warning_naming_the_frame(data3, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(data3, data)
    frames = sorted((data / "1").iterdir())
    frames[17].write_bytes(b"not an image")
    events = Events()
    result = train(options(data, tmp_path / "m.safetensors"), events)
    warnings = events.data_warnings()
    assert len(warnings) == 1 and str(data / "1") in warnings[0] and frames[17].name in warnings[0], warnings
    assert events.of("data")[0]["skipped"] == 1 and result.out.exists()
    assert load_weights(result.out).training["warnings"][:-1] == warnings  # the last: calibrated in-sample


# ------------------------------------------------------------ 10. what a run leaves on disk


@pytest.mark.parametrize("name", ["model.log.csv", "model.val.csv", "model.losses.png"])
def test_files_beside_out_are_refused_without_overwrite(data3, tmp_path, name):
    mine = tmp_path / name
    mine.write_bytes(b"the user's own file")
    out = tmp_path / "model.safetensors"
    with pytest.raises(OutputError, match=rf"{re.escape(str(mine))}: already exists.*another --out.*--overwrite"):
        train(options(data3, out))
    assert files_under(tmp_path) == {mine: b"the user's own file"}


@pytest.mark.parametrize("name", ["model.safetensors", "notes.txt", "model.log.csv", "model.val.csv", "model.losses.png"])
def test_overwrite_replaces_only_files_stan_wrote(data3, tmp_path, name):
    """--overwrite is for an earlier run's files: a file of the user's at --out, or where the
    logs and the plot go, is refused by name, touching nothing."""
    mine = tmp_path / name
    mine.write_bytes(b"the user's own notes")
    out = mine if name == "notes.txt" else tmp_path / "model.safetensors"
    with pytest.raises(OutputError, match=rf"{re.escape(str(mine))}: not (a stan weights file|a file stan wrote).*"
                                          "--overwrite only replaces"):
        train(options(data3, out, overwrite=True))
    assert files_under(tmp_path) == {mine: b"the user's own notes"}


@pytest.mark.parametrize("name", ["best.safetensors", "log.csv", "val.csv", "losses.png"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_new_run_clears_only_stans_files_in_its_checkpoint_folder(data3, tmp_path, name, overwrite):
    """--checkpoint-dir may name a folder of the user's: a file there under one of the names a new
    run clears is refused by name, touching nothing."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / name).write_bytes(b"the user's own file")
    with pytest.raises(OutputError, match=rf"{re.escape(str(folder / name))}: not a file stan wrote.*--checkpoint-dir"):
        train(options(data3, tmp_path / "model.safetensors", checkpoint_dir=str(folder), overwrite=overwrite))
    assert files_under(tmp_path) == {folder / name: b"the user's own file"}


@pytest.mark.parametrize("files", [{"notes.txt": b"mine"}, {"manifest.json": b"my notes", "0001.npy": b"mine"}, {"manifest.json": b"[1, 2]"}])
def test_a_frames_folder_stan_did_not_make_in_the_checkpoint_folder_is_refused(data3, tmp_path, files):
    """A new run decodes its footage into frames/ of its checkpoint folder: a folder there holding a
    name stan's cache does not, or a manifest that is not stan's (even beside cache-like names), is
    refused by name, touching nothing; stan's own cache is reused."""
    folder = tmp_path / "mine"
    (folder / "frames").mkdir(parents=True)
    for name, data in files.items():
        (folder / "frames" / name).write_bytes(data)
    before = files_under(tmp_path)
    with pytest.raises(OutputError, match=rf"{re.escape(str(folder / 'frames'))}: (holds|not).*--checkpoint-dir"):
        train(options(data3, tmp_path / "model.safetensors", checkpoint_dir=str(folder)))
    assert files_under(tmp_path) == before


def test_a_frame_cache_stan_made_is_accepted_by_a_new_run(data3, tmp_path):
    folder = tmp_path / "runs"
    train(options(data3, tmp_path / "first.safetensors", checkpoint_dir=str(folder)))
    assert (folder / "frames" / "manifest.json").is_file()
    train(options(data3, tmp_path / "second.safetensors", checkpoint_dir=str(folder), overwrite=True))
    assert (tmp_path / "second.safetensors").is_file()


def test_an_interrupted_overwrite_leaves_the_earlier_run_whole(data3, tmp_path):
    """--overwrite replaces the earlier run's weights, logs and plot together when the new run
    finishes; until then they stay as they were, and the new run's progress is in its checkpoint folder."""
    out = tmp_path / "model.safetensors"
    kw = dict(batch_size=8, val_clips=1, checkpoint_every=2)
    train(options(data3, out, **kw))
    beside = [out, *(tmp_path / f"model.{ext}" for ext in ("log.csv", "val.csv", "losses.png"))]
    earlier = {p: p.read_bytes() for p in beside}

    with pytest.raises(KeyboardInterrupt):
        train(options(data3, out, overwrite=True, seed=1, **kw), Events(at="step", n=3))
    assert {p: p.read_bytes() for p in beside} == earlier
    assert log_steps(live_log(out)) == [1, 2, 3] and read_checkpoint_progress(ckpt_of(out))["step"] == 2

    result = train(options(data3, out, resume=True, **kw))
    assert all(p.read_bytes() != earlier[p] for p in beside)
    assert_steps_once(result.log, 5) and load_weights(out).training["options"]["seed"] == 1


def test_a_refused_overwrite_on_bad_footage_leaves_the_earlier_run_alone(data3, videos, tmp_path):
    out = tmp_path / "model.safetensors"
    train(options(data3, out, batch_size=8, val_clips=1))
    short = folder_of(tmp_path, "short", videos["short"])

    def records() -> dict[Path, bytes]:  # the frame cache is a cache: reused, and decoded again on a change
        return {p: b for p, b in files_under(tmp_path).items() if "frames" not in p.relative_to(tmp_path).parts}

    before = records()
    with pytest.raises(InputError, match="at least 11"):
        train(options(short, out, overwrite=True))
    assert records() == before
    train(options(data3, out, resume=True, batch_size=8, val_clips=1, epochs=1))  # still the earlier run's


def test_a_run_failing_before_its_first_checkpoint_removes_what_it_created(data3, videos, tmp_path):
    short = folder_of(tmp_path, "short", videos["short"])
    before = files_under(tmp_path)
    with pytest.raises(InputError):
        train(options(short, tmp_path / "a.safetensors"))
    with pytest.raises(KeyboardInterrupt):  # a crash at step 2, no checkpoint yet (every 200 steps)
        train(options(data3, tmp_path / "b.safetensors"), Events(at="step", n=2))
    assert files_under(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["short"]

    # A checkpoint folder that was already there stays, with everything that was in it.
    folder = tmp_path / "ckpts"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(InputError):
        train(options(short, tmp_path / "c.safetensors", checkpoint_dir=folder))
    assert files_under(folder) == {folder / "notes.txt": b"mine"} and not (folder / "frames").exists()


def test_a_recalibration_leaves_only_its_weights(data3, tmp_path):
    first = tmp_path / "first" / "first.safetensors"
    first.parent.mkdir()
    train(options(data3, first, batch_size=8, val_clips=1))
    out = tmp_path / "cam" / "cam.safetensors"
    out.parent.mkdir()
    result = train(options(data3, out, pretrain_epochs=0, epochs=0, init=first))
    assert list(out.parent.iterdir()) == [out]
    assert result.log is None and result.plot is None  # no step trained, no log written

    # Recalibrating over a trained run replaces its log and plot too: they described other weights.
    # Its checkpoint stays: the run can still be extended (which then calibrates it anew).
    before = {p.name: p.read_bytes() for p in ckpt_of(first).parent.glob("*.safetensors")}
    result = train(options(data3, first, pretrain_epochs=0, epochs=0, init=first, overwrite=True))
    assert sorted(p.name for p in first.parent.iterdir()) == ["first.safetensors", "first.safetensors.ckpt"]
    assert result.log is None and load_weights(first).calibration["source"].startswith("recalibration")
    assert {p.name: p.read_bytes() for p in ckpt_of(first).parent.glob("*.safetensors")} == before
    extended = train(options(data3, first, resume=True, pretrain_epochs=2, batch_size=8, val_clips=1))
    assert load_weights(first).calibration["source"] == "validation" and extended.steps > 0


def test_files_written_follow_the_umask(data3, tmp_path):
    old = os.umask(0o027)
    try:
        out = tmp_path / "model.safetensors"
        result = train(options(data3, out, batch_size=8, val_clips=1))
    finally:
        os.umask(old)
    written = [out, ckpt_of(out), ckpt_of(out).with_name("best.safetensors"), result.log, result.plot,
               tmp_path / "model.val.csv"]
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in written} == {p.name: "0o640" for p in written}


def test_a_bad_init_file_is_named_as_init(data3, tmp_path):
    bad = tmp_path / "notes.safetensors"
    bad.write_text("not weights\n")
    result = run_cli(data3, "--out", tmp_path / "m.safetensors", "--init", bad, "--preset", "tiny", "--device", "cpu")
    assert result.exit_code == 1, result.output
    [error] = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert "point --init at" in error and "--weights" not in error, error


def test_a_finished_one_epoch_run_says_epoch(data3, tmp_path):
    out = tmp_path / "model.safetensors"
    kw = dict(pretrain_epochs=1, epochs=0, batch_size=8, val_clips=0)
    train(options(data3, out, **kw))
    with pytest.raises(TrainingError, match=r"already finished 1 pretrain epoch\. "):
        train(options(data3, out, resume=True, **kw))


def test_cli_summary_counts_rounds_and_lists_only_written_files(folder44, tmp_path):
    out = tmp_path / "m.safetensors"
    result = run_cli(folder44, "--out", out, "--preset", "tiny", "--device", "cpu", "--pretrain-epochs", "1",
                     "--epochs", "0", "--batch-size", "8")
    assert result.exit_code == 0, result.output
    assert "1 clip: 22 training windows, 2 validation windows from its end" in result.output, result.output
    val = re.search(r"val pixel (\S+)", result.stdout).group(1)
    assert float(val) == pytest.approx(load_weights(out).training["selected"]["val_pixel"], rel=1e-3)
    assert len(val.replace(".", "").replace("-", "").lstrip("0").split("e")[0]) <= 4, val
    assert "loss log / plot" in result.stdout
    assert "pretrain epoch 1: validation pixel loss" in result.stderr

    alone = run_cli(folder44, "--out", tmp_path / "alone.safetensors", "--preset", "tiny", "--device", "cpu",
                    "--pretrain-epochs", "1", "--epochs", "0", "--batch-size", "8", "--val-clips", "0")
    assert alone.exit_code == 0, alone.output
    assert "pretrain epoch 1: no validation windows, the latest epoch is kept" in alone.stderr, alone.output
    assert "nan" not in alone.output.lower(), alone.output

    recal = run_cli(folder44, "--out", tmp_path / "cam.safetensors", "--init", out, "--pretrain-epochs", "0",
                    "--epochs", "0", "--device", "cpu")
    assert recal.exit_code == 0, recal.output
    assert "loss log" not in recal.stdout and "log.csv" not in recal.stdout, recal.stdout
    assert "1 clip: 34 windows to calibrate on" in recal.output, recal.output
    assert "warning: the clip was training footage of the --init weights (clip44)" in recal.output, recal.output


def test_a_failed_run_removes_only_its_own_checkpoint_folder_under_a_shared_parent(data3, tmp_path):
    """A sweep: runs a and b checkpoint under one --checkpoint-dir parent that a created. When a
    ends with nothing to resume, its folder goes, b's stays, and so does the shared parent."""
    from stan_cli.train import _Scratch

    sweep = tmp_path / "sweep"
    scratch = _Scratch(options(data3, tmp_path / "a.safetensors", checkpoint_dir=sweep / "a"))
    (sweep / "a" / "frames").mkdir(parents=True)
    (sweep / "b").mkdir()
    (sweep / "b" / "last.safetensors").write_bytes(b"run b's checkpoint")
    scratch.remove()
    assert not (sweep / "a").exists()
    assert (sweep / "b" / "last.safetensors").read_bytes() == b"run b's checkpoint"
    alone = _Scratch(options(data3, tmp_path / "c.safetensors", checkpoint_dir=tmp_path / "x" / "y" / "c"))
    (tmp_path / "x" / "y" / "c" / "frames").mkdir(parents=True)
    alone.remove()
    assert not (tmp_path / "x").exists()  # every folder the run made, when nobody else uses them


def test_nohup_keeps_sighup_ignored():
    """`nohup stan train ... &` then logging out must not stop the run: an ignored SIGHUP stays ignored."""
    import signal

    from stan_cli import cli
    from stan_cli.train import _StopFlag

    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        cli.stop_on_termination()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        with _StopFlag():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        with _StopFlag() as flag:  # not ignored: SIGHUP checkpoints and stops like Ctrl-C
            signal.raise_signal(signal.SIGHUP)
            assert flag.stop
    finally:
        signal.signal(signal.SIGHUP, old)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_a_threshold_from_too_few_validation_windows_is_warned_about(data3, tmp_path):
    """The 99th percentile of 30 windows is about their largest score: say so, and where it is kept."""
    events = Events()
    train(options(data3, tmp_path / "m.safetensors", val_clips=1), events)
    calibrate = events.of("calibrate")[0]
    assert calibrate["source"] == "validation" and calibrate["windows"] < 100
    warning = [w["message"] for w in events.of("warning") if "the threshold comes from only" in w["message"]]
    assert len(warning) == 1 and f"comes from only {calibrate['windows']} normal windows" in warning[0]
    assert "more normal footage to hold out" in warning[0] and "0.01 needs at least 100" in warning[0]
    assert warning[0] in load_weights(tmp_path / "m.safetensors").training["warnings"]


def test_a_run_finished_as_it_stands_says_so_when_it_resumes(data3, tmp_path):
    """Stopped in epoch 2, resumed with --pretrain-epochs 1: no epoch is trained, and the line says
    where the run was and that it is finished as it stands (not an epoch it never enters)."""
    out = tmp_path / "model.safetensors"
    with pytest.raises(KeyboardInterrupt):
        train(options(data3, out, pretrain_epochs=2, batch_size=8, checkpoint_every=1), Events(at="step", n=11))  # 8 steps an epoch
    step = read_checkpoint_progress(ckpt_of(out))["step"]
    result = run_cli(data3, "--out", out, "--preset", "tiny", "--device", "cpu", "--resume", "--pretrain-epochs", "1")
    assert result.exit_code == 0, result.output
    said = [ln for ln in result.output.splitlines() if ln.startswith("resum")]
    assert said == [f"resumed at step {step} from {ckpt_of(out)}: no epoch left to train, the run is finished as it stands"], result.output


def test_two_programs_filling_one_frame_cache_at_once_both_get_the_clips(data3, tmp_path, monkeypatch):
    """Two programs decoding the same clip into one cache (two benchmarks sharing their default
    cache) each write their own temporaries: here the second decodes it whole while the first is
    mid-write, and the first still finishes with a complete, valid file."""
    import os

    from stan_cli import dataset

    cache = tmp_path / "cache"
    real_write, pid = dataset._write_grey, [111]
    monkeypatch.setattr(os, "getpid", lambda: pid[0])

    def write_then_let_the_other_program_decode(frames, size, path):
        real_write(frames, size, path)
        if pid[0] == 111:
            pid[0] = 222
            dataset._decode(data3 / "1", size, cache / "0000.npy")  # the other program, start to end
            pid[0] = 111

    monkeypatch.setattr(dataset, "_write_grey", write_then_let_the_other_program_decode)
    clips = dataset.load_clips(data3, TINY.image_size, cache)
    assert [len(c.frames) for c in clips] == [30, 30, 30]
    assert not [p.name for p in cache.iterdir() if p.suffix in (".partial", ".tmp")]


def test_a_decode_that_fails_late_leaves_no_temporary_in_the_cache(data3, tmp_path, monkeypatch):
    from stan_cli import dataset

    def no_header(shape):
        raise OSError("No space left on device")

    monkeypatch.setattr(dataset, "_npy_header", no_header)  # fails after the frames were written
    cache = tmp_path / "cache"
    cache.mkdir()
    with pytest.raises(OSError):
        dataset._decode(data3 / "1", TINY.image_size, cache / "0000.npy")
    assert list(cache.iterdir()) == []


def test_each_footage_folder_gets_a_benchmark_cache_of_its_own(tmp_path):
    from stan_cli.dataset import default_cache

    assert default_cache(tmp_path / "a") != default_cache(tmp_path / "b")
    assert default_cache(tmp_path / "a") == default_cache(tmp_path / "x" / ".." / "a")


def test_a_signal_during_the_last_epoch_s_end_stops_before_calibration(data3, tmp_path, monkeypatch):
    """Ctrl-C (here SIGTERM, handled alike) while the last epoch validates came after the last
    step's check: it stops the run with the checkpoint written, not silently calibrate and exit 0;
    --resume then calibrates and writes the weights."""
    import stan_cli.train as train_module

    real_validate, sent = train_module.validate, []

    def validate(*args, **kwargs):
        if not sent:  # once: the epoch's validation (calibration validates too, outside StopFlag)
            sent.append(os.kill(os.getpid(), signal.SIGTERM))  # StopFlag's handler sets its flag
        return real_validate(*args, **kwargs)

    out = tmp_path / "model.safetensors"
    kw = dict(pretrain_epochs=1, epochs=0, batch_size=8, val_clips=1)
    with monkeypatch.context() as m:
        m.setattr(train_module, "validate", validate)
        with pytest.raises(train_module.TrainingInterrupted, match="after the last epoch|at the end of pretrain epoch 1"):
            train(options(data3, out, **kw))
    assert not out.exists() and read_checkpoint_progress(ckpt_of(out))["epoch"] == 1
    result = train(options(data3, out, resume=True, **kw))
    assert result.out == out and load_weights(out).training["selected"]["epoch"] == 1


def test_resume_warns_only_of_options_the_command_gave(data3, tmp_path):
    """A run started with --batch-size 8 --val-clips 1 and resumed with --resume alone was given no
    batch size: no "ignored" warning for it; an --lr given that differs from the run's is named."""
    out = tmp_path / "model.safetensors"
    with pytest.raises(KeyboardInterrupt):
        train(options(data3, out, batch_size=8, val_clips=1, checkpoint_every=1), Events(at="step", n=2))  # after step 1's checkpoint
    plain = Events(at="step", n=1)
    with pytest.raises(KeyboardInterrupt):
        train(options(data3, out, resume=True, batch_size=3, val_clips=2), plain)  # the defaults: nothing given
    assert not [w for w in plain.of("warning") if "ignored" in w["message"]]
    given = Events()
    train(options(data3, out, resume=True, batch_size=3, val_clips=2, lr=1e-3), given)
    (ignored,) = [w["message"] for w in given.of("warning") if "ignored" in w["message"]]
    assert "own lr (" in ignored


def test_no_held_out_footage_is_said_before_training(data3, tmp_path):
    events = Events()
    train(options(data3, tmp_path / "model.safetensors", val_clips=0), events)
    kinds = [kind for kind, _ in events.events]
    early = [i for i, (kind, info) in enumerate(events.events)
             if kind == "warning" and "no epoch is validated" in info["message"]]
    assert early and early[0] < kinds.index("step")


def test_a_resume_on_clips_whose_frames_changed_is_refused(tmp_path):
    data = tmp_path / "frames"
    for k in range(3):
        write_frame_folder(data / f"{k:02d}", make_clip(n=30, seed=k))
    out = tmp_path / "model.safetensors"
    kw = dict(batch_size=4, val_clips=1, checkpoint_every=1)
    with pytest.raises(KeyboardInterrupt):
        train(options(data, out, **kw), Events(at="step", n=2))
    for name in sorted(p.name for p in (data / "00").iterdir())[-2:]:
        (data / "00" / name).unlink()
    with pytest.raises(TrainingError, match=r"00: 28 frames now, 30 when the run being resumed began"):
        train(options(data, out, resume=True, **kw))


def test_paths_that_are_the_wrong_kind_are_named_as_such(data3, tmp_path):
    note = tmp_path / "notes.txt"
    note.write_text("mine")
    with pytest.raises(OutputError, match="notes.txt: is a file, not a folder"):
        train(options(data3, note / "model.safetensors"))
    with pytest.raises(InputError, match="is a folder, not a weights file"):
        train(options(data3, tmp_path / "m.safetensors", init=tmp_path))
    assert note.read_text() == "mine"


def test_a_lone_clip_that_gained_frames_is_refused_on_resume(tmp_path):
    """A lone clip is split into a training part and a held-out tail of one source: the whole clip's
    count is what is recorded, so three more frames (the tail's 15 % unchanged) are still seen."""
    data = tmp_path / "frames"
    write_frame_folder(data / "00", make_clip(n=100, seed=0))
    out = tmp_path / "model.safetensors"
    kw = dict(batch_size=4, val_clips=1, checkpoint_every=1)
    with pytest.raises(KeyboardInterrupt):
        train(options(data, out, **kw), Events(at="step", n=2))
    write_frame_folder(data / "00", make_clip(n=103, seed=0))
    with pytest.raises(TrainingError, match=r"00: 103 frames now, 100 when the run being resumed began"):
        train(options(data, out, resume=True, **kw))
