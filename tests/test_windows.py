"""uint8 RGB frames -> grey squares -> tensors in [-1, 1]; sliding 11-frame windows, streamed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_clip
from stan_cli.windows import scored_range, to_grey_square, to_tensor

# --- to_grey_square -------------------------------------------------------------------------


def test_to_grey_square_shape_dtype_range():
    frames = make_clip(n=3)  # (3, 48, 64, 3)
    grey = to_grey_square(frames, 32)
    assert grey.shape == (3, 32, 32)
    assert grey.dtype == np.uint8
    assert grey.min() >= 0 and grey.max() <= 255
    assert grey.std() > 0  # the texture survives


def test_to_grey_square_does_not_modify_input():
    frames = make_clip(n=2)
    before = frames.copy()
    to_grey_square(frames, 32)
    np.testing.assert_array_equal(frames, before)


@pytest.mark.parametrize(
    "rgb, expected",
    [((255, 0, 0), 76), ((0, 255, 0), 150), ((0, 0, 255), 29), ((255, 255, 255), 255), ((0, 0, 0), 0)],
)
def test_grey_uses_bt601_weights(rgb, expected):
    frame = np.empty((1, 8, 8, 3), np.uint8)
    frame[...] = rgb
    grey = to_grey_square(frame, 8)  # no resize: the pure luma conversion
    assert (grey == expected).all(), grey[0, 0, 0]


def test_grey_mixed_colour():
    frame = np.empty((1, 4, 4, 3), np.uint8)
    frame[...] = (100, 50, 200)
    expected = round(0.299 * 100 + 0.587 * 50 + 0.114 * 200)  # 82.15 -> 82
    assert (to_grey_square(frame, 4) == expected).all()


@pytest.mark.parametrize("value", [0, 1, 123, 254, 255])
@pytest.mark.parametrize("hw", [(48, 64), (20, 20), (240, 360)])
def test_resize_of_constant_frame_stays_constant(value, hw):
    frames = np.full((2, *hw, 3), value, np.uint8)
    grey = to_grey_square(frames, 32)
    assert grey.shape == (2, 32, 32)
    assert (grey == value).all()


def test_resize_keeps_coarse_structure():
    frames = np.zeros((1, 64, 64, 3), np.uint8)
    frames[:, :, 32:] = 255  # left half black, right half white
    grey = to_grey_square(frames, 32)[0]
    assert (grey[:, :15] == 0).all() and (grey[:, 17:] == 255).all()


# --- to_tensor ------------------------------------------------------------------------------


def test_to_tensor_maps_to_minus_one_one_and_adds_channel_axis():
    grey = np.array([[[0, 255], [127, 128]]], np.uint8)  # (1, 2, 2)
    t = to_tensor(grey)
    assert t.shape == (1, 1, 2, 2)
    assert t.dtype == torch.float32
    assert t[0, 0, 0, 0].item() == -1.0
    assert t[0, 0, 0, 1].item() == 1.0
    assert t[0, 0, 1, 0].item() == pytest.approx(127 / 127.5 - 1, abs=1e-6)
    assert t[0, 0, 1, 1].item() == pytest.approx(128 / 127.5 - 1, abs=1e-6)


@pytest.mark.parametrize("shape, expected", [((5, 5), (1, 5, 5)), ((3, 5, 5), (3, 1, 5, 5)), ((2, 11, 5, 5), (2, 11, 1, 5, 5))])
def test_to_tensor_channel_axis_before_the_square(shape, expected):
    grey = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    t = to_tensor(grey)
    assert tuple(t.shape) == expected
    assert t.min() >= -1 and t.max() <= 1
    np.testing.assert_allclose(t.squeeze(-3).numpy(), grey / 127.5 - 1, atol=1e-6)


def test_to_tensor_accepts_torch_uint8():
    t = to_tensor(torch.tensor([[0, 255]], dtype=torch.uint8))
    assert t.tolist() == [[[-1.0, 1.0]]]


# --- scored_range ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, expected",
    [(0, []), (5, []), (10, []), (11, [5]), (12, [5, 6]), (20, list(range(5, 15)))],
)
def test_scored_range(n, expected):
    assert list(scored_range(n)) == expected
    assert len(scored_range(n)) == len(expected)


