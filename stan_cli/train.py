"""`train(...)`: the paper's two-phase adversarial training, resumable, calibrated, distributed.

Phases (STAN.md, "Training"): `pretrain` trains the generator alone on the pixel loss; then
`adversarial` alternates one discriminator step on L_D and one generator step on L_G per batch.
An optional third phase, not in the paper, `discriminator` (--discriminator-epochs), trains the
discriminator alone on L_D against the selected generator, which is frozen: in our runs the
adversarial phase ended with the discriminator at chance (2 ln 2, the GAN's own equilibrium), which
leaves its score and guided-backpropagation maps without information. Its fakes are windows with
the generated middle frame and, for --pseudo-share of them, temporal pseudo-anomalies made from the
normal training windows (`pseudo.py`: skipped frames, reversed order, frozen frames, a moving
pasted patch), so that it learns what normal motion looks like, not only "is the middle frame
generated?" (`--pseudo-anomalies none`: generated windows only, as before 0.2.0).

Model selection, fixed before any evaluation: after every epoch of the LAST phase that runs, the
held-out normal validation windows are scored; the state with the lowest value becomes the output
(ties: the earlier epoch): the generator's mean pixel loss after `pretrain` or `adversarial`, the
discriminator's loss L_D on real against generated windows after `discriminator`. Without
validation windows the final state is the output. Test labels are never looked at.

Calibration: the selected state scores the validation windows (or, without any, the training
windows, which is said in the metadata) and `scoring.calibrate` stores lambda_s, the statistics
of each score and a threshold at the chosen false-alarm rate.

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

Checkpoints live in `<out>.ckpt/` (or --checkpoint-dir): `last.safetensors` (models, optimisers,
RNG, position) every N steps and at each epoch end, `best.safetensors` (the selected models),
the decoded frame cache and the run's logs and plot while it trains. All writes are a temp file
then a rename.

What lies beside --out is always one finished run's: the weights, `NAME.log.csv`, `NAME.val.csv`
and `NAME.losses.png` are written together when a run finishes, so an interrupted run (even one
started with --overwrite) leaves an earlier run's files as they were and its own progress in the
checkpoint folder. A run that ends without a checkpoint to resume (a refusal on the footage, a
failure before the first checkpoint, a recalibration) removes what it created there.
"""

from __future__ import annotations

import csv
import fcntl
import math
import os
import platform
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from . import __version__, pseudo, scoring
from .dataset import Clip, WindowSet, load_clips, split_validation
from .errors import InputError, OutputError, TrainingError
from .inference import PRECISIONS, autocast, precision_warning, resolve_device, score_windows
from .model import PRESETS, WINDOW, Discriminator, Generator, d_loss_map, pixel_loss, split_window, with_middle
from .video import images_beside_clips, is_frame_folder
from .weights import Stan, file_sha256, load_checkpoint, load_weights, save_checkpoint, save_weights
from .windows import to_tensor

SELECTION_RULE = (
    "lowest mean generator pixel loss (MSE) on the held-out normal validation windows, "
    "over the epoch ends of the last training phase; the final state when there is no validation data"
)
D_SELECTION_RULE = (
    "lowest mean discriminator loss L_D on the held-out normal validation windows (-log D on real windows; "
    "-log(1 - D) on fakes in the training mix: pseudo-anomalies made from those windows by a fixed generator "
    "for --pseudo-share of them, windows with the generated middle frame for the rest), over the epoch ends of "
    "the discriminator phase, against the generator that the pixel-loss rule chose from the phase before "
    "(or --init's); the final state when there is no validation data"
)
LOG_FIELDS = ["step", "phase", "epoch", "loss_pixel", "loss_adv", "loss_d", "d_real", "d_fake", "samples_per_s"]
VAL_FIELDS = ["step", "phase", "epoch", "val_pixel", "val_d", "selected", "val_d_fake", "val_d_pseudo", "val_loss_d", "val_pseudo_auc"]
Event = Callable[..., None]
DEFAULT_PRETRAIN_EPOCHS = 10
DEFAULT_EPOCHS = 20
PHASES = ("pretrain", "adversarial", "discriminator")
DEFAULT_PSEUDO = ",".join(pseudo.KINDS)
DEFAULT_PSEUDO_SHARE = 0.75
EPOCH_OPTIONS = {"pretrain": "--pretrain-epochs", "adversarial": "--epochs", "discriminator": "--discriminator-epochs"}


@dataclass
class TrainOptions:
    data: Path
    out: Path
    pretrain_epochs: int | None = None  # None: DEFAULT_PRETRAIN_EPOCHS, or a resumed run's own value
    epochs: int | None = None  # None: DEFAULT_EPOCHS, or a resumed run's own value
    discriminator_epochs: int | None = None  # None: 0, or a resumed run's own value
    lr: float = 2e-4
    batch_size: int = 3
    lam: float = 1.0
    val_clips: int = 2
    false_alarm_rate: float = 0.01
    device: str = "auto"
    precision: str = "fp32"
    seed: int = 0
    workers: int = 0
    checkpoint_every: int = 200
    checkpoint_dir: Path | None = None
    resume: bool = False
    overwrite: bool = False
    preset: str = "paper"
    pixel_norm: str = "l2"
    # the discriminator phase's fakes: these pseudo-anomalies (pseudo.KINDS; "none": generated only,
    # the phase as it was before 0.2.0) make up `pseudo_share` of them, generated windows the rest
    pseudo_anomalies: str = DEFAULT_PSEUDO
    pseudo_share: float = DEFAULT_PSEUDO_SHARE
    init: Path | None = None
    reset_discriminator: bool = False

    @property
    def ckpt_dir(self) -> Path:
        return Path(self.checkpoint_dir) if self.checkpoint_dir else self.out.with_name(self.out.name + ".ckpt")

    @property
    def log_path(self) -> Path:
        return self.out.with_name(self.out.stem + ".log.csv")

    @property
    def val_log_path(self) -> Path:
        return self.out.with_name(self.out.stem + ".val.csv")

    @property
    def plot_path(self) -> Path:
        return self.out.with_name(self.out.stem + ".losses.png")

    @property
    def live_log(self) -> Path:
        return self.ckpt_dir / "log.csv"

    @property
    def live_val_log(self) -> Path:
        return self.ckpt_dir / "val.csv"

    @property
    def live_plot(self) -> Path:
        return self.ckpt_dir / "losses.png"

    @property
    def run_record(self) -> list[Path]:
        """What a run keeps in its checkpoint folder besides `last.safetensors` and the frame cache."""
        return [self.ckpt_dir / "best.safetensors", self.live_log, self.live_val_log, self.live_plot]

    @property
    def side_files(self) -> list[tuple[Path, Path]]:
        """(while the run trains, once it has finished) for the log, the validation log and the plot."""
        return [(self.live_log, self.log_path), (self.live_val_log, self.val_log_path), (self.live_plot, self.plot_path)]

    # Options that define a run; a resumed run keeps the checkpoint's values for these.
    RUN_KEYS = (
        "lr", "batch_size", "lam", "val_clips", "seed", "preset", "false_alarm_rate", "pixel_norm",
        "pseudo_anomalies", "pseudo_share",
    )
    # What a checkpoint written before a key existed was trained with.
    LEGACY = {"pixel_norm": "mse", "pseudo_anomalies": "none", "pseudo_share": 0.0}


