"""detect's guided-backprop map against the per-window map at the frames, on Ped2 test clips.

    python benchmarks/guided_map.py ../shared/data/ped2/testing --weights weights/stan-ped2.safetensors
    python benchmarks/guided_map.py ../shared/data/ped2/testing --clips 02 04 --json guided.json

The per-window map at the frames (`stan explain`'s up to 0.11.0, and `stan detect`'s in 0.2.0):
the guided gradient of the d score -log D (of D itself before 0.3.0) with respect to the 11 input
frames, |.| summed over them, for every window.
detect's map (inference.GUIDED_LAYER): the same backward pass stopped at the input of the
discriminator's third convolution (56 x 56 at 224, 4-pixel cells), brought to 224 x 224.
Both come from one ScoreStream each over the same frames and weights, so what differs is the cut.
Since 0.12.0 both are guided Grad-CAM (inference.guided_gradcam: the guided part cut there, times
Grad-CAM at the fourth convolution's input, smoothed, square root), the map stan draws.

Printed, over all scored frames of the clips:
  correlation      Pearson correlation of the two maps, per frame (mean, 10th percentile), at
                   224 x 224, at 112 x 112 (what detect stores and draws) and at 28 x 28
                   (8-pixel cells); maps are averaged down to each size
  neighbours       the same correlation between the per-window maps of windows 1 and 2 frames
                   apart: how much of a map a neighbouring window's could stand for
  localisation     hit rate (map maximum inside the anomaly mask) and pixel-level AUC (UCSD
                   40 % rule) of each map, as benchmarks/localisation.py measures them
  time             seconds of each pass (scoring included), and milliseconds per window of the
                   backward pass alone on 8 windows of the first clip, interleaved: autograd
                   (forward and backward, what detect did in 0.2.0), by hand to the frames, and
                   by hand to detect's layer (the drawn maps, Grad-CAM included); and, from one
                   forward pass's activations, the guided part to detect's layer and the
                   Grad-CAM part alone
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stan_cli import metrics
from stan_cli.detect import ScoreStream
from stan_cli.inference import (
    GRADCAM_LAYER, GUIDED_LAYER, StreamScorer, discriminator_activations, gradcam_from_activations, guided_backprop,
    guided_from_activations, resolve_device,
)
from stan_cli.video import list_frames, read_frames
from stan_cli.weights import find_default_weights, load_weights
from stan_cli.windows import to_grey_square, to_tensor

SIDES = (224, 112, 28)
CUTS = {"frames (per window, exact)": 0, f"detect (layer {GUIDED_LAYER} input)": GUIDED_LAYER}


def maps_of(clip: Path, model, device, batch_size: int, layer: int) -> tuple[torch.Tensor, list[int], float]:
    """Every window's guided map cut at `layer`: (windows, S, S) on the CPU, the middle frames, seconds."""
    started = time.perf_counter()
    maps, middles = [], []
    for frames, scores in ScoreStream(clip, model, device, batch_size, guided=True, guided_layer=layer):
        maps.append(scores.guided.cpu())
        middles.extend(frames)
    return torch.cat(maps), middles, time.perf_counter() - started


def per_frame_correlation(a: torch.Tensor, b: torch.Tensor, side: int) -> np.ndarray:
    """Pearson correlation of each pair of maps, both averaged down to side x side: (B,)."""
    a, b = (F.adaptive_avg_pool2d(m[:, None].double(), side).flatten(1) for m in (a, b))  # (B, side * side)
    a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    return ((a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1)).clamp(min=1e-30)).numpy()


def localisation(maps: torch.Tensor, middles: list[int], masks: list[np.ndarray]) -> dict[str, list]:
    """Hit flags of the abnormal frames; critical values and labels of all scored frames."""
    out: dict[str, list] = {"hit": [], "critical": [], "label": []}
    shape = masks[0].shape
    up = F.interpolate(maps[:, None], size=shape, mode="bilinear", align_corners=False)[:, 0].numpy()
    for m, t in zip(up, middles):
        abnormal = bool(masks[t].any())
        out["critical"].append(metrics.pixel_critical_value(m, masks[t], abnormal))
        out["label"].append(abnormal)
        if abnormal:
            out["hit"].append(bool(masks[t].flat[int(np.argmax(m))]))
    return out


