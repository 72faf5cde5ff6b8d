"""The discriminator phase's OGNet sources (`training/fakes.py`): an old generator's windows as
fakes (--old-generator), the current generator's as real (--generated-as-real), their validation
terms, their record in the weights, and a resume in the middle of the phase."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stan_cli.errors import TrainingError
from stan_cli.model import TINY, Generator, split_window
from stan_cli.train import TrainOptions, _fake_windows, _Rank, train
from stan_cli.training.fakes import generated_real_rows, real_windows
from stan_cli.weights import file_sha256, load_weights
from test_train import Events, ckpt_of, data3, log_rows, options, run_cli  # noqa: F401 (data3: a fixture)

S = TINY.image_size
CPU = torch.device("cpu")
PAPER_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "stan-ped2.safetensors"


def generator(seed: int) -> Generator:
    torch.manual_seed(seed)
    return Generator(TINY).eval()


def windows(n: int = 4) -> torch.Tensor:
    torch.manual_seed(99)
    return torch.rand(n, 11, 1, S, S) * 2 - 1


def test_the_old_generator_makes_the_generated_fakes_in_the_discriminator_phase():
    x = windows()
    neighbours, _ = split_window(x)
    current, old = generator(0), generator(1)
    opts = TrainOptions(data=".", out="x")
    with torch.no_grad():
        want_old, want_current = old(neighbours), current(neighbours)
    mask = torch.tensor([True, False, False, True])  # rows 0 and 3 are pseudo-anomalies
    made = torch.zeros(2, 11, 1, S, S)
    fake, pred, rows = _fake_windows(x, neighbours, current, (mask, made), "discriminator", opts, CPU, old)
    assert rows.tolist() == [1, 2]
    assert torch.allclose(fake[rows, 5, 0], want_old[rows, 0], atol=1e-6)
    assert not torch.allclose(fake[rows, 5, 0], want_current[rows, 0], atol=1e-3)
    assert torch.equal(fake[mask], made)  # the pseudo-anomalies are untouched
    fake[:, 5] = x[:, 5]
    assert torch.equal(fake[~mask], x[~mask])  # only the middle frame of a generated window changes
    # in the adversarial phase the current generator makes them, old generator or not
    fake, _, _ = _fake_windows(x, neighbours, current, None, "adversarial", opts, CPU, old)
    assert torch.allclose(fake[:, 5, 0], want_current[:, 0], atol=1e-6)


def test_generated_as_real_shows_half_the_real_windows_with_the_current_prediction():
    opts = TrainOptions(data=".", out="x", generated_as_real=True)
    assert generated_real_rows(8, TrainOptions(data=".", out="x"), 0, 0, _Rank()) is None
    rows = generated_real_rows(400, opts, 0, 0, _Rank())
    assert 150 < int(rows.sum()) < 250  # about half
    assert torch.equal(rows, generated_real_rows(400, opts, 0, 0, _Rank()))  # the same batch on resume
    assert not torch.equal(rows, generated_real_rows(400, opts, 0, 1, _Rank()))
    x = windows()
    neighbours, _ = split_window(x)
    current = generator(0)
    marked = torch.tensor([False, True, True, False])
    real = real_windows(x, neighbours, current, marked, opts, CPU)
    with torch.no_grad():
        want = current(neighbours)
    assert torch.equal(real[~marked], x[~marked])
    assert torch.allclose(real[marked, 5, 0], want[marked, 0], atol=1e-6)
    assert torch.equal(real[marked][:, :5], x[marked][:, :5]) and torch.equal(real[marked][:, 6:], x[marked][:, 6:])
    assert real_windows(x, neighbours, current, None, opts, CPU) is x


@pytest.fixture
def pretrained(data3, tmp_path):
    """An old generator (1 pretrain epoch) and a newer one (2 epochs, --init to continue from)."""
    old, new = tmp_path / "old.safetensors", tmp_path / "new.safetensors"
    train(options(data3, old, pretrain_epochs=1, batch_size=8, val_clips=1))
    train(options(data3, new, init=old, pretrain_epochs=1, batch_size=8, val_clips=1))
    return old, new


def test_a_run_with_both_sources_validates_with_their_terms_and_records_the_old_file(data3, tmp_path, pretrained):
    old, new = pretrained
    out = tmp_path / "d.safetensors"
    train(options(data3, out, init=new, reset_discriminator=True, pretrain_epochs=0, discriminator_epochs=2, batch_size=8,
                  val_clips=1, old_generator=str(old), generated_as_real=True, pseudo_share=0.5))
    val = log_rows(tmp_path / "d.val.csv")
    assert len(val) == 2
    for r in val:  # real and generated-as-real half each; pseudo-anomalies and old windows half each
        want = (float(r["val_d"]) + float(r["val_d_generated_real"])) / 2 + 0.5 * float(r["val_d_pseudo"]) + 0.5 * float(r["val_d_old"])
        assert float(r["val_loss_d"]) == pytest.approx(want, rel=1e-4)
    training = load_weights(out).training
    assert training["options"]["old_generator"] == str(old) and training["options"]["generated_as_real"] is True
    assert training["old_generator"] == {"file": str(old), "sha256": file_sha256(old)}
    assert "--old-generator" in training["selection_rule"]
    # the generator written is the one trained against (--init's), not the old one
    assert all(torch.equal(a, b) for a, b in zip(load_weights(out).generator.state_dict().values(),
                                                  load_weights(new).generator.state_dict().values()))


def test_an_old_generator_run_resumes_exactly_and_refuses_a_changed_old_file(data3, tmp_path, pretrained):
    old, new = pretrained
    kw = dict(init=new, pretrain_epochs=0, discriminator_epochs=2, batch_size=8, val_clips=1, checkpoint_every=2,
              old_generator=str(old), generated_as_real=True)
    reference = train(options(data3, tmp_path / "ref.safetensors", **kw))
    out = tmp_path / "model.safetensors"
    with pytest.raises(KeyboardInterrupt):
        train(options(data3, out, **kw), Events(at="step", n=3))
    kept = tmp_path / "old-kept.safetensors"
    shutil.copyfile(old, kept)
    shutil.copyfile(new, old)  # another file in its place
    with pytest.raises(TrainingError, match="changed since this run began"):
        train(options(data3, out, resume=True, **kw))
    shutil.copyfile(kept, old)
    result = train(options(data3, out, resume=True, **kw))
    assert result.steps == reference.steps
    got, want = load_file(str(out)), load_file(str(reference.out))
    assert [k for k in want if not torch.equal(got[k], want[k])] == []


@pytest.mark.parametrize("extra, message", [
    (["--generated-as-real", "--discriminator-epochs", "1"], "add --old-generator FILE"),
    (["--old-generator", "{missing}", "--discriminator-epochs", "1"], "no such weights file (--old-generator)"),
    (["--old-generator", "{paper}", "--pretrain-epochs", "0", "--epochs", "0"], "add --discriminator-epochs N"),
    (["--old-generator", "{paper}", "--time", "10m", "--time-shares", "1,0,0"], "give it a share of the time"),
    (["--old-generator", "{paper}", "--discriminator-epochs", "1"], "another size than this run's"),
])
def test_old_generator_options_are_checked_with_one_clear_line(data3, tmp_path, extra, message):
    tiny = tmp_path / "tiny.safetensors"
    train(options(data3, tiny, pretrain_epochs=1, batch_size=8))
    paths = {"{missing}": str(tmp_path / "nope.safetensors"), "{paper}": str(PAPER_WEIGHTS)}
    out = tmp_path / "m.safetensors"
    if "--time" not in extra and "--pretrain-epochs" not in extra:
        extra = [*extra, "--pretrain-epochs", "0", "--epochs", "0"]
    result = run_cli(data3, "--out", out, "--preset", "tiny", "--device", "cpu", "--init", tiny, *(paths.get(a, a) for a in extra))
    assert result.exit_code != 0 and message in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_a_timed_run_with_generated_as_real_plans_on_uneven_batches(data3, tmp_path, pretrained):
    """Timing steps cycle through the epoch's batches, its short last one too: the real windows'
    mask follows each batch's size (40 windows in batches of 32: 32 and 8)."""
    old, new = pretrained
    result = train(options(data3, tmp_path / "d.safetensors", init=new, pretrain_epochs=0, discriminator_epochs=1,
                           batch_size=32, val_clips=1, old_generator=str(old), generated_as_real=True))
    assert result.steps >= 1


