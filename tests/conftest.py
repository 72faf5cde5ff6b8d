"""Shared fixtures: a synthetic clip with a known anomaly, and tiny weights files.

The synthetic clip: a textured grey walkway with two dim "walkers" moving slowly left to right
all the time (normal), and a bright square racing across the frame during ANOMALY frames.
"""

from __future__ import annotations

from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch

from stan_cli import scoring
from stan_cli.model import TINY, Discriminator, Generator
from stan_cli.weights import save_weights

N_FRAMES = 40
HEIGHT, WIDTH = 48, 64
ANOMALY = range(18, 28)  # frames with the bright square
FPS = 10


def make_clip(n: int = N_FRAMES, height: int = HEIGHT, width: int = WIDTH, anomaly=ANOMALY, seed: int = 0) -> np.ndarray:
    """(n, H, W, 3) uint8 RGB frames."""
    rng = np.random.default_rng(seed)
    background = (90 + 10 * rng.standard_normal((height, width))).clip(0, 255)
    frames = np.empty((n, height, width, 3), np.uint8)
    for t in range(n):
        img = background.copy()
        for k, y in enumerate((height // 4, height // 2)):
            x = (t + 17 * k) % (width - 6)
            img[y : y + 6, x : x + 4] = 60
        if t in anomaly:
            x = int((t - anomaly.start) / len(anomaly) * (width - 12))
            img[height - 16 : height - 4, x : x + 12] = 250
        frames[t] = np.repeat(img[..., None], 3, axis=2).astype(np.uint8)
    return frames


def write_video(path: Path, frames: np.ndarray, fps: float = FPS, codec: str = "libx264") -> Path:
    h, w = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(
        str(path), (w, h), fps=fps, codec=codec, macro_block_size=1, quality=None, output_params=["-crf", "12"]
    )
    writer.send(None)
    for f in frames:
        writer.send(np.ascontiguousarray(f))
    writer.close()
    return path


def write_frame_folder(folder: Path, frames: np.ndarray, pattern: str = "{:d}.png") -> Path:
    """Frames as PNG files named 0.png, 1.png, ... 10.png (natural order matters)."""
    folder.mkdir(parents=True, exist_ok=True)
    h, w = frames.shape[1:3]
    for t, f in enumerate(frames):
        writer = imageio_ffmpeg.write_frames(
            str(folder / pattern.format(t)), (w, h), codec="png", pix_fmt_out="rgb24",
            macro_block_size=1, output_params=["-update", "1", "-f", "image2"],
        )
        writer.send(None)
        writer.send(np.ascontiguousarray(f))
        writer.close()
    return folder


def tiny_models(seed: int = 0) -> tuple[Generator, Discriminator]:
    torch.manual_seed(seed)
    return Generator(TINY).eval(), Discriminator(TINY).eval()


@pytest.fixture(scope="session")
def clip_frames() -> np.ndarray:
    return make_clip()


@pytest.fixture(scope="session")
def clip_video(tmp_path_factory, clip_frames) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", clip_frames)


@pytest.fixture(scope="session")
def clip_folder(tmp_path_factory, clip_frames) -> Path:
    return write_frame_folder(tmp_path_factory.mktemp("frames") / "clip", clip_frames)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """Untrained tiny networks, no calibration."""
    g, d = tiny_models()
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_weights(path, g, d, TINY, calibration=None, training={"untrained": True})
    return path


@pytest.fixture(scope="session")
def tiny_weights_calibrated(tmp_path_factory) -> Path:
    """Tiny networks with a calibration whose thresholds are known: pixel 0.05, d 0.7."""
    g, d = tiny_models()
    rng = np.random.default_rng(1)
    calibration = scoring.calibrate(0.04 + 0.01 * rng.random(200), 0.69 + 0.01 * rng.random(200))
    path = tmp_path_factory.mktemp("weights") / "tiny-cal.safetensors"
    save_weights(path, g, d, TINY, calibration=calibration, training={"untrained": True})
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module whose tiny networks only lose time to thread hand-offs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
