"""`detect(...)`: score every frame of one video or frame folder and write the report folder.

Two passes over the input, both streaming (memory does not grow with the video's length):
1. decode -> grey 224 -> sliding windows -> both networks -> per-frame losses; for the overlay
   videos, each scored frame's pixel-loss and guided-backprop maps are kept at half resolution
   in temporary files inside the output folder (heatmaps.MapStore, 25 kB per frame);
2. only for the overlay videos: decode again and draw each frame with its maps, its score, the
   flag and the whole clip's curve, which are all known by then.

Every report file is written under a temporary name and all are renamed together when the run
has succeeded (fileio.staged): a failure half-way leaves the output folder as it was.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import __version__, overlay, report, report_html, scoring, segments
from .errors import InputError, OutputError, StanError, WeightsError
from .fileio import LOCK_NAME, FolderLock, is_scratch, is_utf8, remove_quietly, scratch_path, shown, written_by_stan
from .heatmaps import MapReader, MapStore
from .inference import GUIDED_LAYER, MAX_BATCH_SIZE, PRECISIONS, StreamScorer, check_batch_size, resolve_device
from .model import CONTEXT, WINDOW
from .video import OVERLAY_VIDEOS, VideoInfo, VideoWriter, cut_short, frame_times, read_frames
from .weights import Stan, find_default_weights, load_weights
from .windows import scored_range, to_grey_square, to_tensor

SCORE_KINDS = {"g": "generator", "d": "discriminator", "gd": "generator + discriminator"}
MAP_SCALE_FLOOR = 0.1  # |difference| in [-1, 1] units below which a heat map stays cold
REPORT_FILES = ("scores.csv", "segments.csv", "summary.json", "scores.png", "index.html")
OVERLAY_PIXEL, OVERLAY_GUIDED = OVERLAY_VIDEOS
OVERLAYS = (
    (OVERLAY_PIXEL, "pixel", "Generator pixel-loss map (|generated - real|) over the input"),
    (OVERLAY_GUIDED, "guided", "The discriminator's guided Grad-CAM (guided backpropagation kept where its evidence is) over the input"),
)
ALL_FILES = (*REPORT_FILES, *(name for name, _, _ in OVERLAYS))
# what --overwrite may replace: index.csv is a many-input run's index, stale once a single report replaces its index.html
OWN_FILES = (*ALL_FILES, "index.csv")
Progress = Callable[[str, int, int | None], None]
OVERLAY_MAX_SIZE = 1920  # the overlay videos' longer side, at most (--overlay-max-size)
OVERLAY_SIZES = (64, 4096)  # what --overlay-max-size accepts: 4096 is what hardware H.264 decoders play
GUIDED_CHUNK = 8  # windows per guided backward pass: about 10 MB each at 224


@dataclass
class DetectResult:
    info: VideoInfo
    time_s: np.ndarray  # (N,) seconds
    pixel_loss: np.ndarray  # (N,) NaN where unscored
    d_loss: np.ndarray  # (N,) -log D(S_t), NaN where unscored
    score_raw: np.ndarray  # (N,) l_s of the chosen kind
    score: np.ndarray  # (N,) per-clip min-max normalised
    abnormal: np.ndarray  # (N,) bool
    segments: list[scoring.Segment]
    threshold: float
    threshold_source: str
    lambda_s: float
    lambda_source: str
    score_kind: str
    summary: dict
    out: Path | None = None
    files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        return len(self.time_s)


def calibration_label(calibration: dict) -> str:
    """Where a calibrated threshold comes from, in words: the quantile of which windows it is.

    It promises only what was measured, a quantile of the calibration windows, not a false-alarm
    rate on other footage (busier scenes score higher everywhere).
    """
    quantile = f"{100 * (1 - calibration['false_alarm_rate']):.4g}th percentile"
    n, clips = calibration.get("n_windows"), calibration.get("clips") or []
    source = str(calibration.get("source", "validation"))

    def windows(kind: str) -> str:  # "280 held-out normal windows of 2 clips"
        text = f"{n:,} {kind}windows" if n else f"the {kind}windows"
        return text + (f" of {len(clips)} clip{'s' if len(clips) != 1 else ''}" if clips else "")

    if source.startswith("training"):
        return f"calibration on the training footage itself: the {quantile} of its {windows('')} (in-sample, so optimistic)"
    label = f"calibration: the {quantile} of {windows('held-out normal ' if source.startswith('validation') else 'normal ')}"
    fitted = calibration.get("trained_on") or []
    if fitted:
        label += f" ({len(fitted)} of them trained on, so optimistic)" if len(fitted) < len(clips) else " (all trained on, so optimistic)"
    return label


def prepare_output(out: Path, overwrite: bool, inputs: Iterable[Path] = (), own: Iterable[str] = (),
                   nested: bool = True) -> bool:
    """Refuse a file, an input folder, or a folder that already holds files unless overwrite is asked for.

    An input folder (of frames, clips or a test set) is refused even with overwrite: the report
    would mix its files with the user's and break the folder for the next run. Nothing in the
    folder is removed here: each command replaces its own earlier outputs only when its new ones
    are complete (fileio.staged, atomic writes), so a run that fails leaves them. Returns True
    when the folder was created here (the caller removes it again on failure). `own`: the file
    names the command writes (see _check_contents). `open_output` is this and a lock. nested=False
    also refuses a folder inside an input folder (eval's test set, explain's frame folder: the
    results would land among the footage, where the next run reads them as a clip or a frame).
    """
    inputs = tuple(inputs)
    _check_target(out, inputs, nested)
    if out.is_dir():
        _check_contents(out, overwrite, tuple(own))
    return _make_folder(out)


@contextlib.contextmanager
def open_output(out: Path, overwrite: bool, inputs: Iterable[Path] = (), own: Iterable[str] = (),
                nested: bool = True) -> Iterator[bool]:
    """prepare_output, with the folder locked for the block (fileio.FolderLock): a second run into it
    is refused, never mixed with this one. Once the lock is held, --overwrite removes what an
    interrupted run left there (fileio.is_scratch: a live run's files are never touched). On an
    exception a folder made here is removed again. Yields whether the folder was made here."""
    own, inputs = tuple(own), tuple(inputs)
    _check_target(out, inputs, nested)
    if out.is_dir() and not overwrite:  # refused before anything is written into it, even the lock
        _check_contents(out, overwrite, own)
    created = _make_folder(out)
    lock = FolderLock(out)
    try:
        lock.acquire()
        for leftover in _check_contents(out, overwrite, own, locked=True):
            remove_quietly(leftover)
        yield created
    except BaseException:
        lock.release()
        if created:
            remove_if_empty(out)
        raise
    lock.release()


def _check_target(out: Path, inputs: tuple[Path, ...], nested: bool = True) -> None:
    if not is_utf8(out):
        raise OutputError(
            f"{shown(out)}: the name is not valid UTF-8, and the report's JSON and HTML files name their folder. "
            "Choose an --out whose name is UTF-8."
        )
    try:
        if out.exists() and not out.is_dir():
            raise OutputError(f"{out}: is a file, not a folder. Choose a folder name for --out.")
        folder = out.is_dir()
    except OSError as err:  # a name too long, a loop of links
        raise OutputError(f"{shown(out)}: cannot use it as the output folder ({err.strerror or err}). Choose another --out.") from None
    if folder and any(_same_folder(src, out) for src in inputs):
        raise OutputError(f"{out}: is the input folder itself; the report would mix with your files there. Choose another --out.")
    for src in () if nested else inputs:
        if _inside(out, src):
            raise OutputError(f"{out}: is inside the input folder {src}; the results would land among its footage. "
                              "Choose an --out outside it.")


def _same_folder(src: Path, out: Path) -> bool:
    try:
        return Path(src).is_dir() and os.path.samefile(src, out)
    except OSError:  # an input that cannot be looked at: the reader says why
        return False


def _inside(out: Path, src: Path) -> bool:
    """Is `out` (made or not) below the folder `src`, links followed?"""
    try:
        return Path(src).is_dir() and Path(out).resolve().is_relative_to(Path(src).resolve())
    except (OSError, RuntimeError):  # a loop of links: the reader says why
        return False


def _check_contents(out: Path, overwrite: bool, own: tuple[str, ...], locked: bool = False) -> list[Path]:
    """What is in `out` may be written over: without overwrite only an empty folder; with it,
    each file this run would replace (a name in `own`) must be one stan wrote. Returns the
    scratch files an interrupted run left (fileio.is_scratch), which overwrite may remove."""
    holder = None if locked else FolderLock(out).holder()
    if holder is not None:  # a live run's temporaries are not an interrupted run's leftovers
        raise FolderLock(out).refusal(holder)
    try:
        entries = [p for p in out.iterdir() if p.name != LOCK_NAME]
    except OSError as err:
        raise OutputError(f"{out}: cannot list the folder ({err.strerror}). Choose a folder you may read and write.") from None
    leftovers = [p for p in entries if is_scratch(p.name, own) and not p.is_dir()]
    others = [p for p in entries if p not in leftovers]
    if not overwrite:
        if others:
            also = f" (and {_count(leftovers, 'hidden scratch file')} an interrupted stan run left)" if leftovers else ""
            raise OutputError(f"{out}: folder already holds files{also}. Choose an empty or new folder, or add --overwrite.")
        if leftovers:
            raise OutputError(
                f"{out}: folder holds only what an interrupted stan run left behind ({_count(leftovers, 'hidden scratch file')}, "
                f"{_size(leftovers)}), no report. Add --overwrite to remove them and write the report, or choose another folder."
            )
    for name in own:
        path = out / name
        if os.path.lexists(path) and not written_by_stan(path):
            raise OutputError(
                f"{path}: --overwrite would replace this file, but stan did not write it. Move or rename it, "
                "or choose another --out."
            )
    return leftovers


def _count(items: list, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _size(paths: list[Path]) -> str:
    total = 0
    for p in paths:
        try:
            total += p.lstat().st_size
        except OSError:
            pass
    return f"{total / 1e6:.1f} MB" if total >= 1e5 else f"{total / 1e3:.0f} kB"


def _make_folder(out: Path) -> bool:
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{out}: cannot create the folder ({err.strerror}). Choose a writable location.") from None
    if not os.access(out, os.W_OK):
        if created:
            remove_if_empty(out)
        raise OutputError(f"{out}: folder is not writable. Choose a writable location for --out.")
    return created


def remove_if_empty(out: Path) -> None:
    """Undo prepare_output's mkdir after a failure: no empty report folder is left behind."""
    try:
        out.rmdir()
    except OSError:
        pass


THRESHOLD_RULES = ("calibrated", "clip")


MAX_SCORE = 1e9  # no raw score comes near it (see parse_threshold); larger thresholds are mistakes


def parse_threshold(value: float | str | None, rules: tuple[str, ...] = THRESHOLD_RULES) -> float | str | None:
    """--threshold: a finite number or one of `rules` ("calibrated", "clip"); anything else is a user error.

    A command that takes fewer rules (explain has no whole clip for "clip") passes its own, so
    the error suggests only what that command accepts.
    """
    if value is None:
        return value
    text = str(value).strip().lower()
    if text in THRESHOLD_RULES:
        return text
    accepted = ["a raw score such as 0.0015", *(f"'{r}'" for r in rules)]
    words = f"{', '.join(accepted[:-1])} or {accepted[-1]}"
    try:
        number = float(text)
    except ValueError:
        raise StanError(f"--threshold {value}: not a number. Give {words}.") from None
    if not math.isfinite(number):
        raise StanError(f"--threshold {value}: not a finite number. Give {words}.")
    if number < 0:  # every raw score (pixel loss, -log D, their sum) is at least 0
        raise StanError(f"--threshold {value}: raw scores are never negative, so it would flag every frame. Give {words}.")
    if number > MAX_SCORE:  # pixel loss <= 4, -log D about 100 at most, lambda_s <= 1e6: far below
        raise StanError(f"--threshold {value}: above {MAX_SCORE:g}, which no raw score reaches, so it would flag nothing. Give {words}.")
    return number


def detect(
    video: Path,
    *,
    out: Path | None = None,
    weights: Path | Stan | None = None,
    score: str = "gd",
    threshold: float | str | None = None,
    device: str = "auto",
    batch_size: int = 8,
    precision: str = "fp32",
    fps: float | None = None,
    write_video: bool = True,
    overwrite: bool = False,
    merge_gap: int = scoring.DEFAULT_MERGE_GAP,
    min_length: int = scoring.DEFAULT_MIN_LENGTH,
    overlay_max_size: int = OVERLAY_MAX_SIZE,
    clips: bool = True,
    clip_padding: float = segments.CLIP_PADDING_S,
    on_progress: Progress = lambda stage, done, total: None,
) -> DetectResult:
    """Score every frame of `video`; with `out`, write the report folder (see README).

    threshold: a number; "calibrated" or None for the weights' calibration (or the per-clip rule
    when they carry none); "clip" for the per-clip rule, median + 3 x 1.4826 x MAD of the clip.
    overlay_max_size: the overlay videos' and the clips' longer side at most (larger inputs are
    drawn scaled down). clips: each segment's stretch of the input, clip_padding seconds either
    side, as segments/segment_001.mp4, ... (segments.py).
    """
    video = Path(video)
    check_name(video)
    threshold = parse_threshold(threshold)
    check_options(score=score, batch_size=batch_size, precision=precision, fps=fps, merge_gap=merge_gap,
                  min_length=min_length, overlay_max_size=overlay_max_size, clip_padding=clip_padding)
    model = weights if isinstance(weights, Stan) else load_weights(Path(weights) if weights else find_default_weights())
    dev = resolve_device(device)
    check_batch_size(batch_size, model.config, dev)
    model.to(dev).eval()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    stores: dict[str, MapStore] = {}
    clip_folder = None
    with contextlib.ExitStack() as stack:
        if out is not None:
            out = Path(out)
            # locked for the run; nothing is removed up front but an interrupted run's scratch files:
            # an earlier report is replaced only when this run succeeds
            stack.enter_context(open_output(out, overwrite, inputs=(video,), own=OWN_FILES))
            # the clips' folder takes its place after the other files (or goes, when this run writes none)
            clip_folder = stack.enter_context(segments.staged_clips(out))
            # every report file keeps a temporary name until all are written (fileio.staged)
            stack.enter_context(report.staged(out, own=OWN_FILES))
            if write_video:  # scratch files named for this run alone, removed on every way out
                stack.callback(lambda: [store.remove() for store in stores.values()])
                for kind, stem in (("pixel", "pixel_loss_maps"), ("guided", "guided_backprop_maps")):
                    stores[kind] = MapStore(scratch_path(out, stem, ".u8"))
        return _run(video, out, model, dev, fps, score, threshold, batch_size, precision, write_video,
                    merge_gap, min_length, stores, timings, t0, on_progress, overlay_max_size,
                    clip_folder=clip_folder if clips else None, clip_padding=clip_padding)


def _run(video, out, model, dev, fps, score, threshold, batch_size, precision, write_video, merge_gap, min_length,
         stores, timings, t0, on_progress, overlay_max_size=None, clip_folder=None,
         clip_padding=segments.CLIP_PADDING_S) -> DetectResult:
    """detect's work once its output folder is ready: score, decide, write (staged) files."""
    info, pixel, d, complete, damage = _score_pass(video, fps, model, dev, batch_size, precision, stores, on_progress)
    timings["scoring_s"] = time.perf_counter() - t0
    time_s, time_source = frame_times(info, len(pixel), fps)
    result = _decide(info, pixel, d, model, score, threshold, merge_gap, min_length, time_s, time_source)
    _check_scored(video, result, model, precision)
    if not complete:
        result.warnings.append(
            f"{video}: decoded {result.n_frames} of about {info.n_frames} frames; the file looks truncated "
            "or damaged. The frames that could be read were scored; the report is marked incomplete."
        )
        result.summary["complete"] = False
    if damage:
        _warn_damage(video, result, damage)
    result.summary["warnings"] = result.warnings
    result.summary.update(
        weights={"file": model.file, "name": model.name, "sha256": model.sha256, "config": model.config.to_dict()},
        device=str(dev),
        precision=precision,
    )
    if out is None:
        timings["total_s"] = time.perf_counter() - t0
        result.summary["timings"] = {k: round(v, 3) for k, v in timings.items()}
        return result
    result.out = out
    if write_video:
        t1 = time.perf_counter()
        _write_overlays(video, fps, result, stores, out, on_progress, overlay_max_size)
        timings["overlay_s"] = time.perf_counter() - t1
        result.files.extend(name for name, _, _ in OVERLAYS)
    result.summary["clips"] = None
    if clip_folder is not None:
        t1 = time.perf_counter()
        _write_clips(result, clip_folder, time_source, fps, overlay_max_size, clip_padding, on_progress)
        timings["clips_s"] = time.perf_counter() - t1
    timings["total_s"] = time.perf_counter() - t0
    timings["frames_per_s"] = result.n_frames / timings["scoring_s"] if timings["scoring_s"] > 0 else None
    result.summary["timings"] = {k: round(v, 3) if isinstance(v, float) else v for k, v in timings.items()}
    _write_report(out, result)
    return result


def _write_clips(result: DetectResult, folder: Path, time_source: str, fps: float | None, max_side: int | None,
                 padding: float, on_progress: Progress) -> None:
    """Each segment's clip (segments.py), named in summary.json beside its segment."""
    clips = segments.plan(result.segments, result.time_s, padding)
    segments.write(clips, folder, result.info, result.time_s, time_source, fps, max_side, on_progress)
    for clip, entry in zip(clips, result.summary["segments"]):
        entry.update(clip=clip.name, clip_start_s=round(float(result.time_s[clip.first]), 3),
                     clip_end_s=round(float(result.time_s[clip.last]), 3))
    result.summary["clips"] = {"folder": segments.FOLDER, "padding_s": padding, "count": len(clips)}
    result.files.extend(clip.name for clip in clips)


def _warn_damage(video: Path, result: DetectResult, damage: dict) -> None:
    """A video decoded from damaged data: say which frames, in the console, summary.json and
    index.html, and mark the report incomplete (a concealed frame can score as an anomaly)."""
    t = result.time_s
    runs = [(a, b) for a, b in damage["frames"] if a < result.n_frames]
    where = ", ".join(f"{a}-{b} ({t[a]:.1f}-{t[b]:.1f} s)" if a != b else f"{a} ({t[a]:.1f} s)" for a, b in runs[:4])
    where += f" and {len(runs) - 4} more runs" if len(runs) > 4 else ""
    frames = sum(b - a + 1 for a, b in runs)
    said = next((m for m in damage["messages"] if "corrupt" in m), damage["messages"][0] if damage["messages"] else "decoding error")
    plural = "s" if frames != 1 else ""
    which = (f"the decoder patched up {frames} frame{plural}: {where}" if damage["exact"]
             else f"ffmpeg names no frame; the damage lies within frame{plural} {where}")
    result.warnings.append(
        f"{shown(video)}: the file holds damaged data (ffmpeg: \"{said}\", {damage['count']} "
        f"complaint{'s' if damage['count'] != 1 else ''}); {which}. A damaged frame can score high for that alone: "
        "check a segment there against the video. The report is marked incomplete."
    )
    result.summary["decode_errors"] = {
        "errors": damage["count"], "messages": damage["messages"], "exact": damage["exact"],
        "frames": [[a, b] for a, b in runs],
        "time_s": [[round(float(t[a]), 3), round(float(t[b]), 3)] for a, b in runs],
    }
    result.summary["complete"] = False


def _check_scored(video: Path, result: DetectResult, model: Stan, precision: str) -> None:
    """A run that scores no frame is an error, never a clean report ("abnormal frames 0" would read
    as "nothing unusual"); some windows without a finite score are a warning and an incomplete report."""
    windows = result.score_raw[scored_range(result.n_frames)]
    bad = int((~np.isfinite(windows)).sum())
    if bad == 0:
        return
    cause = (f"the networks of {model.file or 'these weights'} give NaN or infinite losses on this input"
             + (" (in bf16: try --precision fp32)" if precision != "fp32" else ""))
    if bad == len(windows):
        raise WeightsError(
            f"{shown(video)}: no frame could be scored: all {len(windows)} windows got a non-finite score; {cause}. "
            "Use another weights file."
        )
    result.warnings.append(
        f"{shown(video)}: {bad} of {len(windows)} windows got a non-finite score and are left unscored; {cause}. "
        "The report is marked incomplete."
    )
    result.summary["complete"] = False


def check_name(path: Path) -> None:
    """Refuse, before any work, an input whose name is not valid UTF-8 (a byte such as 0xff from
    a Latin-1 system): the report's JSON, HTML and plot, and the console, must name it."""
    if not is_utf8(path):
        raise InputError(
            f"{shown(path)}: the name is not valid UTF-8 (\\x.. marks the bytes that are not), and the report must "
            "name its input. Rename it to UTF-8, e.g. convmv -f latin1 -t utf-8 --notest NAME, and run again."
        )


FPS_RANGE = (0.001, 10000.0)  # --fps: a time-lapse of a frame every 1000 s to a high-speed camera
FRAMES_MAX = 10**9  # --merge-gap and --min-length: more frames than any clip holds


def check_options(*, score: str = "gd", batch_size: int = 8, precision: str = "fp32", fps: float | None = None,
                  merge_gap: int = scoring.DEFAULT_MERGE_GAP, min_length: int = scoring.DEFAULT_MIN_LENGTH,
                  threshold: float | str | None = None, overlay_max_size: int = OVERLAY_MAX_SIZE,
                  clip_padding: float = segments.CLIP_PADDING_S, **_others) -> None:
    """Refuse detect's bad options (a StanError naming the option) before anything is read or written:
    each number finite and in its range, each name one of the known ones.

    Takes detect's keyword arguments; those with nothing to check (write_video,
    on_progress, ...) are ignored, so detect_many can check its `detect_kwargs` once, up front.
    Whether memory holds --batch-size is checked once the device is known (inference.check_batch_size).
    """
    if score not in SCORE_KINDS:
        raise StanError(f"--score {score}: unknown. Use g (generator), d (discriminator) or gd (both).")
    check_whole("--batch-size", batch_size, 1, MAX_BATCH_SIZE, "windows per forward pass; 8 to 64 is plenty")
    check_whole("--merge-gap", merge_gap, 0, FRAMES_MAX, "frames")
    check_whole("--min-length", min_length, 1, FRAMES_MAX, "frames")
    check_whole("--overlay-max-size", overlay_max_size, *OVERLAY_SIZES, "pixels on the overlay videos' longer side")
    check_fps(fps)
    low, high = segments.PADDING_RANGE
    if isinstance(clip_padding, bool) or not isinstance(clip_padding, (int, float, np.floating)) or not (
            math.isfinite(clip_padding) and low <= clip_padding <= high):
        raise StanError(f"--clip-padding {clip_padding}: give seconds from {low:g} to {high:g} (input kept before and after each segment's clip).")
    if precision not in PRECISIONS:
        raise StanError(f"--precision {precision}: unknown. Use one of {', '.join(PRECISIONS)}.")
    parse_threshold(threshold)


def check_whole(option: str, value, low: int, high: int, what: str) -> None:
    """A whole number in [low, high], or a StanError naming the option and its range."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise StanError(f"{option} {value}: give a whole number from {low} to {high:,} ({what}).")


def check_fps(fps: float | None) -> None:
    low, high = FPS_RANGE
    if fps is None:
        return
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.floating)) or not math.isfinite(fps) or fps <= 0:
        raise StanError(f"--fps {fps}: must be a positive number of frames per second.")
    if not low <= fps <= high:
        raise StanError(f"--fps {fps}: give a frame rate from {low:g} to {high:g} frames per second.")


class ScoreStream:
    """Decode a video and score it window by window: `for middles, scores in stream: ...`.

    The one scoring loop, shared by `detect`, `evaluate` and anything else that needs the
    per-window losses or maps. After iteration, `n_frames` holds the number of frames decoded.
    Batches hold `batch_size` windows (fewer in the last);
    frames are preprocessed a batch at a time and scored by `inference.StreamScorer`, which computes
    what overlapping windows share once per frame. Memory holds about batch_size + 10 frames.
    guided: also each window's map of the discriminator (scores.guided: inference.guided_gradcam,
    guided backprop times Grad-CAM), its guided part taken back to the input of the discriminator's
    layer `guided_layer`: 0, to the frames; detect's overlay and stan explain stop at
    inference.GUIDED_LAYER.
    """

    def __init__(self, video: Path, model: Stan, device, batch_size: int = 8, precision: str = "fp32",
                 fps: float | None = None, on_progress: Progress = lambda stage, done, total: None,
                 guided: bool = False, guided_layer: int = 0) -> None:
        self.video = Path(video)
        self.guided, self.guided_layer = guided, guided_layer
        check_whole("--batch-size", batch_size, 1, MAX_BATCH_SIZE, "windows per forward pass; 8 to 64 is plenty")
        check_batch_size(batch_size, model.config, torch.device(device))
        self.info, self._frames = read_frames(self.video, fps=fps)
        self.model, self.device, self.batch_size, self.precision = model, torch.device(device), batch_size, precision
        self.on_progress = on_progress
        self.n_frames = 0

    def _grey_chunks(self):
        """Decoded frames -> (n, S, S) uint8 grey, n frames at a time: one batch of windows' worth.

        Each frame is made grey and small as soon as it is decoded, so only one full-size frame
        is alive at a time: a 4K frame is 25 MB as uint8 and 100 MB as float, and a batch of them
        would take gigabytes.
        """
        size = self.model.config.image_size
        chunk: list[np.ndarray] = []
        want = self.batch_size + WINDOW - 1  # the first batch needs its windows' 10 extra frames
        for frame in self._frames:
            chunk.append(to_grey_square(frame[None], size)[0])
            self.n_frames += 1
            if self.n_frames % 16 == 0:
                self.on_progress("score", self.n_frames, self.info.n_frames)
            if len(chunk) == want:
                yield np.stack(chunk)  # (n, S, S)
                chunk, want = [], self.batch_size
        if chunk:
            yield np.stack(chunk)

    def __iter__(self):
        layer = self.guided_layer if self.guided else None
        scorer = StreamScorer(self.model.generator, self.model.discriminator, self.precision, guided_layer=layer)
        first = CONTEXT  # middle frame of the next window
        try:
            for grey in self._grey_chunks():
                # uint8 travels to the device (4x less than float32); the same arithmetic runs there
                scores = scorer.push(to_tensor(torch.from_numpy(grey).to(self.device)))  # (n, 1, S, S)
                if scores is None:
                    continue
                count = len(scores.pixel)
                if self.guided:  # a chunk of windows per backward pass bounds its memory at any --batch-size
                    chunks = [range(i, min(i + GUIDED_CHUNK, count)) for i in range(0, count, GUIDED_CHUNK)]
                    scores.guided = torch.cat([scorer.guided(chunk) for chunk in chunks])
                yield list(range(first, first + count)), scores
                first += count
        finally:
            self._frames.close()
        self.on_progress("score", self.n_frames, self.n_frames)
        if self.n_frames < WINDOW:
            if not self.complete:  # cut short: a longer clip is not the advice (explain says the same)
                raise InputError(f"{cut_short(self.video, self.n_frames, self.info.n_frames)}, and STAN needs at least "
                                 f"{WINDOW}. Use an undamaged copy of the file.")
            raise InputError(
                f"{self.video}: only {self.n_frames} frame{'s' if self.n_frames != 1 else ''}; STAN needs at "
                f"least {WINDOW} (one window of 5 frames either side). Use a longer clip."
            )

    @property
    def complete(self) -> bool:
        """False when a video decoded well short of the frame count its header implies."""
        return self._frames.complete

    @property
    def decode_errors(self) -> dict | None:
        """The frames of a video that ffmpeg decoded from damaged data (video.FrameStream.decode_errors)."""
        return self._frames.decode_errors

    def close(self) -> None:
        self._frames.close()


def per_frame(n: int, values: list[float]) -> np.ndarray:
    """Per-window values -> one value per frame, NaN for the unscored first and last 5."""
    full = np.full(n, np.nan)
    full[np.array(scored_range(n), dtype=int)] = values
    return full


def _score_pass(video, fps, model: Stan, dev, batch_size, precision, stores: dict[str, MapStore], on_progress):
    """Decode and score; returns info, pixel and d arrays (NaN where unscored); fills the map stores."""
    stream = ScoreStream(video, model, dev, batch_size, precision, fps, on_progress, guided="guided" in stores,
                         guided_layer=GUIDED_LAYER)
    pixel: list[float] = []
    d: list[float] = []
    try:
        for _, scores in stream:
            pixel.extend(scores.pixel.cpu().tolist())
            d.extend(scores.d.cpu().tolist())
            if "pixel" in stores:
                stores["pixel"].append(scores.error.sqrt())  # |generated - real| per pixel
            if "guided" in stores:
                stores["guided"].append(scores.guided)
    finally:
        stream.close()
    n = stream.n_frames
    return stream.info, per_frame(n, pixel), per_frame(n, d), stream.complete, stream.decode_errors


def _duration(time_s: np.ndarray, fps: float) -> float:
    """Seconds the clip covers: the last frame's time plus its own period (n / fps at a constant rate)."""
    if time_s.size == 0:
        return 0.0
    period = float(time_s[-1] - time_s[-2]) if time_s.size > 1 else 1.0 / fps
    return float(time_s[-1]) + period


