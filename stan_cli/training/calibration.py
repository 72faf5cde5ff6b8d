"""Calibration and the training record: what the weights file says about the run.

The selected state scores the validation windows (or, without enough, the training windows, which
is said in the metadata; a recalibration scores every window of its footage) and
`scoring.calibrate` stores lambda_s, the statistics of each score and a threshold at the chosen
false-alarm rate.
"""

from __future__ import annotations

import math
import os
import platform
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from .. import __version__, scoring
from ..dataset import Clip, WindowSet
from ..errors import TrainingError
from ..model import WINDOW
from .clock import budget_summary
from .resume import init_record
from .options import TrainOptions, final_phase, is_recalibration
from .selection import D_SELECTION_RULE, SELECTION_RULE

RECALIBRATION = "recalibration: every window of the footage (--init weights, no epoch trained in this run)"


def calibration_clips(
    opts: TrainOptions, progress: dict, train_clips: list[Clip], val_clips: list[Clip], warn: Callable[[str], None]
) -> tuple[list[Clip], str, list[str]]:
    """The clips the threshold comes from, where they come from (the metadata's `source`), and
    those of them the networks trained on; a warning for each way the threshold may mislead."""
    trained_on: list[str] = []
    if is_recalibration(opts):  # nothing was trained here: every window is scored, whatever it is
        clips, source = train_clips + val_clips, RECALIBRATION
        trained_on = clips_trained_on(init_record(progress.get("init")), clips)
        if trained_on:
            warn(_in_sample_warning(trained_on, len(clips)))
    elif len(WindowSet(val_clips)) >= 2:
        clips, source = val_clips, "validation"
    else:
        clips, source = train_clips, "training (too little validation data)"
        warn(
            f"{opts.data}: no held-out normal footage to calibrate on (--val-clips {opts.val_clips}; a lone clip "
            f"holds out its last 15 % only from {4 * WINDOW} frames up), so the threshold comes from the training "
            "windows themselves and will flag more than the asked false-alarm rate on new normal footage. "
            "Give more or longer clips, or choose --threshold in detect."
        )
    n, need = len(WindowSet(clips)), math.ceil(1 / opts.false_alarm_rate)
    if n < need and clips is not train_clips:  # (calibrating on the training windows is warned about above)
        warn(
            f"{opts.data}: the threshold comes from only {n} normal window{'' if n == 1 else 's'}; a "
            f"false-alarm rate of {opts.false_alarm_rate:g} needs at least {need} to mean anything. "
            + ("Recalibrate on more footage" if clips is not val_clips else "Give more normal footage to hold out (more or longer clips)")
            + ", or choose --threshold in detect."
        )
    return clips, source, trained_on


def _in_sample_warning(trained_on: list[str], n: int) -> str:
    k = len(trained_on)
    which = "the clip was" if n == 1 else f"all {n} clips were" if k == n else f"{k} of the {n} clips were"
    return (
        f"{which} training footage of the --init weights "
        f"({', '.join(Path(c).name for c in trained_on[:4])}{', ...' if len(trained_on) > 4 else ''}): the "
        "threshold is in-sample for those, so new normal footage may exceed it more often than "
        "--false-alarm-rate. Calibrate on footage the networks never saw when you can."
    )


def clips_trained_on(init: dict | None, clips: list[Clip]) -> list[str]:
    """The clips (sources) that some run in the --init file's history trained on: the same path,
    as far as paths recorded relative to another working folder still resolve here."""
    seen: set[Path] = set()
    record = init
    while record and record.get("training"):
        training = record["training"]
        if training.get("steps"):  # a recalibration in the history trained nothing
            seen.update(Path(c).resolve() for c in training.get("train_clips") or [])
        record = training.get("init")
    return [c.source for c in clips if Path(c.source).resolve() in seen]


def calibrate(
    opts: TrainOptions, pixel: np.ndarray, d: np.ndarray, clips: list[Clip], source: str, trained_on: list[str]
) -> dict:
    """The weights' calibration from the selected networks' scores on the calibration clips."""
    try:
        calibration = scoring.calibrate(pixel, d, opts.false_alarm_rate)
    except ValueError as err:
        raise TrainingError(f"{opts.data}: cannot calibrate on {source} windows ({err}).") from None
    calibration["source"] = source
    calibration["clips"] = [c.source for c in clips]
    if trained_on:
        calibration["trained_on"] = trained_on
    return calibration


def training_record(opts: TrainOptions, progress: dict, train_clips: list[Clip], device, warnings: list[str]) -> dict:
    """The weights' `training` metadata: how they were made, what was selected, on what machine."""
    return {
        "name": opts.name or f"{opts.out.stem}-{datetime.now(timezone.utc):%Y-%m-%d}",
        "stan_version": __version__,
        "command": " ".join(sys.argv),
        "data": str(opts.data),
        "train_clips": [c.source for c in train_clips],
        "pretrain_epochs": opts.pretrain_epochs,
        "epochs": opts.epochs,
        "discriminator_epochs": opts.discriminator_epochs,
        "steps": progress["step"],
        "options": {k: getattr(opts, k) for k in TrainOptions.RUN_KEYS} | {"precision": opts.precision},
        "selection_rule": D_SELECTION_RULE if final_phase(opts) == "discriminator" else SELECTION_RULE,
        "selected": progress.get("best"),
        "generator_selected": progress.get("generator_selected"),
        "init": init_record(progress.get("init")),
        "old_generator": progress.get("old_generator"),  # --old-generator's file and sha256
        "wall_s": round(progress["wall_s"], 1),
        "time_budget": budget_summary(progress.get("budget")),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "device": str(device),
            "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        },
        "warnings": warnings,
    }
