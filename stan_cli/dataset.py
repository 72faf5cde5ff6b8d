"""Training data: find the clips under a folder, decode them once into a frame cache, cut windows.

A training folder is one of
  - a folder of frames (one clip),
  - a folder of clip folders (the Ped2 layout: training/frames/01, 02, ...),
  - a folder of video files (each one clip), or a mix of the last two.
Each clip is decoded once into `<cache>/NNN.npy`, (N, S, S) uint8 grey, and memory-mapped, so
RAM does not grow with the amount of footage and a resumed run skips decoding.
Windows never cross a clip boundary.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .model import CONTEXT, WINDOW
from .video import is_clip, is_frame_folder, is_video_file, list_frames, natural_key, read_frames
from .windows import to_grey_square

DECODE_CHUNK_BYTES = 64 << 20  # RGB bytes converted at once: about 64 frames of 640x480, 2 of 4K


@dataclass
class Clip:
    name: str
    source: str
    frames: np.ndarray  # (N, S, S) uint8, usually a read-only memmap

    def __len__(self) -> int:
        return len(self.frames)


def find_sources(folder: Path) -> list[Path]:
    """The clips under `folder`, in natural order: itself (a frame folder), or its image subfolders
    and videos (images lying beside them are not footage: see video.is_frame_folder)."""
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"{folder}: no such folder. Point `stan train` at a folder of normal footage.")
    if folder.is_file():
        if is_video_file(folder):
            return [folder]
        raise InputError(f"{folder}: not a folder or a video. Point `stan train` at a folder of normal footage.")
    if is_frame_folder(folder):
        return [folder]
    sources = []
    for child in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
        if is_clip(child):
            sources.append(child)
    if not sources:
        raise InputError(
            f"{folder}: found no frames, clip folders or videos in it. "
            "Use a folder of images, a folder of clip folders, or a folder of videos."
        )
    return sources


def _fingerprint(path: Path) -> dict:
    if path.is_dir():
        files = list_frames(path)
        return {"path": str(path.resolve()), "files": len(files), "mtime": max(f.stat().st_mtime for f in files)}
    st = path.stat()
    return {"path": str(path.resolve()), "bytes": st.st_size, "mtime": st.st_mtime}


def _decode(source: Path, size: int, target: Path) -> int:
    """Decode a clip into target (.npy, uint8 (N, S, S)); returns N. Streams in chunks."""
    _, frames = read_frames(source)
    tmp = target.with_suffix(f".{os.getpid()}.partial")  # per process: two programs may fill one cache at once
    out_tmp = target.with_suffix(f".{os.getpid()}.npy.tmp")
    try:
        _write_grey(frames, size, tmp)
        count = tmp.stat().st_size // (size * size)
        with open(tmp, "rb") as raw, open(out_tmp, "wb") as out:
            out.write(_npy_header((count, size, size)))
            while block := raw.read(1 << 24):
                out.write(block)
        os.replace(out_tmp, target)
    finally:  # a failure anywhere (a full disk, Ctrl-C) leaves no temporary behind
        tmp.unlink(missing_ok=True)
        out_tmp.unlink(missing_ok=True)
    return count


def _write_grey(frames, size: int, path: Path) -> None:
    with open(path, "wb") as fh:
        chunk: list[np.ndarray] = []
        for frame in frames:
            chunk.append(frame)
            if len(chunk) * frame.nbytes >= DECODE_CHUNK_BYTES:
                fh.write(to_grey_square(np.stack(chunk), size).tobytes())
                chunk = []
        if chunk:
            fh.write(to_grey_square(np.stack(chunk), size).tobytes())


def _npy_header(shape: tuple[int, ...]) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buf.getvalue()


def default_cache(folder: Path) -> Path:
    """A frame cache of its own for a footage folder, under the system's temporary directory: the
    benchmarks' default, so that two of them on different footage never share one cache."""
    import hashlib
    import tempfile

    digest = hashlib.sha1(str(Path(folder).resolve()).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"stan-val-cache-{digest}"


# What a frame cache holds (load_clips): a clip each, the manifest, and their temporary files.
_CACHE_NAME = re.compile(r"\d{4}\.npy|\d{4}\.\d+\.partial|\d{4}\.\d+\.npy\.tmp|manifest\.json|\.manifest\.json\.\d+\.tmp")


def not_a_frame_cache(cache: Path) -> str | None:
    """Why `cache` is not a frame cache `load_clips` made (a file of another name in it, a manifest
    that is not its own), or None when it is one or does not exist."""
    if not cache.exists() and not cache.is_symlink():
        return None
    if not cache.is_dir():
        return "not a folder"
    foreign = sorted(p.name for p in cache.iterdir() if not _CACHE_NAME.fullmatch(p.name))
    if foreign:
        return f"holds {foreign[0]!r}{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''}, which stan did not write"
    manifest = cache / "manifest.json"
    if manifest.exists():
        try:
            entries = json.loads(manifest.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            entries = None
        if not (isinstance(entries, dict) and all(
                re.fullmatch(r"\d{4}", k) and isinstance(v, dict) and "entry" in v for k, v in entries.items())):
            return "holds a manifest.json that is not stan's"
    return None


def load_clips(
    folder: Path,
    size: int,
    cache: Path,
    warn: Callable[[str], None] = lambda msg: None,
    decode: bool = True,
    on_clip: Callable[[int, int, str], None] = lambda done, total, name: None,
) -> list[Clip]:
    """Decode (or reuse) every clip under `folder`; skip, with a warning, what cannot be used.

    decode=False only opens an existing cache (other ranks of a distributed run).
    """
    sources = find_sources(Path(folder))
    cache.mkdir(parents=True, exist_ok=True)
    manifest_path = cache / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    except ValueError:  # damaged: decode everything again
        manifest = {}
    clips: list[Clip] = []
    skipped: list[str] = []
    for index, source in enumerate(sources):
        key = f"{index:04d}"
        target = cache / f"{key}.npy"
        print_name = str(source)
        entry = {"source": _fingerprint(source), "size": size}
        if decode and (manifest.get(key, {}).get("entry") != entry or not target.exists()):
            on_clip(index, len(sources), print_name)
            try:
                _decode(source, size, target)
            except InputError as err:
                message = str(err)  # most errors already start with the file's name
                warn(f"skipped {message}" if message.startswith(print_name) else f"skipped {print_name}: {message}")
                skipped.append(print_name)
                manifest.pop(key, None)
                target.unlink(missing_ok=True)
                continue
            manifest[key] = {"entry": entry}
            tmp = manifest_path.with_name(f".manifest.json.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(manifest, indent=1))
            os.replace(tmp, manifest_path)
        if key not in manifest:
            continue
        frames = np.load(target, mmap_mode="r")
        if len(frames) < WINDOW:
            warn(f"skipped {print_name}: {len(frames)} frame{'' if len(frames) == 1 else 's'}, fewer than one {WINDOW}-frame window")
            skipped.append(print_name)
            continue
        clips.append(Clip(source.name, print_name, frames))
    if not clips:
        raise InputError(
            f"{folder}: no clip with at least {WINDOW} readable frames ({len(skipped)} skipped). "
            "Training needs normal footage of at least 11 frames per clip."
        )
    return clips


def split_validation(clips: list[Clip], val_clips: int) -> tuple[list[Clip], list[Clip]]:
    """Hold out normal footage for model selection and calibration.

    With more clips than `val_clips`, the last `val_clips` clips (natural order) are held out.
    Otherwise each clip long enough (>= 4 windows' worth) gives its last 15 % of frames, at least
    12 (two windows), so that one long video can still be validated. val_clips=0 holds out nothing.
    """
    if val_clips <= 0:
        return clips, []
    if len(clips) > val_clips:
        return clips[:-val_clips], clips[-val_clips:]
    train, val = [], []
    for clip in clips:
        n = len(clip)
        n_val = max(WINDOW + 1, int(round(0.15 * n)))  # at least 2 windows: calibration needs 2
        if n - n_val >= WINDOW and n >= 4 * WINDOW:
            train.append(Clip(clip.name, clip.source, clip.frames[: n - n_val]))
            val.append(Clip(clip.name + ":tail", clip.source, clip.frames[n - n_val :]))
        else:
            train.append(clip)
    return train, val


class WindowSet(torch.utils.data.Dataset):
    """Every full window of every clip; item = (11, S, S) uint8 tensor."""

    def __init__(self, clips: list[Clip]) -> None:
        self.clips = clips
        self.index = [(c, t) for c, clip in enumerate(clips) for t in range(CONTEXT, len(clip) - CONTEXT)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> torch.Tensor:
        c, t = self.index[i]
        return torch.from_numpy(np.array(self.clips[c].frames[t - CONTEXT : t + CONTEXT + 1]))  # (11, S, S)