def overlay_rate(time_s: np.ndarray, fps: float) -> float:
    """The overlay videos' (constant) frame rate: the input's, or for variable-rate footage whose
    frames average a rate more than 2 % away from the container's nominal one, that average, so
    that an overlay lasts as long as its footage (its frames evenly spaced over it)."""
    span = _duration(np.asarray(time_s, dtype=np.float64), fps)
    average = len(time_s) / span if len(time_s) > 1 and span > 0 else fps
    return average if abs(average - fps) > 0.02 * fps else fps


def _threshold(raw: np.ndarray, threshold, calibration: dict | None, kind: str) -> tuple[float, str, bool]:
    """The threshold, where it comes from, and whether it is the weights' calibration."""
    if threshold == "clip":
        return scoring.fallback_threshold(raw), "--threshold clip: median + 3 x 1.4826 x MAD of this clip", False
    if threshold not in (None, "calibrated"):
        return float(threshold), "--threshold", False
    if calibration is not None:
        return float(calibration["kinds"][kind]["threshold"]), calibration_label(calibration), True
    return scoring.fallback_threshold(raw), "fallback: median + 3 x 1.4826 x MAD of this clip (weights carry no calibration)", False


def _score_warnings(info, raw: np.ndarray, thr: float, model: Stan, kind: str, calibrated: bool) -> list[str]:
    """What the scores say about the run: placeholder weights, a calibration that does not transfer."""
    calibration = model.calibration
    warnings = []
    if model.training.get("untrained"):
        warnings.append(
            f"{model.file or 'weights'}: untrained placeholder weights (seeded random networks): the scores say nothing "
            "about this footage. Pass --weights with a file stan train wrote, or restore weights/stan-ped2.safetensors."
        )
    if not np.isfinite(thr):  # the clip's own rule on a curve without spread (a still scene, identical frames)
        warnings.append(
            f"{info.path}: the clip's scores do not vary (or none is finite), so its own threshold rule (median + 3 x "
            "1.4826 x MAD) gives no threshold and nothing can be flagged. Pass --threshold NUMBER, or weights calibrated "
            "on normal footage of this camera."
        )
    if calibrated:
        mismatch = scoring.calibration_mismatch(raw, thr, calibration["kinds"][kind])
        if mismatch:
            warnings.append(
                f"{info.path}: {mismatch['share']:.0%} of the scored frames exceed the calibrated threshold "
                f"{thr:.4g} (median score {mismatch['median']:.4g}; the weights' normal calibration footage: "
                f"{mismatch['calibration_median']:.4g}). Either most of this footage is abnormal or it is unlike the "
                "footage the weights were calibrated on, and the threshold does not transfer: read the score curve, "
                "pass --threshold NUMBER, or recalibrate on normal footage of this camera, which trains nothing (stan train NORMAL "
                "--init WEIGHTS --pretrain-epochs 0 --epochs 0 --out CAMERA.safetensors; README, \"Calibrate on your camera\")."
            )
    return warnings


