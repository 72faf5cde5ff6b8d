"""Weights and training checkpoints as safetensors, with JSON metadata. No pickle anywhere.

A weights file holds `generator.*` and `discriminator.*` tensors and string metadata:
  format="stan-weights", format_version, config (StanConfig as JSON), calibration (JSON or
  absent), training (JSON: command, data, epochs, wall time, selection rule ...).
Loading is strict: a missing or unexpected key, a shape from another config, or a newer
format version is an error that says which.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from .errors import WeightsError
from .fileio import is_utf8, shown
from .model import Discriminator, Generator, StanConfig
from .report import sanitize_json

FORMAT = "stan-weights"
FORMAT_VERSION = 1
CHECKPOINT_FORMAT = "stan-checkpoint"
# Shipped weights, best first: trained Ped2 weights once they exist, else the seeded untrained file.
DEFAULT_WEIGHTS_NAMES = ("stan-ped2.safetensors", "stan-untrained.safetensors")


def _header_metadata(path: Path) -> dict | None:
    """A safetensors file's metadata from its header alone (no tensors read), following links;
    None when the file cannot be read (`stan --version` must not fail on a damaged file)."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            return fh.metadata() or {}
    except Exception:  # noqa: BLE001 - any unreadable file: nothing to show
        return None


def weights_format(path: Path) -> str | None:
    """The `format` a safetensors file's header names (FORMAT for weights, CHECKPOINT_FORMAT for a
    training checkpoint); None when the file has none or cannot be read."""
    value = (_header_metadata(path) or {}).get("format")
    return value if isinstance(value, str) else None


def weights_name(path: Path) -> str | None:
    """A weights file's version name from its header; None when it has none or the file cannot be
    read."""
    try:
        training = json.loads((_header_metadata(path) or {}).get("training") or "{}")
    except ValueError:
        return None
    name = training.get("name") if isinstance(training, dict) else None
    return name if isinstance(name, str) else None


def _not_a_file(path: Path) -> str:
    """Why a weights path that is no folder cannot be read as a file: it is missing, or a pipe or device."""
    return "is not a regular file (a pipe or device)" if path.exists() else "weights file not found"


def find_default_weights() -> Path:
    """The shipped weights: $STAN_WEIGHTS, else weights/ of the source tree (editable install),
    else <prefix>/share/stan/weights (pip install .), else ./weights/."""
    env = os.environ.get("STAN_WEIGHTS")
    if env:
        if Path(env).is_dir():
            raise WeightsError(
                f"{env}: is a folder, not a weights file (named by $STAN_WEIGHTS). Point STAN_WEIGHTS at a "
                ".safetensors file from `stan train`, or unset it to use the shipped weights."
            )
        if not Path(env).is_file():
            raise WeightsError(
                f"{env}: {_not_a_file(Path(env))} (named by $STAN_WEIGHTS). Point STAN_WEIGHTS at a "
                ".safetensors file from `stan train`, or unset it to use the shipped weights."
            )
        return Path(env)
    folders = [
        Path(__file__).resolve().parent.parent / "weights",
        Path(sys.prefix) / "share" / "stan" / "weights",
        Path.cwd() / "weights",
    ]
    for folder in folders:
        for name in DEFAULT_WEIGHTS_NAMES:
            if (folder / name).is_file():
                return folder / name
    raise WeightsError(
        "no default weights found (looked in "
        + ", ".join(str(f) for f in folders)
        + "). Pass --weights FILE, set STAN_WEIGHTS, or run from the stan source folder."
    )


