"""`explain(...)` and guided backpropagation."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from stan_cli.cli import app
from stan_cli.errors import InputError, OutputError
from stan_cli import explain as explain_module
from stan_cli.explain import MAP_FILES, PANEL_FILES, explain
from stan_cli.inference import _GuidedELU, guided_backprop
from stan_cli.model import TINY, WINDOW, Discriminator
from stan_cli.video import is_frame_folder, list_frames, read_frames

from conftest import HEIGHT, N_FRAMES, WIDTH, make_clip, write_frame_folder, write_video


def test_guided_elu_backward_by_hand():
    x = torch.tensor([-1.0, 0.5, 2.0, -2.0], requires_grad=True)
    y = _GuidedELU.apply(x)
    assert torch.allclose(y, F.elu(x.detach()))
    y.backward(torch.tensor([1.0, -1.0, 2.0, -3.0]))
    # positive gradients pass, times ELU's derivative (exp(x) below 0, 1 above); negative ones stop
    expected = torch.tensor([math.exp(-1.0), 0.0, 2.0, 0.0])
    assert torch.allclose(x.grad, expected)


def _reference_guided(disc: Discriminator, windows: torch.Tensor) -> torch.Tensor:
    """An independent implementation: plain ELU, a hook on each ELU output that keeps only the
    positive part of the gradient; autograd then applies ELU's own derivative."""

    def act(z):
        out = F.elu(z)
        out.register_hook(lambda g: g.clamp(min=0))
        return out

    x = windows.clone().requires_grad_(True)
    F.softplus(-disc(x, activation=act)).mean(dim=(1, 2)).sum().backward()  # the d score, -log D
    return x.grad.abs().sum(dim=1)[:, 0]


def test_guided_backprop_matches_reference():
    torch.manual_seed(0)
    disc = Discriminator(TINY)
    windows = torch.rand(2, 11, 1, 32, 32) * 2 - 1
    got = guided_backprop(disc, windows)
    assert got.shape == (2, 32, 32)
    assert torch.allclose(got, _reference_guided(disc, windows), rtol=1e-5, atol=1e-12)
    # differs from the plain gradient: the guidance matters
    x = windows.clone().requires_grad_(True)
    F.softplus(-disc(x)).mean(dim=(1, 2)).sum().backward()
    assert not torch.allclose(got, x.grad.abs().sum(dim=1)[:, 0])


def test_guided_backprop_leaves_the_model_alone():
    disc = Discriminator(TINY).train()
    before = [p.detach().clone() for p in disc.parameters()]
    guided_backprop(disc, torch.zeros(1, 11, 1, 32, 32))
    assert disc.training and all(p.requires_grad and p.grad is None for p in disc.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, disc.parameters()))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_guided_backprop_hand_built_case(sign):
    """The target is the d score, -log D: d(-log D)/d logit = -(1 - D) < 0. With the last
    layer's weights all positive, every gradient arriving at the last ELU is negative: guided
    backprop stops it and the map is zero, though the plain gradient is not. With them all
    negative (features that lower D, so raise -log D), it passes."""
    torch.manual_seed(0)
    disc = Discriminator(TINY)
    with torch.no_grad():
        disc.convs[-1].weight.copy_(sign * disc.convs[-1].weight.abs())
    windows = torch.rand(1, 11, 1, 32, 32) * 2 - 1
    guided = guided_backprop(disc, windows)
    x = windows.clone().requires_grad_(True)
    F.softplus(-disc(x)).mean().backward()
    assert x.grad.abs().sum() > 0
    if sign > 0:
        assert torch.count_nonzero(guided) == 0
    else:
        assert torch.count_nonzero(guided) > 0


def test_explain_writes_panels_and_maps(clip_video, tiny_weights_calibrated, tmp_path):
    out = tmp_path / "ex"
    result = explain(clip_video, 20, out=out, weights=tiny_weights_calibrated, device="cpu")
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([*PANEL_FILES, *MAP_FILES, "explanation.json"])
    for name in PANEL_FILES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in MAP_FILES:
        arr = np.load(out / name)
        assert arr.dtype == np.float32 and arr.shape == (HEIGHT, WIDTH)
        assert np.isfinite(arr).all() and (arr >= 0).all()
    values = json.loads((out / "explanation.json").read_text())
    assert values["frame"] == 20 and values["time_s"] == pytest.approx(2.0)
    assert values["pixel_loss"] == pytest.approx(result.pixel_loss)
    assert values["score_raw"] == pytest.approx(result.pixel_loss + values["lambda_s"] * result.d_loss)
    assert isinstance(values["abnormal"], bool)
    # the pixel-loss map's mean is (close to) the frame's pixel loss: same quantity, resized
    assert result.pixel_loss_map.mean() == pytest.approx(result.pixel_loss, rel=0.1)
    assert result.generated.shape == (HEIGHT, WIDTH) and result.generated.dtype == np.uint8


