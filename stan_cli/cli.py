"""The `stan` command: parse, call one API function, show progress and a summary, map errors.

Exit codes: 0 success, 1 a problem with the user's input/weights/output or an option's value
(one red line on stderr, no traceback), 2 a command line Typer cannot parse (an unknown option,
a value of the wrong type; one error line too), 130 interrupted (Ctrl-C, SIGTERM, SIGHUP).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape  # file names are the user's: "[x]" must print as it is
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__
from .errors import StanError

FLAG = ""  # metavar of on/off flags: some typer versions show "<bool>", and users then type a value


class _FlagHelp:
    """The generated -h/--help is a flag too: shown without a value, like ours (see FLAG)."""

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None and getattr(option, "metavar", None) is None:
            option.metavar = FLAG
        return option


class _Command(_FlagHelp, typer.core.TyperCommand):
    pass


class _Group(_FlagHelp, typer.core.TyperGroup):
    pass


def _examples(*lines: str) -> str:
    """A help epilog of example command lines (Typer joins single newlines, so paragraphs)."""
    return "Examples:\n\n" + "\n\n".join(f"  {line}" for line in lines)


app = typer.Typer(
    name="stan",
    cls=_Group,
    help="Offline video anomaly detection with spatio-temporal adversarial networks (STAN).",
    epilog=_examples(
        "stan detect clip.mp4 --out report/",
        "stan train ./normal_footage --out mycam.safetensors",
        "stan explain clip.mp4 --frame 120",
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# soft_wrap: a message is one line however narrow the terminal, and a log file (not a terminal,
# where rich would assume 80 columns) gets whole lines that grep finds.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _usage_error(e) -> None:
    """A command line Typer cannot parse: one `error:` line like stan's own, not a boxed panel."""
    if type(e).__name__ == "NoArgsIsHelpError":  # `stan` alone: the help was the answer (as Typer does)
        return
    ctx = getattr(e, "ctx", None)
    message = e.format_message().strip()
    message += "" if message.endswith((".", "!", "?")) else "."
    hint = f" See '{ctx.command_path} --help'." if ctx is not None else ""
    err.print(f"[bold red]error:[/] {escape(message)}{escape(hint)}", highlight=False)


# Typer draws parse errors with rich_utils.rich_format_error (exit code 2 stays Typer's); where a
# Typer version has no such hook, its own panel is shown.
try:
    from typer import rich_utils as _rich_utils

    if hasattr(_rich_utils, "rich_format_error"):
        _rich_utils.rich_format_error = _usage_error
except ImportError:  # pragma: no cover
    pass

# Options shared by several commands, declared once.
WeightsOption = Annotated[Optional[Path], typer.Option(help="Weights file \\[default: $STAN_WEIGHTS, else the shipped weights/stan-ped2.safetensors].")]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", metavar=FLAG, help="Write into a folder that already holds files.", rich_help_panel="Output")]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu or cuda.", rich_help_panel="Machine")]
BatchSizeOption = Annotated[int, typer.Option(help="Windows per forward pass.", rich_help_panel="Machine")]
PrecisionOption = Annotated[str, typer.Option(help="fp32 or bf16.", rich_help_panel="Machine")]


def _version(value: bool) -> None:
    if value:
        from .weights import CHECKPOINT_FORMAT, FORMAT, find_default_weights, weights_format, weights_name

        out.print(f"stan {__version__}", highlight=False)
        try:
            path = find_default_weights()
        except StanError as e:  # what detect would say: $STAN_WEIGHTS naming nothing, no shipped file
            out.print(f"default weights: none ({escape(str(e))})", highlight=False)
        else:
            kind = weights_format(path)
            if kind == CHECKPOINT_FORMAT:
                name = "a training checkpoint, not weights: detect would refuse it"
            elif kind != FORMAT:
                name = "not a stan weights file, detect would refuse it"
            else:
                name = weights_name(path) or "unnamed (written before 0.2.0)"
            via = ", from $STAN_WEIGHTS" if os.environ.get("STAN_WEIGHTS") else ""
            out.print(f"default weights: {escape(name)} ({escape(str(path))}{via})", highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        Optional[bool], typer.Option("--version", metavar=FLAG, callback=_version, is_eager=True, help="Show the version and exit.")
    ] = None,
) -> None:
    """Score every frame of fixed-camera footage, find the segments worth a look, show where."""


def warn_precision(device: str, precision: str) -> None:
    """Say so when bf16 would be emulated (slow) on this CPU; bad names are left to the command."""
    from .inference import precision_warning, resolve_device

    try:
        message = precision_warning(resolve_device(device), precision)
    except StanError:
        return
    if message:
        err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)


def os_error_message(e: OSError) -> str:
    """One line for an OSError: the file, the system's reason, what to do."""
    from .report import NO_PERMISSION, NO_SPACE

    where = f"{e.filename}: " if e.filename else ""
    reason = e.strerror or str(e)
    if e.errno in NO_SPACE:
        hint = "Free some space or choose another location."
    elif e.errno in NO_PERMISSION:
        hint = "Choose a location you may write to, or fix its permissions."
    else:
        hint = "Check the path and try again."
    return f"{where}{reason}. {hint}"


def train_os_error(e: OSError, opts) -> str:
    """os_error_message for `stan train`: a failed write that names no file (a full disk) names the
    run's places, and a run with a checkpoint says how to go on once the cause is fixed."""
    message = os_error_message(e)
    if not e.filename:
        message = f"writing the run's files (--out {opts.out}, checkpoints in {opts.ckpt_dir}): {message}"
    if (opts.ckpt_dir / "last.safetensors").exists():
        message += " The run's checkpoint is kept: then run the same command with --resume."
    return message


def fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


class _LazyProgress(Progress):
    """Progress bars whose display starts with the first bar: a run refused before any work
    prints its one error line alone, not after the blank line of an empty display."""

    def __enter__(self) -> "_LazyProgress":
        return self

    def __exit__(self, *exc) -> None:
        if self.live.is_started:
            self.stop()

    def add_task(self, *args, **kwargs):
        if not self.live.is_started:
            self.start()
        return super().add_task(*args, **kwargs)


