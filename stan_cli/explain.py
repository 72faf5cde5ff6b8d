"""`explain(...)`: the paper's Fig. 3 for one frame.

(a) the real frame, (b) the generated frame, (c) the generator's pixel-loss map, (d) the
discriminator's map, the one `stan detect`'s overlay draws at that frame: guided backpropagation
of its score -log D over the real input sequence, kept where Grad-CAM puts its evidence
(inference.guided_gradcam; the paper's panel backpropagates D itself, inference.guided_backprop
says why the target is -log D, and how guided backprop is done with ELU). Maps are brought to the
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
from .detect import (
    FRAMES_MAX, calibration_label, check_fps, check_name, check_options, check_whole, open_output, parse_threshold,
)
from .errors import InputError, StanError, WeightsError
from .fileio import shown
from .inference import discriminator_map, resolve_device, score_windows
from .model import CONTEXT, WINDOW
from .video import cut_short, frame_times, packet_extent, probe, read_frames
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
    guided_backprop_map: np.ndarray  # (H, W) float32, guided Grad-CAM of -log D(S_t) (inference.guided_gradcam)
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
    check_whole("--frame", frame, 0, FRAMES_MAX, "0-based, with 5 frames on each side")
    check_fps(fps)
    check_options(score=score, threshold=threshold)
    threshold = parse_threshold(threshold, rules=("calibrated",))
    if threshold == "clip":
        raise StanError("--threshold clip needs the whole clip's scores: use stan detect --threshold clip, or give a number.")
    model = weights if isinstance(weights, Stan) else load_weights(Path(weights) if weights else find_default_weights())
    dev = resolve_device(device)
    model.to(dev).eval()
    if out is None:
        info, window, complaints = _window_around(video, frame, fps, model.config.image_size)
        return _explain(model, dev, video, info, window, frame, fps, score, threshold, complaints)
    out = Path(out)
    # checked and locked before decoding (a refusal costs no minutes of it; a folder made here is
    # removed on failure); earlier files are replaced only when this run succeeds, all together
    with open_output(out, overwrite, inputs=(video,), own=OWN_FILES), report.staged(out, own=OWN_FILES):
        info, window, complaints = _window_around(video, frame, fps, model.config.image_size)
        result = _explain(model, dev, video, info, window, frame, fps, score, threshold, complaints)
        result.out = out
        _write(out, result)
    return result


def _explain(model: Stan, dev, video: Path, info, window: tuple[np.ndarray, np.ndarray], frame: int, fps: float | None,
             score: str = "gd", threshold: float | str | None = None, complaints: list[str] = ()) -> Explanation:
    """Score the window around `frame`, backpropagate, bring the maps to the input's size."""
    grey, real = window  # (11, S, S) uint8, the frame itself (H, W, 3) uint8
    batch = to_tensor(grey[None]).to(dev)  # (1, 11, 1, S, S)
    scores = score_windows(model.generator, model.discriminator, batch, "fp32")
    guided = discriminator_map(model.discriminator, batch)  # (1, S, S): the map detect's overlay draws at this frame
    h, w = info.height, info.width
    generated = _resize(scores.prediction[:, 0], h, w, to_uint8=True)  # [-1, 1] -> uint8
    pixel_map = _resize(scores.error, h, w)
    guided_map = _resize(guided, h, w)

    pixel_loss, d_loss = float(scores.pixel[0]), float(scores.d[0])
    if not (np.isfinite(pixel_loss) and np.isfinite(d_loss)):
        raise WeightsError(
            f"{shown(video)}: frame {frame} got no finite score (pixel loss {pixel_loss}, -log D {d_loss}): the networks of "
            f"{model.file or 'these weights'} give NaN or infinite losses on this input. Use another weights file."
        )
    time_s, time_source = _frame_time(info, frame, fps)
    values = _values(model, frame, time_s, pixel_loss, d_loss, score, threshold)
    values["input"] = {"path": str(video), "width": w, "height": h, "fps": info.fps, "fps_assumed": info.fps_assumed,
                       "time_source": time_source}
    values["weights"] = {"file": model.file, "name": model.name, "sha256": model.sha256}
    values["warnings"] = [] if not complaints else [
        f"{shown(video)}: ffmpeg reported damaged data while decoding frames 0 to {frame + CONTEXT} (\"{complaints[0]}\"); "
        f"the window of frame {frame} may show it, and its scores be high for that alone. stan detect says which frames."
    ]
    return Explanation(frame, time_s, real, generated, pixel_map, guided_map, pixel_loss, d_loss, values)


def _window_around(video: Path, frame: int, fps: float | None, size: int):
    """Decode frames 0 to frame + 5 and keep the last 11, made grey and S x S as each arrives, and
    the frame itself as it is; a clear error outside the range.

    Only one full-size frame is kept (the one explained): eleven 8000 x 6000 frames would be 1.6 GB
    as they come and 6 GB as float. The stream is read to its end (read_frames stops it at
    frame + 5), never left early: only then does video.py check that no image of a folder was
    skipped, which would shift every later frame by one and explain a frame other than detect's
    frame `frame`.
    """
    if frame < CONTEXT:  # out of range whatever the clip: count its frames for the error, without decoding it
        _early_frame(video, frame, fps)
    last = frame + CONTEXT + 1 if frame >= CONTEXT else None  # a frame before 5 whose clip could not be counted: decode it
    info, frames = read_frames(video, fps=fps, first=last)
    window: deque[np.ndarray] = deque(maxlen=WINDOW)
    real = None
    try:
        for k, image in enumerate(frames):
            window.append(to_grey_square(image[None], size)[0])  # (S, S)
            if k == frame:
                real = image
    finally:
        frames.close()
    count = frames.count
    if count == last:
        return info, (np.stack(window), real), frames.complaints
    # the frame is out of range: `count` is now the number of frames that decode
    if not frames.complete:  # a video cut short: say so, and which frames it still has
        ended = cut_short(video, count, info.n_frames)
        if count < WINDOW:
            raise InputError(f"{ended}, and STAN needs at least {WINDOW}. Use an undamaged copy of the file.")
        raise InputError(
            f"{ended}, so --frame {frame} has no full 11-frame window. The frames that can be explained are "
            f"{CONTEXT} to {count - CONTEXT - 1} (0-based, as in stan detect's report); or use an undamaged copy."
        )
    raise _out_of_range(video, frame, count)


