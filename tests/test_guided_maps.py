"""detect's and explain's map of the discriminator (guided Grad-CAM): the backward passes by hand
from the scoring pass's own activations.

The references are autograd through the discriminator: with guided ELUs for the guided part
(inference.guided_backprop for the map at the frames; the same graph cut at a layer's input for
detect's coarser map), with plain ELUs for Grad-CAM.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stan_cli.detect import ScoreStream
from stan_cli.inference import (
    GRADCAM_LAYER, GUIDED_CELL, GUIDED_LAYER, StreamScorer, discriminator_map, gradcam_from_activations,
    guided_backprop, guided_elu, guided_from_activations, guided_gradcam, smooth_guided,
)
from stan_cli.model import WINDOW
from stan_cli.weights import load_weights

from conftest import make_clip, write_video

N = 30


@pytest.fixture(scope="module")
def model(tiny_weights):
    return load_weights(tiny_weights).eval()


@pytest.fixture(scope="module")
def frames(model) -> torch.Tensor:
    torch.manual_seed(3)
    return torch.rand(N, 1, model.config.image_size, model.config.image_size) * 2 - 1  # (N, 1, S, S)


def windows_of(frames: torch.Tensor) -> torch.Tensor:
    return frames.unfold(0, WINDOW, 1).permute(0, 4, 1, 2, 3).contiguous()  # (N - 10, 11, 1, S, S)


def pre_activations(discriminator, windows: torch.Tensor, first: int) -> list[torch.Tensor]:
    """Each convolution's output from layer `first` on, by a plain forward pass."""
    pre, x = [], windows.transpose(1, 2)
    with torch.no_grad():
        for i, conv in enumerate(discriminator.convs):
            z = conv(x)
            if i >= first:
                pre.append(z)
            x = F.elu(z)
    return pre


