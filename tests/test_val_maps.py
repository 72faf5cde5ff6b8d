"""benchmarks/val_maps.py: the map validation on local pseudo-anomalies of held-out clips. Its
guided variant `mean/L2/sum` must be exactly the map `stan detect` draws, the hit and lift must
count against the pasted square, and the whole run must go through on tiny weights."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import make_clip, tiny_models, write_video
from stan_cli.inference import GUIDED_LAYER, guided_backprop, guided_from_activations, smooth_guided

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "val_maps.py"


@pytest.fixture(scope="module")
def val_maps():
    spec = importlib.util.spec_from_file_location("val_maps", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_stan_variants_are_the_maps_detect_and_explain_draw(val_maps):
    _, d = tiny_models()
    x = torch.rand(3, 11, 1, 32, 32) * 2 - 1
    pre, h = [], x.transpose(1, 2)
    with torch.no_grad():
        for conv in d.convs[:-1]:
            pre.append(conv(h))
            h = F.elu(pre[-1])
        pre.append(d.convs[-1](h))
    detect_map = smooth_guided(guided_from_activations(d.convs, pre[GUIDED_LAYER:], (32, 32)))
    assert torch.allclose(val_maps.guided_maps(d, x, f"mean/L{GUIDED_LAYER}/sum"), detect_map, rtol=1e-4, atol=1e-9)
    explain_map = smooth_guided(guided_backprop(d, x))
    assert torch.allclose(val_maps.guided_maps(d, x, "mean/L0/sum"), explain_map, rtol=1e-4, atol=1e-9)
    for variant in val_maps.VARIANTS:
        m = val_maps.guided_maps(d, x, variant)
        assert m.shape == (3, 32, 32) and torch.isfinite(m).all() and (m >= 0).all()


def test_guided_gradcam_is_the_map_stan_draws_up_to_scale_and_root(val_maps):
    """The variant chosen on 2026-12-08 (guided*gradcam) is the map detect and explain draw
    (inference.discriminator_map) squared, up to each window's scale: the same maximum."""
    from stan_cli.inference import discriminator_map

    _, d = tiny_models()
    x = torch.rand(3, 11, 1, 32, 32) * 2 - 1
    unit = lambda m: m / m.flatten(1).amax(dim=1)[:, None, None]  # noqa: E731
    chosen = smooth_guided(unit(val_maps.guided_maps(d, x, f"mean/L{GUIDED_LAYER}/sum", smooth=False))
                           * unit(val_maps.verdict_maps(d, x)["gradcam/L3"]))
    drawn = discriminator_map(d, x)
    torch.testing.assert_close(unit(drawn**2), unit(chosen), rtol=1e-4, atol=1e-7)
    assert torch.equal(drawn.flatten(1).argmax(dim=1), chosen.flatten(1).argmax(dim=1))