def test_explain_frame_folder_and_video_agree(clip_video, clip_folder, tiny_weights):
    a = explain(clip_folder, 12, weights=tiny_weights)
    b = explain(clip_video, 12, weights=tiny_weights)
    assert a.pixel_loss == pytest.approx(b.pixel_loss, rel=0.05)
    assert a.values["score_raw"] is None  # no calibration: said, not invented
    assert a.values["input"]["fps_assumed"] is True and b.values["input"]["fps_assumed"] is False  # a folder's 25 fps is assumed


def test_explain_verdict_follows_score_and_threshold_like_detect(clip_video, tiny_weights, tiny_weights_calibrated):
    from stan_cli.detect import detect
    from stan_cli.errors import StanError

    clip = detect(clip_video, weights=tiny_weights_calibrated, score="g")
    base = explain(clip_video, 12, weights=tiny_weights_calibrated, score="g")
    assert base.values["score_raw"] == pytest.approx(clip.score_raw[12], rel=1e-4)
    assert base.values["threshold"] == clip.threshold and base.values["threshold_source"] == clip.threshold_source
    assert base.values["abnormal"] == bool(clip.abnormal[12])
    for thr, verdict in ((base.values["score_raw"] * 2, False), (base.values["score_raw"] / 2, True)):
        v = explain(clip_video, 12, weights=tiny_weights_calibrated, score="g", threshold=str(thr)).values
        assert v["threshold"] == thr and v["threshold_source"] == "--threshold" and v["abnormal"] is verdict
    d = explain(clip_video, 12, weights=tiny_weights_calibrated, score="d").values
    assert d["score_raw"] == pytest.approx(d["d_loss"]) and d["score_kind"] == "d"
    # without calibration: g with a number gives a verdict; gd has no lambda_s to weigh d with
    g = explain(clip_video, 12, weights=tiny_weights, score="g", threshold="0").values
    assert g["abnormal"] is True and "note" not in g
    # from Python, a whole number is a threshold too (not silently the calibrated one)
    whole = explain(clip_video, 12, weights=tiny_weights_calibrated, score="g", threshold=1000).values
    assert whole["threshold"] == 1000.0 and whole["threshold_source"] == "--threshold" and whole["abnormal"] is False
    gd = explain(clip_video, 12, weights=tiny_weights, threshold="0").values
    assert gd["score_raw"] is None and gd["abnormal"] is None and "--score g or d" in gd["note"]
    with pytest.raises(StanError, match="--threshold clip needs the whole clip"):
        explain(clip_video, 12, weights=tiny_weights, threshold="clip")
    with pytest.raises(StanError, match="--score x: unknown"):
        explain(clip_video, 12, weights=tiny_weights, score="x")


@pytest.mark.parametrize("frame", [0, 4, N_FRAMES - 5, N_FRAMES + 100])
def test_explain_frame_out_of_range(clip_video, tiny_weights, frame):
    with pytest.raises(InputError, match=f"valid frames are 5 to {N_FRAMES - 6}"):
        explain(clip_video, frame, weights=tiny_weights)


@pytest.mark.parametrize("frame", [0, 4])
def test_explain_early_frame_is_refused_without_decoding(clip_video, clip_folder, tiny_weights, monkeypatch, frame):
    """Frames 0 to 4 never have a window; the valid range comes from counting, not decoding, the clip."""
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded")

    monkeypatch.setattr(explain_module, "read_frames", no_decoding)
    for clip in (clip_video, clip_folder):
        with pytest.raises(InputError, match=f"valid frames are 5 to {N_FRAMES - 6}"):
            explain(clip, frame, weights=tiny_weights)


