"""Where a run lives on disk: its locks, its checkpoint folder, and what it leaves there.

Checkpoints live in `<out>.ckpt/` (or --checkpoint-dir): `last.safetensors` (models, optimisers,
RNG, position) every N steps and at each epoch end, `best.safetensors` (the selected models),
the decoded frame cache and the run's logs and plot while it trains. All writes are a temp file
then a rename.

What lies beside --out is always one finished run's: the weights, `NAME.log.csv`, `NAME.val.csv`
and `NAME.losses.png` are written together when a run finishes, so an interrupted run (even one
started with --overwrite) leaves an earlier run's files as they were and its own progress in the
checkpoint folder. A run that ends without a checkpoint to resume (a refusal on the footage, a
failure before the first checkpoint, a recalibration) removes what it created there.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

from ..errors import OutputError, TrainingError
from .checks import check_outputs
from .options import TrainOptions
from .ranks import Rank


class Lock:
    """`<path>.lock`, flock-ed for the life of a run: two runs writing one --out (or sharing one
    --checkpoint-dir, whose checkpoints they would overwrite in turn) are refused.

    The kernel drops an flock when its process dies (kill -9, reboot, a requeued job), so a
    lock left behind never blocks a resumed run; host and pid in the file are only for the message.
    """

    def __init__(self, path: Path, option: str = "--out") -> None:
        self.path = path.with_name(path.name + ".lock")
        self.option = option
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as err:
            raise OutputError(f"{self.path}: cannot create the run's lock file ({err.strerror}). Choose a writable {self.option}.") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown process"
            os.close(fd)
            raise TrainingError(
                f"{self.path}: another `stan train` is writing this {self.option} ({holder}). "
                f"Wait for it to finish or choose another {self.option}."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} pid {os.getpid()}".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)  # closing drops the flock
            self._fd = None


class Scratch:
    """What a new run creates in its checkpoint folder, so that a run ending without a checkpoint
    to resume (a refusal on the footage, a failure before the first checkpoint, a recalibration)
    can remove it: only that, never an earlier run's folder, frame cache or files."""

    def __init__(self, opts: TrainOptions) -> None:
        self.opts = opts
        self.new_folders = missing_folders(opts.ckpt_dir)  # innermost (the checkpoint folder) first
        self.new_cache = not (opts.ckpt_dir / "frames").exists()
        self.cleared = False  # the earlier run's checkpoints and logs are gone: what is there now is ours
        self.checkpointed = False

    def remove(self) -> None:
        if self.new_folders:  # the checkpoint folder is this run's own: all of it goes
            shutil.rmtree(self.opts.ckpt_dir, ignore_errors=True)
            for folder in self.new_folders[1:]:  # then the parents it made, while nobody else uses them
                try:
                    folder.rmdir()
                except OSError:  # another run's folder (a sweep under one --checkpoint-dir parent) is there
                    break
            return
        if self.new_cache:
            shutil.rmtree(self.opts.ckpt_dir / "frames", ignore_errors=True)
        if self.cleared:
            for path in self.opts.run_record:
                path.unlink(missing_ok=True)


class StopFlag:
    """Ctrl-C (SIGINT), SIGTERM or SIGHUP finishes the current step, writes a checkpoint, then stops.
    A signal the process was told to ignore (`nohup` ignores SIGHUP) stays ignored."""

    def __init__(self) -> None:
        self.stop = False
        self._old: dict[int, object] = {}

    def __enter__(self) -> "StopFlag":
        try:
            for sig in [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]:
                if signal.getsignal(sig) is signal.SIG_IGN:  # nohup: a closed terminal must not stop the run
                    continue
                self._old[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: no signal handling, periodic checkpoints still hold
            pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.stop:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def run_folder(opts: TrainOptions, rank: Rank) -> Iterator[Scratch | None]:
    """Hold --out and the checkpoint folder for the block: locked first (a live run's files stay
    untouched), then checked (checks.check_outputs). Yields what a new run creates there (None on
    resume and on other ranks), removed again at the end unless a checkpoint was written."""
    # The checkpoint folder has a lock of its own: a run with another --out may name it with
    # --checkpoint-dir (resolved, so that two spellings of one folder share one lock).
    ckpt_dir = opts.ckpt_dir.resolve()
    if not ckpt_dir.name:
        raise OutputError(f"{opts.ckpt_dir}: not a folder for checkpoints. Choose a folder of its own for --checkpoint-dir.")
    locks = [Lock(opts.out), Lock(ckpt_dir, "--checkpoint-dir" if opts.checkpoint_dir is not None else "--out")]
    lock_folders = missing_folders(ckpt_dir.parent) if rank.main else []  # removed at the end if still empty
    scratch: Scratch | None = None
    try:
        if rank.main:
            locks[0].acquire()
            try:
                ckpt_dir.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise OutputError(
                    f"{opts.ckpt_dir}: cannot create the checkpoint folder ({err.strerror}). Choose a writable --checkpoint-dir."
                ) from None
            locks[1].acquire()
        check_outputs(opts)
        if rank.main and not opts.resume:
            scratch = Scratch(opts)
        yield scratch
    finally:
        if scratch is not None and not scratch.checkpointed:
            scratch.remove()  # nothing to resume: leave no checkpoint folder behind either
        for lock in locks:
            lock.release()
        for folder in lock_folders:
            try:
                folder.rmdir()
            except OSError:  # the run's checkpoints (or another run's) are in it
                break


def missing_folders(folder: Path) -> list[Path]:
    """The folders mkdir(parents=True) would create for `folder`, innermost first; [] if it exists."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing.append(path)
    return missing
