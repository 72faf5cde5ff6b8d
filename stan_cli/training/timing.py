"""How long a run's parts take on this machine and device: a few training steps of each phase
and one batch of validation windows, timed on copies of the networks.

The copies train with optimisers of their own, inside `torch.random.fork_rng`, and the batches
are read from the footage as the run reads them: the run's networks, optimiser state and random
state are untouched, so timing changes nothing the run trains (tests check it bit for bit).
"""

from __future__ import annotations

import copy
import itertools
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..dataset import Clip, WindowSet
from ..model import WINDOW
from ..weights import save_checkpoint
from ..windows import to_tensor
from .budget import Costs
from .data import epoch_batches
from .fakes import generated_real_rows, pseudo_batch
from .options import TrainOptions, pseudo_plan
from .ranks import Rank
from .validation import validate, validate_pseudo

WARMUP_STEPS = 1  # the first step of a phase allocates and (on a GPU) tunes: not timed
TIMED_STEPS = 2
MIN_TIMED_S = 0.05  # a fast device times more steps, up to MAX_TIMED_STEPS, to see past the scheduler's noise
MAX_TIMED_STEPS = 10
SAMPLE_WINDOWS = 8  # validation windows timed (one batch of `validate`)
PLOT_S = 1.0  # redrawing the loss plot at an epoch end (0.8 s measured on the project's 2-core CPU)


def measure(
    opts: TrainOptions, rank: Rank, device: torch.device, networks: tuple, windows: WindowSet,
    val_clips: list[Clip], calibration_windows: int, phases: list[str], step: Callable,
) -> Costs:
    """Costs of `phases` (and of validating and calibrating) for this run, timed on copies of
    `networks` (generator, discriminator)."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        generator, discriminator = copy.deepcopy(networks)
        step_s = {p: _time_phase(p, generator, discriminator, opts, rank, device, windows, step) for p in phases}
        sample = _sample_clip(val_clips or windows.clips)
        scoring = _time_validation(lambda: validate(generator, discriminator, [sample], device), device)  # what calibrating takes
        per_window = _time_validation(lambda: validate(generator, discriminator, [sample], device, generated=True), device)
        kinds, _ = pseudo_plan(opts)
        pseudo = _time_validation(lambda: validate_pseudo(discriminator, [sample], kinds, device), device) if kinds and "discriminator" in phases else 0.0
        checkpoint_s = _time_checkpoint(opts, generator, discriminator) if rank.main else 0.0  # rank 0 writes them
    val_windows = len(WindowSet(val_clips))
    # --old-generator's term scores the windows once more (a generator and a discriminator pass)
    old = per_window if opts.old_generator is not None else 0.0
    end_s = {p: val_windows * (per_window + ((pseudo + old) if p == "discriminator" else 0.0)) + PLOT_S + checkpoint_s for p in phases}
    return Costs(
        device=str(device), step_s={p: t + checkpoint_s / opts.checkpoint_every for p, t in step_s.items()},
        epoch_steps=len(epoch_batches(len(windows), opts, "pretrain", 0, rank)), end_s=end_s,
        calibration_s=calibration_windows * scoring, checkpoint_s=checkpoint_s,
    )


def _time_phase(phase: str, generator, discriminator, opts, rank, device, windows: WindowSet, step: Callable) -> float:
    """Seconds a step of `phase` takes, its data reading included: the median of the timed steps."""
    opt_g = torch.optim.Adam(generator.parameters(), lr=opts.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=opts.lr, betas=(0.5, 0.999))
    batches = epoch_batches(len(windows), opts, phase, 0, rank)[: WARMUP_STEPS + MAX_TIMED_STEPS]
    times: list[float] = []
    for b, batch in enumerate(itertools.islice(itertools.cycle(batches), WARMUP_STEPS + MAX_TIMED_STEPS)):
        start = time.perf_counter()
        x = to_tensor(torch.stack([windows[i] for i in batch])).to(device)  # (B, 11, 1, S, S) in [-1, 1]
        fakes = pseudo_batch(windows, batch, opts, 0, b, rank) if phase == "discriminator" else None
        real_rows = generated_real_rows(len(batch), opts, 0, b, rank) if phase == "discriminator" else None
        step(phase, x, generator, discriminator, opt_g, opt_d, opts, device, f"timing a {phase} step", Path("(timing)"), fakes, real_rows=real_rows)
        _sync(device)
        if b >= WARMUP_STEPS:
            times.append(time.perf_counter() - start)
        if len(times) >= TIMED_STEPS and sum(times) >= MIN_TIMED_S:
            break
    return sorted(times)[len(times) // 2]


def _sample_clip(clips: list[Clip]) -> Clip:
    """The first SAMPLE_WINDOWS windows of the longest clip (or all its windows)."""
    clip = max(clips, key=len)
    return Clip(clip.name, clip.source, clip.frames[: WINDOW - 1 + SAMPLE_WINDOWS])


def _time_validation(run: Callable, device: torch.device) -> float:
    """Seconds per window of a validation pass (the training steps timed before it warmed up the device)."""
    _sync(device)
    start = time.perf_counter()
    n = len(run()[0])
    _sync(device)
    return (time.perf_counter() - start) / max(n, 1)


def _time_checkpoint(opts: TrainOptions, generator, discriminator) -> float:
    """Seconds to write a checkpoint of this size into the checkpoint folder (a scratch file, removed)."""
    path = opts.ckpt_dir / f".timing-{os.getpid()}.safetensors"
    opt_g, opt_d = torch.optim.Adam(generator.parameters()), torch.optim.Adam(discriminator.parameters())
    for opt in (opt_g, opt_d):  # with both moments, as a run's checkpoint holds them
        for group in opt.param_groups:
            for p in group["params"]:
                p.grad = torch.zeros_like(p)
        opt.step()
    start = time.perf_counter()
    try:
        save_checkpoint(path, generator, discriminator, opt_g, opt_d, {})
        return time.perf_counter() - start
    finally:
        path.unlink(missing_ok=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
