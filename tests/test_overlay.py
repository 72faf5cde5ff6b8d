"""Overlay helpers: pure numpy image functions, checked on tiny synthetic images."""

from __future__ import annotations

import numpy as np
import pytest

from stan_cli import overlay
from stan_cli.overlay import (
    colormap_lut,
    compose_frame,
    draw_border,
    draw_text,
    heat_overlay,
    resize_bilinear,
    score_strip,
    text_size,
)


@pytest.fixture
def frame() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)


def test_colormap_lut_shape_and_cache() -> None:
    lut = colormap_lut("inferno")
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    assert colormap_lut("inferno") is lut
    # inferno runs from near-black to a pale yellow
    assert lut[0].sum() < 30 and lut[-1].sum() > 600


def test_resize_bilinear_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    a = np.random.default_rng(1).random((7, 5)).astype(np.float32)
    ours = resize_bilinear(a, 20, 13)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(a)[None, None], size=(20, 13), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    assert ours.shape == (20, 13) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_resize_bilinear_downsample_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    a = np.random.default_rng(2).random((16, 21)).astype(np.float32)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(a)[None, None], size=(5, 8), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    np.testing.assert_allclose(resize_bilinear(a, 5, 8), ref, atol=1e-5)


def test_resize_bilinear_constant_stays_constant() -> None:
    out = resize_bilinear(np.full((3, 3), 0.25), 10, 1)
    np.testing.assert_allclose(out, 0.25)


def test_heat_overlay_zero_heat_is_identity(frame: np.ndarray) -> None:
    out = heat_overlay(frame, np.zeros((6, 8)))
    np.testing.assert_array_equal(out, frame)
    assert out is not frame


def test_heat_overlay_full_heat_changes_frame(frame: np.ndarray) -> None:
    out = heat_overlay(frame, np.ones((6, 8)))
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert not np.array_equal(out, frame)


def test_heat_overlay_nan_or_none_leaves_frame(frame: np.ndarray) -> None:
    np.testing.assert_array_equal(heat_overlay(frame, np.full((6, 8), np.nan)), frame)
    np.testing.assert_array_equal(heat_overlay(frame, None), frame)


def test_heat_overlay_is_local(frame: np.ndarray) -> None:
    heat = np.zeros((48, 64))
    heat[:, 32:] = 1.0
    out = heat_overlay(frame, heat)
    np.testing.assert_array_equal(out[:, :31], frame[:, :31])
    assert not np.array_equal(out[:, 33:], frame[:, 33:])


def test_font_glyphs_are_5x7() -> None:
    for ch, glyph in overlay._GLYPHS.items():
        assert len(glyph) == 7, ch
        assert all(len(row) == 5 and set(row) <= {" ", "#"} for row in glyph), ch
    for ch in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ .:-/=%()[]":
        assert ch in overlay._GLYPHS


def test_draw_text_draws_inside_its_box() -> None:
    img = np.zeros((40, 100, 3), dtype=np.uint8)
    draw_text(img, "a1", 3, 4, scale=2, background=(9, 9, 9))
    w, h = text_size("a1", scale=2)
    assert (img[4 : 4 + h, 3 : 3 + w] == 255).any()  # ink
    assert (img[4 : 4 + h, 3 : 3 + w] == 9).any()  # background
    outside = img.copy()
    outside[4 : 4 + h, 3 : 3 + w] = 0
    assert not outside.any()


def test_draw_text_lowercase_equals_uppercase() -> None:
    a = np.zeros((20, 80, 3), dtype=np.uint8)
    b = np.zeros((20, 80, 3), dtype=np.uint8)
    draw_text(a, "score", 0, 0, scale=1)
    draw_text(b, "SCORE", 0, 0, scale=1)
    np.testing.assert_array_equal(a, b)


def test_draw_text_unknown_char_is_space() -> None:
    a = np.zeros((20, 80, 3), dtype=np.uint8)
    b = np.zeros((20, 80, 3), dtype=np.uint8)
    draw_text(a, "A~B", 0, 0, scale=1)
    draw_text(b, "A B", 0, 0, scale=1)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("x, y", [(90, 10), (-7, -3), (0, 35), (500, 500), (-500, 0)])
