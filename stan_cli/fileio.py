"""Writing files safely: atomic writes, staged report folders, a run's lock and its scratch files.

Every output goes through `atomic_path`: written under a hidden temporary name in the same
folder, then renamed with `os.replace`. A crash or Ctrl-C therefore never leaves a half-written
scores.csv that a later script would read as complete; either the old file or the new one is
there.

A report is a set of files that refer to each other, so `detect` and `explain` write inside
`staged(folder)`: there every atomic write into the folder keeps its temporary name until the
whole run has succeeded, and then all are renamed together (the earlier files renamed aside
first, and renamed back should the renames fail part-way). If the disk fills up or the run
fails half-way, the temporaries are removed and the folder is as it was.

A run holds its output folder with `FolderLock` (an flock on `.stan.lock` inside it), so a
second run into the same folder is refused instead of mixing its files with the first one's.
What a run keeps in the folder while it works (the lock, the heat-map scratch files, the
temporaries and backups above) has names `is_scratch` recognises, so the leftovers of a run
killed outright (kill -9, a power cut) can be told from the user's files and removed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from pathlib import Path

from .errors import OutputError

NO_SPACE = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG})
NO_PERMISSION = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
LOCK_NAME = ".stan.lock"


def shown(text: str | os.PathLike[str]) -> str:
    """A path or name as text any UTF-8 writer accepts: bytes that are not UTF-8 (a file name
    from a Latin-1 system, held by Python as surrogate escapes) are written as \\xff."""
    return os.fspath(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_utf8(text: str | os.PathLike[str]) -> bool:
    try:
        os.fspath(text).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def output_error(path: str | os.PathLike[str], err: OSError) -> OutputError:
    """The one-line OutputError for an OSError while writing `path`: what happened and what to do.

    A full disk is the common case on long videos, so it gets its own words.
    """
    reason = err.strerror or str(err)
    path = shown(path)
    if err.errno in NO_SPACE:
        return OutputError(
            f"Cannot write {path}: {reason}. The disk is full: free some space (or choose --out on "
            "another disk) and run again; files from earlier runs were left as they were."
        )
    if err.errno in NO_PERMISSION:
        return OutputError(f"Cannot write {path}: {reason}. Choose a writable location for the output.")
    return OutputError(
        f"Cannot write {path}: {reason}. Check that the folder is writable and the disk has free space."
    )


def remove_quietly(path: Path) -> None:
    """Delete a temporary if it is there; cleaning up must never hide the error that caused it."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


# --------------------------------------------------------------------------- atomic writes


def _temp_path(path: Path) -> Path:
    """Hidden sibling of `path`; it keeps the suffix so format-sniffing writers still work."""
    return path.with_name(f".{path.name}.tmp{path.suffix}")


def _backup_path(path: Path) -> Path:
    """Hidden sibling that holds an earlier file while a staged commit renames the new ones in."""
    return path.with_name(f".{path.name}.old")


