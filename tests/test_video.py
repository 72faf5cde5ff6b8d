"""Decoding videos and frame folders, encoding browser-playable MP4, and the errors a user sees."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from conftest import FPS, HEIGHT, N_FRAMES, WIDTH, make_clip, write_frame_folder
from stan_cli.errors import InputError, OutputError
from stan_cli import video as video_module
from stan_cli.video import (
    DEFAULT_FOLDER_FPS,
    VideoInfo,
    VideoWriter,
    frame_times,
    is_video_file,
    list_frames,
    natural_key,
    probe,
    read_frames,
)


@pytest.fixture
def private_tmpdir(tmp_path, monkeypatch):
    """Point tempfile at an empty folder so leaked temp files (concat lists) can be seen."""
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _ffmpeg_info(path: Path) -> str:
    """ffmpeg's description of a file (it prints the streams on stderr)."""
    proc = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True
    )
    return proc.stderr


# --- natural order and listing --------------------------------------------------------------


def test_natural_key_orders_numbers_by_value():
    names = ["10.jpg", "2.jpg", "1.jpg", "100.jpg", "20.jpg"]
    assert sorted(names, key=natural_key) == ["1.jpg", "2.jpg", "10.jpg", "20.jpg", "100.jpg"]
    assert natural_key("2.jpg") < natural_key("10.jpg")
    assert natural_key("frame_9") < natural_key("frame_10")
    assert natural_key("frame_9.png") < natural_key("frame_10.png")
    assert natural_key("cam1_frame_10") < natural_key("cam2_frame_1")


def test_natural_key_ignores_case():
    assert natural_key("Frame_2.PNG") == natural_key("frame_2.png")


def test_list_frames_skips_hidden_and_non_images(tmp_path):
    for name in ["10.png", "2.jpg", "1.JPEG", "3.bmp", "4.tif", ".hidden.png", "notes.txt", "clip.mp4", "Thumbs.db"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "5.png").mkdir()  # a folder with an image name is not a frame
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "0.png").write_bytes(b"x")  # not recursive
    assert [p.name for p in list_frames(tmp_path)] == ["1.JPEG", "2.jpg", "3.bmp", "4.tif", "10.png"]


def test_is_video_file(tmp_path, clip_video):
    assert is_video_file(clip_video)
    (tmp_path / "x.MOV").write_bytes(b"")
    assert is_video_file(tmp_path / "x.MOV")
    assert not is_video_file(tmp_path / "missing.mp4")
    assert not is_video_file(tmp_path)


# --- reading --------------------------------------------------------------------------------


def test_read_frames_of_folder_is_exact_and_in_natural_order(clip_folder, clip_frames):
    names = [p.name for p in list_frames(clip_folder)]
    assert names[:12] == [f"{i}.png" for i in range(12)]  # 0, 1, ..., 10, 11 (not 0, 1, 10, 11, 2)
    info, frames = read_frames(clip_folder)
    got = np.stack(list(frames))
    assert got.shape == (N_FRAMES, HEIGHT, WIDTH, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, clip_frames)  # PNG is lossless; any reordering shows here
    assert info.kind == "frames"
    assert (info.width, info.height) == (WIDTH, HEIGHT)
    assert info.n_frames == N_FRAMES
    assert info.fps == DEFAULT_FOLDER_FPS and info.fps_assumed


def test_read_frames_of_folder_with_given_fps(clip_folder):
    info, frames = read_frames(clip_folder, fps=7.5)
    frames.close()
    assert info.fps == 7.5 and not info.fps_assumed


def test_read_frames_of_video(clip_video, clip_frames):
    info, frames = read_frames(clip_video)
    got = np.stack(list(frames))
    assert got.shape == (N_FRAMES, HEIGHT, WIDTH, 3) and got.dtype == np.uint8
    assert info.kind == "video"
    assert (info.width, info.height) == (WIDTH, HEIGHT)
    assert info.fps == pytest.approx(FPS) and not info.fps_assumed
    # lossy (crf 12, yuv420p) but close
    assert np.abs(got.astype(int) - clip_frames.astype(int)).mean() < 3
    # frame order kept: each decoded frame is nearest to its own original
    dist = np.abs(got[:, None].astype(int) - clip_frames[None].astype(int)).mean(axis=(2, 3, 4))
    assert (dist.argmin(axis=1) == np.arange(N_FRAMES)).all()