def test_mid_at_the_cut_is_the_middle_of_its_time_steps(val_maps):
    """At L2 the cut's input has 5 time steps (11 -> 7 -> 5); `mid` keeps the third, whose 7 frames
    centre on the window's middle frame, where `sum` adds all five."""
    from stan_cli.inference import guided_elu
    from stan_cli.model import d_patch_losses

    _, d = tiny_models()
    x = torch.rand(2, 11, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        h = x.transpose(1, 2)
        for conv in d.convs[:GUIDED_LAYER]:
            h = F.elu(conv(h))
    assert h.shape[2] == 5
    h.requires_grad_(True)
    z = h
    for conv in d.convs[GUIDED_LAYER:-1]:
        z = guided_elu(conv(z))
    (grad,) = torch.autograd.grad(d_patch_losses(d.convs[-1](z)[:, 0, 0], real=True).mean(dim=1).sum(), h)
    expected = smooth_guided(F.interpolate(grad[:, :, 2].abs().sum(dim=1)[:, None], size=(32, 32), mode="bilinear",
                                           align_corners=False)[:, 0])
    mid = val_maps.guided_maps(d, x, f"mean/L{GUIDED_LAYER}/mid")
    assert torch.allclose(mid, expected, rtol=1e-4, atol=1e-9)
    assert not torch.allclose(mid, val_maps.guided_maps(d, x, f"mean/L{GUIDED_LAYER}/sum"), rtol=1e-2)


def test_the_targets_differ_and_mid_is_the_middle_frame_s_gradient(val_maps):
    """At 96 x 96 the tiny discriminator has 3 x 3 patches: the most abnormal patch is not their
    mean. `mid` is the guided gradient of the target at the middle frame, computed here with
    autograd through the whole network in the window's own layout (B, 11, 1, S, S)."""
    from stan_cli.inference import guided_elu
    from stan_cli.model import d_patch_losses

    _, d = tiny_models()
    x = torch.rand(2, 11, 1, 96, 96) * 2 - 1
    assert d(x).shape[-2:] == (3, 3)
    mean, top = (val_maps.guided_maps(d, x, f"{t}/L{GUIDED_LAYER}/sum") for t in ("mean", "max"))
    assert not torch.allclose(mean / mean.amax(), top / top.amax(), atol=1e-3)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(d_patch_losses(d(xg, activation=guided_elu), real=True).amax(dim=1).sum(), xg)
    expected = smooth_guided(grad[:, 5, 0].abs())
    assert torch.allclose(val_maps.guided_maps(d, x, "max/L0/mid"), expected, rtol=1e-4, atol=1e-9)


def test_a_hit_is_a_maximum_inside_the_square_and_lift_is_the_square_s_share(val_maps):
    maps = torch.ones(3, 10, 10)
    maps[0, 1, 4] = 11.0  # inside the square at top 1, left 2, side 3 (rows 1-3, columns 2-4)
    maps[1, 4, 1] = 11.0  # the same place with row and column swapped: outside
    maps[2, 8, 8] = 11.0  # far outside
    hits, lifts = val_maps.measures(maps, [(1, 2, 3, 3)] * 3)
    assert hits == [True, False, False]
    mean = (99 + 11) / 100
    assert lifts[0] == pytest.approx((8 + 11) / 9 / mean) and lifts[1] == lifts[2] == pytest.approx(1 / mean)


def test_the_benchmark_runs_on_tiny_weights_and_reads_only_the_held_out_clips(val_maps, tiny_weights, tmp_path, monkeypatch, capsys):
    data = tmp_path / "train"
    data.mkdir()
    for k in range(3):
        write_video(data / f"clip{k}.mp4", make_clip(n=40, seed=k, anomaly=range(0)))
    out = tmp_path / "maps.json"
    monkeypatch.setattr(sys, "argv", ["val_maps.py", str(tiny_weights), "--data", str(data), "--val-clips", "1",
                                      "--every", "3", "--cache", str(tmp_path / "cache"), "--json", str(out)])
    val_maps.main()
    (res,) = json.loads(out.read_text())
    # one held-out clip of 40 frames: 30 windows (middles 5..34), every 3rd -> 10; a fast region
    # needs stride 2 to fit around the middle (10..29): 7 of them; a moving patch fits everywhere (all 3
    # clips would give 3x more)
    assert res["windows"] == {"fast-region": 7, "fast-tube": 10, "patch": 10}
    names = {"pixel_loss", "window_diff", *(f"guided/{v}" for v in val_maps.VARIANTS), "d_patches", "gradcam/L3", "guided*gradcam"}
    for kind in ("fast-region", "fast-tube"):
        assert set(res["maps"][kind]) == names
        for m in res["maps"][kind].values():
            assert 0 <= m["hit_rate"] <= 1 and np.isfinite(m["lift"])
    assert "guided/mean/L2/sum" in capsys.readouterr().out


def test_the_verdict_maps_are_d_s_patch_losses_and_grad_cam_of_the_d_score(val_maps):
    """d_patches: -log D per patch (3 x 3 at 96), brought to the frame; gradcam/L3: the input of D's
    fourth convolution taken with a hook and its gradient from a plain backward pass of the whole
    network (the Grad-CAM formula itself is written here as in the benchmark: this checks the cut
    and the gradient, not the formula)."""
    from stan_cli.model import d_loss_map, d_patch_losses

    _, d = tiny_models()
    x = torch.rand(2, 11, 1, 96, 96) * 2 - 1
    maps = val_maps.verdict_maps(d, x)
    logits = d(x).detach()
    patches = d_patch_losses(logits, real=True).reshape(2, 1, *logits.shape[-2:])
    assert patches.shape[-2:] == (3, 3) and patches.std() > 0
    expected = F.interpolate(patches, size=(96, 96), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(maps["d_patches"], expected, rtol=1e-5)

    seen = {}
    hook = d.convs[val_maps.GRADCAM_LAYER].register_forward_pre_hook(lambda m, args: seen.update(a=args[0]) or None)
    x.requires_grad_(True)
    score = d_loss_map(d(x), real=True).sum()
    hook.remove()
    (grad,) = torch.autograd.grad(score, seen["a"])
    a = seen["a"].detach()
    cam = (grad.mean(dim=(2, 3, 4), keepdim=True) * a).sum(dim=1).clamp(min=0).sum(dim=1)
    expected = F.interpolate(cam[:, None], size=(96, 96), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(maps["gradcam/L3"], expected, rtol=1e-4, atol=1e-9)
    assert (maps["gradcam/L3"] >= 0).all()
