"""The flagged moments as clips: report/segments/segment_001.mp4, ... (stan_cli/segments.py).

conftest's clip has a bright square racing across frames 18-27, which the tiny untrained
weights flag under the per-clip threshold: one segment, 18-27, at 10 fps.
"""

from __future__ import annotations

import json
import subprocess

import imageio_ffmpeg
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_clip, write_frame_folder
from stan_cli import report_html, segments
from stan_cli.cli import app
from stan_cli.detect import detect
from stan_cli.errors import OutputError, StanError
from stan_cli.scoring import Segment
from stan_cli.video import read_frames

pytestmark = pytest.mark.usefixtures("one_thread")


def frames_of(path) -> np.ndarray:
    _, stream = read_frames(path)
    return np.stack(list(stream)).astype(np.float32)


def matching_frames(clip, source: np.ndarray) -> list[int]:
    """For each frame of the clip, the index of the source frame it is closest to."""
    return [int(np.argmin(np.abs(source - frame).mean(axis=(1, 2, 3)))) for frame in frames_of(clip)]


def stream_info(path) -> str:
    return subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr


def test_plan_pads_each_segment_and_stays_inside_the_input():
    found = [Segment(2, 4, 3, 1.0), Segment(30, 35, 31, 2.0)]
    at = lambda fps: np.arange(40) / fps  # noqa: E731 - a constant rate: frame / fps
    assert segments.plan(found, at(10.0), padding_s=1.0) == [
        segments.Clip(1, 0, 14, "segments/segment_001.mp4"),
        segments.Clip(2, 20, 39, "segments/segment_002.mp4"),
    ]
    assert [(c.first, c.last) for c in segments.plan(found, at(10.0), padding_s=0.0)] == [(2, 4), (30, 35)]
    assert [(c.first, c.last) for c in segments.plan(found, at(25.0), padding_s=0.1)] == [(0, 7), (27, 38)]


def test_plan_pads_in_seconds_of_a_variable_rate_video():
    """Padding counts the footage's seconds, not frames at a nominal rate: at least padding_s of
    it before the first frame and after the last one ends."""
    t = np.array([0.0, 0.04, 0.08, 0.5, 1.0, 1.04, 1.08, 2.0, 2.04])
    (clip,) = segments.plan([Segment(4, 5, 4, 1.0)], t, padding_s=0.1)
    assert (clip.first, clip.last) == (3, 6)  # from 0.5 s (shown at 0.9 s); up to 1.08 s (< 1.08 + 0.1)
    (clip,) = segments.plan([Segment(7, 8, 8, 1.0)], t, padding_s=0.0)
    assert (clip.first, clip.last) == (7, 8)
    (clip,) = segments.plan([Segment(4, 5, 4, 1.0)], t, padding_s=0.0)
    assert (clip.first, clip.last) == (4, 5)


def test_a_segment_lasts_until_the_frame_after_it():
    from stan_cli.report import segment_duration

    t = np.array([0.0, 0.04, 0.08, 0.5, 1.0, 1.04, 1.08, 2.0, 2.04])
    assert segment_duration(t, Segment(4, 5, 4, 1.0)) == pytest.approx(0.08)  # 1.0 to 1.08, where frame 6 begins
    assert segment_duration(t, Segment(0, 2, 0, 1.0)) == pytest.approx(0.12)  # a gap after it: one of its periods
    paused = np.r_[np.arange(25) / 25, 3600 + np.arange(5) / 25]  # a camera that stopped recording for an hour
    assert segment_duration(paused, Segment(20, 24, 22, 1.0)) == pytest.approx(0.2)
    assert [(c.first, c.last) for c in segments.plan([Segment(20, 24, 22, 1.0)], paused, padding_s=1.0)] == [(0, 24)]
    assert segment_duration(t, Segment(8, 8, 8, 1.0)) == pytest.approx(0.04)  # the last: one typical period
    assert segment_duration(np.arange(10) / 25, Segment(2, 6, 3, 1.0)) == pytest.approx(0.2)  # 5 frames at 25 fps