PIXEL_NORMS = ("l2", "mse")


def pixel_term(prediction: torch.Tensor, target: torch.Tensor, norm: str) -> torch.Tensor:
    """The pixel term of L_G per sample, (B,1,H,W) x2 -> (B,): the L2 norm (paper) or the MSE."""
    diff = (prediction.float() - target.float()).flatten(1)
    if norm == "l2":
        return torch.linalg.vector_norm(diff, dim=1)  # subgradient 0 at a perfect prediction
    return diff.pow(2).mean(dim=1)


@dataclass
class TrainResult:
    out: Path
    selected: dict
    calibration: dict
    wall_s: float
    steps: int
    log: Path | None  # None when the run wrote none (a recalibration trains no step)
    plot: Path | None


class _Rank:
    """Who am I in a torchrun job (rank 0 of 1 otherwise)."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


class _Lock:
    """`<path>.lock`, flock-ed for the life of a run: two runs writing one --out (or sharing one
    --checkpoint-dir, whose checkpoints they would overwrite in turn) are refused.

    The kernel drops an flock when its process dies (kill -9, reboot, a requeued job), so a
    lock left behind never blocks a resumed run; host and pid in the file are only for the message.
    """

    def __init__(self, path: Path, option: str = "--out") -> None:
        self.path = path.with_name(path.name + ".lock")
        self.option = option
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as err:
            raise OutputError(f"{self.path}: cannot create the run's lock file ({err.strerror}). Choose a writable {self.option}.") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown process"
            os.close(fd)
            raise TrainingError(
                f"{self.path}: another `stan train` is writing this {self.option} ({holder}). "
                f"Wait for it to finish or choose another {self.option}."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} pid {os.getpid()}".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)  # closing drops the flock
            self._fd = None


class _StopFlag:
    """Ctrl-C (SIGINT), SIGTERM or SIGHUP finishes the current step, writes a checkpoint, then stops.
    A signal the process was told to ignore (`nohup` ignores SIGHUP) stays ignored."""

    def __init__(self) -> None:
        self.stop = False
        self._old: dict[int, object] = {}

    def __enter__(self) -> "_StopFlag":
        try:
            for sig in [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]:
                if signal.getsignal(sig) is signal.SIG_IGN:  # nohup: a closed terminal must not stop the run
                    continue
                self._old[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: no signal handling, periodic checkpoints still hold
            pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.stop:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class TrainingInterrupted(TrainingError):
    """The run stopped on a signal after writing a checkpoint; `--resume` continues it."""


def _phases(opts: TrainOptions) -> list[tuple[str, int]]:
    return [("pretrain", opts.pretrain_epochs), ("adversarial", opts.epochs), ("discriminator", opts.discriminator_epochs)]


def _last_phase(epochs: int, discriminator_epochs: int | None) -> str:
    """The last phase that runs, given the adversarial and discriminator epochs."""
    return "discriminator" if discriminator_epochs else "adversarial" if epochs else "pretrain"


def _final_phase(opts: TrainOptions) -> str:
    return _last_phase(opts.epochs, opts.discriminator_epochs)


def _generator_phase(opts: TrainOptions) -> str:
    """The last phase that trains the generator: its selected state is the output, or, with a
    discriminator phase, the generator that phase trains against."""
    return _last_phase(opts.epochs, 0)


def _epoch_order(n: int, seed: int, phase: str, epoch: int, rank: _Rank) -> list[int]:
    """A fixed permutation per (seed, phase, epoch), sharded over ranks: resumable and identical."""
    offset = {"pretrain": 0, "adversarial": 500_000, "discriminator": 250_000}[phase]
    g = torch.Generator().manual_seed(seed * 1_000_003 + offset + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    per_rank = n // rank.world
    return perm[rank.rank * per_rank : (rank.rank + 1) * per_rank] if rank.world > 1 else perm


def _check_finite(losses: dict[str, torch.Tensor], where: str, ckpt: Path) -> None:
    for name, value in losses.items():
        if not torch.isfinite(value):
            kept = (
                f"the last good checkpoint ({ckpt}) is kept. Resume with --resume --precision fp32, "
                "or start over (--overwrite) with a lower --lr."
                if ckpt.exists()
                else "no checkpoint had been written yet. Try --precision fp32 or a lower --lr."
            )
            raise TrainingError(f"{name} became {value.item()} at {where}; training stopped and {kept}")


def _grad_norm(opt: torch.optim.Optimizer) -> torch.Tensor:
    """Total gradient norm: an inf/NaN gradient must stop the run before Adam spreads it."""
    grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return module.module if isinstance(module, DistributedDataParallel) else module


def validate(generator, discriminator, clips: list[Clip], device, batch_size: int = 8, generated: bool = False):
    """Per-window pixel loss and -log D(S_t) on the given clips: two float64 arrays; with
    `generated`, a third: -log(1 - D(S^_t)), the discriminator's loss on the generated window.

    Always fp32, whatever the training precision: calibration must match `stan detect`'s default.
    """
    generator.eval()
    discriminator.eval()
    columns: list[list[np.ndarray]] = [[], [], []]
    loader = torch.utils.data.DataLoader(WindowSet(clips), batch_size=batch_size, shuffle=False)
    with torch.no_grad():
        for batch in loader:
            x = to_tensor(batch).to(device)
            scores = score_windows(generator, discriminator, x, "fp32")
            columns[0].append(scores.pixel.cpu().double().numpy())
            columns[1].append(scores.d.cpu().double().numpy())
            if generated:
                logits = discriminator(with_middle(x, scores.prediction.to(x.dtype)))
                columns[2].append(d_loss_map(logits, real=False).cpu().double().numpy())
    generator.train()
    discriminator.train()
    arrays = tuple(np.concatenate(c) if c else np.zeros(0) for c in columns)
    return arrays if generated else arrays[:2]


VAL_PSEUDO_SEED = 20180415  # the validation pseudo-anomalies are the same for every run and epoch


@torch.no_grad()
def validate_pseudo(discriminator, clips: list[Clip], kinds: tuple[str, ...], device, batch_size: int = 8):
    """One pseudo-anomaly per held-out normal window, the kinds in turn, made by a fixed generator:
    per window -log(1 - D) (the loss that labels it fake) and -log D (its d score). Two float64 arrays."""
    windows = WindowSet(clips)
    rng = np.random.default_rng(VAL_PSEUDO_SEED)
    made = [pseudo.make(kinds[i % len(kinds)], clips, *windows.index[i], rng) for i in range(len(windows))]
    discriminator.eval()
    fake_loss, score = [], []
    for i in range(0, len(made), batch_size):
        x = to_tensor(torch.from_numpy(np.stack(made[i : i + batch_size]))).to(device)  # (b, 11, 1, S, S)
        logits = discriminator(x)
        fake_loss.append(d_loss_map(logits, real=False).cpu().double().numpy())
        score.append(d_loss_map(logits, real=True).cpu().double().numpy())
    discriminator.train()
    return tuple(np.concatenate(c) if c else np.zeros(0) for c in (fake_loss, score))


def ranking_auc(normal: np.ndarray, abnormal: np.ndarray) -> float:
    """P(an abnormal score > a normal one), ties counted half: the AUC of two score samples."""
    if not len(normal) or not len(abnormal):
        return float("nan")
    greater = (abnormal[:, None] > normal[None, :]).mean()
    ties = (abnormal[:, None] == normal[None, :]).mean()
    return float(greater + 0.5 * ties)


def _validate(opts: TrainOptions) -> None:
    """Every option checked before anything is locked, deleted or decoded."""
    if opts.preset not in PRESETS:
        raise TrainingError(f"--preset {opts.preset}: unknown. Use one of {', '.join(PRESETS)}.")
    for name in ("pretrain_epochs", "epochs", "discriminator_epochs", "val_clips", "workers"):
        value = getattr(opts, name)
        if value is not None and value < 0:
            raise TrainingError(f"--{name.replace('_', '-')} must be >= 0.")
    if opts.batch_size < 1 or opts.checkpoint_every < 1:
        raise TrainingError("--batch-size and --checkpoint-every must be at least 1.")
    if not opts.lr > 0 or not opts.lam >= 0:
        raise TrainingError("--lr must be > 0 and --lambda >= 0.")
    if not 0 < opts.false_alarm_rate < 1:
        raise TrainingError(f"--false-alarm-rate {opts.false_alarm_rate}: must be between 0 and 1 (0.01 = 1 %).")
    try:
        pseudo.parse_kinds(opts.pseudo_anomalies)
    except ValueError as err:
        raise TrainingError(f"--pseudo-anomalies {opts.pseudo_anomalies}: {err}.") from None
    if not 0 <= opts.pseudo_share <= 1:
        raise TrainingError(f"--pseudo-share {opts.pseudo_share}: must be between 0 and 1 (the fraction of the discriminator's fakes).")
    if opts.pixel_norm not in PIXEL_NORMS:
        raise TrainingError(f"--pixel-norm {opts.pixel_norm}: unknown. Use one of {', '.join(PIXEL_NORMS)}.")
    if opts.pretrain_epochs == 0 and opts.epochs == 0 and not opts.discriminator_epochs and opts.init is None and not opts.resume:
        raise TrainingError(
            "--pretrain-epochs 0 and --epochs 0 train nothing: the output would be random networks. "
            "Ask for at least one epoch (or add --init FILE to recalibrate existing weights on this footage)."
        )
    if opts.discriminator_epochs and opts.init is None and opts.pretrain_epochs == 0 and opts.epochs == 0 and not opts.resume:
        raise TrainingError(
            "--discriminator-epochs trains the discriminator against a trained generator: add --init FILE, "
            "or ask for generator epochs (--pretrain-epochs, --epochs) first."
        )
    if opts.reset_discriminator and is_recalibration(opts):
        raise TrainingError(
            "--reset-discriminator with no epoch to train would calibrate and write a random discriminator. "
            "Ask for --discriminator-epochs N (or drop --reset-discriminator to recalibrate)."
        )
    if opts.reset_discriminator and opts.init is None:
        raise TrainingError("--reset-discriminator only makes sense with --init FILE (a new run starts from random networks anyway).")
    if opts.init is not None and not Path(opts.init).is_file():
        raise InputError(f"{opts.init}: no such weights file. Give --init an existing .safetensors file (or drop --init).")
    if opts.precision not in PRECISIONS:
        raise TrainingError(f"--precision {opts.precision}: unknown. Use one of {', '.join(PRECISIONS)}.")
    if opts.out.is_dir():
        raise OutputError(f"{opts.out}: is a folder. --out must be a file name such as model.safetensors.")
    if not opts.out.parent.is_dir():
        raise OutputError(f"{opts.out.parent}: folder does not exist. Create it or choose another --out.")
    if not os.access(opts.out.parent, os.W_OK):
        raise OutputError(f"{opts.out.parent}: folder is not writable. Choose another --out.")
    data = Path(opts.data)
    if data.is_dir() and is_frame_folder(data) and opts.out.parent.resolve() == data.resolve():
        raise OutputError(
            f"{opts.out}: --out lies in the frame folder {data}, where the loss plot written beside it "
            f"({opts.plot_path.name}) would be read as a frame next time. Choose --out outside {data}."
        )


def _check_outputs(opts: TrainOptions) -> None:
    """Refuse, touching nothing, a run that would replace files the user did not ask to replace."""
    ckpt = opts.ckpt_dir / "last.safetensors"
    if opts.resume:
        if not ckpt.exists():
            raise TrainingError(f"{ckpt}: no checkpoint to resume. Run without --resume to start training.")
        return
    if opts.overwrite:
        return
    if opts.out.exists():
        raise OutputError(
            f"{opts.out}: already exists. Choose another --out, add --resume to continue its run, "
            "or --overwrite to replace it."
        )
    if ckpt.exists():
        raise TrainingError(
            f"{ckpt}: a run's checkpoint is already there. Add --resume to continue it, "
            "or --overwrite to start over."
        )
    for path in (opts.log_path, opts.val_log_path, opts.plot_path):
        if path.exists():
            raise OutputError(
                f"{path}: already exists, and this run would write its own there. "
                "Choose another --out, or add --overwrite to replace it."
            )


class _Scratch:
    """What a new run creates in its checkpoint folder, so that a run ending without a checkpoint
    to resume (a refusal on the footage, a failure before the first checkpoint, a recalibration)
    can remove it: only that, never an earlier run's folder, frame cache or files."""

    def __init__(self, opts: TrainOptions) -> None:
        self.opts = opts
        self.new_folders = _missing_folders(opts.ckpt_dir)  # innermost (the checkpoint folder) first
        self.new_cache = not (opts.ckpt_dir / "frames").exists()
        self.cleared = False  # the earlier run's checkpoints and logs are gone: what is there now is ours
        self.checkpointed = False

    def remove(self) -> None:
        if self.new_folders:  # the checkpoint folder is this run's own: all of it goes
            shutil.rmtree(self.opts.ckpt_dir, ignore_errors=True)
            for folder in self.new_folders[1:]:  # then the parents it made, while nobody else uses them
                try:
                    folder.rmdir()
                except OSError:  # another run's folder (a sweep under one --checkpoint-dir parent) is there
                    break
            return
        if self.new_cache:
            shutil.rmtree(self.opts.ckpt_dir / "frames", ignore_errors=True)
        if self.cleared:
            for path in self.opts.run_record:
                path.unlink(missing_ok=True)


