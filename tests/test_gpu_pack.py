"""scripts/gpu/pack.py: a discriminator-phase run comes back from a GPU without its (unchanged) generator."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

PACK = Path(__file__).resolve().parents[1] / "scripts" / "gpu" / "pack.py"


def _weights(path: Path, generator_scale: float, discriminator_scale: float, meta: dict) -> Path:
    torch.manual_seed(0)
    g = {"generator.enc.weight": torch.randn(4, 3) * generator_scale, "generator.dec.bias": torch.randn(5)}
    d = {"discriminator.conv.weight": torch.randn(2, 2, 3) * discriminator_scale}
    save_file({**g, **d}, str(path), meta)
    return path


def _pack(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PACK), *map(str, args)], capture_output=True, text=True)


def _read(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_strip_then_join_gives_back_every_tensor_and_the_metadata(tmp_path):
    init = _weights(tmp_path / "init.safetensors", 1.0, 1.0, {"name": "init"})
    run = _weights(tmp_path / "run.safetensors", 1.0, 2.0, {"name": "run", "training": "{}"})  # a new discriminator
    part, back = tmp_path / "run.d.safetensors", tmp_path / "back.safetensors"
    assert _pack("strip", run, init, part).returncode == 0
    assert all(k.startswith("discriminator.") for k in _read(part)[0])
    assert part.stat().st_size < run.stat().st_size
    assert _pack("join", part, init, back).returncode == 0
    (want, want_meta), (got, got_meta) = _read(run), _read(back)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert got_meta == want_meta
    refused = _pack("join", part, init, back)  # never over a file that is there
    assert refused.returncode != 0 and "already there" in refused.stderr


@pytest.mark.parametrize("step", ["strip", "join"])
def test_a_generator_that_is_not_the_init_ones_is_refused(tmp_path, step):
    init = _weights(tmp_path / "init.safetensors", 1.0, 1.0, {})
    other = _weights(tmp_path / "other.safetensors", 1.0 + 1e-6, 1.0, {})  # one generator tensor moved
    part = tmp_path / "part.safetensors"
    if step == "strip":
        result = _pack("strip", other, init, part)
        assert result.returncode != 0 and "its generator is not" in result.stderr and not part.exists()
    else:
        assert _pack("strip", other, other, part).returncode == 0
        result = _pack("join", part, init, tmp_path / "back.safetensors")
        assert result.returncode != 0 and "not stripped from a run on" in result.stderr
        assert not (tmp_path / "back.safetensors").exists()
