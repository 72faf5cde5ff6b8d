"""Issue #7: every bad input gets one clear error, and nothing a user has is lost.

Each case of the "When something is wrong" table (docs/troubleshooting.md) that no other test
file covers is checked here. Every input is made on the fly with the ffmpeg binary that
imageio-ffmpeg ships, called with an argument list (never a shell), and kept tiny so the whole
file runs in seconds.
A user's mistake must give exit code 1, exactly one `error: ...` line naming the file, no
traceback, and leave no partial or overwritten output behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_clip
from stan_cli import detect as detect_module
from stan_cli import fileio, heatmaps, report
from stan_cli.cli import app
from stan_cli.detect import OVERLAY_GUIDED, OVERLAY_PIXEL, REPORT_FILES, detect
from stan_cli.errors import InputError, OutputError
from stan_cli.explain import explain
from stan_cli.video import VideoWriter, frame_timestamps, probe, read_frames
from stan_cli.windows import to_grey_square

runner = CliRunner()
FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


# ------------------------------------------------------------------------------------ helpers


def ffmpeg(*args: str | Path, stdin: bytes | None = None) -> None:
    """Run the bundled ffmpeg with an argument list (no shell); fail the test on an error."""
    proc = subprocess.run(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-nostats", "-y", *(str(a) for a in args)],
        input=stdin, capture_output=True,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")


def encode(path: Path, frames: np.ndarray, *codec: str, pix_fmt: str = "rgb24", fps: float = 10,
           before: tuple[str, ...] = ()) -> Path:
    """Raw frames (N, H, W, C) piped into ffmpeg and encoded with the given output options."""
    n, h, w = frames.shape[:3]
    ffmpeg(*before, "-f", "rawvideo", "-pix_fmt", pix_fmt, "-s", f"{w}x{h}", "-r", str(fps), "-i", "-",
           *codec, path, stdin=np.ascontiguousarray(frames).tobytes())
    return path


def h264(path: Path, frames: np.ndarray, *extra: str, fps: float = 10) -> Path:
    return encode(path, frames, "-c:v", "libx264", "-preset", "veryfast", "-crf", "12", "-pix_fmt", "yuv420p",
                  *extra, fps=fps)


def image(path: Path, pixels: np.ndarray, pix_fmt: str) -> Path:
    """One image file (PNG, format from the name) from raw pixels in `pix_fmt`."""
    h, w = pixels.shape[:2]
    ffmpeg("-f", "rawvideo", "-pix_fmt", pix_fmt, "-s", f"{w}x{h}", "-i", "-", "-frames:v", "1",
           "-update", "1", path, stdin=np.ascontiguousarray(pixels).tobytes())
    return path


def run(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_error(result, *fragments: str) -> str:
    """Exit 1, no traceback, exactly one `error:` line on stderr (besides any progress bar) holding
    every fragment, nothing on stdout; returns the error line."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    assert result.stdout.strip() == ""
    return errors[0]


def full_disk_at(monkeypatch, name: str | None = None) -> None:
    """Make the report writer hit ENOSPC on `name` (every file when None) after writing half of it,
    the way a real full disk fails: inside the atomic write, with a partial temporary on disk."""
    real = report.atomic_write_bytes

    def writer(path, data):
        if name is not None and Path(path).name != name:
            return real(path, data)
        with report.atomic_path(path) as tmp:
            tmp.write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))

    monkeypatch.setattr(report, "atomic_write_bytes", writer)


def listing(folder: Path) -> dict[str, bytes]:
    """Every file in a folder (hidden ones included) with its content."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def clip16(tmp_path) -> Path:
    """A 16-frame 64 x 48 H.264 clip."""
    return h264(tmp_path / "clip16.mp4", make_clip(n=16))


# ---------------------------------------------------------------- 1. a file with no video stream


def _audio_only(folder: Path, kind: str) -> Path:
    tone = ["-f", "lavfi", "-i", "sine=frequency=440:duration=1"]
    if kind == "aac.m4a":
        ffmpeg(*tone, "-c:a", "aac", folder / "song.m4a")
        return folder / "song.m4a"
    if kind == "aac.mp4":
        ffmpeg(*tone, "-c:a", "aac", folder / "song.mp4")
        return folder / "song.mp4"
    if kind == "pcm.mov":
        ffmpeg(*tone, "-c:a", "pcm_s16le", folder / "song.mov")
        return folder / "song.mov"
    # an audio file with cover art: ffmpeg calls the picture a video stream, but it is not footage
    ffmpeg(*tone, "-c:a", "aac", folder / "plain.m4a")
    image(folder / "cover.png", np.full((48, 64, 3), 200, np.uint8), "rgb24")
    ffmpeg("-i", folder / "plain.m4a", "-i", folder / "cover.png", "-map", "0", "-map", "1", "-c", "copy",
           "-disposition:v:0", "attached_pic", folder / "album.m4a")
    return folder / "album.m4a"


@pytest.mark.parametrize("kind", ["aac.m4a", "aac.mp4", "pcm.mov", "cover-art.m4a"])
def test_audio_only_file_holds_no_video_stream(tmp_path, tiny_weights, kind):
    audio = _audio_only(tmp_path, kind)
    out = tmp_path / "report"
    line = assert_one_error(run("detect", audio, "--out", out, "--weights", tiny_weights), str(audio), "holds no video stream")
    assert "ffmpeg" not in line.lower()  # our words, not ffmpeg's
    assert not out.exists()
    with pytest.raises(InputError, match="holds no video stream"):
        probe(audio)


# ------------------------------------------------------------------------------ 2. 4K footage

_MEMORY_SCRIPT = r"""
import json, resource, sys
import numpy as np
from stan_cli import overlay
from stan_cli.detect import detect
from stan_cli.weights import load_weights

