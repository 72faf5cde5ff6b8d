"""uint8 RGB frames -> grey squares -> tensors in [-1, 1]; sliding 11-frame windows, streamed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_clip
from stan_cli.model import CONTEXT, WINDOW
from stan_cli.windows import scored_range, sliding_windows, to_grey_square, to_tensor

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


# --- sliding_windows ------------------------------------------------------------------------


def _indexed_frames(n: int, size: int = 4):
    """Frames whose every pixel equals their index (mod 256)."""
    return [np.full((size, size), t % 256, np.uint8) for t in range(n)]


def test_sliding_windows_25_frames_batch_4():
    batches = list(sliding_windows(_indexed_frames(25), batch_size=4))
    assert [len(m) for m, _ in batches] == [4, 4, 4, 3]
    middles = [m for ms, _ in batches for m in ms]
    assert middles == list(range(5, 20))
    assert middles == list(scored_range(25))
    for ms, windows in batches:
        assert windows.dtype == np.uint8
        assert windows.shape == (len(ms), WINDOW, 4, 4)
        for k, middle in enumerate(ms):
            # frame j of the window is frame middle-5+j, every pixel of it
            expected = np.arange(middle - CONTEXT, middle + CONTEXT + 1, dtype=np.uint8)
            np.testing.assert_array_equal(windows[k], np.broadcast_to(expected[:, None, None], (WINDOW, 4, 4)))


@pytest.mark.parametrize("n, batch", [(11, 1), (11, 4), (15, 5), (16, 5), (30, 7), (100, 32)])
def test_sliding_windows_covers_scored_range_once(n, batch):
    middles = [m for ms, w in sliding_windows(_indexed_frames(n), batch) for m in ms]
    assert middles == list(scored_range(n))


@pytest.mark.parametrize("n", [0, 1, 10])
def test_sliding_windows_too_short_yields_nothing(n):
    assert list(sliding_windows(_indexed_frames(n), 4)) == []


def test_sliding_windows_are_independent_copies():
    frames = _indexed_frames(14)
    (ms, windows), = list(sliding_windows(iter(frames), 4))
    assert ms == [5, 6, 7, 8]
    assert windows.flags["C_CONTIGUOUS"] and windows.flags["WRITEABLE"]
    windows[0, 1] = 99  # frame 1, as seen from window 0 (middle 5)
    assert windows[1, 0, 0, 0] == 1  # frame 1 seen from window 1 (middle 6): not a view of the same memory
    assert frames[1][0, 0] == 1


def test_sliding_windows_is_lazy():
    consumed = 0

    def stream(n=1000):
        nonlocal consumed
        for t in range(n):
            consumed += 1
            yield np.full((2, 2), t % 256, np.uint8)

    batch = 8
    gen = sliding_windows(stream(), batch)
    assert consumed == 0  # nothing read before the first request
    middles, windows = next(gen)
    assert middles == list(range(5, 5 + batch))
    assert consumed <= batch + WINDOW - 1
    # every later full batch reads only the frames it needs: the buffer stays bounded
    total = len(middles)
    for middles, windows in gen:
        total += len(middles)
        if len(middles) == batch:
            assert consumed == middles[-1] + CONTEXT + 1
        assert len(windows) <= batch
    assert total == 1000 - 2 * CONTEXT
    assert consumed == 1000
