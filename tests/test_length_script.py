"""scripts/ped2_cpu/length.sh (run 9 on the CPU): a fresh run gets the recipe and its --time budget; a
stopped one resumes with what is left (no new --time); a finished one is left alone; a wrong camera is refused.
A fake `stan` on PATH records the command instead of training."""
import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ped2_cpu" / "length.sh"


def _run(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "stan-args"
    fake = bin_dir / "stan"
    fake.write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > "{log}"\n')
    fake.chmod(0o755)
    full_env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RUNS": str(tmp_path / "runs"), **env}
    done = subprocess.run(["bash", str(SCRIPT), *args], env=full_env, capture_output=True, text=True, timeout=30)
    return done, (log.read_text().splitlines() if log.exists() else [])


def _option(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


def test_fresh_run_gets_the_recipe_and_budget(tmp_path):
    done, words = _run(tmp_path, "ped1")
    assert done.returncode == 0, done.stderr
    assert words[0] == "train" and words[1].endswith("data/ped1/training/frames")
    assert _option(words, "--time") == "2h"
    assert _option(words, "--init") == "weights/stan-ped1.safetensors"
    assert _option(words, "--time-shares") == "0,0,1"
    assert _option(words, "--pseudo-anomalies") == "skip,repeat,patch"
    assert _option(words, "--lr") == "5e-5" and _option(words, "--device") == "cpu"
    assert _option(words, "--out") == str(tmp_path / "runs" / "ped1-d.safetensors")
    assert "--resume" not in words


def test_ped2_budget_and_override(tmp_path):
    assert _option(_run(tmp_path, "ped2")[1], "--time") == "4h"
    assert _option(_run(tmp_path, "ped2", TIME="30m")[1], "--time") == "30m"


def test_stopped_run_resumes_with_what_is_left(tmp_path):
    ckpt = tmp_path / "runs" / "ped2-d.safetensors.ckpt"
    ckpt.mkdir(parents=True)
    (ckpt / "last.safetensors").write_bytes(b"x")
    done, words = _run(tmp_path, "ped2")
    assert done.returncode == 0, done.stderr
    assert "--resume" in words
    assert "--time" not in words and "--init" not in words  # a new --time would restart the clock


def test_finished_run_is_left_alone(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "ped1-d.safetensors").write_bytes(b"x")
    done, words = _run(tmp_path, "ped1")
    assert done.returncode == 0 and words == []
    assert "has finished" in done.stderr


def test_unknown_camera_is_refused(tmp_path):
    done, words = _run(tmp_path, "avenue")
    assert done.returncode == 2 and words == []
    assert "avenue" in done.stderr and done.stderr.count("\n") == 1
