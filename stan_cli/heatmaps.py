"""Per-frame heat maps kept on disk between detect's scoring pass and its overlay pass.

Each map is stored at half the network resolution as uint8 relative to its own maximum, with
the maximum kept beside it (12.5 kB per frame at 224), so memory stays flat for any video length.
A log-spaced histogram of every stored value gives the clip-wide display scale (a high
percentile) without keeping the values.

The store files are scratch space in the output folder (hidden names, removed at the end). A full
disk or a read-only folder while writing them is an OutputError naming the file, like any
report file, never a bare OSError.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .fileio import output_error, remove_quietly

_LOG_LO, _LOG_HI, _BINS = -12.0, 2.0, 2800  # log10 range of map values, 0.005 decades per bin


class MapStore:
    """Append (B, S, S) maps frame by frame; read them back as float32 (S/2, S/2) arrays."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._file = open(self.path, "wb")
        except OSError as err:
            raise output_error(self.path, err) from err
        self.maxima: list[float] = []
        self.side = 0
        self._hist = np.zeros(_BINS + 1, dtype=np.int64)  # last bin: zeros and below range

    def append(self, maps: torch.Tensor) -> None:
        half = F.avg_pool2d(maps.float()[:, None], 2)[:, 0]  # (B, S/2, S/2)
        self.side = half.shape[-1]
        peak = half.flatten(1).amax(dim=1).clamp(min=1e-30)  # (B,)
        q = (half / peak[:, None, None] * 255).round().to(torch.uint8)
        try:
            self._file.write(q.cpu().numpy().tobytes())
        except OSError as err:
            raise output_error(self.path, err) from err
        self.maxima.extend(peak.cpu().tolist())
        values = half.flatten().cpu().numpy().astype(np.float64)
        with np.errstate(divide="ignore"):
            logs = np.log10(values)
        finite = np.isfinite(logs)  # exact zeros (a guided-backprop map has them) go to the last bin
        idx = np.full(logs.shape, _BINS, dtype=np.int64)
        idx[finite] = np.clip(((logs[finite] - _LOG_LO) / (_LOG_HI - _LOG_LO) * _BINS).astype(np.int64), 0, _BINS - 1)
        self._hist += np.bincount(idx, minlength=_BINS + 1)

    def close(self) -> None:
        try:
            self._file.close()  # flushes the last maps: a full disk can show only here
        except OSError as err:
            raise output_error(self.path, err) from err

    def quantile(self, q: float) -> float:
        """Approximate q-quantile of every stored value (within one histogram bin)."""
        total = self._hist.sum()
        if total == 0:
            return 0.0
        zeros = self._hist[_BINS]
        rank = q * total
        if rank <= zeros:
            return 0.0
        k = int(np.searchsorted(np.cumsum(self._hist[:_BINS]), rank - zeros))
        return float(10 ** (_LOG_LO + (k + 1) * (_LOG_HI - _LOG_LO) / _BINS))

    def reader(self) -> "MapReader":
        self.close()
        return MapReader(self.path, self.side, np.asarray(self.maxima, dtype=np.float32))

    def remove(self) -> None:
        """Close and delete the file; called on every way out, so it never raises."""
        try:
            self._file.close()
        except OSError:
            pass
        remove_quietly(self.path)


class MapReader:
    """Reads one map at a time with a positioned read: a memory map would keep every page it
    touched resident, so RSS would grow with the video's length during the overlay pass."""

    def __init__(self, path: Path, side: int, maxima: np.ndarray) -> None:
        self.maxima = maxima
        self.side = side
        self._fd = os.open(path, os.O_RDONLY) if path.exists() else None

    def __len__(self) -> int:
        return len(self.maxima)

    def __getitem__(self, k: int) -> np.ndarray:
        assert self._fd is not None and 0 <= k < len(self)
        n = self.side * self.side
        raw = os.pread(self._fd, n, k * n)
        return np.frombuffer(raw, dtype=np.uint8).reshape(self.side, self.side).astype(np.float32) * (
            self.maxima[k] / 255.0
        )

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
