"""`explain(...)`: the paper's Fig. 3 for one frame.

(a) the real frame, (b) the generated frame, (c) the generator's pixel-loss map, (d) the
guided-backpropagation map of the discriminator with respect to the real input sequence
(inference.guided_backprop says how guided backprop is done with ELU). Maps are brought to the
input's own resolution; the raw maps are saved as float32 .npy files.

The pixel-loss map here is the squared error (generated - real)^2, so that its mean is the
frame's `pixel_loss` (the MSE in scores.csv) and the numbers add up. detect's overlay video shows
its square root, |generated - real|, which spreads small errors over more of its one clip-wide
colour scale; the two differ on purpose, and the labels say which is which.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import overlay, report, scoring
from .detect import calibration_label, check_fps, check_name, check_options, open_output, parse_threshold
from .errors import InputError, StanError, WeightsError
from .fileio import shown
from .inference import guided_backprop, resolve_device, score_windows
from .model import CONTEXT, WINDOW
from .video import frame_times, read_frames
from .weights import Stan, find_default_weights, load_weights
from .windows import to_grey_square, to_tensor

PANEL_FILES = ("panel.png", "real.png", "generated.png", "pixel_loss.png", "guided_backprop.png")
MAP_FILES = ("pixel_loss.npy", "guided_backprop.npy")
OWN_FILES = (*PANEL_FILES, *MAP_FILES, "explanation.json")


@dataclass
class Explanation:
    frame: int
    time_s: float
    real: np.ndarray  # (H, W, 3) uint8, the input frame
    generated: np.ndarray  # (H, W) uint8, the generator's prediction at the input's resolution
    pixel_loss_map: np.ndarray  # (H, W) float32, (generated - real)^2 per pixel ([-1, 1] units); mean ~ pixel_loss
    guided_backprop_map: np.ndarray  # (H, W) float32, |guided dD(S_t)/d input| summed over the window
    pixel_loss: float
    d_loss: float
    values: dict  # what explanation.json holds
    out: Path | None = None
    files: list[str] = field(default_factory=list)


def explain(
    video: Path,
    frame: int,
    *,
    out: Path | None = None,
    weights: Path | Stan | None = None,
    device: str = "auto",
    fps: float | None = None,
    overwrite: bool = False,
    score: str = "gd",
    threshold: float | str | None = None,
) -> Explanation:
    """Explain one frame. score and threshold as in detect (the verdict uses them), except that
    "clip" needs the whole clip's scores and is refused: use `stan detect --threshold clip`."""
    video = Path(video)
    check_name(video)
    check_fps(fps)
    check_options(score=score, threshold=threshold)
    threshold = parse_threshold(threshold, rules=("calibrated",))
    if threshold == "clip":
        raise StanError("--threshold clip needs the whole clip's scores: use stan detect --threshold clip, or give a number.")
    model = weights if isinstance(weights, Stan) else load_weights(Path(weights) if weights else find_default_weights())
    dev = resolve_device(device)
    model.to(dev).eval()
    if out is not None:
        out = Path(out)
    info, window = _window_around(video, frame, fps)
    if out is None:
        return _explain(model, dev, video, info, window, frame, fps, score, threshold)
    # locked for the run (a folder made here is removed on failure); earlier files are replaced
    # only when this run succeeds, all together
    with open_output(out, overwrite, inputs=(video,), own=OWN_FILES), report.staged(out, own=OWN_FILES):
        result = _explain(model, dev, video, info, window, frame, fps, score, threshold)
        result.out = out
        _write(out, result)
    return result


