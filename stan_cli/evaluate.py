"""`evaluate(...)`: score a labelled test set and measure it the way the field does (STAN.md).

The test folder, its clips (the Ped2 layout, the UCSD download as it comes, or a folder of videos)
and their labels (MATLAB ``.m`` or ``.mat``, JSON, CSV) are read by ``testset.py``. Without
``labels=``, TEST_DIR is searched for ``*.m``, then ``*.mat``, ``labels.json``, ``labels.csv``; the
first found is used.

Each clip is scored once by ``detect.ScoreStream`` (the one scoring loop). Frames without a
full window (5 at each end) are left out of every metric, never given a score. Beside the
networks' terms, each scored window also gets (``baseline.py``, from the same grey frames) the
no-learning frame-difference score, a reference row, and -log D on the window with the
generated middle frame, a variant: both only here, not in ``stan detect``.
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__, baseline, metrics, report, scoring
from .detect import ScoreStream, open_output, per_frame
from .errors import InputError, StanError
from .fileio import is_scratch, shown, staged_folder, written_by_stan
from .inference import PRECISIONS, resolve_device
from .model import WINDOW
from .testset import MASK_LEVEL, MASK_SUFFIX, Clip, clip_ranges, find_clips, find_label_file, label_array, read_labels
from .video import list_frames, packet_extent, probe, read_frames
from .weights import Stan, find_default_weights, load_weights
from .windows import scored_range, to_tensor

Progress = Callable[[str, int, "int | None"], None]
RESULTS_FILES = ("results.json", "roc.png", "per_clip.csv")
SCORES_DIR = "scores"
SCORES_HEADER = "frame,label,pixel_loss,d_loss,pixel_critical,d_loss_patch_max,d_loss_generated,frame_difference"
PER_CLIP_HEADER = "clip,frames,abnormal_frames,auc_g,auc_d,auc_gd,auc_frame_difference"
KIND_NAMES = {"g": "generator", "d": "discriminator", "gd": "generator + discriminator",
              "frame_difference": "no learning"}
LAMBDA_SOURCE = "test set: max pixel term / max -log D term / 10 over all scored test frames (the paper's rule)"

# STAN.md, Tables 2 and 3: the paper's numbers, shown beside ours for the data set being evaluated.
_PAPER_SOURCE = "Lee, Kim, Ro, ICASSP 2018, Table 2 (frame-level AUC) and Table 3 (event level)"
PAPER = {
    "ped1": {"dataset": "UCSD Ped1", "frame_auc": {"g": 0.816, "d": 0.716, "gd": 0.821},
             "event_level": {"correct": 37, "false_alarms": 3, "ground_truth_events": 40, "precision": 0.925},
             "test_set": "all 36 Ped1 test clips; on a part of them the numbers compare only roughly",
             "frame_size": (238, 158)},
    "ped2": {"dataset": "UCSD Ped2", "frame_auc": {"g": 0.959, "d": 0.862, "gd": 0.965},
             "event_level": {"correct": 12, "false_alarms": 0, "ground_truth_events": 12, "precision": 1.0},
             "test_set": "all 12 Ped2 test clips", "frame_size": (360, 240)},
    "avenue": {"dataset": "CUHK Avenue", "frame_auc": {"g": 0.866, "d": 0.818, "gd": 0.872},
               "event_level": None, "test_set": "all 21 Avenue test clips (Table 3 has no Avenue column)",
               "frame_size": (640, 360)},
}
PAPER_CHOICES = ("auto", *PAPER, "none")
PROTOCOL_TEXT = {
    "pooled": "per-clip min-max normalisation, all clips' scored frames pooled into one ROC, no smoothing (the field's standard)",
    "macro": "mean of per-clip AUCs over the clips whose scored frames hold both classes",
}


# ------------------------------------------------------------------------------------------ scoring


@dataclass
class ClipScores:
    clip: Clip
    pixel: np.ndarray  # (N,) NaN where unscored
    d: np.ndarray  # (N,)
    map_max: np.ndarray  # (N,) maximum of the upsampled pixel-loss map; NaN unscored or no masks
    mask_critical: np.ndarray  # (N,) 40 %-coverage critical value inside the mask; NaN when empty
    mask_set: np.ndarray  # (N,) bool: the frame's mask has a pixel set
    d_max: np.ndarray  # (N,) the largest patch's -log D (the patch-max variant)
    d_generated: np.ndarray  # (N,) -log D on the window with the generated middle frame (a variant)
    frame_diff: np.ndarray  # (N,) the no-learning frame-difference score (baseline.py)


class _EvalStream(ScoreStream):
    """ScoreStream that also keeps, in ``buffer.frames``, the grey frames of the windows of the
    batch it yields: the baseline and the generated-window term need the very frames the networks
    saw, and teeing the stream's own chunks spares decoding each clip twice."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.buffer = baseline.FrameBuffer()

    def _grey_chunks(self):
        for grey in super()._grey_chunks():
            self.buffer.push(grey)
            yield grey


