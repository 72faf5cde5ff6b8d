"""Detection speed and memory: the plain per-window loop vs `stan detect`, on synthetic video.

    python benchmarks/bench_detect.py                        # throughput (15 s at 25 fps, 360x240) + memory (0.5, 2 min, 640x480)
    python benchmarks/bench_detect.py --memory-only --minutes 1 10 60 --modes no-video   # memory on longer videos
    python benchmarks/bench_detect.py --device cuda          # on a GPU, with what bounds it
    python benchmarks/bench_detect.py --variants --compile   # also: which model-level variants pay
    python benchmarks/bench_detect.py --seconds 5 --repeats 1 --minutes   # a quick look, no memory runs

The plain loop is what a naive user writes: for every 11-frame window, from scratch, the
generator on its 10 neighbours and the discriminator on all 11 (batch 1, fp32, eval mode,
autograd on), decoding and preprocessing included. `detect` runs in this process, end to end
(decode, scoring, report, the segments' clips; by default also the guided-backprop maps and the
overlay videos' second pass), interleaved with the plain loop and `--no-video` so that machine
load hits all alike; the ratios are what to compare across machines. The line "default detect /
--no-video" is issue #19's measure: the default command at half the speed of scoring or better.
The ceiling is the FLOPs per frame over the rate of a large convolution timed here.
Peak RSS comes from `stan detect` run as a child process on 640x480 video (getrusage of a small
launcher's children).
Videos are generated on the fly into a temporary folder and deleted afterwards.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from stan_cli.detect import detect
from stan_cli.inference import StreamScorer, autocast, score_windows
from stan_cli.model import WINDOW, d_loss_map, pixel_loss, split_window
from stan_cli.video import read_frames
from stan_cli.weights import find_default_weights, load_weights
from stan_cli.windows import to_grey_square, to_tensor


def write_synthetic(path: Path, seconds: float, width: int, height: int, fps: float, seed: int = 0) -> int:
    """A textured walkway with slow dark walkers and a fast bright square, frames made one by one."""
    rng = np.random.default_rng(seed)
    background = (100 + 25 * rng.standard_normal((height, width))).clip(0, 255).astype(np.int16)
    noise = rng.integers(-4, 5, (8, height, width), dtype=np.int16)  # cycled: cheap sensor noise
    n = int(round(seconds * fps))
    writer = imageio_ffmpeg.write_frames(
        str(path), (width, height), fps=fps, codec="libx264", macro_block_size=1, quality=None,
        output_params=["-crf", "23", "-preset", "veryfast"],
    )
    writer.send(None)
    bw, bh = max(width // 30, 4), max(height // 10, 6)
    try:
        for t in range(n):
            img = background + noise[t % 8]
            for k in range(3):
                x, y = (2 * t + 97 * k) % (width - bw), height // 4 + k * height // 5
                img[y : y + bh, x : x + bw] = 50
            if (t // 50) % 3 == 2:  # every third stretch of 50 frames holds the "anomaly"
                x = (12 * t) % (width - 2 * bw)
                img[height - 3 * bh // 2 : height - bh // 2, x : x + 2 * bw] = 245
            grey = img.clip(0, 255).astype(np.uint8)
            writer.send(np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2)))
    finally:
        writer.close()
    return n


def plain_loop(video: Path, model, device) -> tuple[np.ndarray, np.ndarray]:
    """The baseline: per window, from scratch, batch 1, fp32, autograd on, decode included."""
    g, d = model.generator, model.discriminator
    _, frames = read_frames(video)
    window: deque[torch.Tensor] = deque(maxlen=WINDOW)
    pixel, d_loss = [], []
    for frame in frames:
        window.append(to_tensor(to_grey_square(frame[None], model.config.image_size)[0]))  # (1, S, S)
        if len(window) == WINDOW:
            x = torch.stack(list(window))[None].to(device)  # (1, 11, 1, S, S)
            neighbours, middle = split_window(x)
            pixel.append(pixel_loss(g(neighbours), middle).item())
            d_loss.append(d_loss_map(d(x), real=True).item())
    return np.array(pixel), np.array(d_loss)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# --- FLOPs and the ceiling -----------------------------------------------------------------


def conv_flops(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Multiply-adds x 2 of one Conv2d / Conv3d / ConvTranspose2d call (bias left out)."""
    kernel = math.prod(module.kernel_size)
    if isinstance(module, nn.ConvTranspose2d):  # every input value meets cout x kernel weights
        return 2 * x.numel() * module.out_channels // module.groups * kernel
    return 2 * y.numel() * module.in_channels // module.groups * kernel


