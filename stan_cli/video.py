"""The only place that decodes or encodes media. Everything goes through imageio-ffmpeg.

Frames are streamed one at a time as (H, W, 3) uint8 RGB; a video is never held in memory.
A folder of images is decoded by ONE ffmpeg process through the concat demuxer, in natural
order (2.jpg before 10.jpg), so folders and videos share one code path and one error style.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from .errors import InputError, OutputError

FRAME_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".mts", ".3gp", ".ogv"}
)
DEFAULT_FOLDER_FPS = 25.0
_IMAGE_KIND = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".tif": "tiff", ".tiff": "tiff", ".bmp": "bmp"}


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    kind: str  # "video" or "frames"
    width: int
    height: int
    fps: float
    fps_assumed: bool  # True for frame folders without --fps, or a video without a rate
    n_frames: int | None  # exact for folders; an estimate from the duration for videos

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "kind": self.kind,
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "fps_assumed": self.fps_assumed,
            "frames_estimated": self.n_frames,
        }


def natural_key(name: str) -> list:
    """Sort key that orders digit runs by value: frame2 < frame10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_frames(folder: Path) -> list[Path]:
    """Image files directly in `folder`, in natural order (hidden files skipped)."""
    files = [
        p for p in Path(folder).iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in FRAME_EXTENSIONS
    ]
    return sorted(files, key=lambda p: natural_key(p.name))


def is_video_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS


def _concat_list(files: list[Path]) -> str:
    """A concat-demuxer script listing the images; quotes escaped the way ffmpeg expects."""
    lines = ["ffconcat version 1.0"]
    for f in files:
        escaped = str(f.resolve()).replace("'", "'\\''")
        lines.append(f"file '{escaped}'")
        lines.append("duration 0.04")  # without it, single-image inputs get broken timestamps and are dropped
    return "\n".join(lines) + "\n"


def _ffmpeg_message(err: BaseException) -> str:
    """The most useful line of an imageio-ffmpeg error (ffmpeg's own words, or the OS error)."""
    lines = [
        ln.strip() for ln in str(err).splitlines()
        if ln.strip() and not ln.strip().startswith(("FFMPEG COMMAND", "FFMPEG STDERR OUTPUT", "/", "ffmpeg "))
    ]
    for ln in reversed(lines):
        if any(k in ln for k in ("Error", "Invalid", "No such", "does not contain", "Errno", "Broken pipe")):
            return ln
    return lines[-1] if lines else type(err).__name__