def test_draw_text_clips_at_edges(x: int, y: int) -> None:
    img = np.zeros((40, 100, 3), dtype=np.uint8)
    draw_text(img, "FRAME 12 T=0.40S", x, y, scale=3)
    assert img.shape == (40, 100, 3)


def test_draw_border() -> None:
    img = np.zeros((10, 12, 3), dtype=np.uint8)
    draw_border(img, 2, (255, 0, 0))
    assert (img[0, :, 0] == 255).all() and (img[:, -1, 0] == 255).all()
    assert (img[1, 5] == (255, 0, 0)).all()
    assert not img[2:-2, 2:-2].any()


def test_score_strip_shape_dtype_and_marker() -> None:
    scores = np.concatenate([np.full(5, np.nan), np.linspace(0, 1, 90), np.full(5, np.nan)])
    strip = score_strip(200, 30, scores, current=50, threshold=0.5, vmax=None)
    assert strip.shape == (30, 200, 3) and strip.dtype == np.uint8
    assert (strip[:, 100:102] == 255).all()  # frame 50 of 100 spans columns 100 and 101
    assert not (strip[:, 99] == 255).all() and not (strip[:, 102] == 255).all()
    bare = score_strip(200, 30, scores, current=-1, threshold=None, vmax=None)
    assert (bare[:, :10] == bare[0, 0]).all()  # unscored edge frames 0..4: background only
    assert (bare[:, 10:190] != bare[0, 0]).any(axis=-1).any(axis=0).all()  # a curve everywhere


def test_score_strip_long_clip_keeps_spikes() -> None:
    scores = np.zeros(100_000)
    scores[12_345] = 1.0
    strip = score_strip(300, 20, scores, current=-1, threshold=None, vmax=None)
    column = 12_345 * 300 // 100_000
    assert (strip[1, column] != strip[1, 0]).any()  # the spike reaches the top row


def test_score_strip_degenerate_inputs() -> None:
    for scores in (np.array([]), np.full(10, np.nan), np.zeros(10), np.ones(3)):
        strip = score_strip(50, 3, scores, current=0, threshold=0.5, vmax=1.0)
        assert strip.shape == (3, 50, 3)


def test_compose_frame_shape(frame: np.ndarray) -> None:
    strip = score_strip(frame.shape[1], 16, np.random.default_rng(3).random(30), 4, 0.7, 1.0)
    out = compose_frame(frame, np.ones((6, 8)) * 0.5, "frame 4 score=0.71", True, strip)
    assert out.shape == (48 + 16, 64, 3) and out.dtype == np.uint8
    assert (out[0, 0] == overlay.ABNORMAL_RED).all()
    np.testing.assert_array_equal(out[48:], strip)


def test_a_small_frame_gets_the_longest_label_that_fits(frame: np.ndarray) -> None:
    """64 px wide: the full label (150 px) would be cut off, so the short one is drawn whole."""
    labels = ("120  12.0S  SCORE 0.000882 / 0.000885", "120 0.000882 / 0.000885", "0.000882")
    assert overlay.fitting_label(labels, 600, 1) == labels[0]
    assert overlay.fitting_label(labels, 150, 1) == labels[1]
    assert overlay.fitting_label(labels, 60, 1) == labels[2] == overlay.fitting_label(labels, 5, 1)
    assert overlay.fitting_label("only one", 5, 1) == "only one"
    # detect keeps one version per video: the one that fits with the abnormal border
    assert [overlay.label_level(labels, w, h) for w, h in ((360, 240), (160, 120), (64, 48))] == [0, 1, 2]
    blank = np.zeros_like(frame)
    out = compose_frame(blank, None, labels, False)
    drawn = compose_frame(blank, None, labels[2], False)
    np.testing.assert_array_equal(out, drawn)
    width = overlay.text_size(labels[2], 1)[0]
    assert out[:, width + 1 :].max() == 0  # nothing drawn past the short label's box


def test_compose_frame_without_strip_or_heat(frame: np.ndarray) -> None:
    out = compose_frame(frame, None, "", False, None)
    np.testing.assert_array_equal(out, frame)


def test_compose_frame_rejects_wrong_strip_width(frame: np.ndarray) -> None:
    with pytest.raises(ValueError, match="strip"):
        compose_frame(frame, None, "x", False, np.zeros((8, 10, 3), dtype=np.uint8))