class StagedFiles:
    """Files of one run in one folder, held under temporary names until `commit` renames them all.

    `own` names every file the command may write; at commit, those this run did not write
    (an earlier run's overlay videos when this one has --no-video) are removed, so the folder
    never mixes two runs' results. Nothing final-named changes before commit.
    """

    def __init__(self, folder: str | os.PathLike[str], own: Iterable[str] = ()) -> None:
        self.folder = Path(folder)
        self._key = os.path.abspath(self.folder)
        self.own = tuple(own)
        self.held: dict[str, Path] = {}  # final name -> temporary path, in the order written

    def holds(self, path: Path) -> bool:
        return os.path.abspath(path.parent) == self._key

    def hold(self, path: Path, tmp: Path) -> None:
        """Keep `tmp` (complete) to be renamed onto `path` at commit."""
        self.held[path.name] = tmp

    def commit(self) -> None:
        """Rename every held file onto its name, index.html last; drop stale outputs; all or nothing.

        The earlier files this replaces or drops are first renamed aside (`.NAME.old`, same folder,
        no copying). If a rename fails or Ctrl-C comes part-way, the new files are taken out and
        the earlier ones renamed back, so the folder is as it was; only when the backups are no
        longer needed are they deleted. (A process killed outright part-way leaves the backups.)
        """
        names = sorted(self.held, key=lambda name: name == "index.html")
        stale = [name for name in self.own if name not in self.held]
        backups: dict[str, Path] = {}  # final name -> the earlier file, renamed aside
        placed: list[str] = []
        try:
            for name in [*names, *stale]:
                target = self.folder / name
                if os.path.lexists(target) and (os.path.islink(target) or not os.path.isdir(target)):
                    backup = _backup_path(target)  # (a folder of that name is left alone: the rename onto it fails)
                    os.replace(target, backup)
                    backups[name] = backup
            for name in names:
                os.replace(self.held[name], self.folder / name)
                placed.append(name)
        except BaseException as err:
            self._restore(placed, backups)
            self.discard()
            if isinstance(err, OSError):
                raise output_error(self.folder, err) from err
            raise
        self.held.clear()
        for backup in backups.values():
            remove_quietly(backup)

    def _restore(self, placed: list[str], backups: dict[str, Path]) -> None:
        """Undo a commit part-way: remove the new files placed, rename the earlier ones back."""
        for name in placed:
            if name not in backups:
                remove_quietly(self.folder / name)
        for name, backup in backups.items():
            try:
                os.replace(backup, self.folder / name)
            except OSError:  # pragma: no cover - the folder refuses renames back: keep the backup
                pass

    def discard(self) -> None:
        """Remove every temporary; the folder is left as it was before the run."""
        for tmp in self.held.values():
            remove_quietly(tmp)
        self.held.clear()


_STAGING: ContextVar[StagedFiles | None] = ContextVar("stan_staging", default=None)


@contextlib.contextmanager
def staged(folder: str | os.PathLike[str], own: Iterable[str] = ()) -> Iterator[StagedFiles]:
    """Hold back every atomic write into `folder` until the block ends; then rename all together.

    On an exception (a full disk, Ctrl-C, a decode error half-way) every temporary is removed
    and the exception goes on: no final-named file changed.
    """
    staging = StagedFiles(folder, own)
    token = _STAGING.set(staging)
    try:
        yield staging
    except BaseException:
        staging.discard()
        raise
    finally:
        _STAGING.reset(token)
    staging.commit()


def finish_temporary(tmp: Path, path: Path) -> None:
    """A complete temporary file: rename it onto `path` now, or hold it when the folder is staged."""
    staging = _STAGING.get()
    if staging is not None and staging.holds(path):
        staging.hold(path, tmp)
    else:
        os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; rename it onto `path` on success, delete it on error.

    The temporary file lives in the same folder so the rename is atomic (same filesystem).
    Inside `staged(...)` for that folder the rename waits for the end of the run.
    OSErrors (disk full, permission denied) become an OutputError naming the file.
    """
    path = Path(path)
    tmp = _temp_path(path)
    try:
        yield tmp
        finish_temporary(tmp, path)
    except OSError as err:
        remove_quietly(tmp)
        raise output_error(path, err) from err
    except BaseException:
        remove_quietly(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` atomically, flushed to disk before the rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


# --------------------------------------------------------------------------- a run's folder


class FolderLock:
    """`FOLDER/.stan.lock`, flock-ed while a run writes FOLDER: a second run into it is refused.

    The kernel drops an flock when its process dies (kill -9, a reboot), so a lock file left
    behind never blocks a later run; host and pid in the file are only for the message.
    """

    def __init__(self, folder: Path, option: str = "--out") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.option = option
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            except OSError as err:
                raise output_error(self.path, err) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise self.refusal(holder) from None
            except OSError:  # a file system without flock (some network mounts): run unlocked
                os.close(fd)
                return
            try:  # the file locked must still be the one named: a run that ends unlinks its lock
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} pid {os.getpid()}".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            remove_quietly(self.path)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def holder(self) -> str | None:
        """Who holds the lock now ("host pid N"), without taking it; None when nobody does."""
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:  # no lock file: nobody
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.read(fd, 200).decode(errors="replace").strip() or "another process"
        except OSError:
            return None
        finally:
            os.close(fd)  # a shared lock taken here goes with it
        return None

    def refusal(self, holder: str) -> OutputError:
        return OutputError(
            f"{shown(self.folder)}: another stan run is writing this folder ({holder}). Wait for it to "
            f"finish, or choose another {self.option}."
        )


def scratch_path(folder: Path, stem: str, suffix: str) -> Path:
    """A hidden scratch file's name, unique to this run (pid and a random part): `.STEM.PID-HEX.SUFFIX`."""
    return Path(folder) / f".{stem}.{os.getpid()}-{secrets.token_hex(4)}{suffix}"