video, weights, out = sys.argv[1:4]
model = load_weights(weights)
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB
base = peak()
result = detect(video, out=out, weights=model, device="cpu", write_video=False)
after_detect = peak()
# the overlay pass draws each 4K frame with its heat map: one frame at a time, in bands
frame = np.full((2160, 3840, 3), 90, np.uint8)
strip = overlay.score_strip(3840, 270, np.linspace(0, 1, 13), 6, 0.5)
composed = overlay.compose_frame(frame, np.random.default_rng(0).random((112, 112)), "6  0.6S", True, strip)
print(json.dumps({"frames": result.n_frames, "detect_growth": after_detect - base, "total_growth": peak() - base,
                  "composed": list(composed.shape)}))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss units differ by platform")
def test_4k_video_is_streamed_and_memory_stays_bounded(tmp_path, tiny_weights):
    """13 frames of 3840 x 2160. Frames are decoded one at a time and shrunk to 224 x 224 as they
    arrive; a batch of 4K frames as float32 would be 1.8 GB (what the first version did)."""
    video = tmp_path / "uhd.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=3840x2160:rate=10", "-frames:v", "13",
           "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", video)
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(video), str(tiny_weights), str(out)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    assert measured["frames"] == 13
    assert measured["composed"] == [2160 + 270, 3840, 3]
    assert measured["detect_growth"] < 1.0e9, measured  # about 0.2 GB here; 2.3 GB before streaming
    assert measured["total_growth"] < 1.0e9, measured  # the 4K overlay frame: about 0.1 GB
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["input"]["width"], summary["input"]["height"]) == (3840, 2160)


# ------------------------------------------------------------------------ 3. odd frame sizes


