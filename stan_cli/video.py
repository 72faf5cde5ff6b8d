"""The only place that decodes or encodes media, with the ffmpeg binary imageio-ffmpeg ships.

Frames are streamed one at a time as (H, W, 3) uint8 RGB; a video is never held in memory.
A folder of images is decoded by ONE ffmpeg process through the concat demuxer, in natural
order (2.jpg before 10.jpg), so folders and videos share one code path and one error style.
ffmpeg's log is read as it decodes (`_Decoder`): a damaged image refuses its folder, and a
video decoded from damaged data says which frames (`FrameStream.decode_errors`).

What a frame is, for inputs that are not plain 8-bit RGB (docs/troubleshooting.md, "When something
is wrong"):
- rotation metadata (phone videos): frames come out rotated as a player shows them (ffmpeg's
  autorotation), and `VideoInfo.width`/`height` are the rotated, displayed size;
- 10/12/16-bit video or images are converted to 8 bits per channel by ffmpeg;
- an alpha channel is dropped: the stored colour is used, not composited over a background;
- only the first real video stream is read (`-map 0:V:0`); cover art and thumbnails do not count,
  so a file with audio only is refused as "holds no video stream";
- paths go to ffmpeg as absolute paths in an argument list, never through a shell, so names with
  spaces, non-ASCII letters, a leading dash or a colon are read as names, never as options;
- a named pipe, a device or a socket is refused: ffmpeg would wait on a pipe forever.
"""

from __future__ import annotations

import logging
import math
import os
import re
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from imageio_ffmpeg._parsing import parse_ffmpeg_header

from .errors import InputError, OutputError
from .fileio import OVERLAY_COMMENT, finish_temporary, output_error, remove_quietly, shown, written_by_stan

FRAME_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".mts", ".3gp", ".ogv"}
)
DEFAULT_FOLDER_FPS = 25.0
_IMAGE_KIND = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".tif": "tiff", ".tiff": "tiff", ".bmp": "bmp"}
_FIRST_VIDEO = ["-map", "0:V:0"]  # capital V: video streams that are not cover art or thumbnails
_NO_VIDEO = ("matches no streams", "does not contain any stream")  # ffmpeg's words for "no video stream"
# ffmpeg's words for a file that declares a video stream but ends before any picture of it decodes
_NO_PICTURE = ("Cannot determine format of input", "Could not open encoder before EOF")
_WRITE_ERRORS = ("No space left on device", "Disk quota exceeded", "Permission denied", "Read-only file system")
_NOPTS = -(2**63)  # AV_NOPTS_VALUE, how framecrc prints a packet without a timestamp


class _QuietRotation(logging.Filter):
    """imageio-ffmpeg warns when the decoded size differs from the coded one. For a rotated video
    that is the point (we want frames as displayed), and the warning would be a stray line on the
    user's terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is different from the source frame size" not in record.getMessage()


logging.getLogger("imageio_ffmpeg").addFilter(_QuietRotation())


def ffmpeg_path(path: str | os.PathLike[str]) -> str:
    """A path as ffmpeg must get it: absolute, so "-clip.mp4" is no option and "cam:1.mp4" no protocol."""
    return os.path.abspath(os.fspath(path))


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    kind: str  # "video" or "frames"
    width: int
    height: int
    fps: float
    fps_assumed: bool  # True for frame folders without --fps, or a video without a rate
    n_frames: int | None  # exact for folders; an estimate from the duration for videos
    duration: float | None = None  # a video's duration in its header (all streams), in seconds

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
    """Image files directly in `folder`, in natural order (hidden files and the loss plot of
    `stan train` skipped: see is_stan_output)."""
    return [p for p in _images(folder) if not _is_loss_plot(p)]


def _images(folder: Path) -> list[Path]:
    files = [
        p for p in Path(folder).iterdir()
        if not p.name.startswith(".") and p.suffix.lower() in FRAME_EXTENSIONS and p.is_file()
    ]
    return sorted(files, key=lambda p: natural_key(p.name))


_LOSS_PLOT = ".losses.png"
# What marks a folder stan wrote, and the only images such a folder holds: a training checkpoint
# folder (NAME.safetensors.ckpt, or any name given to --checkpoint-dir), a detect report, an
# explain folder. A folder with any other image in it is the user's, whatever else it holds.
_OUTPUT_FOLDERS = (
    (("log.csv",), {"losses.png"}),
    (("last.safetensors",), {"losses.png"}),
    (("best.safetensors",), {"losses.png"}),
    (("summary.json", "scores.csv"), {"scores.png"}),
    (("explanation.json",), {"panel.png", "real.png", "generated.png", "pixel_loss.png", "guided_backprop.png"}),
)


OVERLAY_VIDEOS = ("overlay_pixel_loss.mp4", "overlay_guided_backprop.mp4")  # the report's two, in detect


def cut_short(path, count: int, expected: int) -> str:
    """What detect and explain say of a video that decoded well short of its header
    (`FrameStream.complete` False) when it stops their work."""
    return f"{path}: decoding ended after {count} of about {expected} frames; the file looks truncated or damaged"


def is_stan_overlay(path: Path) -> bool:
    """An overlay video `stan detect` wrote (a report given a folder of clips as --out): its name,
    then stan's comment in it or the report's summary.json beside it. Never footage: scored or
    trained on, it would teach or flag stan's own heat maps."""
    return path.name in OVERLAY_VIDEOS and written_by_stan(path)


