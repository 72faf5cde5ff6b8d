"""`stan detect` on many inputs: a report folder each, an index of all, bad inputs recorded and
skipped, and two torchrun processes sharing the inputs over Gloo.

Tiny untrained weights, 16-frame clips, no overlay videos, one torch thread: the reports' own
contents are test_detect.py's business; here only who went where, and what the index says.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import make_clip, write_frame_folder, write_video
from stan_cli.batch import INDEX_COLUMNS, INDEX_FILES, detect_many, expand_inputs, is_batch, report_names
from stan_cli.cli import app
from stan_cli.detect import REPORT_FILES
from stan_cli.errors import OutputError, StanError

SHORT = 16  # frames per clip: one window needs 11
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "200"}
runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """A folder of clips whose natural order is not the alphabetical one: 2.mp4, 10.mp4, 11/ (frames)."""
    root = tmp_path_factory.mktemp("videos")
    write_video(root / "10.mp4", make_clip(SHORT, seed=1))
    write_video(root / "2.mp4", make_clip(SHORT, seed=0))
    write_frame_folder(root / "11", make_clip(SHORT, seed=2))
    (root / "notes.txt").write_text("not footage: left out")
    return root


def run(*args) -> object:
    return runner.invoke(app, ["detect", *(str(a) for a in args)])


def rows(out: Path) -> list[dict]:
    with open(out / "index.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def stderr_of(result) -> str:
    return result.stderr if hasattr(result, "stderr") else result.output


def error_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("error:")]


def assert_report(folder: Path, frames: int = SHORT) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(REPORT_FILES)
    assert json.loads((folder / "summary.json").read_text())["input"]["frames"] == frames


def test_several_inputs_give_a_report_each_and_an_index(videos, tiny_weights, tmp_path):
    out = tmp_path / "out"
    inputs = [videos / "2.mp4", videos / "10.mp4", videos / "11"]
    result = detect_many(inputs, out, weights=tiny_weights, device="cpu", write_video=False)
    assert sorted(p.name for p in out.iterdir()) == sorted(["2", "10", "11", *INDEX_FILES])
    for name in ("2", "10", "11"):
        assert_report(out / name)
    assert result.failed == [] and result.index == out / "index.html"

    table = rows(out)
    assert list(table[0]) == list(INDEX_COLUMNS)
    assert [r["input"] for r in table] == [str(p) for p in inputs]
    assert [r["report"] for r in table] == ["2/index.html", "10/index.html", "11/index.html"]
    assert {r["status"] for r in table} == {"ok"} and {r["error"] for r in table} == {""}
    assert [int(r["frames"]) for r in table] == [SHORT] * 3
    assert float(table[0]["duration_s"]) == pytest.approx(SHORT / 10)  # the videos are 10 fps
    for r, entry in zip(table, result.entries):
        report_summary = json.loads((out / entry.name / "summary.json").read_text())
        assert int(r["segments"]) == len(report_summary["segments"])
        assert float(r["peak_score"]) == pytest.approx(entry.peak_score, rel=1e-5)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["inputs"] == 3 and summary["counts"] == {"ok": 3, "incomplete": 0, "error": 0, "pending": 0}
    assert [e["status"] for e in summary["entries"]] == ["ok"] * 3
    assert summary["weights"]["file"] == str(tiny_weights)
    html = (out / "index.html").read_text()
    for name in ("2", "10", "11"):
        assert f'href="{name}/index.html"' in html
    assert "http" not in html and html.count("<script") == 1  # the index's own sorter, nothing fetched


def test_the_index_lists_every_segment_highest_first_and_links_into_each_report(tiny_weights, tmp_path):
    """Two clips with a bright square racing across (conftest.make_clip): a segment each, in one
    table ordered by peak score, each row linking to its place in its report and to its clip."""
    (tmp_path / "in").mkdir()
    for name, seed in (("a", 0), ("b", 1)):
        write_video(tmp_path / "in" / f"{name}.mp4", make_clip(seed=seed))
    out = tmp_path / "out"
    result = detect_many(tmp_path / "in", out, weights=tiny_weights, device="cpu", write_video=False)
    found = [(e.name, seg) for e in result.entries for seg in e.flagged]
    assert {name for name, _ in found} == {"a", "b"}
    for name, seg in found:
        assert seg["clip"] == f"segments/segment_{seg['number']:03d}.mp4" and (out / name / seg["clip"]).is_file()
    html = (out / "index.html").read_text()
    table = html.split('id="all-segments"')[1]
    order = sorted(found, key=lambda pair: -pair[1]["peak_score"])
    positions = [table.index(f'href="{name}/index.html#segment-{seg["number"]}"') for name, seg in order]
    assert positions == sorted(positions)  # highest peak first
    assert f'href="{order[0][0]}/segments/segment_001.mp4"' in table
    assert 'data-sort="duration"' in table and 'data-sort="peak"' in table
    entries = json.loads((out / "summary.json").read_text())["entries"]
    assert all(e["flagged"] for e in entries)


def test_folder_of_videos_from_the_cli(videos, tiny_weights, tmp_path):
    out = tmp_path / "out"
    result = run(videos, "--out", out, "--weights", tiny_weights, "--device", "cpu", "--no-video")
    assert result.exit_code == 0, result.output
    assert [r["report"] for r in rows(out)] == ["2/index.html", "10/index.html", "11/index.html"]  # natural order
    assert not (out / "notes").exists()
    last = result.stdout.strip().splitlines()[-1]
    assert "3 of 3 reports written" in last and str(out / "index.html") in last
    for name in ("2.mp4", "10.mp4", "11"):  # a line per input as it finishes
        assert any(name in ln and "frames" in ln and "peak" in ln for ln in stderr_of(result).splitlines())


def test_folder_of_clip_folders(tiny_weights, tmp_path):
    frames = tmp_path / "testing" / "frames"  # the UCSD layout
    for name in ("01", "02"):
        write_frame_folder(frames / name, make_clip(SHORT, seed=int(name)), pattern="{:03d}.png")
    out = tmp_path / "out"
    result = run(frames, "--out", out, "--weights", tiny_weights, "--device", "cpu", "--no-video")
    assert result.exit_code == 0, result.output
    for name in ("01", "02"):
        assert_report(out / name)
        assert json.loads((out / name / "summary.json").read_text())["input"]["kind"] == "frames"
    assert [r["status"] for r in rows(out)] == ["ok", "ok"]


def test_a_folder_of_clip_folders_is_never_its_own_output(tiny_weights, tmp_path):
    frames = tmp_path / "testing" / "frames"
    for name in ("01", "02"):
        write_frame_folder(frames / name, make_clip(SHORT, seed=int(name)), pattern="{:03d}.png")
    before = sorted(str(p.relative_to(frames)) for p in frames.rglob("*"))
    for args, says in (
        ((frames,), "itself"),  # the folder given (its clips' reports would go into them too)
        ((frames / "01", frames / "02"), "report would go into"),  # each clip's report folder
    ):
        result = run(*args, "--out", frames, "--overwrite", "--weights", tiny_weights, "--device", "cpu", "--no-video")
        assert result.exit_code == 1, result.output
        assert says in stderr_of(result)
        assert sorted(str(p.relative_to(frames)) for p in frames.rglob("*")) == before  # no index either


def test_a_bad_file_is_reported_and_the_others_run(videos, tiny_weights, tmp_path):
    fake = tmp_path / "fake.mp4"
    fake.write_text("this is not a video")
    out = tmp_path / "out"
    result = run(videos / "2.mp4", fake, videos / "10.mp4", "--out", out, "--weights", tiny_weights, "--device", "cpu", "--no-video")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = error_lines(stderr_of(result))
    assert len(errors) == 1 and "fake.mp4" in errors[0] and "ffmpeg" in errors[0]
    table = rows(out)
    assert [r["status"] for r in table] == ["ok", "error", "ok"]
    assert "fake.mp4" in table[1]["error"] and table[1]["report"] == ""
    assert not (out / "fake").exists()  # detect leaves no empty folder for it
    assert_report(out / "2")
    assert_report(out / "10")
    assert "1 failed" in result.stdout.strip().splitlines()[-1]
    assert "none (fake.mp4)" in result.stdout and "│ fake " not in result.stdout  # no report of that name
    html = (out / "index.html").read_text()
    assert '<tr class="error">' in html and "ffmpeg cannot read it" in html


def test_missing_and_too_short_inputs_are_recorded(videos, tiny_weights, tmp_path):
    short = write_video(tmp_path / "short.mp4", make_clip(8))
    result = detect_many([tmp_path / "gone.mp4", short, videos / "2.mp4"], tmp_path / "out", weights=tiny_weights,
                         device="cpu", write_video=False)
    assert [e.status for e in result.entries] == ["error", "error", "ok"]
    assert "no such file" in result.entries[0].error and "only 8 frames" in result.entries[1].error
    assert len(result.failed) == 2


def test_name_clashes_get_suffixes(videos, tiny_weights, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "clip.mp4").write_bytes((videos / "2.mp4").read_bytes())
    out = tmp_path / "out"
    result = detect_many([tmp_path / "a" / "clip.mp4", tmp_path / "b" / "clip.mp4"], out, weights=tiny_weights,
                         device="cpu", write_video=False)
    assert [e.name for e in result.entries] == ["clip", "clip-2"]
    assert_report(out / "clip")
    assert_report(out / "clip-2")
    assert [r["report"] for r in rows(out)] == ["clip/index.html", "clip-2/index.html"]
    # case-insensitive filesystems, and the index's own file names
    names = report_names([Path("x/clip.mp4"), Path("y/Clip.avi"), Path("z/clip-2.mp4"), Path("summary.json.mp4")])
    assert names == ["clip", "Clip-2", "clip-2-2", "summary.json-2"]


def test_non_empty_out_is_refused_unless_overwrite(videos, tiny_weights, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    args = (videos / "2.mp4", videos / "10.mp4", "--out", out, "--weights", tiny_weights, "--device", "cpu", "--no-video")
    refused = run(*args)
    assert refused.exit_code == 1
    errors = error_lines(stderr_of(refused))
    assert len(errors) == 1 and "already holds files" in errors[0] and "--overwrite" in errors[0]
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    for _ in range(2):  # a second --overwrite run replaces the first one's reports
        ok = run(*args, "--overwrite")
        assert ok.exit_code == 0, ok.output
        assert_report(out / "2")
        assert_report(out / "10")
    assert (out / "mine.txt").read_text() == "keep me"


def test_many_inputs_over_a_single_report_leave_none_of_its_files(videos, tiny_weights, tmp_path):
    """Found by a robustness pass: --overwrite let the index replace a one-input report's
    index.html and summary.json, and its scores.csv and plot stayed beside them as if current.
    A file of the user's with a report's name stays."""
    out = tmp_path / "out"
    single = run(videos / "2.mp4", "--out", out, "--weights", tiny_weights, "--device", "cpu", "--no-video",
                 "--threshold", "0")  # every frame flagged: one segment, and its clip
    assert single.exit_code == 0, single.output
    assert (out / "scores.csv").exists() and list((out / "segments").glob("segment_*.mp4"))
    (out / "scores.png").unlink()
    (out / "scores.png").write_text("my notes, not a plot")  # the user's file: not stan's, so kept
    many = run(videos / "2.mp4", videos / "10.mp4", "--out", out, "--weights", tiny_weights, "--device", "cpu",
               "--no-video", "--overwrite")
    assert many.exit_code == 0, many.output
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == sorted([*INDEX_FILES, "scores.png"])
    assert (out / "scores.png").read_text() == "my notes, not a plot"
    assert not (out / "segments").exists()  # its clips went with it
    assert_report(out / "2")
    assert_report(out / "10")


def test_an_option_error_stops_the_run_and_leaves_nothing(videos, tiny_weights, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(StanError, match="--score"):
        detect_many([videos / "2.mp4", videos / "10.mp4"], out, weights=tiny_weights, device="cpu", score="x")
    assert not out.exists()
    with pytest.raises(OutputError, match="is a file"):
        detect_many([videos / "2.mp4", videos / "10.mp4"], tiny_weights, weights=tiny_weights, device="cpu")


@pytest.mark.parametrize("option", [
    ("--score", "x"), ("--batch-size", "0"), ("--precision", "fp8"), ("--merge-gap", "-1"), ("--min-length", "0"),
    ("--fps", "0"),
])
def test_an_earlier_index_survives_a_run_refused_for_a_bad_option(videos, tiny_weights, tmp_path, option):
    """--overwrite replaces the index only when the new one is written: a refused run leaves it."""
    out = tmp_path / "out"
    args = (videos / "2.mp4", videos / "10.mp4", "--out", out, "--weights", tiny_weights, "--device", "cpu", "--no-video")
    assert run(*args).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert sorted(before) == sorted(INDEX_FILES)
    refused = run(*args, "--overwrite", *option)
    assert refused.exit_code == 1, refused.output
    errors = error_lines(stderr_of(refused))
    assert len(errors) == 1 and option[0] in errors[0]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert_report(out / "2")


def test_an_interrupted_run_leaves_an_index_of_what_finished(videos, tiny_weights, tmp_path):
    def stop_at_the_second(event, entry, total):
        if event == "start" and entry.index == 1:
            raise KeyboardInterrupt

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        detect_many(videos, out, weights=tiny_weights, device="cpu", write_video=False, on_input=stop_at_the_second)
    assert [r["status"] for r in rows(out)] == ["ok", "pending", "pending"]


def test_one_input_is_a_single_report_as_before(videos, tiny_weights, tmp_path):
    for source in (videos / "2.mp4", videos / "11"):
        out = tmp_path / source.name
        result = run(source, "--out", out, "--weights", tiny_weights, "--device", "cpu", "--no-video")
        assert result.exit_code == 0, result.output
        assert_report(out)  # straight into --out: no subfolder, no index
        assert "Results written to" in result.stdout.strip().splitlines()[-1]


def test_a_single_report_over_a_many_input_run_leaves_no_stale_index(videos, tiny_weights, tmp_path):
    out = tmp_path / "out"
    assert run(videos / "2.mp4", videos / "10.mp4", "--out", out, "--weights", tiny_weights, "--no-video").exit_code == 0
    assert (out / "index.csv").exists()
    assert run(videos / "2.mp4", "--out", out, "--weights", tiny_weights, "--no-video", "--overwrite").exit_code == 0
    assert not (out / "index.csv").exists()  # index.html is now the single report's; no index points elsewhere
    assert sorted(p.name for p in out.iterdir()) == sorted([*REPORT_FILES, "2", "10"])
    assert_report(out / "2")  # the earlier run's per-input folders are left as they were


def test_which_arguments_make_a_batch(videos, tmp_path):
    (tmp_path / "empty").mkdir()
    assert not is_batch([videos / "2.mp4"]) and not is_batch([videos / "11"])
    assert not is_batch([tmp_path / "empty"]) and not is_batch([tmp_path / "missing"])  # detect's own error
    assert is_batch([videos]) and is_batch([videos / "2.mp4", videos / "2.mp4"])
    assert expand_inputs([videos, videos / "2.mp4", tmp_path / "empty"]) == [
        videos / "2.mp4", videos / "10.mp4", videos / "11", videos / "2.mp4", tmp_path / "empty",
    ]


def test_a_stray_image_beside_videos_or_clip_folders_is_not_a_clip(videos, tiny_weights, tmp_path):
    from stan_cli.dataset import find_sources

    (tmp_path / "cam").mkdir()
    for name in ("2.mp4", "10.mp4"):
        shutil.copy(videos / name, tmp_path / "cam" / name)
    shutil.copytree(videos / "11", tmp_path / "cam" / "11")
    (tmp_path / "cam" / "thumb.jpg").write_bytes(next((videos / "11").iterdir()).read_bytes())
    assert is_batch([tmp_path / "cam"])
    expected = [tmp_path / "cam" / n for n in ("2.mp4", "10.mp4", "11")]
    assert expand_inputs([tmp_path / "cam"]) == find_sources(tmp_path / "cam") == expected
    assert find_sources(videos / "11") == [videos / "11"]  # images alone: one clip, as before
    # ... and both commands say so, so that a user who meant those images as footage knows
    from stan_cli.train import TrainOptions, train
    from stan_cli.video import images_beside_clips

    events = []
    train(TrainOptions(data=tmp_path / "cam", out=tmp_path / "m.safetensors", preset="tiny", device="cpu",
                       pretrain_epochs=1, epochs=0, batch_size=8, val_clips=1),
          lambda kind, **info: events.append((kind, info)))
    said = [info["message"] for kind, info in events if kind == "warning"]
    expected = f"{tmp_path / 'cam'}: 1 image lying beside its videos or clip folders is not read."
    assert said[0].startswith(expected) and "subfolder" in said[0]
    assert [info["skipped"] for kind, info in events if kind == "data"] == [0]  # a warning, not a skipped clip
    assert images_beside_clips(videos) is None and images_beside_clips(videos / "11") is None
    assert images_beside_clips(videos / "2.mp4") is None and images_beside_clips(tmp_path / "missing") is None
    result = run(tmp_path / "cam", "--out", tmp_path / "out", "--weights", tiny_weights, "--no-video")
    assert result.exit_code == 0 and "1 image lying beside" in " ".join(result.stderr.split())
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == ["10", "11", "2"]


@pytest.fixture
def locked(monkeypatch):
    """Make Path.iterdir refuse the folders added to the returned set, as for a folder without
    read permission (the tests run as root, for whom chmod changes nothing)."""
    folders: set[Path] = set()
    real = Path.iterdir

    def iterdir(self):
        if self in folders:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    return folders


def test_an_unreadable_folder_is_one_error_line_not_a_traceback(videos, tiny_weights, tmp_path, locked):
    folder = write_frame_folder(tmp_path / "locked", make_clip(SHORT))
    locked.add(folder)
    assert not is_batch([folder]) and expand_inputs([folder]) == [folder]
    result = run(folder, "--out", tmp_path / "r", "--weights", tiny_weights, "--device", "cpu", "--no-video")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    errors = error_lines(stderr_of(result))
    assert len(errors) == 1 and "locked: cannot read it (Permission denied)" in errors[0]
    assert not (tmp_path / "r").exists()
    # among other inputs it is recorded for itself, and the others run
    out = tmp_path / "out"
    batch = run(videos / "2.mp4", folder, "--out", out, "--weights", tiny_weights, "--device", "cpu", "--no-video")
    assert batch.exit_code == 1 and "Traceback" not in batch.output, batch.output
    assert [r["status"] for r in rows(out)] == ["ok", "error"]
    assert "Permission denied" in rows(out)[1]["error"]
    assert_report(out / "2")


def test_an_unreadable_clip_folder_inside_a_folder_is_its_own_error(tiny_weights, tmp_path, locked):
    root = tmp_path / "frames"
    write_frame_folder(root / "01", make_clip(SHORT, seed=0))
    write_frame_folder(root / "02", make_clip(SHORT, seed=1))
    locked.add(root / "01")
    assert is_batch([root]) and expand_inputs([root]) == [root / "01", root / "02"]
    out = tmp_path / "out"
    result = run(root, "--out", out, "--weights", tiny_weights, "--device", "cpu", "--no-video")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    errors = error_lines(stderr_of(result))
    assert len(errors) == 1 and "01: cannot read it (Permission denied)" in errors[0]
    assert [r["status"] for r in rows(out)] == ["error", "ok"]
    assert_report(out / "02")


def test_names_of_dots_never_point_at_out_or_its_parent(videos, tiny_weights, tmp_path):
    """"..mp4" and "...mp4" have the stems "." and "..": their reports would land in OUT itself
    or in OUT's parent (and --overwrite would replace what is there)."""
    assert report_names([Path("a/..mp4"), Path("b/...mp4"), Path("c/.hidden.mp4"), Path("d/..x.mp4"), Path("input.mp4")]) == [
        "input", "input-2", "_hidden", "_x", "input-3",
    ]
    src = tmp_path / "src"
    src.mkdir()
    for name in ("..mp4", "...mp4"):
        (src / name).write_bytes((videos / "2.mp4").read_bytes())
    out = tmp_path / "work" / "out"
    result = detect_many([src / "..mp4", src / "...mp4"], out, weights=tiny_weights, device="cpu", write_video=False)
    assert [e.name for e in result.entries] == ["input", "input-2"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*INDEX_FILES, "input", "input-2"])
    assert_report(out / "input")
    assert_report(out / "input-2")
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["out"]  # nothing beside OUT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_share_the_inputs(videos, tiny_weights, tmp_path):
    fake = tmp_path / "fake.mp4"
    fake.write_text("this is not a video")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "stan_cli.cli", "detect", str(videos), str(fake),
           "--out", str(out), "--weights", str(tiny_weights), "--device", "cpu", "--no-video"]
    try:
        proc = subprocess.run(cmd, env=SUBPROCESS_ENV, cwd=tmp_path, text=True, capture_output=True, timeout=180)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"2-process detect hung:\n{err.stdout}\n{err.stderr}")
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the fake input failed, after all ran
    table = rows(out)
    assert [r["status"] for r in table] == ["ok", "ok", "ok", "error"]
    assert [r["report"] for r in table][:3] == ["2/index.html", "10/index.html", "11/index.html"]
    for name in ("2", "10", "11"):
        assert_report(out / name)
    entries = json.loads((out / "summary.json").read_text())["entries"]
    assert [e["rank"] for e in entries] == [0, 1, 0, 1]  # inputs[rank::2]
    assert proc.stdout.count("reports written") == 1  # rank 0 alone prints the table
    assert len(error_lines(proc.stderr)) == 1 and "fake.mp4" in error_lines(proc.stderr)[0]


def test_a_report_written_into_a_folder_of_videos_is_not_footage(videos, tiny_weights, tmp_path):
    """Found by a robustness pass: `stan detect a.mp4 --out cam --overwrite` puts the overlay videos
    into the folder of clips; detect and train on that folder read them as clips, scoring or
    learning stan's own heat maps. They are stan's output (name and comment), never footage; a
    user's video of the same name stays one."""
    from stan_cli.dataset import find_sources

    cam = tmp_path / "cam"
    cam.mkdir()
    for name in ("2.mp4", "10.mp4"):
        shutil.copy(videos / name, cam / name)
    result = run(cam / "2.mp4", "--out", cam, "--weights", tiny_weights, "--overwrite")
    assert result.exit_code == 0, result.output
    assert (cam / "overlay_pixel_loss.mp4").is_file() and (cam / "overlay_guided_backprop.mp4").is_file()
    expected = [cam / "2.mp4", cam / "10.mp4"]
    assert expand_inputs([cam]) == find_sources(cam) == expected
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(videos / "2.mp4", mine / "overlay_pixel_loss.mp4")  # the user's own footage of that name
    assert find_sources(mine) == [mine / "overlay_pixel_loss.mp4"]