def test_odd_size_video_gets_an_even_overlay_with_the_picture_unscaled(tmp_path, tiny_weights):
    """359 x 241: H.264 in yuv420p needs even sizes, so the overlay is 360 wide and its height
    (241 + the score strip) is rounded up to even by repeating the last column and row."""
    frames = make_clip(n=16, height=241, width=359)
    video = encode(tmp_path / "odd.mp4", frames, "-c:v", "libx264", "-crf", "8", "-pix_fmt", "yuv444p")
    out = tmp_path / "report"
    result = run("detect", video, "--out", out, "--weights", tiny_weights, "--device", "cpu")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["input"]["width"], summary["input"]["height"]) == (359, 241)
    strip = max(24, 241 // 8)
    for name in (OVERLAY_PIXEL, OVERLAY_GUIDED):
        info, stream = read_frames(out / name)
        got = list(stream)
        assert len(got) == 16
        assert (info.width, info.height) == (360, 241 + strip + (241 + strip) % 2)
        first = got[0].astype(int)  # frame 0 is unscored: no heat, just the label top-left
        picture = first[40:241, :359]  # below the label
        assert np.abs(picture - frames[0, 40:241].astype(int)).mean() < 4  # not scaled, not shifted
        assert np.abs(first[:241, 359] - first[:241, 358]).mean() < 8  # padding repeats the edge


def test_odd_size_frame_folder(tmp_path, tiny_weights):
    folder = tmp_path / "frames"
    folder.mkdir()
    for t, frame in enumerate(make_clip(n=12, height=33, width=45)):
        image(folder / f"{t}.png", frame, "rgb24")
    result = detect(folder, out=tmp_path / "r", weights=tiny_weights, device="cpu")
    assert result.n_frames == 12 and (result.info.width, result.info.height) == (45, 33)
    info = probe(tmp_path / "r" / OVERLAY_PIXEL)
    assert info.width == 46 and info.height % 2 == 0


# ------------------------------------------------------------------------ 4. rotation metadata


def test_rotated_video_is_decoded_as_a_player_shows_it(tmp_path, tiny_weights, caplog):
    """A phone video stored 64 x 48 with display rotation 90 (anticlockwise) is shown 48 x 64:
    frames come out rotated and every reported size is the displayed one."""
    frames = np.zeros((16, 48, 64, 3), np.uint8)
    frames[:, :12, :16] = 255  # a bright top-left corner tells the orientation
    stored = h264(tmp_path / "stored.mp4", frames)
    rotated = tmp_path / "rotated.mp4"
    ffmpeg("-display_rotation", "90", "-i", stored, "-c", "copy", rotated)
    info, stream = read_frames(rotated)
    got = np.stack(list(stream))
    assert (info.width, info.height) == (48, 64) and got.shape == (16, 64, 48, 3)
    assert np.abs(got[0].astype(int) - np.rot90(frames[0]).astype(int)).mean() < 3  # corner now bottom-left
    result = run("detect", rotated, "--out", tmp_path / "r", "--weights", tiny_weights, "--device", "cpu")
    assert result.exit_code == 0, result.output
    # imageio-ffmpeg's "frame size ... is different from the source frame size" would be a stray
    # line on the user's terminal: rotation is expected, so it is filtered out
    assert not [r for r in caplog.records if "source frame size" in r.getMessage()]
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert (summary["input"]["width"], summary["input"]["height"]) == (48, 64)
    assert probe(tmp_path / "r" / OVERLAY_PIXEL).width == 48
    assert explain(rotated, 8, weights=tiny_weights).pixel_loss_map.shape == (64, 48)


# ---------------------------------------------------------------------- 5. variable frame rate

# 10 frames at 10 fps, then 10 frames at 2 fps: index / fps is wrong for the second half
VFR_TIMES = np.r_[np.arange(10) * 0.1, 1.0 + np.arange(10) * 0.5]


def _vfr_clip(tmp_path: Path, container: str = "mp4") -> Path:
    return encode(
        tmp_path / f"vfr.{container}", make_clip(n=20), "-vf", "setpts='if(lt(N,10),N*0.1,1+(N-10)*0.5)/TB'",
        "-fps_mode", "vfr", "-c:v", "libx264", "-crf", "12", "-pix_fmt", "yuv420p",
    )


@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_variable_frame_rate_times_come_from_timestamps(tmp_path, tiny_weights, container):
    video = _vfr_clip(tmp_path, container)
    np.testing.assert_allclose(frame_timestamps(video), VFR_TIMES, atol=1e-3)
    out = tmp_path / "r"
    assert run("detect", video, "--out", out, "--weights", tiny_weights, "--no-video").exit_code == 0
    rows = (out / "scores.csv").read_text().splitlines()[1:]
    np.testing.assert_allclose([float(r.split(",")[1]) for r in rows], VFR_TIMES, atol=1e-3)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["input"]["time_source"] == "timestamps"
    assert summary["input"]["duration_s"] == pytest.approx(5.5 + 0.5, abs=1e-3)  # last frame + its period
    assert explain(video, 14, weights=tiny_weights).time_s == pytest.approx(3.0, abs=1e-3)


def test_variable_frame_rate_overlays_last_as_long_as_the_footage(tmp_path, tiny_weights):
    """20 frames over 6 s: the overlays run at their average rate (20 / 6 s), not the header's, and
    the console says the rate varies."""
    video = _vfr_clip(tmp_path)
    out = tmp_path / "r"
    result = run("detect", video, "--out", out, "--weights", tiny_weights, "--no-clips")
    assert result.exit_code == 0, result.output
    assert "variable, 3.33 fps on average" in result.output
    for name in ("overlay_pixel_loss.mp4", "overlay_guided_backprop.mp4"):
        info = probe(out / name)
        assert info.fps == pytest.approx(20 / 6, rel=0.01) and info.duration == pytest.approx(6.0, abs=0.1)


def _whole_file_warnings(tmp_path: Path, video: Path, tiny_weights) -> None:
    """detect and explain take `video` as whole: no truncation warning, complete: true."""
    out = tmp_path / "r"
    result = run("detect", video, "--out", out, "--weights", tiny_weights, "--no-video")
    assert result.exit_code == 0, result.output
    assert "truncated" not in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True and summary["input"]["frames"] == 20
    _, frames = read_frames(video)
    assert len(list(frames)) == 20 and frames.complete
    assert explain(video, 14, weights=tiny_weights).frame == 14


def test_variable_rate_footage_whose_nominal_rate_overstates_its_frames_is_whole(tmp_path, tiny_weights):
    """Found by a review: 10 frames 0.1 s apart, then 10 frames 0.3 s apart, in MKV. The header
    says 3.8 s at 10 fps, about 38 frames; the file holds 20, all of them decoded."""
    video = encode(
        tmp_path / "vfr.mkv", make_clip(n=20), "-vf", "setpts='if(lt(N,10),N*0.1,1+(N-10)*0.3)/TB'",
        "-fps_mode", "vfr", "-c:v", "libx264", "-crf", "12", "-pix_fmt", "yuv420p",
    )
    assert probe(video).n_frames > 30  # the estimate that used to call it truncated
    _whole_file_warnings(tmp_path, video, tiny_weights)


def test_a_recording_whose_audio_outlasts_its_video_is_whole(tmp_path, tiny_weights):
    """Found by a review: 2 s of video with 6 s of audio. The container's duration is the
    audio's, so the header's estimate was 60 frames."""
    silent = h264(tmp_path / "silent.mp4", make_clip(n=20))
    video = tmp_path / "audio.mp4"
    ffmpeg("-i", silent, "-f", "lavfi", "-i", "sine=d=6", "-c:v", "copy", "-c:a", "aac", video)
    assert probe(video).n_frames > 50
    _whole_file_warnings(tmp_path, video, tiny_weights)


def test_a_file_cut_in_its_video_but_not_in_the_audio_stored_ahead_of_it_is_incomplete(tmp_path):
    """Found by a review of the check above: fragmented MP4 with the audio as stream 0, cut at
    95 %. The video decodes short, yet the audio's packets still reach the header's duration;
    ffmpeg reports the cut while demuxing, and that decides."""
    whole = tmp_path / "whole.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25:duration=8", "-f", "lavfi", "-i", "sine=d=8",
           "-map", "1:a", "-map", "0:v", "-c:v", "libx264", "-g", "1000", "-c:a", "aac",
           "-movflags", "frag_keyframe+empty_moov", whole)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 95 // 100])
    _, frames = read_frames(cut)
    assert 11 <= len(list(frames)) < 200 and not frames.complete
    _, frames = read_frames(whole)
    assert len(list(frames)) == 200 and frames.complete