def _is_loss_plot(path: Path) -> bool:
    """NAME.losses.png with NAME.log.csv beside it: the loss plot `stan train` writes beside its
    weights (the two are always written together). The name is checked first: no stat for a frame."""
    name = path.name
    return name.endswith(_LOSS_PLOT) and path.with_name(name[: -len(_LOSS_PLOT)] + ".log.csv").is_file()


def is_stan_output(path: Path) -> bool:
    """Something stan itself wrote, which is never footage, so that training or reporting into
    the footage folder does not make its own output a clip: the loss plot beside trained weights,
    and a folder that holds one of stan's marker files (a checkpoint's log.csv or
    last/best.safetensors, a report's summary.json with scores.csv, an explain folder's
    explanation.json) and no image but the ones stan writes there. A folder of the user's frames
    stays footage whatever else lies in it."""
    if not path.is_dir():
        return _is_loss_plot(path)
    # the markers first: a footage folder has none, and is not listed a second time
    owns = [own for markers, own in _OUTPUT_FOLDERS if all((path / m).is_file() for m in markers)]
    if not owns:
        return False
    images = {p.name for p in _images(path)}
    return any(images <= own for own in owns)


def is_clip(path: Path) -> bool:
    """Is `path`, an entry of a folder of clips, a clip: a video file or a folder of images,
    not hidden and not stan's own output? May raise OSError for an entry it cannot look into."""
    if path.name.startswith("."):
        return False
    if is_video_file(path):
        return not is_stan_overlay(path)
    return path.is_dir() and bool(list_frames(path)) and not is_stan_output(path)


def is_video_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS


def holds_clips(folder: Path) -> bool:
    """Does `folder` hold a clip of its own: a video file or a subfolder of images (hidden skipped)?"""
    return any(is_clip(child) for child in Path(folder).iterdir())


def is_frame_folder(folder: Path) -> bool:
    """One clip as images: a folder with images directly in it and no clip of its own.

    A folder that holds videos or clip folders is a folder of clips even when a stray image
    lies beside them (a thumbnail, the loss plot `stan train` writes beside its weights): the
    images there are not read.
    """
    return bool(list_frames(folder)) and not holds_clips(folder)


def images_beside_clips(folder: Path) -> str | None:
    """The warning for a folder of clips with images lying directly in it, which are not read
    (see is_frame_folder); None when there are none, or for anything that is not such a folder."""
    try:
        if not Path(folder).is_dir() or not holds_clips(folder) or not (n := len(list_frames(folder))):
            return None
    except OSError:  # unreadable: whoever reads it says so
        return None
    return (
        f"{shown(folder)}: {n} image{'s' if n != 1 else ''} lying beside its videos or clip folders "
        f"{'are' if n != 1 else 'is'} not read. To use them as a clip, move them into a subfolder of their own."
    )


_IMAGE_SECONDS = 0.04  # each image's duration in the concat list: image k has the timestamp k x 0.04 s
# A damaged image is refused, not concealed: a truncated or bit-flipped JPEG would otherwise come out
# partly grey or green, be scored, and make a false segment.
_IMAGE_INPUT = ["-err_detect", "explode"]


def _concat_list(files: list[Path]) -> str:
    """A concat-demuxer script listing the images; quotes escaped the way ffmpeg expects."""
    lines = ["ffconcat version 1.0"]
    for f in files:
        escaped = str(f.resolve()).replace("'", "'\\''")
        lines.append(f"file '{escaped}'")
        lines.append(f"duration {_IMAGE_SECONDS}")  # without it, single-image inputs get broken timestamps and are dropped
    return "\n".join(lines) + "\n"


_BANNER = re.compile(r"^(ffmpeg version|built with|configuration:|Copyright|lib\w+\s+\d+\.\s*\d+\.)")


def _ffmpeg_message(err: BaseException) -> str:
    """The most useful line of an ffmpeg error (ffmpeg's own words, or the OS error); never a line
    of its version banner, which says nothing about the cause."""
    lines = [
        ln.strip() for ln in str(err).splitlines()
        if ln.strip() and not ln.strip().startswith(("FFMPEG COMMAND", "FFMPEG STDERR OUTPUT", "/", "ffmpeg ", "=== stderr",
                                                     "Could not load meta information"))
        and not _BANNER.match(ln.strip())
    ]
    for ln in reversed(lines):
        if any(k in ln for k in ("Error", "Invalid", "No such", "does not contain", "Errno", "Broken pipe")):
            return ln
    return lines[-1] if lines else "ffmpeg gave no reason"


def _starts_like_mp4(path: Path) -> bool:
    """An MP4/MOV file's first box is `ftyp` (bytes 4-8), whatever follows; a text file is not."""
    try:
        with open(path, "rb") as f:
            return f.read(12)[4:8] == b"ftyp"
    except OSError:
        return False