def _explain(model: Stan, dev, video: Path, info, window: list[np.ndarray], frame: int, fps: float | None,
             score: str = "gd", threshold: float | str | None = None) -> Explanation:
    """Score the window around `frame`, backpropagate, bring the maps to the input's size."""
    size = model.config.image_size
    grey = to_grey_square(np.stack(window), size)  # (11, S, S) uint8
    batch = to_tensor(grey[None]).to(dev)  # (1, 11, 1, S, S)
    scores = score_windows(model.generator, model.discriminator, batch, "fp32")
    guided = guided_backprop(model.discriminator, batch)  # (1, S, S)
    h, w = info.height, info.width
    real = window[CONTEXT]
    generated = _resize(scores.prediction[:, 0], h, w)  # [-1, 1]
    generated_u8 = ((generated + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    pixel_map = _resize(scores.error, h, w).clip(min=0)
    guided_map = _resize(guided, h, w).clip(min=0)

    pixel_loss, d_loss = float(scores.pixel[0]), float(scores.d[0])
    if not (np.isfinite(pixel_loss) and np.isfinite(d_loss)):
        raise WeightsError(
            f"{shown(video)}: frame {frame} got no finite score (pixel loss {pixel_loss}, -log D {d_loss}): the networks of "
            f"{model.file or 'these weights'} give NaN or infinite losses on this input. Use another weights file."
        )
    time_s, time_source = _frame_time(info, frame, fps)
    values = _values(model, frame, time_s, pixel_loss, d_loss, score, threshold)
    values["input"] = {"path": str(video), "width": w, "height": h, "fps": info.fps, "time_source": time_source}
    values["weights"] = {"file": model.file, "sha256": model.sha256}
    return Explanation(frame, time_s, real, generated_u8, pixel_map, guided_map, pixel_loss, d_loss, values)


def _window_around(video: Path, frame: int, fps: float | None):
    """Decode frames 0 to frame + 5 and keep the last 11; a clear error outside the range.

    The stream is read to its end (read_frames stops it at frame + 5), never left early: only
    then does video.py check that no image of a folder was skipped, which would shift every
    later frame by one and explain a frame other than detect's frame `frame`.
    """
    last = frame + CONTEXT + 1 if frame >= CONTEXT else None  # a frame before 5: count the clip for the error
    info, frames = read_frames(video, fps=fps, first=last)
    window: deque[np.ndarray] = deque(maxlen=WINDOW)
    try:
        for image in frames:
            window.append(image)
    finally:
        frames.close()
    count = frames.count
    if count == last:
        return info, list(window)
    # the frame is out of range: `count` is now the number of frames that decode
    if not frames.complete:  # a video cut short: say so, and which frames it still has
        ended = f"{video}: decoding ended after {count} of about {info.n_frames} frames; the file looks truncated or damaged"
        if count < WINDOW:
            raise InputError(f"{ended}, and STAN needs at least {WINDOW}. Use an undamaged copy of the file.")
        raise InputError(
            f"{ended}, so --frame {frame} has no full 11-frame window. The frames that can be explained are "
            f"{CONTEXT} to {count - CONTEXT - 1} (0-based, as in stan detect's report); or use an undamaged copy."
        )
    if count < WINDOW:
        raise InputError(f"{video}: only {count} frames; STAN needs at least {WINDOW}. Use a longer clip.")
    raise InputError(
        f"{video}: --frame {frame} has no full 11-frame window; this clip's valid frames are "
        f"{CONTEXT} to {count - CONTEXT - 1} (0-based, {count} frames)."
    )


def _frame_time(info, frame: int, fps: float | None) -> tuple[float, str]:
    """The frame's time by detect's rule (video.frame_times): its timestamp, else frame / fps.

    explain decoded only frames 0 to frame + 5, so the rule's count check is "at least that many
    timestamps" (decoded_all=False); video.frame_times says when that can differ from detect.
    """
    times, source = frame_times(info, frame + CONTEXT + 1, fps, decoded_all=False)
    return float(times[frame]), source


def _resize(maps: torch.Tensor, height: int, width: int) -> np.ndarray:
    """(1, S, S) -> (height, width) float32 numpy, bilinear."""
    x = F.interpolate(maps[:, None].float().cpu(), size=(height, width), mode="bilinear", align_corners=False)
    return x[0, 0].numpy().astype(np.float32)


def _values(model: Stan, frame: int, time_s: float, pixel_loss: float, d_loss: float, score: str = "gd",
            threshold: float | str | None = None) -> dict:
    """explanation.json's numbers; the verdict by detect's rules for one frame.

    The raw score needs lambda_s for "gd" and the threshold needs a number or a calibration:
    weights without calibration give score_raw / threshold / abnormal = None for what is missing.
    """
    values: dict = {"frame": frame, "time_s": round(time_s, 3), "pixel_loss": pixel_loss, "d_loss": d_loss,
                    "score_kind": score}
    cal = model.calibration
    lam = float(cal["lambda_s"]) if cal is not None else None
    raw = None
    if score != "gd" or lam is not None:
        raw = float(scoring.raw_score(np.array([pixel_loss]), np.array([d_loss]), score, lam or 0.0)[0])
    if isinstance(threshold, float):  # parse_threshold made every number a float
        thr, source = threshold, "--threshold"
    elif cal is not None:
        thr, source = float(cal["kinds"][score]["threshold"]), calibration_label(cal)
    else:
        thr, source = None, None
    values.update(lambda_s=lam, score_raw=raw, threshold=thr, threshold_source=source,
                  abnormal=bool(raw > thr) if raw is not None and thr is not None else None)
    if cal is None and (raw is None or thr is None):
        values["note"] = ("the weights carry no calibration: lambda_s and the threshold come from a whole clip "
                          "(stan detect), or give --threshold" + (" and --score g or d" if raw is None else ""))
    return values


def _write(out: Path, r: Explanation) -> None:
    from matplotlib.image import imsave

    heat_pixel = np.minimum(r.pixel_loss_map / max(float(r.pixel_loss_map.max()), 1e-12), 1.0)
    heat_guided = np.minimum(r.guided_backprop_map / max(float(r.guided_backprop_map.max()), 1e-12), 1.0)
    images = {
        "real.png": r.real,
        "generated.png": np.repeat(r.generated[..., None], 3, axis=2),
        "pixel_loss.png": overlay.heat_overlay(r.real, heat_pixel),
        "guided_backprop.png": overlay.heat_overlay(r.real, heat_guided),
    }
    for name, image in images.items():
        with report.atomic_path(out / name) as tmp:
            imsave(tmp, image, format="png")
    _panel(out / "panel.png", r)
    for name, array in (("pixel_loss.npy", r.pixel_loss_map), ("guided_backprop.npy", r.guided_backprop_map)):
        with report.atomic_path(out / name) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, array.astype(np.float32))
    report.write_json(out / "explanation.json", r.values)
    r.files = [*PANEL_FILES, *MAP_FILES, "explanation.json"]


def _panel(path: Path, r: Explanation) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = r.real.shape[:2]
    # at least 2.6 in of image height: the colour bars' labels run along them and must fit
    fig = Figure(figsize=(4 * 4.2, max(4.2 * h / w, 2.6) + 0.9), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4)
    grey = r.real.mean(axis=2)
    axes[0].imshow(r.real)
    axes[0].set_title(f"(a) real frame {r.frame}")
    axes[1].imshow(r.generated, cmap="gray", vmin=0, vmax=255)
    axes[1].set_title("(b) generated frame")
    for ax, data, title, label in (
        (axes[2], r.pixel_loss_map, f"(c) squared error (generated - real)$^2$\nmean {r.pixel_loss:.4g} = pixel loss",
         "squared error\n([-1, 1] units)"),
        (axes[3], r.guided_backprop_map, f"(d) guided backprop of D\n-log D = {r.d_loss:.3g}",
         "|guided gradient|\n(summed over 11 frames)"),
    ):
        ax.imshow(grey, cmap="gray", vmin=0, vmax=255)
        im = ax.imshow(data, cmap="inferno", alpha=0.6)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label=label)
        ax.set_title(title)
    for ax in axes:
        ax.axis("off")
    v = r.values
    if v.get("abnormal") is not None:
        verdict = "abnormal" if v["abnormal"] else "normal"
        fig.suptitle(f"score ({v['score_kind']}) {v['score_raw']:.4g} vs threshold {v['threshold']:.4g}: {verdict}")
    fig.tight_layout()
    with report.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