def _missing_folders(folder: Path) -> list[Path]:
    """The folders mkdir(parents=True) would create for `folder`, innermost first; [] if it exists."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing.append(path)
    return missing


def _clear_previous_run(opts: TrainOptions) -> None:
    """A new run (--overwrite, or leftovers without a checkpoint) starts from an empty record. Called
    once the footage has been read: a refused run leaves the earlier run resumable."""
    for path in (opts.ckpt_dir / "last.safetensors", *opts.run_record):
        path.unlink(missing_ok=True)


def _adopt_logs(opts: TrainOptions) -> None:
    """A run checkpointed before its logs lived in the checkpoint folder kept them beside --out:
    they carry on from the checkpoint folder. (A run's own log holds a row for every step before
    any checkpoint, so an existing one is never an earlier run's.)"""
    if opts.live_log.exists() or not opts.log_path.exists():
        return
    for live, final in opts.side_files:
        if final.exists():
            shutil.copyfile(final, live)


def _publish_logs(opts: TrainOptions) -> None:
    """Beside the new weights, the run's logs and plot replace an earlier run's; one this run has
    not (a recalibration trains no step) is removed rather than left describing other weights."""
    for live, final in opts.side_files:
        if live.exists() and not is_recalibration(opts):  # a recalibration's checkpoint folder may hold an earlier run's
            tmp = final.with_name(f".{final.name}.tmp")
            shutil.copyfile(live, tmp)
            os.replace(tmp, final)
        else:
            final.unlink(missing_ok=True)


def _restart_logs(opts: TrainOptions, step: int) -> None:
    """On resume, drop log rows past the checkpoint's step: those steps are trained again. The logs
    are written with today's columns (a log begun by an earlier stan gets its new ones empty)."""
    for path, fields in ((opts.live_log, LOG_FIELDS), (opts.live_val_log, VAL_FIELDS)):
        if not path.exists():
            continue
        with open(path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= step]
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fields)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)


