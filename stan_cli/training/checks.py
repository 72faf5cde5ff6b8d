"""Refusals before any work: every option, and the files a run would replace.

Both raise one of stan's own errors with one line that names what and says what to do; nothing is
locked, deleted or decoded before `check_options` has passed.
"""

from __future__ import annotations

import numbers
import os
from pathlib import Path

import torch

from .. import pseudo
from ..dataset import find_sources, not_a_frame_cache
from ..errors import InputError, OutputError, StanError, TrainingError
from ..fileio import is_stan_safetensors, written_by_stan
from ..inference import PRECISIONS
from ..model import PRESETS, WINDOW, Discriminator, Generator, StanConfig
from ..video import is_frame_folder
from .budget import INIT_SHARES, SHARES, check_duration, parse_shares
from .options import EPOCH_OPTIONS, PIXEL_NORMS, TrainOptions, is_recalibration, pseudo_plan

MAX_EPOCHS = 100_000  # a phase's epochs: far past any real run, so that a slip of the keyboard is refused, not run for weeks
MAX_COUNT = 1_000_000_000  # windows, clips, steps: past any run; a value meant for another option is refused
MIN_FALSE_ALARM_RATE = 1e-6  # a smaller rate would need more than a million held-out normal windows to mean anything
# Whole-number options: (lowest, highest). --workers: at most the CPUs this process may use.
WHOLE = {
    "pretrain_epochs": (0, MAX_EPOCHS), "epochs": (0, MAX_EPOCHS), "discriminator_epochs": (0, MAX_EPOCHS),
    "batch_size": (1, MAX_COUNT), "val_clips": (0, MAX_COUNT), "checkpoint_every": (1, MAX_COUNT),
    "seed": (0, 2**32 - 1), "workers": (0, None),
}
# Real-number options: the test (False for NaN, whose every comparison is False) and what it asks.
REAL = {
    "lr": (lambda v: 0 < v <= 1, "must be greater than 0 and at most 1 (Adam's learning rate; the default is 0.0002)"),
    "lam": (lambda v: 0 <= v <= 1e6, "must be between 0 and 1e6 (the pixel term's weight in L_G; the paper's is 1)"),
    "false_alarm_rate": (
        lambda v: MIN_FALSE_ALARM_RATE <= v < 1,
        f"must be between 0 and 1 (0.01 = 1 %), and at least {MIN_FALSE_ALARM_RATE:g}: a smaller rate needs more than "
        "a million held-out normal windows to mean anything",
    ),
    "pseudo_share": (lambda v: 0 <= v <= 1, "must be between 0 and 1 (the fraction of the discriminator's fakes)"),
}


def check_options(opts: TrainOptions) -> None:
    """Every option checked before anything is locked, deleted or decoded."""
    _check_names(opts)
    _check_numbers(opts)
    _check_recipe(opts)
    _check_budget(opts)
    _check_ognet(opts)
    _check_local_labels(opts)
    _check_paths(opts)


def _check_names(opts: TrainOptions) -> None:
    if opts.preset not in PRESETS:
        raise TrainingError(f"--preset {opts.preset}: unknown. Use one of {', '.join(PRESETS)}.")
    try:
        pseudo.parse_kinds(opts.pseudo_anomalies)
    except ValueError as err:
        raise TrainingError(f"--pseudo-anomalies {opts.pseudo_anomalies}: {err}.") from None
    if opts.pixel_norm not in PIXEL_NORMS:
        raise TrainingError(f"--pixel-norm {opts.pixel_norm}: unknown. Use one of {', '.join(PIXEL_NORMS)}.")
    if opts.precision not in PRECISIONS:
        raise TrainingError(f"--precision {opts.precision}: unknown. Use one of {', '.join(PRECISIONS)}.")