def test_explain_refuses_a_full_out_before_decoding(clip_video, tiny_weights, tmp_path, monkeypatch):
    (tmp_path / "keep.txt").write_text("x")
    monkeypatch.setattr(explain_module, "read_frames", lambda *a, **k: pytest.fail("decoded before the --out check"))
    with pytest.raises(OutputError, match="already holds files"):
        explain(clip_video, 12, out=tmp_path, weights=tiny_weights)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_explain_refuses_non_empty_out(clip_video, tiny_weights, tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(OutputError):
        explain(clip_video, 10, out=tmp_path, weights=tiny_weights)


def test_explain_into_its_frame_folder_leaves_the_frames_readable(tiny_weights, tmp_path):
    """An explanation inside the frame folder it reads is stan's own output folder there
    (video.is_stan_output): the folder still holds the same frames, and reads the same."""
    frames = write_frame_folder(tmp_path / "cam", make_clip(N_FRAMES, seed=0))
    before = list_frames(frames)
    explain(frames, 10, out=frames / "explained", weights=tiny_weights)
    assert (frames / "explained" / "explanation.json").is_file()
    assert list_frames(frames) == before and is_frame_folder(frames)


@pytest.mark.parametrize("step, failure", [
    ("discriminator_map", KeyboardInterrupt),  # Ctrl-C while the discriminator is backpropagated
    ("score_windows", KeyboardInterrupt),
    ("frame_times", InputError),  # an error while the frame's time is looked up
])
def test_explain_failing_after_the_folder_is_made_leaves_no_folder(clip_video, tiny_weights, tmp_path, monkeypatch,
                                                                    step, failure):
    def fails(*args, **kwargs):
        raise failure("simulated") if failure is InputError else failure

    monkeypatch.setattr(explain_module, step, fails)
    out = tmp_path / "ex"
    with pytest.raises(failure):
        explain(clip_video, 10, out=out, weights=tiny_weights)
    assert not out.exists()
    # a folder that was there already stays, with the user's files
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(failure):
        explain(clip_video, 10, out=mine, weights=tiny_weights, overwrite=True)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_explain_cli(clip_video, tiny_weights, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["explain", str(clip_video), "--frame", "15", "--out", str(tmp_path / "e"), "--weights", str(tiny_weights)])
    assert ok.exit_code == 0, ok.output
    assert "pixel loss" in ok.output and "Results written to" in ok.output.strip().splitlines()[-1]
    bad = runner.invoke(app, ["explain", str(clip_video), "--frame", "2", "--out", str(tmp_path / "f"), "--weights", str(tiny_weights)])
    assert bad.exit_code == 1 and "valid frames are 5 to 34" in bad.output and "Traceback" not in bad.output
    missing = runner.invoke(app, ["explain", str(clip_video)])
    assert missing.exit_code == 2  # --frame is required


# --------------------------------------------- the frame explained is detect's frame `frame`


@pytest.mark.parametrize("bad", [0, 7, 25])  # the first image, one before the window, the window's last (20 + 5)
def test_a_folder_with_an_unreadable_image_up_to_the_window_end_is_refused(clip_folder, tiny_weights, tmp_path, bad):
    """ffmpeg skips an image it cannot decode: without the check, frame 20 would be image 21."""
    folder = shutil.copytree(clip_folder, tmp_path / "clip")
    (folder / f"{bad}.png").write_text("garbage")
    with pytest.raises(InputError) as err:
        explain(folder, 20, out=tmp_path / "ex", weights=tiny_weights)
    message = str(err.value)
    assert str(folder) in message and f"({bad}.png not an image)" in message
    assert "unreadable" in message and "Remove or replace the corrupt image" in message
    assert not (tmp_path / "ex").exists()


def test_an_unreadable_image_is_one_error_line_from_the_cli(clip_folder, tiny_weights, tmp_path):
    folder = shutil.copytree(clip_folder, tmp_path / "clip")
    (folder / "7.png").write_text("garbage")
    result = CliRunner().invoke(app, ["explain", str(folder), "--frame", "20", "--out", str(tmp_path / "ex"),
                                      "--weights", str(tiny_weights)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "7.png not an image" in result.output and "Remove or replace" in result.output
    assert not (tmp_path / "ex").exists()


@pytest.mark.parametrize("bad", [None, 26])  # an intact folder; an unreadable image after the window
def test_explain_shows_the_asked_frame(clip_folder, clip_frames, tiny_weights, tmp_path, bad):
    folder = shutil.copytree(clip_folder, tmp_path / "clip")
    if bad is not None:
        (folder / f"{bad}.png").write_text("garbage")  # never read: explain stops at frame + 5
    result = explain(folder, 20, weights=tiny_weights)
    assert np.array_equal(result.real, clip_frames[20])  # PNG is lossless: the very frame


def test_read_frames_first_stops_there_and_checks_only_those_images(clip_folder, clip_video, tmp_path):
    info, frames = read_frames(clip_video, first=12)
    assert len(list(frames)) == 12 and frames.complete  # stopped on purpose, not cut short
    folder = shutil.copytree(clip_folder, tmp_path / "clip")
    (folder / "30.png").write_text("garbage")
    info, frames = read_frames(folder, first=12)
    assert len(list(frames)) == 12 and info.n_frames == N_FRAMES  # info is still the whole clip's
    (folder / "11.png").write_text("garbage")
    with pytest.raises(InputError, match="decoded 11 of the first 12 images"):
        list(read_frames(folder, first=12)[1])


def test_a_truncated_video_gives_detects_frames_and_says_where_it_ends(tiny_weights, tmp_path):
    from stan_cli.detect import detect

    whole = write_video(tmp_path / "whole.mkv", make_clip(n=40))
    data = whole.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) * 3 // 4])
    _, frames = read_frames(cut)
    decoded = list(frames)
    n = len(decoded)
    assert WINDOW <= n < 40 and not frames.complete
    clip = detect(cut, weights=tiny_weights)
    last = explain(cut, n - 6, weights=tiny_weights)
    assert np.array_equal(last.real, decoded[n - 6])
    assert last.pixel_loss == pytest.approx(clip.pixel_loss[n - 6], rel=1e-4)
    with pytest.raises(InputError) as err:
        explain(cut, n - 5, weights=tiny_weights)
    message = str(err.value)
    assert str(cut) in message and "truncated" in message and f"after {n} of about" in message
    assert f"can be explained are 5 to {n - 6}" in message