def _eval_terms(stream: _EvalStream, scores, model: Stan, device, precision: str) -> tuple[list, list]:
    """One batch's frame-difference scores and -log D(S^_t), from the frames the networks saw."""
    grey = stream.buffer.frames  # (m + 10, S, S) uint8
    if grey is None or len(grey) - (WINDOW - 1) != len(scores.pixel):  # the tee is out of step: never score wrong frames
        raise RuntimeError("evaluate: the frames kept for the baseline are out of step with the scored windows")
    windows = baseline.stream_windows(to_tensor(torch.from_numpy(grey).to(device)))
    d_gen = baseline.d_generated(model.discriminator, windows, scores.prediction, precision)
    return baseline.frame_difference(grey).tolist(), d_gen.cpu().tolist()


class _Masks:
    """A clip's masks, decoded in step with its frames (at most one batch of them is held), and
    each scored frame's pixel-level critical values. The pixel-loss map (S x S) is upsampled
    bilinearly to the mask's size before the UCSD rule is applied."""

    def __init__(self, folder: Path) -> None:
        self.stream = read_frames(folder)[1]
        self.mask_set: list[bool] = []
        self.pending: dict[int, np.ndarray] = {}  # frame index -> (H, W) bool mask, awaiting its scores
        self.map_max: dict[int, float] = {}
        self.critical: dict[int, float] = {}

    def batch(self, middles: list[int], error) -> None:
        while len(self.mask_set) <= middles[-1]:
            frame = next(self.stream, None)
            if frame is None:
                break
            mk = (frame > MASK_LEVEL).any(axis=2)  # (H, W) bool
            if len(self.mask_set) >= middles[0]:
                self.pending[len(self.mask_set)] = mk
            self.mask_set.append(bool(mk.any()))
        if not self.pending:
            return
        h, w = next(iter(self.pending.values())).shape
        up = F.interpolate(error[:, None].float(), size=(h, w), mode="bilinear", align_corners=False)
        up_np = up[:, 0].cpu().numpy()  # (B, H, W): the pixel-loss map at the mask's size
        for k, t in enumerate(middles):
            mk = self.pending.pop(t, None)
            if mk is not None:
                self.map_max[t] = metrics.pixel_critical_value(up_np[k], mk, abnormal=False)
                self.critical[t] = metrics.pixel_critical_value(up_np[k], mk, abnormal=True)

    def finish(self) -> None:
        self.mask_set.extend(bool((f > MASK_LEVEL).any()) for f in self.stream)

    def close(self) -> None:
        self.stream.close()


def score_clip(clip: Clip, model: Stan, device, batch_size: int, precision: str, on_progress: Progress) -> ClipScores:
    """Score one clip with ScoreStream (and the eval-only terms); with masks, each scored frame's
    pixel-level critical values."""
    stream = _EvalStream(clip.path, model, device, batch_size, precision,
                         on_progress=lambda stage, done, total: on_progress(f"frames:{clip.name}", done, total))
    terms: dict[str, list[float]] = {"pixel": [], "d": [], "d_max": [], "frame_diff": [], "d_generated": []}
    masks = _Masks(clip.mask) if clip.mask is not None else None
    try:
        for middles, scores in stream:
            terms["pixel"].extend(scores.pixel.cpu().tolist())
            terms["d"].extend(scores.d.cpu().tolist())
            terms["d_max"].extend(scores.d_max.cpu().tolist())
            diff, d_gen = _eval_terms(stream, scores, model, device, precision)
            terms["frame_diff"].extend(diff)
            terms["d_generated"].extend(d_gen)
            if masks is not None:
                masks.batch(middles, scores.error)
        if masks is not None:
            masks.finish()
    finally:
        stream.close()
        if masks is not None:
            masks.close()
    n = stream.n_frames
    if masks is not None and len(masks.mask_set) != n:
        raise InputError(f"{clip.mask}: {len(masks.mask_set)} mask images for {n} frames in {clip.path}. Each frame needs one mask.")
    dense = {k: per_frame(n, v) for k, v in terms.items()}
    return ClipScores(
        clip, dense["pixel"], dense["d"],
        _dense(n, masks.map_max if masks else {}), _dense(n, masks.critical if masks else {}),
        np.array(masks.mask_set if masks else [], dtype=bool), dense["d_max"], dense["d_generated"], dense["frame_diff"],
    )


