"""Time one pretrain and one adversarial step on this GPU; print epochs that fit BUDGET seconds."""
import sys, time, torch
from pathlib import Path
from stan_cli.model import PAPER, Generator, Discriminator
from stan_cli.train import TrainOptions, _step
budget, steps_per_epoch = float(sys.argv[1]), int(sys.argv[2])
dev = torch.device("cuda")
g, d = Generator(PAPER).to(dev), Discriminator(PAPER).to(dev)
og, od = torch.optim.Adam(g.parameters(), 2e-4), torch.optim.Adam(d.parameters(), 2e-4)
opts = TrainOptions(data=Path("."), out=Path("x"), precision="bf16")
x = torch.rand(3, 11, 1, 224, 224, device=dev) * 2 - 1
t = {}
for phase in ("pretrain", "adversarial"):
    for _ in range(5):
        _step(phase, x, g, d, og, od, opts, dev, "plan", Path("-"))
    torch.cuda.synchronize(); s = time.perf_counter()
    for _ in range(20):
        _step(phase, x, g, d, og, od, opts, dev, "plan", Path("-"))
    torch.cuda.synchronize(); t[phase] = (time.perf_counter() - s) / 20
ep_p = steps_per_epoch * t["pretrain"] * 1.15 + 3  # + data loading, validation
ep_a = steps_per_epoch * t["adversarial"] * 1.15 + 3
P = max(1, min(20, int(0.3 * budget / ep_p)))
E = max(1, min(40, int((budget - P * ep_p) / ep_a)))
print(f"step s: pretrain {t['pretrain']*1000:.1f} ms, adversarial {t['adversarial']*1000:.1f} ms; "
      f"epoch ~{ep_p:.0f} s / ~{ep_a:.0f} s -> P={P} E={E}", file=sys.stderr)
print(P, E)
