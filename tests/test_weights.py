"""Weights and checkpoints as safetensors: round trips, strict loading, atomic saves, errors."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import tiny_models
from stan_cli import weights as weights_module
from stan_cli.errors import WeightsError
from stan_cli.model import PAPER, TINY, Discriminator, Generator, pixel_loss, split_window
from stan_cli.weights import (
    DEFAULT_WEIGHTS_NAMES,
    FORMAT,
    FORMAT_VERSION,
    find_default_weights,
    load_checkpoint,
    load_weights,
    model_tensors,
    read_checkpoint_progress,
    save_checkpoint,
    save_weights,
)

CALIBRATION = {  # the shape stan train writes (scoring.calibrate); a file whose calibration lacks it is refused
    "lambda_s": 0.25, "false_alarm_rate": 0.01, "n_windows": 200,
    "kinds": {kind: {"median": 0.04 * k, "p99": 0.05 * k, "threshold": 0.05 * k} for k, kind in enumerate(("g", "d", "gd"), 1)},
}
TRAINING = {"command": "stan train data/ped2", "epochs": 3, "wall_s": 12.5}


def _read_raw(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata()
    return load_file(str(path)), metadata


def _assert_load_fails(path: Path, *fragments: str) -> WeightsError:
    with pytest.raises(WeightsError) as err:
        load_weights(path)
    message = str(err.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    return err.value


@pytest.fixture
def saved(tmp_path):
    g, d = tiny_models()
    path = tmp_path / "w.safetensors"
    save_weights(path, g, d, TINY, calibration=CALIBRATION, training=TRAINING)
    return path, g, d


# --- round trip -----------------------------------------------------------------------------


def test_round_trip(saved):
    path, g, d = saved
    stan = load_weights(path)
    for original, loaded in ((g, stan.generator), (d, stan.discriminator)):
        a, b = original.state_dict(), loaded.state_dict()
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
    assert stan.config == TINY
    assert stan.calibration == CALIBRATION
    assert stan.training == TRAINING
    assert stan.path == path
    assert stan.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_round_trip_without_calibration(tiny_weights):
    stan = load_weights(tiny_weights)
    assert stan.calibration is None
    assert stan.training == {"untrained": True}
    _, metadata = _read_raw(tiny_weights)
    assert "calibration" not in metadata


def test_file_layout(saved):
    path, g, d = saved
    tensors, metadata = _read_raw(path)
    assert metadata["format"] == FORMAT
    assert metadata["format_version"] == str(FORMAT_VERSION)
    assert json.loads(metadata["config"]) == json.loads(json.dumps(TINY.to_dict()))
    assert json.loads(metadata["calibration"]) == CALIBRATION
    assert json.loads(metadata["training"]) == TRAINING
    assert set(tensors) == set(model_tensors(g, d))
    assert all(k.startswith(("generator.", "discriminator.")) for k in tensors)


def test_load_sets_eval_mode(tmp_path):
    g, d = tiny_models()
    g.train(), d.train()
    path = tmp_path / "train-mode.safetensors"
    save_weights(path, g, d, TINY)
    stan = load_weights(path)
    assert not stan.generator.training and not stan.discriminator.training
    assert all(not m.training for m in stan.generator.modules())
    assert all(not m.training for m in stan.discriminator.modules())


def test_loaded_models_compute_the_same(saved):
    path, g, d = saved
    stan = load_weights(path)
    window = torch.rand(1, 11, 1, 32, 32) * 2 - 1
    neighbours, _ = split_window(window)
    with torch.no_grad():
        assert torch.equal(stan.generator(neighbours), g(neighbours))
        assert torch.equal(stan.discriminator(window), d(window))


def test_float16_weights_load_into_float32(tmp_path):
    torch.manual_seed(0)
    g, d = Generator(TINY).half(), Discriminator(TINY).half()
    path = tmp_path / "half.safetensors"
    save_weights(path, g, d, TINY, training={"untrained": True})
    tensors, _ = _read_raw(path)
    assert all(t.dtype == torch.float16 for t in tensors.values())
    stan = load_weights(path)
    for original, loaded in ((g, stan.generator), (d, stan.discriminator)):
        for (name, p16), p32 in zip(original.state_dict().items(), loaded.state_dict().values()):
            assert p32.dtype == torch.float32, name
            assert torch.equal(p32, p16.float()), name
    with torch.no_grad():
        out = stan.generator(torch.zeros(1, 10, 1, 32, 32))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_shipped_untrained_weights_load(monkeypatch):
    path = Path(__file__).resolve().parent.parent / "weights" / "stan-untrained.safetensors"
    if not path.is_file():
        pytest.skip("no shipped weights in this checkout")
    stan = load_weights(path)
    assert stan.config == PAPER
    assert all(p.dtype == torch.float32 for p in stan.generator.parameters())
    assert stan.training.get("untrained") is True


# --- errors ---------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    _assert_load_fails(tmp_path / "nope.safetensors", "not found")


def test_folder_instead_of_file(tmp_path):
    _assert_load_fails(tmp_path, "is a folder, not a weights file")


def test_text_file(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("these are not weights\n" * 20)
    _assert_load_fails(path, "not a readable safetensors file", "point --weights at")


def test_errors_name_the_option_the_file_came_from(tmp_path):
    """`stan train` reads its weights from --init; detect and explain from --weights."""
    notes = tmp_path / "notes.safetensors"
    notes.write_text("these are not weights\n")
    for path in (notes, tmp_path / "nope.safetensors"):
        with pytest.raises(WeightsError) as err:
            load_weights(path, option="--init")
        assert "--init" in str(err.value) and "--weights" not in str(err.value), err.value


def test_empty_file(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    _assert_load_fails(path)


def test_truncated_file(saved, tmp_path):
    path, _, _ = saved
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    _assert_load_fails(cut, "truncated")


def test_safetensors_without_our_metadata(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(3)}, str(path))
    _assert_load_fails(path, "not stan-weights")


def test_checkpoint_is_not_weights(tmp_path):
    g, d = tiny_models()
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, g, d, torch.optim.Adam(g.parameters()), torch.optim.Adam(d.parameters()), {})
    _assert_load_fails(path, "a training checkpoint, not weights")


def _rewrite(src: Path, dst: Path, tensors=None, **metadata_changes) -> Path:
    t, m = _read_raw(src)
    if tensors is not None:
        t = tensors(t)
    m = {**m, **metadata_changes}
    save_file(t, str(dst), metadata={k: v for k, v in m.items() if v is not None})
    return dst


def test_newer_format_version(saved, tmp_path):
    path = _rewrite(saved[0], tmp_path / "v99.safetensors", format_version="99")
    _assert_load_fails(path, "99", "newer", "Upgrade")


@pytest.mark.parametrize("version", ["0", "abc", None])
def test_invalid_format_version(saved, tmp_path, version):
    path = _rewrite(saved[0], tmp_path / "bad-version.safetensors", format_version=version)
    _assert_load_fails(path)


def test_damaged_config_metadata(saved, tmp_path):
    path = _rewrite(saved[0], tmp_path / "bad-config.safetensors", config="{not json")
    _assert_load_fails(path, "metadata")


def test_missing_config_metadata(saved, tmp_path):
    path = _rewrite(saved[0], tmp_path / "no-config.safetensors", config=None)
    _assert_load_fails(path)


def test_unexpected_key(saved, tmp_path):
    def add(t):
        return {**t, "generator.extra.weight": torch.zeros(2)}

    path = _rewrite(saved[0], tmp_path / "extra.safetensors", tensors=add)
    err = _assert_load_fails(path, "unexpected", "extra.weight")
    assert "generator" in str(err)


def test_missing_key(saved, tmp_path):
    def drop(t):
        return {k: v for k, v in t.items() if k != "discriminator.convs.5.bias"}

    path = _rewrite(saved[0], tmp_path / "missing.safetensors", tensors=drop)
    _assert_load_fails(path, "missing", "convs.5.bias")


def test_tiny_tensors_with_paper_config(saved, tmp_path):
    path = _rewrite(saved[0], tmp_path / "mismatch.safetensors", config=json.dumps(PAPER.to_dict()))
    _assert_load_fails(path, "shape")


def test_weights_error_is_a_stan_error():
    from stan_cli.errors import StanError

    assert issubclass(WeightsError, StanError)


# --- atomic save ----------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002], ids=oct)
def test_saved_files_follow_the_umask(tmp_path, umask):
    """As a plain open() would: 0644 under the usual umask, not a temp file's 0600."""
    g, d = tiny_models()
    opt_g, opt_d = torch.optim.Adam(g.parameters()), torch.optim.Adam(d.parameters())
    old = os.umask(umask)
    try:
        save_weights(tmp_path / "w.safetensors", g, d, TINY)
        save_checkpoint(tmp_path / "last.safetensors", g, d, opt_g, opt_d, {"epoch": 1})
    finally:
        os.umask(old)
    for name in ("w.safetensors", "last.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_save_leaves_no_temp_file(tmp_path):
    g, d = tiny_models()
    save_weights(tmp_path / "w.safetensors", g, d, TINY)
    save_weights(tmp_path / "w.safetensors", g, d, TINY)  # overwrite
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def _fail_to_sync(monkeypatch, exc: BaseException) -> None:
    """The crash happens part-way: the temp file is written, not yet on disk nor renamed."""

    def broken_fsync(fd):
        raise exc

    monkeypatch.setattr(weights_module.os, "fsync", broken_fsync)


def test_failed_save_keeps_old_file(saved, monkeypatch):
    path, g, d = saved
    before = path.read_bytes()
    _fail_to_sync(monkeypatch, OSError("disk full"))
    with pytest.raises(OSError, match="disk full"):
        save_weights(path, g, d, TINY, calibration={"changed": True})
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    monkeypatch.undo()
    assert load_weights(path).calibration == CALIBRATION


def test_failed_checkpoint_save_keeps_old_file(tmp_path, monkeypatch):
    g, d = tiny_models()
    opt_g, opt_d = torch.optim.Adam(g.parameters()), torch.optim.Adam(d.parameters())
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, g, d, opt_g, opt_d, {"epoch": 1})
    before = path.read_bytes()
    _fail_to_sync(monkeypatch, RuntimeError("boom"))
    with pytest.raises(RuntimeError):
        save_checkpoint(path, g, d, opt_g, opt_d, {"epoch": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


# --- checkpoints ----------------------------------------------------------------------------


def _train_step(g, d, opt_g, opt_d, window):
    neighbours, middle = split_window(window)
    opt_g.zero_grad()
    pixel_loss(g(neighbours), middle).mean().backward()
    opt_g.step()
    opt_d.zero_grad()
    d(window).mean().backward()
    opt_d.step()


def _fresh(seed: int):
    torch.manual_seed(seed)
    g, d = Generator(TINY).train(), Discriminator(TINY).train()
    return g, d, torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999)), torch.optim.Adam(d.parameters(), lr=2e-4)


