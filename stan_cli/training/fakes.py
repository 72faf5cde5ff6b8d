"""The fake half of the discriminator's batch: windows whose middle frame the generator made, and
(discriminator phase) temporal pseudo-anomalies made from the normal training windows (`pseudo.py`).

Discriminator phase, beyond the paper, after OGNet ("old is gold", Zaheer et al. 2020): with
--old-generator the generated fakes take their middle frame from an early, weaker generator, and
with --generated-as-real half of the real windows are shown with the current generator's middle
frame, labelled real (a good prediction is normal; a poor one, like the old generator's, is not).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import pseudo
from ..dataset import WindowSet
from ..errors import TrainingError
from ..inference import autocast
from ..model import Generator, with_middle
from ..weights import load_weights
from ..windows import to_tensor
from .options import TrainOptions, pseudo_plan
from .ranks import Rank


def pseudo_batch(windows: WindowSet, batch: list[int], opts: TrainOptions, epoch: int, b: int, rank: Rank):
    """Which fakes of this batch are pseudo-anomalies, those windows and, with --local-labels,
    where each one's anomaly is: (mask (B,) bool, (P, 11, 1, S, S) in [-1, 1], P regions (make_boxed's
    rectangles; None: the whole window) or None without --local-labels); None when the recipe has none. Drawn from a
    generator seeded by the run's seed, epoch, batch and rank, so a resumed run makes the same batch again."""
    kinds, share = pseudo_plan(opts)
    if not kinds or share <= 0:
        return None
    rng = np.random.default_rng([opts.seed, epoch, b, rank.rank, 7])
    mask = rng.random(len(batch)) < share
    made = [
        pseudo.make_boxed(kinds[int(rng.integers(len(kinds)))], windows.clips, *windows.index[i], rng)
        for i, is_pseudo in zip(batch, mask) if is_pseudo
    ]
    stack = to_tensor(torch.from_numpy(np.stack([w for w, _ in made]))) if made else None  # (P, 11, 1, S, S)
    return torch.from_numpy(mask), stack, [region for _, region in made] if opts.local_labels else None


def fake_targets(fakes, n: int, grid: tuple[int, int], size: int, device) -> torch.Tensor | None:
    """With --local-labels, the label of every patch of D's map for the n fake windows: (n, h, w),
    0 (fake) everywhere, except in a local pseudo-anomaly's window, where the patches its rectangles do
    not cover are 1 (real: pseudo.patch_labels). None without --local-labels."""
    if fakes is None or len(fakes) < 3 or fakes[2] is None:
        return None
    regions: list = [None] * n  # the generated fakes: fake everywhere
    for row, region in zip(torch.nonzero(fakes[0]).flatten().tolist(), fakes[2]):
        regions[row] = region
    return torch.from_numpy(pseudo.patch_labels(regions, size, grid)).to(device)


def fake_windows(x, neighbours, g_model, fakes, phase, opts, device, old_generator=None):
    """The fake half of the discriminator's batch: the generated middle frame S^_t (in the
    discriminator phase `old_generator`'s, when given), or (discriminator phase, positions `fakes`
    marks) a pseudo-anomaly. Returns (fake windows, prediction, its rows)."""
    rows = torch.arange(x.shape[0], device=x.device)
    if fakes is not None:
        rows = rows[~fakes[0].to(x.device)]
    pred = None
    if len(rows):
        maker = old_generator if phase == "discriminator" and old_generator is not None else g_model
        # In the discriminator phase the generator is frozen: its prediction needs no graph.
        with torch.set_grad_enabled(phase == "adversarial"), autocast(device, opts.precision):
            pred = maker(neighbours[rows])  # (R, 1, S, S)
    if fakes is None:
        return with_middle(x, pred.to(x.dtype)), pred, rows
    fake = x.clone()
    if pred is not None:
        fake[rows] = with_middle(x[rows], pred.detach().to(x.dtype))
    if fakes[1] is not None:
        fake[fakes[0].to(x.device)] = fakes[1].to(device=x.device, dtype=x.dtype)
    return fake, pred, rows


def load_old_generator(opts: TrainOptions, progress: dict, config, device) -> Generator | None:
    """--old-generator's generator, frozen, on `device` (None without it). The file's hash goes
    into the run's progress; a resumed run refuses a file that has changed since it began."""
    if opts.old_generator is None:
        return None
    path = Path(opts.old_generator)
    known = progress.get("old_generator")
    if known is not None and not path.is_file():
        raise TrainingError(
            f"{path}: this run's --old-generator file is gone. Put it back there (sha256 {known['sha256'][:12]}) "
            "and resume, or start a new run."
        )
    stan = load_weights(path, option="--old-generator")
    if stan.config != config:
        raise TrainingError(
            f"{path}: its networks are another size than this run's; --old-generator takes an early "
            "checkpoint of the same network size (e.g. a weights file written after the first epochs)."
        )
    if known is not None and known["sha256"] != stan.sha256:
        raise TrainingError(
            f"{path}: the --old-generator file changed since this run began (sha256 {stan.sha256[:12]}, "
            f"was {known['sha256'][:12]}). Put the original back, or start a new run."
        )
    progress["old_generator"] = {"file": str(path), "sha256": stan.sha256}
    return stan.generator.to(device).eval().requires_grad_(False)


def generated_real_rows(n: int, opts: TrainOptions, epoch: int, b: int, rank: Rank) -> torch.Tensor | None:
    """With --generated-as-real, which of the batch's n real windows are shown with the current
    generator's middle frame (half of them, drawn like `pseudo_batch`'s); None otherwise."""
    if not opts.generated_as_real:
        return None
    rng = np.random.default_rng([opts.seed, epoch, b, rank.rank, 11])
    return torch.from_numpy(rng.random(n) < 0.5)


def real_windows(x, neighbours, g_model, rows, opts, device):
    """The real half of the discriminator's batch: x, with the current generator's middle frame in
    the `rows` that `generated_real_rows` marks (the generator is frozen: no graph)."""
    if rows is None or not rows.any():
        return x
    rows = rows.to(x.device)
    with torch.no_grad(), autocast(device, opts.precision):
        pred = g_model(neighbours[rows])  # (R, 1, S, S)
    real = x.clone()
    real[rows] = with_middle(x[rows], pred.to(x.dtype))
    return real
