"""The `stan` command: parse, call one API function, show progress and a summary, map errors.

Exit codes: 0 success, 1 a problem with the user's input/weights/output (one red line on
stderr, no traceback), 2 usage errors (Typer's own), 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__
from .errors import StanError

app = typer.Typer(
    name="stan",
    help="Offline video anomaly detection with spatio-temporal adversarial networks (STAN).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

# Options shared by several commands, declared once.
WeightsOption = Annotated[Optional[Path], typer.Option(help="Weights file [default: the shipped weights/].")]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Write into a folder that already holds files.", rich_help_panel="Output")]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu or cuda.", rich_help_panel="Machine")]
BatchSizeOption = Annotated[int, typer.Option(help="Windows per forward pass.", rich_help_panel="Machine")]
PrecisionOption = Annotated[str, typer.Option(help="fp32 or bf16.", rich_help_panel="Machine")]


def _version(value: bool) -> None:
    if value:
        out.print(f"stan {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = None,
) -> None:
    """Score every frame of fixed-camera footage, find the segments worth a look, show where."""


def fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )


# ---------------------------------------------------------------------------------------- detect


@app.command()
def detect(
    video: Annotated[Path, typer.Argument(help="Video file (any format ffmpeg reads) or a folder of frames.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Report folder to write.")] = Path("report"),
    weights: WeightsOption = None,
    score: Annotated[str, typer.Option(help="Score that flags frames: g (generator), d (discriminator), gd (both).", rich_help_panel="Flags")] = "gd",
    threshold: Annotated[Optional[float], typer.Option(help="Flag frames whose raw score exceeds this [default: the weights' calibration].", rich_help_panel="Flags")] = None,
    merge_gap: Annotated[int, typer.Option(help="Merge flagged runs separated by at most this many frames.", rich_help_panel="Flags")] = 10,
    min_length: Annotated[int, typer.Option(help="Drop segments shorter than this many frames.", rich_help_panel="Flags")] = 5,
    no_video: Annotated[bool, typer.Option("--no-video", help="Skip the overlay videos (faster, for batch scoring).", rich_help_panel="Output")] = False,
    overwrite: OverwriteOption = False,
    fps: Annotated[Optional[float], typer.Option(help="Frame rate of a frame folder [default: 25] (or override a video's).", rich_help_panel="Output")] = None,
    device: DeviceOption = "auto",
    batch_size: BatchSizeOption = 8,
    precision: PrecisionOption = "fp32",
) -> None:
    """Score every frame of a video, flag abnormal segments, write a report folder."""
    from .detect import detect as run_detect

    progress = _progress()
    tasks: dict[str, int] = {}
    started: dict[str, float] = {}

    def on_progress(stage: str, done: int, total: int | None) -> None:
        import time

        if stage not in tasks:
            label = {"score": "scoring", "overlay": "overlay video"}[stage]
            tasks[stage] = progress.add_task(label, total=total, info="")
            started[stage] = time.perf_counter()
        rate = done / max(time.perf_counter() - started[stage], 1e-9)
        progress.update(tasks[stage], completed=done, total=total if total and total >= done else None, info=f"{rate:.1f} frames/s")

    try:
        with progress:
            result = run_detect(
                video, out=out_dir, weights=weights, score=score, threshold=threshold, device=device,
                batch_size=batch_size, precision=precision, fps=fps, write_video=not no_video,
                overwrite=overwrite, merge_gap=merge_gap, min_length=min_length, on_progress=on_progress,
            )
    except StanError as e:
        fail(str(e))
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        raise typer.Exit(130)
    for message in result.warnings:
        err.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
    s = result.summary
    table = Table(title=f"stan detect: {video.name}", show_header=False)
    table.add_row("frames", f"{result.n_frames} ({s['scored_frames']} scored), {result.info.fps:g} fps, {result.info.width}x{result.info.height}")
    table.add_row("weights", f"{s['weights']['file']}")
    table.add_row("threshold", f"{result.threshold:.5g} ({result.threshold_source})")
    table.add_row("abnormal frames", str(s["abnormal_frames"]))
    for k, seg in enumerate(s["segments"][:10], start=1):
        table.add_row(f"segment {k}", f"{seg['start_s']:.1f}-{seg['end_s']:.1f} s (frames {seg['start_frame']}-{seg['end_frame']}), peak {seg['peak_score']:.4g} at {seg['peak_time_s']:.1f} s")
    if len(s["segments"]) > 10:
        table.add_row("", f"... {len(s['segments']) - 10} more in segments.csv")
    if not s["segments"]:
        table.add_row("segments", "none flagged")
    t = s["timings"]
    table.add_row("time", f"{t['total_s']:.1f} s ({t['scoring_s']:.1f} s scoring, {result.n_frames / max(t['scoring_s'], 1e-9):.1f} frames/s)")
    out.print(table)
    out.print(f"Results written to [bold]{out_dir}[/] (open {out_dir / 'index.html'})", soft_wrap=True, highlight=False)


# ----------------------------------------------------------------------------------------- train


@app.command()
def train(
    data: Annotated[Path, typer.Argument(help="Normal footage: a frame folder, a folder of clip folders, or of videos.")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="Weights file to write.")] = Path("model.safetensors"),
    pretrain_epochs: Annotated[Optional[int], typer.Option(help="Epochs of the generator alone on the pixel loss [default: 10; on --resume the run's own].", rich_help_panel="Recipe", show_default=False)] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Adversarial epochs, generator and discriminator alternately [default: 20; on --resume the run's own].", rich_help_panel="Recipe", show_default=False)] = None,
    lr: Annotated[float, typer.Option(help="Adam learning rate.", rich_help_panel="Recipe")] = 2e-4,
    batch_size: Annotated[int, typer.Option(help="Windows per step (per process).", rich_help_panel="Recipe")] = 3,
    lam: Annotated[float, typer.Option("--lambda", help="Weight of the pixel loss in L_G.", rich_help_panel="Recipe")] = 1.0,
    val_clips: Annotated[int, typer.Option(help="Normal clips held out for model selection and calibration.", rich_help_panel="Selection")] = 2,
    false_alarm_rate: Annotated[float, typer.Option(help="Calibrated threshold's false-alarm rate on held-out normal windows.", rich_help_panel="Selection")] = 0.01,
    device: DeviceOption = "auto",
    precision: Annotated[str, typer.Option(help="fp32 or bf16 (autocast; about 2x faster on CPU).", rich_help_panel="Machine")] = "fp32",
    workers: Annotated[int, typer.Option(help="Data-loading worker processes.", rich_help_panel="Machine")] = 0,
    seed: Annotated[int, typer.Option(help="Seed for initialisation and data order.", rich_help_panel="Machine")] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints (also at every epoch end).", rich_help_panel="Checkpoints")] = 200,
    checkpoint_dir: Annotated[Optional[Path], typer.Option(help="Where checkpoints go [default: <out>.ckpt/].", rich_help_panel="Checkpoints")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run whose checkpoint is in the checkpoint folder.", rich_help_panel="Checkpoints")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out and start a new run.", rich_help_panel="Checkpoints")] = False,
    preset: Annotated[str, typer.Option(hidden=True, help="Network size: paper (Table 1) or tiny (tests).")] = "paper",
) -> None:
    """Train both networks on normal footage of one camera, the paper's way; write a weights file."""
    from .train import TrainingInterrupted, TrainOptions, train as run_train

    opts = TrainOptions(
        data=data, out=out_file, pretrain_epochs=pretrain_epochs, epochs=epochs, lr=lr, batch_size=batch_size,
        lam=lam, val_clips=val_clips, false_alarm_rate=false_alarm_rate, device=device, precision=precision,
        seed=seed, workers=workers, checkpoint_every=checkpoint_every, checkpoint_dir=checkpoint_dir,
        resume=resume, overwrite=overwrite, preset=preset,
    )
    progress = _progress()
    task = {"id": None}

    def on_event(kind: str, **info) -> None:
        if kind == "warning":
            progress.console.print(f"[yellow]warning:[/] {info['message']}", highlight=False)
        elif kind == "decode":
            if task["id"] is None:
                task["id"] = progress.add_task("decoding footage", total=info["total"], info="")
            progress.update(task["id"], completed=info["done"], info=Path(info["name"]).name)
        elif kind == "data":
            if task["id"] is not None:
                progress.remove_task(task["id"])
                task["id"] = None
            progress.console.print(
                f"{info['clips']} clips: {info['train_windows']} training windows from {info['train_clips']} clips, "
                f"{info['val_windows']} validation windows from {info['val_clips']}"
                + (f", {info['skipped']} skipped" if info["skipped"] else "")
            )
        elif kind == "epoch_start":
            if task["id"] is not None:
                progress.remove_task(task["id"])
            task["id"] = progress.add_task(
                f"{info['phase']} {info['epoch'] + 1}/{info['epochs']}", total=info["steps"], completed=info["done"], info=""
            )
        elif kind == "step":
            text = " ".join(f"{k.removeprefix('loss_')}={v:.4g}" for k, v in info["losses"].items())
            progress.update(task["id"], completed=info["batch"], info=f"{text} {info['samples_per_s']:.1f} samples/s")
        elif kind == "epoch_end":
            mark = " [green](selected)[/]" if info["selected"] else ""
            progress.console.print(
                f"{info['phase']} epoch {info['epoch']}: validation pixel loss {info['val_pixel']:.5g}, "
                f"-log D {info['val_d']:.4g}{mark}"
            )
        elif kind == "calibrate":
            progress.console.print(f"calibrating on {info['windows']} {info['source']} windows")

    try:
        with progress:
            result = run_train(opts, on_event)
    except TrainingInterrupted as e:
        err.print(f"[yellow]interrupted:[/] {e}", highlight=False)
        raise typer.Exit(130)
    except StanError as e:
        fail(str(e))
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: continue from the last checkpoint with --resume")
        raise typer.Exit(130)
    if result is None:  # a non-zero rank of a distributed run
        return
    table = Table(title="stan train", show_header=False)
    table.add_row("weights", str(result.out))
    sel = result.selected
    if sel:
        table.add_row("selected", f"{sel.get('phase')} epoch {sel.get('epoch')} (step {sel.get('step')}), val pixel {sel.get('val_pixel')}")
    table.add_row("lambda_s", f"{result.calibration['lambda_s']:.4g}")
    table.add_row("threshold (gd)", f"{result.calibration['kinds']['gd']['threshold']:.5g} at {result.calibration['false_alarm_rate']:.1%} false alarms")
    table.add_row("steps / wall time", f"{result.steps} / {result.wall_s / 60:.1f} min")
    table.add_row("loss log / plot", f"{result.log} / {result.plot}")
    out.print(table)
    out.print(f"Weights written to [bold]{result.out}[/]", soft_wrap=True, highlight=False)


