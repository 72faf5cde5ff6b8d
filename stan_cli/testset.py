"""A labelled test folder: its clips (three layouts), their ground-truth labels (four file formats)
and where their pixel masks are. What ``evaluate.py`` scores and measures against; nothing here
decodes a frame beyond counting a folder's images.

Layouts:
- the Ped2 layout: ``TEST_DIR/frames/<clip>/`` frame folders, masks in ``TEST_DIR/masks/<clip>/``;
- the UCSD download as it comes: ``TEST_DIR/Test001/`` frame folders, masks in ``Test001_gt/``;
- a folder of videos (``TEST_DIR/<clip>.mp4`` ...), masks in ``TEST_DIR/masks/<clip>/``.
Labels: a MATLAB ``*.m`` file (``TestVideoFile{end+1}.gt_frame = [61:180];``, one line per clip in
clip order, 1-based inclusive, several ranges allowed; ``[]`` for none), a MATLAB v5 ``*.mat`` file
(a cell array ``gt`` of 2 x K [start; end] matrices, 1-based), JSON ``{"<clip>": [[start, end],
...]}`` or CSV rows ``clip,start,end`` (both 0-based inclusive, every clip listed).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError, StanError
from .fileio import is_utf8, shown
from .video import is_video_file, list_frames, natural_key

MASK_SUFFIX = "_gt"  # the UCSD download's masks: Test001_gt/ beside Test001/
MASK_LEVEL = 127  # a mask pixel is set when any channel exceeds this


@dataclass(frozen=True)
class Clip:
    name: str
    path: Path
    frames: int | None  # known before decoding for frame folders
    mask: Path | None = None


@dataclass(frozen=True)
class LabelFile:
    path: Path
    format: str  # "matlab-m", "matlab-mat", "json" or "csv"
    ranges: list | dict  # ordered: list of per-clip ranges; named: {clip: ranges}; 0-based inclusive
    one_based: bool  # how the file writes frames, for messages

    def show(self, start: int, end: int) -> str:
        b = 1 if self.one_based else 0
        return f"{start + b}:{end + b} ({'1' if self.one_based else '0'}-based)"


def find_clips(test_dir: Path) -> tuple[str, list[Clip]]:
    """The clips of a test folder, in natural order: ("frames", ...) or ("videos", ...)."""
    layout, clips = _find_clips(Path(test_dir))
    for clip in clips:  # labels files, results.json and the CSVs name clips: a name must be text
        if not is_utf8(clip.name):
            raise InputError(
                f"{shown(clip.path)}: the clip's name is not valid UTF-8, and the labels and the results name clips "
                "by it. Rename it."
            )
    return layout, clips


def _find_clips(test_dir: Path) -> tuple[str, list[Clip]]:
    if not test_dir.is_dir():
        raise InputError(f"{test_dir}: no such folder. Point to a test folder (frames/ and a labels file, or videos).")
    frames_dir = test_dir / "frames"
    masks_dir = test_dir / "masks"
    if frames_dir.is_dir():
        folders = sorted((p for p in frames_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
                         key=lambda p: natural_key(p.name))
        if not folders:
            raise InputError(f"{frames_dir}: holds no clip folders. Expected frames/01/, frames/02/, ... with images.")
        clips = []
        for p in folders:
            n = len(list_frames(p))
            if n == 0:
                raise InputError(f"{shown(p)}: clip folder holds no frames (.jpg .png .tif .bmp).")
            clips.append(Clip(p.name, p, n, masks_dir / p.name if (masks_dir / p.name).is_dir() else None))
        return "frames", clips
    videos = sorted((p for p in test_dir.iterdir() if is_video_file(p) and not p.name.startswith(".")),
                    key=lambda p: natural_key(p.name))
    if not videos:  # the UCSD download as it comes: Test/Test001/, Test001_gt/ (masks), UCSDped2.m
        listed = [(p, len(list_frames(p))) for p in sorted(test_dir.iterdir(), key=lambda p: natural_key(p.name))
                  if p.is_dir() and not p.name.startswith(".") and not p.name.endswith(MASK_SUFFIX)]
        folders = [(p, n) for p, n in listed if n]
        if folders and test_dir.name == "frames" and ((test_dir.parent / "masks").is_dir()
                                                        or any(test_dir.parent.glob("*.m")) or any(test_dir.parent.glob("*.mat"))):
            raise InputError(f"{test_dir} looks like the frames/ folder itself: point to {test_dir.parent} instead.")
        if folders:
            masks = [p.with_name(p.name + MASK_SUFFIX) for p, _ in folders]
            return "clip-folders", [Clip(p.name, p, n, m if m.is_dir() else None) for (p, n), m in zip(folders, masks)]
    if not videos:
        hint = (f" {test_dir} looks like the frames/ folder itself: point to {test_dir.parent} instead."
                if test_dir.name == "frames" and (test_dir.parent / "frames").resolve() == test_dir.resolve() else "")
        raise InputError(
            f"{frames_dir}: no such folder, and {test_dir} holds no video files or folders of frames. Use the Ped2 "
            "layout (frames/01/, frames/02/, ... and a labels file), the UCSD download's (Test001/, Test001_gt/, "
            "UCSDped2.m) or a folder of videos and a labels file." + hint
        )
    stems = [p.stem for p in videos]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise InputError(f"{test_dir}: several videos are named {dupes[0]!r} (different extensions). Rename one.")
    return "videos", [Clip(p.stem, p, None, masks_dir / p.stem if (masks_dir / p.stem).is_dir() else None) for p in videos]


def find_label_file(test_dir: Path) -> Path:
    """The labels file of a test folder: the first *.m, *.mat, labels.json, labels.csv found."""
    test_dir = Path(test_dir)
    candidates = sorted(test_dir.glob("*.m")) + sorted(test_dir.glob("*.mat"))
    candidates += [p for p in (test_dir / "labels.json", test_dir / "labels.csv") if p.is_file()]
    if not candidates:
        raise InputError(
            f"{test_dir}: no labels file found (looked for *.m, *.mat, labels.json, labels.csv). "
            "Add one or pass --labels FILE."
        )
    return candidates[0]


def _range_items(path: Path, entry: int, body: str) -> list[tuple[int, int]]:
    """'61:180' or '1:10, 20:30' or '5' (1-based, inclusive) -> 0-based inclusive pairs."""
    out = []
    for item in (t for t in re.split(r"[,;\s]+", body.strip()) if t):
        m = re.fullmatch(r"(\d+)(?::(\d+))?", item)
        if not m:
            raise InputError(f"{path}: gt_frame entry {entry}: cannot read {item!r}. Write ranges as [a:b] or [a:b, c:d].")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if a < 1 or b < a:
            raise InputError(f"{path}: gt_frame entry {entry}: range {item} is empty or starts before frame 1 (1-based).")
        out.append((a - 1, b - 1))
    return out


def parse_matlab_labels(path: Path) -> list[list[tuple[int, int]]]:
    """Ranges per clip, in file order, from ``...gt_frame = [a:b, c:d];`` lines (0-based inclusive)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise InputError(f"{path}: cannot read the labels file ({err.strerror}).") from None
    text = re.sub(r"%[^\n]*", "", text)  # MATLAB comments
    bodies = re.findall(r"gt_frame\s*=\s*\[([^\]]*)\]", text)
    if not bodies:
        raise InputError(f"{path}: no `gt_frame = [a:b];` lines. Use the dataset's own labels file (e.g. UCSDped2.m).")
    return [_range_items(path, k, body) for k, body in enumerate(bodies, start=1)]


