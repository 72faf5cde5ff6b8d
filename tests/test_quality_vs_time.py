"""benchmarks/quality_vs_time.py's table: every finished cell in the folder, whatever the command
names, and nothing written by a dry run."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "quality_vs_time.py"


@pytest.fixture
def qvt():
    spec = importlib.util.spec_from_file_location("quality_vs_time", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def finished_cell(folder: Path, auc: float) -> None:
    """A cell as `stan eval` leaves it: eval/results.json with every kind's pooled AUC."""
    (folder / "eval").mkdir(parents=True)
    frame = {k: {"pooled": {"auc": auc, "eer": 0.2}} for k in ("g", "d", "gd", "frame_difference")}
    (folder / "eval" / "results.json").write_text(json.dumps({"frame_level": frame, "weights": {"training": {"steps": 7}}}))
    (folder / "timing.json").write_text("[600.0]")


def run(qvt, monkeypatch, tmp_path, *args) -> None:
    monkeypatch.setattr(sys, "argv", ["quality_vs_time.py", str(tmp_path / "train"), str(tmp_path / "test"), "--out", str(tmp_path / "qvt"), *args])
    qvt.main()


def rows(tmp_path) -> list[tuple[str, str, str]]:
    with open(tmp_path / "qvt" / "quality_vs_time.csv", newline="") as fh:
        return [(r["start"], r["budget"], r["auc_g"]) for r in csv.DictReader(fh)]


def test_the_table_keeps_cells_other_commands_finished_and_a_dry_run_writes_nothing(qvt, monkeypatch, tmp_path):
    out = tmp_path / "qvt"
    finished_cell(out / "scratch-15m", 0.70)
    finished_cell(out / "scratch-1h", 0.75)
    finished_cell(out / "init-30m", 0.80)
    (out / "scratch-3h").mkdir()  # begun, not evaluated: not a row
    (out / "notes-x").mkdir()  # not a cell
    run(qvt, monkeypatch, tmp_path, "--budgets", "1h", "--starts", "scratch")
    assert rows(tmp_path) == [("scratch", "15m", "70.0"), ("scratch", "1h", "75.0"), ("init", "30m", "80.0")]
    assert (out / "quality_vs_time.png").stat().st_size > 0
    (out / "quality_vs_time.csv").write_text("kept\n")
    run(qvt, monkeypatch, tmp_path, "--budgets", "15m", "--starts", "scratch", "--dry-run")
    assert (out / "quality_vs_time.csv").read_text() == "kept\n"


def test_a_cell_whose_commands_were_stopped_from_outside_counts_the_time_its_run_recorded(qvt, tmp_path):
    out = tmp_path / "qvt"
    finished_cell(out / "scratch-3h", 0.74)  # noted: one command of 600 s
    results = out / "scratch-3h" / "eval" / "results.json"
    data = json.loads(results.read_text())
    data["weights"]["training"]["time_budget"] = {"seconds": 10800.0, "used_s": 10604.58}  # two earlier commands killed
    results.write_text(json.dumps(data))
    assert qvt._row(out, "scratch", "3h")["train_wall_s"] == 10604.6
    finished_cell(out / "scratch-1h", 0.75)  # no record of the budget (a run without --time): the noted wall time
    assert qvt._row(out, "scratch", "1h")["train_wall_s"] == 600.0