@pytest.mark.parametrize("damage", ["none", "a repeated timestamp after the window"])
def test_detect_and_explain_give_a_frame_the_same_time(tmp_path, tiny_weights, monkeypatch, damage):
    """One rule (video.frame_times) for both: a timestamp repeated past the frames explain
    decodes makes detect fall back to frame / fps, and explain now does the same."""
    from stan_cli import video as video_module

    video = _vfr_clip(tmp_path)
    if damage != "none":
        stamps = VFR_TIMES.copy()
        stamps[-1] = stamps[-2]
        monkeypatch.setattr(video_module, "frame_timestamps", lambda path: stamps.copy())
    result = detect(video, weights=tiny_weights)
    for frame in (5, 12):
        explained = explain(video, frame, weights=tiny_weights)
        assert explained.time_s == pytest.approx(result.time_s[frame])
        assert explained.values["input"]["time_source"] == result.summary["input"]["time_source"]
    assert result.summary["input"]["time_source"] == ("timestamps" if damage == "none" else "frame index / fps")


def test_fps_option_overrides_the_timestamps(tmp_path, tiny_weights):
    result = detect(_vfr_clip(tmp_path), weights=tiny_weights, fps=4)
    np.testing.assert_allclose(result.time_s, np.arange(20) / 4)
    assert result.summary["input"]["time_source"] == "frame index / fps"


def test_video_without_timestamps_falls_back_to_index_over_fps(tmp_path, tiny_weights):
    """AVI stores no presentation time per packet when B-frames are used; it is constant-rate,
    so frame index / fps is exact there."""
    video = encode(tmp_path / "clip.avi", make_clip(n=16), "-c:v", "mpeg4", "-bf", "2", "-q:v", "3", fps=8)
    assert frame_timestamps(video) is None
    result = detect(video, weights=tiny_weights)
    np.testing.assert_allclose(result.time_s, np.arange(16) / 8)
    assert result.summary["input"]["time_source"] == "frame index / fps"


def test_frame_folder_time_is_index_over_fps(clip_folder, tiny_weights):
    assert frame_timestamps(clip_folder) is None
    assert detect(clip_folder, weights=tiny_weights, fps=5).time_s[10] == pytest.approx(2.0)


# --------------------------------------------------------------- 6. high bit depth and alpha


def _levels(shape: tuple[int, int], left: int, right: int, dtype) -> np.ndarray:
    """An image whose left half is `left` and right half `right` (grey, all channels)."""
    h, w = shape
    img = np.full((h, w), left, dtype)
    img[:, w // 2:] = right
    return img


def _input(kind: str, folder: Path) -> tuple[Path, int, int]:
    """(path, expected 8-bit grey of the left half, of the right half) for each kind of input."""
    n, shape = 13, (24, 32)
    if kind == "png16":  # 16-bit PNG frames: 0x8000 and 0x4000 are 128 and 64 in 8 bits
        grey = _levels(shape, 0x8000, 0x4000, np.uint16)
        (folder / "png16").mkdir()
        for t in range(n):
            image(folder / "png16" / f"{t}.png", np.repeat(grey[..., None], 3, 2).astype("<u2"), "rgb48le")
        return folder / "png16", 128, 64
    if kind == "rgba-png":  # alpha is dropped: the stored colour counts, opaque or transparent
        rgba = np.zeros((*shape, 4), np.uint8)
        rgba[..., :3] = _levels(shape, 128, 64, np.uint8)[..., None]
        rgba[..., 3] = 255
        rgba[:12, :, 3] = 0  # top half fully transparent
        rgba[:, :8, 3] = 100  # a semi-transparent strip
        (folder / "rgba").mkdir()
        for t in range(n):
            image(folder / "rgba" / f"{t}.png", rgba, "rgba")
        return folder / "rgba", 128, 64
    frames = np.repeat(np.repeat(_levels(shape, 128, 64, np.uint8)[None, ..., None], n, 0), 3, 3)
    if kind == "10-bit":  # H.264 High 10, yuv420p10le: lossy, so a grey level or two off
        return h264(folder / "ten.mp4", frames, "-pix_fmt", "yuv420p10le"), 128, 64
    if kind == "alpha-video":  # QuickTime Animation with an alpha channel, half transparent
        rgba = np.concatenate([frames, np.full((n, *shape, 1), 128, np.uint8)], axis=3)
        return encode(folder / "alpha.mov", rgba, "-c:v", "qtrle", "-pix_fmt", "argb", pix_fmt="rgba"), 128, 64
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["png16", "rgba-png", "10-bit", "alpha-video"])
def test_high_bit_depth_and_alpha_decode_to_the_right_grey(tmp_path, tiny_weights, kind):
    path, left, right = _input(kind, tmp_path)
    info, stream = read_frames(path)
    frames = np.stack(list(stream))
    assert frames.dtype == np.uint8 and frames.shape == (13, 24, 32, 3)
    tolerance = 2 if kind == "10-bit" else 1
    assert np.abs(frames[:, :, 2:14].astype(int) - left).max() <= tolerance
    assert np.abs(frames[:, :, 18:30].astype(int) - right).max() <= tolerance
    grey = to_grey_square(frames[:1], 32)[0]  # what the networks see, before [-1, 1]
    assert abs(int(grey[12, 6]) - left) <= tolerance and abs(int(grey[12, 26]) - right) <= tolerance
    result = detect(path, weights=tiny_weights)
    assert result.n_frames == 13 and np.isfinite(result.pixel_loss[5:8]).all()