# MATLAB v5 MAT-file data types (the MAT-File Format reference, Table 1-1).
_MI_NUMERIC = {1: "i1", 2: "u1", 3: "<i2", 4: "<u2", 5: "<i4", 6: "<u4", 7: "<f4", 9: "<f8", 12: "<i8", 13: "<u8"}
_MI_MATRIX, _MI_COMPRESSED = 14, 15
_MX_CELL, _MX_NUMERIC = 1, range(6, 16)


def _mat_elements(buf: bytes, path: Path):
    """Yield (type, payload) of the data elements in ``buf`` (little-endian; compressed inflated)."""
    pos = 0
    while pos + 8 <= len(buf):
        kind, size = struct.unpack_from("<II", buf, pos)
        if kind >> 16:  # small element: size in the upper half, data in the next 4 bytes
            kind, size = kind & 0xFFFF, kind >> 16
            yield kind, buf[pos + 4 : pos + 4 + size]
            pos += 8
            continue
        payload = buf[pos + 8 : pos + 8 + size]
        if len(payload) < size:
            raise InputError(f"{path}: MAT-file is truncated. Use the dataset's own labels file.")
        if kind == _MI_COMPRESSED:
            try:
                yield from _mat_elements(zlib.decompress(payload), path)
            except zlib.error:
                raise InputError(f"{path}: MAT-file has a damaged compressed element.") from None
            pos += 8 + size
        else:
            yield kind, payload
            pos += 8 + size + (-size % 8)


