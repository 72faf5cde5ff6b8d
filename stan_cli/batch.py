"""`detect_many(...)`: one report folder per input under OUT, and an index of them all.

Inputs are videos, frame folders, or folders of either (a folder of videos, the UCSD layout
testing/frames/01, 02, ...), listed as dataset.find_sources lists them, in natural order. Each input is
scored by detect.detect into OUT/<its name>/, the ordinary report contract; the weights are
loaded once. A bad input (missing, not a video, too short, its report folder unwritable) is
recorded as an error and the others still run. OUT gets index.html, index.csv and summary.json,
rewritten as each input finishes, so an interrupted run leaves an index of what was done. An
earlier run's index is replaced (atomically) only then: a run refused for a bad option, or
stopped before its first input finished, leaves it as it was.

Under torchrun the inputs are shared between ranks (inputs[rank::world]); each rank writes its
own report folders, and rank 0 collects every rank's rows (one gather over Gloo, which needs no
GPU) and writes the index. That gather happens once, when every rank has finished its share:
until then rank 0's index shows its own inputs as they finish and the others' as pending, so an
interrupted torchrun job leaves an index of rank 0's inputs only (the other ranks' report
folders are written all the same). OUT must be on a filesystem all ranks see.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from . import __version__, report, report_html, segments
from .detect import ALL_FILES, SCORE_KINDS, check_options, detect, open_output
from .errors import InputError, OutputError, StanError
from .fileio import remove_quietly, shown, written_by_stan
from .inference import check_batch_size, resolve_device
from .video import VIDEO_EXTENSIONS, is_clip, is_frame_folder, is_stan_overlay, natural_key
from .weights import Stan, find_default_weights, load_weights

INDEX_FILES = ("index.html", "index.csv", "summary.json")
INDEX_COLUMNS = (
    "input", "report", "status", "frames", "duration_s", "fps", "segments", "abnormal_frames",
    "peak_score", "threshold", "error",
)
# Ranks that finish their share early wait for the slowest at the gather; hours of footage per
# rank are normal, and a crashed rank ends the job through torchrun, not through this timeout.
GATHER_TIMEOUT = timedelta(days=7)


@dataclass
class BatchEntry:
    """One input's row of the index: what detect found, or why it could not run."""

    index: int  # position in the input list
    input: Path
    name: str  # its report folder under OUT
    status: str = "pending"  # ok, incomplete (truncated video, report written), error, pending (not run yet)
    error: str | None = None
    frames: int | None = None
    fps: float | None = None
    duration_s: float | None = None
    segments: int | None = None
    abnormal_frames: int | None = None
    peak_score: float | None = None  # highest raw score of the clip
    threshold: float | str | None = None
    warnings: list[str] = field(default_factory=list)
    rank: int | None = None  # the torchrun rank that scored it
    flagged: list[dict] = field(default_factory=list)  # its segments: number, start_s, end_s, duration_s, peak_score, clip

    @property
    def report(self) -> str | None:
        """Relative link from OUT to the input's report page, when one was written."""
        return f"{self.name}/index.html" if self.status in ("ok", "incomplete") else None

    def to_dict(self) -> dict:
        return {**asdict(self), "input": str(self.input), "report": self.report}


@dataclass
class BatchResult:
    out: Path
    entries: list[BatchEntry]
    index: Path | None  # OUT/index.html; None on the other ranks of a torchrun job

    @property
    def failed(self) -> list[BatchEntry]:
        return [e for e in self.entries if e.status == "error"]


@dataclass(frozen=True)
class World:
    """Who this process is in a torchrun job (rank 0 of 1 otherwise)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> World:
        """From torchrun's RANK, WORLD_SIZE and LOCAL_RANK, checked: whole numbers, 0 <= RANK < WORLD_SIZE."""
        values = {}
        for name, default in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
            text = os.environ.get(name, default).strip() or default
            try:
                values[name] = int(text)
            except ValueError:
                values[name] = -1
            if values[name] < 0 or values[name] > 1_000_000:
                raise StanError(f"${name}={text}: not a process number. It is set by torchrun; unset it to run one process.")
        if values["WORLD_SIZE"] < 1 or values["RANK"] >= values["WORLD_SIZE"]:
            raise StanError(
                f"$RANK={values['RANK']} and $WORLD_SIZE={values['WORLD_SIZE']}: the rank must be below the number of "
                "processes. They are set by torchrun; unset both to run one process."
            )
        return cls(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])