# ------------------------------------------------------------- 7. a read-only output location


def test_read_only_output_folder(tmp_path, clip16, tiny_weights, monkeypatch):
    """An existing, empty --out that cannot be written. Root ignores permission bits, so as root
    os.access is made to answer as it would for a normal user: the same code path runs."""
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o555)
    try:
        if os.geteuid() == 0:
            real = os.access
            monkeypatch.setattr(detect_module.os, "access",
                                lambda p, mode, **kw: False if Path(p) == out and mode & os.W_OK else real(p, mode, **kw))
        assert_one_error(run("detect", clip16, "--out", out, "--weights", tiny_weights), str(out), "not writable")
        assert list(out.iterdir()) == []
    finally:
        out.chmod(0o755)


def test_output_folder_in_a_read_only_parent(tmp_path, clip16, tiny_weights, monkeypatch):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        if os.geteuid() == 0:
            def refuse(self, *args, **kwargs):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
            monkeypatch.setattr(Path, "mkdir", refuse)
        out = parent / "report"
        assert_one_error(run("detect", clip16, "--out", out, "--weights", tiny_weights), str(out), "cannot create")
        assert not out.exists()
    finally:
        parent.chmod(0o755)


def test_write_refused_although_the_folder_looked_writable(tmp_path, clip16, tiny_weights, monkeypatch):
    """A read-only mount or an ACL can refuse the write itself after os.access said yes."""
    def read_only(file, mode="r", *args, **kwargs):
        if "w" in mode:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return open(file, mode, *args, **kwargs)

    monkeypatch.setattr(fileio, "open", read_only, raising=False)  # where the atomic writes are
    monkeypatch.setattr(heatmaps, "open", read_only, raising=False)
    out = tmp_path / "new-report"
    for extra in ((), ("--no-video",)):
        assert_one_error(run("detect", clip16, "--out", out, "--weights", tiny_weights, *extra),
                         str(out), "Read-only file system", "writable location")
        assert not out.exists()  # the folder this run created is gone again


# -------------------------------------------------------------------------- 8. a full disk


@pytest.fixture
def earlier_report(tmp_path, clip16, tiny_weights) -> Path:
    """A folder holding an earlier complete report (with overlays) and a file of the user's."""
    out = tmp_path / "report"
    detect(clip16, out=out, weights=tiny_weights, device="cpu")
    (out / "my notes.txt").write_text("the user's own file")
    return out


# Where the disk fills up: a report file, the heat-map scratch file, an overlay video (ffmpeg).
FULL_AT = {
    "summary.json": ".summary.json.tmp.json",
    "heat maps": ".maps-under-test.u8",  # the scratch files' names are the run's own: fixed here for the test
    "overlay video": f".{OVERLAY_GUIDED}.tmp.mp4",
}


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("where", list(FULL_AT))
def test_full_disk_keeps_the_earlier_report_and_leaves_no_temporaries(earlier_report, clip16, tiny_weights, where,
                                                                       monkeypatch):
    """A write into /dev/full fails with ENOSPC, exactly as on a full disk: the file's temporary
    name is made a link to it, so the real kernel error reaches the real writer (Python's or
    ffmpeg's). The link is made once the run holds its folder: --overwrite first removes what
    looks like an interrupted run's temporaries."""
    if where == "heat maps":
        monkeypatch.setattr(detect_module, "scratch_path", lambda folder, stem, suffix: folder / FULL_AT[where])
    real_open = detect_module.open_output

    @contextlib.contextmanager
    def open_then_fill(*args, **kwargs):
        with real_open(*args, **kwargs) as created:
            (earlier_report / FULL_AT[where]).symlink_to("/dev/full")
            yield created

    monkeypatch.setattr(detect_module, "open_output", open_then_fill)
    before = listing(earlier_report)
    result = run("detect", clip16, "--out", earlier_report, "--weights", tiny_weights, "--overwrite")
    line = assert_one_error(result, str(earlier_report))
    assert "free space" in line or "disk is full" in line
    assert listing(earlier_report) == before  # the earlier report and the user's file untouched, no temporaries


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_video_writer_full_disk_says_so_and_ffmpeg_stays_quiet(tmp_path, capfd):
    """ffmpeg's own log goes to a temporary file, not the terminal: the user sees one line."""
    path = tmp_path / "overlay.mp4"
    (tmp_path / ".overlay.mp4.tmp.mp4").symlink_to("/dev/full")
    with pytest.raises(OutputError) as err:
        with VideoWriter(path, 64, 48, fps=10) as writer:
            for _ in range(30):
                writer.write(np.zeros((48, 64, 3), np.uint8))
    message = str(err.value)
    assert str(path) in message and "No space left on device" in message and "free some space" in message
    assert "\n" not in message
    assert capfd.readouterr().err == ""
    assert list(tmp_path.iterdir()) == []


