"""`stan train --time`: the budget read, the plan, the deadline, resuming on time, the estimate
without --time, and progress lines that agree with the clock.

Runs use the tiny preset on test_train's synthetic clips and a fake clock: a training step, a
validation window and everything else take the fake seconds these tests give them (the real
work takes milliseconds), so every time in here is exact and the tests take seconds.
"""

from __future__ import annotations

import math
import re
import types
import time

import pytest
import torch

from stan_cli import cli
from stan_cli import train as train_module
from stan_cli.errors import TrainingError
from stan_cli.train import TrainOptions, train
from stan_cli.training import clock as clock_module
from stan_cli.training import timing
from stan_cli.training.budget import (
    INIT_SHARES, MANY_HOURS_S, SHARES, Costs, as_option, budget_plan, describe, fixed_plan, margin_s, parse_duration,
    parse_shares,
)
from stan_cli.training.clock import Deadline, Throughput, new_budget
from stan_cli.training.options import PHASES
from stan_cli.training.ranks import Rank
from stan_cli.weights import load_weights, read_checkpoint_progress
from test_train import Events, _Stop, ckpt_of, data3, log_rows, lock_of, options, run_cli  # noqa: F401 (data3: a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


class FakeClock:
    """perf_counter and monotonic for train.py, the training modules and cli.py: moves only when told."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    fake_time = types.SimpleNamespace(perf_counter=fake, monotonic=fake, strftime=time.strftime, time=time.time)
    for module in (train_module, timing, clock_module, cli):
        monkeypatch.setattr(module, "time", fake_time)
    return fake


def slow(monkeypatch, clock: FakeClock, step_s=1.0, window_s: float = 0.0) -> None:
    """Each training step takes `step_s` fake seconds (or step_s(k) for the k-th step, timing
    steps included), each scored window `window_s` (validation, calibration, their timing)."""
    real_step, real_validate = train_module._step, train_module.validate
    count = [0]

    def step(*args, **kwargs):
        count[0] += 1
        clock.advance(step_s(count[0]) if callable(step_s) else step_s)
        return real_step(*args, **kwargs)

    def validate(generator, discriminator, clips, *args, **kwargs):
        scores = real_validate(generator, discriminator, clips, *args, **kwargs)
        clock.advance(window_s * len(scores[0]))
        return scores

    monkeypatch.setattr(train_module, "_step", step)
    for module in (train_module, timing):
        monkeypatch.setattr(module, "validate", validate)


def timed(data, out, **kw) -> TrainOptions:
    """A --time run of the tiny preset: the epochs are the plan's."""
    return options(data, out, **{"pretrain_epochs": None, "epochs": None, "val_clips": 1, **kw})


# ------------------------------------------------------------------------------ reading --time


