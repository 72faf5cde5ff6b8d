"""Bring weights back from a lent GPU within what a call may return (8 files, 16 MiB each, 64 MiB).

A weights file is 18.9 MB (generator 9.1, discriminator 9.8). A discriminator-phase run leaves its
generator as it found it (frozen, the `--init` one), so only its discriminator needs the trip:

    python scripts/gpu/pack.py strip RUN.safetensors INIT.safetensors OUT.d.safetensors   # there
    python scripts/gpu/pack.py join OUT.d.safetensors INIT.safetensors RUN.safetensors    # here

`strip` refuses a file whose generator differs from INIT's by a single bit; it writes the
discriminator's tensors, the file's metadata and the sha256 of the generator's tensors. `join`
puts INIT's generator back, checks it against that sha256, and writes a file that loads as the
original did (same tensors, same metadata). A whole file that is too large for one part is split
with `split -b 15M` and put together with `cat`.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

GENERATOR, KEY = "generator.", "stan_gpu_pack_generator_sha256"


def _tensors(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def generator_sha256(tensors: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(k for k in tensors if k.startswith(GENERATOR)):
        t = tensors[k].contiguous()
        h.update(k.encode())
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return h.hexdigest()


def strip(run: Path, init: Path, out: Path) -> None:
    tensors, meta = _tensors(run)
    init_tensors, _ = _tensors(init)
    digest = generator_sha256(tensors)
    if not any(k.startswith(GENERATOR) for k in tensors) or digest != generator_sha256(init_tensors):
        sys.exit(f"{run}: its generator is not {init}'s; bring the whole file back (split -b 15M)")
    save_file({k: v for k, v in tensors.items() if not k.startswith(GENERATOR)}, str(out), {**meta, KEY: digest})


def join(part: Path, init: Path, out: Path) -> None:
    tensors, meta = _tensors(part)
    digest = meta.pop(KEY, None)
    init_tensors, _ = _tensors(init)
    generator = {k: v for k, v in init_tensors.items() if k.startswith(GENERATOR)}
    if digest is None or digest != generator_sha256(generator):
        sys.exit(f"{part}: not stripped from a run on {init}'s generator (pack.py strip writes the sha256 it checks)")
    if out.exists():
        sys.exit(f"{out}: already there; give another path")
    save_file({**generator, **tensors}, str(out), meta)


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] not in ("strip", "join"):
        sys.exit(__doc__)
    {"strip": strip, "join": join}[sys.argv[1]](*(Path(a) for a in sys.argv[2:]))
