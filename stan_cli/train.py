"""`train(...)`: the paper's two-phase adversarial training, resumable, calibrated, distributed.

Phases (STAN.md, "Training"): `pretrain` trains the generator alone on the pixel loss; then
`adversarial` alternates one discriminator step on L_D and one generator step on L_G per batch.
An optional third phase, not in the paper, `discriminator` (--discriminator-epochs), trains the
discriminator alone on L_D against the selected generator, which is frozen: in our runs the
adversarial phase ended with the discriminator at chance (2 ln 2, the GAN's own equilibrium), which
leaves its score and guided-backpropagation maps without information. Its fakes are windows with
the generated middle frame and, for --pseudo-share of them, temporal pseudo-anomalies made from the
normal training windows (`pseudo.py`: skipped frames, reversed order, frozen frames, a moving
pasted patch, one region with skipped frames), so that it learns what normal motion looks like,
not only "is the middle frame generated?" (`--pseudo-anomalies none`: generated windows only, as
before 0.2.0).

The pixel term of L_G is the L2 norm ||G(neighbours) - X_t||_2 of the paper (`--pixel-norm l2`),
not the mean squared error that the score uses: the two differ by far more than a constant, and
with lambda = 1 the L2 norm keeps the pixel term the larger part of L_G, as in the paper. With the
MSE (about 1e-3 here against about 0.7 for -log D) the adversarial term dominated, the
generator learnt to fool the discriminator, and the discriminator stayed at chance (2 ln 2).
Validation, selection, calibration and the score use the MSE throughout.

`init` starts a new run from an existing weights file (fine-tuning, e.g. the shipped Ped2 weights
on another camera): both networks and their config come from it, the optimisers start fresh.
`reset_discriminator` keeps only the generator and starts the discriminator from random weights
(the shipped H200 discriminator had stayed at chance and learns far slower than a fresh one).

This file is the loop: phases, epochs, steps, and the validation at each epoch end. What it calls
lives in `training/`, one job a module: `options` (what a run is), `checks` (refusals before any
work), `ranks` (torchrun), `checkpoints` (locks and what a run leaves on disk), `resume` (where a
run stands: progress, epochs, --init), `data` (footage, split, order), `fakes` and `losses` (the
step's parts), `validation`, `selection` (the rule, fixed before any evaluation), `calibration`
(the threshold and the training record), `logs` (CSV logs and the loss plot).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch

from .dataset import Clip, WindowSet
from .errors import TrainingError
from .inference import autocast, precision_warning, resolve_device
from .model import PRESETS, Discriminator, Generator, d_loss_map, patch_label_loss, pixel_loss, split_window
from .training import ranks
from .training.calibration import calibrate, calibration_clips, training_record
from .training.checkpoints import Scratch, StopFlag, run_folder
from .training.budget import Costs
from .training.checks import check_batch_memory, check_options
from .training.clock import Deadline, Throughput
from .training.data import epoch_batches, prepare_data
from .training.fakes import fake_targets, fake_windows, generated_real_rows, load_old_generator, pseudo_batch, real_windows
from .training.logs import log_step, log_validation, plot_losses, publish_logs
from .training.losses import check_finite, grad_norm, pixel_term
from .training.options import PHASES, Event, TrainOptions, TrainResult, final_phase, is_recalibration, phases, pseudo_plan, set_epochs
from .training.plan import plan_run
from .training.ranks import Rank
from .training.resume import continue_finished, init_record, load_init, run_options, start_progress, start_record
from .training.selection import D_SELECTION_RULE, SELECTION_RULE, discriminator_at_chance, epoch_record, is_selected, selection_value
from .training.validation import ranking_auc, validate, validate_pseudo
from .weights import load_weights, save_checkpoint, save_weights
from .windows import to_tensor

# The names tests, scripts and benchmarks import from here under their earlier spellings.
_Rank, _Scratch, _StopFlag = Rank, Scratch, StopFlag
_init_record, _discriminator_at_chance = init_record, discriminator_at_chance
_fake_windows, _pseudo_batch = fake_windows, pseudo_batch

__all__ = [
    "D_SELECTION_RULE", "SELECTION_RULE", "TrainOptions", "TrainResult", "TrainingInterrupted", "is_recalibration",
    "pixel_term", "pseudo_plan", "ranking_auc", "selection_value", "train", "validate", "validate_pseudo",
]


class TrainingInterrupted(TrainingError):
    """The run stopped on a signal after writing a checkpoint; `--resume` continues it."""


def train(opts: TrainOptions, on_event: Event = lambda kind, **info: None) -> TrainResult | None:
    """Train both networks on normal footage under opts.data and write opts.out.

    Returns the result on rank 0 (None on other ranks of a distributed run). Raises
    TrainingInterrupted after a clean stop on Ctrl-C / SIGTERM (the checkpoint is written).
    """
    started = time.perf_counter()  # a --time budget counts from here: reading the footage and calibrating are in it
    opts = TrainOptions(**{**asdict(opts), "data": Path(opts.data), "out": Path(opts.out)})
    check_options(opts)
    init = load_init(opts)
    rank = Rank()
    device = resolve_device(opts.device)
    check_batch_memory(opts, device, rank.world)
    device = ranks.start(rank, device)
    emit = on_event if rank.main else (lambda kind, **info: None)
    if message := precision_warning(device, opts.precision):
        emit("warning", message=message)
    try:
        with run_folder(opts, rank) as scratch:
            return _run(opts, rank, device, emit, init, scratch, started)
    finally:
        ranks.stop(rank)


@dataclass
class _Run:
    """What the parts of the loop share (nanoGPT keeps these as its script's globals)."""

    opts: TrainOptions
    rank: Rank
    device: torch.device
    emit: Event
    generator: Generator
    discriminator: Discriminator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    scratch: Scratch | None
    progress: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    g_model: torch.nn.Module | None = None  # the networks as the step calls them: DDP-wrapped when distributed
    d_model: torch.nn.Module | None = None
    costs: Costs | None = None  # what a step and a validation of each phase take here (None: nothing to train)
    deadline: Deadline | None = None  # a --time run's clock
    end_s: dict[str, float] = field(default_factory=dict)  # the last epoch end's seconds (validation, checkpoint, plot), per phase
    old_generator: Generator | None = None  # --old-generator's, frozen: the discriminator phase's generated fakes

    @property
    def last_path(self) -> Path:
        return self.opts.ckpt_dir / "last.safetensors"

    @property
    def best_path(self) -> Path:
        return self.opts.ckpt_dir / "best.safetensors"

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self.emit("warning", message=message)

    def checkpoint(self) -> None:
        if self.deadline is not None:
            self.deadline.save(time.perf_counter())
        if self.rank.main:
            save_checkpoint(self.last_path, self.generator, self.discriminator, self.opt_g, self.opt_d, self.progress, PRESETS[self.opts.preset])
            if self.scratch is not None:
                self.scratch.checkpointed = True


def _run(opts: TrainOptions, rank: Rank, device: torch.device, emit: Event, init, scratch: Scratch | None, started: float) -> TrainResult | None:
    if rank.main:
        opts.ckpt_dir.mkdir(parents=True, exist_ok=True)
    opts = run_options(opts, rank, emit)
    run = _Run(opts, rank, device, emit, *_networks(opts, device, init), scratch=scratch)
    run.progress = start_progress(opts, rank, init, (run.generator, run.discriminator, run.opt_g, run.opt_d), emit)
    finish_only = continue_finished(opts, run.progress)
    if not finish_only:  # only the discriminator phase uses it: a run left only to write its weights does not
        run.old_generator = load_old_generator(opts, run.progress, PRESETS[opts.preset], device)
    windows, train_clips, val_clips = prepare_data(opts, rank, PRESETS[opts.preset].image_size, run.progress, emit, run.warn)
    start_record(opts, rank, run.progress["step"], scratch)
    if not finish_only:  # timed on copies, before the networks are wrapped for DDP
        networks, clips = (run.generator, run.discriminator), (train_clips, val_clips)
        step = partial(_step, old_generator=run.old_generator)
        run.costs, run.deadline = plan_run(opts, rank, device, run.progress, networks, windows, clips, started, step, emit)
    run.g_model, run.d_model = ranks.wrap(run.generator, rank, device), ranks.wrap(run.discriminator, rank, device)
    _train_phases(run, windows, val_clips, finish_only)
    if not rank.main:
        return None
    result = _finish(run, train_clips, val_clips)
    # Marked done only once the weights are written: a crash while calibrating resumes into
    # _finish again, even when --overwrite left an earlier run's weights at --out meanwhile.
    if not is_recalibration(opts):  # a recalibration trained nothing: there is nothing to continue
        final = final_phase(opts)
        run.progress.update(phase="done", done_phase=final, done_epochs=dict(phases(opts))[final])
        if "budget" in run.progress:  # more of it goes on by epochs, like any finished run
            run.progress["budget"]["finished"] = True
        run.checkpoint()
    emit("done", result=result)
    return result


def _networks(opts: TrainOptions, device: torch.device, init) -> tuple:
    """Generator, discriminator and their Adam optimisers: seeded, or --init's networks."""
    config = PRESETS[opts.preset]
    torch.manual_seed(opts.seed)
    generator, discriminator = Generator(config).to(device), Discriminator(config).to(device)
    if init is not None:
        generator.load_state_dict(init.generator.state_dict())
        if not opts.reset_discriminator:
            discriminator.load_state_dict(init.discriminator.state_dict())
    opt_g = torch.optim.Adam(generator.parameters(), lr=opts.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=opts.lr, betas=(0.5, 0.999))
    return generator, discriminator, opt_g, opt_d


def _train_phases(run: _Run, windows: WindowSet, val_clips: list[Clip], finish_only: bool) -> None:
    """Every phase from where the run stands up to the final one, epoch by epoch; under --time each
    phase until its part of the time ends, and a phase left without time is left out."""
    progress = run.progress
    first = len(PHASES) if finish_only else PHASES.index(progress["phase"])
    clock = (time.perf_counter(), progress["wall_s"])  # the run's wall time: training alone, across resumes
    with StopFlag() as stop:
        for phase in PHASES[first:]:
            # Up to the final phase: the empty ones after it are never entered, so a run stays where
            # it ended, batch and all.
            if PHASES.index(phase) > PHASES.index(final_phase(run.opts)):
                break
            if run.deadline is not None and phase in run.deadline.record.get("ended", []):
                continue  # ended before a stop: trained to its part of the time, or left out
            if run.deadline is None or _phase_begins(run, phase):
                if progress["phase"] != phase:
                    _enter_phase(run, phase)
                _train_phase(run, windows, phase, val_clips, stop, clock)
            if run.deadline is not None:
                _end_phase(run, phase, val_clips, len(windows))
        # A signal during the last epoch's end (its validation, plot, checkpoint) came after the
        # last step's check: it still stops here, before calibration, and the checkpoint is there.
        _stop_if_asked(run, stop, f"after the last epoch (step {run.progress['step']})")


def _train_phase(run: _Run, windows: WindowSet, phase: str, val_clips: list[Clip], stop: StopFlag, clock: tuple[float, float]) -> None:
    progress = run.progress
    n_epochs = dict(phases(run.opts))[phase]
    while progress["epoch"] < n_epochs:
        if _train_epoch(run, windows, phase, n_epochs, stop, clock):
            return  # the clock cut it: _end_phase validates what it trained
        progress.update(epoch=progress["epoch"] + 1, batch=0)
        if run.rank.main:
            _end_of_epoch(run, phase, val_clips)
        run.checkpoint()
        run.rank.barrier()
        _stop_if_asked(run, stop, f"at the end of {phase} epoch {progress['epoch']} (step {progress['step']})")


def _stop_if_asked(run: _Run, stop: StopFlag, where: str) -> None:
    """TrainingInterrupted if a signal came (on any rank) since the last check; a checkpoint is written."""
    if ranks.any_rank(stop.stop, run.rank, run.device):
        raise _interrupted(run, where)


def _interrupted(run: _Run, where: str) -> TrainingInterrupted:
    return TrainingInterrupted(f"stopped {where}; checkpoint written to {run.last_path}. Run the same command with --resume to continue.")


def _phase_begins(run: _Run, phase: str) -> bool:
    """Rank 0's clock gives the phase its part of the time, or none."""
    begins = run.deadline.begin_phase(phase, time.perf_counter())
    return not ranks.any_rank(run.rank.main and not begins, run.rank, run.device)


def _end_phase(run: _Run, phase: str, val_clips: list[Clip], n_windows: int) -> None:
    """A --time phase ends where its time did. An epoch it cut short counts as its last, its state
    validated (and selected or not) like an epoch end's; its epochs become those it trained."""
    progress = run.progress
    trained = progress["phase"] == phase
    if trained and progress["batch"]:
        fraction = progress["batch"] / len(epoch_batches(n_windows, run.opts, phase, progress["epoch"], run.rank))
        progress.update(epoch=progress["epoch"] + 1, batch=0)
        if run.rank.main:
            _end_of_epoch(run, phase, val_clips, fraction)
    set_epochs(run.opts, progress, phase, progress["epoch"] if trained else 0)
    ended = run.deadline.record.setdefault("ended", [])
    if phase not in ended:  # a resumed run, even with --time T more, does not reopen it
        ended.append(phase)
    run.checkpoint()
    run.rank.barrier()


def _enter_phase(run: _Run, phase: str) -> None:
    progress = run.progress
    progress.update(phase=phase, epoch=0, batch=0)
    # Against the generator the selection rule chose, not the last epoch's. Only rank 0 keeps the
    # selection; every rank loads the state it saved (DDP replicas stay equal).
    if phase == "discriminator" and ranks.any_rank(run.rank.main and bool(progress.get("best")), run.rank, run.device):
        chosen = load_weights(run.best_path)
        run.generator.load_state_dict(chosen.generator.state_dict())
        run.discriminator.load_state_dict(chosen.discriminator.state_dict())
        run.opt_d.state.clear()  # its moments belonged to the last epoch's discriminator
        progress["generator_selected"] = progress.get("best")
        run.checkpoint()  # once: best.safetensors is the discriminator phase's own from here on
        run.rank.barrier()


def _train_epoch(run: _Run, windows: WindowSet, phase: str, n_epochs: int, stop: StopFlag, clock: tuple[float, float]) -> bool:
    """The rest of one epoch, from the batch the run stands at: a checkpoint every
    --checkpoint-every steps, and one before stopping on a signal. True when a --time run's
    clock ends the phase before the epoch's end."""
    opts, progress, rank = run.opts, run.progress, run.rank
    epoch = progress["epoch"]
    batches = epoch_batches(len(windows), opts, phase, epoch, rank)
    meter = Throughput(time.perf_counter())  # since the epoch (or the resumed run) began, over the last minute
    if _cut(run, phase, meter):  # not even a step fits: nothing of this epoch is begun
        return True
    run.emit("epoch_start", phase=phase, epoch=epoch, epochs=None if run.deadline else n_epochs, steps=len(batches), done=progress["batch"])
    loader = torch.utils.data.DataLoader(windows, batch_sampler=batches[progress["batch"] :], num_workers=opts.workers)
    samples_left = sum(map(len, batches[progress["batch"] :])) * rank.world
    for b, batch in enumerate(loader, start=progress["batch"]):
        if _cut(run, phase, meter):
            return True
        x = to_tensor(batch).to(run.device)  # (B, 11, S, S) uint8 -> (B, 11, 1, S, S) in [-1, 1]
        where = f"step {progress['step'] + 1} ({phase} epoch {epoch + 1})"
        fakes, real_rows = None, None
        if phase == "discriminator":
            fakes = pseudo_batch(windows, batches[b], opts, epoch, b, rank)
            real_rows = generated_real_rows(len(batches[b]), opts, epoch, b, rank)
        losses = _step(
            phase, x, run.g_model, run.d_model, run.opt_g, run.opt_d, opts, run.device, where, run.last_path, fakes,
            old_generator=run.old_generator, real_rows=real_rows,
        )
        now = time.perf_counter()
        meter.add(now, len(batches[b]) * rank.world)
        samples_left -= len(batches[b]) * rank.world
        progress.update(step=progress["step"] + 1, batch=b + 1, wall_s=clock[1] + (now - clock[0]))
        if rank.main:
            log_step(opts, progress["step"], phase, epoch, losses, meter.samples_per_s)
        run.emit(
            "step", phase=phase, epoch=epoch, batch=b + 1, steps=len(batches), losses=losses,
            samples_per_s=meter.samples_per_s, seconds_left=_seconds_left(run, meter, samples_left, now),
        )
        if progress["step"] % opts.checkpoint_every == 0:
            run.checkpoint()
        if ranks.any_rank(stop.stop, rank, run.device):
            run.checkpoint()
            raise _interrupted(run, f"at step {progress['step']}")
    return False


def _cut(run: _Run, phase: str, meter: Throughput) -> bool:
    """Does rank 0's clock end the phase before this step: would the step and the validation
    after it run past the phase's part of the time?"""
    if run.deadline is None:
        return False
    step_s = meter.step_s or run.costs.step_s[phase]
    end_s = run.end_s.get(phase, run.costs.end_s[phase])
    return ranks.any_rank(run.rank.main and run.deadline.cut(time.perf_counter(), step_s, end_s), run.rank, run.device)


def _seconds_left(run: _Run, meter: Throughput, samples_left: int, now: float) -> float | None:
    """The epoch's time left at the rate of the last minute; under --time, at most the phase's."""
    rate = meter.samples_per_s
    left = samples_left / rate if rate > 0 else None
    if run.deadline is not None:
        left = min(left if left is not None else float("inf"), run.deadline.left_s(now))
    return left


def _step(phase, x, g_model, d_model, opt_g, opt_d, opts, device, where, ckpt, fakes=None, old_generator=None, real_rows=None) -> dict[str, float]:
    """One training step of `phase` on the real windows x (B, 11, 1, S, S). Discriminator phase only:
    `fakes`, `pseudo_batch`'s pseudo-anomalies, take their places among the fakes; `old_generator`
    makes the generated ones; `real_rows` (`generated_real_rows`) are shown with the current
    generator's middle frame among the real windows."""
    neighbours, target = split_window(x)
    if phase == "pretrain":
        return _pretrain_step(neighbours, target, g_model, opt_g, opts, device, where, ckpt)
    fake, pred, rows = fake_windows(x, neighbours, g_model, fakes, phase, opts, device, old_generator)  # (B, 11, 1, S, S)
    real = real_windows(x, neighbours, g_model, real_rows, opts, device) if phase == "discriminator" else x
    d_losses = _discriminator_step(real, fake, d_model, opt_d, opts, device, where, ckpt, fakes)
    losses = {
        "loss_pixel": pixel_loss(pred.detach(), target[rows]).mean().item() if pred is not None else float("nan"),
        **d_losses,
    }
    if phase == "discriminator":
        return losses
    return losses | {"loss_adv": _generator_step(fake, pred, target, d_model, opt_g, opts, device, where, ckpt)}


def _pretrain_step(neighbours, target, g_model, opt_g, opts, device, where, ckpt) -> dict[str, float]:
    with autocast(device, opts.precision):
        pred = g_model(neighbours)  # (B, 1, S, S)
    loss = pixel_term(pred, target, opts.pixel_norm).mean()
    check_finite({"pixel loss": loss}, where, ckpt)
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    check_finite({"generator gradient": grad_norm(opt_g)}, where, ckpt)
    opt_g.step()
    return {"loss_pixel": pixel_loss(pred.detach(), target).mean().item()}


def _discriminator_step(x, fake, d_model, opt_d, opts, device, where, ckpt, fakes=None) -> dict[str, float]:
    """One step on L_D: real windows x and fakes (B, 11, 1, S, S) in one forward (one DDP reduction).
    `fakes` (`pseudo_batch`'s, with --local-labels): the fakes' patch labels come from their boxes."""
    b = x.shape[0]
    with autocast(device, opts.precision):
        logits = d_model(torch.cat([x, fake.detach()]))  # (2B, h, w)
    d_real = d_loss_map(logits[:b], real=True).mean()
    targets = fake_targets(fakes, b, tuple(logits.shape[-2:]), x.shape[-1], logits.device)
    d_fake = d_loss_map(logits[b:], real=False).mean() if targets is None else patch_label_loss(logits[b:], targets).mean()
    loss_d = d_real + d_fake
    check_finite({"discriminator loss": loss_d}, where, ckpt)
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    check_finite({"discriminator gradient": grad_norm(opt_d)}, where, ckpt)
    opt_d.step()
    with torch.no_grad():
        d_on_real = torch.sigmoid(logits[:b].float()).mean().item()
        d_on_fake = torch.sigmoid(logits[b:].float()).mean().item()
    return {"loss_d": loss_d.item(), "d_real": d_on_real, "d_fake": d_on_fake}


def _generator_step(fake, pred, target, d_model, opt_g, opts, device, where, ckpt) -> float:
    """One step on L_G = -log D(fake) + lambda * pixel term; returns the adversarial term."""
    # Against the updated discriminator, called bare with frozen weights: gradients reach the fake
    # frame only, and a DDP-wrapped discriminator sees exactly one forward per backward.
    d_core = ranks.unwrap(d_model)
    d_core.requires_grad_(False)
    try:
        with autocast(device, opts.precision):
            fake_logits = d_core(fake)
        loss_adv = d_loss_map(fake_logits, real=True).mean()
        loss_pix = pixel_term(pred, target, opts.pixel_norm).mean()
        loss_g = loss_adv + opts.lam * loss_pix
        check_finite({"generator loss": loss_g}, where, ckpt)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        check_finite({"generator gradient": grad_norm(opt_g)}, where, ckpt)
        opt_g.step()
    finally:
        d_core.requires_grad_(True)
    return loss_adv.item()


def _end_of_epoch(run: _Run, phase: str, val_clips: list[Clip], fraction: float | None = None) -> None:
    """Score the held-out windows; keep this state if the selection rule prefers it; log and plot.
    `fraction`: the part of the epoch trained, when --time cut it short."""
    opts, progress = run.opts, run.progress
    start = time.perf_counter()
    scores = validate(run.generator, run.discriminator, val_clips, run.device, generated=True) if val_clips else None
    record = epoch_record(opts, phase, progress, scores, run.discriminator, val_clips, run.device, run.old_generator)
    if fraction is not None:
        record["epoch_fraction"] = round(fraction, 4)
    selected = is_selected(opts, record, progress.get("best"), bool(val_clips))
    if selected:
        progress["best"] = record
        save_weights(run.best_path, run.generator, run.discriminator, PRESETS[opts.preset])
    log_validation(opts, record, selected)
    plot_losses(opts.live_log, opts.live_val_log, opts.live_plot)
    if run.costs is not None:  # what the next epoch end will take, measured (the checkpoint after it estimated)
        run.end_s[phase] = time.perf_counter() - start + run.costs.checkpoint_s
    run.emit("epoch_end", **record, selected=selected)


def _finish(run: _Run, train_clips: list[Clip], val_clips: list[Clip]) -> TrainResult:
    """Calibrate the selected networks and write them to --out, the logs and plot beside them."""
    opts, progress = run.opts, run.progress
    generator, discriminator = run.generator, run.discriminator
    if run.best_path.exists() and not is_recalibration(opts):  # a recalibration's networks are --init's, whatever lies there
        best = load_weights(run.best_path).to(run.device)
        generator, discriminator = best.generator, best.discriminator
    clips, source, trained_on = calibration_clips(opts, progress, train_clips, val_clips, run.warn)
    timed = "budget" in progress and not progress["budget"].get("finished")  # a finished one goes on by epochs
    if message := discriminator_at_chance(progress.get("best"), timed=timed):
        run.warn(message)
    run.emit("calibrate", windows=len(WindowSet(clips)), source=source)
    pixel, d = validate(generator, discriminator, clips, run.device)
    calibration = calibrate(opts, pixel, d, clips, source, trained_on)
    training = training_record(opts, progress, train_clips, run.device, run.warnings)
    save_weights(opts.out, generator, discriminator, PRESETS[opts.preset], calibration, training)
    plot_losses(opts.live_log, opts.live_val_log, opts.live_plot)
    publish_logs(opts)
    return TrainResult(
        out=opts.out,
        selected=progress.get("best") or {},
        calibration=calibration,
        wall_s=progress["wall_s"],
        steps=progress["step"],
        log=opts.log_path if opts.log_path.exists() else None,
        plot=opts.plot_path if opts.plot_path.exists() else None,
    )