class _Source:
    """ffmpeg input arguments for a path, with a temp concat list for folders.

    `first`: a folder's first `first` images are all that ffmpeg is given (`files`); `n_images`
    is the folder's whole count.
    """

    def __init__(self, path: Path, first: int | None = None) -> None:
        self.path = Path(path)
        self.list_file: str | None = None
        try:
            if not self.path.exists():
                if self.path.is_symlink():
                    raise InputError(
                        f"{shown(self.path)}: a link to {shown(os.readlink(self.path))}, which does not exist. "
                        "Point to the file itself, or restore it."
                    )
                raise InputError(f"{shown(self.path)}: no such file or folder. Check the path.")
            mode = self.path.stat().st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                kind = "a named pipe" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket"
                raise InputError(
                    f"{shown(self.path)}: {kind}, not a file: stan reads video files and folders of images (a stream "
                    "would be waited on forever). Record it to a file first."
                )
            is_dir = self.path.is_dir()
            self.files = list_frames(self.path) if is_dir else []
            self.n_images = len(self.files)
        except OSError as err:  # a folder we may not list (or a path we may not look at): no traceback
            raise InputError(
                f"{shown(self.path)}: cannot read it ({err.strerror or err}). Check that it exists and that you may read it."
            ) from None
        if is_dir:
            if not self.files:
                raise InputError(
                    f"{shown(self.path)}: folder holds no frames (.jpg .png .tif .bmp). "
                    "Point to a video file or a folder of images."
                )
            kinds = sorted({_IMAGE_KIND[f.suffix.lower()] for f in self.files})
            if len(kinds) > 1:  # ffmpeg's concat reader cannot switch image decoders mid-stream
                raise InputError(
                    f"{shown(self.path)}: folder mixes image formats ({', '.join(kinds)}). "
                    "Convert the frames to one format."
                )
            if first is not None:  # after the whole folder's format check: refused whatever `first` is
                self.files = self.files[:first]
            fd, self.list_file = tempfile.mkstemp(suffix=".ffconcat", prefix="stan-")
            # surrogateescape: a file name that is not UTF-8 reaches ffmpeg as the bytes it is
            with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as fh:
                fh.write(_concat_list(self.files))
            self.kind = "frames"
        else:
            self.kind = "video"

    def input_args(self) -> tuple[str, list[str]]:
        if self.list_file is not None:
            return self.list_file, [*_IMAGE_INPUT, "-f", "concat", "-safe", "0"]
        return ffmpeg_path(self.path), []

    def close(self) -> None:
        if self.list_file is not None:
            try:
                os.unlink(self.list_file)
            except OSError:
                pass
            self.list_file = None


_LOG_LINE = re.compile(
    r"^(?P<context>(?:\[[^\]]* @ [^\]]*\]\s*)*)\[(?P<level>panic|fatal|error|warning|info|verbose|debug|trace)\] ?(?P<text>.*)$"
)
# Log sources that are not the video decoder: the demuxer and muxer of ffmpeg's own command line,
# its output streams (vost#: "Broken pipe" when we stop reading early), the scaler and the filters.
# Their complaints are about the container or our pipe, not a picture.
_NOT_DECODER = ("in#", "out#", "vost#", "aost#", "sost#", "dost#", "swscaler", "Parsed_", "graph", "AVFilterGraph", "auto_scale")
MAX_DECODE_ERRORS = 200  # decoder complaints kept (each with its frame position); more are only counted