_SCRATCH = re.compile(r"^\.(?:pixel_loss|guided_backprop)_maps(?:\.\d+-[0-9a-f]+)?\.u8$")
# The kinds of file stan writes into an output folder: a hidden `.NAME.tmp.EXT` or `.NAME.old` of
# one of these is a temporary or backup of stan's (fileio._temp_path, _backup_path), whichever command
# left it (an explain killed in a folder detect is now given, too).
_OUTPUT_KINDS = frozenset({".csv", ".json", ".png", ".html", ".mp4", ".npy"})


def is_scratch(name: str, own: Iterable[str] = ()) -> bool:
    """Is `name` (in an output folder) one of stan's own scratch files: the run lock, a heat-map
    store, or the temporary or backup of a file stan writes (one of `own`, or of a kind stan writes)?"""
    if name == LOCK_NAME or _SCRATCH.match(name):
        return True
    if not name.startswith("."):
        return False
    body = name[1:]
    if body.endswith(".old"):
        base = body[: -len(".old")]
        return base in own or Path(base).suffix.lower() in _OUTPUT_KINDS
    base, tmp, rest = body.rpartition(".tmp")
    return bool(tmp) and rest in ("", Path(base).suffix) and (base in own or Path(base).suffix.lower() in _OUTPUT_KINDS)


def scratch_files(folder: Path, own: Iterable[str] = ()) -> list[Path]:
    """stan's own scratch files lying in `folder` (see is_scratch)."""
    own = tuple(own)
    return sorted(p for p in Path(folder).iterdir() if is_scratch(p.name, own) and not p.is_dir())


# What stan's own files start with, by kind, for `written_by_stan`.
_CSV_HEADS = ("frame,", "segment,", "input,report,status,", "clip,frames,", "step,phase,epoch,")  # the last: stan train's logs
_EXPLANATION_KEYS = {"frame", "pixel_loss", "d_loss", "score_kind"}


def written_by_stan(path: Path) -> bool:
    """Does `path` look like a file stan wrote (so that --overwrite may replace it)?

    By content, not by name: a report's JSON holds stan_version (explain's its own keys), its
    CSV starts with one of stan's headers, its HTML page has stan's title, its PNGs and .npy maps
    were written by matplotlib and numpy, its overlay videos carry stan's comment (or, from an
    earlier version, are listed by the stan summary.json beside them); `stan train`'s logs start
    with its header, its weights and checkpoints name stan's format in their safetensors header.
    """
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
    except OSError:
        return False
    kind = path.suffix.lower()
    if kind == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and ("stan_version" in data or _EXPLANATION_KEYS <= set(data))
    if kind == ".csv":
        return head.decode("utf-8", "replace").startswith(_CSV_HEADS)
    if kind == ".html":
        return b"<title>STAN report" in head[:4096]
    if kind == ".png":
        return head.startswith(b"\x89PNG") and b"Matplotlib" in head[:4096]
    if kind == ".npy":
        return head.startswith(b"\x93NUMPY")
    if kind == ".safetensors":
        return is_stan_safetensors(path)
    if kind == ".mp4":  # faststart puts the index, and the comment in it, near the start
        return _holds(path, OVERLAY_COMMENT.encode(), 1 << 24) or _listed_by_summary(path)
    return False


OVERLAY_COMMENT = "stan overlay video"  # the overlay videos' comment tag (VideoWriter)
_STAN_FORMATS = ("stan-weights", "stan-checkpoint")  # weights.FORMAT, weights.CHECKPOINT_FORMAT