def _dense(n: int, values: dict[int, float]) -> np.ndarray:
    out = np.full(n, np.nan)
    for t, v in values.items():
        out[t] = v
    return out


# ------------------------------------------------------------------------------------------ evaluate


def evaluate(
    test_dir: Path,
    *,
    weights: Path | Stan | None = None,
    out: Path | None = None,
    labels: Path | None = None,
    device: str = "auto",
    batch_size: int = 8,
    precision: str = "fp32",
    overwrite: bool = False,
    paper: str = "auto",
    on_progress: Progress = lambda stage, done, total: None,
) -> dict:
    """Score every clip of a labelled test folder and measure it; with ``out``, write
    results.json, roc.png, per_clip.csv and scores/<clip>.csv there. Returns what results.json holds.

    paper: whose numbers of the paper stand beside ours: "ped1", "ped2", "avenue", "none", or
    "auto" (the data set the labels file or the folder is named after; none when neither names one).

    on_progress(stage, done, total): stage "clips" counts finished clips; "frames:<clip>"
    counts decoded frames of the clip being scored.
    """
    t0 = time.perf_counter()
    test_dir = Path(test_dir)
    if batch_size < 1:
        raise StanError("--batch-size must be at least 1.")
    if precision not in PRECISIONS:
        raise StanError(f"--precision {precision}: unknown precision. Use one of {', '.join(PRECISIONS)}.")
    layout, clips = find_clips(test_dir)
    label_file = read_labels(Path(labels) if labels is not None else find_label_file(test_dir))
    ranges = clip_ranges(label_file, clips)
    probed = {clips[0].path: probe(clips[0].path)}  # each clip probed once here, for every check below
    first = probed[clips[0].path]
    paper_numbers, paper_note = paper_for(paper, test_dir, label_file.path, (first.width, first.height))
    notes = [paper_note] if paper_note else []
    for clip, r in zip(clips, ranges):  # fail before hours of scoring, not after
        frames = clip.frames
        if frames is None:
            probed.setdefault(clip.path, probe(clip.path))  # a video that cannot be opened
            # its video packets, by demuxing only (seconds an hour of video): a bound on the frames it
            # decodes to, close enough to refuse a short clip or labels past its end before scoring
            extent = packet_extent(clip.path)
            if extent is None:
                continue
            frames = extent[0]
        if frames < WINDOW:
            raise InputError(f"{shown(clip.path)}: only {frames} frames; STAN needs at least {WINDOW} frames a clip. "
                             "Take the clip and its labels out of the test set, or use a longer clip.")
        label_array(label_file, clip, r, frames)
    with_masks = all(c.mask is not None for c in clips)
    if with_masks:
        skewed = []
        for c in clips:
            if c.frames is not None and len(list_frames(c.mask)) != c.frames:
                raise InputError(f"{c.mask}: {len(list_frames(c.mask))} mask images for {c.frames} frames in {c.path}. Each frame needs one mask.")
            frame = probed[c.path] if c.path in probed else probe(c.path)
            mask = probe(c.mask)
            if abs(mask.width * frame.height - frame.width * mask.height) > 0.02 * frame.width * mask.height:
                skewed.append(f"{c.name} ({mask.width} x {mask.height} masks, {frame.width} x {frame.height} frames)")
        if skewed:  # the maps are stretched to the masks: right for smaller masks of the same picture, not for these
            notes.append(f"masks of another shape than their frames in {len(skewed)} clip(s): {', '.join(skewed[:3])}"
                         f"{', ...' if len(skewed) > 3 else ''}; the pixel level stretches the maps to the masks. "
                         "Check that the masks belong to these clips.")
    else:
        unmasked = [c.name for c in clips if c.mask is None]
        if len(unmasked) < len(clips):
            notes.append(f"no pixel level: no mask folder for {len(unmasked)} of the {len(clips)} clips "
                         f"({', '.join(unmasked[:5])}{', ...' if len(unmasked) > 5 else ''}); the pixel level needs a mask for every clip.")
        clips = [Clip(c.name, c.path, c.frames, None) for c in clips]
    model = weights if isinstance(weights, Stan) else load_weights(Path(weights) if weights else find_default_weights())
    dev = resolve_device(device)
    model.to(dev).eval()
    args = (test_dir, clips, ranges, label_file, layout, with_masks, model, dev, batch_size, precision,
            paper_numbers, notes, on_progress, t0)
    if out is None:
        return _evaluate(None, None, *args)
    out = Path(out)
    # locked for the run; an earlier run's results are replaced only when this one has written all of
    # its own, all together (the scores folder whole, the other files by fileio.staged); a folder made
    # here is removed again on failure
    with (open_output(out, overwrite, inputs=(test_dir,), own=RESULTS_FILES, nested=False),
          staged_folder(out, SCORES_DIR, _is_scores_file, "per-clip scores") as scores_dir,
          report.staged(out, own=RESULTS_FILES)):
        return _evaluate(out, scores_dir, *args)