class _Decoder:
    """One ffmpeg decoding a clip to raw RGB frames on a pipe, as imageio_ffmpeg.read_frames does,
    but with its log read by a thread of ours: imageio-ffmpeg keeps only the last lines of the
    log, and what the decoder says about damaged data ("corrupt decoded frame", "error while
    decoding MB ...", concealment) is needed, with where in the clip it came.

    Iterate for the frames (bytes, `frame_bytes` each) after `meta()`; `errors` holds the
    decoder's complaints as (frames handed out when the line came, line). ffmpeg writes a line
    before the frame it is about reaches the pipe, and decodes a few frames ahead (its threads,
    the pipe's buffer), so that position is where the damage starts at the earliest, give or take
    a frame.
    """

    HEADER_TIMEOUT = 300.0  # seconds for ffmpeg to open the input and decode its first frame (a slow mount)

    def __init__(self, target: str, input_params: list[str], output_params: list[str]) -> None:
        cmd = [
            imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-nostats", "-loglevel", "level+info", *input_params,
            "-i", target, "-pix_fmt", "rgb24", "-vcodec", "rawvideo", "-f", "image2pipe", *output_params, "-",
        ]
        self.count = 0
        self.errors: list[tuple[int, str]] = []
        self.n_errors = 0
        self.frame_bytes = 0
        self._header: list[str] = []
        self._tail: list[str] = []
        self._failures: list[str] = []  # what ffmpeg logged as errors: the reason when it fails
        self._header_done = threading.Event()
        self._demuxer: str | None = None
        session = {"start_new_session": True} if os.name == "posix" else {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **session)
        self._log = threading.Thread(target=self._read_log, daemon=True)
        self._log.start()

    def _read_log(self) -> None:
        in_output = False
        for raw in iter(self._proc.stderr.readline, b""):  # type: ignore[union-attr]
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            match = _LOG_LINE.match(line)
            context, level, text = (match["context"], match["level"], match["text"]) if match else ("", "info", line)
            plain = context + text
            self._tail = [*self._tail[-40:], plain]
            if level in ("panic", "fatal", "error") and len(self._failures) < 40:
                self._failures.append(plain)
            if not self._header_done.is_set():
                self._header.append(plain)
                if text.startswith("Input #0, ") and self._demuxer is None:
                    self._demuxer = text[len("Input #0, "):].split(", from ")[0]
                in_output = in_output or text.lstrip().startswith("Output ")
                if in_output and text.lstrip().startswith("Stream ") and " Video:" in text:
                    self._header_done.set()
            if self._from_decoder(context, level, text):  # the first frames' come before the output's header
                self.n_errors += 1
                if len(self.errors) < MAX_DECODE_ERRORS:
                    self.errors.append((self.count, re.sub(r"\[[^\]]* @ [^\]]*\]\s*", "", plain).strip()))
        self._header_done.set()
        self._proc.stderr.close()  # type: ignore[union-attr]

    def _from_decoder(self, context: str, level: str, text: str) -> bool:
        if level not in ("panic", "fatal", "error") and not (level == "warning" and "corrupt" in text):
            return False
        sources = re.findall(r"\[([^\]@]*) @", context)
        return bool(sources) and not any(
            name.startswith(_NOT_DECODER) or (self._demuxer is not None and name.strip() == self._demuxer)
            for name in sources
        )

    def meta(self) -> dict:
        """What imageio_ffmpeg.read_frames yields first (size, fps, duration, ...), once ffmpeg has
        opened the input; OSError with ffmpeg's log when it could not."""
        if not self._header_done.wait(self.HEADER_TIMEOUT):
            self.close()
            raise OSError(f"Error: no frame decoded within {self.HEADER_TIMEOUT:.0f} s")
        if not any(ln.lstrip().startswith("Output ") for ln in self._header):
            self.close()
            self._log.join(2.0)
            raise OSError("Could not load meta information\n=== stderr ===\n" + "\n".join(self._failures or self._tail))
        meta = parse_ffmpeg_header("\n".join(self._header))
        width, height = meta["size"]
        self.frame_bytes = width * height * 3
        return meta

    def __iter__(self) -> Iterator[bytes]:
        stdout = self._proc.stdout
        while True:
            data = stdout.read(self.frame_bytes)  # type: ignore[union-attr]
            if not data:
                return
            if len(data) < self.frame_bytes:
                self._log.join(2.0)
                raise RuntimeError(
                    "End of file reached before full frame could be read.\n=== stderr ===\n"
                    + "\n".join(self._failures or self._tail)
                )
            self.count += 1
            yield data

    def finish(self) -> None:
        """After the last frame: wait for ffmpeg and its log, so that `errors` is complete."""
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            self._proc.kill()
        self._log.join(5.0)

    def close(self) -> None:
        """Stop ffmpeg (it is killed unless it ends at once); safe to call twice."""
        for pipe in (self._proc.stdout,):
            try:
                pipe.close()  # type: ignore[union-attr]
            except OSError:  # pragma: no cover
                pass
        if self._proc.poll() is None:
            try:
                self._proc.wait(timeout=1.5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


def _open(source: _Source, output_params: list[str] | None = None) -> tuple[_Decoder, dict]:
    target, input_params = source.input_args()
    # passthrough: every decoded frame exactly once, never duplicated or dropped to fit a rate
    output_params = [*_FIRST_VIDEO, "-fps_mode", "passthrough", *(output_params or [])]
    try:
        decoder = _Decoder(target, input_params, output_params)
    except OSError as err:
        raise InputError(f"{shown(source.path)}: cannot start ffmpeg to read it ({err.strerror or err}).") from None
    try:
        meta = decoder.meta()
    except (OSError, RuntimeError, ValueError, IndexError, AttributeError) as err:
        decoder.close()
        if any(words in str(err) for words in _NO_VIDEO):
            raise InputError(
                f"{shown(source.path)}: holds no video stream (audio only, or just a cover image). "
                "Use a file with video in it."
            ) from None
        if "moov atom not found" in str(err) and _starts_like_mp4(source.path):  # its index, written last, never was
            raise InputError(
                f"{shown(source.path)}: its index (the MP4 'moov' atom) is missing, so no frame of it can be read: a "
                "recording or copy that stopped before the end, or a damaged file. Copy it again from the "
                "source, or rebuild the index with an MP4 repair tool."
            ) from None
        if any(words in str(err) for words in _NO_PICTURE):  # a stream is declared, no picture of it decodes
            raise InputError(
                f"{shown(source.path)}: ffmpeg finds its video stream but no picture of it that decodes before the "
                "end of the file: a recording or copy that stopped early, or a damaged file. Copy it again from the "
                "source, or use an undamaged copy."
            ) from None
        raise InputError(
            f"{shown(source.path)}: ffmpeg cannot read it ({_ffmpeg_message(err)}). "
            "Use a video file ffmpeg can decode, or a folder of images."
        ) from None
    if not meta.get("size") or meta["size"] == (0, 0):
        decoder.close()
        raise InputError(f"{shown(source.path)}: holds no video stream. Use a file with video in it.")
    return decoder, meta


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
        n_frames: int | None = source.n_images
        duration: float | None = None
    else:
        native = float(meta.get("fps") or 0.0)
        if fps:
            rate, assumed = fps, False
        elif native > 0 and math.isfinite(native):
            rate, assumed = native, False
        else:
            rate, assumed = DEFAULT_FOLDER_FPS, True
        duration = float(meta.get("duration") or 0.0)
        duration = duration if duration > 0 else None
        n_frames = int(round(duration * native)) if duration and native > 0 else None
    return VideoInfo(source.path, source.kind, width, height, rate, assumed, n_frames, duration)


def fitted_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) scaled to at most `max_side` on the longer side, aspect kept, both even (as
    H.264 in yuv420p needs); unchanged when it fits already or max_side is None."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(2, 2 * int(width * scale / 2)), max(2, 2 * int(height * scale / 2))  # rounded down: never past max_side


