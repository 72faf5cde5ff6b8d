"""Running the networks on batches of windows: device and precision choice, per-window losses.

Shared by training (validation, calibration) and detection, so both measure the same thing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .errors import StanError
from .model import Discriminator, Generator, d_loss_map, split_window

PRECISIONS = ("fp32", "bf16")


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StanError("--device cuda: no CUDA device is available here. Use --device cpu or auto.")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise StanError(f"--device {name}: unknown device. Use auto, cpu or cuda.")
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CPU or CUDA for 'bf16'; nothing for 'fp32'."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise StanError(f"--precision {precision}: unknown precision. Use one of {', '.join(PRECISIONS)}.")


@dataclass
class WindowScores:
    prediction: torch.Tensor  # (B, 1, S, S) generated middle frames, float32
    error: torch.Tensor  # (B, S, S) per-pixel squared error, float32: the pixel-loss map
    pixel: torch.Tensor  # (B,) mean squared error per window: the generator term
    d: torch.Tensor  # (B,) -log D(S_t), mean over the patch map: the discriminator term


@torch.no_grad()
def score_windows(
    generator: Generator,
    discriminator: Discriminator,
    windows: torch.Tensor,
    precision: str = "fp32",
) -> WindowScores:
    """(B, 11, 1, S, S) real windows in [-1, 1] -> both networks' per-window losses."""
    neighbours, middle = split_window(windows)
    with autocast(windows.device, precision):
        prediction = generator(neighbours).float()
        logits = discriminator(windows)
    error = (prediction - middle.float()).pow(2)[:, 0]  # (B, S, S)
    return WindowScores(prediction, error, error.flatten(1).mean(dim=1), d_loss_map(logits, real=True))