@dataclass
class Stan:
    """Both networks, rebuilt from a weights file, with what was stored beside them."""

    generator: Generator
    discriminator: Discriminator
    config: StanConfig
    calibration: dict | None = None
    training: dict = field(default_factory=dict)
    path: Path | None = None
    sha256: str | None = None

    @property
    def file(self) -> str | None:
        """The weights' path for reports: relative to the working folder when inside it (the shipped
        weights from a checkout read as weights/..., not as the machine's absolute path)."""
        if self.path is None:
            return None
        try:
            return str(Path(self.path).resolve().relative_to(Path.cwd().resolve()))
        except ValueError:
            return str(self.path)

    @property
    def name(self) -> str | None:
        """The weights' version name (`training.name`: the shipped ones e.g. ped2-2026-12-06, a
        `stan train` output <file stem>-<date>); None for files written before 0.2.0."""
        name = self.training.get("name") if isinstance(self.training, dict) else None
        return name if isinstance(name, str) else None

    def to(self, device: torch.device | str) -> "Stan":
        self.generator.to(device)
        self.discriminator.to(device)
        return self

    def eval(self) -> "Stan":
        self.generator.eval()
        self.discriminator.eval()
        return self


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_save(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    # Serialised in memory and written with a plain open(): the file gets the umask's mode (0644
    # usually) like every other output; safetensors' save_file renames a 0600 temp file of its own.
    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())  # on disk before the rename: a power cut leaves the old file or the new, never an empty one
        os.replace(tmp, path)
        _fsync(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def model_tensors(generator: nn.Module, discriminator: nn.Module) -> dict[str, torch.Tensor]:
    tensors = {f"generator.{k}": v for k, v in generator.state_dict().items()}
    tensors.update({f"discriminator.{k}": v for k, v in discriminator.state_dict().items()})
    return tensors


def save_weights(
    path: Path,
    generator: nn.Module,
    discriminator: nn.Module,
    config: StanConfig,
    calibration: dict | None = None,
    training: dict | None = None,
) -> None:
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(config.to_dict()),
        "training": json.dumps(sanitize_json(training or {})),  # plain JSON: NaN (no validation) as null
    }
    if calibration is not None:
        metadata["calibration"] = json.dumps(sanitize_json(calibration))
    _atomic_save(model_tensors(generator, discriminator), metadata, path)


def _read(path: Path, expected_format: str, option: str = "--weights") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """`option` is the command-line option that named the file, for the messages."""
    path = Path(path)
    if path.is_dir():
        raise WeightsError(f"{path}: is a folder, not a weights file. Pass {option} with a .safetensors file from `stan train`.")
    if not path.is_file():
        raise WeightsError(f"{path}: {_not_a_file(path)}. Pass {option} with a .safetensors file from `stan train`.")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise WeightsError(
            f"{path}: not a readable safetensors file ({err}); it may be truncated or another format. "
            + ("Start the run again with --overwrite." if expected_format == CHECKPOINT_FORMAT
               else f"Re-download it or point {option} at a file written by `stan train`.")
        ) from None
    if metadata.get("format") == CHECKPOINT_FORMAT and expected_format == FORMAT:
        raise WeightsError(
            f"{path}: a training checkpoint, not weights. Use the weights file its run writes beside "
            "the checkpoint folder (NAME.safetensors for NAME.safetensors.ckpt); a run stopped before it "
            "wrote one is finished with `stan train ... --resume`."
        )
    if metadata.get("format") != expected_format:
        raise WeightsError(
            f"{path}: a safetensors file, but not {expected_format} (format={metadata.get('format')!r}). "
            "Use a file written by `stan train`."
        )
    try:
        version = int(metadata.get("format_version", "0"))
    except ValueError:
        version = -1
    if version > FORMAT_VERSION:
        raise WeightsError(
            f"{path}: format version {version} is newer than this stan understands ({FORMAT_VERSION}). Upgrade stan."
        )
    if version < 1:
        raise WeightsError(f"{path}: format version {metadata.get('format_version')!r} is not valid.")
    return tensors, metadata