def autograd_map(discriminator, windows: torch.Tensor, layer: int) -> torch.Tensor:
    """|d mean(-log D) / d (input of convs[layer])| through guided ELUs, summed over channels
    and time, brought to the frame size: (B, S, S)."""
    size = windows.shape[-2:]
    with torch.enable_grad():
        x = windows.transpose(1, 2)  # (B, 1, 11, S, S)
        for conv in discriminator.convs[:layer]:
            x = guided_elu(conv(x))
        cut = x.detach().requires_grad_(True)
        y = cut
        for conv in discriminator.convs[layer:-1]:
            y = guided_elu(conv(y))
        target = F.softplus(-discriminator.convs[-1](y)).flatten(1).mean(dim=1).sum()  # the d score
        (grad,) = torch.autograd.grad(target, cut)
    heat = grad.abs().sum(dim=(1, 2))[:, None]  # (B, 1, h, w)
    return F.interpolate(heat, size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def autograd_gradcam(discriminator, windows: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of the d score at the input A of convs[GRADCAM_LAYER], by autograd through plain
    ELUs: relu(sum_c mean(dd/dA_c) A_c), summed over time, brought to the frame size."""
    size = windows.shape[-2:]
    with torch.enable_grad():
        x = windows.transpose(1, 2)
        for conv in discriminator.convs[:GRADCAM_LAYER]:
            x = F.elu(conv(x))
        a = x.detach().requires_grad_(True)
        y = a
        for conv in discriminator.convs[GRADCAM_LAYER:-1]:
            y = F.elu(conv(y))
        target = F.softplus(-discriminator.convs[-1](y)).flatten(1).mean(dim=1).sum()
        (grad,) = torch.autograd.grad(target, a)
    cam = (grad.mean(dim=(2, 3, 4), keepdim=True) * a.detach()).sum(dim=1).clamp(min=0).sum(dim=1)
    return F.interpolate(cam[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def stream_maps(model, frames: torch.Tensor, layer: int, push: int) -> torch.Tensor:
    scorer = StreamScorer(model.generator, model.discriminator, guided_layer=layer)
    maps = []
    for chunk in frames.split(push):
        scores = scorer.push(chunk)
        if scores is not None:
            maps.append(scorer.guided(range(len(scores.pixel))))
    return torch.cat(maps)


@pytest.mark.parametrize("layer", [0, 1, GUIDED_LAYER, 4])
def test_guided_parts_at_each_layer_match_autograd(model, frames, layer):
    windows = windows_of(frames)
    got = guided_from_activations(model.discriminator.convs, pre_activations(model.discriminator, windows, layer),
                                  tuple(windows.shape[-2:]))
    torch.testing.assert_close(got, autograd_map(model.discriminator, windows, layer), rtol=1e-4, atol=1e-9)


def test_layer_zero_is_guided_backprop(model, frames):
    """Cut at the frames, the hand-made guided pass is inference.guided_backprop."""
    windows = windows_of(frames)
    got = guided_from_activations(model.discriminator.convs, pre_activations(model.discriminator, windows, 0),
                                  tuple(windows.shape[-2:]))
    torch.testing.assert_close(got, guided_backprop(model.discriminator, windows), rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("layer", [0, GUIDED_LAYER])
def test_gradcam_matches_autograd_from_any_cut(model, frames, layer):
    windows = windows_of(frames)
    got = gradcam_from_activations(model.discriminator.convs, pre_activations(model.discriminator, windows, layer),
                                   tuple(windows.shape[-2:]))
    expected = autograd_gradcam(model.discriminator, windows)
    assert (got >= 0).all() and got.amax() > 0
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-9)


def test_the_drawn_map_is_the_root_of_the_smoothed_product(model, frames):
    """guided_gradcam = sqrt(smooth_guided(guided x Grad-CAM)); the stream's maps, from its shared
    activations, are that map of each window from scratch (explain's), at any push size."""
    windows = windows_of(frames)
    size = tuple(windows.shape[-2:])
    expected = smooth_guided(autograd_map(model.discriminator, windows, GUIDED_LAYER)
                             * autograd_gradcam(model.discriminator, windows)).clamp(min=0).sqrt()
    got = guided_gradcam(model.discriminator.convs, pre_activations(model.discriminator, windows, GUIDED_LAYER), size)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(discriminator_map(model.discriminator, windows), expected, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(stream_maps(model, frames, GUIDED_LAYER, push=13), expected, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("layer", [GRADCAM_LAYER, 4])
def test_a_cut_past_grad_cam_s_layer_is_refused(model, layer):
    with pytest.raises(ValueError, match="guided_layer"):
        StreamScorer(model.generator, model.discriminator, guided_layer=layer)


@pytest.mark.parametrize("push", [1, 4, 11, N])
def test_any_chunking_gives_the_same_maps(model, frames, push):
    torch.testing.assert_close(stream_maps(model, frames, GUIDED_LAYER, push), stream_maps(model, frames, GUIDED_LAYER, 8))


def test_kept_activations_stay_bounded(model, frames):
    """Only what the last push's windows span is kept, however long the stream."""
    scorer = StreamScorer(model.generator, model.discriminator, guided_layer=GUIDED_LAYER)
    for chunk in frames.split(3):
        scores = scorer.push(chunk)
    kept = [len(pre) for pre in scorer._d_pre[GUIDED_LAYER:]]
    assert kept == [len(scores.pixel) + span - 1 for span in scorer._spans[GUIDED_LAYER:]]
    assert all(pre is None for pre in scorer._d_pre[:GUIDED_LAYER])


def test_score_stream_map_any_batch_size(model, tmp_path):
    video = write_video(tmp_path / "clip.mp4", make_clip(n=25))
    maps = {
        b: torch.cat([s.guided for _, s in ScoreStream(video, model, "cpu", b, guided=True, guided_layer=GUIDED_LAYER)])
        for b in (1, 8)
    }
    assert maps[1].shape == (25 - 10, model.config.image_size, model.config.image_size)
    torch.testing.assert_close(maps[1], maps[8])
    assert np.isfinite(maps[1].numpy()).all() and maps[1].max() > 0


def test_guided_needs_a_layer(model, frames):
    scorer = StreamScorer(model.generator, model.discriminator)
    scorer.push(frames[:12])
    with pytest.raises(ValueError, match="guided_layer"):
        scorer.guided(range(2))


# ------------------------------------------------------------------- the map as stan draws it


def test_smoothing_removes_the_dotted_texture_and_keeps_the_heat_in_place():
    """smooth_guided: every other cell hot (the stride-2 transposes' texture) comes out flat inside
    the frame; a constant map stays what it is; one hot cell keeps the maximum where it was."""
    side = 16 * GUIDED_CELL
    cells = torch.zeros(16, 16)
    cells[::2, ::2] = 1.0
    dotted = cells.repeat_interleave(GUIDED_CELL, 0).repeat_interleave(GUIDED_CELL, 1)[None]
    inner = smooth_guided(dotted)[0, 3 * GUIDED_CELL : -3 * GUIDED_CELL, 3 * GUIDED_CELL : -3 * GUIDED_CELL]
    torch.testing.assert_close(inner, torch.full_like(inner, 0.25))  # the dots' mean, no texture left
    assert dotted[0].std() > 0.4
    flat = torch.full((2, side, side), 3.0)
    torch.testing.assert_close(smooth_guided(flat), flat)
    one = torch.zeros(1, side, side)
    one[0, 5 * GUIDED_CELL : 6 * GUIDED_CELL, 9 * GUIDED_CELL : 10 * GUIDED_CELL] = 1.0
    row, col = divmod(int(smooth_guided(one)[0].argmax()), side)
    assert (row // GUIDED_CELL, col // GUIDED_CELL) == (5, 9)

