"""Temporal pseudo-anomalies (`stan_cli.pseudo`) on tiny hand-made clips, and how the
discriminator phase puts them into its batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stan_cli import pseudo
from stan_cli.dataset import Clip, WindowSet
from stan_cli.model import TINY, Generator, split_window, with_middle
from stan_cli.train import TrainOptions, _fake_windows, _pseudo_batch, _Rank, pseudo_plan, ranking_auc
from stan_cli.windows import to_tensor

S = 32


def counting_clip(n: int = 60) -> np.ndarray:
    """Frame i is filled with the value i: a window's values are its frame numbers."""
    return np.repeat(np.arange(n, dtype=np.uint8)[:, None, None], S * S, axis=1).reshape(n, S, S)


def frame_numbers(window: np.ndarray) -> list[int]:
    assert all(len(np.unique(f)) == 1 for f in window)  # each frame one value
    return [int(f[0, 0]) for f in window]


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize("stride", pseudo.STRIDES)
def test_a_skipped_window_has_stride_k_around_the_same_centre(stride):
    window = pseudo.skip_window(counting_clip(), 30, stride)
    assert window.shape == (11, S, S) and window.dtype == np.uint8
    assert frame_numbers(window) == list(range(30 - 5 * stride, 30 + 5 * stride + 1, stride))


def test_a_skip_that_leaves_the_clip_is_refused_and_strides_fit_the_clip():
    with pytest.raises(ValueError):
        pseudo.skip_window(counting_clip(), 8, 2)
    assert pseudo.fitting_strides(60, 30) == [2, 3, 4, 5]
    assert pseudo.fitting_strides(60, 12) == [2]  # 12 - 5 x 3 < 0
    assert pseudo.fitting_strides(11, 5) == []


def test_make_skip_uses_a_stride_that_fits_and_freezes_frames_where_none_does():
    clips = [Clip("a", "a", counting_clip(60)), Clip("b", "b", counting_clip(11))]
    for seed in range(10):
        numbers = frame_numbers(pseudo.make("skip", clips, 0, 20, rng(seed)))
        step = numbers[1] - numbers[0]
        assert step in (2, 3, 4) and numbers == list(range(20 - 5 * step, 20 + 5 * step + 1, step))
    for kind in ("skip", "fast-region"):  # no stride fits an 11-frame clip: a repeat, not a reverse
        assert frame_numbers(pseudo.make(kind, clips, 1, 5, rng())) == frame_numbers(pseudo.repeat_window(clips[1].frames, rng()))


def test_a_reversed_window_is_reversed():
    window = counting_clip()[10:21]
    assert frame_numbers(pseudo.reverse_window(window)) == list(range(20, 9, -1))


def test_a_repeated_window_freezes_one_run_of_3_to_6_frames():
    window = counting_clip()[10:21]
    seen_lengths = set()
    for seed in range(40):
        numbers = frame_numbers(pseudo.repeat_window(window, rng(seed)))
        changed = [i for i, v in enumerate(numbers) if v != 10 + i]
        start = changed[0] - 1  # the run's first frame keeps its own value
        length = len(changed) + 1
        assert changed == list(range(start + 1, start + length))  # one contiguous run
        assert all(numbers[i] == numbers[start] for i in range(start, start + length))
        seen_lengths.add(length)
    assert seen_lengths == {3, 4, 5, 6}
    assert frame_numbers(window) == list(range(10, 21))  # the input is not changed


def test_a_pasted_patch_moves_in_a_straight_line_through_the_window():
    size = 224
    window = np.zeros((11, size, size), np.uint8)
    donor = np.full((size, size), 200, np.uint8)
    for seed in range(5):
        out = pseudo.patch_window(window, donor, rng(seed))
        centres = []
        for frame in out:
            ys, xs = np.nonzero(frame > 150)  # the patch's solid inside
            assert len(ys), "the patch is in every frame"
            centres.append((ys.mean(), xs.mean()))
        steps = np.diff(np.array(centres), axis=0)  # (10, 2) per-frame displacement
        speeds = np.hypot(*steps.T)
        assert 3 <= speeds.mean() <= 13  # 4-12 px a frame at 224, rounding aside
        assert np.allclose(steps, steps.mean(axis=0), atol=1.5)  # constant velocity
        assert (out[0] > 0).sum() < 0.1 * size * size  # a patch, not the frame
    assert np.array_equal(window, np.zeros_like(window))


