"""Write weights/stan-untrained.safetensors: the paper's networks, seeded, NOT trained.

These are placeholders so that `stan detect` runs out of the box before trained weights are
shipped; their scores mean nothing. Stored as float16 (9.5 MB); loading casts to float32.

    python scripts/make_untrained_weights.py
"""

import argparse
from pathlib import Path

import torch

from stan_cli.model import PAPER, Discriminator, Generator
from stan_cli.weights import save_weights

SEED = 0

if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help prints, writes nothing
    torch.manual_seed(SEED)
    generator, discriminator = Generator(PAPER).half(), Discriminator(PAPER).half()
    out = Path(__file__).resolve().parent.parent / "weights" / "stan-untrained.safetensors"
    save_weights(
        out, generator, discriminator, PAPER, calibration=None,
        training={"untrained": True, "seed": SEED, "note": "seeded random initialisation; scores are meaningless"},
    )
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
