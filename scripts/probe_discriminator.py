"""Does the discriminator learn? A few joint training steps from trained weights' generator.

    python scripts/probe_discriminator.py --steps 30 --freeze-steps 30          # generator frozen
    python scripts/probe_discriminator.py --steps 70 --freeze-steps 30          # frozen, then trained
    python scripts/probe_discriminator.py --steps 30 --freeze-steps 0 --lam 1000 --pixel-norm l2

Runs `stan_cli.train._step` (the real adversarial step) on random Ped2 training windows with the
generator of --weights and a fresh discriminator (seed 0). For the first --freeze-steps steps the
generator's learning rate is 1e-30 (frozen, same code path), then --g-lr. Every 10 steps it
prints the mean discriminator loss (2 ln 2 = 1.386 is chance), D on real and on generated
windows, and the generator's adversarial loss. Used for the README's "shipped weights" note.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from stan_cli.dataset import WindowSet, load_clips
from stan_cli.model import Discriminator
from stan_cli.train import TrainOptions, _step
from stan_cli.weights import find_default_weights, load_weights, save_weights
from stan_cli.model import d_loss_map, split_window, with_middle
from stan_cli.windows import to_tensor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/ped2/training/frames"))
    parser.add_argument("--weights", type=Path, default=None, help="default: the shipped weights")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/stan-probe-cache"), help="decoded frames")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--freeze-steps", type=int, default=0, help="steps with the generator frozen")
    parser.add_argument("--g-lr", type=float, default=2e-4)
    parser.add_argument("--d-lr", type=float, default=2e-4)
    parser.add_argument("--lam", type=float, default=1.0)
    parser.add_argument("--pixel-norm", default="l2", choices=["l2", "mse"])
    parser.add_argument("--save", type=Path, default=None,
                        help="write the generator and the probed discriminator here (for `stan eval`; "
                             "the calibration is the input's, so only the d score is meaningful)")
    args = parser.parse_args()

    torch.manual_seed(0)
    stan = load_weights(args.weights or find_default_weights())
    clips = load_clips(args.data, stan.config.image_size, args.cache)
    windows = WindowSet(clips[:-2])  # the last two clips are stan train's validation clips
    generator, discriminator = stan.generator.train(), Discriminator(stan.config).train()
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-30, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=args.d_lr, betas=(0.5, 0.999))
    opts = TrainOptions(data=args.data, out=Path("unused"), pixel_norm=args.pixel_norm, lam=args.lam)
    pick = torch.Generator().manual_seed(0)
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(args.steps):
        if step == args.freeze_steps:
            for group in opt_g.param_groups:
                group["lr"] = args.g_lr
        idx = torch.randint(len(windows), (3,), generator=pick)
        x = to_tensor(torch.stack([windows[int(i)] for i in idx]))
        r = _step("adversarial", x, generator, discriminator, opt_g, opt_d, opts, torch.device("cpu"), "probe", Path("-"))
        losses.append(r["loss_d"])
        if step % 10 == 9:
            state = "frozen" if step < args.freeze_steps else "training"
            print(f"step {step + 1:4d} (generator {state}): D loss {np.mean(losses[-10:]):.4f}, "
                  f"D(real) {r['d_real']:.3f}, D(generated) {r['d_fake']:.3f}, adv {r['loss_adv']:.3f}, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    held_out_separation(generator, discriminator, WindowSet(clips[-2:]))
    if args.save:
        training = {**stan.training, "probe": {k: str(v) for k, v in vars(args).items()}}
        save_weights(args.save, generator, discriminator, stan.config, stan.calibration, training)
        print(f"saved {args.save}")


@torch.no_grad()
def held_out_separation(generator, discriminator, windows: WindowSet, every: int = 7) -> None:
    """Real against generated windows of the held-out clips (never trained on): the discriminator's
    mean loss there (chance 1.386) and the fraction of (real, generated) pairs it ranks right."""
    generator.eval(), discriminator.eval()
    real, fake = [], []
    for i in range(0, len(windows), every):
        x = to_tensor(windows[i][None])
        neighbours, _ = split_window(x)
        real.append(discriminator(x))
        fake.append(discriminator(with_middle(x, generator(neighbours))))
    real, fake = torch.cat(real), torch.cat(fake)  # (N, h, w) logits
    loss = (d_loss_map(real, real=True) + d_loss_map(fake, real=False)).mean()
    d_real, d_fake = d_loss_map(real, real=True), d_loss_map(fake, real=True)  # the d score, -log D
    ranked = (d_real[:, None] < d_fake[None, :]).double().mean()
    print(f"held-out clips, {len(real)} windows: D loss {loss:.4f} (chance 1.386); the d score "
          f"(-log D) ranks real below generated in {100 * ranked:.1f} % of pairs; "
          f"D(real) {torch.sigmoid(real).mean():.3f}, D(generated) {torch.sigmoid(fake).mean():.3f}", flush=True)


if __name__ == "__main__":
    main()