class _Source:
    """ffmpeg input arguments for a path, with a temp concat list for folders."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.list_file: str | None = None
        if not self.path.exists():
            raise InputError(f"{self.path}: no such file or folder. Check the path.")
        if self.path.is_dir():
            self.files = list_frames(self.path)
            if not self.files:
                raise InputError(
                    f"{self.path}: folder holds no frames (.jpg .png .tif .bmp). "
                    "Point to a video file or a folder of images."
                )
            kinds = sorted({_IMAGE_KIND[f.suffix.lower()] for f in self.files})
            if len(kinds) > 1:  # ffmpeg's concat reader cannot switch image decoders mid-stream
                raise InputError(
                    f"{self.path}: folder mixes image formats ({', '.join(kinds)}). "
                    "Convert the frames to one format."
                )
            fd, self.list_file = tempfile.mkstemp(suffix=".ffconcat", prefix="stan-")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(_concat_list(self.files))
            self.kind = "frames"
        else:
            self.files = []
            self.kind = "video"

    def input_args(self) -> tuple[str, list[str]]:
        if self.list_file is not None:
            return self.list_file, ["-f", "concat", "-safe", "0"]
        return str(self.path), []

    def close(self) -> None:
        if self.list_file is not None:
            try:
                os.unlink(self.list_file)
            except OSError:
                pass
            self.list_file = None


def _open(source: _Source, output_params: list[str] | None = None):
    target, input_params = source.input_args()
    # passthrough: every decoded frame exactly once, never duplicated or dropped to fit a rate
    output_params = ["-fps_mode", "passthrough", *(output_params or [])]
    gen = imageio_ffmpeg.read_frames(
        target, pix_fmt="rgb24", input_params=input_params, output_params=output_params
    )
    try:
        meta = next(gen)
    except (OSError, RuntimeError, StopIteration) as err:
        gen.close()
        raise InputError(
            f"{source.path}: ffmpeg cannot read it ({_ffmpeg_message(err)}). "
            "Use a video file ffmpeg can decode, or a folder of images."
        ) from None
    if not meta.get("size") or meta["size"] == (0, 0):
        gen.close()
        raise InputError(f"{source.path}: has no video stream. Use a file with video in it.")
    return gen, meta


def probe(path: Path, fps: float | None = None) -> VideoInfo:
    """Size, frame rate and (estimated) length of a video or frame folder, without decoding it."""
    source = _Source(path)
    try:
        gen, meta = _open(source)
        gen.close()
    finally:
        source.close()
    return _info(source, meta, fps)


def _info(source: _Source, meta: dict, fps: float | None) -> VideoInfo:
    width, height = (int(v) for v in meta["size"])
    if source.kind == "frames":
        rate, assumed = (fps, False) if fps else (DEFAULT_FOLDER_FPS, True)
        n_frames: int | None = len(source.files)
    else:
        native = float(meta.get("fps") or 0.0)
        if fps:
            rate, assumed = fps, False
        elif native > 0 and math.isfinite(native):
            rate, assumed = native, False
        else:
            rate, assumed = DEFAULT_FOLDER_FPS, True
        duration = float(meta.get("duration") or 0.0)
        n_frames = int(round(duration * native)) if duration > 0 and native > 0 else None
    return VideoInfo(source.path, source.kind, width, height, rate, assumed, n_frames)


def read_frames(path: Path, fps: float | None = None) -> tuple[VideoInfo, "FrameStream"]:
    """Open `path` and return its info and a stream of (H, W, 3) uint8 RGB frames.

    Every frame has the size of the first one (ffmpeg scales a folder's odd-sized images to it).
    The stream closes ffmpeg when exhausted or closed; decode errors mid-stream raise
    InputError naming the file. After iteration, `stream.complete` says whether a video gave
    as many frames as its header promised (a truncated file decodes to fewer, silently).
    """
    source = _Source(path)
    try:
        gen, meta = _open(source)
        if source.kind == "frames":  # force one size across the folder's images
            gen.close()
            w, h = meta["size"]
            gen, meta = _open(source, output_params=["-vf", f"scale={w}:{h}"])
    except BaseException:
        source.close()
        raise
    info = _info(source, meta, fps)
    return info, FrameStream(gen, source, info)


class FrameStream:
    """Iterate once over a clip's frames; `count` and `complete` are known afterwards."""

    # A header's duration x rate is an estimate; fewer frames than this share means truncation.
    COMPLETE_SHARE = 0.98

    def __init__(self, gen, source: _Source, info: VideoInfo) -> None:
        self._gen, self._source, self.info = gen, source, info
        self.count = 0
        self.finished = False
        self._it: Iterator[np.ndarray] | None = None
        self._closed = False

    def __iter__(self) -> "FrameStream":
        return self

    def __next__(self) -> np.ndarray:
        if self._closed:
            raise StopIteration
        if self._it is None:
            self._it = self._frames()
        return next(self._it)  # type: ignore[call-overload]

    def _frames(self) -> Iterator[np.ndarray]:
        shape = (self.info.height, self.info.width, 3)
        try:
            for raw in self._gen:
                self.count += 1
                yield np.frombuffer(raw, dtype=np.uint8).reshape(shape)
        except (OSError, RuntimeError) as err:
            raise InputError(
                f"{self._source.path}: decoding failed part-way ({_ffmpeg_message(err)}). "
                "The file may be truncated or corrupt."
            ) from None
        finally:
            self._release()
        self.finished = True
        if self._source.kind == "frames" and self.count != len(self._source.files):
            # ffmpeg skips an image it cannot decode; every later frame would get the wrong index.
            raise InputError(
                f"{self._source.path}: decoded {self.count} of {len(self._source.files)} images; at least one "
                "is unreadable. Remove or replace the corrupt image."
            )

    @property
    def expected(self) -> int | None:
        return self.info.n_frames

    @property
    def complete(self) -> bool:
        """False when a video ended well short of the frame count its header implies."""
        if self.info.kind != "video" or not self.expected:
            return True
        return self.count >= self.COMPLETE_SHARE * self.expected - 2

    def _release(self) -> None:
        self._gen.close()
        self._source.close()

    def close(self) -> None:
        """Stop decoding early (ffmpeg is closed, temp files removed); safe to call twice."""
        it, self._it = self._it, None
        self._closed = True
        if it is not None:
            it.close()  # runs _frames' finally
        self._release()


class VideoWriter:
    """H.264 / yuv420p / faststart MP4 that plays in a browser. Odd sizes are padded by one pixel.

    Writes to a temporary name beside `path` and renames on a clean close, so a crash never
    leaves a half-written file that looks complete.
    """

    def __init__(self, path: Path, width: int, height: int, fps: float) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir() or not os.access(self.path.parent, os.W_OK):
            raise OutputError(f"{self.path}: its folder does not exist or is not writable. Choose a writable location.")
        self.width, self.height = width + width % 2, height + height % 2
        self.tmp = self.path.with_name(f".{self.path.name}.tmp.mp4")
        self.frames_written = 0
        self._gen = imageio_ffmpeg.write_frames(
            str(self.tmp),
            (self.width, self.height),
            fps=fps,
            codec="libx264",
            pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p",
            macro_block_size=1,
            quality=None,
            output_params=["-crf", "23", "-preset", "veryfast", "-movflags", "+faststart"],
        )
        try:
            self._gen.send(None)
        except (OSError, RuntimeError) as err:
            raise OutputError(f"{self.path}: cannot write video ({_ffmpeg_message(err)}).") from None

    def write(self, frame: np.ndarray) -> None:
        h, w = frame.shape[:2]
        if h > self.height or w > self.width:
            raise ValueError(f"frame {w}x{h} is larger than the video {self.width}x{self.height}")
        if (h, w) != (self.height, self.width):
            frame = np.pad(frame, ((0, self.height - h), (0, self.width - w), (0, 0)), mode="edge")
        try:
            self._gen.send(np.ascontiguousarray(frame, dtype=np.uint8))
            self.frames_written += 1
        except (OSError, RuntimeError) as err:
            raise OutputError(
                f"{self.path}: writing video failed ({_ffmpeg_message(err)}). Is the folder writable and the disk not full?"
            ) from None

    def close(self, ok: bool = True) -> None:
        try:
            self._gen.close()
        finally:
            written = ok and self._readable()
            if written:
                os.replace(self.tmp, self.path)
            elif self.tmp.exists():
                self.tmp.unlink()
        if ok and not written:
            raise OutputError(
                f"{self.path}: ffmpeg did not finish the video. Is the folder writable and the disk not full?"
            )

    def _readable(self) -> bool:
        """The file plays back with every frame (imageio-ffmpeg ignores ffmpeg's exit status)."""
        if not self.tmp.exists() or self.tmp.stat().st_size == 0:
            return False
        try:
            frames, _ = imageio_ffmpeg.count_frames_and_secs(str(self.tmp))
        except (OSError, RuntimeError):
            return False
        return frames == self.frames_written

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)