def test_checkpoint_round_trip(tmp_path):
    window = torch.rand(2, 11, 1, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    g, d, opt_g, opt_d = _fresh(0)
    for _ in range(2):
        _train_step(g, d, opt_g, opt_d, window)
    progress = {"epoch": 2, "phase": "adversarial", "best": 0.125, "history": [1.0, 0.5]}
    path = tmp_path / "ckpt.safetensors"
    torch.manual_seed(42)
    save_checkpoint(path, g, d, opt_g, opt_d, progress)
    expected_rand = torch.rand(5)  # the RNG draw right after the save
    _train_step(g, d, opt_g, opt_d, window)  # the run goes on
    expected_params = [p.detach().clone() for p in (*g.parameters(), *d.parameters())]

    g2, d2, opt_g2, opt_d2 = _fresh(7)  # different init, empty optimiser state
    torch.manual_seed(999)
    assert load_checkpoint(path, g2, d2, opt_g2, opt_d2) == progress
    assert torch.equal(torch.rand(5), expected_rand)
    for opt, opt2 in ((opt_g, opt_g2), (opt_d, opt_d2)):
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
        assert tuple(opt2.param_groups[0]["betas"]) == tuple(opt.param_groups[0]["betas"])
        state2 = opt2.state_dict()["state"]
        assert len(state2) == len(list(opt2.param_groups[0]["params"]))
        for s in state2.values():
            assert float(s["step"]) == 2
    # one more step from the restored state lands exactly where the original run went
    _train_step(g2, d2, opt_g2, opt_d2, window)
    got = [p.detach() for p in (*g2.parameters(), *d2.parameters())]
    for a, b in zip(got, expected_params):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for opt, opt2 in ((opt_g, opt_g2), (opt_d, opt_d2)):
        st, st2 = opt.state_dict()["state"], opt2.state_dict()["state"]
        assert st.keys() == st2.keys()
        for i in st:
            assert torch.equal(st[i]["exp_avg"], st2[i]["exp_avg"])
            assert torch.equal(st[i]["exp_avg_sq"], st2[i]["exp_avg_sq"])
            assert float(st[i]["step"]) == float(st2[i]["step"]) == 3


def test_checkpoint_restores_exp_avg_exactly(tmp_path):
    window = torch.rand(1, 11, 1, 32, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1
    g, d, opt_g, opt_d = _fresh(0)
    _train_step(g, d, opt_g, opt_d, window)
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, g, d, opt_g, opt_d, {"epoch": 1})
    g2, d2, opt_g2, opt_d2 = _fresh(1)
    load_checkpoint(path, g2, d2, opt_g2, opt_d2)
    for opt, opt2 in ((opt_g, opt_g2), (opt_d, opt_d2)):
        st, st2 = opt.state_dict()["state"], opt2.state_dict()["state"]
        assert st.keys() == st2.keys()
        for i in st:
            assert torch.equal(st[i]["exp_avg"], st2[i]["exp_avg"])
            assert torch.equal(st[i]["exp_avg_sq"], st2[i]["exp_avg_sq"])
            assert torch.equal(torch.as_tensor(st[i]["step"]), torch.as_tensor(st2[i]["step"]))
    for a, b in zip(g.state_dict().values(), g2.state_dict().values()):
        assert torch.equal(a, b)
    assert read_checkpoint_progress(path) == {"epoch": 1}


def test_checkpoint_before_any_step(tmp_path):
    g, d, opt_g, opt_d = _fresh(0)
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, g, d, opt_g, opt_d, {"epoch": 0})
    g2, d2, opt_g2, opt_d2 = _fresh(1)
    assert load_checkpoint(path, g2, d2, opt_g2, opt_d2) == {"epoch": 0}
    assert opt_g2.state_dict()["state"] == {}