def test_the_patch_border_is_soft():
    out = pseudo.patch_window(np.zeros((11, 224, 224), np.uint8), np.full((224, 224), 200, np.uint8), rng(1))
    values = np.unique(out[0])
    assert len(values) > 5 and values.max() == 200  # a ramp from 0 up to the donor's value


def moving_square_clip(n: int = 60, size: int = 96, side: int = 8, at: tuple[int, int] = (60, 10)) -> np.ndarray:
    """A still grey background with one bright square moving 1 px a frame to the right."""
    frames = np.full((n, size, size), 50, np.uint8)
    for i in range(n):
        frames[i, at[0] : at[0] + side, at[1] + i : at[1] + i + side] = 220
    return frames


def test_a_fast_region_speeds_up_the_moving_thing_and_leaves_the_rest_as_it_was():
    frames = moving_square_clip()
    t = 30
    window = frames[t - 5 : t + 6]
    for seed in range(8):
        made = pseudo.make("fast-region", [Clip("a", "a", frames)], 0, t, rng(seed))
        assert made.shape == window.shape and made.dtype == np.uint8
        assert np.array_equal(made[5], window[5])  # the centre frame is the same in both windows
        changed = np.nonzero((made != window).any(axis=0))
        assert len(changed[0]), "the region holds the moving square, so something changed"
        # only inside one square of at most a third of the side, around the square's path
        rows, cols = changed
        assert rows.max() - rows.min() < 96 // 3 + 1 and cols.max() - cols.min() < 96 // 3 + 1
        assert 60 - 96 // 3 < rows.mean() < 68 + 96 // 3
        # each pixel a blend of the normal window and the window skipped with one stride k, and
        # equal to the skipped one in the region's core: there the square moves k px a frame
        def blend_of(fast):
            lo, hi = np.minimum(window, fast), np.maximum(window, fast)
            return ((made >= lo) & (made <= hi)).all() and ((made == fast) & (made != window)).any()
        assert any(blend_of(pseudo.skip_window(frames, t, k)) for k in pseudo.fitting_strides(len(frames), t))