def test_full_disk_mid_write_simulated(earlier_report, clip16, tiny_weights, monkeypatch):
    """The same with a patched writer (any platform): half of scores.png is written, then ENOSPC."""
    full_disk_at(monkeypatch, "scores.png")
    before = listing(earlier_report)
    result = run("detect", clip16, "--out", earlier_report, "--weights", tiny_weights, "--overwrite", "--no-video")
    assert_one_error(result, "scores.png", "No space left on device", "free some space")
    assert listing(earlier_report) == before


def test_full_disk_in_a_new_folder_leaves_nothing(tmp_path, clip16, tiny_weights, monkeypatch):
    full_disk_at(monkeypatch)
    out = tmp_path / "new"
    assert_one_error(run("detect", clip16, "--out", out, "--weights", tiny_weights), "scores.csv", "free some space")
    assert not out.exists()  # not even the folder: this run created it


def test_overwrite_replaces_only_when_the_run_succeeds(earlier_report, clip16, tiny_weights):
    """--overwrite with --no-video: the earlier overlays go (they belong to the old run), the
    user's file stays, and no temporary is left."""
    detect(clip16, out=earlier_report, weights=tiny_weights, overwrite=True, write_video=False)
    assert sorted(p.name for p in earlier_report.iterdir()) == sorted([*REPORT_FILES, "my notes.txt"])


def test_explain_full_disk_keeps_earlier_files(tmp_path, clip16, tiny_weights, monkeypatch):
    out = tmp_path / "ex"
    explain(clip16, 8, out=out, weights=tiny_weights)
    before = listing(out)
    full_disk_at(monkeypatch, "explanation.json")
    result = run("explain", clip16, "--frame", "9", "--out", out, "--weights", tiny_weights, "--overwrite")
    assert_one_error(result, "explanation.json", "free some space")
    assert listing(out) == before  # panel.png etc. of frame 8 are still the earlier ones


def test_ctrl_c_during_detect_leaves_the_folder_as_it_was(earlier_report, clip16, tiny_weights, monkeypatch):
    """Ctrl-C while the overlay videos are being drawn (report files not yet written)."""
    real = detect_module.overlay.compose_frame
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(detect_module.overlay, "compose_frame", interrupted)
    before = listing(earlier_report)
    result = run("detect", clip16, "--out", earlier_report, "--weights", tiny_weights, "--overwrite")
    assert result.exit_code == 130, result.output
    assert listing(earlier_report) == before


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_sigterm_or_sighup_during_detect_stops_like_ctrl_c(earlier_report, clip16, tiny_weights, monkeypatch, signame):
    """kill, timeout, docker stop or a closed terminal: the console script's handlers make the
    signal a clean stop (no hidden map files left, the earlier report as it was, exit 130)."""
    import signal

    from stan_cli import cli

    sig = getattr(signal, signame)
    real = detect_module.overlay.compose_frame
    calls = []

    def signalled(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), sig)  # delivered to the main thread before the next bytecode
        return real(*args, **kwargs)

    monkeypatch.setattr(detect_module.overlay, "compose_frame", signalled)
    old = signal.getsignal(sig)
    try:
        # as a terminal starts it: under `nohup` (SIGHUP ignored) the handler rightly leaves it ignored
        signal.signal(sig, signal.SIG_DFL)
        cli.stop_on_termination()
        before = listing(earlier_report)
        result = run("detect", clip16, "--out", earlier_report, "--weights", tiny_weights, "--overwrite")
    finally:
        signal.signal(sig, old)
    assert result.exit_code == 130, result.output
    assert len(calls) == 5
    assert listing(earlier_report) == before


def _track(monkeypatch, cls, method: str, fail_on=None) -> list:
    """Record every object `cls.method` returns (or, for __init__, every instance made); raise
    OutputError instead of making the one for which `fail_on(*args)` is true."""
    made = []
    real = getattr(cls, method)

    if method == "__init__":
        def init(self, *args, **kwargs):
            if fail_on is not None and fail_on(*args):
                raise OutputError(f"{args[0]}: cannot start ffmpeg to write the video (simulated).")
            real(self, *args, **kwargs)
            made.append(self)
        monkeypatch.setattr(cls, "__init__", init)
    else:
        def wrapped(*args, **kwargs):
            made.append(real(*args, **kwargs))
            return made[-1]
        monkeypatch.setattr(cls, method, wrapped)
    return made