def test_resume_needs_the_old_generator_where_it_was(data3, tmp_path, pretrained):
    old, new = pretrained
    kw = dict(init=new, pretrain_epochs=0, discriminator_epochs=1, batch_size=8, val_clips=1, checkpoint_every=2,
              old_generator=str(old))
    out = tmp_path / "model.safetensors"
    with pytest.raises(KeyboardInterrupt):
        train(options(data3, out, **kw), Events(at="step", n=3))
    moved = tmp_path / "moved.safetensors"
    old.rename(moved)
    with pytest.raises(TrainingError, match=f"{old}: this run's --old-generator file is gone. Put it back there"):
        train(options(data3, out, resume=True, **kw))
    moved.rename(old)
    assert train(options(data3, out, resume=True, **kw)).steps == 5


def test_the_cli_keeps_the_old_generator_path_absolute(data3, tmp_path, pretrained, monkeypatch):
    old, new = pretrained
    monkeypatch.chdir(old.parent)
    out = tmp_path / "m.safetensors"
    result = run_cli(data3, "--out", out, "--preset", "tiny", "--device", "cpu", "--init", new, "--pretrain-epochs", "0",
                     "--epochs", "0", "--discriminator-epochs", "1", "--batch-size", "8", "--val-clips", "1",
                     "--old-generator", old.name)
    assert result.exit_code == 0, result.output
    assert load_weights(out).training["old_generator"]["file"] == str(old.resolve())
    assert "on the old generator's windows" in result.output  # the epoch's validation line names its terms