def test_a_fast_person_is_a_walker_sized_region_skipped_with_stride_2_or_3_only():
    frames = counting_clip(60)  # every stride 2..5 fits around frame 30; a pixel's values are frame numbers
    window = frames[25:36]
    strides = set()
    for seed in range(16):
        made, (box,) = pseudo.make_boxed("fast-person", [Clip("a", "a", frames)], 0, 30, rng(seed))
        top, left, side, _ = box
        assert S // 10 <= side == box[3] <= S // 6  # a walker's size, where fast-region is up to a third
        rows, cols = np.nonzero((made != window).any(axis=0))
        assert rows.min() >= top and rows.max() < top + side and cols.min() >= left and cols.max() < left + side
        centre = made[:, top + side // 2, left + side // 2].astype(int)  # the feather's weight is 1 there
        stride = centre[6] - centre[5]
        assert centre.tolist() == list(range(30 - 5 * stride, 31 + 5 * stride, stride))
        strides.add(int(stride))
    assert strides == {2, 3}  # both drawn, never 4 or 5
    assert pseudo.make_boxed("fast-person", [Clip("s", "s", counting_clip(20))], 0, 10, rng())[1] is None  # no stride fits: a repeat


def test_a_fast_region_lands_where_the_skipped_window_moves():
    window = np.full((11, 64, 64), 50, np.uint8)
    fast = window.copy()
    fast[:, 40:48, 40:48] = np.arange(11, dtype=np.uint8)[:, None, None] * 20  # only here it changes
    for seed in range(5):
        made = pseudo.fast_region_window(window, fast, rng(seed))
        rows, cols = np.nonzero((made != window).any(axis=0))
        assert rows.min() <= 47 and rows.max() >= 40 and cols.min() <= 47 and cols.max() >= 40
    # where nothing moves the region goes anywhere, and the window is unchanged
    assert np.array_equal(pseudo.fast_region_window(window, window.copy(), rng()), window)


def test_the_fast_region_border_is_soft():
    window = np.zeros((11, 64, 64), np.uint8)
    fast = np.full((11, 64, 64), 200, np.uint8)
    fast[5] = 0  # the same centre frame, as in a skipped window
    made = pseudo.fast_region_window(window, fast, rng(2))
    values = np.unique(made[0])
    assert len(values) > 3 and values.max() == 200  # a ramp from the window's 0 to the fast 200


def test_a_fast_tube_pastes_a_moving_square_of_the_skipped_window_at_another_place():
    """Inside the pasted square's core every frame equals the skipped window's square at one
    source place, which holds the moving thing; the paste lands at different places."""
    window = np.full((11, 96, 96), 90, np.uint8)
    fast = pseudo.skip_window(moving_square_clip(), 30, 3)  # the square moves 3 px a frame
    places, carried = set(), 0
    for seed in range(6):
        made = pseudo.fast_tube_window(window, fast, rng(seed))
        rows, cols = np.nonzero((made != window).any(axis=0))
        y, x, side = rows.min(), cols.min(), rows.max() - rows.min() + 1
        assert cols.max() - cols.min() + 1 == side and 96 // 6 <= side <= 96 // 3  # one square
        places.add((y, x))
        core = slice(side // 4, side - side // 4)  # the feathered border is the outer fifth
        pasted = made[:, y : y + side, x : x + side][:, core, core]
        sources = [
            (sy, sx) for sy in range(96 - side + 1) for sx in range(96 - side + 1)
            if np.array_equal(fast[:, sy : sy + side, sx : sx + side][:, core, core], pasted)
        ]
        assert sources, "the core is the skipped window's content, frame by frame"
        # drawn where the square moves (a core of plain background matches many places; one of them)
        assert any((fast[:, sy : sy + side, sx : sx + side] == 220).any() for sy, sx in sources)
        carried += bool((pasted == 220).any())
    assert len(places) > 2
    assert carried >= 3  # mostly the moving square itself is carried, not only its surroundings


def test_a_fast_tube_comes_from_a_clip_sampled_with_stride_k():
    """Donor frames filled with their frame number: the pasted core's values step by k in 2..5."""
    still = np.full((30, 64, 64), 250, np.uint8)
    clips = [Clip("still", "still", still), Clip("count", "count", counting_clip(60)[:, :32, :32].repeat(2, 1).repeat(2, 2))]
    steps = set()
    for seed in range(20):
        made = pseudo.make("fast-tube", clips, 0, 15, rng(seed))
        changed = (made != 250).any(axis=0)
        if not changed.any():
            continue  # the tube came from the still clip
        ys, xs = np.nonzero(changed)
        cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2  # the square's centre: its core
        values = made[:, cy, cx].astype(int)
        assert len(set(np.diff(values).tolist())) == 1
        steps.add(int(values[1] - values[0]))
    assert steps and steps <= set(pseudo.STRIDES)


def test_a_fast_tube_lands_on_the_donor_motion_and_needs_a_long_enough_clip():
    window = np.full((11, 64, 64), 50, np.uint8)
    fast = window.copy()
    fast[:, 40:48, 40:48] = np.arange(11, dtype=np.uint8)[:, None, None] * 20
    for seed in range(5):
        made = pseudo.fast_tube_window(window, fast, rng(seed))
        assert (made != 50).any()  # the moving square's tube, wherever it is pasted
    short = [Clip("short", "short", np.full((15, 32, 32), 7, np.uint8))]  # no stride-2 window fits
    made = pseudo.make("fast-tube", short, 0, 7, rng())
    assert (made == 7).all() and made.shape == (11, 32, 32)  # frozen frames instead


def test_kinds_parse_and_refuse_unknown_ones():
    assert pseudo.parse_kinds("skip, reverse,skip") == ("skip", "reverse")
    assert pseudo.parse_kinds("none") == () == pseudo.parse_kinds("")
    with pytest.raises(ValueError, match="unknown pseudo-anomaly fast"):
        pseudo.parse_kinds("skip,fast")


def test_pseudo_plan_is_none_without_kinds():
    assert pseudo_plan(TrainOptions(data=".", out="x", pseudo_anomalies="none", pseudo_share=0.75)) == ((), 0.0)
    assert pseudo_plan(TrainOptions(data=".", out="x", pseudo_anomalies="skip", pseudo_share=0.5)) == (("skip",), 0.5)


def windows_of(n_clips: int = 2, n: int = 40) -> WindowSet:
    return WindowSet([Clip(str(c), str(c), counting_clip(n)) for c in range(n_clips)])


def test_a_batch_of_pseudo_anomalies_is_the_same_again_and_differs_by_batch():
    windows = windows_of()
    opts = TrainOptions(data=".", out="x", pseudo_anomalies="skip,reverse", pseudo_share=0.5)
    first = _pseudo_batch(windows, list(range(16)), opts, epoch=0, b=3, rank=_Rank())
    again = _pseudo_batch(windows, list(range(16)), opts, epoch=0, b=3, rank=_Rank())
    other = _pseudo_batch(windows, list(range(16)), opts, epoch=0, b=4, rank=_Rank())
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])  # a resume makes it again
    assert not torch.equal(first[0], other[0])
    assert 0 < int(first[0].sum()) < 16 and first[1].shape == (int(first[0].sum()), 11, 1, S, S)
    assert _pseudo_batch(windows, [0, 1], TrainOptions(data=".", out="x", pseudo_anomalies="none"), 0, 0, _Rank()) is None