class _LogProgress:
    """Progress for a log file (stderr not a terminal, as under nohup or a job scheduler): a
    plain line per task at most every `every` seconds and one when it completes, instead of bars
    that a file would only get once, at exit. Takes the calls the commands make of a rich Progress."""

    def __init__(self, console: Console, every: float = 60.0) -> None:
        self.console, self.every = console, every
        self.tasks: dict[int, dict] = {}
        self._next_id = 0

    def __enter__(self) -> "_LogProgress":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        # Tasks without a total end here; after an error or Ctrl-C the message says what happened.
        for task_id in list(self.tasks):
            self.remove_task(task_id, say=exc_type is None)

    def add_task(self, description: str, total: float | None = None, completed: float = 0, info: str = "") -> int:
        task_id, self._next_id = self._next_id, self._next_id + 1
        now = time.monotonic()
        self.tasks[task_id] = dict(
            description=description, total=total, completed=completed, first=completed, info=info, start=now, printed=now,
            said=completed if total and completed >= total else None,  # begun complete (a resumed epoch): nothing to say
        )
        return task_id

    def update(
        self, task_id: int, completed: float | None = None, total: float | None = None, info: str | None = None, left: float | None = None
    ) -> None:
        """`left`: the seconds left as the caller measures them (stan train: at the rate of the last minute)."""
        task = self.tasks[task_id]
        for key, value in (("completed", completed), ("total", total), ("info", info), ("left", left)):
            if value is not None:
                task[key] = value
        if task["total"] and task["completed"] > task["total"]:  # past an estimate (a video's header): unknown now
            task["total"] = None
        now = time.monotonic()
        finished = bool(task["total"]) and task["completed"] >= task["total"]
        if (finished or now - task["printed"] >= self.every) and task["completed"] != task.get("said"):
            task["printed"] = now
            self._line(task, now)

    def remove_task(self, task_id: int, say: bool = True) -> None:
        task = self.tasks.pop(task_id)
        if say and task["completed"] and task["completed"] != task.get("said"):  # nothing counted, or nothing new: no line
            self._line(task, time.monotonic())

    def _line(self, task: dict, now: float) -> None:
        done, total, elapsed = task["completed"], task["total"], now - task["start"]
        task["said"] = done
        count = f"{_number(done)}/{_number(total)}" if total else _number(done)
        left = ""
        if task.get("left") is not None and (not total or done < total):
            left = f", about {_clock(task['left'])} left"
        elif total and task["first"] < done < total:  # at the rate of this run (a resumed epoch starts part done)
            left = f", about {_clock(elapsed * (total - done) / (done - task['first']))} left"
        info = f" {task['info']}" if task["info"] else ""
        clock = time.strftime("%H:%M:%S")
        # description and info are rich markup, as for the bars: callers escape the names in them
        self.console.print(f"{task['description']}: {count}{info} (at {clock}, {_clock(elapsed)} elapsed{left})", highlight=False)


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class _TimeLeftColumn(TimeRemainingColumn):
    """Time left: the task's own `left` field where the caller measures it (stan train), else rich's estimate."""

    def render(self, task):
        if task.fields.get("left") is None or task.finished:
            return super().render(task)
        return super().render(_WithLeft(task, task.fields["left"]))


class _WithLeft:
    """A task whose time_remaining is the given seconds (what TimeRemainingColumn draws)."""

    def __init__(self, task, left: float) -> None:
        self._task, self.time_remaining = task, left

    def __getattr__(self, name):
        return getattr(self._task, name)


def _progress() -> Progress | _LogProgress:
    if not err.is_terminal:
        return _LogProgress(err)
    return _LazyProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        _TimeLeftColumn(),
        console=err,
        transient=False,
    )


# ---------------------------------------------------------------------------------------- detect


@app.command(cls=_Command, epilog=_examples(
    "stan detect clip.mp4 --out report/                 # score, segments, overlay videos",
    "stan detect ./videos/ --out reports/ --no-video    # many inputs, scores only (fastest)",
    "stan detect clip.mp4 --weights mycam.safetensors   # weights from stan train",
))
# Longer than 60 lines only through its signature: one line per option, as Typer declares them.
def detect(
    videos: Annotated[list[Path], typer.Argument(metavar="VIDEO", help="Video file (any format ffmpeg reads) or a folder of frames. Several, or a folder of videos or of clip folders: a report each, and an index.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Report folder to write (several inputs: a subfolder each, and index.html).")] = Path("report"),
    weights: WeightsOption = None,
    score: Annotated[str, typer.Option(help="Score that flags frames: g (generator), d (discriminator), gd (both).", rich_help_panel="Flagging")] = "gd",
    threshold: Annotated[Optional[str], typer.Option(help="Flag frames whose raw score exceeds this: a number, 'calibrated' (the weights' calibration on normal footage) or 'clip' (median + 3 x 1.4826 x MAD of this clip, when the calibration does not transfer to this footage).", rich_help_panel="Flagging")] = "calibrated",
    merge_gap: Annotated[int, typer.Option(help="Merge flagged runs separated by at most this many frames.", rich_help_panel="Flagging")] = 10,
    min_length: Annotated[int, typer.Option(help="Drop segments shorter than this many frames.", rich_help_panel="Flagging")] = 5,
    no_video: Annotated[bool, typer.Option("--no-video", metavar=FLAG, help="Skip the overlay videos (faster, for batch scoring).", rich_help_panel="Output")] = False,
    overlay_max_size: Annotated[int, typer.Option(help="Longest side of the overlay videos and clips in pixels (64-4096); larger inputs are drawn scaled down.", rich_help_panel="Output")] = 1920,
    no_clips: Annotated[bool, typer.Option("--no-clips", metavar=FLAG, help="Skip the clips of the flagged segments (segments/segment_001.mp4, ...).", rich_help_panel="Output")] = False,
    clip_padding: Annotated[float, typer.Option(help="Seconds of input kept before and after each segment in its clip (0-3600).", rich_help_panel="Output")] = 1.0,
    overwrite: OverwriteOption = False,
    fps: Annotated[Optional[float], typer.Option(help="Frame rate of a frame folder \\[default: 25] (or override a video's).", rich_help_panel="Output")] = None,
    device: DeviceOption = "auto",
    batch_size: BatchSizeOption = 8,
    precision: PrecisionOption = "fp32",
) -> None:
    """Score every frame of a video, flag abnormal segments, write a report folder (many videos: one each, and an index)."""
    from .batch import World, is_batch
    from .detect import detect as run_detect

    try:
        world = World.from_env()
    except StanError as e:  # torchrun's variables, set by hand to something else
        fail(str(e))
    if world.rank == 0:
        warn_precision(device, precision)
    options = dict(
        score=score, threshold=threshold, batch_size=batch_size, precision=precision, fps=fps,
        write_video=not no_video, merge_gap=merge_gap, min_length=min_length, overlay_max_size=overlay_max_size,
        clips=not no_clips, clip_padding=clip_padding,
    )
    if is_batch(videos):
        _detect_batch(videos, out_dir, weights, device, overwrite, world.rank == 0, options)
        return
    if world.rank != 0:  # one input cannot be shared: rank 0 scores it, the other ranks have nothing to do
        return
    video = videos[0]
    progress = _progress()
    try:
        with progress:
            result = run_detect(
                video, out=out_dir, weights=weights, device=device, overwrite=overwrite,
                on_progress=_StageBars(progress), **options,
            )
    except StanError as e:
        fail(str(e))
    except OSError as e:  # the system refused a read or write nobody turned into a StanError
        fail(os_error_message(e))
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        raise typer.Exit(130)
    for message in result.warnings:
        err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)
    out.print(_detect_table(video, result))
    out.print(f"Results written to [bold]{escape(str(out_dir))}[/] (open {escape(str(out_dir / 'index.html'))})", highlight=False)