def _decide(info, pixel, d, model: Stan, kind, threshold, merge_gap, min_length,
            time_s: np.ndarray | None = None, time_source: str = "frame index / fps") -> DetectResult:
    """Scores -> raw score, normalised score, threshold, flags, segments; and the summary."""
    n = len(pixel)
    calibration = model.calibration
    if calibration is not None:
        lam, lam_source = float(calibration["lambda_s"]), "calibration"
    else:
        lam, lam_source = scoring.lambda_s(pixel, d), "this clip (max pixel / max -log D / 10)"
    raw = scoring.raw_score(pixel, d, kind, lam)
    thr, thr_source, calibrated = _threshold(raw, threshold, calibration, kind)
    abnormal = scoring.flag(raw, thr)
    segments = scoring.find_segments(abnormal, raw, merge_gap=merge_gap, min_length=min_length)
    warnings = _score_warnings(info, raw, thr, model, kind, calibrated)
    if time_s is None:
        time_s = np.arange(n) / info.fps
    scored = np.isfinite(raw)
    summary = {
        "stan_version": __version__,
        "input": {
            "path": str(info.path),
            "kind": info.kind,
            "frames": n,
            "fps": info.fps,
            "fps_assumed": info.fps_assumed,
            "width": info.width,
            "height": info.height,
            "duration_s": round(_duration(time_s, info.fps), 3),
            "time_source": time_source,
        },
        "score_kind": kind,
        "lambda_s": lam,
        "lambda_s_source": lam_source,
        "threshold": thr,
        "threshold_source": thr_source,
        "scored_frames": int(scored.sum()),
        "unscored_frames": [int(i) for i in np.flatnonzero(~scored)],
        "abnormal_frames": int(abnormal.sum()),
        "segment_rules": {"merge_gap_frames": merge_gap, "min_length_frames": min_length},
        "segments": [
            {
                "start_frame": s.start,
                "end_frame": s.end,
                "start_s": round(float(time_s[s.start]), 3),
                "end_s": round(float(time_s[s.end]), 3),
                "duration_s": round(report.segment_duration(time_s, s), 3),  # as segments.csv
                "peak_frame": s.peak,
                "peak_time_s": round(float(time_s[s.peak]), 3),
                "peak_score": s.peak_score,
            }
            for s in segments
        ],
        "complete": True,
    }
    return DetectResult(
        warnings=warnings, info=info, time_s=time_s, pixel_loss=pixel, d_loss=d, score_raw=raw,
        score=scoring.normalise_per_clip(raw), abnormal=abnormal, segments=segments, threshold=thr,
        threshold_source=thr_source, lambda_s=lam, lambda_source=lam_source, score_kind=kind, summary=summary,
    )