def test_every_fake_is_a_pseudo_anomaly_at_share_1_and_comes_from_its_own_window():
    windows = windows_of()
    opts = TrainOptions(data=".", out="x", pseudo_anomalies="reverse", pseudo_share=1.0)
    batch = [0, 7, 40]
    mask, made, boxes = _pseudo_batch(windows, batch, opts, 0, 0, _Rank())
    assert boxes is None  # no --local-labels
    assert mask.all()
    for k, i in enumerate(batch):
        c, t = windows.index[i]
        expected = to_tensor(torch.from_numpy(pseudo.reverse_window(windows.clips[c].frames[t - 5 : t + 6])))
        assert torch.equal(made[k], expected)


def test_the_fake_half_holds_pseudo_anomalies_where_marked_and_generated_windows_elsewhere():
    torch.manual_seed(0)
    generator = Generator(TINY).eval()
    s = TINY.image_size
    x = torch.rand(4, 11, 1, s, s) * 2 - 1
    mask = torch.tensor([True, False, True, False])
    made = torch.full((2, 11, 1, s, s), 0.5)
    neighbours, _ = split_window(x)
    opts = TrainOptions(data=".", out="x")
    fake, pred, rows = _fake_windows(x, neighbours, generator, (mask, made), "discriminator", opts, torch.device("cpu"))
    assert rows.tolist() == [1, 3] and pred.shape == (2, 1, s, s)
    assert torch.equal(fake[mask], made)
    with torch.no_grad():
        expected = with_middle(x[[1, 3]], generator(neighbours[[1, 3]]))
    assert torch.allclose(fake[~mask], expected)
    # all pseudo-anomalies: the generator is not run at all
    fake, pred, rows = _fake_windows(x, neighbours, generator, (torch.ones(4, dtype=torch.bool), torch.zeros(4, 11, 1, s, s)), "discriminator", opts, torch.device("cpu"))
    assert pred is None and len(rows) == 0 and torch.equal(fake, torch.zeros_like(fake))


