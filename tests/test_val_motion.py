"""benchmarks/val_motion.py: the held-out pseudo-anomaly AUCs run through on tiny weights, with
the kinds asked for and the variants' lines."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

from conftest import make_clip, write_video

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "val_motion.py"


def test_the_benchmark_runs_on_tiny_weights_with_each_variant(tiny_weights, tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("val_motion", BENCHMARK)
    val_motion = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(val_motion)
    data = tmp_path / "train"
    data.mkdir()
    for k in range(2):
        write_video(data / f"clip{k}.mp4", make_clip(n=30, seed=k, anomaly=range(0)))
    monkeypatch.setattr(sys, "argv", ["val_motion.py", str(tiny_weights), "--data", str(data), "--val-clips", "1",
                                      "--cache", str(tmp_path / "cache"), "--kinds", "skip,fast-person",
                                      "--each", "repeat", "--generated", "--patch-max"])
    val_motion.main()
    lines = capsys.readouterr().out.strip().splitlines()
    assert [re.search(r"\((.*?)\)", line).group(1) for line in lines] == [
        "mean over patches", "largest patch", "d on the generated window"]
    for line in lines:
        # one held-out clip of 30 frames: 20 windows; the combined kinds, then each kind alone
        assert "20 normal windows" in line
        assert [label for label, _ in re.findall(r"; ([\w,-]+): AUC (\d+\.\d) %", line)] == ["skip,fast-person", "repeat"]
    assert val_motion.COMBINED == ("skip", "reverse", "repeat", "patch", "fast-region", "fast-tube")