def _append_row(path: Path, fields: list[str], row: dict) -> None:
    new = not path.exists()  # a log begun by an earlier stan got today's columns from _restart_logs
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fields)
        if new:
            writer.writeheader()
        writer.writerow(row)


def _val_d_loss(row: dict) -> float:
    """A val.csv row's discriminator loss: with the run's mix of fakes (0.2.0), or real and generated."""
    if row.get("val_loss_d"):
        return float(row["val_loss_d"])
    return float(row["val_d"]) + float(row.get("val_d_fake") or "nan")


def plot_losses(log: Path, val_log: Path, out: Path) -> None:
    """Loss curves per step (smoothed) and validation pixel loss per epoch, as one PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not log.exists():
        return
    with open(log, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return
    fig = Figure(figsize=(11, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax, ax_val = fig.subplots(1, 2)
    steps = np.array([int(r["step"]) for r in rows])
    for name in ("loss_pixel", "loss_adv", "loss_d"):
        values = np.array([float(r[name]) if r[name] else np.nan for r in rows])
        if np.isfinite(values).any():
            k = max(1, len(values) // 200)
            smooth = np.convolve(np.nan_to_num(values), np.ones(k) / k, mode="same")
            ax.plot(steps, np.where(np.isfinite(values), smooth, np.nan), label=name, lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title("training losses")
    ax.legend()
    if val_log.exists():
        with open(val_log, newline="") as fh:
            vrows = list(csv.DictReader(fh))
        if vrows:
            vs = [int(r["step"]) for r in vrows]
            ax_val.plot(vs, [float(r["val_pixel"]) for r in vrows], "o-", label="val pixel (MSE)")
            ax_val.set_xlabel("step")
            ax_val.set_title("validation (normal clips held out)")
            handles, labels = ax_val.get_legend_handles_labels()
            # the discriminator's loss on real and generated windows (logs of earlier stans lack it)
            d_loss = np.array([_val_d_loss(r) for r in vrows])
            if np.isfinite(d_loss).any():
                ax_d = ax_val.twinx()
                ax_d.plot(vs, d_loss, "s--", color="tab:red", label="val discriminator loss (chance 1.386)")
                more = ax_d.get_legend_handles_labels()
                handles, labels = handles + more[0], labels + more[1]
            ax_val.legend(handles, labels, loc="best", fontsize="small")
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, out)


def train(opts: TrainOptions, on_event: Event = lambda kind, **info: None) -> TrainResult | None:
    """Train both networks on normal footage under opts.data and write opts.out.

    Returns the result on rank 0 (None on other ranks of a distributed run). Raises
    TrainingInterrupted after a clean stop on Ctrl-C / SIGTERM (the checkpoint is written).
    """
    opts = TrainOptions(**{**asdict(opts), "data": Path(opts.data), "out": Path(opts.out)})
    _validate(opts)
    init = _load_init(opts)
    rank = _Rank()
    device = resolve_device(opts.device)
    if rank.world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", rank.local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            # rank 0 decodes all footage and validates alone while the others wait at a barrier
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=6))
    emit = on_event if rank.main else (lambda kind, **info: None)
    if message := precision_warning(device, opts.precision):
        emit("warning", message=message)
    # The checkpoint folder has a lock of its own: a run with another --out may name it with
    # --checkpoint-dir (resolved, so that two spellings of one folder share one lock).
    ckpt_dir = opts.ckpt_dir.resolve()
    if not ckpt_dir.name:
        raise OutputError(f"{opts.ckpt_dir}: not a folder for checkpoints. Choose a folder of its own for --checkpoint-dir.")
    out_lock, ckpt_lock = _Lock(opts.out), _Lock(ckpt_dir, "--checkpoint-dir" if opts.checkpoint_dir is not None else "--out")
    locks = [out_lock, ckpt_lock]
    lock_folders = _missing_folders(ckpt_dir.parent) if rank.main else []  # removed at the end if still empty
    scratch: _Scratch | None = None
    try:
        if rank.main:  # before anything is checked or deleted: a live run's files stay untouched
            out_lock.acquire()
            try:
                ckpt_dir.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise OutputError(
                    f"{opts.ckpt_dir}: cannot create the checkpoint folder ({err.strerror}). Choose a writable --checkpoint-dir."
                ) from None
            ckpt_lock.acquire()
        _check_outputs(opts)
        if rank.main and not opts.resume:
            scratch = _Scratch(opts)
        return _run(opts, rank, device, emit, init, scratch)
    finally:
        if scratch is not None and not scratch.checkpointed:
            scratch.remove()  # nothing to resume: leave no checkpoint folder behind either
        for lock in locks:
            lock.release()
        for folder in lock_folders:
            try:
                folder.rmdir()
            except OSError:  # the run's checkpoints (or another run's) are in it
                break
        if rank.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _load_init(opts: TrainOptions) -> Stan | None:
    """Read --init into memory before anything is deleted (it may even live in the run's own
    folder); its network size becomes the run's preset."""
    if opts.init is None or opts.resume:
        return None
    stan = load_weights(Path(opts.init), option="--init")
    preset = next((name for name, c in PRESETS.items() if c == stan.config), None)
    if preset is None:
        raise TrainingError(f"{opts.init}: its network config matches no preset ({', '.join(PRESETS)}); cannot train from it.")
    opts.preset = preset
    return stan


