"""The fast scoring path (ScoreStream -> StreamScorer) against a plain per-window loop.

The reference below scores every window from scratch with the networks' own forward passes,
the way the paper describes it; the fast path shares encoder features, ConvLSTM input
projections and discriminator layers between overlapping windows and must give the same
numbers up to float summation order.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stan_cli.detect import ScoreStream, detect
from stan_cli.inference import StreamScorer, _scores, discriminator_map
from stan_cli.model import CONTEXT, WINDOW, d_loss_map, pixel_loss, split_window
from stan_cli.video import read_frames
from stan_cli.weights import load_weights
from stan_cli.windows import scored_range, to_grey_square, to_tensor

from conftest import make_clip, write_video

N = 36  # 26 windows: a multiple of none of the batch sizes below but 1
RTOL = 1e-5


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("speed") / "clip36.mp4", make_clip(n=N))


@pytest.fixture(scope="module")
def model(tiny_weights):
    return load_weights(tiny_weights).eval()


def reference_windows(video, size: int) -> torch.Tensor:
    """Every window of the clip, each frame preprocessed on its own: (N - 10, 11, 1, S, S)."""
    _, frames = read_frames(video)
    grey = np.stack([to_grey_square(f[None], size)[0] for f in frames])  # (N, S, S)
    x = to_tensor(grey)  # (N, 1, S, S)
    return torch.stack([x[i : i + WINDOW] for i in range(len(x) - WINDOW + 1)])


@torch.no_grad()
def reference_scores(model, windows: torch.Tensor):
    """The plain loop: one window at a time, Generator.forward and Discriminator from scratch."""
    pixel, d, error = [], [], []
    for w in windows:
        neighbours, middle = split_window(w[None])
        prediction = model.generator(neighbours)
        pixel.append(pixel_loss(prediction, middle))
        d.append(d_loss_map(model.discriminator(w[None]), real=True))
        error.append((prediction - middle).pow(2)[:, 0])
    return torch.cat(pixel), torch.cat(d), torch.cat(error)


@torch.no_grad()
def reference_d_max(model, windows: torch.Tensor) -> torch.Tensor:
    """The largest patch's -log D = -log sigmoid(logit), by hand, one window at a time."""
    return torch.stack([-torch.log(torch.sigmoid(model.discriminator(w[None]).double())).max().float() for w in windows])


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=1e-7)


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_score_stream_matches_plain_loop(clip, model, batch_size):
    windows = reference_windows(clip, model.config.image_size)
    pixel, d, error = reference_scores(model, windows)
    stream = ScoreStream(clip, model, "cpu", batch_size=batch_size)
    batches = list(stream)
    middles = [m for ms, _ in batches for m in ms]
    assert middles == list(scored_range(N))
    sizes = [len(ms) for ms, _ in batches]
    assert sizes == [batch_size] * ((N - 10) // batch_size) + ([(N - 10) % batch_size] if (N - 10) % batch_size else [])
    assert stream.n_frames == N
    assert_close(torch.cat([s.pixel for _, s in batches]), pixel)
    assert_close(torch.cat([s.d for _, s in batches]), d)
    assert_close(torch.cat([s.error for _, s in batches]), error)
    assert_close(torch.cat([s.d_max for _, s in batches]), reference_d_max(model, windows))
    assert all(s.guided is None for _, s in batches)


def test_stream_scorer_any_chunking(model):
    """Frames pushed in uneven chunks, the first ones shorter than a window, score the same."""
    torch.manual_seed(0)
    s = model.config.image_size
    frames = torch.rand(29, 1, s, s) * 2 - 1
    windows = torch.stack([frames[i : i + WINDOW] for i in range(29 - WINDOW + 1)])
    pixel, d, _ = reference_scores(model, windows)
    scorer = StreamScorer(model.generator, model.discriminator)
    out, start = [], 0
    for size in (1, 4, 3, 2, 1, 7, 5, 6):
        scores = scorer.push(frames[start : start + size])
        start += size
        assert (scores is None) == (start < WINDOW)
        if scores is not None:
            out.append(scores)
    assert start == 29
    assert_close(torch.cat([o.pixel for o in out]), pixel)
    assert_close(torch.cat([o.d for o in out]), d)
    assert_close(torch.cat([o.d_max for o in out]), reference_d_max(model, windows))


def test_patch_terms_by_hand_on_a_patch_map():
    """d is the mean of the per-patch -log D, d_max the largest: on a 3 x 3 map they differ."""
    logits = torch.tensor([[[2.0, -1.0, 0.0], [0.5, 3.0, -2.0], [1.0, 1.0, 1.0]]]).repeat(2, 1, 1)
    logits[1] = -logits[1]
    frames = torch.zeros(2, 1, 4, 4)
    scores = _scores(frames + 0.5, frames, logits)
    by_hand = [[np.log1p(np.exp(-v)) for v in row] for row in logits.flatten(1).tolist()]  # -log sigmoid(v)
    torch.testing.assert_close(scores.d, torch.tensor([np.mean(b) for b in by_hand], dtype=torch.float32))
    torch.testing.assert_close(scores.d_max, torch.tensor([np.max(b) for b in by_hand], dtype=torch.float32))
    assert (scores.d_max > scores.d).all()
    torch.testing.assert_close(scores.pixel, torch.full((2,), 0.25))


def test_guided_maps_match_the_map_of_each_window(clip, model):
    """The stream's maps, from its shared activations, are the map of each window from scratch
    (explain's), here with the guided part cut at the frames."""
    windows = reference_windows(clip, model.config.image_size)
    expected = discriminator_map(model.discriminator, windows, first=0)
    got = torch.cat([s.guided for _, s in ScoreStream(clip, model, "cpu", batch_size=8, guided=True)])
    assert_close(got, expected)


def test_detect_per_frame_scores_and_unscored_edges(clip, model):
    windows = reference_windows(clip, model.config.image_size)
    pixel, d, _ = reference_scores(model, windows)
    result = detect(clip, weights=model, device="cpu", batch_size=3, write_video=False)
    for values, expected in ((result.pixel_loss, pixel), (result.d_loss, d)):
        assert values.shape == (N,)
        assert np.isnan(values[:CONTEXT]).all() and np.isnan(values[-CONTEXT:]).all()
        np.testing.assert_allclose(values[CONTEXT:-CONTEXT], expected.double().numpy(), rtol=RTOL, atol=1e-7)


def test_bf16_path_is_close(clip, model):
    """bf16 changes the numbers (the benchmark reports by how much); here only that it stays near."""
    windows = reference_windows(clip, model.config.image_size)
    pixel, d, _ = reference_scores(model, windows)
    batches = list(ScoreStream(clip, model, "cpu", batch_size=8, precision="bf16"))
    torch.testing.assert_close(torch.cat([s.pixel for _, s in batches]), pixel, rtol=5e-2, atol=1e-3)
    torch.testing.assert_close(torch.cat([s.d for _, s in batches]), d, rtol=5e-2, atol=1e-3)


def test_batched_preprocessing_is_per_frame_preprocessing():
    frames = make_clip(n=12, height=61, width=97)  # odd sizes: the resize is not a plain subsample
    one_by_one = np.stack([to_grey_square(f[None], 32)[0] for f in frames])
    assert np.array_equal(to_grey_square(frames, 32), one_by_one)