def read_frames(path: Path, fps: float | None = None, *, first: int | None = None,
                max_side: int | None = None) -> tuple[VideoInfo, "FrameStream"]:
    """Open `path` and return its info and a stream of (H, W, 3) uint8 RGB frames.

    Every frame has the size of the first one (ffmpeg scales a folder's odd-sized images to it).
    The stream closes ffmpeg when exhausted or closed; decode errors mid-stream raise
    InputError naming the file. After iteration, `stream.complete` says whether a video gave
    as many frames as its header promised (a truncated file decodes to fewer, silently).

    `first`: stop after that many frames. A folder's later images are not even given to ffmpeg,
    so the check that no image was skipped (which would shift every later frame's index) covers
    exactly the frames read, and runs when the stream ends: read it to the end, not just `first`
    frames, to have that check. `info` still describes the whole clip.

    `max_side`: frames larger than that on their longer side come scaled down by ffmpeg (area
    averaging; `fitted_size`), and `info` gives that size: for pictures drawn for people (the
    overlay videos), never for scoring.
    """
    if first is not None and first < 1:
        raise ValueError(f"first={first}: read at least one frame")
    source = _Source(path, first)
    try:
        gen, meta = _open(source)
        w, h = meta["size"]
        size = fitted_size(w, h, max_side)
        if source.kind == "frames" or size != (w, h):  # one size across a folder's images; or smaller
            gen.close()
            flags = ":flags=area" if size != (w, h) else ""
            gen, meta = _open(source, output_params=["-vf", f"scale={size[0]}:{size[1]}{flags}"])
    except BaseException:
        source.close()
        raise
    info = _info(source, meta, fps)
    return info, FrameStream(gen, source, info, first)


def _packets(path: Path, maps: list[str], *, quiet: bool = False) -> dict[int, tuple[tuple[int, int], list[tuple[int, int, int, bool]]]] | None:
    """The packets of the streams `maps` selects, by demuxing only (`ffmpeg -c copy -f framecrc`,
    no decoding: one read of the file): {output stream: ((time base num, den), [(dts, pts,
    duration, keyframe), ...] in decoding order)}. None for a frame folder, when ffmpeg fails, and when
    framecrc writes a line we cannot read (then nothing from it is trusted); with `quiet`, also
    when ffmpeg reports any error while demuxing (a cut file: "partial file", "File ended
    prematurely"), which a whole file never gives."""
    path = Path(path)
    if not path.is_file():
        return None
    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error",
        "-i", ffmpeg_path(path), *maps, "-c", "copy", "-f", "framecrc", "-",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    except OSError:
        return None
    if proc.returncode != 0 or (quiet and proc.stderr.strip()):
        return None
    streams: dict[int, tuple[tuple[int, int], list[tuple[int, int, int, bool]]]] = {}
    try:
        for line in proc.stdout.splitlines():
            if line.startswith("#tb "):
                index, _, rate = line[4:].partition(":")
                num, _, den = rate.strip().partition("/")
                if int(den) == 0:
                    return None
                streams[int(index)] = ((int(num), int(den)), [])
            elif line and not line.startswith("#"):
                # stream, dts, pts, duration, size, hash[, F=0xFLAGS when not just "key"][, side data...]
                fields = line.split(",")
                index, dts, pts, duration = (int(field) for field in fields[:4])
                flags = next((int(f.strip()[2:], 16) for f in fields[6:] if f.strip().startswith("F=")), 1)
                streams[index][1].append((dts, pts, duration, bool(flags & 1)))
    except (ValueError, KeyError):  # a line framecrc never writes, or a packet of an unnamed stream
        return None
    return streams


def frame_timestamps(path: Path) -> np.ndarray | None:
    """Presentation times of a video's frames in seconds from the first, sorted into display order.

    Read from the container's packet timestamps (`_packets`: demuxing only). Packets come in
    decoding order, which B-frames make differ from display order, so the times are sorted: the
    result never decreases, and two packets with one timestamp show up as a repeated value. None
    for a frame folder, when ffmpeg fails, and when any packet has no timestamp (AVI; MPEG
    program streams with B-frames), so callers fall back to frame index / fps, which is exact for
    such constant-rate files.
    """
    streams = _packets(path, _FIRST_VIDEO)
    if not streams or 0 not in streams or not streams[0][1]:
        return None
    (num, den), packets = streams[0]
    pts = [packet[1] for packet in packets]
    if _NOPTS in pts:
        return None
    ticks = np.sort(np.asarray(pts, dtype=np.int64))
    return (ticks - ticks[0]).astype(np.float64) * num / den


DECODE_LEAD = 32  # frames ffmpeg may decode ahead of the pipe (its frame threads and queues)


def _runs(positions: list[int]) -> list[tuple[int, int]]:
    """Sorted positions as inclusive runs: [3, 4, 5, 9] -> [(3, 5), (9, 9)]."""
    runs: list[tuple[int, int]] = []
    for k in sorted(positions):
        if runs and k == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], k)
        else:
            runs.append((k, k))
    return runs


def concealed_frames(path: Path) -> list[int] | None:
    """The frames (0-based) a decoder patched up: the video decoded twice at once, with error
    concealment and without (`-ec 0`), and each frame's CRC compared. None when a pass fails or
    the two disagree in length."""
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    procs = []
    try:
        for ec in ([], ["-ec", "0"]):
            cmd = [exe, "-hide_banner", "-nostdin", "-loglevel", "quiet", *ec, "-i", ffmpeg_path(path), *_FIRST_VIDEO,
                   "-fps_mode", "passthrough", "-f", "framecrc", "-"]
            procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL))
        outputs = [proc.communicate()[0].decode("ascii", "replace") for proc in procs]
    except OSError:
        return None
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    crcs = [[ln.split(",")[5].strip() for ln in text.splitlines() if ln and not ln.startswith("#") and ln.count(",") >= 5]
            for text in outputs]
    if len(crcs[0]) != len(crcs[1]):
        return None
    return [k for k, (a, b) in enumerate(zip(*crcs)) if a != b]