@pytest.mark.parametrize("failure", [OutputError, KeyboardInterrupt])
def test_a_failing_overlay_close_ends_the_other_writer_and_leaves_no_temporaries(
        earlier_report, clip16, tiny_weights, monkeypatch, failure):
    """The first overlay writer to close fails (its readability check: OutputError; or Ctrl-C
    there): the other writer's ffmpeg is stopped and its temporary removed, not left running."""
    writers = _track(monkeypatch, VideoWriter, "__init__")
    real = VideoWriter._readable
    checked = []

    def readable(self):
        checked.append(self)
        if len(checked) == 1:
            if failure is KeyboardInterrupt:
                raise KeyboardInterrupt
            return False
        return real(self)

    monkeypatch.setattr(VideoWriter, "_readable", readable)
    before = listing(earlier_report)
    with pytest.raises(failure):
        detect(clip16, out=earlier_report, weights=tiny_weights, device="cpu", overwrite=True)
    assert len(writers) == 2 and len(checked) == 1  # the second writer was abandoned, not finished
    assert [w._proc.poll() is not None for w in writers] == [True, True]  # no ffmpeg left running
    assert listing(earlier_report) == before  # no temporaries, the earlier report as it was


def test_a_failing_second_overlay_writer_releases_the_first_the_decoder_and_the_maps(
        earlier_report, clip16, tiny_weights, monkeypatch):
    writers = _track(monkeypatch, VideoWriter, "__init__", fail_on=lambda path, *_: path.name == OVERLAY_GUIDED)
    readers = _track(monkeypatch, heatmaps.MapStore, "reader")
    streams = _track(monkeypatch, detect_module, "read_frames")
    before = listing(earlier_report)
    with pytest.raises(OutputError, match="simulated"):
        detect(clip16, out=earlier_report, weights=tiny_weights, device="cpu", overwrite=True)
    assert [w.path.name for w in writers] == [OVERLAY_PIXEL] and writers[0]._proc.poll() is not None
    assert len(readers) == 2 and all(r._fd is None for r in readers)  # the maps' file descriptors closed
    assert len(streams) == 2 and all(stream._closed for _, stream in streams)  # both decoders closed
    assert listing(earlier_report) == before


# ------------------------------------------------------------------------------- 9. file names


def test_names_with_spaces_unicode_quotes_and_colons(tmp_path, tiny_weights):
    folder = tmp_path / "dir with spaces ü"
    folder.mkdir()
    frames = make_clip(n=16)
    videos = [h264(folder / "café clip ü.mp4", frames), h264(folder / "cam:1 l'entrée.mp4", frames)]
    images = folder / "l'entrée frames"
    images.mkdir()
    for t, frame in enumerate(frames):
        image(images / f"{t}.png", frame, "rgb24")
    for source in (*videos, images):
        out = tmp_path / f"réport {source.stem}"
        result = run("detect", source, "--out", out, "--weights", tiny_weights, "--device", "cpu")
        assert result.exit_code == 0, result.output
        assert json.loads((out / "summary.json").read_text())["input"]["frames"] == 16
        assert probe(out / OVERLAY_PIXEL).width == 64
        ex = run("explain", source, "--frame", "7", "--out", tmp_path / f"explain {source.stem}", "--weights", tiny_weights)
        assert ex.exit_code == 0, ex.output


def test_names_with_a_leading_dash(tmp_path, tiny_weights, monkeypatch):
    """`-clip.mp4` after `--`, or as `./-clip.mp4`; the report folder `-report` is also an ffmpeg
    option's name, so it would be read as one if it reached ffmpeg relative."""
    monkeypatch.chdir(tmp_path)
    h264(tmp_path / "-clip.mp4", make_clip(n=16))
    for i, args in enumerate((["--", "-clip.mp4"], ["./-clip.mp4"])):
        result = run("detect", f"--out=-report{i}", "--weights", tiny_weights, "--device", "cpu", *args)
        assert result.exit_code == 0, result.output
        assert probe(tmp_path / f"-report{i}" / OVERLAY_PIXEL).width == 64
        assert json.loads((tmp_path / f"-report{i}" / "summary.json").read_text())["input"]["frames"] == 16
        ex = run("explain", "--frame", "6", f"--out=-explain{i}", "--weights", tiny_weights, *args)
        assert ex.exit_code == 0, ex.output
        assert (tmp_path / f"-explain{i}" / "panel.png").exists()


