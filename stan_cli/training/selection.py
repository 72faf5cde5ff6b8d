"""Model selection, fixed before any evaluation.

After every epoch of the LAST phase that runs, the held-out normal validation windows are scored;
the state with the lowest value becomes the output (ties: the earlier epoch): the generator's mean
pixel loss after `pretrain` or `adversarial`, the discriminator's loss L_D on real against fake
windows after `discriminator`. Without validation windows the final state is the output. Test
labels are never looked at. The last generator phase's selection is kept too: it is the
generator a discriminator phase trains against.
"""

from __future__ import annotations

import numpy as np

from .options import TrainOptions, final_phase, generator_phase, pseudo_plan
from .validation import ranking_auc, validate_generated, validate_pseudo

SELECTION_RULE = (
    "lowest mean generator pixel loss (MSE) on the held-out normal validation windows, "
    "over the epoch ends of the last training phase; the final state when there is no validation data"
)
D_SELECTION_RULE = (
    "lowest mean discriminator loss L_D on the held-out normal validation windows (-log D on real windows; "
    "-log(1 - D) on fakes in the training mix: pseudo-anomalies made from those windows by a fixed generator "
    "for --pseudo-share of them, windows with the generated middle frame for the rest, --old-generator's when given; "
    "with --generated-as-real the real term is the mean of -log D on real windows and on those with the current "
    "generator's middle frame; with --local-labels a local pseudo-anomaly's loss labels fake only the patches it covers "
    "and real the others, as in training), over the epoch ends of "
    "the discriminator phase, against the generator that the pixel-loss rule chose from the phase before "
    "(or --init's); the final state when there is no validation data"
)


def selection_value(phase: str, record: dict) -> float:
    """What the selection rule minimises after an epoch of `phase` (see the module docstring)."""
    if phase == "discriminator":
        # records written before 0.2.0 (no pseudo-anomalies) lack val_loss_d: real and generated only
        return record.get("val_loss_d", record["val_d"] + record["val_d_fake"])
    return record["val_pixel"]


def epoch_record(opts: TrainOptions, phase: str, progress: dict, scores, discriminator, val_clips, device, old_generator=None) -> dict:
    """An epoch end's validation record from `validate(..., generated=True)`'s four arrays
    (None without validation windows: every value NaN). `old_generator`: --old-generator's (None
    without it), for the discriminator phase's OGNet term."""
    nan = float("nan")
    record = {"phase": phase, "epoch": progress["epoch"], "step": progress["step"], "val_pixel": nan, "val_d": nan, "val_d_fake": nan}
    if scores is None:
        return record
    pixel, d, d_fake, d_generated_real = scores
    record.update(val_pixel=float(pixel.mean()), val_d=float(d.mean()), val_d_fake=float(d_fake.mean()))
    if phase == "discriminator":
        record.update(_d_validation(opts, discriminator, val_clips, d, (d_fake, d_generated_real), device, old_generator))
    return record


def _d_validation(opts: TrainOptions, discriminator, val_clips, d: np.ndarray, generated_losses, device, old) -> dict:
    """The discriminator phase's validation: L_D with the training mix (real windows, and with
    --generated-as-real those with the current generator's middle frame, half each; then
    pseudo-anomalies for `share` of the fakes and generated windows, --old-generator's when given,
    for the rest), and the AUC of its d score between the normal windows and their pseudo-anomalies.
    `generated_losses`: -log(1 - D) and -log D on the windows with the current generator's middle frame."""
    kinds, share = pseudo_plan(opts)
    d_fake, d_generated_real = generated_losses
    record, real, generated = {}, float(d.mean()), float(d_fake.mean())
    if old is not None:
        generated = record["val_d_old"] = float(validate_generated(old, discriminator, val_clips, device)[0].mean())
    if opts.generated_as_real:
        record["val_d_generated_real"] = float(d_generated_real.mean())
        real = (real + record["val_d_generated_real"]) / 2
    if not kinds:
        return record | {"val_loss_d": real + generated}
    pseudo_loss, pseudo_score = validate_pseudo(discriminator, val_clips, kinds, device, local_labels=opts.local_labels)
    return record | {
        "val_d_pseudo": float(pseudo_loss.mean()),
        "val_loss_d": float(real + share * pseudo_loss.mean() + (1 - share) * generated),
        "val_pseudo_auc": ranking_auc(d, pseudo_score),
    }


def is_selected(opts: TrainOptions, record: dict, best: dict | None, validated: bool) -> bool:
    """Does this epoch's state replace the selected one? Only in the phases whose selection counts;
    without validation windows every epoch does (the final state is the output)."""
    phase = record["phase"]
    if phase not in (final_phase(opts), generator_phase(opts)):
        return False
    return not validated or best is None or best.get("phase") != phase or (
        selection_value(phase, record) < selection_value(phase, best)
    )


def discriminator_at_chance(
    selected: dict | None, chance: float = 2 * np.log(2), margin: float = 0.08, timed: bool = False
) -> str | None:
    """The warning for output whose discriminator does not tell real from generated validation
    windows: its loss L_D there within `margin` of chance (2 ln 2), as for an untrained one or
    one at the end of an adversarial phase (ours: 1.386); a discriminator phase takes it far below."""
    if not selected or "val_d_fake" not in selected:
        return None
    loss = selection_value("discriminator", selected)
    if not loss > chance - margin:
        return None  # NaN (no validation windows) lands here too
    return (
        f"the discriminator does not tell real validation windows from fakes (its loss there {loss:.3f}; "
        f"chance {chance:.3f}): its score (--score d) and guided-backpropagation maps carry no information. "
        + (
            "Give the run more --time, or the discriminator phase a larger share (--time-shares), to train it against the generator."
            if timed else "Add --discriminator-epochs N to train it against the generator (README, stan train)."
        )
    )
