"""What `stan train --time B` gives on a camera, from scratch and fine-tuned (--init), for several
budgets: the quality-vs-time table of issue #22 (docs/training.md, "A time budget").

    python benchmarks/quality_vs_time.py ../shared/data/ped1/training/frames ../shared/data/ped1/testing \\
        --init weights/stan-ped2.safetensors --out runs/quality-vs-time
    python benchmarks/quality_vs_time.py TRAIN TEST --init W --out DIR --budgets 15m 30m --starts init --dry-run

For each budget x start, one cell, in its own folder DIR/<start>-<budget>/:
    stan train TRAIN --time B --out weights.safetensors [--init W]     (train.log: its console)
    stan eval TEST --weights weights.safetensors --out eval/           (eval.log)
and once, the --init weights as they are: `stan eval TEST --weights W --out DIR/as-is/eval/`.
Each is a real command line in a fresh process, so its wall time is what a user waits.

Writes DIR/quality_vs_time.csv (one row a cell: the budget, the training command's wall time,
the pooled frame AUC of g, d and gd and gd's EER, and the frame-difference reference that
`stan eval` reports as frame_level.frame_difference) and DIR/quality_vs_time.png (the AUCs
against the budget, with the table), and prints the table as Markdown.

Resumable: run the same command again. A cell whose eval/results.json exists is not run again;
one whose training was interrupted goes on with `stan train --resume` (what is left of its budget,
stan train's own rule), one whose evaluation was interrupted is evaluated again. The table is
written from every finished cell in DIR, whatever --budgets and --starts this command names, so it
can be looked at while the rest run; --dry-run writes nothing.

How long: the sum of the budgets for each start, plus a few minutes per cell to read the footage
and calibrate past the budget's margin, plus an evaluation per cell (the 16 Ped1 test clips,
3,200 frames: about 4 minutes on the project's 2-core CPU). The default, 15m 30m 1h 3h for
scratch and init, is 9.5 hours of training and about 10 hours in all on that CPU; on a GPU the
budgets are the same (the runs simply train more epochs in them) and the evaluations take seconds.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from stan_cli.errors import StanError
from stan_cli.training.budget import parse_duration

STARTS = ("scratch", "init")
KINDS = ("g", "d", "gd", "frame_difference")
FIELDS = [
    "start", "budget", "budget_s", "train_wall_s", "auc_g", "auc_d", "auc_gd", "eer_gd", "auc_frame_difference",
    "selected", "steps", "weights",
]


def main() -> None:
    args = _parse()
    if not args.dry_run:
        args.out.mkdir(parents=True, exist_ok=True)
    cells = [(start, budget) for start in args.starts for budget in args.budgets]
    if "init" in args.starts and args.init is None:
        sys.exit("--starts init needs --init WEIGHTS (the weights to fine-tune, e.g. weights/stan-ped2.safetensors)")
    if args.init is not None:
        _evaluate(args, args.out / "as-is", args.init)
    for start, budget in cells:
        folder = args.out / f"{start}-{budget}"
        if (folder / "eval" / "results.json").exists():
            print(f"{folder.name}: done", flush=True)
            continue
        if not _train(args, folder, start, budget):
            continue
        _evaluate(args, folder, folder / "weights.safetensors")
    if args.dry_run:
        return  # the table stays as the finished cells left it
    rows = [row for start, budget in _finished(args.out) if (row := _row(args.out, start, budget))]
    if rows or (args.out / "as-is" / "eval" / "results.json").exists():
        _write(args.out, rows, _results(args.out / "as-is"))


def _finished(out: Path) -> list[tuple[str, str]]:
    """Every evaluated cell in the folder, by start and budget: the table keeps the cells that
    earlier commands (with other --budgets or --starts) finished."""
    cells = []
    for folder in out.iterdir():
        start, _, budget = folder.name.partition("-")
        if start in STARTS and (folder / "eval" / "results.json").exists():
            try:
                cells.append((STARTS.index(start), parse_duration(budget), start, budget))
            except StanError:  # a folder of the user's that only looks like a cell
                continue
    return [(start, budget) for *_, start, budget in sorted(cells)]


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("train", type=Path, help="normal footage to train on (stan train's FOOTAGE)")
    parser.add_argument("test", type=Path, help="labelled test footage (stan eval's TEST_DIR)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the cells, the CSV and the PNG")
    parser.add_argument("--init", type=Path, help="weights the 'init' cells fine-tune (and evaluated as they are)")
    parser.add_argument("--budgets", nargs="+", default=["15m", "30m", "1h", "3h"], help="--time of each cell")
    parser.add_argument("--starts", nargs="+", default=list(STARTS), choices=STARTS)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--train-args", default="", help="more stan train options for every cell, e.g. '--seed 1'")
    parser.add_argument("--dry-run", action="store_true", help="print the commands the cells still need, run nothing")
    args = parser.parse_args()
    for budget in args.budgets:
        parse_duration(budget)  # refuses a bad one before hours of work
    return args


def _stan(*words) -> list[str]:
    return [sys.executable, "-m", "stan_cli.cli", *(str(w) for w in words)]


def _train(args, folder: Path, start: str, budget: str) -> bool:
    """Train the cell (or go on with its interrupted run); True when its weights are there."""
    weights = folder / "weights.safetensors"
    if weights.exists():
        return True
    resume = (folder / "weights.safetensors.ckpt" / "last.safetensors").exists()
    command = _stan("train", args.train, "--out", weights, "--device", args.device, *shlex.split(args.train_args))
    command += ["--resume"] if resume else ["--time", budget, "--overwrite"] + (["--init", str(args.init)] if start == "init" else [])
    if args.dry_run:
        print(shlex.join(command))
        return False
    folder.mkdir(parents=True, exist_ok=True)
    print(f"{folder.name}: {'resuming' if resume else 'training'} ({budget})", flush=True)
    wall = _run(command, folder / "train.log")
    timing = folder / "timing.json"  # the wall time of every command that trained this cell
    spent = json.loads(timing.read_text()) if timing.exists() else []
    timing.write_text(json.dumps(spent + [round(wall, 1)]))
    return weights.exists()


def _evaluate(args, folder: Path, weights: Path) -> None:
    if (folder / "eval" / "results.json").exists():
        return
    command = _stan("eval", args.test, "--weights", weights, "--out", folder / "eval", "--device", args.device, "--overwrite")
    if args.dry_run:
        print(shlex.join(command))
        return
    folder.mkdir(parents=True, exist_ok=True)
    print(f"{folder.name}: evaluating", flush=True)
    _run(command, folder / "eval.log")


def _run(command: list[str], log: Path) -> float:
    """Run a command, its console to `log`; its wall time. A failure is reported, not fatal: the other cells run."""
    start = time.perf_counter()
    with open(log, "a") as fh:
        fh.write(f"$ {shlex.join(command)}\n")
        fh.flush()
        code = subprocess.call(command, stdout=fh, stderr=subprocess.STDOUT)
    if code:
        print(f"  exit {code}: see {log}", flush=True)
    return time.perf_counter() - start


def _results(folder: Path) -> dict | None:
    path = folder / "eval" / "results.json"
    return json.loads(path.read_text()) if path.exists() else None


def _row(out: Path, start: str, budget: str) -> dict | None:
    folder = out / f"{start}-{budget}"
    results = _results(folder)
    if results is None:
        return None
    frame = results["frame_level"]
    training = results.get("weights", {}).get("training") or {}
    timing = folder / "timing.json"
    selected = training.get("selected") or {}
    return {
        "start": start, "budget": budget, "budget_s": parse_duration(budget),
        "train_wall_s": _train_wall_s(timing, training),
        **{f"auc_{k}": round(100 * frame[k]["pooled"]["auc"], 2) for k in KINDS},
        "eer_gd": round(100 * frame["gd"]["pooled"]["eer"], 2),
        "selected": f"{selected.get('phase', '')} {selected.get('epoch', '')}".strip(),
        "steps": training.get("steps", ""), "weights": str(folder / "weights.safetensors"),
    }


def _train_wall_s(timing: Path, training: dict) -> float | str:
    """The cell's training time: the wall time of the commands that trained it, or more where the
    run's own record says it used more of its budget: a command stopped from outside (the machine
    stopped, a kill) cannot note its wall time, but its checkpoints carry the time it used."""
    noted = sum(json.loads(timing.read_text())) if timing.exists() else None
    used = (training.get("time_budget") or {}).get("used_s")
    if used is None:
        return "" if noted is None else noted
    return round(max(noted or 0.0, used), 1)


def _write(out: Path, rows: list[dict], as_is: dict | None) -> None:
    with open(out / "quality_vs_time.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    reference = _reference(rows, as_is)
    _plot(out / "quality_vs_time.png", rows, as_is, reference)
    print(_markdown(rows, as_is, reference))
    print(f"\nwritten: {out / 'quality_vs_time.csv'}, {out / 'quality_vs_time.png'}")


def _reference(rows: list[dict], as_is: dict | None) -> float | None:
    """The frame-difference AUC: the same for every cell of one image size (no learning)."""
    if rows:
        return rows[0]["auc_frame_difference"]
    return round(100 * as_is["frame_level"]["frame_difference"]["pooled"]["auc"], 2) if as_is else None


def _as_is_aucs(as_is: dict | None) -> dict[str, float]:
    if as_is is None:
        return {}
    return {k: round(100 * as_is["frame_level"][k]["pooled"]["auc"], 2) for k in ("g", "d", "gd")}


def _markdown(rows: list[dict], as_is: dict | None, reference: float | None) -> str:
    lines = [
        "| start | --time | training wall time | g | d | gd | EER gd | selected |",
        "|---|---|---|---|---|---|---|---|",
    ]
    if as_is is not None:
        a = _as_is_aucs(as_is)
        lines.append(f"| --init weights as they are | 0 | 0 | {a['g']} % | {a['d']} % | {a['gd']} % | | |")
    for r in rows:
        wall = f"{float(r['train_wall_s']) / 60:.1f} min" if r["train_wall_s"] != "" else ""
        lines.append(
            f"| {r['start']} | {r['budget']} | {wall} | {r['auc_g']} % | {r['auc_d']} % | {r['auc_gd']} % | "
            f"{r['eer_gd']} % | {r['selected']} |"
        )
    if reference is not None:
        lines.append(f"| frame difference (no learning) | | | {reference} % | | | | |")
    return "\n".join(lines)


def _plot(path: Path, rows: list[dict], as_is: dict | None, reference: float | None) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax, ax_table = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    colours, styles = {"scratch": "tab:blue", "init": "tab:orange"}, {"g": "-", "gd": "--", "d": ":"}
    for start in STARTS:
        cells = sorted((r for r in rows if r["start"] == start), key=lambda r: r["budget_s"])
        for kind, style in styles.items():
            if cells:
                minutes = [r["budget_s"] / 60 for r in cells]
                ax.plot(minutes, [r[f"auc_{kind}"] for r in cells], style, marker="o", color=colours[start], label=f"{start}, {kind}")
    if reference is not None:
        ax.axhline(reference, color="grey", lw=1, label=f"frame difference {reference} %")
    if as_is is not None:
        ax.axhline(_as_is_aucs(as_is)["gd"], color="tab:orange", lw=1, ls="-.", label="--init weights as they are, gd")
    ax.set_xscale("log")
    budgets = {r["budget_s"] / 60: r["budget"] for r in rows}
    if budgets:
        ax.set_xticks(list(budgets), labels=list(budgets.values()))
        ax.minorticks_off()
    ax.set_xlabel("stan train --time")
    ax.set_ylabel("pooled frame AUC (%)")
    ax.set_title("what the time buys")
    ax.legend(fontsize="small")
    ax_table.axis("off")
    table = [[r["start"], r["budget"], r["auc_g"], r["auc_d"], r["auc_gd"]] for r in rows]
    if as_is is not None:
        a = _as_is_aucs(as_is)
        table.insert(0, ["--init as is", "", a["g"], a["d"], a["gd"]])
    if reference is not None:
        table.append(["frame difference", "", reference, "", ""])
    if table:
        ax_table.table(cellText=table, colLabels=["start", "--time", "g", "d", "gd"], loc="center")
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