@pytest.mark.parametrize("fps", [None, 4.0])
def test_a_variable_rate_video_segment_clip_holds_its_frames_with_or_without_fps(tmp_path, tiny_weights, fps):
    """10 frames 0.1 s apart, then 10 frames 0.5 s apart; frame t has brightness 20 + 10 t. With --fps
    the report's times are frame / fps, and the clip must still hold the frames the report names."""
    from test_robustness import encode

    source = np.repeat(np.arange(20, 220, 10, dtype=np.uint8), 48 * 64 * 3).reshape(20, 48, 64, 3)
    video = encode(tmp_path / "vfr.mp4", source, "-vf", "setpts='if(lt(N,10),N*0.1,1+(N-10)*0.5)/TB'",
                   "-fps_mode", "vfr", "-c:v", "libx264", "-crf", "12", "-pix_fmt", "yuv420p")
    out = tmp_path / "r"
    result = detect(video, out=out, weights=tiny_weights, device="cpu", write_video=False, fps=fps, score="g",
                    threshold="0", clip_padding=0.0)
    assert [(s.start, s.end) for s in result.segments] == [(5, 14)]  # every scored frame
    assert matching_frames(out / "segments" / "segment_001.mp4", source.astype(np.float32)) == list(range(5, 15))


def test_a_video_segment_becomes_a_clip_of_its_frames_that_plays_in_a_browser(clip_video, clip_frames, tiny_weights, tmp_path):
    out = tmp_path / "r"
    result = detect(clip_video, out=out, weights=tiny_weights, device="cpu", write_video=False)
    assert [(s.start, s.end) for s in result.segments] == [(18, 27)]
    clip = out / "segments" / "segment_001.mp4"
    assert matching_frames(clip, clip_frames.astype(np.float32)) == list(range(8, 38))  # 1 s either side at 10 fps
    info = stream_info(clip)
    assert "h264" in info and "yuv420p" in info and "64x48" in info
    data = clip.read_bytes()
    assert 0 <= data.find(b"moov") < data.find(b"mdat")  # faststart: the index before the pictures
    entry = json.loads((out / "summary.json").read_text())["segments"][0]
    assert (entry["clip"], entry["clip_start_s"], entry["clip_end_s"]) == ("segments/segment_001.mp4", 0.8, 3.7)
    assert list(out.glob(".segments*")) == []  # the run's own folder is gone


def test_a_frame_folder_segment_is_encoded_from_its_images(tmp_path, tiny_weights):
    """An odd-sized frame folder: the clip is its images 8-37, padded to even sides for yuv420p."""
    frames = make_clip(height=47, width=63)
    folder = write_frame_folder(tmp_path / "frames", frames)
    out = tmp_path / "r"
    result = detect(folder, out=out, weights=tiny_weights, device="cpu", write_video=False, clip_padding=0.5, fps=10)
    assert [(s.start, s.end) for s in result.segments] == [(18, 27)]
    clip = out / "segments" / "segment_001.mp4"
    assert "64x48" in stream_info(clip)
    padded = np.pad(frames, ((0, 0), (0, 1), (0, 1), (0, 0))).astype(np.float32)
    assert matching_frames(clip, padded) == list(range(13, 33))  # 0.5 s at 10 fps: 5 frames either side


def test_the_clip_is_cut_by_seeking_not_by_decoding_from_the_start(clip_video, tiny_weights, tmp_path, monkeypatch):
    """-ss before -i: ffmpeg starts decoding at the keyframe before the clip."""
    calls = []
    real = subprocess.run

    def spy(cmd, *args, **kwargs):
        calls.append(cmd)
        return real(cmd, *args, **kwargs)

    monkeypatch.setattr(segments.subprocess, "run", spy)
    detect(clip_video, out=tmp_path / "r", weights=tiny_weights, device="cpu", write_video=False)
    (cmd,) = [c for c in calls if "libx264" in c]
    assert cmd.index("-ss") < cmd.index("-i") and float(cmd[cmd.index("-ss") + 1]) == pytest.approx(0.8)
    assert float(cmd[cmd.index("-t") + 1]) == pytest.approx(2.95)  # frames 8-37: to the middle of the last


