"""How the weights' calibrated threshold (what `stan detect` flags by default) behaves on a
labelled test set: the share of normal and of abnormal scored frames it flags.

Frame AUC (`stan eval`) needs no threshold; a user of `stan detect` gets this one. Reads the
per-clip scores `stan eval` wrote (OUT/scores/<clip>.csv: label, pixel_loss, d_loss), so the
networks run once:

    stan eval ../shared/data/ped2/testing --weights weights/stan-ped2.safetensors --out results/
    python benchmarks/calibrated_threshold.py results/ --weights weights/stan-ped2.safetensors
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from stan_cli import scoring
from stan_cli.detect import calibration_label
from stan_cli.weights import load_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a `stan eval --out` folder (its scores/ are read)")
    parser.add_argument("--weights", type=Path, default=Path("weights/stan-ped2.safetensors"))
    parser.add_argument("--score", default="gd", choices=scoring.KINDS)
    args = parser.parse_args()
    cal = load_weights(args.weights).calibration
    if cal is None:
        raise SystemExit(f"{args.weights}: carries no calibration")
    threshold = cal["kinds"][args.score]["threshold"]
    flagged = {0: [0, 0], 1: [0, 0]}  # label -> [flagged, scored]
    files = sorted((args.results / "scores").glob("*.csv"))
    if not files:
        raise SystemExit(f"{args.results / 'scores'}: no per-clip scores; run stan eval --out {args.results} first")
    for path in files:
        with open(path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r["pixel_loss"]]
        pixel = np.array([float(r["pixel_loss"]) for r in rows])
        d = np.array([float(r["d_loss"]) for r in rows])
        raw = scoring.raw_score(pixel, d, args.score, cal["lambda_s"])
        for label in (0, 1):
            mine = np.array([int(r["label"]) == label for r in rows], bool)
            flagged[label][0] += int(scoring.flag(raw[mine], threshold).sum())
            flagged[label][1] += int(mine.sum())
    print(f"threshold ({args.score}) {threshold:.5g}: {calibration_label(cal)}")
    for label, name in ((0, "normal"), (1, "abnormal")):
        hit, total = flagged[label]
        print(f"{name:8s} scored frames flagged: {hit} of {total} ({hit / max(total, 1):.1%})")


if __name__ == "__main__":
    main()