def keyframes(path: Path) -> list[int] | None:
    """Positions (0-based, display order) of a video's keyframes, from its packets (`_packets`);
    None when they cannot be read or matched to frames (a packet without a timestamp)."""
    streams = _packets(path, _FIRST_VIDEO)
    if not streams or 0 not in streams or not streams[0][1]:
        return None
    packets = streams[0][1]
    if any(pts == _NOPTS for _, pts, _, _ in packets):
        return None
    order = sorted(range(len(packets)), key=lambda k: packets[k][1])
    return [position for position, k in enumerate(order) if packets[k][3]]


def packet_extent(path: Path) -> tuple[int, float] | None:
    """(packets of the video stream, seconds from the earliest packet of the video and audio
    streams to the end of the latest), by demuxing only; None when that cannot be read.

    What a file really holds, to check a header's frame estimate against: that estimate is the
    container's duration (which counts the audio, often longer than the video) times the nominal
    frame rate (which overstates variable-rate footage), so it alone cannot tell a cut-off file
    from such a whole one. None as well when ffmpeg reports an error while demuxing: a file cut
    in its video but not in an audio track stored ahead of it would otherwise still reach the
    header's duration."""
    streams = _packets(path, [*_FIRST_VIDEO, "-map", "0:a?"], quiet=True)
    if not streams or 0 not in streams:
        return None
    starts, ends = [], []
    for (num, den), packets in streams.values():
        for dts, pts, duration, _ in packets:
            stamp = pts if pts != _NOPTS else dts
            if stamp == _NOPTS:
                continue
            starts.append(stamp * num / den)
            ends.append((stamp + max(duration, 0)) * num / den)
    if not starts:
        return None
    return len(streams[0][1]), max(ends) - min(starts)


def frame_times(info: VideoInfo, n_frames: int, fps: float | None = None, *,
                decoded_all: bool = True) -> tuple[np.ndarray, str]:
    """Seconds of the first `n_frames` decoded frames, and where they come from.

    The one rule for `time_s`, shared by `detect` and `explain`. A video's own timestamps (so
    variable-frame-rate footage gets true times), unless `fps` was given (the user's rate wins),
    the input is a frame folder, or the timestamps cannot be matched to the decoded frames one to
    one; then frame index / fps. What is checked: some packet has no timestamp (see
    frame_timestamps); two frames share a timestamp (the times come sorted, so a repeat is the
    only disorder left to find); their number differs from the frames decoded (a damaged file).

    `decoded_all=False` is for a caller that stopped decoding after `n_frames` frames (`explain`
    decodes only up to the frame it explains plus 5): it cannot know the clip's length, so the
    count check becomes "at least `n_frames` timestamps". The other checks look at all of the
    timestamps either way, so `detect` and `explain` give a frame the same time, except on a
    damaged video whose decodable frames and timestamps differ in number: there `detect` uses
    frame index / fps and `explain` may still use the frame's timestamp.
    """
    if info.kind == "video" and fps is None:
        stamps = frame_timestamps(info.path)
        if stamps is not None:
            counted = len(stamps) == n_frames if decoded_all else len(stamps) >= n_frames
            distinct = len(stamps) < 2 or bool(np.all(np.diff(stamps) > 0))  # sorted: only repeats can fail
            if counted and distinct:
                return stamps[:n_frames], "timestamps"
    return np.arange(n_frames, dtype=np.float64) / info.fps, "frame index / fps"


# Leading bytes of the image formats a frame folder may hold (ffmpeg's image2 demuxer).
_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*")


def _not_images(files: list[Path]) -> list[Path]:
    """Files whose first bytes are no image signature: names for the error when ffmpeg skipped some.

    Reads 8 bytes a file, only after a count mismatch; a truncated image with a valid header is
    not found this way, and the error then says only how many were lost.
    """
    bad = []
    for f in files:
        try:
            with open(f, "rb") as fh:
                head = fh.read(8)
        except OSError:
            bad.append(f)
            continue
        if not head.startswith(_IMAGE_SIGNATURES):
            bad.append(f)
    return bad