def _detect_table(video: Path, result) -> Table:
    """The summary of one detect run as the terminal shows it: frames, weights, threshold, segments, time."""
    from .detect import overlay_rate
    from .report import flagged_but_short

    s = result.summary
    table = Table(title=escape(f"stan detect: {video.name}"), show_header=False)
    rate = f"{result.info.fps:g} fps{' (assumed; set --fps)' if result.info.fps_assumed else ''}"
    average = overlay_rate(result.time_s, result.info.fps)
    if average != result.info.fps:  # variable-rate footage far from its nominal rate: what its frames really average
        header = "no rate in its header" if result.info.fps_assumed else f"{result.info.fps:g} in its header"
        rate = f"variable, {average:.3g} fps on average ({header})"
    table.add_row("frames", f"{result.n_frames} ({s['scored_frames']} scored), {rate}, {result.info.width}x{result.info.height}")
    table.add_row("weights", f"{s['weights']['file']}")
    table.add_row("threshold", f"{result.threshold:.5g} ({result.threshold_source})")
    table.add_row("abnormal frames", str(s["abnormal_frames"]))
    for k, seg in enumerate(s["segments"][:10], start=1):
        table.add_row(f"segment {k}", f"{seg['start_s']:.1f}-{seg['end_s']:.1f} s (frames {seg['start_frame']}-{seg['end_frame']}), peak {seg['peak_score']:.4g} at {seg['peak_time_s']:.1f} s")
    if len(s["segments"]) > 10:
        table.add_row("", f"... {len(s['segments']) - 10} more in segments.csv")
    if not s["segments"]:
        why = flagged_but_short(s["abnormal_frames"], s["segment_rules"]["min_length_frames"])
        table.add_row("segments", f"none: {why}" if why else "none flagged")
    t = s["timings"]
    table.add_row("time", f"{t['total_s']:.1f} s ({t['scoring_s']:.1f} s scoring, {result.n_frames / max(t['scoring_s'], 1e-9):.1f} frames/s)")
    return table


class _StageBars:
    """detect's on_progress: a bar per stage (scoring, overlay video) of the current input, with its rate."""

    def __init__(self, progress: Progress, prefix: str = "") -> None:
        self.progress, self.prefix = progress, prefix
        self.tasks: dict[str, tuple[int, float, int]] = {}  # stage -> (task id, first report's time, its count)

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        now = time.perf_counter()
        if stage not in self.tasks:
            label = {"score": "scoring", "overlay": "overlay video", "clips": "segment clips"}[stage]
            self.tasks[stage] = (self.progress.add_task(self.prefix + label, total=total, info=""), now, done)
        task, started, done0 = self.tasks[stage]
        # The first report may already count a whole batch: the rate is measured from it on, and
        # only once enough time has passed for the number to mean something.
        info = f"{(done - done0) / (now - started):.1f} frames/s" if now - started >= 0.5 else ""
        self.progress.update(task, completed=done, total=total if total and total >= done else None, info=info)

    def restart(self, prefix: str, failed: bool = False) -> None:
        """Drop the finished input's bars; the next input's bars are labelled with `prefix`.
        `failed`: the input's error line follows, and a log gets no progress line before it."""
        for task, *_ in self.tasks.values():
            if isinstance(self.progress, _LogProgress):
                self.progress.remove_task(task, say=not failed)
            else:
                self.progress.remove_task(task)
        self.tasks.clear()
        self.prefix = prefix