def test_read_frames_video_fps_override(clip_video):
    info, frames = read_frames(clip_video, fps=30)
    assert info.fps == 30 and not info.fps_assumed
    assert len(list(frames)) == N_FRAMES  # the override is a label; no frame is dropped or duplicated


def test_probe_video(clip_video):
    info = probe(clip_video)
    assert info.kind == "video"
    assert (info.width, info.height) == (WIDTH, HEIGHT)
    assert info.fps == pytest.approx(FPS)
    assert info.n_frames is not None and abs(info.n_frames - N_FRAMES) <= 1
    d = info.to_dict()
    assert d["path"] == str(clip_video) and d["kind"] == "video" and d["width"] == WIDTH


def test_probe_folder(clip_folder):
    info = probe(clip_folder)
    assert info.kind == "frames"
    assert (info.width, info.height, info.n_frames) == (WIDTH, HEIGHT, N_FRAMES)
    assert info.fps_assumed


def test_folder_with_mixed_sizes_is_scaled_to_first(tmp_path):
    big = np.full((1, 24, 32, 3), 200, np.uint8)
    small = np.full((1, 12, 16, 3), 60, np.uint8)
    folder = tmp_path / "mixed"
    for name, image in (("f0.png", big), ("f1.png", small), ("f2.png", big)):
        write_frame_folder(folder, image, pattern=name)  # one image, a fixed name
    info, frames = read_frames(folder)
    got = list(frames)
    assert (info.width, info.height) == (32, 24)
    assert [f.shape for f in got] == [(24, 32, 3)] * 3
    assert (got[0] == 200).all() and (got[2] == 200).all()
    assert np.abs(got[1].astype(int) - 60).max() <= 2  # a constant image stays (nearly) constant


def test_single_image_folder(tmp_path):
    folder = write_frame_folder(tmp_path / "one", make_clip(n=1))
    info, frames = read_frames(folder)
    assert len(list(frames)) == 1 and info.n_frames == 1


def test_no_temp_files_left_after_reading(clip_folder, private_tmpdir):
    info, frames = read_frames(clip_folder)
    next(frames)
    frames.close()  # abandoned part-way
    _, frames = read_frames(clip_folder)
    list(frames)
    probe(clip_folder)
    assert list(private_tmpdir.iterdir()) == []


# --- errors ---------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    path = tmp_path / "nope.mp4"
    for call in (read_frames, probe):
        with pytest.raises(InputError) as err:
            call(path)
        assert str(path) in str(err.value)


def test_empty_folder(tmp_path, private_tmpdir):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "readme.txt").write_text("no frames here")
    for call in (read_frames, probe):
        with pytest.raises(InputError) as err:
            call(folder)
        assert str(folder) in str(err.value)
        assert "no frames" in str(err.value)
    assert list(private_tmpdir.iterdir()) == []


def test_text_file_named_mp4(tmp_path, private_tmpdir):
    path = tmp_path / "clip.mp4"
    path.write_text("this is not a video\n" * 10)
    for call in (read_frames, probe):
        with pytest.raises(InputError) as err:
            call(path)
        assert str(path) in str(err.value)
        assert "ffmpeg" in str(err.value)


def test_folder_of_broken_images(tmp_path, private_tmpdir):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "0.png").write_text("not a png")
    with pytest.raises(InputError) as err:
        _, frames = read_frames(folder)
        list(frames)
    assert str(folder) in str(err.value)
    assert list(private_tmpdir.iterdir()) == []