def _is_scores_file(entry: Path) -> bool:
    """A scores/<clip>.csv an earlier stan eval wrote (its header, the columns every version began
    with), or a temporary an interrupted one left there, which --overwrite may replace."""
    if entry.is_symlink() or not entry.is_file():
        return False
    return (entry.suffix == ".csv" and written_by_stan(entry)) or is_scratch(entry.name, ())


def evaluate_frame_difference(test_dir: Path, *, labels: Path | None = None, image_size: int = 224) -> dict:
    """The no-learning reference alone, no network loaded: what `stan eval` reports as
    ``frame_level.frame_difference`` for weights of this image size (the same preprocessing,
    windows and protocol), at the cost of decoding the frames once."""
    test_dir = Path(test_dir)
    _, clips = find_clips(test_dir)
    label_file = read_labels(Path(labels) if labels is not None else find_label_file(test_dir))
    ranges = clip_ranges(label_file, clips)
    scores = [baseline.clip_frame_difference(c.path, image_size) for c in clips]
    y = [label_array(label_file, c, r, len(s)) for c, r, s in zip(clips, ranges, scores)]
    return {
        "test_dir": str(test_dir), "labels": str(label_file.path), "clips": len(clips),
        "frames": int(sum(len(s) for s in scores)), "abnormal_frames": int(sum(v.sum() for v in y)),
        **_frame_difference(scores, y, [c.name for c in clips], image_size),
    }


_DATASET_NAMES = {"ped1": re.compile(r"(?<![a-z])(?:ucsd[ _-]?)?ped[ _-]?1(?!\d)"),
                  "ped2": re.compile(r"(?<![a-z])(?:ucsd[ _-]?)?ped[ _-]?2(?!\d)"),
                  "avenue": re.compile(r"(?<![a-z])avenue")}


def paper_for(choice: str, test_dir: Path, label_path: Path, frame_size: tuple[int, int] | None = None
              ) -> tuple[dict | None, str | None]:
    """The paper's numbers to show beside ours (a copy of PAPER's entry, with where the choice came
    from) or None, and a note when "auto" found a data set's name but did not take it.

    "auto" takes the data set that the labels file's name, or one of the last three folder names of
    TEST_DIR, names (UCSDped1.m, ped2.mat, .../ped1/testing), when the frames have that data set's
    size (`frame_size`, width x height of the first clip; not checked when None) and the two names
    do not disagree. A camera of one's own gets no column, whatever its folders are called."""
    choice = choice.strip().lower()
    if choice not in PAPER_CHOICES:
        raise StanError(f"--paper {choice}: unknown data set. Use one of {', '.join(PAPER_CHOICES)}.")
    if choice == "none":
        return None, None
    if choice != "auto":
        return _paper(choice, "--paper"), None
    found = {}
    names = [(label_path.stem, "the labels file's name")]
    names += [(part, "the folder name") for part in reversed(Path(test_dir).absolute().parts[-3:])]  # as typed
    for name, where in names:
        key = next((k for k, rx in _DATASET_NAMES.items() if rx.search(name.lower())), None)
        if key is not None:
            found.setdefault(where, (key, name))
    if not found:
        return None, None
    keys = {key for key, _ in found.values()}
    if len(keys) > 1:
        said = " and ".join(f"{where} '{name}' says {PAPER[key]['dataset']}" for where, (key, name) in found.items())
        return None, f"no paper column: {said}. Add --paper to choose one."
    where, (key, name) = next(iter(found.items()))
    size = PAPER[key]["frame_size"]
    if frame_size is not None and tuple(frame_size) != size:
        return None, (f"no paper column: {where} '{name}' says {PAPER[key]['dataset']}, but the frames are "
                      f"{frame_size[0]} x {frame_size[1]}, not its {size[0]} x {size[1]}. Add --paper {key} to show it anyway.")
    return _paper(key, f"{where} '{name}'"), None