def _mat_matrix(payload: bytes, path: Path):
    """A miMATRIX element -> (name, value): a cell is a list, a numeric array a numpy array."""
    parts = list(_mat_elements(payload, path))
    if len(parts) < 3:
        raise InputError(f"{path}: MAT-file holds a matrix this reader does not know.")
    flags = np.frombuffer(parts[0][1], "<u4")
    cls, complex_ = int(flags[0] & 0xFF), bool(flags[0] & 0x800)
    dims = tuple(int(v) for v in np.frombuffer(parts[1][1], _MI_NUMERIC[parts[1][0]]))
    name = parts[2][1].decode("ascii", "replace")
    if cls == _MX_CELL:
        return name, [_mat_matrix(p, path)[1] for kind, p in parts[3:] if kind == _MI_MATRIX]
    if cls in _MX_NUMERIC and not complex_ and len(parts) >= 4 and parts[3][0] in _MI_NUMERIC:
        data = np.frombuffer(parts[3][1], _MI_NUMERIC[parts[3][0]]).astype(np.float64)
        return name, data.reshape(dims, order="F")  # MATLAB is column-major
    raise InputError(f"{path}: MAT-file variable {name!r} is not a cell array of numeric [start; end] pairs.")


def read_mat_labels(path: Path) -> list[list[tuple[int, int]]]:
    """Ranges per clip from a MATLAB v5 MAT-file holding a cell array ``gt`` (or its only
    variable) of 2 x K matrices of [start; end] columns, 1-based inclusive. No scipy needed:
    MAT v5 is a simple tagged format; v7.3 (HDF5) files are refused with a message."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot read the labels file ({err.strerror}).") from None
    if len(raw) < 128 or not raw.startswith(b"MATLAB 5.0 MAT-file") or raw[126:128] != b"IM":
        raise InputError(f"{path}: not a little-endian MATLAB v5 MAT-file (v7.3/HDF5 is not read). Use the *.m labels or --labels JSON.")
    variables = {}
    for kind, payload in _mat_elements(raw[128:], path):
        if kind == _MI_MATRIX:
            name, value = _mat_matrix(payload, path)
            variables[name] = value
    cells = variables.get("gt", next(iter(variables.values())) if len(variables) == 1 else None)
    if not isinstance(cells, list):
        raise InputError(f"{path}: no cell array named gt. Use the *.m labels or --labels JSON.")
    out = []
    for k, m in enumerate(cells, start=1):
        m = np.asarray(m)
        if m.size == 0:
            out.append([])
            continue
        if m.ndim != 2 or m.shape[0] != 2:
            raise InputError(f"{path}: gt{{{k}}} has shape {m.shape}; expected 2 x K [start; end] columns.")
        if not (np.isfinite(m).all() and (m == np.round(m)).all() and np.abs(m).max() < 2**53):
            raise InputError(f"{path}: gt{{{k}}} holds values that are not whole frame numbers; the file looks damaged.")
        pairs = []
        for a, b in m.T.astype(np.int64).tolist():
            if a < 1 or b < a:
                raise InputError(f"{path}: gt{{{k}}}: range {a}:{b} is empty or starts before frame 1 (1-based).")
            pairs.append((a - 1, b - 1))
        out.append(pairs)
    return out


def _whole(v, text: bool) -> int:
    """A frame number: a CSV cell's text ("20", "20.0"), or a JSON number with no fraction; JSON's
    true, "20", 20.5 and infinities are not."""
    if text:
        if not isinstance(v, str) or not re.fullmatch(r"-?\d+(?:\.0*)?", v.strip()):
            raise ValueError
        return int(float(v))
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError
    if isinstance(v, float) and not (math.isfinite(v) and v == int(v)):
        raise ValueError
    return int(v)


def _pair(path: Path, clip: str, a, b, text: bool = False) -> tuple[int, int]:
    try:
        s, e = _whole(a, text), _whole(b, text)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{path}: clip {clip!r}: range [{a}, {b}] is not a pair of whole frame numbers.") from None
    if s < 0 or e < s:
        raise InputError(f"{path}: clip {clip!r}: range [{s}, {e}] is empty or negative (0-based, inclusive).")
    return s, e


def read_json_labels(path: Path) -> dict[str, list[tuple[int, int]]]:
    """{clip: [[start, end], ...]} 0-based inclusive."""
    def once(pairs: list) -> dict:
        keys = [k for k, _ in pairs]
        twice = next((k for k in keys if keys.count(k) > 1), None)
        if twice is not None:
            raise InputError(f"{path}: clip {twice!r} is listed twice. List each clip once, with all its ranges.")
        return dict(pairs)

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8-sig"), object_pairs_hook=once)  # -sig: a BOM (Notepad) is fine
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read it as JSON ({err}). Expected {{\"clip\": [[start, end], ...]}}.") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object {{\"clip\": [[start, end], ...]}}.")
    out = {}
    for clip, ranges in data.items():
        if not isinstance(ranges, list) or not all(isinstance(r, list) and len(r) == 2 for r in ranges):
            raise InputError(f"{path}: clip {clip!r}: expected a list of [start, end] pairs (0-based, inclusive).")
        out[str(clip)] = [_pair(path, clip, a, b) for a, b in ranges]
    return out


def read_csv_labels(path: Path) -> dict[str, list[tuple[int, int]]]:
    """Rows clip,start,end (0-based inclusive, header optional); clip,, lists a clip with none."""
    try:
        rows = list(csv.reader(io.StringIO(Path(path).read_text(encoding="utf-8-sig"))))  # -sig: Excel's "CSV UTF-8"
    except OSError as err:
        raise InputError(f"{path}: cannot read the labels file ({err.strerror}).") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: is not UTF-8 text. Save it as UTF-8 (clip,start,end rows).") from None
    rows = [[c.strip() for c in r] for r in rows if r and any(c.strip() for c in r)]
    if rows and [c.lower() for c in rows[0][:3]] == ["clip", "start", "end"]:
        rows = rows[1:]
    out: dict[str, list[tuple[int, int]]] = {}
    for k, r in enumerate(rows, start=1):
        if len(r) != 3:
            raise InputError(f"{path}: row {k} has {len(r)} cells; expected clip,start,end.")
        clip, a, b = r
        ranges = out.setdefault(clip, [])
        if a or b:
            ranges.append(_pair(path, clip, a, b, text=True))
    return out


def read_labels(path: Path) -> LabelFile:
    """Read a labels file of any of the four formats, by its extension."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a labels file. Pass the labels file itself (.m, .mat, .json or .csv).")
    if not path.is_file():
        raise InputError(f"{path}: no such labels file. Check the path.")
    readers = {".m": ("matlab-m", parse_matlab_labels, True), ".mat": ("matlab-mat", read_mat_labels, True),
               ".json": ("json", read_json_labels, False), ".csv": ("csv", read_csv_labels, False)}
    if path.suffix.lower() not in readers:
        raise InputError(f"{path}: unknown labels format. Use a MATLAB .m or .mat file, .json or .csv (see `stan eval --help`).")
    kind, reader, one_based = readers[path.suffix.lower()]
    try:
        ranges = reader(path)
    except StanError:
        raise
    except (ValueError, KeyError, IndexError, OverflowError, struct.error, MemoryError) as err:  # a damaged file
        raise InputError(f"{path}: cannot read the labels ({type(err).__name__}: {err}); the file looks damaged. "
                         "Use the data set's own labels file, or write them as JSON or CSV.") from None
    return LabelFile(path, kind, ranges, one_based)