def test_no_clips_and_an_earlier_reports_clips(clip_video, tiny_weights, tmp_path):
    """--no-clips writes none, and an --overwrite without clips removes an earlier run's: a report
    folder never holds another run's clips."""
    out = tmp_path / "r"
    detect(clip_video, out=out, weights=tiny_weights, device="cpu", write_video=False)
    assert (out / "segments" / "segment_001.mp4").is_file()
    result = detect(clip_video, out=out, weights=tiny_weights, device="cpu", write_video=False, clips=False, overwrite=True)
    assert not (out / "segments").exists() and result.summary["clips"] is None
    assert "segment_001.mp4" not in (out / "index.html").read_text()


def test_a_failed_run_leaves_the_earlier_clips(clip_video, tiny_weights, tmp_path, monkeypatch):
    out = tmp_path / "r"
    detect(clip_video, out=out, weights=tiny_weights, device="cpu", write_video=False)
    before = (out / "segments" / "segment_001.mp4").read_bytes()

    def broken(*args, **kwargs):
        raise OutputError("the page could not be written")

    monkeypatch.setattr(report_html, "write_index_html", broken)
    with pytest.raises(OutputError, match="page"):
        detect(clip_video, out=out, weights=tiny_weights, device="cpu", write_video=False, clip_padding=0.2, overwrite=True)
    assert (out / "segments" / "segment_001.mp4").read_bytes() == before
    assert sorted(p.name for p in (out / "segments").iterdir()) == ["segment_001.mp4"]
    assert [p.name for p in out.iterdir() if p.name.startswith(".segments")] == []


def test_overwrite_refuses_a_segments_folder_holding_other_files(clip_video, tiny_weights, tmp_path):
    out = tmp_path / "r"
    detect(clip_video, out=out, weights=tiny_weights, device="cpu", write_video=False)
    (out / "segments" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="notes.txt.*stan did not write"):
        detect(clip_video, out=out, weights=tiny_weights, device="cpu", write_video=False, overwrite=True)
    assert (out / "segments" / "notes.txt").read_text() == "mine" and (out / "segments" / "segment_001.mp4").is_file()


def test_an_interrupted_runs_clips_folder_is_removed_by_overwrite(clip_video, tiny_weights, tmp_path):
    out = tmp_path / "r"
    detect(clip_video, out=out, weights=tiny_weights, device="cpu", write_video=False)
    left = out / ".segments.123-0a1b2c3d.tmp"
    left.mkdir()
    (left / "segment_001.mp4").write_bytes(b"half")
    detect(clip_video, out=out, weights=tiny_weights, device="cpu", write_video=False, overwrite=True)
    assert not left.exists()


@pytest.mark.parametrize("padding", [-1, float("nan"), float("inf"), 4000])
def test_clip_padding_is_checked_before_any_work(clip_video, tiny_weights, tmp_path, padding):
    with pytest.raises(StanError, match="--clip-padding"):
        detect(clip_video, out=tmp_path / "r", weights=tiny_weights, clip_padding=padding)
    assert not (tmp_path / "r").exists()


def test_cli_options(clip_video, tiny_weights, tmp_path):
    runner = CliRunner()
    out = tmp_path / "r"
    result = runner.invoke(app, ["detect", str(clip_video), "--out", str(out), "--weights", str(tiny_weights),
                                 "--no-video", "--clip-padding", "0.5"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "summary.json").read_text())["clips"]["padding_s"] == 0.5
    result = runner.invoke(app, ["detect", str(clip_video), "--out", str(out), "--weights", str(tiny_weights),
                                 "--no-video", "--no-clips", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert not (out / "segments").exists()