def _paper(key: str, chosen: str) -> dict:
    return {**PAPER[key], "source": _PAPER_SOURCE, "chosen_by": chosen,
            "note": f"the paper's own numbers, not ours; comparable only on {PAPER[key]['test_set']}",
            "frame_auc_protocol": "not stated in the paper; pooled is the field's standard"}


def _evaluate(out, scores_dir, test_dir, clips, ranges, label_file, layout, with_masks, model, dev, batch_size,
              precision, paper, notes, on_progress, t0) -> dict:
    scored: list[ClipScores] = []
    on_progress("clips", 0, len(clips))
    for k, clip in enumerate(clips):
        scored.append(score_clip(clip, model, dev, batch_size, precision, on_progress))
        on_progress("clips", k + 1, len(clips))
    scoring_s = time.perf_counter() - t0
    y = [label_array(label_file, s.clip, r, len(s.pixel)) for s, r in zip(scored, ranges)]

    measured, curves = _measure(scored, y, model)
    measured["headline"]["paper"] = paper["frame_auc"]["gd"] if paper else None
    measured["warnings"] = [*notes, *measured["warnings"]]
    n_frames = sum(len(s.pixel) for s in scored)
    results = {
        "stan_version": __version__,
        "test_dir": str(test_dir),
        "layout": layout,
        "labels": {
            "file": str(label_file.path),
            "format": label_file.format,
            "convention": "1-based inclusive ranges per clip, in clip order" if label_file.one_based
            else "0-based inclusive ranges per clip name",
        },
        "masks": (str(test_dir / "masks") if layout != "clip-folders" else str(test_dir / f"<clip>{MASK_SUFFIX}")) if with_masks else None,
        "clips": len(scored),
        "frames": n_frames,
        "scored_frames": int(sum(np.isfinite(s.pixel).sum() for s in scored)),
        "abnormal_frames": int(sum(v.sum() for v in y)),
        "unscored_frames": "the first and last 5 frames of each clip have no full 11-frame window; "
        "they are left out of every metric (their score cells are empty)",
        "weights": {
            "file": model.file,
            "name": model.name,
            "sha256": model.sha256,
            "config": model.config.to_dict(),
            "training": model.training,
            "calibrated": model.calibration is not None,
        },
        "device": str(dev),
        "precision": precision,
        "batch_size": batch_size,
        **measured,
        "paper": paper,
    }
    results["timings"] = {
        "scoring_s": round(scoring_s, 3),
        "frames_per_s": round(n_frames / scoring_s, 3) if scoring_s > 0 else None,
    }
    if out is not None:
        _write_results(out, scores_dir, results, scored, y, curves)
    results["timings"]["wall_s"] = round(time.perf_counter() - t0, 3)
    if out is not None:
        report.write_json(out / "results.json", results)
    return results


def _aucs(per_clip: list[np.ndarray], y: list[np.ndarray], names: list[str]) -> dict:
    pooled = metrics.frame_auc(per_clip, y, "pooled")
    macro = metrics.frame_auc(per_clip, y, "macro")
    s, lab = metrics.pooled(per_clip, y)
    e = metrics.eer(*metrics.roc_curve(s, lab)[:2]) if metrics.has_both_classes(lab) else float("nan")
    return {
        "pooled": {"auc": pooled.auc, "eer": e, "frames": pooled.frames, "clips": pooled.clips},
        "macro": {
            "auc": macro.auc, "frames": macro.frames, "clips": macro.clips,
            "skipped_clips": [names[k] for k in macro.skipped_clips],
            "skipped_reason": "scored frames hold a single class (all normal or all abnormal)",
        },
    }


L2_NORM_TEXT = (
    "Eq. 5 literally: the pixel term as the L2 norm ||G(.) - X_t||_2 = sqrt(N x MSE) over the N pixels the "
    "networks see, not the MSE; lambda_s recomputed from it. Alone it ranks a clip's frames as the MSE does "
    "(same macro AUC for g), but per-clip min-max of a square root is not that of the MSE, and the gd sum changes, "
    "so the pooled AUCs differ"
)


