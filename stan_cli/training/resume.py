"""Where a run stands, and how it resumes: its options and epochs, its progress (phase, epoch,
batch, step, selection), and the --init file it started from."""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path

from ..errors import TrainingError
from ..model import PRESETS
from ..weights import Stan, file_sha256, load_checkpoint, load_weights, read_checkpoint_progress
from .budget import INIT_SHARES, SHARES, parse_shares
from .checkpoints import Scratch
from .clock import new_budget
from .logs import adopt_logs, restart_logs
from .options import (
    BUDGET_EPOCHS, DEFAULT_EPOCHS, DEFAULT_PRETRAIN_EPOCHS, EPOCH_OPTIONS, PHASES, Event, TrainOptions, final_phase,
    is_recalibration, last_phase, phases,
)
from .ranks import Rank


def start_record(opts: TrainOptions, rank: Rank, step: int, scratch: Scratch | None) -> None:
    """The run's logs, once the footage has been read (a refused run leaves the earlier run
    resumable): a resumed run's carry on from its checkpoint's step; a new run (--overwrite, or
    leftovers without a checkpoint) starts from an empty record."""
    if rank.main and opts.resume:
        adopt_logs(opts)
        restart_logs(opts, step)
    elif scratch is not None and not is_recalibration(opts):  # a recalibration trains nothing: an earlier run stays resumable
        for path in (opts.ckpt_dir / "last.safetensors", *opts.run_record):
            path.unlink(missing_ok=True)
        scratch.cleared = True


def load_init(opts: TrainOptions) -> Stan | None:
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


def init_record(init: dict | None) -> dict | None:
    """The --init record for the weights' metadata. Checkpoints written before the init file's own
    history was kept get it here, read from that file if it is still there, unchanged (same hash)."""
    if init is None or "training" in init:
        return init
    path = Path(init["file"])
    if path.is_file() and file_sha256(path) == init["sha256"]:
        return init | {"training": load_weights(path).training}
    return init


def run_options(opts: TrainOptions, rank: Rank, emit: Event) -> TrainOptions:
    """The options the run trains with: a resumed run's own for what defines it (RUN_KEYS) and for
    the phases it has gone past (`resumed_epochs`); the defaults for epochs a new run leaves out."""
    if not opts.resume and opts.time_budget is not None:  # the phases with a share train until their part of the time ends
        for phase, share in time_shares(opts).items():
            setattr(opts, _key(phase), BUDGET_EPOCHS if share else 0)
        return opts
    if not opts.resume:
        opts.pretrain_epochs = DEFAULT_PRETRAIN_EPOCHS if opts.pretrain_epochs is None else opts.pretrain_epochs
        opts.epochs = DEFAULT_EPOCHS if opts.epochs is None else opts.epochs
        opts.discriminator_epochs = opts.discriminator_epochs or 0
        return opts
    last_path = opts.ckpt_dir / "last.safetensors"
    progress = read_checkpoint_progress(last_path)
    _check_resumed_budget(opts, progress, last_path)
    if rank.main and (message := _init_ignored(opts, progress)):
        emit("warning", message=message)
    written = progress["options"]
    stored = {k: written.get(k, TrainOptions.LEGACY.get(k)) for k in TrainOptions.RUN_KEYS}
    # Only what the command gave: an option left at its default was not asked for, and the run's
    # own value is what a resume means (the same command, or --resume alone).
    defaults = {f.name: f.default for f in fields(TrainOptions)}
    changed = [k for k in TrainOptions.RUN_KEYS if stored[k] != getattr(opts, k) and getattr(opts, k) != defaults[k]]
    if changed and rank.main:
        emit("warning", message=f"resuming with the run's own {', '.join(changed)} (command-line values ignored)")
    older = [k for k in TrainOptions.RUN_KEYS if k not in written and k not in changed and stored[k] != defaults[k]]
    if older and rank.main:  # a checkpoint from before these options: not today's defaults
        emit("warning", message="this run was written before " + ", ".join(older) + " existed; it goes on as it was trained: "
             + ", ".join(f"{k} {stored[k]}" for k in older) + " (today's defaults: " + "; ".join(f"{k} {defaults[k]}" for k in older) + ")")
    opts = TrainOptions(**{**asdict(opts), **stored})
    resumed_epochs(opts, progress)
    world = progress.get("world_size", 1)
    if world != rank.world:
        raise TrainingError(
            f"{last_path}: this run was trained by {world} process(es), now {rank.world}. "
            f"Resume with the same number of processes (the data order depends on it)."
        )
    return opts


def time_shares(opts: TrainOptions) -> dict[str, float]:
    """A new --time run's shares of the time: --time-shares, or the default (with --init, its own)."""
    if opts.time_shares is not None:
        return parse_shares(opts.time_shares)
    return dict(INIT_SHARES if opts.init is not None else SHARES)


def _key(phase: str) -> str:
    return EPOCH_OPTIONS[phase].removeprefix("--").replace("-", "_")