def _overlay_labels(result, t: int) -> tuple[str, str, str]:
    """Frame t's overlay label, longest first: index, time and score; index and score; score."""
    raw = result.score_raw[t]
    score = f"{raw:.4g} / {result.threshold:.4g}" if np.isfinite(raw) else "NOT SCORED"
    return (f"{t}  {result.time_s[t]:.1f}S  " + ("SCORE " if np.isfinite(raw) else "") + score,
            f"{t} {score}", f"{raw:.3g}" if np.isfinite(raw) else "-")


def _display_scales(stores: dict[str, MapStore]) -> dict[str, float]:
    """Full heat = the 99.9th percentile of the clip's map values (pixel map floored, see below)."""
    scales = {name: store.quantile(0.999) for name, store in stores.items()}
    scales["pixel"] = max(scales["pixel"], MAP_SCALE_FLOOR)  # a clean clip's noise stays cold
    scales["guided"] = scales["guided"] or 1.0
    return scales


def _write_overlays(video, fps, result: DetectResult, stores: dict[str, MapStore], out: Path, on_progress,
                    max_size: int | None = OVERLAY_MAX_SIZE) -> None:
    """Decode again and write both overlay videos in one pass, at most `max_size` pixels on the
    longer side: larger frames come from ffmpeg scaled down (an 8000 x 6000 frame would make an
    H.264 video players refuse, and each encoder would hold gigabytes).

    Every resource is entered into one ExitStack as soon as it exists, so each is released on
    every way out, whichever step fails: the map readers' files, the decoder, and each writer
    (VideoWriter.__exit__: finished on success, else ffmpeg stopped and its temporary removed).
    The writers close one at a time; one that fails (a full disk, a failed check, Ctrl-C) makes
    the stack close the other as failed too, so no ffmpeg is left running and no temporary stays.
    """
    scales = _display_scales(stores)
    n = result.n_frames
    first = scored_range(n).start
    curve = result.score_raw
    finite = curve[np.isfinite(curve)]
    top = max(float(finite.max()), result.threshold if np.isfinite(result.threshold) else 0.0) if finite.size else 0.0
    vmax = top * 1.05 if top > 0 else None
    with contextlib.ExitStack() as stack:
        readers: dict[str, MapReader] = {}
        for name, store in stores.items():
            readers[name] = store.reader()
            stack.callback(readers[name].close)
        info, frames = read_frames(video, fps=fps, max_side=max_size)
        stack.callback(frames.close)
        strip_h = max(24, info.height // 8)
        writers = {
            kind: stack.enter_context(VideoWriter(out / name, info.width, info.height + strip_h,
                                                  overlay_rate(result.time_s, info.fps)))
            for name, kind, _ in OVERLAYS
        }
        labels = [_overlay_labels(result, t) for t in range(n)]
        # One version of the label for the whole video (the longest that fits every frame, with the
        # abnormal border): a small video gets a shorter label rather than a clipped one, and no flicker.
        level = max(overlay.label_level(versions, info.width, info.height) for versions in labels) if labels else 0
        for t, frame in enumerate(frames):
            if t >= n:
                break
            label = labels[t][level]
            strip = overlay.score_strip(info.width, strip_h, curve, t, result.threshold, vmax)
            k = t - first
            for kind, writer in writers.items():
                reader = readers[kind]
                heat = np.minimum(reader[k] / scales[kind], 1.0) if 0 <= k < len(reader) else None
                writer.write(overlay.compose_frame(frame, heat, label, bool(result.abnormal[t]), strip))
            if t % 16 == 0:
                on_progress("overlay", t, n)
    on_progress("overlay", n, n)


def _write_report(out: Path, result: DetectResult) -> None:
    r = result
    report.write_scores_csv(
        out / "scores.csv",
        time_s=r.time_s, pixel_loss=r.pixel_loss, d_loss=r.d_loss, score_raw=r.score_raw, score=r.score,
        abnormal=r.abnormal.astype(float),
    )
    report.write_segments_csv(out / "segments.csv", r.segments, r.time_s)
    report.plot_scores(
        out / "scores.png", time_s=r.time_s, score=r.score, score_raw=r.score_raw,
        threshold=r.threshold if np.isfinite(r.threshold) else None, segments=r.segments,
        title=f"{r.info.path.name}: {SCORE_KINDS[r.score_kind]} score",
    )
    r.files[:0] = ["scores.csv", "segments.csv", "scores.png"]
    r.summary["files"] = r.files + ["summary.json", "index.html"]
    report.write_json(out / "summary.json", r.summary)
    s = r.summary
    facts = {
        "input": s["input"]["path"], "frames": s["input"]["frames"], "fps": s["input"]["fps"],
        "fps_assumed": s["input"]["fps_assumed"],
        "width": s["input"]["width"], "height": s["input"]["height"], "duration_s": s["input"]["duration_s"],
        "device": s["device"], "weights": s["weights"]["file"], "weights_sha256": s["weights"]["sha256"],
        "weights_name": s["weights"].get("name"),
        "threshold": s["threshold"], "threshold_source": s["threshold_source"], "score_kind": SCORE_KINDS[r.score_kind],
        "scored_frames": s["scored_frames"], "abnormal_frames": s["abnormal_frames"], "warnings": s["warnings"],
        "min_length_frames": s["segment_rules"]["min_length_frames"],
    }
    videos = [(name, caption) for name, _, caption in OVERLAYS if name in r.files]
    clips = [entry.get("clip") for entry in s["segments"]] if s.get("clips") else None
    report_html.write_index_html(
        out / "index.html", summary=facts, segments=r.segments, plot_name="scores.png", videos=videos, time_s=r.time_s,
        score_raw=r.score_raw, threshold=r.threshold if np.isfinite(r.threshold) else None, clips=clips,
    )
    r.files.extend(["summary.json", "index.html"])