def _l2_norm_variant(pixel, d, y, names, image_size: int) -> dict:
    """g and gd with the paper's L2 norm as the pixel term (the headline uses the MSE; docs/evaluation.md)."""
    norm = [np.sqrt(float(image_size * image_size) * p) for p in pixel]
    lam = scoring.lambda_s(np.concatenate(norm), np.concatenate(d))
    return {
        "g_l2_norm": {"pixel_term": L2_NORM_TEXT, **_aucs(norm, y, names)},
        "gd_l2_norm": {
            "pixel_term": L2_NORM_TEXT, "lambda_s": lam,
            **_aucs([scoring.raw_score(p, q, "gd", lam) for p, q in zip(norm, d)], y, names),
        },
    }


PATCH_MAX_TEXT = (
    "the discriminator term as the largest patch's -log D over its patch map (7 x 7 at 224 x 224) instead of the mean (our headline's "
    "reduction, fixed before any test result); lambda_s recomputed from it. A variant reported beside the headline, "
    "never used to choose weights or the default"
)


def _d_term_variant(suffix: str, text: str, pixel, d_term, y, names) -> dict:
    """d and gd with another discriminator term; lambda_s recomputed from it by the paper's rule."""
    lam = scoring.lambda_s(np.concatenate(pixel), np.concatenate(d_term))
    return {
        f"d_{suffix}": {"d_term": text, **_aucs(d_term, y, names)},
        f"gd_{suffix}": {
            "d_term": text, "lambda_s": lam,
            **_aucs([scoring.raw_score(p, q, "gd", lam) for p, q in zip(pixel, d_term)], y, names),
        },
    }


def _patch_max_variant(pixel, d_max, y, names) -> dict:
    """d and gd with the largest patch's -log D as the discriminator term (the headline uses the mean)."""
    return _d_term_variant("patch_max", PATCH_MAX_TEXT, pixel, d_max, y, names)


GENERATED_TEXT = (
    "the discriminator term as -log D on the window with the generated middle frame (S^_t: the generator's prediction "
    "in place of X_t, the window D is trained to call fake) instead of the real window S_t (Eq. 5), mean over the "
    "patch map; lambda_s recomputed from it. A variant reported beside the headline, never used to choose weights "
    "or the default"
)


def _generated_variant(pixel, d_gen, y, names) -> dict:
    """d and gd with -log D(S^_t) as the discriminator term (the headline uses -log D(S_t))."""
    return _d_term_variant("generated", GENERATED_TEXT, pixel, d_gen, y, names)


FRAME_DIFF_TEXT = (
    "no learning: mean over the pixels of |X_t - mean of the 10 neighbours of its window| on the grey frames the "
    "networks see (image_size x image_size, the same windows), in grey levels; same protocol as g, d and gd. "
    "A reference for what the model adds"
)


def _frame_difference(per_clip: list[np.ndarray], y, names, image_size: int) -> dict:
    """The no-learning reference, measured like every score here."""
    return {"frame_difference": {"score": FRAME_DIFF_TEXT, "image_size": image_size, **_aucs(per_clip, y, names)}}


def _frame_level(scored: list[ClipScores], y, raw: dict, model: Stan) -> dict:
    """Frame-level AUCs of g, d, gd, their variants and the no-learning reference."""
    names = [s.clip.name for s in scored]
    pixel = [s.pixel for s in scored]
    d = [s.d for s in scored]
    frame_level = {kind: _aucs(raw[kind], y, names) for kind in scoring.KINDS}
    frame_level.update(_frame_difference([s.frame_diff for s in scored], y, names, model.config.image_size))
    if model.calibration is not None:
        cal_lam = float(model.calibration["lambda_s"])
        frame_level["gd_calibration_lambda"] = {
            "lambda_s": cal_lam, **_aucs([scoring.raw_score(p, q, "gd", cal_lam) for p, q in zip(pixel, d)], y, names)
        }
    frame_level.update(_l2_norm_variant(pixel, d, y, names, model.config.image_size))
    frame_level.update(_patch_max_variant(pixel, [s.d_max for s in scored], y, names))
    frame_level.update(_generated_variant(pixel, [s.d_generated for s in scored], y, names))
    return frame_level


