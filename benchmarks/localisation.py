"""How often each map points at the anomaly, on test clips with pixel masks (Ped2 layout).

    python benchmarks/localisation.py ../shared/data/ped2/testing --weights weights/stan-ped2.safetensors
    python benchmarks/localisation.py ../shared/data/ped2/testing --clips 02 04 --json loc.json

Maps compared, each brought to the mask's resolution (bilinear):
  pixel_loss       the generator's per-pixel squared error (the overlay in `stan detect`)
  guided_backprop  the discriminator's guided-backprop map: by default as `stan detect`'s overlay
                   video draws it (the backward pass cut at the discriminator's layer
                   GUIDED_LAYER, then inference.smooth_guided); --guided-layer 0 gives `stan
                   explain`'s panel d (the backward pass to the frames, smoothed the same way)
  frame_diff       baseline without any model: |X_t - X_{t-1}| of the grey 224 x 224 frames
  window_diff      baseline without any model: |X_t - mean of its 10 window neighbours|, the map
                   whose mean is `stan eval`'s frame-difference row (stan_cli.baseline)
Measures, over the abnormal frames that have mask pixels (labels from the masks):
  hit rate         share of frames whose map maximum falls inside the mask
  pixel AUC        the UCSD pixel-level rule (a frame counts only if >= 40 % of its anomaly
                   pixels exceed the threshold; a normal frame with any pixel above it is a
                   false positive), exact ROC over all scored frames: stan_cli.metrics.pixel_level
No smoothing, no per-clip tuning; unscored edge frames (first/last 5) are left out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stan_cli import baseline, metrics
from stan_cli.detect import ScoreStream
from stan_cli.inference import GUIDED_LAYER, resolve_device
from stan_cli.testset import MASK_LEVEL
from stan_cli.video import list_frames, read_frames
from stan_cli.weights import find_default_weights, load_weights
from stan_cli.windows import scored_range, to_grey_square

MAPS = ("pixel_loss", "guided_backprop", "frame_diff", "window_diff")


def _up(m: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    return F.interpolate(m[None, None].float(), size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()


def clip_measures(frames_dir: Path, masks_dir: Path, model, device, batch_size: int,
                  guided_layer: int = GUIDED_LAYER) -> dict[str, dict[str, list]]:
    """Per map: hit flags (abnormal frames) and critical values + labels (all scored frames)."""
    size = model.config.image_size
    _, masks = read_frames(masks_dir)
    mask_list = [(f > MASK_LEVEL).any(axis=2) for f in masks]
    _, frames = read_frames(frames_dir)
    grey = to_grey_square(np.stack(list(frames)), size).astype(np.float32) / 127.5 - 1  # (N, S, S)
    n = len(grey)
    if len(mask_list) != n:
        raise SystemExit(f"{masks_dir}: {len(mask_list)} masks for {n} frames")
    shape = mask_list[0].shape
    out = {name: {"hit": [], "critical": [], "label": []} for name in MAPS}
    stream = ScoreStream(frames_dir, model, device, batch_size, guided=True, guided_layer=guided_layer)
    for middles, scores in stream:
        for k, t in enumerate(middles):
            mask = mask_list[t]
            abnormal = bool(mask.any())
            maps = {
                "pixel_loss": _up(scores.error[k].cpu(), shape),
                "guided_backprop": _up(scores.guided[k].cpu(), shape),
                "frame_diff": _up(torch.from_numpy(np.abs(grey[t] - grey[t - 1])), shape),
                "window_diff": _up(torch.from_numpy(baseline.frame_difference_map(grey[t - 5 : t + 6])[0]), shape),
            }
            for name, m in maps.items():
                out[name]["critical"].append(metrics.pixel_critical_value(m, mask, abnormal))
                out[name]["label"].append(abnormal)
                if abnormal:
                    out[name]["hit"].append(bool(mask.flat[int(np.argmax(m))]))
    assert stream.n_frames == n and len(out["pixel_loss"]["label"]) == len(scored_range(n))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("test_dir", type=Path, help="folder with frames/NN and masks/NN")
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--clips", nargs="*", default=None, help="clip names (default: all)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--guided-layer", type=int, default=GUIDED_LAYER,
                        help=f"where the guided backward pass stops (default {GUIDED_LAYER}: detect's overlay; 0: explain's map)")
    args = parser.parse_args()

    weights = args.weights or find_default_weights()
    model = load_weights(weights)
    device = resolve_device(args.device)
    model.to(device).eval()
    clips = args.clips or sorted(p.name for p in (args.test_dir / "frames").iterdir() if p.is_dir() and list_frames(p))
    totals = {name: {"hit": [], "critical": [], "label": []} for name in MAPS}
    started = time.perf_counter()
    for clip in clips:
        res = clip_measures(args.test_dir / "frames" / clip, args.test_dir / "masks" / clip, model, device, args.batch_size,
                            args.guided_layer)
        for name in MAPS:
            for key in totals[name]:
                totals[name][key].extend(res[name][key])
        hits = {name: np.mean(res[name]["hit"]) if res[name]["hit"] else float("nan") for name in MAPS}
        print(f"clip {clip}: hit rate " + ", ".join(f"{k} {v:.1%}" for k, v in hits.items()), flush=True)

    figures = {"weights": str(weights), "sha256": model.sha256, "clips": clips, "guided_layer": args.guided_layer, "maps": {}}
    print(f"\n{'map':<16} {'abnormal frames':>15} {'hit rate':>9} {'pixel AUC (40 % rule)':>22} {'pixel EER':>10}")
    for name in MAPS:
        t = totals[name]
        crit, lab = np.asarray(t["critical"], float), np.asarray(t["label"], bool)
        pix = metrics.pixel_level(crit, lab)
        hit = float(np.mean(t["hit"])) if t["hit"] else float("nan")
        figures["maps"][name] = {"abnormal_frames": len(t["hit"]), "hit_rate": hit, "pixel_level": pix}
        print(f"{name:<16} {len(t['hit']):>15} {hit:>9.1%} {pix['auc']:>22.1%} {pix['eer']:>10.1%}")
    figures["wall_s"] = round(time.perf_counter() - started, 1)
    print(f"\n{figures['wall_s']} s; weights {weights} (sha256 {model.sha256[:12]})")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