def test_weights_file_is_not_a_checkpoint(saved):
    path, _, _ = saved
    g, d, opt_g, opt_d = _fresh(0)
    with pytest.raises(WeightsError) as err:
        load_checkpoint(path, g, d, opt_g, opt_d)
    assert str(path) in str(err.value)


# --- default weights ------------------------------------------------------------------------


def test_find_default_weights_honours_env(monkeypatch, tmp_path):
    target = tmp_path / "mine.safetensors"
    monkeypatch.setenv("STAN_WEIGHTS", str(target))
    with pytest.raises(WeightsError, match=r"mine.safetensors: weights file not found \(named by \$STAN_WEIGHTS\)"):
        find_default_weights()  # missing: the message says where the path came from
    target.write_bytes(b"x")
    assert find_default_weights() == target


def test_find_default_weights_looks_in_weights_folders(monkeypatch, tmp_path):
    monkeypatch.delenv("STAN_WEIGHTS", raising=False)
    # a source tree without weights, run from a folder that has them
    monkeypatch.setattr(weights_module, "__file__", str(tmp_path / "src" / "stan_cli" / "weights.py"))
    monkeypatch.setattr(weights_module.sys, "prefix", str(tmp_path / "env"))  # an install without them
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsError) as err:
        find_default_weights()
    assert "STAN_WEIGHTS" in str(err.value)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / DEFAULT_WEIGHTS_NAMES[-1]).write_bytes(b"x")
    assert find_default_weights() == tmp_path / "weights" / DEFAULT_WEIGHTS_NAMES[-1]
    (tmp_path / "weights" / DEFAULT_WEIGHTS_NAMES[0]).write_bytes(b"x")
    assert find_default_weights() == tmp_path / "weights" / DEFAULT_WEIGHTS_NAMES[0]  # trained first