# ------------------------------------------------------------------------------------------- eval


@app.command("eval")
def eval_(
    test_dir: Annotated[Path, typer.Argument(help="Test folder: frames/<clip>/ + labels (*.m, *.mat, labels.json/csv) + optional masks/<clip>/, or videos + labels.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Results folder to write.")],
    weights: WeightsOption = None,
    labels: Annotated[Optional[Path], typer.Option(help="Labels file: MATLAB .m/.mat (1-based, clip order), JSON {clip: [[start, end]]} or CSV clip,start,end (0-based) [default: found in TEST_DIR].")] = None,
    overwrite: OverwriteOption = False,
    device: DeviceOption = "auto",
    batch_size: BatchSizeOption = 8,
    precision: PrecisionOption = "fp32",
) -> None:
    """Score a labelled test set and report frame-, event- and pixel-level results beside the paper's."""
    from .evaluate import evaluate

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
            tasks[stage] = progress.add_task(f"clip {clip}", total=total, info="frames")
        progress.update(tasks[stage], completed=done, total=total if total and total >= done else None)

    try:
        with progress:
            r = evaluate(
                test_dir, weights=weights, out=out_dir, labels=labels, device=device, batch_size=batch_size,
                precision=precision, overwrite=overwrite, on_progress=on_progress,
            )
    except StanError as e:
        fail(str(e))
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        raise typer.Exit(130)

    def pct(x) -> str:
        return "-" if x is None or x != x else f"{100 * x:.1f} %"

    paper = r["paper_ped2"]
    fl = r["frame_level"]
    table = Table(title=f"stan eval: {r['clips']} clips, {r['scored_frames']} of {r['frames']} frames scored, {r['abnormal_frames']} abnormal")
    table.add_column("metric")
    table.add_column("ours", justify="right")
    table.add_column("paper (Ped2)", justify="right")
    for kind, name in (("g", "generator"), ("d", "discriminator"), ("gd", "both")):
        table.add_row(f"frame AUC, pooled, {kind} ({name})", pct(fl[kind]["pooled"]["auc"]), pct(paper["frame_auc"][kind]))
    for kind in ("g", "d", "gd"):
        skipped = len(fl[kind]["macro"]["skipped_clips"])
        table.add_row(f"frame AUC, macro, {kind}", pct(fl[kind]["macro"]["auc"]) + (f" ({skipped} clips skipped)" if skipped else ""), "")
    table.add_row("frame EER, pooled, gd", pct(fl["gd"]["pooled"]["eer"]), "")
    if "gd_calibration_lambda" in fl:
        table.add_row("frame AUC, pooled, gd, calibration lambda_s", pct(fl["gd_calibration_lambda"]["pooled"]["auc"]), "")
    ev, pev = r["event_level"], paper["event_level"]
    table.add_row(
        "events: correct / false alarms (precision)",
        f"{ev['correct']} / {ev['false_alarms']} ({pct(ev['precision'])})",
        f"{pev['correct']} / {pev['false_alarms']} ({pct(pev['precision'])})",
    )
    table.add_row("events detected / ground truth", f"{ev['events_detected']} / {ev['ground_truth_events']}", f"- / {pev['ground_truth_events']}")
    px = r["pixel_level"]
    if px.get("available"):
        table.add_row("pixel level (40 % rule): AUC / EDR", f"{pct(px['auc'])} / {pct(px['edr'])}", "")
    table.add_row("lambda_s", f"{r['lambda_s']:.4g} (test set)", "")
    table.add_row("time", f"{r['timings']['wall_s']:.1f} s ({r['timings']['frames_per_s'] or 0:.1f} frames/s)", "")
    out.print(table)
    out.print(f"Results written to [bold]{out_dir}[/] (results.json, roc.png, per_clip.csv, scores/)", soft_wrap=True, highlight=False)