def _check_resumed_budget(opts: TrainOptions, progress: dict, last_path: Path) -> None:
    """A --time run resumes on time (what is left of its budget, or --time T more), never on epochs;
    --time resumes only a --time run that has not finished."""
    timed = "budget" in progress and not progress["budget"].get("finished")  # a finished one goes on by epochs
    given = [flag for phase, flag in EPOCH_OPTIONS.items() if getattr(opts, _key(phase)) is not None]
    if timed and given:
        raise TrainingError(
            f"{given[0]}: this run plans its epochs by its --time budget. Resume it without {given[0]} "
            "(it goes on with what is left of its budget; add --time T to give it T from now)."
        )
    if opts.time_budget is not None and timed:
        record = progress["budget"]
        if all(p in record.get("ended", []) for p, share in record["shares"].items() if share):
            raise TrainingError(
                f"{last_path}: this --time run has trained all its phases and was stopped before its weights were "
                f"written. Resume it without --time to calibrate and write them; then train on from them in a new "
                f"run: --init {opts.out} --time T --out OTHER."
            )
    if opts.time_budget is not None and not timed:
        if "budget" not in progress:
            raise TrainingError(
                f"{last_path}: this run was started without --time and trains the epochs it was given. "
                "Resume it without --time, or start a new run with --time."
            )
        final = done_phase(progress)
        raise TrainingError(
            f"{last_path}: this --time run has finished. Continue it with more epochs of its last phase "
            f"({EPOCH_OPTIONS[final]} N, N > {progress['done_epochs']}), or train on from its weights in a new run: "
            f"--init {opts.out} --time T --out OTHER."
        )


def _init_ignored(opts: TrainOptions, progress: dict) -> str | None:
    """A resumed run starts from its checkpoint: an --init (or --reset-discriminator) other than the
    run's own changes nothing, and the user is told so."""
    own = progress.get("init")
    given = []
    if opts.init is not None and (own is None or not _same_file(Path(opts.init), own)):
        given.append(f"--init {opts.init}")
    if opts.reset_discriminator and not (own or {}).get("reset_discriminator"):
        given.append("--reset-discriminator")
    if not given:
        return None
    start = f"--init {own['file']}" if own else "random networks"
    return f"resuming from the run's checkpoint (it started from {start}): {' and '.join(given)} ignored"


def _same_file(path: Path, init: dict) -> bool:
    """Is `path` the run's --init file: the same path, or a file with its sha256?"""
    if path.resolve() == Path(init["file"]).resolve():
        return True
    return path.is_file() and file_sha256(path) == init.get("sha256")


def resumed_epochs(opts: TrainOptions, progress: dict) -> None:
    """Each phase's epochs for a resumed run. Not given: the run's own. A phase it has gone past
    keeps the run's own whatever is given (those epochs are history); the phase it ended in may
    be extended; the phase it is in may be cut down to the epochs it has finished (to finish the
    run as it stands), but not to none."""
    done = progress["phase"] == "done"
    current = done_phase(progress) if done else progress["phase"]
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


def done_phase(progress: dict) -> str:
    """The phase a finished run ended with (checkpoints from before `done_phase`: its last asked-for phase)."""
    return progress.get("done_phase") or last_phase(progress["epochs"], progress.get("discriminator_epochs"))


def start_progress(opts: TrainOptions, rank: Rank, init: Stan | None, nets_and_optimisers: tuple, emit: Event) -> dict:
    """Where the run stands: a resumed run's checkpoint (loaded into the networks and optimisers),
    or step 0 of a new one, with the --init file's history."""
    last_path = opts.ckpt_dir / "last.safetensors"
    if opts.resume:
        progress = load_checkpoint(last_path, *nets_and_optimisers)
        emit("resume", step=progress["step"], phase=progress["phase"], epoch=progress["epoch"], batch=progress["batch"], checkpoint=str(last_path))
        if opts.time_budget is not None:  # --time T: this command gets T, whatever was left
            progress["budget"]["seconds"] = progress["budget"]["used_s"] + opts.time_budget
    else:
        progress = {"phase": "pretrain", "epoch": 0, "batch": 0, "step": 0, "wall_s": 0.0, "best": None}
        if opts.time_budget is not None:
            progress["budget"] = new_budget(opts.time_budget, time_shares(opts))
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
    return progress


def continue_finished(opts: TrainOptions, progress: dict) -> bool:
    """A finished run resumed: back to where it ended when more epochs of its last phase are asked
    for (False); True when only its weights are still to be written; otherwise refused."""
    if progress["phase"] != "done":
        return False
    final = final_phase(opts)
    same_phase = done_phase(progress) == final
    done_epochs = progress["done_epochs"] if same_phase else 0
    wanted = dict(phases(opts))[final]
    if wanted > done_epochs:  # back where it ended: the loop moves on to the next phase as usual
        # A run finished as it stood, mid-epoch, goes on from the batch it had reached, with the
        # state it had there (the checkpoint's, not the selected epoch's): as if never stopped.
        progress.update(phase=done_phase(progress), epoch=progress["done_epochs"], batch=progress.get("batch", 0))
        return False
    if not opts.out.exists():
        return True  # training ended but the weights were never written: write them now
    flag = EPOCH_OPTIONS[final]
    raise TrainingError(
        f"{opts.ckpt_dir / 'last.safetensors'}: this run already finished {done_epochs} {final} epoch{'' if done_epochs == 1 else 's'}. "
        f"Ask for more with {flag} N (N > {done_epochs}) to continue it."
    )
