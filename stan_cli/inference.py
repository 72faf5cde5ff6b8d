"""Running the networks on batches of windows: device and precision choice, per-window losses.

Shared by training (validation, calibration) and detection, so both measure the same thing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

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
    guided: torch.Tensor | None = None  # (B, S, S) guided-backprop map, when asked for


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


class _GuidedELU(torch.autograd.Function):
    """ELU forward; backward lets only positive gradients through (guided backpropagation).

    Springenberg et al. define guided backprop for ReLU: the gradient passes where the input was
    positive AND the incoming gradient is positive. ELU has no zero region, so the first mask
    becomes ELU's own derivative (1 for x > 0, exp(x) below); the guided part is unchanged:
    grad_in = max(grad_out, 0) * elu'(x).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return F.elu(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        local = torch.where(x > 0, torch.ones_like(x), torch.exp(x.clamp(max=0)))
        return grad.clamp(min=0) * local


def guided_elu(x: torch.Tensor) -> torch.Tensor:
    return _GuidedELU.apply(x)


def guided_backprop(discriminator: Discriminator, windows: torch.Tensor) -> torch.Tensor:
    """Where in the real sequence the discriminator sees abnormality: (B, 11, 1, S, S) -> (B, S, S).

    The target is the discriminator term of the score, -log D(S_t) (mean over the patch map),
    so the map shows what makes the discriminator call the real sequence fake. Its gradient
    with respect to the input, through guided ELUs, is taken in magnitude and summed over the
    11 frames. Runs in fp32 with the discriminator's parameters frozen (no weight gradients).
    """
    was_training = discriminator.training
    discriminator.eval()
    flags = [p.requires_grad for p in discriminator.parameters()]
    discriminator.requires_grad_(False)
    try:
        with torch.enable_grad():
            x = windows.detach().float().requires_grad_(True)
            target = d_loss_map(discriminator(x, activation=guided_elu), real=True).sum()
            (grad,) = torch.autograd.grad(target, x)
    finally:
        for p, flag in zip(discriminator.parameters(), flags):
            p.requires_grad_(flag)
        discriminator.train(was_training)
    return grad.abs().sum(dim=1)[:, 0]  # (B, 11, 1, S, S) -> (B, S, S)
