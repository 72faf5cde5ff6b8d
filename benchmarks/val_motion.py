"""The discriminator on held-out normal clips and on pseudo-anomalies made from them (no test labels).

    python benchmarks/val_motion.py weights/stan-ped2.safetensors [more weights ...] \
        [--data ../shared/data/ped2/training/frames] [--val-clips 2] [--cache DIR]

For each weights file: the d score (-log D, Eq. 5's discriminator term) of every window of the last
--val-clips clips (`stan train`'s validation clips), and of one pseudo-anomaly made from each window
(the kinds in turn, the fixed generator of `stan train`'s validation), with the ranking AUC between
the two, overall and per kind; with --patch-max, the same for the largest patch's -log D (the
patch-max variant of `stan eval`) instead of the mean over D's patches; with --pixel, the same for
the generator term (g: the mean squared error of the generated middle frame) and for its cell-max
variant (the largest mean error in a 7 x 7 grid of cells); with --generated, the same for -log D on
the generated window (each window's middle frame replaced by the generator's prediction from its
neighbours: `stan eval`'s d_generated variant). This is the validation measure of the discriminator phase's ship rule
(docs/discriminator.md), computed the same way for weights trained without pseudo-anomalies.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from stan_cli import pseudo
from stan_cli.dataset import WindowSet, default_cache, load_clips, split_validation
from stan_cli.train import ranking_auc, validate, validate_pseudo
from stan_cli.training.validation import generated_scores, pixel_terms, validation_pseudo_windows
from stan_cli.weights import load_weights

# the combined figure's kinds since 0.5.0: windows take the kinds in turn, so a longer list would
# change every window's pseudo-anomaly and no combined figure would compare with earlier ones
COMBINED = ("skip", "reverse", "repeat", "patch", "fast-region", "fast-tube")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", type=Path, nargs="+")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/ped2/training/frames"))
    parser.add_argument("--val-clips", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=None, help="the frame cache (default: one per --data folder under /tmp)")
    parser.add_argument("--patch-max", action="store_true", help="also the AUCs of the largest patch's -log D")
    parser.add_argument("--pixel", action="store_true", help="also the AUCs of the generator term and its cell max")
    parser.add_argument("--generated", action="store_true", help="also the AUCs of -log D on the window with the generated middle frame")
    parser.add_argument("--pixel-only", action="store_true", help="--pixel without the discriminator's AUCs")
    parser.add_argument("--kinds", default=",".join(COMBINED), help="the kinds of the combined AUC (default: every kind but fast-person)")
    parser.add_argument("--each", default=",".join(pseudo.KINDS), help="the kinds also given alone (default: every kind)")
    args = parser.parse_args()
    args.cache = args.cache or default_cache(args.data)
    args.pixel = args.pixel or args.pixel_only
    device = torch.device("cpu")
    for path in args.weights:
        stan = load_weights(path)
        clips = load_clips(args.data, stan.config.image_size, args.cache)
        _, val = split_validation(clips, args.val_clips)
        combined = pseudo.parse_kinds(args.kinds)
        alone = [(k,) for k in pseudo.parse_kinds(args.each)]
        windows = WindowSet(val)
        normal_windows = [windows[i] for i in range(len(windows))]  # once, for every variant below
        made_windows = {kinds: [w for w, _ in validation_pseudo_windows(val, kinds)] for kinds in (combined, *alone)
                        if args.generated or args.pixel}
        for patch_max in () if args.pixel_only else (False, True) if args.patch_max else (False,):
            _, d = validate(stan.generator, stan.discriminator, val, device, patch_max=patch_max)
            reduction = "largest patch" if patch_max else "mean over patches"
            line = [f"{path} ({reduction}): {len(d)} normal windows, mean d {d.mean():.4f}"]
            for kinds in (combined, *alone):
                fake_loss, score = validate_pseudo(stan.discriminator, val, kinds, device, patch_max=patch_max)
                label = ",".join(kinds) if len(kinds) > 1 else kinds[0]
                line.append(f"{label}: AUC {100 * ranking_auc(d, score):.1f} %, -log(1-D) {fake_loss.mean():.4f}")
            print("; ".join(line), flush=True)
        if args.generated:
            normal = generated_scores(stan.generator, stan.discriminator, normal_windows, device)
            line = [f"{path} (d on the generated window): {len(normal)} normal windows, mean {normal.mean():.4f}"]
            for kinds in (combined, *alone):
                made = generated_scores(stan.generator, stan.discriminator, made_windows[kinds], device)
                label = ",".join(kinds) if len(kinds) > 1 else kinds[0]
                line.append(f"{label}: AUC {100 * ranking_auc(normal, made):.1f} %")
            print("; ".join(line), flush=True)
        if args.pixel:
            normal = pixel_terms(stan.generator, normal_windows, device)  # once, for every kind
            lines = [[f"{path} (generator term, mean)"], [f"{path} (generator term, largest cell)"]]
            for kinds in (combined, *alone):
                made = pixel_terms(stan.generator, made_windows[kinds], device)
                label = ",".join(kinds) if len(kinds) > 1 else kinds[0]
                for line, n, m in zip(lines, normal, made):
                    line.append(f"{label}: AUC {100 * ranking_auc(n, m):.1f} %")
            print("\n".join("; ".join(line) for line in lines), flush=True)


if __name__ == "__main__":
    main()