def _detect_batch(videos: list[Path], out_dir: Path, weights: Path | None, device: str, overwrite: bool, main: bool, options: dict) -> None:
    """Many inputs: bars and a line per input, a table, where the index is; exit 1 if any failed.

    Other ranks of a torchrun job print only their inputs' errors; rank 0 prints the rest.
    """
    import contextlib

    from .batch import BatchEntry, detect_many
    from .fileio import shown  # a name that is not UTF-8 prints as \xff, on any terminal
    from .video import images_beside_clips

    progress = _progress()
    bars = _StageBars(progress)
    for message in filter(None, map(images_beside_clips, videos) if main else []):
        err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)

    def on_input(event: str, entry: BatchEntry, total: int) -> None:
        where = f"[{entry.index + 1}/{total}]"
        if event == "start":
            bars.restart(escape(f"{where} {entry.input.name}: "))
            return
        bars.restart("", failed=entry.status == "error")  # its line below replaces its bars
        if entry.status == "error":
            message = entry.error if shown(entry.input) in entry.error else f"{shown(entry.input)}: {entry.error}"
            err.print(f"[bold red]error:[/] {escape(f'{where} {message}')}", highlight=False)
            return
        if not main:
            return
        for message in entry.warnings:
            err.print(f"[yellow]warning:[/] {escape(f'{where} {message}')}", highlight=False)
        err.print(escape(
            f"{where} {entry.input.name}: {entry.frames} frames, {entry.segments} segment{'s' if entry.segments != 1 else ''}, "
            f"peak {entry.peak_score:.4g} (threshold {entry.threshold:.4g}) -> {out_dir / entry.name}"
        ), highlight=False)

    try:
        with progress if main else contextlib.nullcontext():
            result = detect_many(
                videos, out_dir, weights=weights, device=device, overwrite=overwrite, on_input=on_input,
                on_progress=bars if main else (lambda stage, done, total: None), **options,
            )
    except StanError as e:
        fail(str(e))
    except OSError as e:  # the system refused a read or write nobody turned into a StanError
        fail(os_error_message(e))
    except KeyboardInterrupt:
        index = out_dir / "index.html"
        err.print("[yellow]interrupted[/]" + (escape(f": {index} lists the inputs that finished") if main and index.exists() else ""), highlight=False)
        raise typer.Exit(130)
    if result.index is None:  # another rank of a torchrun job: rank 0 reports
        return
    table = _batch_table(result.entries, shown)
    out.print(table)
    failed = len(result.failed)
    out.print(
        f"{len(result.entries) - failed} of {len(result.entries)} reports written; index in [bold]{escape(str(result.index))}[/]"
        + (f" ({failed} failed: see the error lines above)" if failed else ""),
        highlight=False,
    )
    if failed:
        raise typer.Exit(1)


def _batch_table(entries, shown) -> Table:
    """The many-input detect's closing table: one row per input, an error row for one that failed."""
    n = len(entries)
    table = Table(title=f"stan detect: {n} input{'' if n == 1 else 's'}")
    for column in ("#", "report", "frames", "duration", "segments", "peak / threshold", "status"):
        table.add_column(column, justify="right" if column in ("#", "frames", "duration", "segments") else "left")
    for e in entries:
        scored = e.status in ("ok", "incomplete")
        status = {"ok": "ok", "incomplete": "[yellow]incomplete[/]", "error": "[red]error[/]"}.get(e.status, e.status)
        table.add_row(
            str(e.index + 1), escape(e.name) if e.status != "error" else f"[dim]none ({escape(shown(e.input.name))})[/]",
            str(e.frames) if scored else "", f"{e.duration_s:.1f} s" if scored else "",
            str(e.segments) if scored else "", f"{e.peak_score:.4g} / {e.threshold:.4g}" if scored else "", status,
        )
    return table


# ----------------------------------------------------------------------------------------- train


