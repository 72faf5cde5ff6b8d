"""What `stan eval` reports beside the model: a score without learning, and D on the generated window.

- ``frame_difference``: mean over the pixels of |X_t - mean of its 10 window neighbours| on the
  grey S x S frames the networks see (issue #18's no-learning reference). Grey levels 0-255;
  every metric normalises each clip min-max, so the scale does not change an AUC.
- ``d_generated``: -log D on the window whose middle frame is the generator's (S^_t, what D
  is trained to call fake), mean over the patch map: a variant of the discriminator term.
  It costs one more discriminator forward per window, so only `stan eval` computes it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .detect import per_frame
from .inference import autocast
from .model import CONTEXT, WINDOW, Discriminator, d_loss_map, with_middle
from .video import read_frames
from .windows import to_grey_square

_CHUNK = 64  # frames made grey at a time on the no-network path: bounds memory, not the result


def frame_difference_map(frames: np.ndarray) -> np.ndarray:
    """(n, S, S) consecutive grey frames -> (n - 10, S, S) |X_t - mean of its 10 neighbours|, one
    map per full window they hold (middles 5 .. n-6), float64 in grey levels."""
    f = np.asarray(frames, dtype=np.float64)
    if len(f) < WINDOW:
        return np.zeros((0, *f.shape[1:]))
    # window sums from a running sum: each frame is added once, not once per window it is in;
    # uint8 values summed in float64 are exact, so the result does not depend on the chunking
    c = np.concatenate([np.zeros((1, *f.shape[1:])), np.cumsum(f, axis=0)])
    middle = f[CONTEXT : len(f) - CONTEXT]
    neighbours = (c[WINDOW:] - c[:-WINDOW] - middle) / (WINDOW - 1)
    return np.abs(middle - neighbours)


def frame_difference(frames: np.ndarray) -> np.ndarray:
    """(n, S, S) consecutive grey frames -> (n - 10,) the no-learning score of each full window."""
    return frame_difference_map(frames).mean(axis=(1, 2))


class FrameBuffer:
    """The frames of the windows each pushed chunk completes: the chunk and the 10 frames before
    it, kept across pushes the way `inference.StreamScorer` keeps them, so window k of a push
    here is window k of the scorer's push."""

    def __init__(self) -> None:
        self.frames: np.ndarray | None = None

    def push(self, grey: np.ndarray) -> np.ndarray | None:
        """(n, S, S) next frames -> (m + 10, S, S) frames of the m windows they complete, or None."""
        keep = WINDOW - 1
        self.frames = grey if self.frames is None else np.concatenate([self.frames[-keep:], grey])
        return self.frames if len(self.frames) >= WINDOW else None


def clip_frame_difference(path: Path, image_size: int) -> np.ndarray:
    """The baseline of one clip without any network: (N,) per frame, NaN for the first and last 5.

    The frames go through the networks' own preprocessing (`windows.to_grey_square` at
    image_size), one frame at a time as `detect.ScoreStream` does, so the values are the ones
    `stan eval` reports for weights of that image size."""
    _, stream = read_frames(Path(path))
    buffer, values, chunk, n = FrameBuffer(), [], [], 0
    try:
        for frame in stream:
            chunk.append(to_grey_square(frame[None], image_size)[0])
            n += 1
            if len(chunk) == _CHUNK:
                values.extend(_push(buffer, chunk))
                chunk = []
        values.extend(_push(buffer, chunk))
    finally:
        stream.close()
    return per_frame(n, values)


def _push(buffer: FrameBuffer, chunk: list[np.ndarray]) -> list[float]:
    frames = buffer.push(np.stack(chunk)) if chunk else None
    return [] if frames is None else frame_difference(frames).tolist()


@torch.inference_mode()
def d_generated(discriminator: Discriminator, windows: torch.Tensor, prediction: torch.Tensor,
                precision: str = "fp32") -> torch.Tensor:
    """(B, 11, 1, S, S) real windows in [-1, 1] and (B, 1, S, S) generated middles -> (B,)
    -log D(S^_t), mean over the patch map (the headline's reduction of -log D(S_t))."""
    fake = with_middle(windows, prediction.to(windows.dtype))  # as training builds S^_t
    with autocast(windows.device, precision):
        logits = discriminator(fake)
    return d_loss_map(logits, real=True)


def stream_windows(frames: torch.Tensor) -> torch.Tensor:
    """(m + 10, 1, S, S) consecutive frames -> (m, 11, 1, S, S) their windows (a view)."""
    return frames.unfold(0, WINDOW, 1).permute(0, 4, 1, 2, 3)