def is_stan_safetensors(path: Path) -> bool:
    """Is `path`, whatever its name, stan weights or a checkpoint? By the `format` in the safetensors
    metadata: an 8-byte little-endian length, then that much JSON whose __metadata__ holds it."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with open(path, "rb") as fh:
            length = int.from_bytes(fh.read(8), "little")
            if not 2 <= length <= 100 << 20:
                return False
            header = json.loads(fh.read(length))
    except (OSError, ValueError):
        return False
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return isinstance(meta, dict) and meta.get("format") in _STAN_FORMATS


def _holds(path: Path, marker: bytes, limit: int) -> bool:
    """Do the first `limit` bytes of `path` hold `marker`? Read in 1 MB pieces."""
    tail = b""
    try:
        with open(path, "rb") as fh:
            for _ in range(max(1, limit >> 20)):
                piece = fh.read(1 << 20)
                if not piece:
                    return False
                if marker in tail + piece:
                    return True
                tail = piece[-len(marker):]
    except OSError:
        return False
    return False


def _listed_by_summary(path: Path) -> bool:
    try:
        data = json.loads((path.parent / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "stan_version" in data and path.name in (data.get("files") or [])


# --------------------------------------------------------------------------- a folder of files, replaced whole


def check_own_folder(folder: Path, is_ours: Callable[[Path], bool], what: str) -> None:
    """Refuse, before any work, to replace `folder` (a report's folder of clips, an evaluation's
    scores) when it holds anything stan did not write: is_ours(entry) says which entries are."""
    if not os.path.lexists(folder):
        return
    if folder.is_symlink() or not folder.is_dir():
        raise OutputError(f"{shown(folder)}: is not stan's folder of {what}. Move or rename it, or choose another --out.")
    try:
        entries = sorted(folder.iterdir())
    except OSError as err:
        raise OutputError(f"{shown(folder)}: cannot list the folder ({err.strerror}). Choose another --out.") from None
    for entry in entries:
        if not is_ours(entry):
            raise OutputError(
                f"{shown(entry)}: --overwrite would replace the folder of {what}, but stan did not write this file. "
                "Move or rename it, or choose another --out."
            )


@contextlib.contextmanager
def staged_folder(out: Path, name: str, is_ours: Callable[[Path], bool], what: str) -> Iterator[Path]:
    """A hidden folder of this run in `out` to write into; on success it becomes `out/NAME` (an
    earlier one replaced, or removed when this run made none); on failure it is removed and
    `out/NAME` is left as it was. Enter it before `staged`, so that it ends after the other files
    are in place. For runs holding `out`'s lock: folders an interrupted run left are removed first."""
    check_own_folder(out / name, is_ours, what)
    leftover_name = re.compile(rf"^\.{re.escape(name)}\.\d+-[0-9a-f]+\.(?:tmp|old)$")  # scratch_path(out, name, ...)
    for leftover in out.iterdir():
        if leftover_name.match(leftover.name) and leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
    run = scratch_path(out, name, ".tmp")
    try:
        yield run
    except BaseException:
        shutil.rmtree(run, ignore_errors=True)
        raise
    final = Path(out) / name
    old = run.with_suffix(".old")
    try:
        if final.is_dir():
            os.replace(final, old)
        if run.is_dir():
            os.replace(run, final)
    except BaseException as err:  # a refused rename or Ctrl-C between the two: the earlier folder back
        with contextlib.suppress(OSError):
            if old.is_dir() and not final.exists():
                os.replace(old, final)
        shutil.rmtree(run, ignore_errors=True)
        if not isinstance(err, OSError):
            raise
        raise OutputError(
            f"{shown(final)}: the other files are written but the folder of {what} could not be put in place "
            f"({err.strerror or err}); run again with --overwrite."
        ) from None
    try:
        foreign = [p for p in old.iterdir() if not is_ours(p)] if old.is_dir() else []
    except OSError:
        foreign = []
    if foreign:  # put there while this run went on: kept, never deleted unseen
        keep = Path(out) / f"{name}.earlier"
        with contextlib.suppress(OSError):
            if not os.path.lexists(keep):
                os.replace(old, keep)
                return
    shutil.rmtree(old, ignore_errors=True)