def _leave_out_non_finite(scored: list[ClipScores]) -> list[str]:
    """A frame with a full window where the networks gave a non-finite pixel loss or -log D (weights
    that overflow, bf16 trouble) is left out of every score, the reference's included, so that g, d,
    gd and frame difference are measured on the same frames; a warning per clip says so."""
    warnings = []
    for s in scored:
        inside = np.zeros(len(s.pixel), dtype=bool)
        inside[scored_range(len(s.pixel))] = True
        bad = inside & ~(np.isfinite(s.pixel) & np.isfinite(s.d))
        if not bad.any():
            continue
        for term in (s.pixel, s.d, s.map_max, s.d_max, s.d_generated, s.frame_diff):
            term[bad] = np.nan
        warnings.append(
            f"{s.clip.name}: {int(bad.sum())} of {int(inside.sum())} windows got a non-finite loss from the networks of "
            "these weights and are left out of every metric; the figures cover fewer frames than the clip has. "
            "Use another weights file (or, after --precision bf16, fp32)."
        )
    return warnings


def _measure(scored: list[ClipScores], y: list[np.ndarray], model: Stan) -> tuple[dict, dict]:
    """Every metric from the per-frame losses and labels; and the pooled ROC inputs per kind."""
    non_finite = _leave_out_non_finite(scored)
    names = [s.clip.name for s in scored]
    pixel = [s.pixel for s in scored]
    d = [s.d for s in scored]
    lam = scoring.lambda_s(np.concatenate(pixel), np.concatenate(d))
    raw = {kind: [scoring.raw_score(p, q, kind, lam) for p, q in zip(pixel, d)] for kind in scoring.KINDS}
    frame_level = _frame_level(scored, y, raw, model)
    cal_lam = float(model.calibration["lambda_s"]) if model.calibration is not None else None
    events = metrics.event_level(raw["gd"], y)
    for det in [*events["detections"], *events["unscored_events"]]:
        det["clip"] = names[det["clip"]]
    per_clip = [
        {"clip": n, "frames": int(len(lab)), "scored_frames": int(np.isfinite(p).sum()), "abnormal_frames": int(lab.sum()),
         **{f"auc_{kind}": metrics.clip_auc(raw[kind][k], lab) for kind in scoring.KINDS},
         "auc_frame_difference": metrics.clip_auc(scored[k].frame_diff, lab)}
        for k, (n, p, lab) in enumerate(zip(names, pixel, y))
    ]
    warnings = non_finite
    _, labels = metrics.pooled(raw["g"], y)
    if not metrics.has_both_classes(labels):
        missing = "normal" if labels.all() else "abnormal"
        warnings.append(
            f"no {missing} frame among the {labels.size} scored frames (the first and last 5 of each clip are never "
            "scored): frame-level AUC and EER are undefined. Check the labels, or add clips with both kinds of frame."
        )
    pixel_level = _pixel_level(scored, y)
    if pixel_level.get("available") and pixel_level["auc"] < 0.5:
        warnings.append(
            f"pixel-level AUC {100 * pixel_level['auc']:.1f} %: under the UCSD rule a normal frame counts as a false positive "
            f"when any one pixel of its map exceeds the threshold, and here a normal frame's map maximum (median "
            f"{pixel_level['median_normal_map_max']:.3g}) lies above an abnormal frame's 40 %-coverage level (median "
            f"{pixel_level['median_abnormal_critical']:.3g}); the raw per-pixel maps do not localise under this rule."
        )
    return {
        "warnings": warnings,
        "lambda_s": lam,
        "lambda_s_source": LAMBDA_SOURCE,
        "lambda_s_calibration": cal_lam,
        "protocols": PROTOCOL_TEXT,
        "headline": {
            "metric": "frame-level AUC, pooled protocol, score gd",
            "auc": frame_level["gd"]["pooled"]["auc"],
        },
        "frame_level": frame_level,
        "event_level": {"score": "gd", **events},
        "pixel_level": pixel_level,
        "per_clip": per_clip,
    }, {**{kind: metrics.pooled(raw[kind], y) for kind in scoring.KINDS},
        "frame_difference": metrics.pooled([s.frame_diff for s in scored], y)}


def _median(x: np.ndarray) -> float | None:
    return float(np.median(x)) if x.size else None


def _critical(s: ClipScores, lab: np.ndarray) -> np.ndarray:
    """Per-frame pixel-level critical value given the frame label (NaN where unscored/no masks)."""
    return np.where(lab, s.mask_critical, s.map_max)