def _check_numbers(opts: TrainOptions) -> None:
    """Each number in its range and finite: an inf, a NaN or a value meant for another option fails
    here with its own name, not hours later with advice about another (a NaN loss, a full disk)."""
    for name, (low, high) in WHOLE.items():
        value = getattr(opts, name)
        if value is None and name.endswith("epochs"):  # None: the default, or a resumed run's own
            continue
        high = _cpus() if high is None else high
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
            note = " (this machine's CPUs; each worker is a process)" if name == "workers" else ""
            raise TrainingError(f"{_flag(name)} {_shown(value)}: must be a whole number from {low} to {high}{note}.")
    for name, (ok, rule) in REAL.items():
        value = getattr(opts, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not ok(value):
            raise TrainingError(f"{_flag(name)} {_shown(value)}: {rule}.")


def _flag(name: str) -> str:
    return "--lambda" if name == "lam" else "--" + name.replace("_", "-")


def _shown(value) -> str:
    try:
        return str(value)
    except ValueError:  # an int of more than 4300 digits, which Python refuses to print
        return "(a number too long to print)"


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _check_recipe(opts: TrainOptions) -> None:
    """Combinations of epochs and --init that would train nothing, or the wrong thing."""
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
    if opts.name is not None and not (0 < len(opts.name) <= 100 and opts.name.isprintable()):
        raise TrainingError(f"--name {opts.name!r}: give 1 to 100 printable characters, e.g. my-camera-2026-12.")
    if opts.reset_discriminator and opts.init is None:
        raise TrainingError("--reset-discriminator only makes sense with --init FILE (a new run starts from random networks anyway).")


def _check_ognet(opts: TrainOptions) -> None:
    """--old-generator and --generated-as-real act in the discriminator phase only (a resumed run
    keeps its own: they are checked when it begins)."""
    if opts.resume:
        return
    if opts.generated_as_real and opts.old_generator is None:
        raise TrainingError(
            "--generated-as-real labels the current generator's windows real, so the generated fakes must come from "
            "another generator: add --old-generator FILE (an early checkpoint of the same networks)."
        )
    if opts.old_generator is None:
        return
    _check_discriminator_phase(opts, "--old-generator")
    if not Path(opts.old_generator).is_file():
        raise TrainingError(f"{opts.old_generator}: no such weights file (--old-generator). Give an early checkpoint's .safetensors.")


def _check_local_labels(opts: TrainOptions) -> None:
    """--local-labels needs a local kind among the pseudo-anomalies and a discriminator phase (a
    resumed run keeps its own options: checked when it began)."""
    if opts.resume or not opts.local_labels:
        return
    kinds, share = pseudo_plan(opts)
    if not set(kinds) & set(pseudo.LOCAL_LABELLED) or share <= 0:
        raise TrainingError(
            f"--local-labels labels where a local pseudo-anomaly is, and --pseudo-anomalies {opts.pseudo_anomalies} "
            f"(share {share:g}) makes none: add one of {', '.join(pseudo.LOCAL_LABELLED)}."
        )
    _check_discriminator_phase(opts, "--local-labels")


def _check_discriminator_phase(opts: TrainOptions, option: str) -> None:
    """`option` acts in the discriminator phase only: the run must have one (epochs, or a share of --time)."""
    if opts.time_budget is not None:
        shares = parse_shares(opts.time_shares) if opts.time_shares is not None else INIT_SHARES if opts.init is not None else SHARES
        if not shares["discriminator"]:
            raise TrainingError(f"{option} acts in the discriminator phase only: give it a share of the time (--time-shares).")
    elif not opts.discriminator_epochs:
        raise TrainingError(f"{option} acts in the discriminator phase only: add --discriminator-epochs N.")


def _check_budget(opts: TrainOptions) -> None:
    """--time plans the epochs itself: it takes no epoch option, and shares that can train something."""
    if opts.resume and opts.time_shares is not None:
        raise TrainingError(
            f"--time-shares {opts.time_shares} with --resume: a resumed run keeps its own shares of the time. "
            "Drop --time-shares (add --time T to give it T from now)."
        )
    if opts.time_budget is None:
        if opts.time_shares is not None:
            raise TrainingError("--time-shares splits a --time budget between the phases: add --time (e.g. --time 45m).")
        return
    check_duration(opts.time_budget)
    for flag in EPOCH_OPTIONS.values():
        if getattr(opts, flag.removeprefix("--").replace("-", "_")) is not None:
            raise TrainingError(
                f"{flag} with --time: --time plans every phase's epochs itself (how it shares the time between them: "
                f"--time-shares). Drop {flag}, or drop --time to train the epochs you ask for."
            )
    if opts.time_shares is not None:
        shares = parse_shares(opts.time_shares)
        if opts.init is None and not shares["pretrain"] and not shares["adversarial"]:
            raise TrainingError(
                f"--time-shares {opts.time_shares}: only the discriminator phase, which trains against a trained "
                "generator: give the generator a share (e.g. 3,0,1), or add --init FILE."
            )


def _check_paths(opts: TrainOptions) -> None:
    if opts.init is not None and Path(opts.init).is_dir():
        raise InputError(f"{opts.init}: is a folder, not a weights file. Give --init a .safetensors file written by stan train.")
    if opts.init is not None and not Path(opts.init).is_file():
        raise InputError(f"{opts.init}: no such weights file. Give --init an existing .safetensors file (or drop --init).")
    if opts.out.is_dir():
        raise OutputError(f"{opts.out}: is a folder. --out must be a file name such as model.safetensors.")
    if opts.out.parent.exists() and not opts.out.parent.is_dir():
        raise OutputError(f"{opts.out.parent}: is a file, not a folder. Choose an --out inside a folder.")
    if not opts.out.parent.is_dir():
        raise OutputError(f"{opts.out.parent}: folder does not exist. Create it or choose another --out.")
    if not os.access(opts.out.parent, os.W_OK):
        raise OutputError(f"{opts.out.parent}: folder is not writable. Choose another --out.")
    _check_outside_footage(opts)


def _check_outside_footage(opts: TrainOptions) -> None:
    """Nothing the run writes lies in its footage: not --out and the logs and plot beside it, not
    the checkpoint folder and its frame cache, in the footage folder or in a clip (which may be a
    link to a folder elsewhere). Written there, they change the footage: a loss plot among JPEG
    frames makes a folder that mixes image formats, a checkpoint folder a clip of its own."""
    data = Path(opts.data)
    footage = {place.resolve(): place for place in _footage(data)}
    ckpt_flag = "--checkpoint-dir" if opts.checkpoint_dir is not None else "--out"
    outputs = [
        (opts.out, "--out", "--out"),
        (opts.log_path, "the log written beside --out", "--out"),
        (opts.val_log_path, "the validation log written beside --out", "--out"),
        (opts.plot_path, "the loss plot written beside --out", "--out"),
        (opts.ckpt_dir, "--checkpoint-dir" if opts.checkpoint_dir is not None else "the checkpoint folder of --out", ckpt_flag),
        (opts.ckpt_dir / "frames", "the frame cache in the checkpoint folder", ckpt_flag),
    ]
    for path, label, flag in outputs:
        real = path.resolve() if path.is_dir() else path.parent.resolve() / path.name  # a file is replaced, not its link's target
        for place_real, place in footage.items():
            if real == place_real or place_real in real.parents:
                raise OutputError(
                    f"{path}: {label} {'is' if real == place_real else 'lies in'} {_place(place, data)}, and stan train writes "
                    f"nothing into its footage (what it wrote would be read as frames or clips next time). Choose {flag} outside {data}."
                )


def _place(place: Path, data: Path) -> str:
    if place.is_file():
        return f"the video {place}"
    if place != data:
        return f"the clip {place}"
    return f"the {'frame' if is_frame_folder(place) else 'footage'} folder {place}"


def _footage(data: Path) -> list[Path]:
    """The clips of the footage, then the footage folder (or video) itself: the innermost place is
    named first. What cannot be listed is refused when the footage is read, with its own message."""
    if not data.exists():
        return []
    try:
        return [*find_sources(data), data]
    except (StanError, OSError):
        return [data]


def check_outputs(opts: TrainOptions) -> None:
    """Refuse, touching nothing, a run that would replace files the user did not ask to replace
    (called with the run's locks held, so that a live run's files are never judged)."""
    ckpt = opts.ckpt_dir / "last.safetensors"
    if opts.resume:
        if not ckpt.exists():
            raise TrainingError(f"{ckpt}: no checkpoint to resume. Run without --resume to start training.")
        return
    _check_run_folder(opts)
    if opts.overwrite:
        _check_replaceable(opts)
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


def _check_replaceable(opts: TrainOptions) -> None:
    """--overwrite replaces an earlier run's files, never a file stan did not write: the weights
    file must be stan weights (or a checkpoint), the logs and the plot stan's (by content)."""
    if opts.out.exists() and not is_stan_safetensors(opts.out):
        raise OutputError(
            f"{opts.out}: not a stan weights file, and --overwrite only replaces files stan wrote. "
            "Choose another --out (a .safetensors name), or move the file away."
        )
    for path in (opts.log_path, opts.val_log_path, opts.plot_path):
        if path.exists() and not written_by_stan(path):
            raise OutputError(
                f"{path}: not a file stan wrote, and this run would write its own there; --overwrite only replaces "
                "stan's files. Choose another --out, or move the file away."
            )


def _check_run_folder(opts: TrainOptions) -> None:
    """A new run clears its checkpoint folder's record (resume.start_record): only files stan wrote,
    since --checkpoint-dir may name a folder of the user's."""
    for path in (opts.ckpt_dir / "last.safetensors", *opts.run_record):
        if path.exists() and not written_by_stan(path):
            raise OutputError(
                f"{path}: not a file stan wrote, and a new run clears this name in its checkpoint folder. "
                "Choose another --checkpoint-dir, or move the file away."
            )
    _check_frame_cache(opts.ckpt_dir / "frames")


def _check_frame_cache(cache: Path) -> None:
    """A run decodes its footage into `frames/` of its checkpoint folder, replacing what is there:
    refused unless that folder is a frame cache stan made, since --checkpoint-dir may name a folder
    of the user's."""
    problem = not_a_frame_cache(cache)
    if problem:
        raise OutputError(
            f"{cache}: {problem}; a new run writes its frame cache there. "
            "Choose another --checkpoint-dir, or move the folder away."
        )


def check_batch_memory(opts: TrainOptions, device: torch.device, world: int) -> None:
    """Refuse, before any work, a --batch-size whose training step cannot fit in the device's
    memory even by a lower bound of what it holds (`window_bytes`)."""
    memory = _total_memory(device)
    if memory is None:
        return
    total, where = memory
    size = PRESETS[opts.preset].image_size
    per_window = window_bytes(PRESETS[opts.preset]) // (2 if opts.precision == "bf16" else 1)
    processes = world if device.type == "cpu" else 1  # the processes of a run on the CPU share its memory
    need = per_window * opts.batch_size * processes
    if need <= total:
        return
    most = total // (per_window * processes)
    raise TrainingError(
        f"--batch-size {opts.batch_size}: a training step holds at least {need / 2**30:.1f} GiB ({per_window / 2**20:.0f} MiB "
        f"a window at {size}x{size}{f', {processes} processes' if processes > 1 else ''}), more than the "
        f"{total / 2**30:.1f} GiB of {where}. "
        + (f"Choose --batch-size {most} or less." if most else "Not even one window fits: train on a device with more memory.")
    )


def window_bytes(config: StanConfig) -> int:
    """A lower bound of the memory one window takes in a training step (fp32): every convolution's
    output and its ELU's, kept for the backward pass, over one generator pass and three
    discriminator passes (real and fake in the discriminator step, the fake again in the generator
    step). The paper networks measured on a CPU: about 195 MiB a window, this bound 152 MiB."""
    counted = [0]

    def count(module, args, output) -> None:
        counted[0] += output.numel()

    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        generator, discriminator = Generator(config), Discriminator(config)
        for module in (*generator.modules(), *discriminator.modules()):
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose2d)):
                module.register_forward_hook(count)
        size = config.image_size
        generator(torch.empty(1, WINDOW - 1, 1, size, size))
        g_outputs, counted[0] = counted[0], 0
        discriminator(torch.empty(1, WINDOW, 1, size, size))
    return 2 * 4 * (g_outputs + 3 * counted[0])


def _total_memory(device: torch.device) -> tuple[int, str] | None:
    """The device's memory in bytes and its name in a message; None where it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory, f"the GPU {device}"
    if device.type == "cpu" and hasattr(os, "sysconf"):
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's memory"
        except (ValueError, OSError):
            return None
    return None
