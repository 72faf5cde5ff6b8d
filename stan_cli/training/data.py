"""Train-side data plumbing: the footage decoded once into the checkpoint folder's frame cache,
split into training and held-out validation clips, and each epoch's order of windows."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ..dataset import Clip, WindowSet, load_clips, split_validation
from ..errors import InputError, TrainingError
from ..model import WINDOW
from ..video import images_beside_clips
from .options import Event, TrainOptions, is_recalibration
from .ranks import Rank


def prepare_data(
    opts: TrainOptions, rank: Rank, image_size: int, progress: dict, emit: Event, warn: Callable[[str], None]
) -> tuple[WindowSet, list[Clip], list[Clip]]:
    """The training windows, and the training and validation clips; checked against a resumed
    run's split, recorded in `progress`, and announced (`data` event)."""
    clips, skipped = _load(opts, rank, image_size, emit, warn)
    # a recalibration (see calibration.calibration_clips) scores whole clips: no tail is cut off for validation
    train_clips, val_clips = split_validation(clips, 0 if is_recalibration(opts) else opts.val_clips)
    sources = {"train": [c.source for c in train_clips], "val": [c.source for c in val_clips]}
    if "clips" in progress and progress["clips"] != sources:
        raise TrainingError(
            f"{opts.data}: the footage differs from the run being resumed (clips added, removed or renamed), "
            "which would move clips between training and validation. Resume with the same footage, "
            "or start a new run with another --out."
        )
    progress["clips"] = sources
    lengths = {c.source: len(c.frames) for c in clips}  # whole clips: a lone clip's tail shares its source
    for source, n in progress.get("clip_frames", {}).items():  # recorded since 0.12.0
        if lengths.get(source, n) != n:
            raise TrainingError(
                f"{source}: {lengths[source]} frames now, {n} when the run being resumed began: the epochs' windows "
                "and their order would change under it. Resume with the same footage, or start a new run with another --out."
            )
    progress["clip_frames"] = lengths
    windows = WindowSet(train_clips)
    emit(
        "data",
        clips=len(clips),
        train_clips=len(train_clips),
        val_clips=len(val_clips),
        train_windows=len(windows),
        val_windows=len(WindowSet(val_clips)),
        skipped=skipped,
    )
    if not is_recalibration(opts) and len(WindowSet(val_clips)) < 2 and progress.get("step", 0) == 0 and rank.main:
        emit("warning", message=(  # said before any training; the weights record calibration's own warning
            f"{opts.data}: no held-out normal footage ("
            + ("--val-clips 0" if opts.val_clips == 0 else f"--val-clips {opts.val_clips}; a lone clip holds out its last "
               f"15 % only from {4 * WINDOW} frames up") + "): no epoch is validated (the last one is kept), and the "
            "threshold will come from the training windows themselves. "
            + ("Hold out clips with --val-clips for both." if opts.val_clips == 0 else "Give more or longer clips for both.")
        ))
    if len(windows) < opts.batch_size * rank.world:  # every rank finds the same, so every rank gets here
        n = len(windows)
        rank.barrier()  # no rank still reads the frame cache when rank 0 removes it on the way out
        raise InputError(f"{opts.data}: only {n} training window{'' if n == 1 else 's'}; need at least one batch.")
    return windows, train_clips, val_clips


def _load(opts: TrainOptions, rank: Rank, image_size: int, emit: Event, warn: Callable[[str], None]) -> tuple[list[Clip], int]:
    """Rank 0 decodes the footage into the cache while the others wait, then open it. Returns the
    clips and how many were skipped (each with a warning)."""
    cache = opts.ckpt_dir / "frames"
    skipped: list[str] = []

    def skip(message: str) -> None:  # load_clips warns once per clip it skips
        skipped.append(message)
        warn(message)

    if rank.main:
        if message := images_beside_clips(Path(opts.data)):
            warn(message)
        clips = load_clips(
            opts.data, image_size, cache, warn=skip,
            on_clip=lambda done, total, name: emit("decode", done=done, total=total, name=name),
        )
    rank.barrier()
    if not rank.main:
        clips = load_clips(opts.data, image_size, cache, decode=False)
    return clips, len(skipped)


def epoch_batches(n: int, opts: TrainOptions, phase: str, epoch: int, rank: Rank) -> list[list[int]]:
    """This rank's batches of window indices for one epoch."""
    order = epoch_order(n, opts.seed, phase, epoch, rank)
    return [order[i : i + opts.batch_size] for i in range(0, len(order), opts.batch_size)]


def epoch_order(n: int, seed: int, phase: str, epoch: int, rank: Rank) -> list[int]:
    """A fixed permutation per (seed, phase, epoch), sharded over ranks: resumable and identical."""
    offset = {"pretrain": 0, "adversarial": 500_000, "discriminator": 250_000}[phase]
    g = torch.Generator().manual_seed(seed * 1_000_003 + offset + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    per_rank = n // rank.world
    return perm[rank.rank * per_rank : (rank.rank + 1) * per_rank] if rank.world > 1 else perm
