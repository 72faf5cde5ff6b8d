"""A run's logs and loss plot: written in the checkpoint folder while it trains, published beside
--out (`NAME.log.csv`, `NAME.val.csv`, `NAME.losses.png`) when it finishes."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np

from .options import TrainOptions, is_recalibration

LOG_FIELDS = ["step", "phase", "epoch", "loss_pixel", "loss_adv", "loss_d", "d_real", "d_fake", "samples_per_s"]
VAL_FIELDS = [
    "step", "phase", "epoch", "val_pixel", "val_d", "selected", "val_d_fake", "val_d_pseudo", "val_loss_d", "val_pseudo_auc",
    "epoch_fraction",  # the part of the epoch trained, when --time ended the phase inside it (empty: a whole epoch)
    "val_d_old",  # -log(1 - D) on windows with --old-generator's middle frame
    "val_d_generated_real",  # -log D on windows with the current generator's middle frame (--generated-as-real)
]


def adopt_logs(opts: TrainOptions) -> None:
    """A run checkpointed before its logs lived in the checkpoint folder kept them beside --out:
    they carry on from the checkpoint folder. (A run's own log holds a row for every step before
    any checkpoint, so an existing one is never an earlier run's.)"""
    if opts.live_log.exists() or not opts.log_path.exists():
        return
    for live, final in opts.side_files:
        if final.exists():
            shutil.copyfile(final, live)


def publish_logs(opts: TrainOptions) -> None:
    """Beside the new weights, the run's logs and plot replace an earlier run's; one this run has
    not (a recalibration trains no step) is removed rather than left describing other weights."""
    for live, final in opts.side_files:
        if live.exists() and not is_recalibration(opts):  # a recalibration's checkpoint folder may hold an earlier run's
            tmp = final.with_name(f".{final.name}.tmp")
            shutil.copyfile(live, tmp)
            os.replace(tmp, final)
        else:
            final.unlink(missing_ok=True)


def restart_logs(opts: TrainOptions, step: int) -> None:
    """On resume, drop log rows past the checkpoint's step: those steps are trained again. The logs
    are written with today's columns (a log begun by an earlier stan gets its new ones empty)."""
    for path, fields in ((opts.live_log, LOG_FIELDS), (opts.live_val_log, VAL_FIELDS)):
        if not path.exists():
            continue
        with open(path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= step]
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fields)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)


def append_row(path: Path, fields: list[str], row: dict) -> None:
    new = not path.exists()  # a log begun by an earlier stan got today's columns from restart_logs
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fields)
        if new:
            writer.writeheader()
        writer.writerow(row)


def log_step(opts: TrainOptions, step: int, phase: str, epoch: int, losses: dict[str, float], rate: float) -> None:
    row = {"step": step, "phase": phase, "epoch": epoch + 1, "samples_per_s": f"{rate:.3f}"}
    row.update({k: f"{v:.6g}" for k, v in losses.items()})
    append_row(opts.live_log, LOG_FIELDS, row)


def log_validation(opts: TrainOptions, record: dict, selected: bool) -> None:
    """One val.csv row: the epoch's validation record (selection.epoch_record) and whether it was kept."""
    numbers = {k: f"{v:.6g}" for k, v in record.items() if k not in ("phase", "epoch", "step")}
    append_row(opts.live_val_log, VAL_FIELDS, {"step": record["step"], "phase": record["phase"], "epoch": record["epoch"], "selected": int(selected), **numbers})


def _val_d_loss(row: dict) -> float:
    """A val.csv row's discriminator loss: with the run's mix of fakes (0.2.0), or real and generated."""
    if row.get("val_loss_d"):
        return float(row["val_loss_d"])
    return float(row["val_d"]) + float(row.get("val_d_fake") or "nan")


def _read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def plot_losses(log: Path, val_log: Path, out: Path) -> None:
    """Loss curves per step (smoothed) and validation pixel loss per epoch, as one PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = _read_rows(log)
    if not rows:
        return
    fig = Figure(figsize=(11, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax, ax_val = fig.subplots(1, 2)
    _plot_training(ax, rows)
    if vrows := _read_rows(val_log):
        _plot_validation(ax_val, vrows)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, out)


def _plot_training(ax, rows: list[dict]) -> None:
    steps = np.array([int(r["step"]) for r in rows])
    for name in ("loss_pixel", "loss_adv", "loss_d"):
        values = np.array([float(r[name]) if r[name] else np.nan for r in rows])
        if np.isfinite(values).any():
            k = max(1, len(values) // 200)
            smooth = np.convolve(np.nan_to_num(values), np.ones(k) / k, mode="same")
            ax.plot(steps, np.where(np.isfinite(values), smooth, np.nan), label=name, lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title("training losses")
    ax.legend()


def _plot_validation(ax_val, vrows: list[dict]) -> None:
    vs = [int(r["step"]) for r in vrows]
    ax_val.plot(vs, [float(r["val_pixel"]) for r in vrows], "o-", label="val pixel (MSE)")
    ax_val.set_xlabel("step")
    ax_val.set_title("validation (normal clips held out)")
    handles, labels = ax_val.get_legend_handles_labels()
    # the discriminator's loss on real and generated windows (logs of earlier stans lack it)
    d_loss = np.array([_val_d_loss(r) for r in vrows])
    if np.isfinite(d_loss).any():
        ax_d = ax_val.twinx()
        ax_d.plot(vs, d_loss, "s--", color="tab:red", label="val discriminator loss (chance 1.386)")
        more = ax_d.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax_val.legend(handles, labels, loc="best", fontsize="small")