def _load_strict(module: nn.Module, tensors: dict[str, torch.Tensor], prefix: str, path: Path) -> None:
    wanted = module.state_dict()
    given = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing = sorted(set(wanted) - set(given))
    unexpected = sorted(set(given) - set(wanted))
    if missing or unexpected:
        raise WeightsError(
            f"{path}: weights do not match the {prefix.rstrip('.')} (missing keys: {missing[:5]}, "
            f"unexpected keys: {unexpected[:5]}). The file is for another architecture."
        )
    for k, v in wanted.items():
        if tuple(given[k].shape) != tuple(v.shape):
            raise WeightsError(
                f"{path}: {prefix}{k} has shape {tuple(given[k].shape)}, the config says {tuple(v.shape)}. "
                "The file's config and tensors disagree."
            )
    module.load_state_dict(given, strict=True)


def load_weights(path: Path, option: str = "--weights") -> Stan:
    """Rebuild both networks from a weights file (on the CPU, in eval mode). `option` names the
    command-line option the file came from in the error messages (`stan train` reads --init)."""
    path = Path(path)
    if not is_utf8(path):
        raise WeightsError(
            f"{shown(path)}: the name is not valid UTF-8, and every report names the weights it used. "
            f"Rename the file (or a folder above it) to a UTF-8 name and pass it to {option} again."
        )
    tensors, metadata = _read(path, FORMAT, option)
    try:
        config = StanConfig.from_dict(json.loads(metadata["config"]))
        calibration = json.loads(metadata["calibration"]) if "calibration" in metadata else None
        training = json.loads(metadata.get("training", "{}"))
    except (KeyError, ValueError, TypeError) as err:
        raise WeightsError(f"{path}: metadata is damaged ({err}). Use a file written by `stan train`.") from None
    if not isinstance(config.image_size, int) or not 32 <= config.image_size <= 1024:  # the paper's is 224
        raise WeightsError(f"{path}: metadata is damaged (image_size {config.image_size} is not from 32 to 1024). Use a file written by `stan train`.")
    if not isinstance(training, dict):
        raise WeightsError(f"{path}: metadata is damaged (training is not a JSON object). Use a file written by `stan train`.")
    check_calibration(calibration, path)
    generator, discriminator = Generator(config), Discriminator(config)
    _load_strict(generator, tensors, "generator.", path)
    _load_strict(discriminator, tensors, "discriminator.", path)
    _check_finite(tensors, path)
    stan = Stan(generator, discriminator, config, calibration, training, path, file_sha256(path))
    return stan.eval()


def _check_finite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Every weight a finite number: one NaN makes every score NaN, and a report with no scored
    frame would read as "nothing unusual"."""
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise WeightsError(
            f"{path}: {len(bad)} tensor{'s' if len(bad) != 1 else ''} hold NaN or infinite values "
            f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); the networks would score nothing. "
            "The file is damaged or came from a diverged training run: use another weights file."
        )


def _number(value, low: float = -math.inf, high: float = math.inf, *, open_low: bool = False) -> bool:
    """A JSON number (not a bool), finite, in [low, high] (or (low, high] with open_low)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return (value > low if open_low else value >= low) and value <= high


