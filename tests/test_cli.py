"""The `stan` command through Typer's CliRunner: exit codes, error lines, the report."""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from stan_cli import __version__
from stan_cli.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_help_lists_the_commands():
    result = run("--help")
    assert result.exit_code == 0
    for command in ("detect", "train", "explain"):
        assert command in result.output


@pytest.mark.parametrize("command", ["detect", "train", "explain", "eval"])
def test_flags_show_no_value_in_help(command):
    """A flag shown as `--no-video <bool>` invites `--no-video true`, whose `true` becomes an input."""
    result = run(command, "--help")
    flags = [ln for ln in result.output.splitlines() if any(f in ln for f in ("--no-video", "--overwrite", "--resume", "--reset-discriminator"))]
    assert flags and not any("<bool>" in ln for ln in flags), flags


@pytest.mark.parametrize("command", [[], ["detect"], ["train"], ["explain"], ["eval"]])
def test_help_option_shows_no_value_and_defaults_read_plainly(command):
    """-h/--help is a flag like the others; the threshold's default reads `calibrated`, not `(calibrated)`."""
    result = run(*command, "--help")
    help_lines = [ln for ln in result.output.splitlines() if "--help" in ln]
    assert help_lines and not any("<" in ln for ln in help_lines), help_lines
    if command in (["detect"], ["explain"]):
        assert "(calibrated)" not in result.output
        assert "calibrated]" in result.output  # "[default: calibrated]", however the panel wraps


