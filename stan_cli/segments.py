"""The flagged moments as clips: `segments/segment_001.mp4`, ... in a report folder.

Each clip is the input itself (not an overlay) from `padding` seconds before its segment's
first frame to `padding` seconds after its last, H.264 / yuv420p / faststart with even sides, so
that it plays in a browser and can be handed on as it is.

Only the clips are decoded again, never the whole input: ffmpeg seeks in a video before
opening it (`-ss` before `-i`, so it starts decoding at the keyframe before the clip, not at the
file's start) and encodes straight to the clip, no frame passing through Python; a frame
folder's clip is encoded from the clip's own images. Times: a video's own timestamps where
detect used them, else frame index over the video's own rate (which a --fps given for the report
does not change).

The clips are written into a hidden folder of this run and put in place as `segments/` only
once the rest of the report is (`staged_clips`): a run that fails leaves an earlier report's
clips as they were, and a run without clips (none flagged, or --no-clips) removes them, so a
report folder never holds clips of another run.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from .errors import OutputError
from .fileio import OVERLAY_COMMENT, output_error, remove_quietly, shown, staged_folder, written_by_stan
from .scoring import Segment, frame_end
from .video import VideoInfo, ffmpeg_path, fitted_size, frame_times, list_frames, probe

FOLDER = "segments"
CLIP_PADDING_S = 1.0  # --clip-padding: seconds of input kept before and after each segment
PADDING_RANGE = (0.0, 3600.0)
_NAME = re.compile(r"^segment_\d{3,}\.mp4$")


def clip_name(number: int) -> str:
    """The clip of segment `number` (from 1), relative to the report folder."""
    return f"{FOLDER}/segment_{number:03d}.mp4"


@dataclass(frozen=True)
class Clip:
    number: int  # its segment's number, from 1
    first: int  # the input's first frame in the clip
    last: int  # and its last
    name: str  # relative to the report folder: segments/segment_001.mp4


def plan(segments: Sequence[Segment], time_s: np.ndarray, padding_s: float) -> list[Clip]:
    """A clip per segment: its frames and at least `padding_s` seconds (of the report's times,
    `time_s`: a variable-rate video's own) either side, within the input. Before: from the frame
    shown at start - padding; after: up to the end of the segment's last frame (scoring.frame_end)
    plus padding."""
    t = np.asarray(time_s, dtype=np.float64)  # (n,) non-decreasing
    n, eps = len(t), 1e-9
    clips = []
    for k, s in enumerate(segments, start=1):
        first = max(0, int(np.searchsorted(t, t[s.start] - padding_s + eps, side="right")) - 1)
        last = min(n - 1, max(s.end, int(np.searchsorted(t, frame_end(t, s.end, s.start) + padding_s - eps, side="left")) - 1))
        clips.append(Clip(k, first, last, clip_name(k)))
    return clips


def write(clips: Sequence[Clip], folder: Path, info: VideoInfo, time_s: np.ndarray, time_source: str,
          fps_given: float | None, max_side: int | None,
          on_progress: Callable[[str, int, int | None], None] = lambda stage, done, total: None) -> None:
    """Encode each clip into `folder` (the run's folder of staged_clips) from info.path.

    time_s / time_source: detect's frame times. A video's clips are cut by the file's own times
    (video.frame_times without --fps: its timestamps where they hold, else frame index over its own
    rate), also when a --fps (fps_given) set the report's times: the clip holds the frames the
    report names. max_side: the longer side at most (detect's --overlay-max-size), scaled down by
    ffmpeg as the overlay videos are.
    """
    if not clips:
        return
    folder.mkdir(exist_ok=True)
    width, height = fitted_size(info.width, info.height, max_side)
    # even sides for yuv420p: scaled to the first frame's size (a frame folder's other images too), an odd side padded
    picture = [f"scale={width}:{height}:flags=area", "pad=ceil(iw/2)*2:ceil(ih/2)*2"]
    if info.kind == "video":
        if time_source == "timestamps" or not fps_given:
            seconds = np.asarray(time_s, dtype=np.float64)
        else:  # the report's times are index / --fps; the file's own say where its frames are
            seconds, _ = frame_times(probe(info.path), len(time_s), decoded_all=True)
    for done, clip in enumerate(clips):
        on_progress("clips", done, len(clips))
        target = folder / Path(clip.name).name
        if info.kind == "video":
            start = float(seconds[clip.first])
            end = float(seconds[clip.last])
            length = (frame_end(seconds, clip.last, clip.first) - end) / 2 + end - start  # ends inside the last frame, halfway to the next
            source = ["-ss", f"{start:.6f}", "-i", ffmpeg_path(info.path), "-t", f"{length:.6f}"]
            _encode(source, picture, target)
        else:
            with _image_list(list_frames(info.path)[clip.first : clip.last + 1], info.fps) as listing:
                _encode(["-f", "concat", "-safe", "0", "-i", listing], picture, target)
    on_progress("clips", len(clips), len(clips))


@contextlib.contextmanager
def _image_list(images: list[Path], fps: float) -> Iterator[str]:
    """A concat-demuxer script of `images`, each shown 1 / fps seconds."""
    fd, name = tempfile.mkstemp(suffix=".ffconcat", prefix="stan-clip-")
    try:
        # surrogateescape: a file name that is not UTF-8 reaches ffmpeg as the bytes it is
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as fh:
            fh.write("ffconcat version 1.0\n")
            for image in images:
                escaped = str(image.resolve()).replace("'", "'\\''")
                fh.write(f"file '{escaped}'\nduration {1 / fps:.9f}\n")
        yield name
    finally:
        remove_quietly(Path(name))


def _encode(source: list[str], picture: list[str], target: Path) -> None:
    """ffmpeg from `source` (its input options and input) to an H.264 MP4 at `target`, which is
    written under a temporary name and renamed when ffmpeg succeeded."""
    tmp = target.with_name(f".{target.name}.tmp.mp4")
    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *source,
        "-map", "0:V:0", "-an", "-sn", "-dn", "-vf", ",".join(picture), "-fps_mode", "passthrough",
        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "23", "-preset", "veryfast",
        "-metadata", f"comment={OVERLAY_COMMENT}", "-movflags", "+faststart", ffmpeg_path(tmp),
    ]
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace")
    except OSError as err:
        raise OutputError(f"{shown(target)}: cannot start ffmpeg to write the clip ({err.strerror or err}).") from None
    try:
        if proc.returncode != 0 or not tmp.exists() or tmp.stat().st_size == 0:
            lines = [re.sub(r"^(\[[^]]*\]\s*)+", "", ln).strip() for ln in proc.stderr.splitlines()]
            reason = next((ln for ln in reversed(lines) if ln), "ffmpeg stopped")
            raise OutputError(
                f"{shown(target)}: ffmpeg could not write the clip ({reason}). Check that the disk has free space, "
                "or leave the clips out with --no-clips."
            )
        os.replace(tmp, target)
    except OSError as err:
        raise output_error(target, err) from err
    finally:
        remove_quietly(tmp)


def is_segment_clip(entry: Path) -> bool:
    """A segment's clip (segments/segment_001.mp4, ...) that stan wrote."""
    return bool(_NAME.match(entry.name)) and written_by_stan(entry)


def staged_clips(out: Path) -> contextlib.AbstractContextManager[Path]:
    """A hidden folder of this run in `out` to write the clips into; on success it becomes
    `out/segments` (an earlier one replaced, or removed when this run wrote none); on failure it
    is removed (fileio.staged_folder). Enter it before fileio.staged, so it ends after the other
    files are in place."""
    return staged_folder(out, FOLDER, is_segment_clip, "clips")