def _decoded_images(files: list[Path]) -> set[int] | None:
    """Which of a folder's images ffmpeg decodes (0-based positions), when some did not: one more
    pass over the folder that keeps each decoded image's timestamp (the concat list gives image k
    the time k x 0.04 s). None when that pass cannot be run or read."""
    fd, listing = tempfile.mkstemp(suffix=".ffconcat", prefix="stan-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as fh:
            fh.write(_concat_list(files))
        cmd = [
            imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "quiet", *_IMAGE_INPUT,
            "-f", "concat", "-safe", "0", "-i", listing, *_FIRST_VIDEO, "-fps_mode", "passthrough",
            "-vf", "scale=8:8", "-f", "framecrc", "-",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    except OSError:
        return None
    finally:
        remove_quietly(Path(listing))
    tb, positions = None, set()
    try:
        for line in proc.stdout.splitlines():
            if line.startswith("#tb 0:"):
                num, _, den = line[6:].strip().partition("/")
                tb = int(num) / int(den)
            elif line.startswith("0,") and tb is not None:
                positions.add(round(int(line.split(",")[2]) * tb / _IMAGE_SECONDS))
    except (ValueError, ZeroDivisionError):
        return None
    return positions if tb is not None else None


class FrameStream:
    """Iterate once over a clip's frames; `count` and `complete` are known afterwards."""

    # A header's duration x rate is an estimate; fewer frames than this share means truncation.
    COMPLETE_SHARE = 0.98

    def __init__(self, gen, source: _Source, info: VideoInfo, first: int | None = None) -> None:
        self._gen, self._source, self.info, self.first = gen, source, info, first
        self.count = 0
        self.finished = False
        self._extent: tuple[int, float] | None = None
        self._damage: list[int] | None = None
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
                if self.count == self.first:  # before asking ffmpeg for one more
                    break
            else:
                self._gen.finish()  # the whole clip: ffmpeg's log is complete
        except (OSError, RuntimeError) as err:
            raise InputError(
                f"{shown(self._source.path)}: decoding failed part-way ({_ffmpeg_message(err)}). "
                "The file may be truncated or corrupt."
            ) from None
        finally:
            self._release()
        self.finished = True
        if self._source.kind == "frames":
            self._check_images()

    def _check_images(self) -> None:
        """A frame folder decodes every image, undamaged. ffmpeg skips an image it cannot decode
        (every later frame would get the wrong index) and, unless told to refuse (`-err_detect
        explode`, which video.py gives it for folders), conceals a damaged one (a truncated or
        bit-flipped JPEG comes out partly grey or green) and only says so in its log. Either way
        the folder is refused, naming the images when they can be found."""
        files = self._source.files
        given = len(files)
        if self.count == given and not self._gen.errors:
            return
        of = f"the first {given}" if given < self._source.n_images else str(given)
        said = f"; ffmpeg: {self._gen.errors[0][1]}" if self._gen.errors else ""
        if self.count != given:
            decoded = _decoded_images(files)
            not_images = set(_not_images(files))
            # ffmpeg stops at a file that is no image (an empty one, say): the images after it were
            # not reached, not found damaged, so only those before it can be called damaged
            stop = min((k for k, f in enumerate(files) if f in not_images), default=given)
            bad = sorted(not_images) if decoded is None else [
                f for k, f in enumerate(files) if f in not_images or (k not in decoded and k < stop)]
            named = [f"{shown(f.name)} {'not an image' if f in not_images else 'damaged'}" for f in bad[:3]]
            which = f" ({', '.join(named)}{', ...' if len(bad) > 3 else ''})" if bad else ""
            raise InputError(
                f"{shown(self._source.path)}: decoded {self.count} of {of} images; at least one is unreadable"
                f"{which}{said}. Remove or replace the corrupt image."
            )
        near = sorted({min(position, given - 1) for position, _ in self._gen.errors})
        which = ", ".join(shown(files[k].name) for k in near[:3]) + (", ..." if len(near) > 3 else "")
        raise InputError(
            f"{shown(self._source.path)}: damaged image data (about {which}){said}; ffmpeg could only conceal it, "
            "and a damaged frame would be scored as an anomaly. Remove or replace the corrupt image."
        )

    @property
    def complaints(self) -> list[str]:
        """What the decoder has said about damaged data so far (distinct lines, "corrupt" ones first)."""
        lines = list(dict.fromkeys(text for _, text in self._gen.errors))
        return sorted(lines, key=lambda text: "corrupt" not in text)

    @property
    def decode_errors(self) -> dict | None:
        """What ffmpeg's decoder said about damaged data in a video read to its end: None when
        nothing, else {"count": its complaints, "frames": [[first, last], ...] (0-based,
        inclusive runs of frames that show the damage), "exact": how they were found,
        "messages": a few distinct complaints}.

        ffmpeg's log names no frame, so the damaged frames are found by decoding the file twice
        more, with and without error concealment (`concealed_frames`): the frames that differ
        are those the decoder patched up, and those predicted from them up to the next keyframe.
        A decoder that conceals nothing (some codecs) gives no difference; then the run is where
        the damage can be: from the keyframe at or before the frame reached when the first
        complaint was logged to the keyframe after the last complaint plus the decoder's lead
        (ffmpeg decodes ahead of the pipe)."""
        errors = self._gen.errors
        if not errors or not self.finished or self.info.kind != "video" or not self.count:
            return None
        if self._damage is None:
            runs = _runs(concealed_frames(self.info.path) or [])
            self._damage = (runs, True) if runs else (self._damage_estimate(), False)
        messages = list(dict.fromkeys(text for _, text in errors))
        return {"count": self._gen.n_errors, "frames": [list(r) for r in self._damage[0]], "exact": self._damage[1],
                "messages": messages[:3]}

    def _damage_estimate(self) -> list[tuple[int, int]]:
        """From the keyframe at or before the frame reached when the first complaint was read, to
        the keyframe after the last complaint plus the decoder's lead. The start is a keyframe
        because the position is read late when our log thread waits for the CPU (a busy machine):
        the damaged frame can then lie a few frames before it, and damage starts no earlier than
        its own keyframe. (A log read later than a whole group of pictures can still miss it.)"""
        errors, last_frame = self._gen.errors, self.count - 1
        keys = keyframes(self.info.path) or []
        reached, last = min(errors[0][0], last_frame), errors[-1][0] + DECODE_LEAD
        first = max((k for k in keys if k <= reached), default=reached)
        end = next((k - 1 for k in keys if k > last), last_frame)
        return [(first, max(first, min(end, last_frame)))]

    @property
    def expected(self) -> int | None:
        return self.info.n_frames

    @property
    def complete(self) -> bool:
        """False when a video ended well short of what the file holds.

        First against the header's estimate (duration x rate); when the frames fall short of it,
        against the file's packets (`packet_extent`, one more read of the file, without
        decoding): complete when about as many frames decoded as the video stream has packets
        and the streams run to about the header's duration. So variable-rate footage and a
        recording whose audio outlasts its video are complete, while a file cut off part-way
        (its streams end early, or ffmpeg reports the cut) or one whose frames fail to decode
        is not."""
        if self.info.kind != "video" or not self.expected or self.count == self.first:
            return True
        share = self.COMPLETE_SHARE
        if self.count >= share * self.expected - 2:
            return True
        if self._extent is None:  # read once: the file does not change under us
            self._extent = packet_extent(self.info.path) or (0, 0.0)
        packets, seconds = self._extent
        if not packets or not self.info.duration:
            return False
        slack = 2 * self.info.duration / self.expected  # two frames at the native rate (not --fps)
        return self.count >= share * packets - 2 and seconds >= share * self.info.duration - slack

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

    yuv420p stores colour per 2 x 2 block, so H.264 needs even sizes: an odd width or height is
    made even by repeating the last column or row (`width`/`height` say the written size; the
    picture itself is never scaled or cropped). Writes to a temporary name beside `path` and
    renames on a clean close (or, inside fileio.staged, at the end of the run), so a crash or a
    full disk never leaves a half-written file that looks complete.

    ffmpeg (imageio-ffmpeg's binary) runs as our own process rather than through
    imageio_ffmpeg.write_frames, which lets ffmpeg print to the user's terminal: its log goes to a
    temporary file instead, and its last error ("No space left on device") becomes part of one
    OutputError line.
    """

    def __init__(self, path: Path, width: int, height: int, fps: float) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir() or not os.access(self.path.parent, os.W_OK):
            raise OutputError(f"{shown(self.path)}: its folder does not exist or is not writable. Choose a writable location.")
        self.width, self.height = width + width % 2, height + height % 2
        self.tmp = self.path.with_name(f".{self.path.name}.tmp.mp4")
        self.frames_written = 0
        self._closed = False
        cmd = [
            imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{self.width}x{self.height}", "-r", f"{fps:.6g}", "-i", "-",
            "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "23", "-preset", "veryfast",
            "-metadata", f"comment={OVERLAY_COMMENT}", "-movflags", "+faststart", ffmpeg_path(self.tmp),
        ]
        self._log = tempfile.TemporaryFile()
        # its own session: Ctrl-C reaches Python, which then stops ffmpeg and removes the temporary
        session = {"start_new_session": True} if os.name == "posix" else {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log, **session)
        except OSError as err:
            self._log.close()
            raise OutputError(f"{shown(self.path)}: cannot start ffmpeg to write the video ({err.strerror or err}).") from None

    def write(self, frame: np.ndarray) -> None:
        h, w = frame.shape[:2]
        if h > self.height or w > self.width:
            raise ValueError(f"frame {w}x{h} is larger than the video {self.width}x{self.height}")
        if (h, w) != (self.height, self.width):
            frame = np.pad(frame, ((0, self.height - h), (0, self.width - w), (0, 0)), mode="edge")
        try:
            self._proc.stdin.write(np.ascontiguousarray(frame, dtype=np.uint8).data)  # type: ignore[union-attr]
            self.frames_written += 1
        except OSError:  # ffmpeg has gone (a full disk, an unwritable folder): its log says why
            self._stop(kill=False)
            raise self._failure("writing the video failed") from None

    def _stop(self, kill: bool) -> int:
        """End ffmpeg: let it finish the file, or kill it; returns its exit status."""
        try:
            self._proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        if kill:
            self._proc.kill()
        try:
            return self._proc.wait(timeout=None if not kill else 10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            return -1

    def _reason(self) -> str:
        """ffmpeg's most telling log line, without its "[mp4 @ 0x...]" prefix."""
        try:
            self._log.seek(0)
            text = self._log.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return "ffmpeg stopped"
        lines = [re.sub(r"^(\[[^]]*\]\s*)+", "", ln).strip() for ln in text.splitlines()]
        lines = [ln for ln in lines if ln]
        for known in _WRITE_ERRORS:  # the operating system's words say it best
            if any(known in ln for ln in lines):
                return known
        return f"ffmpeg: {lines[-1]}" if lines else "ffmpeg stopped"

    def _failure(self, what: str) -> OutputError:
        reason = self._reason()
        if reason in ("No space left on device", "Disk quota exceeded"):
            advice = "The disk is full: free some space (or choose --out on another disk) and run again."
        else:
            advice = "Check that the disk has free space and the folder is writable."
        return OutputError(f"{shown(self.path)}: {what} ({reason}). {advice}")

    def close(self, ok: bool = True) -> None:
        """Finish the video (ok) or abandon it; safe to call twice.

        Whatever happens here (a failed check, a full disk, Ctrl-C while ffmpeg finishes), ffmpeg
        has ended and the temporary is gone on the way out, unless it was handed over complete:
        renamed onto `path`, or held by fileio.staged, which renames or removes it.
        """
        if self._closed:
            return
        self._closed = True
        handed_over = False
        try:
            if self._proc.poll() is None or not self._proc.stdin.closed:  # type: ignore[union-attr]
                status = self._stop(kill=not ok)
            else:
                status = self._proc.returncode
            written = ok and status == 0 and self._readable()
            if written:
                try:
                    finish_temporary(self.tmp, self.path)
                except OSError as err:
                    raise output_error(self.path, err) from err
                handed_over = True
            if ok and not written:
                raise self._failure("ffmpeg did not finish the video")
        finally:
            if not handed_over:
                if self._proc.poll() is None:  # interrupted before ffmpeg ended: it must not write on
                    self._stop(kill=True)
                remove_quietly(self.tmp)
            self._log.close()

    def _readable(self) -> bool:
        """The file plays back with every frame."""
        if not self.tmp.exists() or self.tmp.stat().st_size == 0:
            return False
        try:
            frames, _ = imageio_ffmpeg.count_frames_and_secs(ffmpeg_path(self.tmp))
        except (OSError, RuntimeError):
            return False
        return frames == self.frames_written

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)