@app.command(cls=_Command, epilog=_examples(
    "stan train ./normal_footage --out mycam.safetensors",
    "stan train ./normal_footage --init weights/stan-ped2.safetensors --pretrain-epochs 0 --epochs 0 --out mycam.safetensors   # calibrate only",
    "stan train ./normal_footage --out mycam.safetensors --resume   # go on after a stop",
    "stan train ./normal_footage --time 45m --out mycam.safetensors   # fit the epochs to 45 minutes",
))
def train(
    data: Annotated[Path, typer.Argument(metavar="FOOTAGE", help="Normal footage: a frame folder, a folder of clip folders, or of videos.")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="Weights file to write.")] = Path("model.safetensors"),
    pretrain_epochs: Annotated[Optional[int], typer.Option(help="Epochs of the generator alone on the pixel loss \\[default: 10; on --resume the run's own].", rich_help_panel="Recipe", show_default=False)] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Adversarial epochs, generator and discriminator alternately \\[default: 20; on --resume the run's own].", rich_help_panel="Recipe", show_default=False)] = None,
    discriminator_epochs: Annotated[Optional[int], typer.Option(help="Then epochs of the discriminator alone against the frozen, selected generator; not in the paper (README) \\[default: 0; on --resume the run's own].", rich_help_panel="Recipe", show_default=False)] = None,
    time_budget: Annotated[Optional[str], typer.Option("--time", metavar="TIME", help="Fit the run to this time, e.g. 45m, 1.5h, 90s, reading the footage and calibrating included: times a few steps, plans each phase's epochs (instead of the epoch options), stops at the deadline with the selected model. With --resume: this much from now \\[default there: what is left of the run's own].", rich_help_panel="Recipe", show_default=False)] = None,
    time_shares: Annotated[Optional[str], typer.Option(help="With --time: the shares of the training time for generator-only, adversarial and discriminator epochs \\[default: 3,0,1; with --init 1,0,1].", rich_help_panel="Recipe", show_default=False)] = None,
    lr: Annotated[float, typer.Option(help="Adam learning rate.", rich_help_panel="Recipe")] = 2e-4,
    batch_size: Annotated[int, typer.Option(help="Windows per step (per process).", rich_help_panel="Recipe")] = 3,
    lam: Annotated[float, typer.Option("--lambda", help="Weight of the pixel loss in L_G.", rich_help_panel="Recipe")] = 1.0,
    val_clips: Annotated[int, typer.Option(help="Normal clips held out for model selection and calibration.", rich_help_panel="Selection")] = 2,
    false_alarm_rate: Annotated[float, typer.Option(help="Calibrated threshold's false-alarm rate on held-out normal windows.", rich_help_panel="Selection")] = 0.01,
    device: DeviceOption = "auto",
    precision: Annotated[str, typer.Option(help="fp32 or bf16 (autocast; about 2x faster on CPUs with native bf16, far slower without).", rich_help_panel="Machine")] = "fp32",
    workers: Annotated[int, typer.Option(help="Data-loading worker processes.", rich_help_panel="Machine")] = 0,
    seed: Annotated[int, typer.Option(help="Seed for initialisation and data order.", rich_help_panel="Machine")] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints (also at every epoch end).", rich_help_panel="Checkpoints")] = 200,
    checkpoint_dir: Annotated[Optional[Path], typer.Option(help="Where checkpoints go \\[default: <out>.ckpt/].", rich_help_panel="Checkpoints")] = None,
    resume: Annotated[bool, typer.Option("--resume", metavar=FLAG, help="Continue the run whose checkpoint is in the checkpoint folder.", rich_help_panel="Checkpoints")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", metavar=FLAG, help="Replace an earlier run's --out (stan weights, its logs and plot; never another file) and start a new run.", rich_help_panel="Checkpoints")] = False,
    init: Annotated[Optional[Path], typer.Option(help="Start from this weights file (fine-tune, e.g. the shipped Ped2 weights) instead of random networks.", rich_help_panel="Recipe")] = None,
    reset_discriminator: Annotated[bool, typer.Option("--reset-discriminator", metavar=FLAG, help="With --init: keep the generator, start the discriminator from random weights.", rich_help_panel="Recipe")] = False,
    name: Annotated[Optional[str], typer.Option(help="Version name stored in the weights (reports and stan --version show it) \\[default: <out file stem>-<date>].", show_default=False)] = None,
    pixel_norm: Annotated[str, typer.Option(help="Pixel term of L_G: l2 (the paper's L2 norm) or mse.", rich_help_panel="Recipe")] = "l2",
    pseudo_anomalies: Annotated[Optional[str], typer.Option(help="Discriminator phase: the abnormal-motion fakes made from normal windows, a comma list of skip, reverse, repeat, patch, fast-region, fast-tube, fast-person; none: generated windows only \\[default: skip,repeat,patch].", rich_help_panel="Recipe", show_default=False)] = None,
    pseudo_share: Annotated[Optional[float], typer.Option(help="Discriminator phase: the pseudo-anomalies' share of the fakes (0-1); generated windows are the rest \\[default: 0.75].", rich_help_panel="Recipe", show_default=False)] = None,
    old_generator: Annotated[Optional[Path], typer.Option(help="Discriminator phase (OGNet, beyond the paper): the generated fakes take their middle frame from this weights file's generator, an early, weaker one, not from the current generator.", rich_help_panel="Recipe", show_default=False)] = None,
    generated_as_real: Annotated[bool, typer.Option("--generated-as-real", metavar=FLAG, help="Discriminator phase, with --old-generator: half of the real windows carry the current generator's middle frame, labelled real (a good prediction is normal).", rich_help_panel="Recipe")] = False,
    local_labels: Annotated[bool, typer.Option("--local-labels", metavar=FLAG, help="Discriminator phase (beyond the paper): a local pseudo-anomaly (patch, fast-region, fast-tube, fast-person) is labelled fake only in the discriminator's patches it covers, real in the others, so that D learns where (on Ped2 it did, but its score and map were no better: docs/discriminator.md).", rich_help_panel="Recipe")] = False,
    preset: Annotated[str, typer.Option(hidden=True, help="Network size: paper (Table 1) or tiny (tests).")] = "paper",
) -> None:
    """Train both networks on normal footage of one camera, the paper's way; write a weights file."""
    from .train import TrainingInterrupted, TrainOptions, is_recalibration, train as run_train
    from .training.budget import parse_duration

    try:
        seconds = parse_duration(time_budget) if time_budget is not None else None
    except StanError as e:
        fail(str(e))
    opts = TrainOptions(
        data=data, out=out_file, pretrain_epochs=pretrain_epochs, epochs=epochs, discriminator_epochs=discriminator_epochs, lr=lr, batch_size=batch_size,
        lam=lam, val_clips=val_clips, false_alarm_rate=false_alarm_rate, device=device, precision=precision,
        seed=seed, workers=workers, checkpoint_every=checkpoint_every, checkpoint_dir=checkpoint_dir,
        resume=resume, overwrite=overwrite, preset=preset, init=init, reset_discriminator=reset_discriminator, pixel_norm=pixel_norm, name=name,
        time_budget=seconds, time_shares=time_shares,
        # absolute: a resumed run finds it from any folder, and the weights record says which file it was
        old_generator=str(old_generator.resolve()) if old_generator is not None else None, generated_as_real=generated_as_real,
        local_labels=local_labels,
    )
    if pseudo_anomalies is not None:
        opts.pseudo_anomalies = pseudo_anomalies
    if pseudo_share is not None:
        opts.pseudo_share = pseudo_share
    progress = _progress()
    on_event = _TrainDisplay(progress, is_recalibration(opts))
    try:
        with progress:
            result = run_train(opts, on_event)
    except TrainingInterrupted as e:
        err.print(f"[yellow]interrupted:[/] {escape(str(e))}", highlight=False)
        raise typer.Exit(130)
    except StanError as e:
        fail(str(e))
    except OSError as e:  # the system refused a read or write nobody turned into a StanError
        fail(train_os_error(e, opts))
    except KeyboardInterrupt:  # before the run's own Ctrl-C handling began (reading the footage) or after it ended
        if (opts.ckpt_dir / "last.safetensors").exists():
            err.print("[yellow]interrupted[/]: continue from the last checkpoint with --resume")
        else:
            err.print("[yellow]interrupted[/] before the first checkpoint: run the same command again to start")
        raise typer.Exit(130)
    if result is None:  # a non-zero rank of a distributed run
        return
    _print_train_result(result)


class _TrainDisplay:
    """stan train's on_event: progress bars and one line per event (the Python API's events, drawn)."""

    def __init__(self, progress, recalibration: bool) -> None:
        self.progress, self.recalibration = progress, recalibration
        self.task: dict = {"id": None}

    def __call__(self, kind: str, **info) -> None:
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(info)

    def _say(self, text: str, **kw) -> None:
        self.progress.console.print(text, **kw)

    def _close_bar(self) -> None:
        if self.task["id"] is not None:
            self.progress.remove_task(self.task["id"])
            self.task["id"] = None

    def _on_warning(self, info: dict) -> None:
        self._say(f"[yellow]warning:[/] {escape(info['message'])}", highlight=False)

    def _on_decode(self, info: dict) -> None:
        task = self.task
        if task["id"] is None:
            task["id"] = self.progress.add_task("decoding footage", total=info["total"], info="")
            task["decode_total"] = info["total"]
        self.progress.update(task["id"], completed=info["done"], info=f"at {escape(Path(info['name']).name)}")

    def _on_data(self, info: dict) -> None:
        if self.task["id"] is not None:
            self.progress.update(self.task["id"], completed=self.task["decode_total"], info="")  # every clip is read
            self._close_bar()
        skipped = f", {info['skipped']} skipped" if info["skipped"] else ""
        if self.recalibration:  # nothing is trained: every window is scored for the calibration
            self._say(f"{_count(info['clips'], 'clip')}: {_count(info['train_windows'], 'window')} to calibrate on{skipped}")
        elif info["clips"] == 1 and info["val_windows"]:  # a lone clip: its tail is held out
            self._say(
                f"1 clip: {_count(info['train_windows'], 'training window')}, "
                f"{_count(info['val_windows'], 'validation window')} from its end{skipped}"
            )
        else:
            self._say(
                f"{_count(info['clips'], 'clip')}: {_count(info['train_windows'], 'training window')} "
                f"from {_count(info['train_clips'], 'clip')}, {_count(info['val_windows'], 'validation window')} "
                f"from {_count(info['val_clips'], 'clip')}{skipped}"
            )

    def _on_epoch_start(self, info: dict) -> None:
        planned = info["epochs"] is not None  # None under --time: the phase runs until its part of the time ends
        if resumed := self.task.pop("resume", None):
            of_epochs = f" of {info['epochs']}" if planned else ""
            self._say(
                f"resuming at step {resumed['step']} from {escape(resumed['checkpoint'])}: {info['phase']} epoch "
                f"{info['epoch'] + 1}{of_epochs}, batch {info['done']} of {info['steps']} done",
                highlight=False,
            )
        self._close_bar()
        of = f"/{info['epochs']}" if planned else ""
        self.task["id"] = self.progress.add_task(
            f"{info['phase']} {info['epoch'] + 1}{of}", total=info["steps"], completed=info["done"], info=""
        )

    def _on_step(self, info: dict) -> None:
        text = " ".join(f"{k.removeprefix('loss_')}={v:.4g}" for k, v in info["losses"].items() if v == v)  # NaN: not computed
        self.progress.update(
            self.task["id"], completed=info["batch"], info=f"{text} {info['samples_per_s']:.1f} samples/s", left=info["seconds_left"]
        )

    def _on_plan(self, info: dict) -> None:
        self._say(escape(info["text"]), highlight=False)

    def _on_epoch_end(self, info: dict) -> None:
        mark = " [green](selected)[/]" if info["selected"] else ""
        if "epoch_fraction" in info:  # --time ended the phase inside this epoch: its bar ends here
            mark = f" ({100 * info['epoch_fraction']:.0f} % of it, as --time ended the phase){mark}"
            self._close_bar()
        if math.isnan(info["val_pixel"]):  # no held-out clips: nothing measured, the latest epoch is kept
            verdict = "no validation windows" + (", the latest epoch is kept" if info["selected"] else "")
            self._say(f"{info['phase']} epoch {info['epoch']}: {verdict}")
        elif info["phase"] == "discriminator":  # what its selection rule minimises
            motion = (
                f", {info['val_d_pseudo']:.4g} on pseudo-anomalies; d score ranks them above normal windows "
                f"in {100 * info['val_pseudo_auc']:.1f} % of pairs" if "val_d_pseudo" in info else ""
            )
            self._say(
                f"discriminator epoch {info['epoch']}: validation discriminator loss "
                f"{info.get('val_loss_d', info['val_d'] + info['val_d_fake']):.4g} ({info['val_d']:.4g} on real, "
                f"{self._generated_terms(info)}{motion}; chance 1.386){mark}"
            )
        else:
            self._say(f"{info['phase']} epoch {info['epoch']}: validation pixel loss {info['val_pixel']:.5g}, -log D {info['val_d']:.4g}{mark}")

    @staticmethod
    def _generated_terms(info: dict) -> str:
        """The generated windows' terms of the discriminator's validation loss, as the run mixes them."""
        if "val_d_old" not in info:
            return f"{info['val_d_fake']:.4g} on generated windows"
        real = f", {info['val_d_generated_real']:.4g} on generated windows as real" if "val_d_generated_real" in info else ""
        return f"{info['val_d_old']:.4g} on the old generator's windows{real}"

    def _on_resume(self, info: dict) -> None:  # said where the run goes on from: the first epoch, or the calibration
        self.task["resume"] = info

    def _on_calibrate(self, info: dict) -> None:
        if resumed := self.task.pop("resume", None):
            self._say(
                f"resumed at step {resumed['step']} from {escape(resumed['checkpoint'])}: no epoch left to train, "
                "the run is finished as it stands", highlight=False,
            )
        self._say(f"calibrating on {info['windows']} windows ({escape(info['source'])})", highlight=False)


def _print_train_result(result) -> None:
    """The closing table of a finished run, and where the weights are."""
    table = Table(title="stan train", show_header=False)
    table.add_row("weights", str(result.out))
    sel = result.selected
    if sel:
        val = sel.get("val_pixel")
        val_text = f"val pixel {val:.4g}" if val is not None and val == val else "no validation windows"  # NaN: none
        if sel.get("phase") == "discriminator" and val == val:
            val_text = f"val discriminator loss {sel.get('val_loss_d', sel['val_d'] + sel['val_d_fake']):.4g}, {val_text}"
        table.add_row("selected", f"{sel.get('phase')} epoch {sel.get('epoch')} (step {sel.get('step')}), {val_text}")
    table.add_row("lambda_s", f"{result.calibration['lambda_s']:.4g}")
    from .detect import calibration_label

    table.add_row("threshold (gd)", f"{result.calibration['kinds']['gd']['threshold']:.5g} ({calibration_label(result.calibration)})")
    table.add_row("steps / wall time", f"{result.steps} / {result.wall_s / 60:.1f} min")
    if written := [str(p) for p in (result.log, result.plot) if p is not None]:  # a recalibration writes neither
        table.add_row("loss log / plot", " / ".join(written))
    out.print(table)
    out.print(f"Weights written to [bold]{escape(str(result.out))}[/]", highlight=False)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


# ------------------------------------------------------------------------------------------- eval


@app.command("eval", cls=_Command, epilog=_examples(
    "stan eval ../shared/data/ped2/testing --out results/",
    "stan eval ./labelled_clips --weights mycam.safetensors --out results/",
))
def eval_(
    test_dir: Annotated[Path, typer.Argument(metavar="TEST_DIR", help="Test folder: frames/<clip>/ + labels (*.m, *.mat, labels.json/csv) + optional masks/<clip>/, or videos + labels.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Results folder to write.")],
    weights: WeightsOption = None,
    labels: Annotated[Optional[Path], typer.Option(help="Labels file: MATLAB .m/.mat (1-based, clip order), JSON {clip: [[start, end]]} or CSV clip,start,end (0-based; a clip with no abnormal frame: clip,,) \\[default: found in TEST_DIR].")] = None,
    overwrite: OverwriteOption = False,
    device: DeviceOption = "auto",
    batch_size: BatchSizeOption = 8,
    precision: PrecisionOption = "fp32",
    paper: Annotated[str, typer.Option(metavar="[auto|ped1|ped2|avenue|none]", help="Whose numbers of the paper (Tables 2 and 3) stand beside ours; auto: the data set the labels file or TEST_DIR is named after (UCSDped1.m, .../ped2/testing) when the frames have its size; none otherwise.")] = "auto",
) -> None:
    """Score a labelled test set and report frame-, event- and pixel-level results beside the paper's."""
    from .evaluate import evaluate

    warn_precision(device, precision)

    progress = _progress()
    tasks: dict[str, int] = {}

    def on_progress(stage: str, done: int, total: int | None) -> None:
        if stage == "clips":
            if "clips" not in tasks:
                tasks["clips"] = progress.add_task("clips", total=total, info="")
            progress.update(tasks["clips"], completed=done)
            return
        clip = stage.removeprefix("frames:")
        if stage not in tasks:
            for old in [k for k in tasks if k != "clips"]:
                progress.remove_task(tasks.pop(old))
            tasks[stage] = progress.add_task(f"clip {escape(str(clip))}", total=total, info="frames")
        progress.update(tasks[stage], completed=done, total=total if total and total >= done else None)

    try:
        with progress:
            r = evaluate(
                test_dir, weights=weights, out=out_dir, labels=labels, device=device, batch_size=batch_size,
                precision=precision, overwrite=overwrite, paper=paper, on_progress=on_progress,
            )
    except StanError as e:
        fail(str(e))
    except OSError as e:  # the system refused a read or write nobody turned into a StanError
        fail(os_error_message(e))
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        raise typer.Exit(130)

    table = _eval_table(r)
    out.print(table)
    out.print(f"[dim]labels: {escape(r['labels']['file'])} ({r['labels']['format']})[/]", highlight=False)
    if r["paper"]:
        out.print(f"[dim]paper: {r['paper']['dataset']}, chosen by {escape(r['paper']['chosen_by'])}; {r['paper']['note']} (--paper to change)[/]", highlight=False)
    for message in r.get("warnings", []):
        err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)
    out.print(f"Results written to [bold]{escape(str(out_dir))}[/] (results.json, roc.png, per_clip.csv, scores/)", highlight=False)