InputEvent = Callable[[str, BatchEntry, int], None]  # ("start" | "done", entry, number of inputs)


def _clips_in(path: Path) -> list[Path]:
    """The clips of a folder that is not itself a frame folder, in natural order; [] for anything else.

    The clips are what dataset.find_sources finds: image subfolders and videos, hidden entries
    skipped. Never raises OSError, so is_batch and expand_inputs never do: a `path` that cannot be
    looked at or listed (permissions) gives [] and stays one input, for which detect records the
    reason; a subfolder that cannot be listed is kept as an input of its own, recorded alike,
    and the other clips still run.
    """
    try:
        if not path.is_dir() or is_frame_folder(path):
            return []
        children = sorted(path.iterdir(), key=lambda p: natural_key(p.name))
    except OSError:
        return []
    clips = []
    for child in children:
        try:
            if is_clip(child) or (_named_like_a_video(child) and not is_stan_overlay(child)):  # is_clip skips overlays too
                clips.append(child)
        except OSError:  # unreadable: detect says so for this input alone
            clips.append(child)
    return clips


def _named_like_a_video(path: Path) -> bool:
    """A visible entry with a video's extension that is not a readable file (a link to a missing
    file, a named pipe): an input of its own, for which detect says what is wrong, never skipped."""
    return not path.name.startswith(".") and path.suffix.lower() in VIDEO_EXTENSIONS and not path.is_dir()


def is_batch(paths: Sequence[str | Path]) -> bool:
    """Several arguments, or one folder of videos and/or clip folders (not a frame folder)."""
    return len(paths) > 1 or bool(_clips_in(Path(paths[0])))


def expand_inputs(paths: Sequence[str | Path]) -> list[Path]:
    """Each argument as itself, or, for a folder of videos and/or clip folders, its clips."""
    inputs: list[Path] = []
    for path in map(Path, paths):
        inputs.extend(_clips_in(path) or [path])
    return inputs


def report_names(inputs: Sequence[Path]) -> list[str]:
    """A report folder name per input: its stem (a folder's name), -2, -3, ... on a clash.

    Compared without case (macOS and Windows folders ignore it); the index files' names are taken.
    A name that would not be a plain visible folder under OUT is made one: "..mp4" and "...mp4"
    have the stems "." and "..", OUT itself and its parent, so leading dots become one "_"
    (".hidden.mp4" -> "_hidden") and a name of dots only, or none, becomes "input".
    """
    taken = {*INDEX_FILES, segments.FOLDER}  # segments/: a one-input report's clips, removed by --overwrite
    names = []
    for path in inputs:
        resolved = Path(os.path.abspath(path))
        try:
            resolved = resolved.resolve()
            folder = resolved.is_dir()
        except OSError:  # a name too long, a loop of links: detect says so for this input alone
            folder = False
        base = resolved.name if folder else resolved.stem
        if base.startswith(".") or not base:
            base = f"_{base.lstrip('.')}" if base.lstrip(".") else "input"
        name, k = base, 1
        while name.lower() in taken:
            k += 1
            name = f"{base}-{k}"
        taken.add(name.lower())
        names.append(name)
    return names