def test_ranking_auc_by_hand():
    assert ranking_auc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert ranking_auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0
    assert ranking_auc(np.array([1.0, 2.0]), np.array([1.0, 3.0])) == 0.625  # (0.5 + 0 + 1 + 1) / 4
    assert np.isnan(ranking_auc(np.zeros(0), np.ones(2)))


@pytest.mark.parametrize("kind", pseudo.LOCAL_KINDS)
def test_a_located_pseudo_anomaly_is_make_s_window_and_its_square_holds_every_change(kind):
    """make_located draws as make does (training is unchanged by it), and the window differs from
    the normal one only inside the square it names: what val_maps.py counts a map's hit against."""
    clips = [Clip("a", "a", moving_square_clip()), Clip("b", "b", moving_square_clip()[::-1].copy())]
    inside_changed = 0
    for seed in range(8):
        made, (y, x, side, width) = pseudo.make_located(kind, clips, 0, 30, rng(seed))
        assert width == side
        assert np.array_equal(made, pseudo.make(kind, clips, 0, 30, rng(seed)))
        size = made.shape[-1]
        lo, hi = (10, 6) if kind == "fast-person" else (6, 3)
        assert 0 <= y and 0 <= x and y + side <= size and x + side <= size and size // lo <= side <= size // hi
        window = clips[0].frames[25:36]
        outside = np.ones((size, size), bool)
        outside[y : y + side, x : x + side] = False
        assert np.array_equal(made[:, outside], window[:, outside])
        inside_changed += bool((made != window).any())
    assert inside_changed >= 4


@pytest.mark.parametrize("kind, digest", [("fast-region", "88e04b3ca1ba6153"), ("fast-tube", "4aee4997440e05f4")])
def test_the_local_kinds_draw_as_they_did_before_make_located(kind, digest):
    """Pinned: the windows `make` gave before make_located was split out (0.5.0), so runs trained
    then resume and validate on the same pseudo-anomalies."""
    import hashlib

    clips = [Clip("a", "a", moving_square_clip()), Clip("b", "b", moving_square_clip()[::-1].copy())]
    h = hashlib.sha256()
    for seed in range(4):
        h.update(pseudo.make(kind, clips, 0, 30, rng(seed)).tobytes())
    assert h.hexdigest()[:16] == digest


def test_a_moving_pseudo_anomaly_is_make_s_patch_and_its_square_is_where_it_is_in_the_middle_frame():
    """make_moving draws as make("patch") does, and names the patch's square in the middle frame:
    the middle frame differs from the normal one only there, and the other frames elsewhere too."""
    noise = np.random.default_rng(0).integers(0, 256, size=(60, S, S), dtype=np.uint8)  # a patch unlike where it lands
    clips = [Clip("a", "a", noise), Clip("b", "b", noise[::-1].copy())]
    moved_away = 0
    for seed in range(6):
        made, (y, x, side, width) = pseudo.make_moving(clips, 0, 30, rng(seed))
        assert np.array_equal(made, pseudo.make("patch", clips, 0, 30, rng(seed)))
        assert width == side and S // 8 <= side <= S // 4
        window = clips[0].frames[25:36]
        changed = made != window
        outside = np.ones((S, S), bool)
        outside[y : y + side, x : x + side] = False
        assert changed[5].any() and not changed[5][outside].any()
        moved_away += bool(changed[0][outside].any() and changed[10][outside].any())
    assert moved_away >= 5  # 4-12 pixels a frame: five frames off, the patch has left the middle square


def test_a_located_pseudo_anomaly_is_none_where_it_cannot_be_made():
    short = [Clip("s", "s", counting_clip(11))]
    assert pseudo.make_located("fast-region", short, 0, 5, rng()) is None  # no stride fits
    assert pseudo.make_located("fast-tube", short, 0, 5, rng()) is None  # no clip long enough
    with pytest.raises(ValueError):
        pseudo.make_located("skip", short, 0, 5, rng())
