"""`--time`: what a time budget is and how a run's time is planned.

Pure functions over what `timing.measure` found (`Costs`): read a budget ("45m"), split the
training time between the phases by their shares, estimate the epochs that fit, and say the plan
in one line. The clock that keeps a running phase to its part is `clock.Deadline`.

The default shares (docs/training.md, "A time budget", says why; the quality-vs-time measurement
of benchmarks/quality_vs_time.py is to revise them): from scratch, three parts generator-only
epochs to one part discriminator phase and no adversarial epochs; with --init, half and half.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ..errors import TrainingError
from .options import PHASES

UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
MIN_BUDGET_S = 30.0  # below this nothing but reading the footage could happen
MAX_BUDGET_S = 1000 * 3600.0  # past any real run: a slip of the keyboard is refused, not run for months
SHARES = {"pretrain": 3.0, "adversarial": 0.0, "discriminator": 1.0}
INIT_SHARES = {"pretrain": 1.0, "adversarial": 0.0, "discriminator": 1.0}
MIN_PHASE_STEPS = 10  # a phase gets a part of the budget only if this many steps and a validation fit in it
MANY_HOURS_S = 3 * 3600.0  # a recipe longer than this on a CPU gets the hint to give --time
NAMES = {"pretrain": "generator", "adversarial": "adversarial", "discriminator": "discriminator"}


def parse_duration(text: str, option: str = "--time") -> float:
    """'45m' -> 2700.0: a number of hours, minutes or seconds ('1.5h', '90s', '1h30m'), or plain
    seconds ('300'); from MIN_BUDGET_S to MAX_BUDGET_S. Raises TrainingError naming the option."""
    raw = str(text).strip().lower()
    sign = -1.0 if raw.startswith("-") else 1.0  # refused below as out of range, not as unreadable
    raw = raw.lstrip("+-") if raw[:1] in "+-" and raw[1:2] not in "+-" else raw
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?", raw)
    if re.fullmatch(r"\d+(?:\.\d+)?", raw):
        seconds = float(raw)
    elif raw and parts:
        seconds = sum(float(v) * UNITS[u] for v, u in zip(parts.groups(), "hms") if v is not None)
    else:
        raise TrainingError(f"{option} {text}: not a duration. Give a number with a unit, s, m or h: 45m, 1.5h, 1h30m, 90s (a plain number is seconds).")
    return check_duration(sign * seconds, option, text)


def check_duration(seconds, option: str = "--time", shown=None) -> float:
    """A budget in seconds, finite and in range (the library's callers give seconds directly)."""
    shown = seconds if shown is None else shown
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not MIN_BUDGET_S <= seconds <= MAX_BUDGET_S:
        raise TrainingError(
            f"{option} {shown}: must be from {human(MIN_BUDGET_S)} to {MAX_BUDGET_S / 3600:.0f} h "
            "(the time stan train may take, reading the footage and calibrating included)."
        )
    return float(seconds)


def parse_shares(text: str) -> dict[str, float]:
    """'3,0,1' -> the training time's shares of pretrain, adversarial and discriminator."""
    try:
        values = [float(v) for v in str(text).split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or not all(math.isfinite(v) and v >= 0 for v in values) or not 0 < sum(values) < math.inf:
        raise TrainingError(
            f"--time-shares {text}: give three shares of the time, generator-only, adversarial and "
            "discriminator epochs, each 0 or more and not all 0: e.g. 3,0,1."
        )
    return dict(zip(PHASES, values))


def margin_s(budget_s: float) -> float:
    """Time kept back from a budget for what no estimate covers (writing the weights, a slow step)."""
    return 5.0 + 0.02 * budget_s


@dataclass(frozen=True)
class Costs:
    """What a run's parts take on this machine, in seconds (`timing.measure`)."""

    device: str
    step_s: dict[str, float]  # one training step of each phase timed
    epoch_steps: int  # steps in an epoch (on this process)
    end_s: dict[str, float]  # an epoch's end in each phase timed: validation, checkpoint, loss plot
    calibration_s: float
    checkpoint_s: float = 0.0  # writing one checkpoint (in step_s once every --checkpoint-every steps, and in end_s)

    def epoch_s(self, phase: str) -> float:
        return self.epoch_steps * self.step_s[phase] + self.end_s[phase]

    def least_s(self, phase: str) -> float:
        """The least part of a budget a phase is given: MIN_PHASE_STEPS steps (or an epoch) and an epoch's end."""
        return min(MIN_PHASE_STEPS, self.epoch_steps) * self.step_s[phase] + self.end_s[phase]


@dataclass
class Plan:
    """What a run will train and how long it will take (this command only)."""

    device: str
    epochs: dict[str, float]  # the phases that train, in order: their epochs (estimated under --time)
    seconds: dict[str, float]  # each one's training time, its validations included
    calibration_s: float
    spent_s: float  # this command's time before training: reading the footage, timing steps
    budget_s: float | None = None  # what this command may take: --time, or what a resumed run has left of it
    step_s: dict[str, float] = field(default_factory=dict)
    of_s: float | None = None  # a resumed run's whole budget, when this command has what is left of it

    @property
    def total_s(self) -> float:
        return self.spent_s + sum(self.seconds.values()) + self.calibration_s


def fixed_plan(costs: Costs, steps_left: dict[str, int], spent_s: float) -> Plan:
    """The plan of a run without --time: the steps of each phase still to train."""
    seconds = {p: n * costs.step_s[p] + _validations(n, costs.epoch_steps) * costs.end_s[p] for p, n in steps_left.items() if n}
    epochs = {p: steps_left[p] / costs.epoch_steps for p in seconds}  # still to train: a resumed run's part epoch too
    return Plan(costs.device, epochs, seconds, costs.calibration_s, spent_s, None, dict(costs.step_s))


def _validations(steps: int, epoch_steps: int) -> int:
    return math.ceil(steps / epoch_steps)


def budget_plan(costs: Costs, seconds: dict[str, float], budget_s: float, spent_s: float, of_s: float | None = None) -> Plan:
    """The plan of a --time run whose phases got `seconds` each (`clock.Deadline.split`)."""
    epochs = {p: estimated_epochs(s, costs, p) for p, s in seconds.items()}
    return Plan(costs.device, epochs, dict(seconds), costs.calibration_s, spent_s, budget_s, dict(costs.step_s), of_s)


def split(weights: dict[str, float], available: float, least: dict[str, float]) -> dict[str, float]:
    """`available` seconds in proportion to the weights of the phases (in order) that get at least
    their `least` that way; the last ones are left out first (each builds on those before it)."""
    kept = [p for p in weights if weights[p] > 0]
    while kept:
        total = sum(weights[p] for p in kept)
        seconds = {p: available * (weights[p] / total) for p in kept}  # the share first: 1e306 * 600 overflows
        if all(seconds[p] >= least[p] for p in kept):
            return seconds
        kept.pop()
    return {}


def estimated_epochs(seconds: float, costs: Costs, phase: str) -> float:
    """The epochs `seconds` hold: whole epochs with their validations, then a part epoch and its validation."""
    epoch = costs.epoch_s(phase)
    whole = math.floor(seconds / epoch)
    rest = max(0.0, seconds - whole * epoch - costs.end_s[phase])
    return whole + min(1.0, rest / (costs.epoch_steps * costs.step_s[phase]))


def least_budget_s(costs: Costs, phase: str, spent_s: float) -> float:
    """The smallest budget that trains `phase` at all: what is spent, its least part, the calibration and the margin."""
    return (spent_s + costs.least_s(phase) + costs.calibration_s + 5.0) / 0.98


def as_option(seconds: float) -> str:
    """A duration as --time takes it, rounded up: 50s, 11m."""
    return f"{math.ceil(seconds)}s" if seconds < 60 else f"{math.ceil(seconds / 60)}m"


def human(seconds: float) -> str:
    """12 s, 4.5 min, 44 min, 17.6 h."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 600:
        return f"{seconds / 60:.1f} min"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def describe(plan: Plan) -> str:
    """The plan in a line: 'generator 6 epochs, adversarial 2, discriminator 1: about 44 min on cpu'."""
    about = "about " if plan.budget_s is not None else ""
    parts = []
    for k, (phase, n) in enumerate(plan.epochs.items()):
        count = f"{n:.1f}".removesuffix(".0")
        unit = (" epoch" if count == "1" else " epochs") if k == 0 else ""
        parts.append(f"{NAMES[phase]} {about}{count}{unit} ({human(plan.seconds[phase])})")
    if plan.budget_s is not None and not parts:
        parts = ["no time left to train: the run is finished as it stands"]
    text = ", ".join(parts) + (
        f"; reading the footage and timing {human(plan.spent_s)}, calibration {human(plan.calibration_s)}: "
        f"about {human(plan.total_s)} on {plan.device}"
    )
    if plan.budget_s is not None:
        left = f" (what is left of the run's {human(plan.of_s)})" if plan.of_s is not None else ""
        return f"plan for {human(max(plan.budget_s, 0.0))}{left}: {text}"
    if plan.device == "cpu" and plan.total_s > MANY_HOURS_S:
        text += ". That is many hours on a CPU: --time 1h (or any time) plans the epochs to fit the time you give"
    return f"plan: {text}"