def count_hooked(modules: list[nn.Module], run) -> int:
    total = [0]
    hooks = [m.register_forward_hook(lambda m, i, o: total.__setitem__(0, total[0] + conv_flops(m, i[0], o)))
             for m in modules if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d))]
    try:
        with torch.inference_mode():
            run()
    finally:
        for h in hooks:
            h.remove()
    return total[0]


def flops(model, device) -> dict[str, float]:
    """Per window (plain) via module hooks; per frame of StreamScorer via torch's op counter."""
    g, d, s = model.generator, model.discriminator, model.config.image_size
    x = torch.zeros(1, WINDOW, 1, s, s, device=device)
    neighbours, _ = split_window(x)
    out = {
        "generator / window": count_hooked(list(g.modules()), lambda: g(neighbours)),
        "encoder / frame": count_hooked(list(g.encoder), lambda: g(neighbours)) / (WINDOW - 1),
        "discriminator / window": count_hooked(list(d.modules()), lambda: d(x)),
    }
    out["plain loop / frame"] = out["generator / window"] + out["discriminator / window"]
    warm, steady = torch.zeros(WINDOW - 1 + 8, 1, s, s, device=device), torch.zeros(8, 1, s, s, device=device)  # 8 frames in, 8 windows out
    scorer, only_d = StreamScorer(g, d), StreamScorer(g, d)
    scorer.push(warm)
    only_d._discriminate(warm)
    with FlopCounterMode(display=False) as total:
        scorer.push(steady)
    with FlopCounterMode(display=False) as part:
        only_d._discriminate(steady)
    out["StreamScorer / frame"] = total.get_total_flops() / 8
    out["  of which discriminator"] = part.get_total_flops() / 8
    return {k: v / 1e9 for k, v in out.items()}


def conv_rate(device, precision: str) -> dict[str, float]:
    """GFLOP/s of the two convolution shapes that dominate the model, batch enlarged."""
    cases = {
        "Conv2d 128->512 3x3 at 28x28, batch 16": (nn.Conv2d(128, 512, 3, padding=1), (16, 128, 28, 28)),
        "Conv3d 32->64 3x5x5 at 16x112x112": (nn.Conv3d(32, 64, (3, 5, 5), stride=(1, 2, 2), padding=(0, 2, 2)), (1, 32, 18, 112, 112)),
    }
    rates = {}
    for name, (conv, shape) in cases.items():
        conv = conv.to(device)
        x = torch.randn(shape, device=device)
        with torch.inference_mode(), autocast(device, precision):
            y = conv(x)
            work = conv_flops(conv, x, y)
            best = math.inf
            for _ in range(3 if device.type == "cpu" else 20):
                sync(device)
                t = time.perf_counter()
                conv(x)
                sync(device)
                best = min(best, time.perf_counter() - t)
        rates[name] = work / best / 1e9
    return rates


# --- throughput ----------------------------------------------------------------------------


