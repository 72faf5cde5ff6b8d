"""The fake half of the discriminator's batch: windows whose middle frame the generator made, and
(discriminator phase) temporal pseudo-anomalies made from the normal training windows (`pseudo.py`)."""

from __future__ import annotations

import numpy as np
import torch

from .. import pseudo
from ..dataset import WindowSet
from ..inference import autocast
from ..model import with_middle
from ..windows import to_tensor
from .options import TrainOptions, pseudo_plan
from .ranks import Rank


def pseudo_batch(windows: WindowSet, batch: list[int], opts: TrainOptions, epoch: int, b: int, rank: Rank):
    """Which fakes of this batch are pseudo-anomalies, and those windows: (mask (B,) bool,
    (P, 11, 1, S, S) in [-1, 1]); None when the recipe has none. Drawn from a generator seeded by
    the run's seed, epoch, batch and rank, so a resumed run makes the same batch again."""
    kinds, share = pseudo_plan(opts)
    if not kinds or share <= 0:
        return None
    rng = np.random.default_rng([opts.seed, epoch, b, rank.rank, 7])
    mask = rng.random(len(batch)) < share
    made = [
        pseudo.make(kinds[int(rng.integers(len(kinds)))], windows.clips, *windows.index[i], rng)
        for i, is_pseudo in zip(batch, mask) if is_pseudo
    ]
    stack = to_tensor(torch.from_numpy(np.stack(made))) if made else None  # (P, 11, 1, S, S)
    return torch.from_numpy(mask), stack


def fake_windows(x, neighbours, g_model, fakes, phase, opts, device):
    """The fake half of the discriminator's batch: the generated middle frame S^_t, or (discriminator
    phase, positions `fakes` marks) a pseudo-anomaly. Returns (fake windows, prediction, its rows)."""
    rows = torch.arange(x.shape[0], device=x.device)
    if fakes is not None:
        rows = rows[~fakes[0].to(x.device)]
    pred = None
    if len(rows):
        # In the discriminator phase the generator is frozen: its prediction needs no graph.
        with torch.set_grad_enabled(phase == "adversarial"), autocast(device, opts.precision):
            pred = g_model(neighbours[rows])  # (R, 1, S, S)
    if fakes is None:
        return with_middle(x, pred.to(x.dtype)), pred, rows
    fake = x.clone()
    if pred is not None:
        fake[rows] = with_middle(x[rows], pred.detach().to(x.dtype))
    if fakes[1] is not None:
        fake[fakes[0].to(x.device)] = fakes[1].to(device=x.device, dtype=x.dtype)
    return fake, pred, rows