def detect_many(
    inputs: str | Path | Sequence[str | Path],
    out: Path,
    *,
    weights: Path | Stan | None = None,
    device: str = "auto",
    overwrite: bool = False,
    on_input: InputEvent = lambda event, entry, total: None,
    **detect_kwargs,
) -> BatchResult:
    """Run detect.detect on every input into OUT/<name>/ and write OUT's index (see README).

    `inputs`: paths of videos, frame folders, or folders of them (one path alone is fine).

    `detect_kwargs` go to every detect call (score, threshold, fps, write_video, on_progress, ...).
    Problems of one input (InputError, OutputError) are recorded in its entry; anything that
    would fail every input (weights, device, options, OUT itself) is raised.
    """
    out = Path(out)
    # the options every input would refuse alike: refused once, before OUT or an earlier index is touched
    check_options(**detect_kwargs)
    given = [Path(p) for p in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)]
    paths = expand_inputs(given)
    if not paths:
        raise InputError("no inputs given. Name video files, frame folders, or a folder of videos.")
    world = World.from_env()
    model = weights if isinstance(weights, Stan) else load_weights(Path(weights) if weights else find_default_weights())
    dev = _rank_device(resolve_device(device), world)
    check_batch_size(detect_kwargs.get("batch_size", 8), model.config, dev)
    entries = [BatchEntry(i, path, name) for i, (path, name) in enumerate(zip(paths, report_names(paths)))]
    _refuse_reports_inside_inputs(out, entries)
    own_group = world.size > 1 and not dist.is_initialized()
    if own_group:
        dist.init_process_group("gloo", timeout=GATHER_TIMEOUT)
    try:
        with contextlib.ExitStack() as stack:
            _prepare(out, overwrite, world, [*given, *paths], stack)
            index = _Index(out, model, detect_kwargs.get("score", "gd"), world) if world.rank == 0 else None
            for entry in entries[world.rank :: world.size]:
                on_input("start", entry, len(entries))
                _detect_one(entry, out, model, dev, overwrite, world.rank, detect_kwargs)
                if index is not None:
                    index.write(entries)
                on_input("done", entry, len(entries))
            if world.size > 1:
                _gather(entries, world)
                if index is not None:
                    index.write(entries)
    finally:
        if own_group:
            dist.destroy_process_group()
    return BatchResult(out, entries, out / "index.html" if index is not None else None)


def _rank_device(dev: torch.device, world: World) -> torch.device:
    """The device of this process: under torchrun on CUDA, the GPU of its local rank."""
    if world.size == 1 or dev.type != "cuda":
        return dev
    if world.local_rank >= torch.cuda.device_count():
        raise StanError(
            f"torchrun started process {world.local_rank} of this machine, which has {torch.cuda.device_count()} "
            "CUDA device(s). Use one process per GPU (--nproc_per_node), or --device cpu."
        )
    dev = torch.device("cuda", world.local_rank)
    torch.cuda.set_device(dev)
    return dev


def _refuse_reports_inside_inputs(out: Path, entries: list[BatchEntry]) -> None:
    """`frames/01 frames/02 --out frames`: a report would land inside each input. An OutputError."""
    for entry in entries:
        report_dir = out / entry.name
        try:
            inside = report_dir.is_dir() and entry.input.is_dir() and os.path.samefile(report_dir, entry.input)
        except OSError:  # an input that cannot be looked at is not OUT's subfolder: its own row says why
            inside = False
        if inside:
            raise OutputError(f"{out}: {entry.input}'s report would go into {entry.input} itself. Choose another --out.")


def _prepare(out: Path, overwrite: bool, world: World, inputs: list[Path], stack: contextlib.ExitStack) -> None:
    """detect's rule for OUT (detect.open_output: checked, and locked for the run), applied by
    rank 0; every rank raises its refusal alike. A folder made here is removed again if the run
    fails before an input finished (an option error, Ctrl-C).

    Nothing is removed up front: the index files are replaced atomically when the index is
    written, so a run that fails first leaves an earlier index in place.
    """
    if world.size == 1:
        stack.enter_context(open_output(out, overwrite, inputs, own=INDEX_FILES))
        return
    message = [None]
    if world.rank == 0:
        try:
            stack.enter_context(open_output(out, overwrite, inputs, own=INDEX_FILES))
        except OutputError as err:
            message = [str(err)]
    dist.broadcast_object_list(message, src=0)  # no rank writes a report before OUT is accepted
    if message[0] is not None:
        raise OutputError(message[0])


def _detect_one(entry: BatchEntry, out: Path, model: Stan, dev: torch.device, overwrite: bool, rank: int, kwargs: dict) -> None:
    entry.rank = rank
    try:
        result = detect(entry.input, out=out / entry.name, weights=model, device=str(dev), overwrite=overwrite, **kwargs)
    except (InputError, OutputError) as err:
        entry.status, entry.error = "error", str(err)
        return
    except OSError as err:  # anything else the system refused for this input (a name too long ...): its row, not the run
        entry.status, entry.error = "error", f"{shown(entry.input)}: {err.strerror or err}. Check the path."
        return
    s = result.summary
    entry.status = "ok" if s["complete"] else "incomplete"
    entry.frames, entry.fps, entry.duration_s = result.n_frames, s["input"]["fps"], s["input"]["duration_s"]
    entry.segments, entry.abnormal_frames = len(result.segments), s["abnormal_frames"]
    entry.peak_score = float(np.nanmax(result.score_raw))
    entry.threshold = result.threshold
    entry.warnings = list(result.warnings)
    keys = ("start_s", "end_s", "duration_s", "peak_score", "clip")
    entry.flagged = [{"number": k, **{key: seg.get(key) for key in keys}} for k, seg in enumerate(s["segments"], start=1)]