def diff(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Largest absolute and relative difference of a against the reference b."""
    err = np.abs(a - b)
    return float(err.max()), float((err / np.maximum(np.abs(b), 1e-12)).max())


def throughput(args, video: Path, n: int, model, device, tmp: Path) -> dict[str, float]:
    runs = {"plain loop": None}
    for p in args.precisions:
        runs[f"detect --no-video {p}"] = (p, False)
    runs["detect (default) fp32"] = ("fp32", True)
    warm = tmp / "warm-up.mp4"  # imports and first calls of every path, untimed
    write_synthetic(warm, 1.2, 64, 48, 10)
    for how in runs.values():
        if how is None:
            plain_loop(warm, model, device)
        else:
            detect(warm, out=tmp / "warm-up", weights=model, device=str(device), precision=how[0], write_video=how[1], overwrite=True)
    seconds = {name: 0.0 for name in runs}
    scoring = {name: 0.0 for name in runs}
    scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for rep in range(args.repeats):  # interleaved: A, B, C, A, B, C, ...
        for name, how in runs.items():
            t = time.perf_counter()
            if how is None:
                scores[name] = plain_loop(video, model, device)
            else:
                out = tmp / f"report-{rep}"
                r = detect(video, out=out, weights=model, device=str(device), batch_size=args.batch_size,
                           precision=how[0], write_video=how[1], overwrite=True)
                scores[name] = (r.pixel_loss[5:-5], r.d_loss[5:-5])
                scoring[name] += r.summary["timings"]["scoring_s"]
                shutil.rmtree(out)
            sync(device)
            seconds[name] += time.perf_counter() - t
            print(f"  [{rep + 1}/{args.repeats}] {name}: {n / (time.perf_counter() - t):.2f} frames/s", flush=True)
    fps = {name: n * args.repeats / s for name, s in seconds.items()}
    print(f"\nthroughput, {n} frames of {args.size}, {args.repeats} interleaved repeats (total frames / total time):")
    print("  (default: both overlay videos, guided-backprop maps included; every detect run writes the segments' clips)")
    base = fps["plain loop"]
    for name, rate in fps.items():
        line = f"  {name:<28} {rate:8.2f} frames/s   x{rate / base:5.2f} vs plain"
        if name != "plain loop":
            line += f"   (scoring pass alone {n * args.repeats / scoring[name]:7.2f} frames/s)"
            (pa, pr), (da, dr) = diff(scores[name][0], scores["plain loop"][0]), diff(scores[name][1], scores["plain loop"][1])
            line += f"\n  {'':<28} pixel_loss diff abs {pa:.1e} rel {pr:.1e}, d_loss abs {da:.1e} rel {dr:.1e}"
        print(line)
    ratio = fps["detect (default) fp32"] / fps["detect --no-video fp32"] if "detect --no-video fp32" in fps else float("nan")
    print(f"\n  default detect / --no-video (fp32): {ratio:.2f}   (issue #19: at least 0.50, aim 0.80)")
    return fps


def breakdown(args, video: Path, model, device) -> None:
    """Decode, preprocess, host-to-device and model alone, each timed on its own."""
    s = model.config.image_size
    t = time.perf_counter()
    _, frames = read_frames(video)
    decoded = [f.copy() for f in frames]
    t_decode = time.perf_counter() - t
    t = time.perf_counter()
    chunks = [to_grey_square(np.stack(decoded[i : i + args.batch_size]), s) for i in range(0, len(decoded), args.batch_size)]
    t_pre = time.perf_counter() - t
    del decoded
    t = time.perf_counter()
    on_device = [to_tensor(torch.from_numpy(c).to(device)) for c in chunks]
    sync(device)
    t_transfer = time.perf_counter() - t
    n = sum(len(c) for c in chunks)
    print(f"\nwhat bounds it on {device} ({n} frames of {args.size}; ms per frame, alone):")
    parts = {"decode (ffmpeg, rgb24 pipe)": t_decode, "preprocess (grey 224, batched)": t_pre, "host -> device (uint8)": t_transfer}
    for p in args.precisions:
        scorer = StreamScorer(model.generator, model.discriminator, p)
        scorer.push(on_device[0])  # warm-up: allocator, kernels
        scorer = StreamScorer(model.generator, model.discriminator, p)
        sync(device)
        t = time.perf_counter()
        for c in on_device:
            scorer.push(c)
        sync(device)
        parts[f"model {p} (StreamScorer)"] = time.perf_counter() - t
    for name, sec in parts.items():
        print(f"  {name:<32} {sec / n * 1e3:8.2f} ms   ({n / sec:8.1f} frames/s alone)")
    bound = max((k for k in parts if "model" not in k or "fp32" in k), key=parts.get)
    serial = sum(sec for k, sec in parts.items() if "model" not in k or "fp32" in k)
    print(f"  fp32 bound: {bound}; all stages in series: {n / serial:.1f} frames/s")


def variants(args, model, device) -> None:
    """Model-level variants on random frames at 224, windows/s, interleaved."""
    import copy

    g, d, s = model.generator, model.discriminator, model.config.image_size
    n, b = 10 + 4 * args.batch_size, args.batch_size
    frames = torch.rand(n, 1, s, s, device=device) * 2 - 1
    windows = frames.unfold(0, WINDOW, 1).permute(0, 4, 1, 2, 3).contiguous()  # (n - 10, 11, 1, S, S)
    g_cl = copy.deepcopy(g).to(memory_format=torch.channels_last)
    d_cl = copy.deepcopy(d).to(memory_format=torch.channels_last_3d)

    def batched(precision):  # score_windows on batches: no sharing between windows
        return lambda: [score_windows(g, d, windows[i : i + b], precision) for i in range(0, len(windows), b)]

    def encoder_shared():  # Generator.encode once per frame + predict_from_features; discriminator per window
        with torch.inference_mode():
            feats = g.encode(frames)  # (n, C, h, w)
            idx = torch.tensor([list(range(k, k + 5)) + list(range(k + 6, k + 11)) for k in range(len(windows))])
            for i in range(0, len(windows), b):
                g.predict_from_features(feats[idx[i : i + b]])  # (b, 10, C, h, w)
                d(windows[i : i + b])

    def stream(precision, gen=g, disc=d, fr=frames, compiled=False):
        scorer = StreamScorer(gen, disc, precision)
        if compiled:  # once, so that every run reuses the compiled graphs
            scorer._predict = torch.compile(scorer._predict)
            scorer._discriminate = torch.compile(scorer._discriminate)

        def run():
            scorer.__init__(gen, disc, precision)  # a fresh stream; the compiled methods stay
            for c in [fr[: b + 10], *fr[b + 10 :].split(b)]:
                scorer.push(c)
        return run

    runs = {"score_windows fp32 (batched)": batched("fp32"), "encoder shared fp32": encoder_shared,
            "StreamScorer fp32": stream("fp32"), "StreamScorer fp32 channels_last": stream("fp32", g_cl, d_cl, frames.contiguous(memory_format=torch.channels_last)),
            "StreamScorer bf16": stream("bf16"), "StreamScorer bf16 channels_last": stream("bf16", g_cl, d_cl, frames.contiguous(memory_format=torch.channels_last))}
    if args.compile:
        runs["StreamScorer fp32 compiled"] = stream("fp32", compiled=True)
        t = time.perf_counter()
        runs["StreamScorer fp32 compiled"]()
        print(f"\ntorch.compile of StreamScorer fp32: first run (compilation) {time.perf_counter() - t:.1f} s")
    for run in runs.values():
        run()  # warm-up
    seconds = {name: 0.0 for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            sync(device)
            t = time.perf_counter()
            run()
            sync(device)
            seconds[name] += time.perf_counter() - t
    print(f"\nmodel-level variants, {len(windows)} windows at {s}x{s}, batch {b}, {args.repeats} interleaved repeats:")
    base = seconds["score_windows fp32 (batched)"]
    for name, sec in seconds.items():
        print(f"  {name:<34} {len(windows) * args.repeats / sec:7.2f} windows/s   x{base / sec:5.2f}")


# --- memory --------------------------------------------------------------------------------


# Forked from this (large) process, a child's peak RSS would start at ours: a small launcher forks it.
_LAUNCHER = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")


def _child_pids(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def peak_rss(cmd: list[str], env: dict, every: float = 1.0) -> tuple[float, float, int, list[tuple[float, float]]]:
    """Run cmd in a child; (wall seconds, peak RSS in MB of it and its children, exit code, trace).

    The trace samples the RSS of `cmd` itself (the launcher's child; ffmpeg's own processes not
    included) every `every` seconds from /proc, as (seconds since start, MB): it shows whether
    memory climbs during the run, which a single peak cannot."""
    t = time.perf_counter()
    trace: list[tuple[float, float]] = []
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:  # files: a full pipe would block
        proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, *cmd], env=env, stdout=out, stderr=err, text=True)
        while proc.poll() is None:
            kids = _child_pids(proc.pid)
            rss = _rss_mb(kids[0]) if kids else None
            if rss is not None:
                trace.append((time.perf_counter() - t, rss))
            time.sleep(every)
        wall = time.perf_counter() - t
        out.seek(0)
        err.seek(0)
        printed, lines = out.read().split(), err.read().strip().splitlines()
    if proc.returncode:
        print(f"  failed ({proc.returncode}): {lines[-1] if lines else ''}")
    return wall, int(printed[-1]) / 1024 if printed else float("nan"), proc.returncode, trace  # ru_maxrss is in kB on Linux


def trace_summary(trace: list[tuple[float, float]], parts: int = 10) -> str:
    """Largest RSS sampled in each tenth of the run's wall time, in MB."""
    if not trace:
        return "no samples"
    end = trace[-1][0]
    tops = [max((r for s, r in trace if k * end / parts <= s <= (k + 1) * end / parts), default=float("nan"))
            for k in range(parts)]
    return " ".join(f"{v:.0f}" for v in tops)


def memory(args, tmp: Path, weights: Path) -> None:
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    print(f"\npeak RSS of `stan detect` on 640x480 video at {args.memory_fps:g} fps (a child process each):")
    print(f"  {'minutes':>7} {'frames':>7} {'mode':<10} {'wall s':>8} {'frames/s':>9} {'peak RSS MB':>12}")
    modes = [m for m in (("--no-video", ["--no-video"]), ("overlays", [])) if m[0].lstrip("-") in args.modes]
    peaks: dict[str, list[float]] = {mode: [] for mode, _ in modes}
    for minutes in args.minutes:
        video = tmp / f"memory-{minutes:g}min.mp4"
        n = write_synthetic(video, minutes * 60, 640, 480, args.memory_fps)
        for mode, extra in modes:
            out = tmp / "memory-report"
            cmd = [sys.executable, "-m", "stan_cli.cli", "detect", str(video), "--out", str(out), "--overwrite",
                   "--weights", str(weights), "--device", args.device, "--batch-size", str(args.batch_size), *extra]
            wall, rss, rc, trace = peak_rss(cmd, env)
            peaks[mode].append(rss)
            shutil.rmtree(out, ignore_errors=True)
            print(f"  {minutes:7g} {n:7d} {mode:<10} {wall:8.1f} {n / wall:9.2f} {rss:12.0f}" + ("" if rc == 0 else "  FAILED"), flush=True)
            print(f"          RSS of detect, largest in each tenth of the run (MB): {trace_summary(trace)}", flush=True)
        video.unlink()
    if len(args.minutes) > 1:
        for mode, values in peaks.items():
            print(f"  {mode}: {args.minutes[-1] - args.minutes[0]:+g} min of video changed the peak by "
                  f"{values[-1] - values[0]:+.0f} MB; largest {max(values):.0f} MB (target < 1536)")


def speed(args, tmp: Path, model, device, width: int, height: int) -> None:
    counts = flops(model, device)
    print("\nFLOPs (G), counted here:")
    for k, v in counts.items():
        print(f"  {k:<24} {v:7.2f}")
    video = tmp / "clip.mp4"
    n = write_synthetic(video, args.seconds, width, height, args.fps)
    fps = throughput(args, video, n, model, device, tmp)
    print("\nceiling = FLOPs per frame / convolution rate (generator at the Conv2d rate, discriminator at the Conv3d rate):")
    for p in args.precisions:
        r2, r3 = conv_rate(device, p).values()
        plain = counts["generator / window"] / r2 + counts["discriminator / window"] / r3
        shared_d = counts["  of which discriminator"]
        shared = (counts["StreamScorer / frame"] - shared_d) / r2 + shared_d / r3
        got = fps.get(f"detect --no-video {p}", float("nan"))
        print(f"  {p}: Conv2d {r2:7.1f} GFLOP/s, Conv3d {r3:7.1f} GFLOP/s -> plain-loop ceiling {1 / plain:6.2f} frames/s, "
              f"StreamScorer ceiling {1 / shared:6.2f} frames/s; detect --no-video {got:.2f} = {got * shared:.0%} of it")
    breakdown(args, video, model, device)
    if args.variants:
        variants(args, model, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--weights", type=Path, default=None, help="default: the shipped weights")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of the throughput clip")
    parser.add_argument("--size", default="360x240", help="WxH of the throughput clip")
    parser.add_argument("--fps", type=float, default=25.0, help="frame rate of the throughput clip")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats of each throughput run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], help="detect precisions to time")
    parser.add_argument("--minutes", type=float, nargs="*", default=[0.5, 2.0], help="memory runs (none: skip)")
    parser.add_argument("--memory-fps", type=float, default=10.0)
    parser.add_argument("--modes", nargs="+", default=["no-video", "overlays"], choices=["no-video", "overlays"],
                        help="memory runs to make (overlays, the default detect, take about 1.4x longer)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--memory-only", action="store_true", help="skip FLOPs and throughput")
    parser.add_argument("--variants", action="store_true", help="also time model-level variants")
    parser.add_argument("--compile", action="store_true", help="with --variants: include torch.compile")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    weights = args.weights or find_default_weights()
    model = load_weights(weights).to(device).eval()
    width, height = (int(v) for v in args.size.split("x"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"# {name}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"device {device}, batch {args.batch_size}, weights {weights.name}")

    with tempfile.TemporaryDirectory(prefix="stan-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if not args.memory_only:
            speed(args, tmp, model, device, width, height)
        if args.minutes:
            memory(args, tmp, weights)


if __name__ == "__main__":
    main()