def test_folder_with_one_corrupt_image_is_an_error(tmp_path):
    folder = write_frame_folder(tmp_path / "f", make_clip(n=12))
    (folder / "5.png").write_text("garbage")
    with pytest.raises(InputError) as err:
        info, frames = read_frames(folder)
        got = list(frames)
        assert len(got) == info.n_frames == 12  # if no error, at least nothing may go missing
    assert str(folder) in str(err.value)


# --- writing --------------------------------------------------------------------------------


def _gradient_frames(n: int, height: int, width: int) -> list[np.ndarray]:
    out = []
    for t in range(n):
        f = np.zeros((height, width, 3), np.uint8)
        f[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None]
        f[..., 1] = 10 * t
        out.append(f)
    return out


def test_video_writer_odd_size_reads_back_even(tmp_path):
    path = tmp_path / "out.mp4"
    with VideoWriter(path, 37, 23, fps=12) as writer:
        assert (writer.width, writer.height) == (38, 24)
        for f in _gradient_frames(9, 23, 37):
            writer.write(f)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]  # no temp file left
    info, frames = read_frames(path)
    got = list(frames)
    assert (info.width, info.height) == (38, 24)
    assert len(got) == 9
    assert info.fps == pytest.approx(12)
    # the padding repeats the edge pixels, so the added column looks like its neighbour
    assert np.abs(got[0][:23, 37].astype(int) - got[0][:23, 36].astype(int)).mean() < 8


def test_video_writer_even_size_unchanged(tmp_path):
    path = tmp_path / "even.mp4"
    with VideoWriter(path, 32, 16, fps=25) as writer:
        for f in _gradient_frames(3, 16, 32):
            writer.write(f)
    info = probe(path)
    assert (info.width, info.height) == (32, 16)


def test_video_writer_is_h264_yuv420p(tmp_path):
    path = tmp_path / "codec.mp4"
    with VideoWriter(path, 37, 23, fps=10) as writer:
        for f in _gradient_frames(3, 23, 37):
            writer.write(f)
    text = _ffmpeg_info(path)
    assert "h264" in text
    assert "yuv420p" in text


def test_video_writer_on_error_leaves_nothing(tmp_path):
    path = tmp_path / "fail.mp4"
    with pytest.raises(ZeroDivisionError):
        with VideoWriter(path, 16, 16, fps=10) as writer:
            writer.write(np.zeros((16, 16, 3), np.uint8))
            1 / 0
    assert list(tmp_path.iterdir()) == []


def test_video_writer_keeps_old_file_until_clean_close(tmp_path):
    path = tmp_path / "keep.mp4"
    path.write_bytes(b"old results")
    with pytest.raises(RuntimeError):
        with VideoWriter(path, 16, 16, fps=10) as writer:
            writer.write(np.zeros((16, 16, 3), np.uint8))
            raise RuntimeError("crash mid-write")
    assert path.read_bytes() == b"old results"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.mp4"]


def test_video_writer_unwritable_location_fails_loudly(tmp_path):
    path = tmp_path / "no" / "such" / "folder" / "out.mp4"
    with pytest.raises(OutputError) as err:
        with VideoWriter(path, 64, 64, fps=10) as writer:
            for _ in range(300):  # more than the pipe buffers: ffmpeg's exit shows as a broken pipe
                writer.write(np.zeros((64, 64, 3), np.uint8))
    assert str(path) in str(err.value)
    assert not path.exists()


def test_video_writer_failure_message_says_why(tmp_path):
    path = tmp_path / "no" / "such" / "folder" / "out.mp4"
    with pytest.raises(OutputError) as err:
        with VideoWriter(path, 64, 64, fps=10) as writer:
            for _ in range(300):
                writer.write(np.zeros((64, 64, 3), np.uint8))
    assert "STDERR OUTPUT" not in str(err.value)


def test_video_writer_short_video_to_unwritable_location_raises(tmp_path):
    path = tmp_path / "no" / "such" / "folder" / "out.mp4"
    with pytest.raises(OutputError) as err:
        with VideoWriter(path, 16, 16, fps=10) as writer:
            writer.write(np.zeros((16, 16, 3), np.uint8))
    assert str(path) in str(err.value)


