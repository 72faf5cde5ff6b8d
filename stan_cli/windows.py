"""uint8 RGB frames -> the networks' input: grey, square, in [-1, 1]; which frames are scored.

Training and detection both go through `to_grey_square` then `to_tensor`, so a model sees
exactly the pixels at detect time that it saw in training (including the uint8 rounding).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .model import CONTEXT

# ITU-R BT.601 luma, the weights ffmpeg and most codecs use for grey.
_LUMA = torch.tensor([0.299, 0.587, 0.114])


def to_grey_square(frames: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB -> (N, size, size) uint8 grey, resized with antialiasing.

    The aspect ratio is not kept: the paper squeezes every frame to 224 x 224, and a fixed
    camera keeps its geometry from training to detection, so the squeeze is consistent.
    """
    x = torch.from_numpy(np.asarray(frames, dtype=np.float32))  # (N, H, W, 3), a writable copy
    grey = (x @ _LUMA)[:, None]  # (N, 1, H, W)
    if grey.shape[-2:] != (size, size):
        grey = F.interpolate(grey, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return grey[:, 0].round_().clamp_(0, 255).to(torch.uint8).numpy()  # (N, size, size)


def to_tensor(grey: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(..., S, S) uint8 -> float32 in [-1, 1] with a channel axis: (..., 1, S, S)."""
    t = torch.as_tensor(grey).float()
    return (t / 127.5 - 1.0).unsqueeze(-3)


def scored_range(n_frames: int) -> range:
    """Frames that have a full 11-frame window: 5 .. n-6 (empty for clips under 11 frames)."""
    return range(CONTEXT, n_frames - CONTEXT)