@pytest.mark.parametrize("text, seconds", [
    ("45m", 2700), ("1.5h", 5400), ("90s", 90), ("300", 300), ("1h30m", 5400), ("2m30s", 150), (" 20M ", 1200),
])
def test_time_takes_hours_minutes_seconds_or_plain_seconds(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0", "0s", "-5m", "inf", "nan", "1e9", "45 minutes", "m", "", "1d", "5", "2000h", "1h-5m"])
def test_a_time_that_is_not_a_positive_finite_duration_is_refused(text):
    with pytest.raises(TrainingError, match="--time"):
        parse_duration(text)


def test_a_bad_time_on_the_command_line_is_one_error_line(data3, tmp_path):
    result = run_cli(data3, "--out", tmp_path / "m.safetensors", "--time", "-5m")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert re.fullmatch(r"error: --time -5m: must be from 30 s to 1000 h .*\n", result.stderr, re.S), result.stderr
    assert not (tmp_path / "m.safetensors.ckpt").exists()


@pytest.mark.parametrize("kw, says", [
    (dict(time_budget=600, epochs=3), "--epochs with --time"),
    (dict(time_budget=600, pretrain_epochs=0), "--pretrain-epochs with --time"),
    (dict(time_budget=float("inf")), "--time inf"),
    (dict(time_budget=float("nan")), "--time nan"),
    (dict(time_budget=0), "--time 0"),
    (dict(time_shares="3,0,1"), "add --time"),
    (dict(time_budget=600, time_shares="0,0,1"), "only the discriminator phase"),
    (dict(time_budget=600, time_shares="1,x,1"), "three shares"),
    (dict(time_budget=600, time_shares="0,0,0"), "three shares"),
    (dict(time_budget=600, time_shares="1,-1,1"), "three shares"),
    (dict(time_budget=600, time_shares="1e308,1e308,1"), "three shares"),  # each finite, their sum not
    (dict(resume=True, time_shares="1,0,1"), "a resumed run keeps its own shares"),
    (dict(resume=True, time_budget=600, time_shares="1,0,1"), "a resumed run keeps its own shares"),
])
def test_time_options_are_checked_before_any_work(data3, tmp_path, kw, says):
    out = tmp_path / "m.safetensors"
    with pytest.raises(TrainingError, match=re.escape(says)):
        train(timed(data3, out, **{"pretrain_epochs": None, "epochs": None, **kw}))
    assert not out.with_name(out.name + ".ckpt").exists() and not lock_of(out).exists()


def test_a_time_run_with_a_discriminator_at_chance_is_told_to_give_it_time():
    from stan_cli.training.selection import discriminator_at_chance

    untrained = {"val_d": 0.705, "val_d_fake": 0.681}
    assert "--time-shares" in discriminator_at_chance(untrained, timed=True)
    assert "--discriminator-epochs" not in discriminator_at_chance(untrained, timed=True)


def test_shares_are_three_numbers():
    assert parse_shares("3,0,1") == {"pretrain": 3.0, "adversarial": 0.0, "discriminator": 1.0}
    assert SHARES["adversarial"] == 0 and INIT_SHARES["pretrain"] == INIT_SHARES["discriminator"]


# --------------------------------------------------------------------------------------- the plan


def costs(**kw) -> Costs:
    """A CPU-like machine: 1 s a generator step, 3 s adversarial, 1.5 s discriminator, 100 steps an epoch."""
    base = dict(
        device="cpu", step_s={"pretrain": 1.0, "adversarial": 3.0, "discriminator": 1.5}, epoch_steps=100,
        end_s={"pretrain": 20.0, "adversarial": 20.0, "discriminator": 30.0}, calibration_s=40.0,
    )
    return Costs(**{**base, **kw})


def plan_for(budget: float, shares: dict, spent: float = 60.0, c: Costs | None = None):
    c = c or costs()
    deadline = Deadline(new_budget(budget, shares), start=0.0, costs=c)
    return budget_plan(c, deadline.split("pretrain", spent), budget, spent)


@pytest.mark.parametrize("shares", ["1e306,0,0", "1e306,0,1e306", "1e-300,0,1e-300"])
def test_huge_or_tiny_shares_plan_like_their_proportions(shares):
    """Shares are proportions: 1e306 times a budget overflows, 1e306 / 1e306 does not."""
    plan = plan_for(1800, parse_shares(shares))
    expected = plan_for(1800, parse_shares(",".join("1" if float(v) else "0" for v in shares.split(","))))
    assert plan.seconds == pytest.approx(expected.seconds) and plan.epochs == pytest.approx(expected.epochs)
    assert all(math.isfinite(v) for v in plan.seconds.values()) and math.isfinite(plan.total_s)


@pytest.mark.parametrize("budget", [600, 1800, 2700, 3 * 3600, 20 * 3600])
def test_the_plan_fits_the_budget_in_the_default_shares(budget):
    plan = plan_for(budget, SHARES)
    assert budget - margin_s(budget) - 1e-6 <= plan.total_s <= budget  # all of it but the margin, no more
    assert list(plan.seconds) == ["pretrain", "discriminator"]  # no adversarial share by default
    assert plan.seconds["pretrain"] == pytest.approx(3 * plan.seconds["discriminator"])
    c = costs()
    for phase, epochs in plan.epochs.items():  # the epochs fit their part: steps and an epoch end for each begun
        whole = int(epochs)
        used = whole * c.epoch_s(phase) + (epochs - whole) * c.epoch_steps * c.step_s[phase] + (c.end_s[phase] if epochs > whole else 0)
        assert used <= plan.seconds[phase] + 1e-6
        assert used >= plan.seconds[phase] - c.epoch_s(phase)


@pytest.mark.parametrize("scale", [1.0, 100.0, 1e-3])
def test_a_resumed_split_does_not_depend_on_the_scale_of_the_shares(scale):
    """A phase left out keeps its part in seconds (what it would have had), not its raw share, so
    that a resumed run with more time weighs seconds against seconds."""
    shares = {p: s * scale for p, s in SHARES.items()}
    record = new_budget(180, shares)
    first = Deadline(record, start=0.0, costs=costs())
    assert first.begin_phase("pretrain", 60.0) and "discriminator" not in first.split("pretrain", 60.0)  # left out
    first.save(100.0)  # stopped 40 s into the generator's part
    resumed = Deadline({**record, "seconds": record["used_s"] + 3600}, start=0.0, costs=costs())  # --resume --time 1h
    seconds = resumed.split("pretrain", 0.0)
    reference = Deadline({**new_budget(180, dict(SHARES))}, start=0.0, costs=costs())
    reference.begin_phase("pretrain", 60.0)
    reference.save(100.0)
    expected = Deadline({**reference.record, "seconds": reference.record["used_s"] + 3600}, start=0.0, costs=costs()).split("pretrain", 0.0)
    assert set(seconds) == {"pretrain", "discriminator"} and seconds == pytest.approx(expected)
    assert all(isinstance(v, float) and v > 0 for v in record["slots_s"].values() if v)


def test_a_share_too_small_to_train_leaves_its_phase_out_and_too_little_leaves_none():
    # 60 s spent + 40 calibration + margin: 10 generator steps and an epoch end need 30 s, the
    # discriminator's 45 s; 180 s leaves 71 s: the discriminator's quarter is too small, the
    # generator gets all; 130 s leaves 22 s: nothing.
    assert plan_for(180, SHARES).seconds == {"pretrain": pytest.approx(180 - 60 - 40 - margin_s(180))}
    assert plan_for(130, SHARES).seconds == {}
    init = plan_for(2 * 3600, INIT_SHARES)
    assert init.seconds["pretrain"] == pytest.approx(init.seconds["discriminator"])


def test_the_plan_says_the_epochs_and_the_time():
    text = describe(plan_for(2700, SHARES))
    assert re.fullmatch(
        r"plan for 45 min: generator about [\d.]+ epochs \(\d+ min\), discriminator about [\d.]+ \(\d+ min\); "
        r"reading the footage and timing 1.0 min, calibration 40 s: about 4\d min on cpu", text,
    ), text


def test_without_time_the_recipe_is_estimated_and_many_hours_on_a_cpu_get_a_hint():
    c = costs(epoch_steps=700)  # Ped2's
    plan = fixed_plan(c, {"pretrain": 10 * 700, "adversarial": 20 * 700}, spent_s=60)
    assert plan.total_s == pytest.approx(60 + 10 * (700 + 20) + 20 * (2100 + 20) + 40)
    text = describe(plan)
    assert text.startswith("plan: generator 10 epochs (") and ", adversarial 20 (" in text and "on cpu" in text
    assert plan.total_s > MANY_HOURS_S and "many hours on a CPU: --time" in text
    short = describe(fixed_plan(c, {"pretrain": 700}, spent_s=5))
    assert "--time" not in short and "generator 1 epoch (" in short
    gpu = fixed_plan(costs(device="cuda:0", epoch_steps=700), {"pretrain": 10 * 700, "adversarial": 20 * 700}, spent_s=60)
    assert "--time" not in describe(gpu)  # the hint is for CPUs


def test_as_option_rounds_up():
    assert as_option(49.2) == "50s" and as_option(601) == "11m"


# ------------------------------------------------------------------------------ timing is harmless


def test_timing_changes_neither_networks_nor_optimisers_nor_random_state(data3, tmp_path):
    from stan_cli.dataset import WindowSet, load_clips
    from stan_cli.model import TINY, Discriminator, Generator

    clips = load_clips(data3, TINY.image_size, tmp_path / "cache")
    opts = TrainOptions(data=data3, out=tmp_path / "m.safetensors", preset="tiny", batch_size=4)
    opts.ckpt_dir.mkdir()
    torch.manual_seed(0)
    g, d = Generator(TINY), Discriminator(TINY)
    before = [{k: v.clone() for k, v in net.state_dict().items()} for net in (g, d)]
    rng = torch.get_rng_state()
    c = timing.measure(opts, Rank(), torch.device("cpu"), (g, d), WindowSet(clips[:2]), clips[2:], 20,
                       ["pretrain", "adversarial", "discriminator"], train_module._step)
    assert all(torch.equal(b[k], v) for b, net in zip(before, (g, d)) for k, v in net.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert set(c.step_s) == {"pretrain", "adversarial", "discriminator"} and all(s > 0 for s in c.step_s.values())
    assert c.epoch_steps == 10 and c.calibration_s > 0
    assert list(opts.ckpt_dir.iterdir()) == []  # the checkpoint it timed is gone


# --------------------------------------------------------------------------------- the deadline


def selection_rows(out) -> list[dict]:
    return log_rows(out.with_name(out.stem + ".val.csv"))


def test_a_time_run_plans_trains_and_stops_at_its_deadline_calibrated(data3, tmp_path, clock, monkeypatch):
    # 1 s a step, 10 steps an epoch, 0.25 s a scored window (20 validation windows: 5 s an epoch end).
    slow(monkeypatch, clock, step_s=1.0, window_s=0.25)
    out, events, start = tmp_path / "m.safetensors", Events(), clock.t
    result = train(timed(data3, out, time_budget=150), events)
    assert clock.t - start <= 150  # calibration included

    [plan] = events.of("plan")
    assert list(plan["plan"].seconds) == ["pretrain", "discriminator"]
    assert plan["text"].startswith("plan for 2.5 min: generator about ")
    kinds = [k for k, _ in events.events]
    assert kinds.index("plan") < kinds.index("epoch_start")  # said before the first epoch

    rows = selection_rows(out)
    pretrain = [r for r in rows if r["phase"] == "pretrain"]
    disc = [r for r in rows if r["phase"] == "discriminator"]
    assert pretrain and disc and [r["phase"] for r in rows] == ["pretrain"] * len(pretrain) + ["discriminator"] * len(disc)
    cut = [r for r in rows if r["epoch_fraction"]]
    assert cut and all(0 < float(r["epoch_fraction"]) < 1 for r in cut)  # the clock ended a phase inside an epoch

    stan = load_weights(out)
    training = stan.training
    assert training["pretrain_epochs"] == len(pretrain) and training["epochs"] == 0 and training["discriminator_epochs"] == len(disc)
    # the selection rule, a part epoch among the candidates
    best_g = min(pretrain, key=lambda r: float(r["val_pixel"]))
    best_d = min(disc, key=lambda r: float(r["val_loss_d"]))
    assert training["generator_selected"]["step"] == int(best_g["step"])
    assert training["selected"]["step"] == int(best_d["step"]) == result.selected["step"]
    assert stan.calibration["source"] == "validation"
    budget = training["time_budget"]
    assert budget["seconds"] == 150 and budget["shares"] == SHARES and 100 < budget["used_s"] <= 150
    assert [p["budget_s"] for p in budget["plans"]] == [150]
    assert read_checkpoint_progress(ckpt_of(out))["phase"] == "done"


def test_a_phase_cut_inside_an_epoch_is_validated_and_may_be_selected(data3, tmp_path, clock, monkeypatch):
    # generator only: 45 s less 3 s of timing and a 5.9 s margin leave 36.1 s, 10 steps of 1 s an
    # epoch (validation costs nothing here): three epochs, and the fourth cut after 6 of 10 steps
    slow(monkeypatch, clock, step_s=1.0)
    out, events = tmp_path / "m.safetensors", Events()
    train(timed(data3, out, time_budget=45, time_shares="1,0,0"), events)
    ends = events.of("epoch_end")
    assert [e["epoch"] for e in ends] == [1, 2, 3, 4] and not any("epoch_fraction" in e for e in ends[:-1])
    assert ends[-1]["epoch_fraction"] == 0.6
    assert ends[-1]["selected"] == (ends[-1]["val_pixel"] < min(e["val_pixel"] for e in ends[:-1]))
    assert load_weights(out).training["pretrain_epochs"] == 4


def test_a_budget_too_small_to_train_is_refused_naming_the_least(data3, tmp_path, clock, monkeypatch):
    slow(monkeypatch, clock, step_s=20.0)  # timing alone (3 steps of each phase) takes 120 s of a 90 s budget
    out = tmp_path / "m.safetensors"
    with pytest.raises(TrainingError, match=r"--time 1\.5 min: too short .* on cpu: reading it and timing took 2\.0 min, .* Give --time (\d+)m or more\.") as info:
        train(timed(data3, out, time_budget=90))
    least = int(re.search(r"Give --time (\d+)m", str(info.value))[1]) * 60
    assert not ckpt_of(out).exists() and not out.exists()
    # the least it names trains
    events = Events()
    train(timed(data3, out, time_budget=least), events)
    assert events.of("step") and out.exists()


def test_with_init_the_plan_shares_the_time_between_generator_and_discriminator(data3, tmp_path, clock, monkeypatch):
    first = tmp_path / "first.safetensors"
    train(options(data3, first))
    slow(monkeypatch, clock, step_s=1.0)
    events = Events()
    train(timed(data3, tmp_path / "m.safetensors", time_budget=300, init=first), events)
    [plan] = events.of("plan")
    assert plan["plan"].seconds["pretrain"] == pytest.approx(plan["plan"].seconds["discriminator"])


# ------------------------------------------------------------------------------ resume on time


def test_a_time_run_resumes_with_what_is_left_or_with_a_new_time(data3, tmp_path, clock, monkeypatch):
    slow(monkeypatch, clock, step_s=1.0, window_s=0.25)
    out = tmp_path / "m.safetensors"
    with pytest.raises(KeyboardInterrupt):  # killed at the 40th training step (after 4 epochs' checkpoints)
        train(timed(data3, out, time_budget=200), Events(at="step", n=40))
    record = read_checkpoint_progress(ckpt_of(out))["budget"]
    assert 40 < record["used_s"] < 80 and record["seconds"] == 200

    with pytest.raises(TrainingError, match="--epochs: this run plans its epochs by its --time budget"):
        train(timed(data3, out, resume=True, epochs=3))
    events, start = Events(at="step", n=5), clock.t
    with pytest.raises(KeyboardInterrupt):  # what is left of the 200 s
        train(timed(data3, out, resume=True), events)
    [plan] = events.of("plan")
    assert plan["plan"].budget_s == pytest.approx(200 - record["used_s"])
    assert "(what is left of the run's 3.3 min)" in plan["text"]

    events, start = Events(), clock.t
    train(timed(data3, out, resume=True, time_budget=60), events)  # 60 s from now, whatever was left
    assert clock.t - start <= 60
    [plan] = events.of("plan")
    assert plan["plan"].budget_s == 60
    budget = load_weights(out).training["time_budget"]
    # the plan of the command killed before its first checkpoint is lost with its steps
    assert [p["budget_s"] for p in budget["plans"]] == [200, 60]
    assert budget["seconds"] == pytest.approx(record["used_s"] + 60)  # what it had used, and the 60 s given

    with pytest.raises(TrainingError, match=r"this --time run has finished\. Continue it with more epochs of its last phase \(--[a-z-]+ N, N > \d+\), or train on from its weights in a new run: --init .*m\.safetensors --time T"):
        train(timed(data3, out, resume=True, time_budget=60))


class StopAtPhase(Events):
    """Killed (`_Stop`) as `phase` begins its first epoch."""

    def __init__(self, phase: str) -> None:
        super().__init__()
        self.phase = phase

    def __call__(self, kind: str, **info) -> None:
        super().__call__(kind, **info)
        if kind == "epoch_start" and info["phase"] == self.phase:
            raise _Stop


def test_a_run_stopped_while_calibrating_writes_its_weights_and_refuses_more_time(data3, tmp_path, clock, monkeypatch):
    slow(monkeypatch, clock, step_s=1.0, window_s=0.25)
    out = tmp_path / "m.safetensors"
    with pytest.raises(KeyboardInterrupt):  # every phase trained, stopped in the calibration
        train(timed(data3, out, time_budget=150), Events(at="calibrate"))
    progress = read_checkpoint_progress(ckpt_of(out))
    assert not out.exists() and set(progress["budget"]["ended"]) == set(PHASES)
    # more time would train nothing that is still open: refused, saying what to do
    with pytest.raises(TrainingError, match=r"has trained all its phases and was stopped before its weights were written\. Resume it without --time"):
        train(timed(data3, out, resume=True, time_budget=600))
    events = Events()
    train(timed(data3, out, resume=True), events)  # the plain resume calibrates and writes, training nothing
    assert out.exists() and not events.of("step") and events.of("calibrate")
    assert read_checkpoint_progress(ckpt_of(out))["phase"] == "done"


def test_more_time_after_a_phase_ended_goes_to_the_phases_still_open(data3, tmp_path, clock, monkeypatch):
    slow(monkeypatch, clock, step_s=1.0, window_s=0.25)
    out = tmp_path / "m.safetensors"
    with pytest.raises(_Stop):  # the generator's part ended, killed as the discriminator phase begins
        train(timed(data3, out, time_budget=300), StopAtPhase("discriminator"))
    assert read_checkpoint_progress(ckpt_of(out))["budget"]["ended"] == ["pretrain", "adversarial"]
    events = Events()
    train(timed(data3, out, resume=True, time_budget=120), events)
    [plan] = events.of("plan")
    assert list(plan["plan"].seconds) == ["discriminator"]  # the generator's phase is not reopened
    assert {e["phase"] for e in events.of("epoch_start")} == {"discriminator"}


def test_a_resume_says_that_another_init_is_ignored(data3, tmp_path, clock, monkeypatch):
    first, other = tmp_path / "first.safetensors", tmp_path / "other.safetensors"
    train(options(data3, first))
    train(options(data3, other, seed=1))
    slow(monkeypatch, clock, step_s=1.0)
    out = tmp_path / "m.safetensors"
    with pytest.raises(KeyboardInterrupt):
        train(timed(data3, out, time_budget=300, init=first, checkpoint_every=1), Events(at="step", n=3))
    same, changed = Events(at="step", exc=_Stop), Events(at="step", exc=_Stop)
    with pytest.raises(_Stop):
        train(timed(data3, out, resume=True, init=first), same)  # the same command again with --resume: nothing to say
    assert not [w for w in same.of("warning") if "--init" in w["message"]]
    with pytest.raises(_Stop):
        train(timed(data3, out, resume=True, init=other), changed)
    [warning] = [w["message"] for w in changed.of("warning") if "--init" in w["message"]]
    assert f"--init {other} ignored" in warning and str(first) in warning


def test_time_resumes_only_a_time_run(data3, tmp_path):
    out = tmp_path / "m.safetensors"
    with pytest.raises(KeyboardInterrupt):
        train(options(data3, out, pretrain_epochs=2, val_clips=1, checkpoint_every=1), Events(at="step", n=3))
    with pytest.raises(TrainingError, match="started without --time"):
        train(timed(data3, out, resume=True, time_budget=600))


# ------------------------------------------------------------------- the estimate without --time


def test_without_time_the_recipe_is_estimated_before_the_first_epoch(data3, tmp_path, clock, monkeypatch):
    slow(monkeypatch, clock, step_s=100.0)  # 10 steps an epoch: 1000 s an epoch, 30 epochs
    events = Events(at="epoch_start", exc=_Stop)
    with pytest.raises(_Stop):
        train(options(data3, tmp_path / "m.safetensors", pretrain_epochs=10, epochs=20, val_clips=1), events)
    [plan] = events.of("plan")
    assert plan["plan"].budget_s is None and plan["plan"].epochs == {"pretrain": 10, "adversarial": 20}
    assert plan["plan"].spent_s == 600  # 3 steps timed of each phase
    assert 30 * 1000 <= plan["plan"].total_s - 600 <= 30 * 1000 + 400
    assert re.match(r"plan: generator 10 epochs \(2.8 h\), adversarial 20 \(5.6 h\); .*: about 8.\d h on cpu\. That is many hours on a CPU: --time", plan["text"]), plan["text"]


# ------------------------------------------------------------------------------ honest progress


def test_progress_lines_agree_with_the_clock(data3, tmp_path, clock, monkeypatch):
    # Steps of 2 windows alternate 0.5 s and 9.5 s (a slow step every other one, as a checkpoint
    # makes): 0.4 samples/s on the wall clock, 5 s a step. Each step's own rate would say 4 or 0.21.
    slow(monkeypatch, clock, step_s=lambda k: 0.5 if k % 2 else 9.5)
    out = tmp_path / "m.safetensors"
    result = run_cli(data3, "--out", out, "--preset", "tiny", "--device", "cpu", "--pretrain-epochs", "1",
                     "--epochs", "0", "--val-clips", "0", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    lines = re.findall(r"pretrain 1/1: (\d+)/30 .* ([\d.]+) samples/s \(at [\d:]+, [\d:]+ elapsed(?:, about (\d+):(\d\d):(\d\d) left)?\)", result.stderr)
    mid = [(int(done), float(rate), 3600 * int(h) + 60 * int(m) + int(s)) for done, rate, h, m, s in lines if int(done) < 30]
    assert len(mid) >= 2, result.stderr  # a line a minute: 150 s of steps
    for done, rate, left in mid:
        assert rate == pytest.approx(0.4, abs=0.05)
        assert left == pytest.approx(5 * (30 - done), rel=0.15)
    rows = log_rows(out.with_name("m.log.csv"))
    assert all(float(r["samples_per_s"]) == pytest.approx(0.4, abs=0.05) for r in rows[13:])  # past the first minute


def test_throughput_is_the_rate_over_the_last_minute_of_wall_time():
    meter = Throughput(0.0)
    assert meter.samples_per_s == 0 and meter.step_s is None
    for k in range(1, 31):  # 3 samples every 2 s for 60 s, then every 10 s
        meter.add(2.0 * k, 3)
    assert meter.samples_per_s == pytest.approx(1.5) and meter.step_s == pytest.approx(2.0)
    for k in range(1, 7):
        meter.add(60 + 10.0 * k, 3)
    assert meter.samples_per_s == pytest.approx(0.3) and meter.step_s == pytest.approx(10.0)


@pytest.mark.parametrize("epochs, says", [(None, "pretrain epoch 7, batch 158 of 507 done"),
                                          (10, "pretrain epoch 7 of 10, batch 158 of 507 done")])
def test_the_resume_line_names_the_planned_epochs_only_when_there_are_some(epochs, says):
    from rich.console import Console

    console = Console(record=True, width=200, file=open("/dev/null", "w"))
    display = cli._TrainDisplay(cli._LogProgress(console), recalibration=False)
    display("resume", step=3200, checkpoint="/runs/w.safetensors.ckpt/last.safetensors")
    display("epoch_start", phase="pretrain", epoch=6, epochs=epochs, steps=507, done=158)
    [line] = [ln for ln in console.export_text().splitlines() if ln.startswith("resuming at step 3200 from ")]
    assert line.endswith(f": {says}") and "None" not in line


def test_a_budget_gone_while_reading_is_refused_before_timing_any_step(data3, tmp_path, clock, monkeypatch):
    """Reading the footage took the whole --time: said at once, without first timing steps (which on
    a slow machine took minutes more for a 30-second budget)."""
    real_prepare, steps = train_module.prepare_data, []

    def prepare(*args, **kwargs):
        clock.advance(100.0)
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(train_module, "prepare_data", prepare)
    slow(monkeypatch, clock, step_s=lambda k: steps.append(k) or 1.0)
    out = tmp_path / "m.safetensors"
    with pytest.raises(TrainingError, match=r"--time 1\.0 min: too short to train on this footage: reading it took 1\.7 min already, "
                                            r"before any training\. Give --time at least 6m\."):
        train(timed(data3, out, time_budget=60))
    assert steps == [] and not ckpt_of(out).exists() and not out.exists()