def _pct(x) -> str:
    return "-" if x is None or x != x else f"{100 * x:.1f} %"


def _eval_table(r: dict) -> Table:
    """stan eval's console table from results.json's content: the headline, the reference, the variants."""
    paper = r["paper"]
    fl = r["frame_level"]
    table = Table(title=f"stan eval: {_count(r['clips'], 'clip')}, {r['scored_frames']} of {r['frames']} frames scored, {r['abnormal_frames']} labelled abnormal")
    table.add_column("metric")
    table.add_column("ours", justify="right")
    if paper:
        table.add_column(f"paper ({paper['dataset'].removeprefix('UCSD ').removeprefix('CUHK ')})", justify="right")

    def row(metric: str, ours: str, theirs: str = "") -> None:
        table.add_row(metric, ours, *([theirs] if paper else []))

    for kind, name in (("g", "generator"), ("d", "discriminator"), ("gd", "both")):
        row(f"frame AUC, pooled, {kind} ({name})", _pct(fl[kind]["pooled"]["auc"]), _pct(paper["frame_auc"][kind]) if paper else "")
    row("frame AUC, pooled, frame difference (no learning)", _pct(fl["frame_difference"]["pooled"]["auc"]))
    for kind in ("g", "d", "gd"):
        skipped = len(fl[kind]["macro"]["skipped_clips"])
        row(f"frame AUC, macro, {kind}", _pct(fl[kind]["macro"]["auc"]) + (f" ({skipped} clip{'s' if skipped != 1 else ''} skipped)" if skipped else ""))
    row("frame EER, pooled, gd", _pct(fl["gd"]["pooled"]["eer"]))
    if "gd_calibration_lambda" in fl:
        row("frame AUC, pooled, gd, calibration lambda_s", _pct(fl["gd_calibration_lambda"]["pooled"]["auc"]))
    for kind in ("g", "gd"):
        row(f"frame AUC, pooled, {kind}, L2-norm pixel term (Eq. 5 literally)", _pct(fl[f"{kind}_l2_norm"]["pooled"]["auc"]))
    for kind in ("d", "gd"):
        row(f"frame AUC, pooled, {kind}, largest patch's -log D (variant)", _pct(fl[f"{kind}_patch_max"]["pooled"]["auc"]))
    for kind in ("d", "gd"):
        row(f"frame AUC, pooled, {kind}, -log D on the generated window (variant)", _pct(fl[f"{kind}_generated"]["pooled"]["auc"]))
    ev = r["event_level"]
    pev = paper["event_level"] if paper else None
    row("events: correct / false alarms (precision)", f"{ev['correct']} / {ev['false_alarms']} ({_pct(ev['precision'])})",
        f"{pev['correct']} / {pev['false_alarms']} ({_pct(pev['precision'])})" if pev else "")
    row("events found / ground truth", f"{ev['correct']} / {ev['ground_truth_events']}",
        f"{pev['correct']} / {pev['ground_truth_events']}" if pev else "")
    row("detections: finding an event / all", f"{ev['detections_correct']} / {ev['detections_total']}")
    if ev.get("unscored_events"):
        row("of the events, with no scored frame (first or last 5 of a clip): cannot be found", str(len(ev["unscored_events"])))
    px = r["pixel_level"]
    if px.get("available"):
        row("pixel level (40 % rule): AUC / EDR", f"{_pct(px['auc'])} / {_pct(px['edr'])}")
    row("lambda_s", f"{r['lambda_s']:.4g} (test set)")
    row("time", f"{r['timings']['wall_s']:.1f} s ({r['timings']['frames_per_s'] or 0:.1f} frames/s)")
    return table