@pytest.mark.parametrize("command, example", [
    ([], "stan detect clip.mp4 --out report/"),
    (["detect"], "stan detect clip.mp4 --out report/"),
    (["train"], "--pretrain-epochs 0 --epochs 0 --out mycam.safetensors"),
    (["explain"], "stan explain clip.mp4 --frame 120"),
    (["eval"], "stan eval ../shared/data/ped2/testing --out results/"),
])
def test_help_ends_with_examples(command, example, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one example a line, however wide
    result = run(*command, "--help")
    assert result.exit_code == 0 and "Examples:" in result.output
    assert example in result.output


def test_version_names_the_default_weights(tmp_path, monkeypatch, tiny_weights):
    from stan_cli.model import TINY, Discriminator, Generator
    from stan_cli.weights import save_weights

    named = tmp_path / "named.safetensors"
    save_weights(named, Generator(TINY), Discriminator(TINY), TINY, None, {"name": "mycam-2026-12-06"})
    monkeypatch.setenv("STAN_WEIGHTS", str(named))
    result = run("--version")
    assert result.exit_code == 0 and f"stan {__version__}" in result.output
    assert "default weights: mycam-2026-12-06" in result.output and "named.safetensors" in result.output
    monkeypatch.setenv("STAN_WEIGHTS", str(tiny_weights))  # a file from before names existed
    assert "unnamed" in run("--version").output
    monkeypatch.setenv("STAN_WEIGHTS", str(tmp_path / "missing.safetensors"))
    result = run("--version")
    assert result.exit_code == 0 and "default weights: none" in result.output and "STAN_WEIGHTS" in result.output
    link = tmp_path / "link.safetensors"  # detect follows links: so does --version
    link.symlink_to(named)
    monkeypatch.setenv("STAN_WEIGHTS", str(link))
    assert "default weights: mycam-2026-12-06" in run("--version").output
    (tmp_path / "notes.txt").write_text("not weights")
    monkeypatch.setenv("STAN_WEIGHTS", str(tmp_path / "notes.txt"))
    result = run("--version")
    assert result.exit_code == 0 and "not a stan weights file" in result.output and "from $STAN_WEIGHTS" in result.output


def test_stan_weights_naming_a_folder_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("STAN_WEIGHTS", str(tmp_path))
    result = run("detect", str(tmp_path / "clip.mp4"), "--out", str(tmp_path / "r"))
    assert result.exit_code != 0 and "is a folder, not a weights file" in result.stderr, result.output


def test_no_args_shows_help():
    result = run()
    assert "detect" in result.output and "Usage" in result.output
    assert "error" not in result.stderr  # the help is the answer, not a parse error


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and __version__ in result.output


def test_detect_writes_report_and_says_where(clip_video, tiny_weights, tmp_path):
    out = tmp_path / "report dir ünicode"
    result = run("detect", clip_video, "--out", out, "--weights", tiny_weights, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert (out / "index.html").exists() and (out / "overlay_pixel_loss.mp4").exists()
    last = result.output.strip().splitlines()[-1]
    assert "Results written to" in last and "index.html" in last
    assert json.loads((out / "summary.json").read_text())["input"]["frames"] == 40


def _one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    text = result.stderr if hasattr(result, "stderr") else result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert lines and lines[0].startswith("error:")
    joined = " ".join(ln.strip() for ln in lines)
    for fragment in fragments:
        assert fragment in joined


def test_missing_video(tmp_path, tiny_weights):
    missing = tmp_path / "nope.mp4"
    _one_line_error(run("detect", missing, "--out", tmp_path / "r", "--weights", tiny_weights), "nope.mp4", "no such file")


@pytest.mark.parametrize("command", ["detect", "explain", "eval"])
def test_a_refusal_before_any_work_is_exactly_one_line(tmp_path, tiny_weights, command):
    extra = ["--frame", "5"] if command == "explain" else []
    result = run(command, tmp_path / "nope", *extra, "--out", tmp_path / "r", "--weights", tiny_weights)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, repr(result.stderr)


def test_text_file_named_mp4(tmp_path, tiny_weights):
    fake = tmp_path / "fake.mp4"
    fake.write_text("this is not a video")
    _one_line_error(run("detect", fake, "--out", tmp_path / "r", "--weights", tiny_weights), "fake.mp4", "ffmpeg")


def test_empty_folder(tmp_path, tiny_weights):
    (tmp_path / "empty").mkdir()
    _one_line_error(run("detect", tmp_path / "empty", "--out", tmp_path / "r", "--weights", tiny_weights), "no frames")


def test_missing_weights(clip_video, tmp_path):
    _one_line_error(run("detect", clip_video, "--out", tmp_path / "r", "--weights", tmp_path / "w.safetensors"), "w.safetensors", "not found")


def test_weights_not_safetensors(clip_video, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 100)
    _one_line_error(run("detect", clip_video, "--out", tmp_path / "r", "--weights", bad), "bad.safetensors")


def test_non_empty_out_refused_then_overwrite(clip_video, tiny_weights, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "old.txt").write_text("x")
    _one_line_error(run("detect", clip_video, "--out", out, "--weights", tiny_weights), "already holds files", "--overwrite")
    ok = run("detect", clip_video, "--out", out, "--weights", tiny_weights, "--overwrite", "--no-video")
    assert ok.exit_code == 0, ok.output
    assert not (out / "overlay_pixel_loss.mp4").exists()


def test_cuda_when_absent(clip_video, tiny_weights, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    _one_line_error(run("detect", clip_video, "--out", tmp_path / "r", "--weights", tiny_weights, "--device", "cuda"), "CUDA")


def test_bad_score_kind(clip_video, tiny_weights, tmp_path):
    _one_line_error(run("detect", clip_video, "--out", tmp_path / "r", "--weights", tiny_weights, "--score", "xyz"), "--score")


@pytest.mark.parametrize(
    "args, says",
    [
        (["detect", "x.mp4", "--no-such-option"], "No such option: --no-such-option"),
        (["explain", "x.mp4", "--frame", "abc"], "Invalid value for '--frame'"),
        (["eval", "testing"], "Missing option '--out'"),
        (["detectt"], "No such command 'detectt'"),
    ],
)
def test_a_command_line_that_does_not_parse_exits_2_with_one_error_line(args, says):
    """Like stan's own refusals: one `error:` line (not Typer's boxed panel), and where help is."""
    result = run(*args)
    assert result.exit_code == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], result.stderr
    assert lines[0].endswith("--help'.") and not any(ch in result.stderr for ch in "╭│╰")




def test_an_unexpected_os_error_is_one_line_not_a_traceback(tmp_path, monkeypatch):
    """A disk that fills while `stan eval` writes (eval writes its files directly) gives one line."""
    import errno

    import stan_cli.evaluate as evaluate_module

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "res" / "roc.png"))

    monkeypatch.setattr(evaluate_module, "evaluate", full)
    result = runner.invoke(app, ["eval", str(tmp_path), "--out", str(tmp_path / "res")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "roc.png: No space left on device. Free some space" in errors[0], result.stderr


def test_progress_in_a_log_file_is_plain_lines(clip_video, tiny_weights, tmp_path):
    """stderr not a terminal (nohup, a scheduler): each stage ends with one whole line, no bar."""
    result = run("detect", clip_video, "--out", tmp_path / "r", "--weights", tiny_weights, "--device", "cpu")
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert any(ln.startswith("scoring: 40/40 ") and "elapsed" in ln for ln in lines), result.stderr
    assert any(ln.startswith("overlay video: ") for ln in lines), result.stderr
    assert not any(ch in result.stderr for ch in "━█"), result.stderr


def test_log_progress_prints_at_most_every_interval_and_when_a_task_completes():
    import io
    import re

    from rich.console import Console

    from stan_cli.cli import _LogProgress

    buffer = io.StringIO()
    progress = _LogProgress(Console(file=buffer, soft_wrap=True), every=3600)
    with progress:
        task = progress.add_task("pretrain 1/2", total=10, completed=2, info="")  # resumed at batch 2
        for k in range(3, 11):
            progress.update(task, completed=k, info=f"pixel={k}")
            if k == 6:
                assert buffer.getvalue() == ""  # within the interval: quiet
        assert re.fullmatch(r"pretrain 1/2: 10/10 pixel=10 \(at \d\d:\d\d:\d\d, 0:00:00 elapsed\)\n", buffer.getvalue())
        buffer.truncate(0), buffer.seek(0)
        progress.remove_task(task)  # already said: nothing more
        progress.add_task("never started", total=5)  # counted nothing: says nothing
    assert buffer.getvalue() == ""

    buffer = io.StringIO()
    progress = _LogProgress(Console(file=buffer, soft_wrap=True), every=0)
    with progress:
        task = progress.add_task("scoring", total=None)
        for k in (8, 16):
            progress.update(task, completed=k)
        progress.update(task, completed=20)
        progress.every = 3600
        progress.update(task, completed=24)
    lines = buffer.getvalue().splitlines()
    assert [ln.split(" (")[0] for ln in lines] == ["scoring: 8", "scoring: 16", "scoring: 20", "scoring: 24"]

    buffer = io.StringIO()
    progress = _LogProgress(Console(file=buffer, soft_wrap=True), every=3600)
    try:
        with progress:
            progress.update(progress.add_task("scoring", total=20), completed=16)
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert buffer.getvalue() == ""  # the error or "interrupted" line says what happened


def test_log_progress_estimates_time_left_from_this_run_only():
    import io

    from rich.console import Console

    from stan_cli.cli import _LogProgress

    buffer = io.StringIO()
    progress = _LogProgress(Console(file=buffer, soft_wrap=True), every=0)
    task = progress.add_task("pretrain 6/6", total=100, completed=90)
    progress.tasks[task]["start"] -= 60  # 5 steps in a minute since the resume
    progress.update(task, completed=95)
    assert "1:00 elapsed, about 0:01:00 left" in buffer.getvalue()


def test_an_assumed_frame_rate_is_said_in_the_console_and_the_page(clip_folder, clip_video, tiny_weights, tmp_path):
    """A frame folder states no rate: segment times use 25 fps, and both places say it was assumed."""
    result = run("detect", clip_folder, "--out", tmp_path / "f", "--weights", tiny_weights, "--device", "cpu", "--no-video")
    assert result.exit_code == 0, result.output
    assert "25 fps (assumed; set --fps)" in result.output
    assert "25 (assumed: the input states none" in (tmp_path / "f" / "index.html").read_text()

    result = run("detect", clip_video, "--out", tmp_path / "v", "--weights", tiny_weights, "--device", "cpu", "--no-video")
    assert result.exit_code == 0 and "(assumed" not in result.output
    assert "(assumed" not in (tmp_path / "v" / "index.html").read_text()


def test_log_progress_past_an_estimated_total_counts_on_without_a_line_per_update():
    """A video with more frames than its header said: the total becomes unknown, not 'finished' again and again."""
    import io

    from rich.console import Console

    from stan_cli.cli import _LogProgress

    buffer = io.StringIO()
    progress = _LogProgress(Console(file=buffer, soft_wrap=True), every=3600)
    with progress:
        task = progress.add_task("scoring", total=78)
        for done in range(16, 1_300_001, 16):
            progress.update(task, completed=done)
    lines = buffer.getvalue().splitlines()
    assert [ln.split(" (")[0] for ln in lines] == ["scoring: 1300000"], lines


def test_log_progress_takes_markup_as_the_bars_do():
    """Names reach both displays escaped once: a file called [bold]x.mp4 prints as it is."""
    import io

    from rich.console import Console
    from rich.markup import escape

    from stan_cli.cli import _LogProgress

    buffer = io.StringIO()
    progress = _LogProgress(Console(file=buffer, soft_wrap=True), every=0)
    task = progress.add_task(escape("[1/2] [bold]x.mp4: ") + "scoring", total=4, info="")
    progress.update(task, completed=4, info=escape("at [/b]"))
    assert buffer.getvalue().startswith("[1/2] [bold]x.mp4: scoring: 4/4 at [/b] (at "), buffer.getvalue()


@pytest.mark.parametrize("argv", [["detect", ""], ["detect", "clip.mp4", "--out", ""], ["train", "frames", "--out="],
                                  ["explain", "", "--frame", "3"]])
def test_an_empty_argument_is_one_error_line_and_reads_nothing(argv, monkeypatch, capsys, tmp_path):
    """Found by a robustness pass: "" (an unset "$CLIP") reads as the current folder, so
    `stan detect ""` scored every video in it. The console script refuses it before any work."""
    from stan_cli import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["stan", *argv])
    with pytest.raises(SystemExit) as stop:
        cli.run()
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(" ".join(lines).split("error:")) == 2 and lines[0].startswith("error: an empty argument"), lines
    assert list(tmp_path.iterdir()) == []
    assert cli.empty_argument(["detect", "clip.mp4", "--out", "r"]) is None


def test_a_full_disk_in_train_names_the_run_and_says_resume(tmp_path):
    """Found by a robustness pass: ENOSPC from a write names no file; the error said only "No space
    left on device", not where, nor that --resume finishes the run once there is space."""
    import errno

    from stan_cli.cli import train_os_error
    from stan_cli.train import TrainOptions

    opts = TrainOptions(data=tmp_path, out=tmp_path / "m.safetensors")
    full = OSError(errno.ENOSPC, "No space left on device")
    message = train_os_error(full, opts)
    assert message.startswith(f"writing the run's files (--out {opts.out}, checkpoints in {opts.ckpt_dir})")
    assert "Free some space" in message and "--resume" not in message
    opts.ckpt_dir.mkdir()
    (opts.ckpt_dir / "last.safetensors").write_bytes(b"x")
    named = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "w"))
    message = train_os_error(named, opts)
    assert message.startswith(f"{tmp_path / 'w'}: No space") and message.endswith("run the same command with --resume.")