def cost_per_window(clip: Path, model, device, repeats: int = 3) -> dict[str, float]:
    """Milliseconds per window of each way to the map, on the clip's first 8 windows, interleaved."""
    _, stream = read_frames(clip)
    grey = np.stack([to_grey_square(f[None], model.config.image_size)[0] for f, _ in zip(stream, range(18))])
    stream.close()
    frames = to_tensor(torch.from_numpy(grey)).to(device)  # (18, 1, S, S)
    windows = frames.unfold(0, 11, 1).permute(0, 4, 1, 2, 3).contiguous()  # (8, 11, 1, S, S)
    scorers = {layer: StreamScorer(model.generator, model.discriminator, guided_layer=layer) for layer in (0, GUIDED_LAYER)}
    for scorer in scorers.values():
        scorer.push(frames)
    convs, size = model.discriminator.convs, tuple(frames.shape[-2:])
    pre = discriminator_activations(model.discriminator, windows, GUIDED_LAYER)
    runs = {
        "autograd, forward + backward": lambda: [guided_backprop(model.discriminator, w) for w in windows.split(2)],
        "by hand, to the frames": lambda: scorers[0].guided(range(8)),
        f"by hand, to layer {GUIDED_LAYER}'s input (detect)": lambda: scorers[GUIDED_LAYER].guided(range(8)),
        "  of which the guided part": lambda: guided_from_activations(convs, pre, size),
        f"  of which Grad-CAM (layer {GRADCAM_LAYER})": lambda: gradcam_from_activations(convs, pre, size),
    }
    seconds = dict.fromkeys(runs, 0.0)
    with torch.no_grad():  # guided_backprop turns autograd on for itself
        for run in runs.values():
            run()  # warm-up
        for _ in range(repeats):
            for name, run in runs.items():
                started = time.perf_counter()
                run()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds[name] += time.perf_counter() - started
    return {name: total / (8 * repeats) * 1e3 for name, total in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("test_dir", type=Path, help="folder with frames/NN and masks/NN")
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--clips", nargs="*", default=None, help="clip names (default: all)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    weights = args.weights or find_default_weights()
    model = load_weights(weights)
    device = resolve_device(args.device)
    model.to(device).eval()
    clips = args.clips or sorted(p.name for p in (args.test_dir / "frames").iterdir() if p.is_dir() and list_frames(p))
    correlation: dict[int, list[np.ndarray]] = {side: [] for side in SIDES}
    neighbours: dict[int, list[np.ndarray]] = {1: [], 2: []}
    found = {name: {"hit": [], "critical": [], "label": []} for name in CUTS}
    seconds = dict.fromkeys(CUTS, 0.0)
    for clip in clips:
        _, mask_frames = read_frames(args.test_dir / "masks" / clip)
        masks = [(f > 127).any(axis=2) for f in mask_frames]
        maps = {}
        for name, layer in CUTS.items():
            maps[name], middles, took = maps_of(args.test_dir / "frames" / clip, model, device, args.batch_size, layer)
            seconds[name] += took
            for key, values in localisation(maps[name], middles, masks).items():
                found[name][key].extend(values)
        exact, cheap = maps.values()
        for side in SIDES:
            correlation[side].append(per_frame_correlation(cheap, exact, side))
        for lag in neighbours:
            neighbours[lag].append(per_frame_correlation(exact[lag:], exact[:-lag], 112))
        print(f"clip {clip}: {len(exact)} windows; correlation at 112 x 112 {np.mean(correlation[112][-1]):.3f}", flush=True)

    figures: dict = {"weights": str(weights), "sha256": model.sha256, "clips": clips, "guided_layer": GUIDED_LAYER}
    print(f"\ndetect's map against the per-window map at the frames, {sum(map(len, correlation[224]))} frames:")
    for side in SIDES:
        r = np.concatenate(correlation[side])
        figures[f"correlation_{side}"] = {"mean": float(r.mean()), "p10": float(np.percentile(r, 10))}
        print(f"  correlation at {side:>3} x {side:<3}  mean {r.mean():.3f}   10th percentile {np.percentile(r, 10):.3f}")
    for lag, values in neighbours.items():
        r = np.concatenate(values)
        figures[f"neighbours_{lag}"] = float(r.mean())
        print(f"  per-window maps {lag} frame{'s' if lag > 1 else ''} apart, at 112 x 112: mean correlation {r.mean():.3f}")
    print(f"\n{'map':<28} {'hit rate':>9} {'pixel AUC (40 % rule)':>22} {'seconds':>8}")
    figures["maps"] = {}
    for name in CUTS:
        t = found[name]
        pix = metrics.pixel_level(np.asarray(t["critical"], float), np.asarray(t["label"], bool))
        hit = float(np.mean(t["hit"])) if t["hit"] else float("nan")
        figures["maps"][name] = {"abnormal_frames": len(t["hit"]), "hit_rate": hit, "pixel_auc": pix["auc"], "seconds": seconds[name]}
        print(f"{name:<28} {hit:>9.1%} {pix['auc']:>22.1%} {seconds[name]:>8.1f}")
    figures["ms_per_window"] = cost_per_window(args.test_dir / "frames" / clips[0], model, device)
    print(f"\nthe backward pass alone, 8 windows of clip {clips[0]}, interleaved:")
    for name, ms in figures["ms_per_window"].items():
        print(f"  {name:<34} {ms:7.1f} ms per window")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