def _gather(entries: list[BatchEntry], world: World) -> None:
    """Rank 0's list gets every rank's finished entries (the others keep their own)."""
    mine = entries[world.rank :: world.size]
    gathered: list[list[BatchEntry]] | None = [[] for _ in range(world.size)] if world.rank == 0 else None
    dist.gather_object(mine, gathered, dst=0)
    for share in gathered or []:
        for entry in share:
            entries[entry.index] = entry


class _Index:
    """OUT/index.html, index.csv and summary.json, each written atomically (fileio.atomic_path)."""

    def __init__(self, out: Path, model: Stan, score: str, world: World) -> None:
        self.out = out
        self.facts = {
            "stan_version": __version__,
            "weights": {"file": model.file, "sha256": model.sha256},
            "score_kind": score,
            "world_size": world.size,
        }
        self.written = False

    def _drop_single_report(self) -> None:
        """A one-input report that --overwrite let this index replace: its files that stan wrote
        (scores, segments, plot, overlays) would sit beside the index as if they were this run's.
        Removed when the index is first written (a run that fails before leaves the report whole),
        before summary.json is replaced, which names an earlier version's overlay videos."""
        stale = [self.out / name for name in ALL_FILES if name not in INDEX_FILES]
        for path in [p for p in stale if written_by_stan(p)]:
            remove_quietly(path)
        clips = self.out / segments.FOLDER  # its clips: a folder of stan's segment clips and nothing else
        try:
            entries = list(clips.iterdir()) if clips.is_dir() and not clips.is_symlink() else []
        except OSError:
            entries = []
        if entries and all(segments.is_segment_clip(p) for p in entries):
            shutil.rmtree(clips, ignore_errors=True)

    def write(self, entries: list[BatchEntry]) -> None:
        if not self.written:
            self._drop_single_report()
            self.written = True
        counts = {status: sum(e.status == status for e in entries) for status in ("ok", "incomplete", "error", "pending")}
        report.write_json(self.out / "summary.json", {**self.facts, "inputs": len(entries), "counts": counts,
                                                      "entries": [e.to_dict() for e in entries]})
        self._write_csv(entries)
        self._write_html(entries, counts)

    def _write_csv(self, entries: list[BatchEntry]) -> None:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(INDEX_COLUMNS)
        for e in entries:
            row = {**e.to_dict(), "peak_score": _num(e.peak_score, 6), "threshold": _num(e.threshold, 6)}
            writer.writerow(["" if row[c] is None else shown(str(row[c])) for c in INDEX_COLUMNS])
        report.atomic_write_bytes(self.out / "index.csv", buf.getvalue().encode("utf-8"))

    def _write_html(self, entries: list[BatchEntry], counts: dict[str, int]) -> None:
        # the per-input pages' own style and escaping, so the index looks and behaves like them
        esc, weights = report_html.esc, self.facts["weights"]
        facts = {
            "Inputs": ", ".join(f"{n} {status}" for status, n in counts.items() if n),
            "Weights": f"{Path(weights['file'] or '-').name} (sha256 {(weights['sha256'] or '-')[:12]})",
            "Score kind": SCORE_KINDS.get(self.facts["score_kind"], self.facts["score_kind"]),
        }
        columns = ("#", "report", "input", "frames", "duration (s)", "segments", "abnormal frames", "peak score",
                   "threshold", "status")
        rows = []
        for e in entries:
            link = f'<a href="{report_html.href(e.report)}">{esc(e.name)}</a>' if e.report else esc(e.name)
            notes = "".join(f'<br><span class="why">{esc(text)}</span>' for text in [e.error, *e.warnings] if text)
            numbers = (e.frames, e.duration_s, e.segments, e.abnormal_frames, e.peak_score, e.threshold)
            rows.append(
                f'<tr class="{esc(e.status)}"><td class="num">{e.index + 1}</td><td>{link}</td><td>{esc(e.input.name)}</td>'
                + "".join(f'<td class="num">{_num(v)}</td>' for v in numbers)
                + f"<td>{esc(e.status)}{notes}</td></tr>"
            )
        title = f"STAN reports \u2014 {len(entries)} inputs"
        body = [
            f"<h1>{title}</h1>",
            '<table class="facts">\n' + "\n".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in facts.items()) + "\n</table>",
            "<h2>Inputs</h2>",
            '<table class="inputs">\n<tr>' + "".join(f"<th>{c}</th>" for c in columns) + "</tr>\n" + "\n".join(rows) + "\n</table>",
            *_segments_of_all(entries),
        ]
        page = (
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{title}</title>\n<style>\n{report_html.CSS}\n{_CSS}\n</style>\n"
            "</head>\n<body>\n" + "\n".join(body) + f"\n<script>\n{_SORT_SCRIPT}\n</script>\n</body>\n</html>\n"
        )
        report.atomic_write_bytes(self.out / "index.html", page.encode("utf-8"))


