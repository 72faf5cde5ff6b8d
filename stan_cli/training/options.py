"""What a training run is: its options, its phases, and what it returns.

Phases (STAN.md, "Training"): `pretrain` trains the generator alone on the pixel loss; then
`adversarial` alternates one discriminator step on L_D and one generator step on L_G per batch;
then, optionally and not in the paper, `discriminator` trains the discriminator alone against the
selected, frozen generator (`stan_cli.train` says why).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import pseudo

Event = Callable[..., None]
DEFAULT_PRETRAIN_EPOCHS = 10
DEFAULT_EPOCHS = 20
PHASES = ("pretrain", "adversarial", "discriminator")
EPOCH_OPTIONS = {"pretrain": "--pretrain-epochs", "adversarial": "--epochs", "discriminator": "--discriminator-epochs"}
# reverse is left out by default: where people or vehicles move both ways a reversed window is
# normal motion, and labelling it fake is noise (Ped2 validation: 49.8 % AUC after training;
# docs/discriminator.md); it stays available for one-way scenes
DEFAULT_PSEUDO = "skip,repeat,patch"
DEFAULT_PSEUDO_SHARE = 0.75
PIXEL_NORMS = ("l2", "mse")
BUDGET_EPOCHS = 100_000  # a --time phase's epochs while it trains: it ends when its part of the time does


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
    # the discriminator phase's generated fakes take their middle frame from this weights file's
    # generator (an early, weaker one: OGNet's "old is gold"), not from the frozen current one
    old_generator: str | None = None
    # the discriminator phase shows half of its real windows with the current generator's middle
    # frame, labelled real (OGNet: a good prediction is normal); only with old_generator
    generated_as_real: bool = False
    # the discriminator phase labels fake only the patches of D's map that a local pseudo-anomaly
    # (pseudo.LOCAL_LABELLED) covers, real the others, instead of the whole window fake
    local_labels: bool = False
    init: Path | None = None
    reset_discriminator: bool = False
    name: str | None = None  # the weights' version name; None: <out stem>-<UTC date of writing>
    # --time: seconds this command may take, reading the footage and calibrating included (None:
    # the epochs asked for); the phases' shares of it (None: budget.SHARES, or INIT_SHARES with --init)
    time_budget: float | None = None
    time_shares: str | None = None

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
        "pseudo_anomalies", "pseudo_share", "old_generator", "generated_as_real", "local_labels",
    )
    # What a checkpoint written before a key existed was trained with.
    LEGACY = {"pixel_norm": "mse", "pseudo_anomalies": "none", "pseudo_share": 0.0, "old_generator": None, "generated_as_real": False,
              "local_labels": False}


@dataclass
class TrainResult:
    out: Path
    selected: dict
    calibration: dict
    wall_s: float
    steps: int
    log: Path | None  # None when the run wrote none (a recalibration trains no step)
    plot: Path | None


def phases(opts: TrainOptions) -> list[tuple[str, int]]:
    return [("pretrain", opts.pretrain_epochs), ("adversarial", opts.epochs), ("discriminator", opts.discriminator_epochs)]


def set_epochs(opts: TrainOptions, progress: dict, phase: str, epochs: int) -> None:
    """A phase's epochs, in the options and in the progress a checkpoint keeps."""
    key = EPOCH_OPTIONS[phase].removeprefix("--").replace("-", "_")
    setattr(opts, key, epochs)
    progress[key] = epochs


def last_phase(epochs: int, discriminator_epochs: int | None) -> str:
    """The last phase that runs, given the adversarial and discriminator epochs."""
    return "discriminator" if discriminator_epochs else "adversarial" if epochs else "pretrain"


def final_phase(opts: TrainOptions) -> str:
    return last_phase(opts.epochs, opts.discriminator_epochs)


def generator_phase(opts: TrainOptions) -> str:
    """The last phase that trains the generator: its selected state is the output, or, with a
    discriminator phase, the generator that phase trains against."""
    return last_phase(opts.epochs, 0)


def is_recalibration(opts: TrainOptions) -> bool:
    """--init with zero epochs of every phase: new calibration for unchanged networks (never a resumed run)."""
    return (
        opts.init is not None and not opts.resume
        and opts.pretrain_epochs == 0 and opts.epochs == 0 and not opts.discriminator_epochs
    )


def pseudo_plan(opts: TrainOptions) -> tuple[tuple[str, ...], float]:
    """The discriminator phase's pseudo-anomaly kinds and their share of the fakes (0 without kinds)."""
    kinds = pseudo.parse_kinds(opts.pseudo_anomalies)
    return kinds, (float(opts.pseudo_share) if kinds else 0.0)