def _early_frame(video: Path, frame: int, fps: float | None) -> None:
    """The error for --frame 0 to 4, with the clip's valid frames counted without decoding it: a
    folder's images, or a video's packets (video.packet_extent, demuxing only) where they agree
    with its header's length. Returns when the count is not sure so (a damaged video, an edit list
    that hides frames, variable-rate footage), and the caller decodes the clip to count it."""
    info = probe(video, fps)
    if info.kind == "frames":
        count = info.n_frames
    else:
        extent = packet_extent(video)
        agree = extent is not None and extent[0] == info.n_frames
        count = extent[0] if agree else None
    if count is not None:
        raise _out_of_range(video, frame, count)


def _out_of_range(video: Path, frame: int, count: int) -> InputError:
    """--frame outside a whole clip of `count` frames."""
    if count < WINDOW:
        return InputError(f"{video}: only {count} frame{'s' if count != 1 else ''}; STAN needs at least {WINDOW}. Use a longer clip.")
    return InputError(
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


def _resize(maps: torch.Tensor, height: int, width: int, to_uint8: bool = False) -> np.ndarray:
    """(1, S, S) -> (height, width) float32 numpy, bilinear, at least 0; or, with to_uint8, a
    [-1, 1] image as uint8. In place where it can be: at 8000 x 6000 each float copy is 192 MB."""
    x = F.interpolate(maps[:, None].float().cpu(), size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    if to_uint8:
        return x.add_(1.0).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8).numpy()
    return x.clamp_(min=0).numpy()


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


PANEL_SIDE = 1200  # the panel draws each image at most this big (about 420 pixels wide on the page)
HEAT_SIDE = 1024  # the heat maps over real.png are drawn from a copy of the map at most this big


def _write(out: Path, r: Explanation) -> None:
    """real.png, generated.png and the maps (.npy) at the input's size; the heat-map PNGs at the
    input's size too, drawn band by band from a small copy of each map (a map holds no more detail
    than the network's 224 x 224); the panel from small copies of everything."""
    from matplotlib.image import imsave

    images = {
        "real.png": lambda: r.real,
        "generated.png": lambda: np.repeat(r.generated[..., None], 3, axis=2),
        "pixel_loss.png": lambda: overlay.heat_overlay(r.real, _heat(r.pixel_loss_map, HEAT_SIDE)),
        "guided_backprop.png": lambda: overlay.heat_overlay(r.real, _heat(r.guided_backprop_map, HEAT_SIDE)),
    }
    for name, image in images.items():  # one full-size image alive at a time
        with report.atomic_path(out / name) as tmp:
            imsave(tmp, image(), format="png")
    _panel(out / "panel.png", r)
    for name, array in (("pixel_loss.npy", r.pixel_loss_map), ("guided_backprop.npy", r.guided_backprop_map)):
        with report.atomic_path(out / name) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, np.asarray(array, dtype=np.float32))
    report.write_json(out / "explanation.json", r.values)
    r.files = [*PANEL_FILES, *MAP_FILES, "explanation.json"]


def _heat(values: np.ndarray, side: int) -> np.ndarray:
    """A map as [0, 1] heat (its maximum is 1), at most `side` pixels on its longest side."""
    return np.minimum(overlay.shrink(values, side) / max(float(values.max()), 1e-12), 1.0)


def _panel(path: Path, r: Explanation) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = r.real.shape[:2]
    real = overlay.shrink(r.real, PANEL_SIDE)
    # at least 2.6 in of image height: the colour bars' labels run along them and must fit
    fig = Figure(figsize=(4 * 4.2, min(max(4.2 * h / w, 2.6), 12.0) + 0.9), dpi=100)  # a very tall frame: not a 40 m figure
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4)
    grey = real.mean(axis=2)
    axes[0].imshow(real)
    axes[0].set_title(f"(a) real frame {r.frame}")
    axes[1].imshow(overlay.shrink(r.generated, PANEL_SIDE), cmap="gray", vmin=0, vmax=255)
    axes[1].set_title("(b) generated frame")
    for ax, data, title, label in (
        (axes[2], r.pixel_loss_map, f"(c) squared error (generated - real)$^2$\nmean {r.pixel_loss:.4g} = pixel loss",
         "squared error\n([-1, 1] units)"),
        (axes[3], r.guided_backprop_map, f"(d) guided Grad-CAM of -log D\n-log D = {r.d_loss:.3g}",
         "sqrt(|guided gradient| x Grad-CAM)"),
    ):
        ax.imshow(grey, cmap="gray", vmin=0, vmax=255)
        small = overlay.shrink(data, PANEL_SIDE)
        im = ax.imshow(small, cmap="inferno", alpha=0.6, vmin=float(data.min()), vmax=float(data.max()))  # the whole map's range
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