def check_calibration(calibration, path: Path) -> None:
    """The calibration metadata has the shape detect, explain and eval read, with finite numbers:
    lambda_s >= 0, false_alarm_rate in (0, 1), and for each score kind g, d, gd a threshold and a
    median. Checked when the file is loaded, not after a scoring pass."""
    if calibration is None:
        return

    def damaged(what: str) -> WeightsError:
        return WeightsError(
            f"{path}: the calibration stored with the weights is damaged ({what}). Use a file written by "
            "`stan train`, or recalibrate on normal footage (stan train NORMAL --init WEIGHTS --pretrain-epochs 0 "
            "--epochs 0 --out NEW.safetensors)."
        )

    if not isinstance(calibration, dict):
        raise damaged(f"a JSON {type(calibration).__name__}, not an object")
    if not _number(calibration.get("lambda_s"), 0.0, 1e6):  # about 0.01 to 1 in practice; far more would overflow scores
        raise damaged(f"lambda_s is {calibration.get('lambda_s')!r}, not a number from 0 to 1e6")
    if not _number(calibration.get("false_alarm_rate"), 0.0, 1.0, open_low=True) or calibration["false_alarm_rate"] == 1.0:
        raise damaged(f"false_alarm_rate is {calibration.get('false_alarm_rate')!r}, not a number in (0, 1)")
    kinds = calibration.get("kinds")
    if not isinstance(kinds, dict):
        raise damaged(f"kinds is {type(kinds).__name__}, not an object with g, d and gd")
    for kind in ("g", "d", "gd"):
        stats = kinds.get(kind)
        if not isinstance(stats, dict):
            raise damaged(f"kinds.{kind} is missing or not an object")
        for key in ("threshold", "median"):  # raw scores are >= 0 and far below 1e9 (detect.MAX_SCORE)
            if not _number(stats.get(key), 0.0, 1e9):
                raise damaged(f"kinds.{kind}.{key} is {stats.get(key)!r}, not a number from 0 to 1e9")
    n = calibration.get("n_windows")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise damaged(f"n_windows is {n!r}, not a count")
    for key in ("clips", "trained_on"):
        if calibration.get(key) is not None and not isinstance(calibration[key], list):
            raise damaged(f"{key} is not a list")


# --- training checkpoints: models, optimisers, RNG state and progress, all in one safetensors file


def _flatten_optimizer(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], str]:
    sd = opt.state_dict()
    tensors = {}
    for index, state in sd["state"].items():
        for name, value in state.items():
            tensors[f"{prefix}.{index}.{name}"] = torch.as_tensor(value)
    return tensors, json.dumps(sd["param_groups"])


def _unflatten_optimizer(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str, groups: str
) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            index, name = key[len(prefix) + 1 :].split(".", 1)
            state.setdefault(int(index), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": json.loads(groups)})


def save_checkpoint(
    path: Path,
    generator: nn.Module,
    discriminator: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    progress: dict,
    config: StanConfig | None = None,
) -> None:
    """Everything a run needs to continue exactly where it stopped; written atomically."""
    tensors = model_tensors(generator, discriminator)
    g_state, g_groups = _flatten_optimizer(opt_g, "opt_g")
    d_state, d_groups = _flatten_optimizer(opt_d, "opt_d")
    tensors.update(g_state)
    tensors.update(d_state)
    tensors["rng.torch"] = torch.get_rng_state()
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "format_version": str(FORMAT_VERSION),
        "opt_g_groups": g_groups,
        "opt_d_groups": d_groups,
        "progress": json.dumps(progress),
    }
    if config is not None:
        metadata["config"] = json.dumps(config.to_dict())
    _atomic_save(tensors, metadata, path)


def load_checkpoint(
    path: Path,
    generator: nn.Module,
    discriminator: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
) -> dict:
    """Restore a checkpoint into the given modules and optimisers; returns its progress dict."""
    tensors, metadata = _read(path, CHECKPOINT_FORMAT)
    _load_strict(generator, tensors, "generator.", path)
    _load_strict(discriminator, tensors, "discriminator.", path)
    try:
        _unflatten_optimizer(opt_g, tensors, "opt_g", metadata["opt_g_groups"])
        _unflatten_optimizer(opt_d, tensors, "opt_d", metadata["opt_d_groups"])
        torch.set_rng_state(tensors["rng.torch"])
        return json.loads(metadata["progress"])
    except (KeyError, ValueError) as err:
        raise WeightsError(f"{path}: checkpoint is incomplete ({err}). Start a new run with --overwrite.") from None


def read_checkpoint_progress(path: Path) -> dict:
    """The progress record alone, from the header (no tensors are read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise WeightsError(f"{path}: not a readable checkpoint ({err}). Start a new run with --overwrite.") from None
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise WeightsError(f"{path}: not a stan checkpoint. Start a new run with --overwrite.")
    try:
        return json.loads(metadata["progress"])
    except (KeyError, ValueError) as err:
        raise WeightsError(f"{path}: checkpoint is incomplete ({err}). Start a new run with --overwrite.") from None