def test_no_shell_anywhere():
    """Every external program is started with an argument list: a file name can never become a
    command. (subprocess without shell=True; no os.system or os.popen.)"""
    source = Path(__file__).resolve().parents[1] / "stan_cli"
    pattern = re.compile(r"shell\s*=\s*True|os\.system\(|os\.popen\(|commands\.getoutput")
    offenders = [f"{p.name}:{n}" for p in sorted(source.glob("*.py"))
                 for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


# ------------------------------------------------------- already handled, not tested elsewhere


def test_folder_mixing_image_formats(tmp_path, tiny_weights):
    folder = tmp_path / "mixed"
    folder.mkdir()
    frames = make_clip(n=12)
    for t, frame in enumerate(frames):
        image(folder / f"{t}.{'jpg' if t == 6 else 'png'}", frame, "rgb24")
    out = tmp_path / "r"
    assert_one_error(run("detect", folder, "--out", out, "--weights", tiny_weights),
                     str(folder), "mixes image formats (jpeg, png)", "Convert the frames to one format")
    assert not out.exists()


def test_truncated_video_is_scored_warned_and_marked_incomplete(tmp_path, tiny_weights):
    """A recording cut short (copy interrupted, camera lost power): the frames that decode are
    scored, a warning names the file, and summary.json says complete: false."""
    whole = encode(tmp_path / "whole.mkv", make_clip(n=40), "-c:v", "libx264", "-crf", "12")
    cut = tmp_path / "cut.mkv"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) * 3 // 4])
    out = tmp_path / "r"
    result = run("detect", cut, "--out", out, "--weights", tiny_weights, "--no-video")
    assert result.exit_code == 0, result.output
    # (the tiny test weights are untrained: detect says so in a warning of its own)
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("warning:") and "untrained" not in ln]
    assert len(warnings) == 1 and "cut.mkv" in warnings[0] and "truncated" in warnings[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is False and 11 <= summary["input"]["frames"] < 40
    assert [w for w in summary["warnings"] if "truncated" in w]


def test_an_mp4_cut_before_its_index_says_so(tmp_path, tiny_weights):
    """ffmpeg's own MP4s keep the index (moov) at the end: a copy cut short has none, and not one
    frame can be read. The error says why, not just "invalid data"."""
    whole = encode(tmp_path / "whole.mp4", make_clip(n=40), "-c:v", "libx264", "-crf", "12")
    cut = tmp_path / "cut.mp4"
    data = whole.read_bytes()
    assert data.rfind(b"moov") > data.find(b"mdat")  # the layout this test is about
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "r"
    assert_one_error(run("detect", cut, "--out", out, "--weights", tiny_weights), "cut.mp4", "'moov' atom", "is missing")
    assert not out.exists()


def test_too_short_clip_from_the_cli(tmp_path, tiny_weights):
    short = h264(tmp_path / "short.mp4", make_clip(n=8))
    out = tmp_path / "r"
    assert_one_error(run("detect", short, "--out", out, "--weights", tiny_weights), "short.mp4", "only 8 frames", "at least 11")
    assert not out.exists()


def test_maps_with_exact_zeros_store_without_a_numpy_warning(tmp_path):
    """A trained discriminator's guided-backprop map is exactly 0 in places: log10 gives -inf,
    which must land in the zeros bin without a RuntimeWarning on the user's console."""
    import warnings

    import torch

    store = heatmaps.MapStore(tmp_path / "maps.bin")
    maps = torch.zeros(2, 8, 8)
    maps[0, :4] = 1e-3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store.append(maps)
    store.close()
    assert store.maxima[0] > 0 and store.maxima[1] == pytest.approx(1e-30)


def test_a_video_cut_to_fewer_than_11_frames_is_called_truncated_not_short(tmp_path, tiny_weights):
    """Found by a robustness pass: a cut copy that still decodes a few frames was told to use a
    longer clip; its header says it is longer, so the advice is an undamaged copy (as explain says)."""
    whole = encode(tmp_path / "whole.mkv", make_clip(n=40), "-c:v", "libx264", "-crf", "12")
    cut = tmp_path / "cut.mkv"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) * 46 // 100])  # 2 to 9 frames decode from 41 to 50 %
    _, frames = read_frames(cut)
    assert 0 < len(list(frames)) < 11  # the case this test is about
    out = tmp_path / "r"
    message = assert_one_error(run("detect", cut, "--out", out, "--weights", tiny_weights), "cut.mkv", "truncated",
                               "undamaged copy")
    assert "longer clip" not in message and not out.exists()


def test_an_empty_image_in_a_folder_is_named_and_the_images_after_it_are_not_called_damaged(clip_folder, tmp_path,
                                                                                            tiny_weights):
    """ffmpeg stops at an empty file: the images after it were never reached, and naming them
    damaged sent the user to replace good images."""
    import shutil

    folder = shutil.copytree(clip_folder, tmp_path / "clip")
    (folder / "7.png").write_bytes(b"")
    message = assert_one_error(run("detect", folder, "--out", tmp_path / "r", "--weights", tiny_weights),
                               "7.png not an image", "Remove or replace")
    assert "damaged" not in message


def test_a_video_cut_before_its_first_picture_is_called_truncated(tmp_path, tiny_weights):
    """Found by a robustness pass: a copy cut before any picture decodes gave ffmpeg's own thread
    message ("Terminating thread with return code -22 (Invalid argument)")."""
    whole = encode(tmp_path / "whole.mkv", make_clip(n=40), "-c:v", "libx264", "-crf", "12")
    cut = tmp_path / "cut.mkv"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) * 20 // 100])  # the stream is declared; no picture decodes up to 38 %
    message = assert_one_error(run("detect", cut, "--out", tmp_path / "r", "--weights", tiny_weights), "cut.mkv",
                               "no picture of it that decodes", "undamaged copy")
    assert "Terminating thread" not in message and not (tmp_path / "r").exists()