def clip_ranges(labels: LabelFile, clips: list[Clip]) -> list[list[tuple[int, int]]]:
    """Each clip's abnormal ranges: by position for MATLAB files, by name for JSON/CSV."""
    if isinstance(labels.ranges, list):
        if len(labels.ranges) != len(clips):
            raise InputError(
                f"{labels.path}: {len(labels.ranges)} label entries for {len(clips)} clips "
                f"({clips[0].name} .. {clips[-1].name}). Each clip needs one entry, in clip order."
            )
        return list(labels.ranges)
    names = {c.name for c in clips} | {c.path.name for c in clips}
    missing = [c.name for c in clips if c.name not in labels.ranges and c.path.name not in labels.ranges]
    extra = [k for k in labels.ranges if k not in names]
    if missing or extra:
        what = (f"no labels for clip(s) {', '.join(missing)}" if missing else "") + (
            ("; " if missing and extra else "") + (f"labels for unknown clip(s) {', '.join(extra)}" if extra else "")
        )
        raise InputError(
            f"{labels.path}: {len(labels.ranges)} labelled clips for {len(clips)} clips: {what}. "
            + ("List every clip; a clip without abnormal frames is a row `NAME,,`."
               if labels.path.suffix.lower() == ".csv" else
               "List every clip (an empty list for a clip without abnormal frames).")
        )
    return [labels.ranges.get(c.name, labels.ranges.get(c.path.name)) for c in clips]


def label_array(labels: LabelFile, clip: Clip, ranges: list[tuple[int, int]], n: int) -> np.ndarray:
    """(n,) bool per frame; InputError naming the labels file when a range ends past the clip."""
    y = np.zeros(n, dtype=bool)
    for s, e in ranges:
        if e >= n:
            raise InputError(
                f"{labels.path}: clip {clip.name} has {n} frames, but its label range {labels.show(s, e)} "
                "ends beyond it. Check that the labels belong to these clips."
            )
        y[s : e + 1] = True
    return y