# ---------------------------------------------------------------------------------------- explain


@app.command(cls=_Command, epilog=_examples(
    "stan explain clip.mp4 --frame 120",
    "stan explain ./frames --frame 94 --out explain/ --weights mycam.safetensors",
))
def explain(
    video: Annotated[Path, typer.Argument(metavar="VIDEO", help="Video file or frame folder.")],
    frame: Annotated[int, typer.Option(help="0-based frame index to explain (needs 5 frames on each side).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the panel and maps to.")] = Path("explain"),
    weights: WeightsOption = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    fps: Annotated[Optional[float], typer.Option(help="Frame rate of a frame folder \\[default: 25] (or override a video's).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", metavar=FLAG, help="Write into a folder that already holds files.")] = False,
    score: Annotated[str, typer.Option(help="Score for the verdict, as in detect: g, d or gd.")] = "gd",
    threshold: Annotated[Optional[str], typer.Option(help="Threshold for the verdict, as in detect: a number or 'calibrated'.")] = "calibrated",
) -> None:
    """Real frame, generated frame, pixel-loss map and guided-backprop map for one moment."""
    from .explain import explain as run_explain

    try:
        with err.status(f"explaining frame {frame} of {video.name}"):
            result = run_explain(video, frame, out=out_dir, weights=weights, device=device, fps=fps, overwrite=overwrite,
                                 score=score, threshold=threshold)
    except StanError as e:
        fail(str(e))
    except OSError as e:  # the system refused a read or write nobody turned into a StanError
        fail(os_error_message(e))
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        raise typer.Exit(130)
    v = result.values
    table = Table(title=escape(f"stan explain: {video.name}, frame {frame} ({v['time_s']:.2f} s)"), show_header=False)
    table.add_row("pixel loss", f"{v['pixel_loss']:.5g}")
    table.add_row("-log D(S_t)", f"{v['d_loss']:.5g}")
    if v["abnormal"] is not None:
        verdict = "[red]abnormal[/]" if v["abnormal"] else "normal"
        table.add_row(f"score ({v['score_kind']})", f"{v['score_raw']:.5g} vs threshold {v['threshold']:.5g} ({v['threshold_source']}): {verdict}")
    else:
        if v["score_raw"] is not None:
            table.add_row(f"score ({v['score_kind']})", f"{v['score_raw']:.5g}")
        table.add_row("verdict", escape(v["note"]))
    for message in v.get("warnings", []):
        err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)
    out.print(table)
    out.print(f"Results written to [bold]{escape(str(out_dir))}[/] (panel.png, maps as .npy)", highlight=False)