def _pixel_level(scored: list[ClipScores], y: list[np.ndarray]) -> dict:
    rule = (f"UCSD: an abnormal frame is detected at tau when >= {metrics.PIXEL_COVERAGE:.0%} of its mask pixels have "
            "pixel loss > tau; a normal frame with any pixel > tau is a false positive; pixel-loss map upsampled "
            "bilinearly to the mask size")
    if any(s.clip.mask is None for s in scored):
        return {"available": False, "reason": "no masks/<clip>/ folder for every clip", "rule": rule}
    crit = np.concatenate([_critical(s, lab) for s, lab in zip(scored, y)])
    lab = np.concatenate(y)
    scored_mask = np.concatenate([np.isfinite(s.pixel) for s in scored])
    masks = np.concatenate([s.mask_set for s in scored])
    empty_abnormal = int((lab & ~masks & scored_mask).sum())
    r = metrics.pixel_level(crit, lab)
    keep = np.isfinite(crit)
    return {
        "available": True, **r, "rule": rule,
        # what decides the AUC: a normal frame's map maximum against an abnormal frame's 40 % level
        "median_normal_map_max": _median(crit[keep & ~lab]),
        "median_abnormal_critical": _median(crit[keep & lab]),
        "abnormal_frames_with_empty_mask": empty_abnormal,
        "label_mask_disagreements": int((lab != masks).sum()),
    }


# ------------------------------------------------------------------------------------------ writing


def _cell(x: float) -> str:
    return f"{x:.8g}" if np.isfinite(x) else ""


def _write_results(out: Path, scores_dir: Path, results: dict, scored: list[ClipScores], y: list[np.ndarray],
                   curves: dict) -> None:
    """per_clip.csv, scores/<clip>.csv (into `scores_dir`, this run's folder that becomes out/scores)
    and roc.png (results.json is written last, by the caller)."""
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")  # quotes a clip name holding a comma or a quote
    writer.writerow(PER_CLIP_HEADER.split(","))
    for r in results["per_clip"]:
        writer.writerow([r["clip"], r["frames"], r["abnormal_frames"], _cell(r["auc_g"]), _cell(r["auc_d"]), _cell(r["auc_gd"]),
                         _cell(r["auc_frame_difference"])])
    report.atomic_write_bytes(out / "per_clip.csv", table.getvalue().encode())
    scores_dir.mkdir(exist_ok=True)
    with_masks = results["pixel_level"].get("available", False)
    for s, lab in zip(scored, y):
        crit = _critical(s, lab) if with_masks else np.full(len(lab), np.nan)
        lines = [SCORES_HEADER] + [
            f"{t},{int(lab[t])},{_cell(s.pixel[t])},{_cell(s.d[t])},{_cell(crit[t])},{_cell(s.d_max[t])},"
            f"{_cell(s.d_generated[t])},{_cell(s.frame_diff[t])}"
            for t in range(len(lab))
        ]
        report.atomic_write_bytes(scores_dir / f"{s.clip.name}.csv", ("\n".join(lines) + "\n").encode())
    plot_roc(out / "roc.png", curves, results["frame_level"], results["clips"])
    results["files"] = [*RESULTS_FILES, f"{SCORES_DIR}/<clip>.csv"]


def plot_roc(path: Path, curves: dict, frame_level: dict, n_clips: int) -> None:
    """Pooled frame-level ROC curves of g, d, gd and the no-learning reference, with AUC and EER in the legend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="#999999", linestyle=":", linewidth=1.0, label="chance")
    colours = {"g": "#1f5fa8", "d": "#e07b00", "gd": "#c0392b", "frame_difference": "#777777"}
    styles = {"frame_difference": "--"}  # the reference dashed, so the model's curves stand out
    n_frames = 0
    for kind, (s, lab) in curves.items():
        n_frames = s.size
        if not metrics.has_both_classes(lab):
            continue
        fpr, tpr, _ = metrics.roc_curve(s, lab)
        r = frame_level[kind]["pooled"]
        ax.plot(fpr, tpr, color=colours[kind], linewidth=1.6, linestyle=styles.get(kind, "-"),
                label=f"{kind.replace('_', ' ')} ({KIND_NAMES[kind]}): AUC {100 * r['auc']:.1f} %, EER {100 * r['eer']:.1f} %")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.005)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"Frame-level ROC, pooled ({n_frames} scored frames, {n_clips} clips)", fontsize=10, loc="left")
    ax.grid(True, alpha=0.25)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    fig.clear()
    report.atomic_write_bytes(path, buf.getvalue())
