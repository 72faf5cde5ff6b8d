"""A run's plan, made once the footage is read: time a few steps of the phases still to train
(`timing`), estimate the recipe asked for or fit the phases to --time (`budget`, `clock`), and say
it (`plan` event) before the first epoch. A --time run that cannot train at all is refused here,
naming the least budget that would."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..dataset import Clip, WindowSet
from ..errors import TrainingError
from .budget import NAMES, Costs, as_option, budget_plan, describe, fixed_plan, human, least_budget_s
from .clock import Deadline, now
from .data import epoch_batches
from .options import BUDGET_EPOCHS, PHASES, Event, TrainOptions, phases, set_epochs
from . import ranks
from .ranks import Rank
from .timing import measure


def plan_run(
    opts: TrainOptions, rank: Rank, device: torch.device, progress: dict, networks: tuple, windows: WindowSet,
    clips: tuple[list[Clip], list[Clip]], started: float, step: Callable, emit: Event,
) -> tuple[Costs | None, Deadline | None]:
    """The costs of the phases still to train and, for a --time run, its deadline (None, None
    when nothing is left to train). Sets a --time run's epochs: the phases that get time run until
    their part of it ends (BUDGET_EPOCHS), the others are left out (0)."""
    train_clips, val_clips = clips
    record = progress.get("budget")
    record = None if record is None or record.get("finished") else record  # a finished --time run goes on by epochs
    current = progress["phase"]
    ahead = PHASES[PHASES.index(current) :]
    epoch_steps = len(epoch_batches(len(windows), opts, "pretrain", 0, rank))
    if record is None:
        counts = dict(phases(opts))
        steps = {p: counts[p] * epoch_steps - (progress["epoch"] * epoch_steps + progress["batch"] if p == current else 0) for p in ahead}
        to_time = [p for p in ahead if steps[p] > 0]
    else:
        ended = record.get("ended", [])
        to_time = [p for p in ahead if p not in ended and (record["slots_s"].get(p, 0) > 0 or (p == current and record["phase"] == current))]
    if not to_time:
        return None, None
    if record is not None and progress["step"] == 0:  # the budget gone before timing a step: no need to time them to say so
        spent, left = ranks.from_main(now() - started, rank), record["seconds"] - record["used_s"]  # rank 0's clock decides
        if spent >= left:
            raise TrainingError(
                f"--time {human(left)}: too short to train on this footage: reading it took {human(spent)} already, "
                f"before any training. Give --time at least {as_option(3 * spent + 30)}."
            )
    calibration_windows = len(WindowSet(val_clips)) if len(WindowSet(val_clips)) >= 2 else len(WindowSet(train_clips))
    costs = measure(opts, rank, device, networks, windows, val_clips, calibration_windows, to_time, step)
    spent = now() - started
    if record is None:
        plan = fixed_plan(costs, {p: max(steps[p], 0) for p in to_time}, spent)
        emit("plan", plan=plan, text=describe(plan))
        return costs, None
    deadline = Deadline(record, started, costs)
    of_s = record["seconds"] if opts.resume and opts.time_budget is None else None  # what is left of it
    plan = budget_plan(costs, ranks.from_main(deadline.split(current, now()), rank), deadline.budget_s, spent, of_s)
    if not plan.seconds and progress["step"] == 0:
        raise _too_short(deadline.budget_s, costs, to_time[0], spent)
    for p in ahead[1:]:
        set_epochs(opts, progress, p, BUDGET_EPOCHS if p in plan.seconds else 0)
    record.setdefault("plans", []).append({"budget_s": round(deadline.budget_s, 1), "epochs": {p: round(e, 2) for p, e in plan.epochs.items()}, "device": plan.device})
    emit("plan", plan=plan, text=describe(plan))
    return costs, deadline


def _too_short(budget_s: float, costs: Costs, phase: str, spent: float) -> TrainingError:
    least = least_budget_s(costs, phase, spent)
    return TrainingError(
        f"--time {human(budget_s)}: too short to train on this footage on {costs.device}: reading it and timing took "
        f"{human(spent)}, a few steps of {NAMES[phase]} training and their validation take about "
        f"{human(costs.least_s(phase))}, and the calibration about {human(costs.calibration_s)}. Give --time {as_option(least)} or more."
    )