def _stop_like_ctrl_c(signum, frame) -> None:
    raise KeyboardInterrupt


def stop_on_termination() -> None:
    """SIGTERM (kill, timeout, docker stop) and SIGHUP (a closed terminal) stop a command the way
    Ctrl-C does: temporary files are removed, earlier reports stay as they were, exit code 130.
    Without this Python would die on the spot and leave its hidden temporaries behind. A signal
    the process was started to ignore (`nohup` ignores SIGHUP) stays ignored."""
    for name in ("SIGTERM", "SIGHUP"):  # SIGHUP does not exist on Windows
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:  # nohup's ignored SIGHUP stays ignored
            signal.signal(sig, _stop_like_ctrl_c)


def empty_argument(argv: list[str]) -> str | None:
    """What is wrong with a command line holding an empty argument ("" or --out=), or None. An unset
    shell variable ("$CLIP") gives one, and as a path it would name the current folder: `stan detect ""`
    would score every video there, `--out ""` write into it."""
    for k, arg in enumerate(argv):
        if arg == "" or (arg.startswith("--") and arg.endswith("=")):
            where = f" for {arg[:-1]}" if arg else (f" after {argv[k - 1]}" if k else "")
            return (f"an empty argument{where}: nothing is read or written for it, since as a path it would name "
                    "the current folder. Give the path or value (an unset shell variable gives an empty one).")
    return None


def run() -> None:
    """The `stan` console script: `app` with termination signals handled."""
    stop_on_termination()
    message = empty_argument(sys.argv[1:])
    if message:
        err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
        raise SystemExit(2)
    app()


if __name__ == "__main__":  # pragma: no cover
    run()