# ---------------------------------------------------------------------------------------- explain


@app.command()
def explain(
    video: Annotated[Path, typer.Argument(help="Video file or frame folder.")],
    frame: Annotated[int, typer.Option(help="0-based frame index to explain (needs 5 frames on each side).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the panel and maps to.")] = Path("explain"),
    weights: WeightsOption = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    fps: Annotated[Optional[float], typer.Option(help="Frame rate of a frame folder [default: 25].")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into a folder that already holds files.")] = False,
) -> None:
    """Real frame, generated frame, pixel-loss map and guided-backprop map for one moment."""
    from .explain import explain as run_explain

    try:
        with err.status(f"explaining frame {frame} of {video.name}"):
            result = run_explain(video, frame, out=out_dir, weights=weights, device=device, fps=fps, overwrite=overwrite)
    except StanError as e:
        fail(str(e))
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        raise typer.Exit(130)
    v = result.values
    table = Table(title=f"stan explain: {video.name}, frame {frame} ({v['time_s']:.2f} s)", show_header=False)
    table.add_row("pixel loss", f"{v['pixel_loss']:.5g}")
    table.add_row("-log D(S_t)", f"{v['d_loss']:.5g}")
    if v.get("score_raw") is not None:
        verdict = "[red]abnormal[/]" if v["abnormal"] else "normal"
        table.add_row("score (gd)", f"{v['score_raw']:.5g} vs threshold {v['threshold']:.5g}: {verdict}")
    else:
        table.add_row("score", v["note"])
    out.print(table)
    out.print(f"Results written to [bold]{out_dir}[/] (panel.png, maps as .npy)", soft_wrap=True, highlight=False)


if __name__ == "__main__":  # pragma: no cover
    app()