def _init_record(init: dict | None) -> dict | None:
    """The --init record for the weights' metadata. Checkpoints written before the init file's own
    history was kept get it here, read from that file if it is still there, unchanged (same hash)."""
    if init is None or "training" in init:
        return init
    path = Path(init["file"])
    if path.is_file() and file_sha256(path) == init["sha256"]:
        return init | {"training": load_weights(path).training}
    return init


def _run(
    opts: TrainOptions, rank: _Rank, device: torch.device, emit: Event, init: Stan | None, scratch: _Scratch | None
) -> TrainResult | None:
    ckpt_dir = opts.ckpt_dir
    last_path, best_path = ckpt_dir / "last.safetensors", ckpt_dir / "best.safetensors"
    if rank.main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)

    progress: dict = {}
    if opts.resume:
        from .weights import read_checkpoint_progress

        progress = read_checkpoint_progress(last_path)
        stored = progress["options"]
        stored = {k: stored.get(k, TrainOptions.LEGACY.get(k)) for k in TrainOptions.RUN_KEYS}
        changed = [k for k in TrainOptions.RUN_KEYS if stored[k] != getattr(opts, k)]
        if changed and rank.main:
            emit("warning", message=f"resuming with the run's own {', '.join(changed)} (command-line values ignored)")
        opts = TrainOptions(**{**asdict(opts), **stored})
        _resumed_epochs(opts, progress)
        world = progress.get("world_size", 1)
        if world != rank.world:
            raise TrainingError(
                f"{last_path}: this run was trained by {world} process(es), now {rank.world}. "
                f"Resume with the same number of processes (the data order depends on it)."
            )
    else:
        opts.pretrain_epochs = DEFAULT_PRETRAIN_EPOCHS if opts.pretrain_epochs is None else opts.pretrain_epochs
        opts.epochs = DEFAULT_EPOCHS if opts.epochs is None else opts.epochs
        opts.discriminator_epochs = opts.discriminator_epochs or 0

    config = PRESETS[opts.preset]
    torch.manual_seed(opts.seed)
    generator, discriminator = Generator(config).to(device), Discriminator(config).to(device)
    if init is not None:
        generator.load_state_dict(init.generator.state_dict())
        if not opts.reset_discriminator:
            discriminator.load_state_dict(init.discriminator.state_dict())
    opt_g = torch.optim.Adam(generator.parameters(), lr=opts.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=opts.lr, betas=(0.5, 0.999))
    if opts.resume:
        progress = load_checkpoint(last_path, generator, discriminator, opt_g, opt_d)
        emit("resume", step=progress["step"], phase=progress["phase"], epoch=progress["epoch"], batch=progress["batch"], checkpoint=str(last_path))
    else:
        progress = {"phase": "pretrain", "epoch": 0, "batch": 0, "step": 0, "wall_s": 0.0, "best": None}
        if init is not None:
            # The init file's own history travels with the run: the file itself may be replaced later
            # (as when a continuation becomes the shipped weights), leaving its hash pointing nowhere.
            progress["init"] = {
                "file": str(opts.init),
                "sha256": init.sha256,
                "reset_discriminator": opts.reset_discriminator,
                "training": init.training,
            }
    progress.update(
        options={k: getattr(opts, k) for k in TrainOptions.RUN_KEYS},
        pretrain_epochs=opts.pretrain_epochs,
        epochs=opts.epochs,
        discriminator_epochs=opts.discriminator_epochs,
        world_size=rank.world,
    )
    finish_only = False
    if progress["phase"] == "done":  # continue a finished run with more epochs
        final = _final_phase(opts)
        same_phase = _done_phase(progress) == final
        done_epochs = progress["done_epochs"] if same_phase else 0
        wanted = dict(_phases(opts))[final]
        if wanted > done_epochs:  # back where it ended: the loop below moves on to the next phase as usual
            # A run finished as it stood, mid-epoch, goes on from the batch it had reached, with the
            # state it had there (the checkpoint's, not the selected epoch's): as if never stopped.
            progress.update(phase=_done_phase(progress), epoch=progress["done_epochs"], batch=progress.get("batch", 0))
        elif not opts.out.exists():
            finish_only = True  # training ended but the weights were never written: write them now
        else:
            flag = EPOCH_OPTIONS[final]
            raise TrainingError(
                f"{last_path}: this run already finished {done_epochs} {final} epoch{'' if done_epochs == 1 else 's'}. "
                f"Ask for more with {flag} N (N > {done_epochs}) to continue it."
            )

    # Data: rank 0 decodes into the cache, the others wait and open it.
    warnings: list[str] = []

    def warn(msg: str) -> None:
        warnings.append(msg)
        emit("warning", message=msg)

    skipped = 0
    if rank.main:
        if message := images_beside_clips(Path(opts.data)):
            warn(message)
        before = len(warnings)
        clips = load_clips(
            opts.data, config.image_size, ckpt_dir / "frames", warn=warn,
            on_clip=lambda done, total, name: emit("decode", done=done, total=total, name=name),
        )
        skipped = len(warnings) - before
    rank.barrier()
    if not rank.main:
        clips = load_clips(opts.data, config.image_size, ckpt_dir / "frames", decode=False)
    # a recalibration (see _finish) scores whole clips: no tail is cut off for validation
    train_clips, val_clips = split_validation(clips, 0 if is_recalibration(opts) else opts.val_clips)
    sources = {"train": [c.source for c in train_clips], "val": [c.source for c in val_clips]}
    if "clips" in progress and progress["clips"] != sources:
        raise TrainingError(
            f"{opts.data}: the footage differs from the run being resumed (clips added, removed or renamed), "
            "which would move clips between training and validation. Resume with the same footage, "
            "or start a new run with another --out."
        )
    progress["clips"] = sources
    windows = WindowSet(train_clips)
    n_val = len(WindowSet(val_clips))
    emit(
        "data",
        clips=len(clips),
        train_clips=len(train_clips),
        val_clips=len(val_clips),
        train_windows=len(windows),
        val_windows=n_val,
        skipped=skipped,
    )
    if len(windows) < opts.batch_size * rank.world:  # every rank finds the same, so every rank gets here
        n = len(windows)
        rank.barrier()  # no rank still reads the frame cache when rank 0 removes it on the way out
        raise InputError(f"{opts.data}: only {n} training window{'' if n == 1 else 's'}; need at least one batch.")
    if rank.main and opts.resume:
        _adopt_logs(opts)
        _restart_logs(opts, progress["step"])
    elif scratch is not None and not is_recalibration(opts):  # a recalibration trains nothing: an earlier run stays resumable
        _clear_previous_run(opts)
        scratch.cleared = True

    g_model: torch.nn.Module = generator
    d_model: torch.nn.Module = discriminator
    if rank.world > 1:
        ids = [device.index] if device.type == "cuda" else None
        g_model = DistributedDataParallel(generator, device_ids=ids)
        d_model = DistributedDataParallel(discriminator, device_ids=ids)

    def checkpoint() -> None:
        if rank.main:
            save_checkpoint(last_path, generator, discriminator, opt_g, opt_d, progress, config)
            if scratch is not None:
                scratch.checkpointed = True

    started = time.perf_counter()
    wall_before = progress["wall_s"]
    phase_names = [p for p, _ in _phases(opts)]
    phase_index = len(phase_names) if finish_only else phase_names.index(progress["phase"])
    with _StopFlag() as stop:
        # Up to the final phase: the empty ones after it are never entered, so a run stays where it
        # ended, batch and all.
        for phase, n_epochs in _phases(opts)[phase_index : PHASES.index(_final_phase(opts)) + 1]:
            if progress["phase"] != phase:
                progress.update(phase=phase, epoch=0, batch=0)
                # Against the generator the selection rule chose, not the last epoch's. Only rank 0
                # keeps the selection; every rank loads the state it saved (DDP replicas stay equal).
                if phase == "discriminator" and _any_rank(rank.main and bool(progress.get("best")), rank, device):
                    chosen = load_weights(best_path)
                    generator.load_state_dict(chosen.generator.state_dict())
                    discriminator.load_state_dict(chosen.discriminator.state_dict())
                    opt_d.state.clear()  # its moments belonged to the last epoch's discriminator
                    progress["generator_selected"] = progress.get("best")
                    checkpoint()  # once: best.safetensors is the discriminator phase's own from here on
                    rank.barrier()
            while progress["epoch"] < n_epochs:
                epoch = progress["epoch"]
                order = _epoch_order(len(windows), opts.seed, phase, epoch, rank)
                batches = [order[i : i + opts.batch_size] for i in range(0, len(order), opts.batch_size)]
                emit("epoch_start", phase=phase, epoch=epoch, epochs=n_epochs, steps=len(batches), done=progress["batch"])
                loader = torch.utils.data.DataLoader(
                    windows, batch_sampler=batches[progress["batch"] :], num_workers=opts.workers
                )
                t_last = time.perf_counter()
                for b, batch in enumerate(loader, start=progress["batch"]):
                    x = to_tensor(batch).to(device)  # (B, 11, S, S) uint8 -> (B, 11, 1, S, S) in [-1, 1]
                    where = f"step {progress['step'] + 1} ({phase} epoch {epoch + 1})"
                    fakes = _pseudo_batch(windows, batches[b], opts, epoch, b, rank) if phase == "discriminator" else None
                    losses = _step(phase, x, g_model, d_model, opt_g, opt_d, opts, device, where, last_path, fakes)
                    progress["step"] += 1
                    progress["batch"] = b + 1
                    now = time.perf_counter()
                    rate = len(batches[b]) * rank.world / max(now - t_last, 1e-9)
                    t_last = now
                    progress["wall_s"] = wall_before + (now - started)
                    if rank.main:
                        row = {"step": progress["step"], "phase": phase, "epoch": epoch + 1, "samples_per_s": f"{rate:.3f}"}
                        row.update({k: f"{v:.6g}" for k, v in losses.items()})
                        _append_row(opts.live_log, LOG_FIELDS, row)
                    emit("step", phase=phase, epoch=epoch, batch=b + 1, steps=len(batches), losses=losses, samples_per_s=rate)
                    if progress["step"] % opts.checkpoint_every == 0:
                        checkpoint()
                    if _any_rank(stop.stop, rank, device):
                        checkpoint()
                        raise TrainingInterrupted(
                            f"stopped at step {progress['step']}; checkpoint written to {last_path}. "
                            "Run the same command with --resume to continue."
                        )
                progress.update(epoch=epoch + 1, batch=0)
                if rank.main:
                    _end_of_epoch(opts, progress, phase, generator, discriminator, val_clips, device, best_path, emit)
                checkpoint()
                rank.barrier()

    if not rank.main:
        return None
    result = _finish(opts, progress, generator, discriminator, config, train_clips, val_clips, device, best_path, warnings, emit)
    # Marked done only once the weights are written: a crash while calibrating resumes into
    # _finish again, even when --overwrite left an earlier run's weights at --out meanwhile.
    if not is_recalibration(opts):  # a recalibration trained nothing: there is nothing to continue
        final = _final_phase(opts)
        progress.update(phase="done", done_phase=final, done_epochs=dict(_phases(opts))[final])
        checkpoint()
    emit("done", result=result)
    return result