def test_find_default_weights_in_source_tree_or_install(monkeypatch, tmp_path):
    """Editable install: weights/ of the source tree; `pip install .`: <prefix>/share/stan/weights.
    Either way they are found from any working folder."""
    monkeypatch.delenv("STAN_WEIGHTS", raising=False)
    monkeypatch.chdir(tmp_path)
    repo_weights = Path(weights_module.__file__).resolve().parent.parent / "weights"
    installed = Path(sys.prefix) / "share" / "stan" / "weights"
    found = find_default_weights()
    assert found.parent in (repo_weights, installed) and found.name in DEFAULT_WEIGHTS_NAMES
    assert found.is_file()


def test_installed_weights_folder_is_searched(monkeypatch, tmp_path):
    monkeypatch.delenv("STAN_WEIGHTS", raising=False)
    monkeypatch.setattr(weights_module, "__file__", str(tmp_path / "src" / "stan_cli" / "weights.py"))
    monkeypatch.setattr(weights_module.sys, "prefix", str(tmp_path / "env"))
    monkeypatch.chdir(tmp_path)
    share = tmp_path / "env" / "share" / "stan" / "weights"
    share.mkdir(parents=True)
    (share / DEFAULT_WEIGHTS_NAMES[-1]).write_bytes(b"x")
    assert find_default_weights() == share / DEFAULT_WEIGHTS_NAMES[-1]


