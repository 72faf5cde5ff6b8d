"""The generator's pixel term, and the guards that stop a run whose numbers stop being finite."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import TrainingError


def pixel_term(prediction: torch.Tensor, target: torch.Tensor, norm: str) -> torch.Tensor:
    """The pixel term of L_G per sample, (B,1,H,W) x2 -> (B,): the L2 norm (paper) or the MSE."""
    diff = (prediction.float() - target.float()).flatten(1)
    if norm == "l2":
        return torch.linalg.vector_norm(diff, dim=1)  # subgradient 0 at a perfect prediction
    return diff.pow(2).mean(dim=1)


def check_finite(losses: dict[str, torch.Tensor], where: str, ckpt: Path) -> None:
    for name, value in losses.items():
        if not torch.isfinite(value):
            kept = (
                f"the last good checkpoint ({ckpt}) is kept. Resume with --resume --precision fp32, "
                "or start over (--overwrite) with a lower --lr."
                if ckpt.exists()
                else "no checkpoint had been written yet. Try --precision fp32 or a lower --lr."
            )
            raise TrainingError(f"{name} became {value.item()} at {where}; training stopped and {kept}")


def grad_norm(opt: torch.optim.Optimizer) -> torch.Tensor:
    """Total gradient norm: an inf/NaN gradient must stop the run before Adam spreads it."""
    grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