def _resumed_epochs(opts: TrainOptions, progress: dict) -> None:
    """Each phase's epochs for a resumed run. Not given: the run's own. A phase it has gone past
    keeps the run's own whatever is given (those epochs are history); the phase it ended in may
    be extended; the phase it is in may be cut down to the epochs it has finished (to finish the
    run as it stands), but not to none."""
    done = progress["phase"] == "done"
    current = _done_phase(progress) if done else progress["phase"]
    for phase, option in EPOCH_OPTIONS.items():
        key = option.removeprefix("--").replace("-", "_")
        stored, given = progress.get(key, 0), getattr(opts, key)
        if given is None or PHASES.index(phase) < PHASES.index(current):
            setattr(opts, key, stored)
        elif phase == current and not done and given == 0 and stored > 0:
            finish = (
                f"to finish it as it stands, give the {progress['epoch']} epoch{'' if progress['epoch'] == 1 else 's'} it has completed"
                if progress["epoch"] else "it has not completed an epoch of it yet"
            )
            raise TrainingError(f"this run is in its {phase} phase: {option} must be at least 1 ({finish}).")


def _done_phase(progress: dict) -> str:
    """The phase a finished run ended with (checkpoints from before `done_phase`: its last asked-for phase)."""
    return progress.get("done_phase") or _last_phase(progress["epochs"], progress.get("discriminator_epochs"))


