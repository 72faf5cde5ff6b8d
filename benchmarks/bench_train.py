"""Training throughput: samples/s of each phase, fp32 vs bf16, through the real training step.

`stan train` times a few steps of the phases it will run before every run and prints its plan
(docs/training.md, "A time budget"); this script measures the same steps at more length, on random
windows, for every phase and precision at once. The discriminator phase is timed with generated
fakes only (a run's pseudo-anomalies replace the generator's forward pass for --pseudo-share of
them, so a real run's step is a little faster).

    python benchmarks/bench_train.py                 # CPU (and CUDA when present)
    python benchmarks/bench_train.py --steps 10 --devices cpu

Prints one line per (device, precision, phase) and the bf16/fp32 ratio measured in the same run.
Uses random windows at the paper's 224 x 224, batch 3, on the paper's networks.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from stan_cli.inference import cpu_has_native_bf16
from stan_cli.model import PAPER, Discriminator, Generator
from stan_cli.train import TrainOptions, _step


def measure(device: torch.device, precision: str, phase: str, steps: int, batch: int) -> float:
    torch.manual_seed(0)
    g, d = Generator(PAPER).to(device), Discriminator(PAPER).to(device)
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opts = TrainOptions(data=Path("."), out=Path("x"), precision=precision, batch_size=batch)
    x = (torch.rand(batch, 11, 1, PAPER.image_size, PAPER.image_size, device=device) * 2 - 1)
    for _ in range(2):  # warm-up: allocator, autotuning
        _step(phase, x, g, d, opt_g, opt_d, opts, device, "bench", Path("-"))
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        _step(phase, x, g, d, opt_g, opt_d, opts, device, "bench", Path("-"))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=3)
    parser.add_argument("--devices", default="cpu,cuda")
    args = parser.parse_args()
    print(f"# {cpu_model()}, {os.cpu_count()} CPUs, native bf16: {cpu_has_native_bf16()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, batch {args.batch}, {args.steps} timed steps")
    for name in args.devices.split(","):
        if name == "cuda" and not torch.cuda.is_available():
            continue
        device = torch.device(name)
        label = torch.cuda.get_device_name() if name == "cuda" else "cpu"
        for phase in ("pretrain", "adversarial", "discriminator"):
            rates = {}
            for precision in ("fp32", "bf16"):
                rates[precision] = measure(device, precision, phase, args.steps, args.batch)
                print(f"{label:>10} {phase:<12} {precision}: {rates[precision]:7.2f} samples/s "
                      f"({1 / rates[precision]:.3f} s/sample)", flush=True)
            print(f"{label:>10} {phase:<12} bf16 / fp32 = {rates['bf16'] / rates['fp32']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
