"""Where each map points, on local pseudo-anomalies of held-out normal clips (no test labels).

    python benchmarks/val_maps.py weights/stan-ped2.safetensors [more weights ...] \
        [--data ../shared/data/ped2/training/frames] [--val-clips 2] [--every 2] [--json maps.json]

The validation measure for maps, as benchmarks/val_motion.py is for scores: every --every-th window
of the last --val-clips clips (`stan train`'s validation clips) gets one local pseudo-anomaly of
each kind of MAP_KINDS (`fast-region`: a square of the window sped up 2-5x in place;
`fast-tube`: a square from another clip and time, sped up, pasted elsewhere; `patch`, since
0.12.0: a square from elsewhere moving 4-12 pixels a frame through the window, whose square is
its place in the middle frame, as a test mask marks a cyclist where he is in the frame scored),
made with a fixed seed, and we know the square. For each map, over those windows:
  hit rate   share of windows whose map maximum falls inside the square
  lift       the map's mean inside the square over its mean in the whole frame (median over the
             windows; 1 = no preference for the square)

Maps, each at the network resolution:
  pixel_loss          the generator's squared error on the middle frame (detect's pixel-loss map)
  window_diff         no model: |X_t - mean of its 10 window neighbours| (stan_cli.baseline)
  guided/...          the discriminator's guided backpropagation, smoothed as detect draws it
                      (inference.smooth_guided), in variants named target/cut/reduction:
                      target     what is backpropagated: `mean` the d score, -log D averaged over
                                 D's patches (what stan draws); `max` the most abnormal patch's
                                 -log D; `top5` the mean of the 5 most abnormal patches
                      cut        where the backward pass stops: `L2` the input of D's third
                                 convolution (detect's overlay, inference.GUIDED_LAYER), `L0` the
                                 frames (explain's panel d)
                      reduction  how |gradient| becomes one map: `sum` over channels and time
                                 steps (stan's), `mid` the middle time step only: the middle
                                 frame at L0; at L2 the step of 5 whose 7 frames centre on it
  d_patches           the discriminator's own verdict per patch: -log D of each of its 7 x 7
                      patches (at 224), brought to the frame (bilinear); no backward pass
  gradcam/L3          Grad-CAM (Selvaraju et al., ICCV 2017) of the d score at the input of D's
                      fourth convolution (28 x 28 at 224): that input's channels weighted by their
                      mean gradient, summed, negative parts cut, summed over time, upsampled
  guided*gradcam      guided/mean/L2/sum times gradcam/L3 (each over its own maximum), smoothed:
                      Grad-CAM's "guided Grad-CAM", the guided map kept where D's verdict is
No test clip or label is read. The rule that uses it is in docs/discriminator.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stan_cli import baseline, pseudo
from stan_cli.dataset import WindowSet, default_cache, load_clips, split_validation
from stan_cli.inference import GUIDED_LAYER, guided_elu, smooth_guided
from stan_cli.model import d_patch_losses, split_window
from stan_cli.weights import load_weights
from stan_cli.windows import to_tensor

SEED = 20261206
STILL_KINDS = ("fast-region", "fast-tube")  # the local kinds measured since 0.5.0, in the order their draws were made
MOVING_KIND = "patch"  # since 0.12.0, drawn from a generator of its own so the still kinds' draws stay as they were
MAP_KINDS = (*STILL_KINDS, MOVING_KIND)
TARGETS = ("mean", "max", "top5")
VARIANTS = tuple(f"{t}/L{GUIDED_LAYER}/sum" for t in TARGETS) + (f"mean/L{GUIDED_LAYER}/mid", "mean/L0/sum", "mean/L0/mid", "max/L0/mid")


def located_windows(clips, every: int) -> list[tuple[str, np.ndarray, pseudo.Box]]:
    """(kind, window (11, S, S) uint8, box) for every `every`-th window and each local kind."""
    rng, moving = np.random.default_rng(SEED), np.random.default_rng(SEED + 1)
    out = []
    for i, (c, t) in enumerate(WindowSet(clips).index):
        if i % every:
            continue
        for kind in STILL_KINDS:
            made = pseudo.make_located(kind, clips, c, t, rng)
            if made is not None:
                out.append((kind, *made))
        out.append((MOVING_KIND, *pseudo.make_moving(clips, c, t, moving)))
    return out


def _target(losses: torch.Tensor, target: str) -> torch.Tensor:
    """(B, patches) -log D -> (B,) the quantity whose gradient is drawn."""
    if target == "mean":
        return losses.mean(dim=1)
    if target == "max":
        return losses.amax(dim=1)
    if target == "top5":
        return losses.topk(min(5, losses.shape[1]), dim=1).values.mean(dim=1)
    raise ValueError(target)


def guided_maps(discriminator, x: torch.Tensor, variant: str, smooth: bool = True) -> torch.Tensor:
    """(B, 11, 1, S, S) windows -> (B, S, S) the variant's guided map, smoothed as detect draws it."""
    target, cut, reduction = variant.split("/")
    first = int(cut[1:])
    size = tuple(x.shape[-2:])
    with torch.no_grad():
        h = x.transpose(1, 2)  # (B, 1, 11, S, S)
        for conv in discriminator.convs[:first]:
            h = F.elu(conv(h))
    with torch.enable_grad():
        h = h.detach().requires_grad_(True)
        z = h
        for conv in discriminator.convs[first:-1]:
            z = guided_elu(conv(z))
        logits = discriminator.convs[-1](z)[:, 0, 0]
        (grad,) = torch.autograd.grad(_target(d_patch_losses(logits, real=True), target).sum(), h)
    if reduction == "sum":
        heat = grad.abs().sum(dim=(1, 2))
    elif reduction == "mid":  # the middle time step of the cut's input: the middle frame at L0, the
        heat = grad[:, :, grad.shape[2] // 2].abs().sum(dim=1)  # steps centred on it further in (T 11, 7, 5)
    else:
        raise ValueError(reduction)
    if heat.shape[-2:] != size:
        heat = F.interpolate(heat[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return smooth_guided(heat) if smooth else heat


GRADCAM_LAYER = 3


def verdict_maps(discriminator, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """(B, 11, 1, S, S) windows -> d_patches and gradcam/L3, each (B, S, S)."""
    size = tuple(x.shape[-2:])
    with torch.no_grad():
        h = x.transpose(1, 2)
        for conv in discriminator.convs[:GRADCAM_LAYER]:
            h = F.elu(conv(h))
    with torch.enable_grad():
        a = h.detach().requires_grad_(True)  # (B, C, T, h, w): the input of convolution GRADCAM_LAYER
        z = a
        for conv in discriminator.convs[GRADCAM_LAYER:-1]:
            z = F.elu(conv(z))
        losses = d_patch_losses(discriminator.convs[-1](z)[:, 0, 0], real=True)  # (B, patches)
        (grad,) = torch.autograd.grad(losses.mean(dim=1).sum(), a)
    side = int(round(losses.shape[1] ** 0.5))
    patches = losses.detach().reshape(-1, 1, side, side)
    cam = (grad.mean(dim=(2, 3, 4), keepdim=True) * a.detach()).sum(dim=1).clamp(min=0).sum(dim=1)  # (B, h, w)
    up = lambda m: F.interpolate(m, size=size, mode="bilinear", align_corners=False)[:, 0]  # noqa: E731
    return {"d_patches": up(patches), "gradcam/L3": up(cam[:, None])}


def _unit(m: torch.Tensor) -> torch.Tensor:
    return m / m.flatten(1).amax(dim=1).clamp(min=1e-30)[:, None, None]


def measures(maps: torch.Tensor, boxes: list[pseudo.Box]) -> tuple[list[bool], list[float]]:
    """Hit flags and lifts of (B, S, S) maps against their boxes."""
    hits, lifts = [], []
    side_px = maps.shape[-1]
    for m, (y, x, height, width) in zip(maps.double(), boxes):
        at = int(m.argmax())
        hits.append(y <= at // side_px < y + height and x <= at % side_px < x + width)
        lifts.append(float(m[y : y + height, x : x + width].mean() / m.mean().clamp(min=1e-30)))
    return hits, lifts


def evaluate(path: Path, data: Path, val_clips: int, every: int, cache: Path, batch_size: int = 8) -> dict:
    stan = load_weights(path)
    stan.generator.eval()
    stan.discriminator.eval()
    clips = load_clips(data, stan.config.image_size, cache)
    _, val = split_validation(clips, val_clips)
    made = located_windows(val, every)
    names = ("pixel_loss", "window_diff", *(f"guided/{v}" for v in VARIANTS), "d_patches", "gradcam/L3", "guided*gradcam")
    found = {kind: {name: ([], []) for name in names} for kind in MAP_KINDS}
    for i in range(0, len(made), batch_size):
        chunk = made[i : i + batch_size]
        kinds = [k for k, _, _ in chunk]
        boxes = [b for _, _, b in chunk]
        raw = np.stack([w for _, w, _ in chunk])
        x = to_tensor(torch.from_numpy(raw))  # (b, 11, 1, S, S) in [-1, 1]
        neighbours, middle = split_window(x)
        with torch.no_grad():
            prediction = stan.generator(neighbours).float()
        maps = {
            "pixel_loss": (prediction - middle)[:, 0] ** 2,
            "window_diff": torch.from_numpy(np.stack([baseline.frame_difference_map(w)[0] for w in raw])),
        }
        unsmoothed = {v: guided_maps(stan.discriminator, x, v, smooth=False) for v in VARIANTS}
        maps.update({f"guided/{v}": smooth_guided(m) for v, m in unsmoothed.items()})
        maps.update(verdict_maps(stan.discriminator, x))
        maps["guided*gradcam"] = smooth_guided(_unit(unsmoothed[f"mean/L{GUIDED_LAYER}/sum"]) * _unit(maps["gradcam/L3"]))
        for name, m in maps.items():
            hits, lifts = measures(m, boxes)
            for kind, hit, lift in zip(kinds, hits, lifts):
                found[kind][name][0].append(hit)
                found[kind][name][1].append(lift)
    return {
        "weights": str(path), "sha256": stan.sha256,
        "windows": {kind: len(found[kind]["pixel_loss"][0]) for kind in MAP_KINDS},
        "maps": {kind: {name: {"hit_rate": float(np.mean(h)), "lift": float(np.median(lf))}
                        for name, (h, lf) in per.items()} for kind, per in found.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", type=Path, nargs="+")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/ped2/training/frames"))
    parser.add_argument("--val-clips", type=int, default=2)
    parser.add_argument("--every", type=int, default=2, help="take every n-th held-out window")
    parser.add_argument("--cache", type=Path, default=None, help="the frame cache (default: one per --data folder under /tmp)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    args.cache = args.cache or default_cache(args.data)
    results = []
    for path in args.weights:
        started = time.perf_counter()
        res = evaluate(path, args.data, args.val_clips, args.every, args.cache)
        res["wall_s"] = round(time.perf_counter() - started, 1)
        results.append(res)
        counts = ", ".join(f"{k} {n}" for k, n in res["windows"].items())
        print(f"\n{path} (sha256 {res['sha256'][:12]}): windows {counts}; {res['wall_s']} s")
        print(f"{'map':<22}" + "".join(f"{k + ' hit':>18}{'lift':>7}" for k in MAP_KINDS))
        for name in res["maps"][MAP_KINDS[0]]:
            row = "".join(f"{res['maps'][k][name]['hit_rate']:>18.1%}{res['maps'][k][name]['lift']:>7.2f}"
                          for k in MAP_KINDS)
            print(f"{name:<22}{row}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