def _any_rank(flag: bool, rank: _Rank, device: torch.device) -> bool:
    if rank.world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def pseudo_plan(opts: TrainOptions) -> tuple[tuple[str, ...], float]:
    """The discriminator phase's pseudo-anomaly kinds and their share of the fakes (0 without kinds)."""
    kinds = pseudo.parse_kinds(opts.pseudo_anomalies)
    return kinds, (float(opts.pseudo_share) if kinds else 0.0)


def _pseudo_batch(windows: WindowSet, batch: list[int], opts: TrainOptions, epoch: int, b: int, rank: _Rank):
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


def _fake_windows(x, neighbours, g_model, fakes, phase, opts, device):
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


def _step(phase, x, g_model, d_model, opt_g, opt_d, opts, device, where, ckpt, fakes=None) -> dict[str, float]:
    """One training step of `phase` on the real windows x (B, 11, 1, S, S); `fakes` (discriminator
    phase only): `_pseudo_batch`'s pseudo-anomalies, which take their places among the fakes."""
    neighbours, target = split_window(x)
    if phase == "pretrain":
        with autocast(device, opts.precision):
            pred = g_model(neighbours)
        loss = pixel_term(pred, target, opts.pixel_norm).mean()
        _check_finite({"pixel loss": loss}, where, ckpt)
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        _check_finite({"generator gradient": _grad_norm(opt_g)}, where, ckpt)
        opt_g.step()
        return {"loss_pixel": pixel_loss(pred.detach(), target).mean().item()}

    b = x.shape[0]
    fake, pred, rows = _fake_windows(x, neighbours, g_model, fakes, phase, opts, device)  # (B, 11, 1, S, S)
    # Discriminator step: real and fake in one forward (one DDP reduction).
    with autocast(device, opts.precision):
        logits = d_model(torch.cat([x, fake.detach()]))  # (2B, h, w)
    d_real = d_loss_map(logits[:b], real=True).mean()
    d_fake = d_loss_map(logits[b:], real=False).mean()
    loss_d = d_real + d_fake
    _check_finite({"discriminator loss": loss_d}, where, ckpt)
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    _check_finite({"discriminator gradient": _grad_norm(opt_d)}, where, ckpt)
    opt_d.step()
    with torch.no_grad():
        d_on_real = torch.sigmoid(logits[:b].float()).mean().item()
        d_on_fake = torch.sigmoid(logits[b:].float()).mean().item()
    losses = {
        "loss_pixel": pixel_loss(pred.detach(), target[rows]).mean().item() if pred is not None else float("nan"),
        "loss_d": loss_d.item(),
        "d_real": d_on_real,
        "d_fake": d_on_fake,
    }
    if phase == "discriminator":
        return losses
    # Generator step against the updated discriminator, called bare with frozen weights:
    # gradients reach the fake frame only, and a DDP-wrapped discriminator sees exactly one
    # forward per backward.
    d_core = _unwrap(d_model)
    d_core.requires_grad_(False)
    try:
        with autocast(device, opts.precision):
            fake_logits = d_core(fake)
        loss_adv = d_loss_map(fake_logits, real=True).mean()
        loss_pix = pixel_term(pred, target, opts.pixel_norm).mean()
        loss_g = loss_adv + opts.lam * loss_pix
        _check_finite({"generator loss": loss_g}, where, ckpt)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        _check_finite({"generator gradient": _grad_norm(opt_g)}, where, ckpt)
        opt_g.step()
    finally:
        d_core.requires_grad_(True)
    return losses | {"loss_adv": loss_adv.item()}


def selection_value(phase: str, record: dict) -> float:
    """What the selection rule minimises after an epoch of `phase` (see the module docstring)."""
    if phase == "discriminator":
        # records written before 0.2.0 (no pseudo-anomalies) lack val_loss_d: real and generated only
        return record.get("val_loss_d", record["val_d"] + record["val_d_fake"])
    return record["val_pixel"]


def _d_validation(opts: TrainOptions, discriminator, val_clips: list[Clip], d: np.ndarray, d_fake: np.ndarray, device) -> dict:
    """The discriminator phase's validation: L_D with the training mix of fakes (real windows, then
    pseudo-anomalies for `share` of the fakes and generated windows for the rest), and the AUC of
    its d score between the normal windows and their pseudo-anomalies."""
    kinds, share = pseudo_plan(opts)
    if not kinds:
        return {"val_loss_d": float(d.mean() + d_fake.mean())}
    pseudo_loss, pseudo_score = validate_pseudo(discriminator, val_clips, kinds, device)
    return {
        "val_d_pseudo": float(pseudo_loss.mean()),
        "val_loss_d": float(d.mean() + share * pseudo_loss.mean() + (1 - share) * d_fake.mean()),
        "val_pseudo_auc": ranking_auc(d, pseudo_score),
    }


