"""The shipped Ped2 weights on the bundled example (UCSD Ped2 test clip 02, a cyclist from frame 95).

Slow (about a minute on 2 cores): deselect with `-m 'not slow'`. The ground truth is the
dataset's own label for that clip (UCSDped2.m: frames 95-180, 1-based), copied here because the
dataset does not ship with the repository.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stan_cli.detect import detect
from stan_cli.weights import find_default_weights

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "ped2_test02.mp4"
ABNORMAL = range(94, 180)  # 0-based frames 94..179: the cyclist is in view


@pytest.mark.slow
def test_shipped_weights_flag_the_cyclist_in_the_example():
    weights = find_default_weights()
    assert weights.name == "stan-ped2.safetensors", weights
    result = detect(EXAMPLE, out=None, weights=weights, device="cpu")
    assert result.n_frames == 180 and "calibration" in result.threshold_source

    scored = ~np.isnan(result.score_raw)
    abnormal = np.zeros(result.n_frames, bool)
    abnormal[list(ABNORMAL)] = True
    # A flagged segment covers (nearly) all of the cyclist's scored frames ...
    covered = np.zeros(result.n_frames, bool)
    for seg in result.segments:
        covered[seg.start : seg.end + 1] = True
    share = covered[abnormal & scored].mean()
    assert share >= 0.9, f"segments {result.segments} cover {share:.0%} of the abnormal frames"
    # ... the curve peaks inside the event, and the event scores higher than the normal frames.
    peak = int(np.nanargmax(result.score_raw))
    assert peak in ABNORMAL, peak
    assert np.nanmean(result.score_raw[abnormal]) > np.nanmean(result.score_raw[~abnormal])