def _segments_of_all(entries: list[BatchEntry]) -> list[str]:
    """Every input's segments in one table, highest peak score first (a click on "duration" sorts
    the longest first); each row links to its place in its input's report and to its clip."""
    esc, href = report_html.esc, report_html.href
    found = [(e, seg) for e in entries if e.report for seg in e.flagged]
    if not found:
        return []
    found.sort(key=lambda pair: -(pair[1]["peak_score"] if pair[1]["peak_score"] is not None else -np.inf))
    rows = []
    for e, seg in found:
        at = href(f"{e.name}/index.html", fragment=f"segment-{seg['number']}")
        clip = f'<a href="{href(e.name + "/" + seg["clip"])}">clip</a>' if seg.get("clip") else ""
        duration, peak = seg["duration_s"] or 0.0, seg["peak_score"] if seg["peak_score"] is not None else 0.0
        rows.append(
            f'<tr data-duration="{duration:.6g}" data-peak="{peak:.9g}"><td><a href="{at}">{esc(e.name)} #{seg["number"]}</a></td>'
            + "".join(f'<td class="num">{report._t(v) if v is not None else ""}</td>' for v in (seg["start_s"], seg["end_s"], seg["duration_s"]))
            + f'<td class="num">{_num(seg["peak_score"])}</td>'
            + f"<td>{clip}</td></tr>"
        )
    head = ('<thead><tr><th>segment</th><th>start (s)</th><th>end (s)</th><th data-sort="duration" title="sort: longest first">'
            'duration (s) \u2195</th><th data-sort="peak" title="sort: highest first" class="sorted">peak score \u2195</th>'
            "<th>clip</th></tr></thead>")
    return [f"<h2>Segments of all inputs ({len(found)}), highest peak score first</h2>",
            f'<table class="segments" id="all-segments">\n{head}\n<tbody>\n' + "\n".join(rows) + "\n</tbody>\n</table>"]


_CSS = """
tr.error td{background:#fdecea}tr.incomplete td{background:#fff8e1}tr.pending td{color:#888}
.why{font-size:.8rem;color:#555}th[data-sort]{cursor:pointer}th.sorted{background:#e2e8f0}
""".strip()
# The index's one script, the same on every index: a click on a column marked data-sort orders
# the segments by it, largest first.
_SORT_SCRIPT = """
(() => {
  const table = document.getElementById("all-segments");
  if (!table) return;
  for (const th of table.querySelectorAll("th[data-sort]")) th.addEventListener("click", () => {
    const key = th.dataset.sort, body = table.tBodies[0];
    const rows = [...body.rows].sort((a, b) => Number(b.dataset[key]) - Number(a.dataset[key]));
    for (const row of rows) body.appendChild(row);
    for (const other of table.querySelectorAll("th[data-sort]")) other.classList.toggle("sorted", other === th);
  });
})();
""".strip()


def _num(value: float | int | None, digits: int = 4) -> str:
    """A cell: integers as they are, floats to `digits` significant digits, nothing as empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}" if np.isfinite(value) else ""
    return str(value)