def _end_of_epoch(opts, progress, phase, generator, discriminator, val_clips, device, best_path, emit) -> None:
    val_pixel = val_d = val_d_fake = float("nan")
    extra: dict = {}
    if val_clips:
        pixel, d, d_fake = validate(generator, discriminator, val_clips, device, generated=True)
        val_pixel, val_d, val_d_fake = float(pixel.mean()), float(d.mean()), float(d_fake.mean())
        if phase == "discriminator":
            extra = _d_validation(opts, discriminator, val_clips, d, d_fake, device)
    record = {"phase": phase, "epoch": progress["epoch"], "step": progress["step"], "val_pixel": val_pixel, "val_d": val_d, "val_d_fake": val_d_fake, **extra}
    selected = False
    if phase in (_final_phase(opts), _generator_phase(opts)):
        best = progress.get("best")
        if not val_clips or best is None or best.get("phase") != phase or (
            selection_value(phase, record) < selection_value(phase, best)
        ):
            progress["best"] = record
            save_weights(best_path, generator, discriminator, PRESETS[opts.preset])
            selected = True
    _append_row(
        opts.live_val_log,
        VAL_FIELDS,
        {"step": progress["step"], "phase": phase, "epoch": progress["epoch"], "val_pixel": f"{val_pixel:.6g}",
         "val_d": f"{val_d:.6g}", "selected": int(selected), "val_d_fake": f"{val_d_fake:.6g}",
         **{k: f"{v:.6g}" for k, v in extra.items()}},
    )
    plot_losses(opts.live_log, opts.live_val_log, opts.live_plot)
    emit("epoch_end", **record, selected=selected)


def _clips_trained_on(init: dict | None, clips: list[Clip]) -> list[str]:
    """The clips (sources) that some run in the --init file's history trained on: the same path,
    as far as paths recorded relative to another working folder still resolve here."""
    seen: set[Path] = set()
    record = init
    while record and record.get("training"):
        training = record["training"]
        if training.get("steps"):  # a recalibration in the history trained nothing
            seen.update(Path(c).resolve() for c in training.get("train_clips") or [])
        record = training.get("init")
    return [c.source for c in clips if Path(c.source).resolve() in seen]


def _discriminator_at_chance(selected: dict | None, chance: float = 2 * np.log(2), margin: float = 0.08) -> str | None:
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
        "Add --discriminator-epochs N to train it against the generator (README, stan train)."
    )


def is_recalibration(opts: TrainOptions) -> bool:
    """--init with zero epochs of every phase: new calibration for unchanged networks (never a resumed run)."""
    return (
        opts.init is not None and not opts.resume
        and opts.pretrain_epochs == 0 and opts.epochs == 0 and not opts.discriminator_epochs
    )


RECALIBRATION = "recalibration: every window of the footage (--init weights, no epoch trained in this run)"


def _finish(opts, progress, generator, discriminator, config, train_clips, val_clips, device, best_path, warnings, emit):
    if best_path.exists() and not is_recalibration(opts):  # a recalibration's networks are --init's, whatever lies there
        best = load_weights(best_path).to(device)
        generator, discriminator = best.generator, best.discriminator
    trained_on: list[str] = []
    if is_recalibration(opts):  # nothing was trained here: every window is scored, whatever it is
        calib_clips, calib_source = train_clips + val_clips, RECALIBRATION
        trained_on = _clips_trained_on(_init_record(progress.get("init")), calib_clips)
        if trained_on:
            k, n = len(trained_on), len(calib_clips)
            which = "the clip was" if n == 1 else f"all {n} clips were" if k == n else f"{k} of the {n} clips were"
            message = (
                f"{which} training footage of the --init weights "
                f"({', '.join(Path(c).name for c in trained_on[:4])}{', ...' if len(trained_on) > 4 else ''}): the "
                "threshold is in-sample for those, so new normal footage may exceed it more often than "
                "--false-alarm-rate. Calibrate on footage the networks never saw when you can."
            )
            warnings.append(message)
            emit("warning", message=message)
    elif len(WindowSet(val_clips)) >= 2:
        calib_clips, calib_source = val_clips, "validation"
    else:
        calib_clips, calib_source = train_clips, "training (too little validation data)"
        message = (
            f"{opts.data}: no held-out normal footage to calibrate on (--val-clips {opts.val_clips}; a lone clip "
            f"holds out its last 15 % only from {4 * WINDOW} frames up), so the threshold comes from the training "
            "windows themselves and will flag more than the asked false-alarm rate on new normal footage. "
            "Give more or longer clips, or choose --threshold in detect."
        )
        warnings.append(message)
        emit("warning", message=message)
    n_calib, need = len(WindowSet(calib_clips)), math.ceil(1 / opts.false_alarm_rate)
    if n_calib < need and calib_clips is not train_clips:  # (calibrating on the training windows is warned about above)
        message = (
            f"{opts.data}: the threshold comes from only {n_calib} normal window{'' if n_calib == 1 else 's'}; a "
            f"false-alarm rate of {opts.false_alarm_rate:g} needs at least {need} to mean anything. "
            + ("Recalibrate on more footage" if calib_clips is not val_clips else "Give more normal footage to hold out (more or longer clips)")
            + ", or choose --threshold in detect."
        )
        warnings.append(message)
        emit("warning", message=message)
    if message := _discriminator_at_chance(progress.get("best")):
        warnings.append(message)
        emit("warning", message=message)
    emit("calibrate", windows=n_calib, source=calib_source)
    pixel, d = validate(generator, discriminator, calib_clips, device)
    try:
        calibration = scoring.calibrate(pixel, d, opts.false_alarm_rate)
    except ValueError as err:
        raise TrainingError(f"{opts.data}: cannot calibrate on {calib_source} windows ({err}).") from None
    calibration["source"] = calib_source
    calibration["clips"] = [c.source for c in calib_clips]
    if trained_on:
        calibration["trained_on"] = trained_on
    training = {
        "stan_version": __version__,
        "command": " ".join(sys.argv),
        "data": str(opts.data),
        "train_clips": [c.source for c in train_clips],
        "pretrain_epochs": opts.pretrain_epochs,
        "epochs": opts.epochs,
        "discriminator_epochs": opts.discriminator_epochs,
        "steps": progress["step"],
        "options": {k: getattr(opts, k) for k in TrainOptions.RUN_KEYS} | {"precision": opts.precision},
        "selection_rule": D_SELECTION_RULE if _final_phase(opts) == "discriminator" else SELECTION_RULE,
        "selected": progress.get("best"),
        "generator_selected": progress.get("generator_selected"),
        "init": _init_record(progress.get("init")),
        "wall_s": round(progress["wall_s"], 1),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "device": str(device),
            "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        },
        "warnings": warnings,
    }
    save_weights(opts.out, generator, discriminator, config, calibration, training)
    plot_losses(opts.live_log, opts.live_val_log, opts.live_plot)
    _publish_logs(opts)
    return TrainResult(
        out=opts.out,
        selected=progress.get("best") or {},
        calibration=calibration,
        wall_s=progress["wall_s"],
        steps=progress["step"],
        log=opts.log_path if opts.log_path.exists() else None,
        plot=opts.plot_path if opts.plot_path.exists() else None,
    )