@pytest.mark.parametrize("where", ["waiting for ffmpeg", "checking the file"])
def test_video_writer_interrupted_while_closing_ends_ffmpeg_and_removes_its_temporary(tmp_path, monkeypatch, where):
    """Ctrl-C inside close (while ffmpeg finishes the file, or during the readability check):
    ffmpeg is ended and the temporary removed on the way out; a second close does nothing."""
    writer = VideoWriter(tmp_path / "v.mp4", 32, 16, fps=10)
    for f in _gradient_frames(5, 16, 32):
        writer.write(f)
    if where == "waiting for ffmpeg":
        real_wait, calls = writer._proc.wait, []

        def wait(*args, **kwargs):
            calls.append(1)
            if len(calls) == 1:
                raise KeyboardInterrupt
            return real_wait(*args, **kwargs)

        monkeypatch.setattr(writer._proc, "wait", wait)
    else:
        def interrupted(self):
            raise KeyboardInterrupt

        monkeypatch.setattr(VideoWriter, "_readable", interrupted)
    with pytest.raises(KeyboardInterrupt):
        writer.close()
    assert writer._proc.poll() is not None
    assert list(tmp_path.iterdir()) == []
    writer.close()


def test_video_writer_failed_check_removes_its_temporary(tmp_path, monkeypatch):
    monkeypatch.setattr(VideoWriter, "_readable", lambda self: False)
    with pytest.raises(OutputError, match="did not finish"):
        with VideoWriter(tmp_path / "v.mp4", 32, 16, fps=10) as writer:
            writer.write(_gradient_frames(1, 16, 32)[0])
    assert list(tmp_path.iterdir()) == []


def test_unreadable_folder_is_an_input_error(tmp_path, monkeypatch):
    """A folder that may not be listed (chmod does not stop root, so iterdir is made to refuse)."""
    folder = write_frame_folder(tmp_path / "locked", make_clip(12))
    real = Path.iterdir

    def iterdir(self):
        if self == folder:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(InputError, match="locked: cannot read it \\(Permission denied\\)"):
        read_frames(folder)


# ------------------------------------------------------------------- time_s: one rule, two callers


def _video_info(fps: float = 10.0) -> VideoInfo:
    return VideoInfo(Path("clip.mp4"), "video", 64, 48, fps, False, 6)


@pytest.mark.parametrize(
    "stamps, n, decoded_all, source",
    [
        ([0.0, 0.1, 0.3, 0.4, 0.9, 1.0], 6, True, "timestamps"),
        ([0.0, 0.1, 0.3, 0.4, 0.9, 1.0], 4, False, "timestamps"),  # explain stopped after 4 frames
        ([0.0, 0.1, 0.3, 0.4, 0.9, 1.0], 4, True, "frame index / fps"),  # detect decoded 4 of 6: damaged
        ([0.0, 0.1, 0.3, 0.4, 0.9, 1.0], 7, False, "frame index / fps"),  # fewer timestamps than frames
        ([0.0, 0.1, 0.1, 0.4, 0.9, 1.0], 6, True, "frame index / fps"),  # a repeated timestamp
        ([0.0, 0.1, 0.1, 0.4, 0.9, 1.0], 2, False, "frame index / fps"),  # ... past the frames explain saw
        (None, 6, True, "frame index / fps"),  # some packet had no timestamp
    ],
)
def test_frame_times_rule(monkeypatch, stamps, n, decoded_all, source):
    monkeypatch.setattr(video_module, "frame_timestamps", lambda path: None if stamps is None else np.array(stamps))
    times, got = frame_times(_video_info(), n, decoded_all=decoded_all)
    assert got == source and len(times) == n
    expected = np.array(stamps[:n]) if source == "timestamps" else np.arange(n) / 10.0
    np.testing.assert_allclose(times, expected)