def test_reports_name_weights_relative_to_the_working_folder(tiny_weights, tmp_path, monkeypatch):
    stan = load_weights(tiny_weights)
    monkeypatch.chdir(tiny_weights.parent)
    assert stan.file == tiny_weights.name  # a checkout's weights/... rather than the machine's absolute path
    monkeypatch.chdir(tmp_path)  # a folder the weights are not in: the path as it was given
    assert stan.file == str(tiny_weights)
    stan.path = None
    assert stan.file is None


def test_written_by_stan_knows_weights_and_checkpoints_by_their_header(tiny_weights, tmp_path):
    """--overwrite's test for a weights file (fileio.is_stan_safetensors) reads the format that
    save_weights and save_checkpoint write, whatever the file is called."""
    from stan_cli import fileio

    assert set(fileio._STAN_FORMATS) == {weights_module.FORMAT, weights_module.CHECKPOINT_FORMAT}
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(tiny_weights.read_bytes())
    assert fileio.written_by_stan(tiny_weights) and fileio.is_stan_safetensors(renamed)
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other), metadata={"format": "someone-else"})
    (tmp_path / "text.safetensors").write_text("not a safetensors file")
    assert not fileio.written_by_stan(other) and not fileio.written_by_stan(tmp_path / "text.safetensors")


def test_a_pipe_as_weights_is_called_what_it_is_not_missing(monkeypatch, tmp_path):
    """Found by a robustness pass: a FIFO named as the weights was reported "not found"."""
    fifo = tmp_path / "w.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(WeightsError, match=r"w.safetensors: is not a regular file \(a pipe or device\)\. Pass --weights"):
        load_weights(fifo)
    monkeypatch.setenv("STAN_WEIGHTS", str(fifo))
    with pytest.raises(WeightsError, match=r"is not a regular file .* \(named by \$STAN_WEIGHTS\)"):
        find_default_weights()
