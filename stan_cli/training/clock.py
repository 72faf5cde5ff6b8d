"""The run's clock: honest samples/s and time left, and a --time run's deadline.

`Throughput` is what the progress lines and the log say: the samples of the steps in the last
WINDOW_S seconds of wall time (since the epoch began, or the run resumed, when that is shorter)
over that time, so that the rate and the time left agree with the clock however long one step took
(a checkpoint, a validation, a CPU shared with other work).

`Deadline` keeps a --time run to its plan: when this command must be done, when the phase it is in
ends, and what a checkpoint records of the budget (`progress["budget"]`) for a resumed run.
"""

from __future__ import annotations

import time
from collections import deque

from .budget import Costs, margin_s, split
from .options import PHASES

WINDOW_S = 60.0


class Throughput:
    """Samples per second over the last `window_s` seconds of wall time."""

    def __init__(self, now: float, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self.points: deque[tuple[float, int, int]] = deque([(now, 0, 0)])  # (time, samples, steps) since the start

    def add(self, now: float, samples: int) -> None:
        _, total, steps = self.points[-1]
        self.points.append((now, total + samples, steps + 1))
        # keep the last point at or before the window's start: the span covers the whole window
        while len(self.points) > 2 and self.points[1][0] <= now - self.window_s:
            self.points.popleft()

    def _span(self) -> tuple[float, int, int]:
        (t0, n0, k0), (t1, n1, k1) = self.points[0], self.points[-1]
        return t1 - t0, n1 - n0, k1 - k0

    @property
    def samples_per_s(self) -> float:
        seconds, samples, _ = self._span()
        return samples / seconds if seconds > 0 else 0.0

    @property
    def step_s(self) -> float | None:
        """Seconds a step took over the window; None before the first."""
        seconds, _, steps = self._span()
        return seconds / steps if steps else None


def new_budget(seconds: float, shares: dict[str, float]) -> dict:
    """A new --time run's `progress["budget"]`."""
    return {"seconds": seconds, "used_s": 0.0, "shares": shares, "slots_s": dict(shares), "phase": None, "phase_used_s": 0.0}


def budget_summary(record: dict | None) -> dict | None:
    """What the weights' training record keeps of a --time run's budget: the seconds it was given in
    all, those used by its last checkpoint (reading the footage and timing in, calibrating not), its
    shares and each command's plan."""
    if record is None:
        return None
    return {k: record.get(k) for k in ("seconds", "used_s", "shares", "plans")}


class Deadline:
    """A --time run's clock, over its `progress["budget"]` record: `seconds` it may take in all,
    `used_s` of them that its checkpointed progress took, each phase's planned part `slots_s`,
    `phase_used_s` of the part of the `phase` it was in, and the phases `ended` (trained, or left out)."""

    def __init__(self, record: dict, start: float, costs: Costs) -> None:
        self.record, self.start, self.costs = record, start, costs
        self.used_before = record["used_s"]
        self.budget_s = record["seconds"] - record["used_s"]  # this command's
        self.end = start + self.budget_s - margin_s(self.budget_s)  # training, validation and calibration done
        self.phase_start = self.phase_end = start

    def _parts(self, phase: str, now: float) -> tuple[dict[str, float], float, dict[str, float]]:
        """`budget.split`'s arguments: the planned parts of `phase` and the phases after it that have
        not ended (the current one's less what it used before a resume), the seconds left before
        the calibration, and the least each needs to train at all."""
        record = self.record
        ended = record.get("ended", [])
        weights = {p: record["slots_s"].get(p, 0.0) for p in PHASES[PHASES.index(phase) :] if p in self.costs.step_s and p not in ended}
        least = {p: self.costs.least_s(p) for p in weights}
        if record["phase"] == phase and phase in weights:  # resumed inside it: what is left of its part, however small
            weights[phase] = max(weights[phase] - record["phase_used_s"], 0.0)
            least[phase] = 0.0
        return weights, max(self.end - self.costs.calibration_s - now, 0.0), least

    def split(self, phase: str, now: float) -> dict[str, float]:
        """The time left before the calibration, for `phase` and those after it: in proportion to
        their planned parts, the last ones left out first when they would get too little to train
        at all (`budget.split`)."""
        return split(*self._parts(phase, now))

    def begin_phase(self, phase: str, now: float) -> bool:
        """Start `phase`'s part of the time (`split`); False when it gets none: it is left out, or
        ends as it stands."""
        weights, available, least = self._parts(phase, now)
        seconds = split(weights, available, least)
        # Every part in seconds from here on, a phase left out too (what it would have had), so that
        # a resumed split weighs seconds against seconds, not against the shares it started from.
        total = sum(w for w in weights.values() if w > 0)
        planned = {p: available * (w / total) for p, w in weights.items() if w > 0} if total > 0 else {}
        self.record.update(slots_s={**self.record["slots_s"], **planned, **seconds}, phase=phase, phase_used_s=0.0)
        self.phase_start, self.phase_end = now, now + seconds.get(phase, 0.0)
        return phase in seconds

    def cut(self, now: float, step_s: float, val_s: float) -> bool:
        """Would one more step and a validation after it end past the phase's part?"""
        return now + step_s + val_s > self.phase_end

    def left_s(self, now: float) -> float:
        return max(0.0, self.phase_end - now)

    def save(self, now: float) -> None:
        """Before a checkpoint: the time its progress took, in all and in the phase."""
        self.record.update(used_s=self.used_before + (now - self.start), phase_used_s=now - self.phase_start)


def now() -> float:
    """The clock every part of a run reads (tests replace it with a fake one)."""
    return time.perf_counter()
