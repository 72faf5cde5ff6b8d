"""--local-labels (discriminator phase, beyond the paper): a local pseudo-anomaly is labelled fake
only in the patches of D's map that its box covers, real in the others. The boxes (drawn as
`make` draws), the cells a box covers, the labels, the loss of a training step and of validation,
the checks, and a run that resumes in the middle of the phase. Also the other reductions that
benchmarks/val_motion.py validates: the largest patch's -log D, the generator term's largest cell."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from stan_cli import pseudo
from stan_cli.dataset import Clip, WindowSet
from stan_cli.model import TINY, Discriminator, Generator, d_loss_map, patch_label_loss
from stan_cli.train import TrainOptions, _discriminator_step, _pseudo_batch, _Rank, train
from stan_cli.training.validation import (
    generated_scores, pixel_reductions, validate, validate_pixel, validate_pseudo, validation_pseudo_windows,
)
from stan_cli.inference import score_windows
from stan_cli.weights import load_weights
from stan_cli.windows import to_tensor
from test_pseudo import counting_clip, moving_square_clip
from test_train import Events, data3, options, run_cli  # noqa: F401 (data3: a fixture)

CPU = torch.device("cpu")


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def square_clips() -> list[Clip]:
    return [Clip("a", "a", moving_square_clip()), Clip("b", "b", moving_square_clip()[::-1].copy())]


@pytest.mark.parametrize("kind", pseudo.KINDS)
def test_make_boxed_draws_as_make_and_places_exactly_the_local_kinds(kind):
    clips = square_clips()
    for seed in range(6):
        made, region = pseudo.make_boxed(kind, clips, 0, 30, rng(seed))
        assert np.array_equal(made, pseudo.make(kind, clips, 0, 30, rng(seed)))
        assert (region is not None) == (kind in pseudo.LOCAL_LABELLED)
        if region is None:
            continue
        size = made.shape[-1]
        outside = np.ones((size, size), bool)
        for top, left, height, width in region:
            assert 0 <= top and 0 <= left and top + height <= size and left + width <= size
            outside[top : top + height, left : left + width] = False
        assert np.array_equal(made[:, outside], clips[0].frames[25:36][:, outside])  # every change inside the region


def test_a_patch_s_region_is_its_square_in_each_frame():
    """A moving patch (diagonal paths included) is labelled by the squares it covers, not by the
    rectangle around its path, whose corners it never touches."""
    window = np.zeros((11, 224, 224), np.uint8)
    donor = np.full((224, 224), 200, np.uint8)
    for seed in range(5):
        out, squares = pseudo.placed_patch(window, donor, rng(seed))
        covered, cores = np.zeros((224, 224), bool), np.zeros((224, 224), bool)
        for top, left, height, width in squares:
            covered[top : top + height, left : left + width] = True
            cores[top + 1 : top + height - 1, left + 1 : left + width - 1] = True  # the feathered corners may round to 0
        changed = (out > 0).any(axis=0)
        assert not (changed & ~covered).any() and not (cores & ~changed).any()
        assert 1 <= len(squares) <= 11


def test_box_cells_counts_a_quarter_of_a_cell_and_always_the_cell_under_the_centre():
    grid = (7, 7)  # 32-pixel cells at 224
    exact = pseudo.box_cells((32, 64, 32, 32), 224, grid)
    assert exact.sum() == 1 and exact[1, 2]
    tiny = pseudo.box_cells((40, 70, 4, 4), 224, grid)  # inside cell (1, 2), far less than a quarter
    assert tiny.sum() == 1 and tiny[1, 2]
    # rows 16-79: half of row 0, all of row 1, half of row 2; columns 0-39: all of 0, a quarter of 1
    wide = pseudo.box_cells((16, 0, 64, 40), 224, grid)
    assert np.argwhere(wide).tolist() == [[0, 0], [1, 0], [1, 1], [2, 0]]  # (0,1) and (2,1): an eighth; (1,1): a quarter
    assert pseudo.box_cells((0, 0, 224, 224), 224, grid).all()


def test_patch_labels_are_fake_in_the_box_s_cells_and_real_elsewhere_and_fake_for_whole_window_kinds():
    labels = pseudo.patch_labels([None, ((32, 64, 32, 32),), ((32, 64, 32, 32), (64, 96, 32, 32))], 224, (7, 7))
    assert labels.shape == (3, 7, 7) and labels.dtype == np.float32
    assert (labels[0] == 0).all()
    assert labels[1, 1, 2] == 0 and labels[1].sum() == 48
    assert labels[2, 1, 2] == labels[2, 2, 3] == 0 and labels[2].sum() == 47  # the union of a patch's squares


def test_pseudo_batch_gives_a_box_per_pseudo_row_only_with_local_labels():
    windows = WindowSet([Clip(str(c), str(c), counting_clip(40)) for c in range(2)])
    kw = dict(data=".", out="x", pseudo_anomalies="patch,reverse", pseudo_share=1.0)
    mask, made, boxes = _pseudo_batch(windows, list(range(12)), TrainOptions(**kw, local_labels=True), 0, 0, _Rank())
    plain = _pseudo_batch(windows, list(range(12)), TrainOptions(**kw), 0, 0, _Rank())
    assert torch.equal(made, plain[1]) and plain[2] is None  # the same windows, without boxes
    assert len(boxes) == int(mask.sum()) == 12
    assert any(b is None for b in boxes) and any(b is not None for b in boxes)  # reverse: whole window; patch: a box


def test_a_step_with_local_labels_takes_each_patch_s_label():
    """At 96 x 96 the tiny discriminator has 3 x 3 patches. The fake half: row 0 generated (fake
    everywhere), row 1 a local anomaly in the top-left cell (the mask's second row: labels follow
    the mask, not the order of the pseudo-anomalies). L_D = mean -log D on real windows + the mean
    over fake windows of the per-patch loss with those labels; lr 0 leaves the networks as they were."""
    torch.manual_seed(0)
    d = Discriminator(TINY)
    x, fake = torch.rand(2, 11, 1, 96, 96) * 2 - 1, torch.rand(2, 11, 1, 96, 96) * 2 - 1
    fakes = (torch.tensor([False, True]), fake[1:], [((0, 0, 20, 20),)])
    opts = TrainOptions(data=".", out="x", local_labels=True)
    with torch.no_grad():
        logits = d(torch.cat([x, fake]))
    assert logits.shape[-2:] == (3, 3)
    labels = torch.zeros(2, 3, 3)
    labels[1] = 1
    labels[1, 0, 0] = 0
    want = d_loss_map(logits[:2], real=True).mean() + patch_label_loss(logits[2:], labels).mean()
    by_hand = F.binary_cross_entropy_with_logits(logits[3], labels[1])  # the same loss, another way
    assert patch_label_loss(logits[3:4], labels[1:]).item() == pytest.approx(by_hand.item(), rel=1e-6)
    opt = torch.optim.Adam(d.parameters(), lr=0.0)
    got = _discriminator_step(x, fake, d, opt, opts, CPU, "test", None, fakes)
    assert got["loss_d"] == pytest.approx(want.item(), rel=1e-5)
    swapped = torch.zeros(2, 3, 3)
    swapped[0] = labels[1]  # what labels on the first rows instead of the masked ones would give
    assert got["loss_d"] != pytest.approx((d_loss_map(logits[:2], real=True).mean() + patch_label_loss(logits[2:], swapped).mean()).item())
    window_level = d_loss_map(logits[:2], real=True).mean() + d_loss_map(logits[2:], real=False).mean()
    plain = _discriminator_step(x, fake, d, opt, opts, CPU, "test", None, (fakes[0], fakes[1], None))
    assert plain["loss_d"] == pytest.approx(window_level.item(), rel=1e-5) and plain["loss_d"] != pytest.approx(got["loss_d"])


VAL_KINDS = ("fast-tube", "skip")  # one local kind, one whole-window kind, in turn


def tiny_nets() -> tuple[Generator, Discriminator]:
    """Seeded untrained tiny networks, in eval mode, for the validation measures."""
    torch.manual_seed(0)
    return Generator(TINY).eval(), Discriminator(TINY).eval()


def test_validation_with_local_labels_scores_the_same_windows_with_their_labels():
    _, d = tiny_nets()
    clips, kinds = square_clips(), VAL_KINDS
    plain_loss, plain_score = validate_pseudo(d, clips, kinds, CPU)
    local_loss, local_score = validate_pseudo(d, clips, kinds, CPU, local_labels=True)
    assert np.array_equal(plain_score, local_score)  # the same pseudo-anomalies, the same d score
    assert np.allclose(plain_loss[1::2], local_loss[1::2])  # skip: the whole window is fake either way
    assert not np.allclose(plain_loss[0::2], local_loss[0::2])  # fast-tube: the patches outside its box are real


def test_validation_scores_the_largest_patch_when_asked():
    _, d = tiny_nets()
    clips, kinds = square_clips(), VAL_KINDS
    _, mean_score = validate_pseudo(d, clips, kinds, CPU)
    _, max_score = validate_pseudo(d, clips, kinds, CPU, patch_max=True)
    assert max_score.shape == mean_score.shape and np.all(max_score >= mean_score - 1e-12)
    assert np.any(max_score > mean_score + 1e-6)  # the patches differ, so their largest is not their mean


def test_validation_of_normal_windows_takes_the_largest_patch_as_scoring_does():
    g, d = tiny_nets()
    clips = square_clips()
    pixel, largest = validate(g, d, clips, CPU, patch_max=True)
    _, mean = validate(g, d, clips, CPU)
    x = to_tensor(torch.stack([WindowSet(clips)[i] for i in range(len(largest))]))
    want = score_windows(g, d, x).d_max.double().numpy()
    assert np.allclose(largest, want, rtol=1e-5) and not np.allclose(largest, mean)


def test_pixel_reductions_mean_and_largest_cell():
    error = torch.zeros(2, 28, 28)
    error[0, 8:12, 12:16] = 1.0  # one 4 x 4 cell of the 7 x 7 grid (28 / 7 = 4 pixels a cell)
    error[1] = 0.5
    mean, cell = pixel_reductions(error)
    assert mean.tolist() == pytest.approx([16 / 784, 0.5]) and cell.tolist() == pytest.approx([1.0, 0.5])


def test_pixel_validation_scores_the_normal_windows_as_validate_and_the_same_pseudo_anomalies():
    g, d = tiny_nets()
    clips, kinds = square_clips(), VAL_KINDS
    normal_mean, normal_cell, made_mean, made_cell = validate_pixel(g, clips, kinds, CPU)
    pixel, _ = validate(g, d, clips, CPU)
    assert np.allclose(normal_mean, pixel, rtol=1e-5)  # the generator term, as selection reads it
    assert len(made_mean) == len(pixel) and np.all(normal_cell >= normal_mean) and np.all(made_cell >= made_mean)
    again = validate_pixel(g, clips, kinds, CPU)
    assert all(np.array_equal(a, b) for a, b in zip(again, (normal_mean, normal_cell, made_mean, made_cell)))
    assert not np.allclose(made_mean, normal_mean)  # the pseudo-anomalies are not the normal windows


def test_generated_scores_match_validate_on_the_normal_windows():
    g, d = tiny_nets()
    g.train(), d.train()
    clips = square_clips()
    windows = WindowSet(clips)
    scores = generated_scores(g, d, [windows[i] for i in range(len(windows))], CPU)
    assert g.training and d.training  # their modes as they were
    _, _, _, as_real = validate(g, d, clips, CPU, generated=True)  # -log D(S^_t), the same windows
    assert np.allclose(scores, as_real, rtol=1e-5)
    made = generated_scores(g, d, [w for w, _ in validation_pseudo_windows(clips, VAL_KINDS)], CPU)
    assert len(made) == len(scores) and not np.allclose(made, scores)


@pytest.mark.parametrize("extra, message", [
    (["--local-labels", "--discriminator-epochs", "1", "--pseudo-anomalies", "skip,repeat"], "add one of fast-region, fast-tube, patch"),
    (["--local-labels", "--discriminator-epochs", "1", "--pseudo-share", "0"], "add one of"),
    (["--local-labels", "--pretrain-epochs", "1"], "add --discriminator-epochs N"),
    (["--local-labels", "--time", "10m", "--time-shares", "1,0,0"], "give it a share of the time"),
])
def test_local_labels_options_are_checked_with_one_clear_line(data3, tmp_path, extra, message):
    out = tmp_path / "m.safetensors"
    result = run_cli(data3, "--out", out, "--preset", "tiny", "--device", "cpu", *extra)
    assert result.exit_code != 0 and message in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_a_local_labels_run_records_the_option_and_resumes_exactly(data3, tmp_path):
    """The option's path through a whole run: recorded in the weights, a resume in the middle of the
    phase ends bit for bit where the uninterrupted run does. (The tiny preset trains at 32 x 32,
    where D's map is one patch, so the labels equal the default ones here: the label logic itself
    is tested at 96 x 96 above.)"""
    init = tmp_path / "g.safetensors"
    train(options(data3, init, pretrain_epochs=1, batch_size=8))
    kw = dict(init=init, pretrain_epochs=0, discriminator_epochs=2, batch_size=8, val_clips=1, checkpoint_every=2,
              local_labels=True, pseudo_anomalies="patch,fast-tube,skip")
    reference = train(options(data3, tmp_path / "ref.safetensors", **kw))
    training = load_weights(reference.out).training
    assert training["options"]["local_labels"] is True
    out = tmp_path / "model.safetensors"
    with pytest.raises(KeyboardInterrupt):
        train(options(data3, out, **kw), Events(at="step", n=3))
    result = train(options(data3, out, resume=True, **kw))
    assert result.steps == reference.steps
    got, want = load_file(str(out)), load_file(str(reference.out))
    assert [k for k in want if not torch.equal(got[k], want[k])] == []
