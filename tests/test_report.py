"""Report folder writers: CSV/JSON contents, atomic writes, the plot and the HTML page."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

from stan_cli.errors import OutputError
from stan_cli.report import (
    SCORES_HEADER,
    SEGMENTS_HEADER,
    atomic_path,
    atomic_write_bytes,
    staged,
    plot_scores,
    write_json,
    write_scores_csv,
    write_segments_csv,
)
from stan_cli.report_html import curve_svg, write_index_html
from stan_cli.scoring import Segment

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
N = 20
FPS = 10.0


@pytest.fixture
def curves() -> dict[str, np.ndarray]:
    """20 frames; the first and last 5 unscored (NaN), frames 9..11 flagged."""
    t = np.arange(N) / FPS
    raw = np.full(N, np.nan)
    raw[5:15] = [1.0, 1.1, 0.9, 1.0, 3.0, 3.5, 3.2, 1.0, 1.2, 1.0]
    pixel = raw * 0.5
    d = raw * 0.25
    score = (raw - np.nanmin(raw)) / (np.nanmax(raw) - np.nanmin(raw))
    abnormal = np.where(raw > 2.0, 1, 0)
    return dict(time_s=t, pixel_loss=pixel, d_loss=d, score_raw=raw, score=score, abnormal=abnormal)


@pytest.fixture
def segments() -> list[Segment]:
    return [Segment(start=9, end=11, peak=10, peak_score=3.5)]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------- atomic writes


def test_atomic_write_bytes_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    atomic_write_bytes(target, b"hello")
    atomic_write_bytes(target, b"world")
    assert target.read_bytes() == b"world"
    assert _leftovers(tmp_path) == []


def test_atomic_path_failure_keeps_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "scores.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half a fi")
            raise RuntimeError("writer crashed")
    assert target.read_text() == "old\n"
    assert _leftovers(tmp_path) == []


def test_atomic_path_failure_leaves_no_partial_new_file(tmp_path: Path) -> None:
    target = tmp_path / "new.csv"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_temp_is_hidden_sibling_with_suffix(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "overlay.mp4") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.suffix == ".mp4"
        tmp.write_bytes(b"x")
    assert (tmp_path / "overlay.mp4").read_bytes() == b"x"


def test_atomic_write_into_missing_folder_is_output_error(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="missing"):
        atomic_write_bytes(tmp_path / "missing" / "a.json", b"{}")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("failure", [OSError(errno.EROFS, "Read-only file system"), KeyboardInterrupt()])
@pytest.mark.parametrize("at", [1, 3, 5, 7])  # the rename that fails: 1-4 move earlier files aside, 5-7 new ones in
def test_staged_commit_failing_part_way_puts_the_earlier_files_back(tmp_path: Path, monkeypatch, failure, at) -> None:
    """The commit renames one file after another; a failure between two of them (a folder that
    turned read-only, Ctrl-C) must not leave a mix of old and new files."""
    own = ("a.csv", "b.json", "index.html", "stale.mp4")
    for name in ("a.csv", "b.json", "index.html", "stale.mp4"):
        (tmp_path / name).write_text(f"old {name}")
    (tmp_path / "mine.txt").write_text("the user's")
    before = _files(tmp_path)
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == at:
            raise failure
        return real(src, dst)

    with pytest.raises(OutputError if isinstance(failure, OSError) else KeyboardInterrupt):
        with staged(tmp_path, own=own):
            for name in ("a.csv", "b.json", "index.html"):  # stale.mp4 is not written this time
                atomic_write_bytes(tmp_path / name, f"new {name}".encode())
            monkeypatch.setattr(os, "replace", replace)  # from here on: the commit's renames
    monkeypatch.undo()
    assert len(calls) >= at
    assert _files(tmp_path) == before  # every earlier file back, no backups, no temporaries


def test_staged_commit_replaces_and_drops_stale_outputs(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("old")
    (tmp_path / "stale.mp4").write_text("old")
    (tmp_path / "mine.txt").write_text("the user's")
    with staged(tmp_path, own=("a.csv", "stale.mp4")):
        atomic_write_bytes(tmp_path / "a.csv", b"new")
        assert (tmp_path / "a.csv").read_bytes() == b"old"
    assert _files(tmp_path) == {"a.csv": b"new", "mine.txt": b"the user's"}


# --------------------------------------------------------------------------- CSV


def test_scores_csv(tmp_path: Path, curves: dict[str, np.ndarray]) -> None:
    path = tmp_path / "scores.csv"
    write_scores_csv(path, **curves)
    lines = path.read_text().splitlines()
    assert lines[0] == SCORES_HEADER == "frame,time_s,pixel_loss,d_loss,score_raw,score,abnormal"
    assert len(lines) == N + 1
    assert lines[1] == "0,0.000,,,,,"  # unscored: every value cell empty, abnormal too
    assert lines[N] == "19,1.900,,,,,"
    assert lines[6] == "5,0.500,0.5,0.25,1,0.0384615,0"
    assert lines[11] == "10,1.000,1.75,0.875,3.5,1,1"
    assert _leftovers(tmp_path) == []


def test_scores_csv_rejects_ragged_arrays(tmp_path: Path, curves: dict[str, np.ndarray]) -> None:
    curves["d_loss"] = curves["d_loss"][:-1]
    with pytest.raises(ValueError, match="length"):
        write_scores_csv(tmp_path / "scores.csv", **curves)


def test_segments_csv(tmp_path: Path, curves: dict[str, np.ndarray]) -> None:
    path = tmp_path / "segments.csv"
    segs = [Segment(9, 11, 10, 3.5), Segment(start=13, end=13, peak=13, peak_score=1.2)]
    write_segments_csv(path, segs, curves["time_s"])
    assert path.read_text().splitlines() == [
        SEGMENTS_HEADER,
        "1,9,11,0.900,1.100,0.300,10,1.000,3.5",  # frames 9..11 inclusive at 10 fps: 0.3 s
        "2,13,13,1.300,1.300,0.100,13,1.300,1.2",
    ]


def test_segments_csv_empty_has_header(tmp_path: Path) -> None:
    path = tmp_path / "segments.csv"
    write_segments_csv(path, [], np.arange(3) / FPS)
    assert path.read_text() == SEGMENTS_HEADER + "\n"


# --------------------------------------------------------------------------- JSON


def test_json_nan_and_numpy_become_plain_json(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    data = {
        "z_first": 1,
        "threshold": float("nan"),
        "inf": np.float32(np.inf),
        "frames": np.int64(20),
        "flag": np.bool_(True),
        "nested": {"xs": np.array([1.0, np.nan]), "t": (np.float64(0.5), None)},
        "weights": tmp_path / "w.safetensors",
    }
    write_json(path, data)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    loaded = json.loads(text)
    assert list(loaded) == list(data)  # key order kept, not sorted
    assert loaded["threshold"] is None and loaded["inf"] is None
    assert loaded["frames"] == 20 and loaded["flag"] is True
    assert loaded["nested"] == {"xs": [1.0, None], "t": [0.5, None]}
    assert loaded["weights"] == str(tmp_path / "w.safetensors")


# --------------------------------------------------------------------------- plot


def test_plot_scores_writes_png(
    tmp_path: Path, curves: dict[str, np.ndarray], segments: list[Segment]
) -> None:
    path = tmp_path / "scores.png"
    plot_scores(
        path,
        time_s=curves["time_s"],
        score=curves["score"],
        score_raw=curves["score_raw"],
        threshold=2.0,
        segments=segments,
        title="clip.mp4",
    )
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1200, 400)
    assert _leftovers(tmp_path) == []


def test_plot_scores_all_unscored(tmp_path: Path) -> None:
    path = tmp_path / "scores.png"
    nan = np.full(4, np.nan)
    plot_scores(
        path, time_s=np.arange(4) / FPS, score=nan, score_raw=nan,
        threshold=None, segments=[], title="short",
    )
    assert path.read_bytes()[:8] == PNG_SIGNATURE


# --------------------------------------------------------------------------- HTML


def _summary(name: str = "clip.mp4") -> dict:
    return {
        "input": f"/videos/{name}",
        "frames": N,
        "fps": FPS,
        "width": 64,
        "height": 48,
        "device": "cpu",
        "weights": "/models/stan.safetensors",
        "weights_sha256": "0123456789abcdef" * 4,
        "threshold": 2.0,
        "threshold_source": "calibration",
        "score_kind": "g+d",
    }


def test_index_html(tmp_path: Path, segments: list[Segment]) -> None:
    path = tmp_path / "index.html"
    write_index_html(
        path,
        summary=_summary(),
        segments=segments,
        plot_name="scores.png",
        videos=[("overlay.mp4", "Heat-map overlay")],
    )
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "clip.mp4" in page and "/videos/" not in page  # the name, not the full path
    assert '<img src="scores.png"' in page
    assert '<video class="overlay" controls muted playsinline preload="metadata" src="overlay.mp4">' in page
    assert "Heat-map overlay" in page
    assert "stan.safetensors (sha256 0123456789ab)" in page
    assert "64\u00d748" in page
    # segment row: times from frame / fps, frames, peak score
    assert '<td class="num">0.900</td><td class="num">1.100</td><td class="num">1.000</td>' in page
    assert '<td class="num">9</td><td class="num">11</td><td class="num">10</td>' in page
    assert '<td class="num">3.5</td>' in page
    assert "http" not in page and page.count("<script") == 1  # the page's own, nothing fetched


def test_index_html_draws_the_curve_and_links_the_clips(tmp_path: Path, curves, segments) -> None:
    path = tmp_path / "index.html"
    write_index_html(
        path, summary=_summary(), segments=segments, plot_name="scores.png", videos=[("overlay.mp4", "o")],
        time_s=curves["time_s"], score_raw=curves["score_raw"], threshold=2.0, clips=["segments/segment_001.mp4"],
    )
    page = path.read_text()
    assert '<svg id="curve"' in page and 'id="playhead"' in page and 'class="threshold"' in page
    assert '<details><summary>The same as a picture (scores.png)</summary><img src="scores.png"' in page
    assert '<body data-frames="20" data-fps="10">' in page  # what the script seeks by
    assert '<tr class="segment" id="segment-1" data-start="9" data-end="11" tabindex="0">' in page
    assert '<a href="segments/segment_001.mp4">segment_001.mp4</a>' in page


def test_curve_svg_keeps_spikes_and_gaps() -> None:
    """Each column is the highest score of its frames: a one-frame spike in a long clip stays;
    an unscored stretch starts a new stroke."""
    n = 20000
    raw = np.full(n, 1.0)
    raw[:5] = raw[-5:] = np.nan
    raw[12345] = 9.0
    raw[9000:9100] = np.nan
    svg = curve_svg(raw, np.arange(n) / 25.0, threshold=5.0, segments=[Segment(12345, 12345, 12345, 9.0)])
    path = svg.split('class="line" d="')[1].split('"')[0]
    assert path.count("M") == 2 and len(path.split()) <= 1200  # two strokes, at most a point per column
    ys = [float(p[1:].split(",")[1]) for p in path.split()]
    assert min(ys) < 25 and sum(y < 100 for y in ys) == 1  # the spike, one column, near the top (5 % headroom)
    assert ">0 s</text>" in svg and ">100 s</text>" in svg  # seconds on the axis


def test_curve_svg_of_a_clip_without_scores() -> None:
    svg = curve_svg(np.full(8, np.nan), np.arange(8) / 10.0, threshold=None, segments=[])
    assert 'class="line" d=""' in svg and 'id="playhead"' in svg


def test_index_html_shows_warnings_escaped_and_none_without(tmp_path: Path) -> None:
    path = tmp_path / "index.html"
    write_index_html(path, summary={**_summary(), "warnings": ["a <b> & c", "second"]}, segments=[], plot_name="scores.png")
    page = path.read_text()
    assert '<div class="warn">' in page and "<li>a &lt;b&gt; &amp; c</li><li>second</li>" in page
    assert page.index('<div class="warn">') < page.index('<table class="facts">')  # read before the facts
    write_index_html(path, summary={**_summary(), "warnings": []}, segments=[], plot_name="scores.png")
    assert '<div class="warn">' not in path.read_text()


def test_index_html_no_segments(tmp_path: Path) -> None:
    path = tmp_path / "index.html"
    write_index_html(path, summary=_summary(), segments=[], plot_name="scores.png", videos=[])
    page = path.read_text()
    assert "No abnormal segments found" in page and "<video" not in page


def test_no_segments_but_flagged_frames_says_why(tmp_path: Path) -> None:
    """A short clip can flag a frame or two that --min-length drops: the page says so."""
    path = tmp_path / "index.html"
    summary = {**_summary(), "abnormal_frames": 2, "min_length_frames": 5}
    write_index_html(path, summary=summary, segments=[], plot_name="scores.png", videos=[])
    page = path.read_text()
    assert "No abnormal segments: 2 flagged frames, in runs shorter than --min-length 5" in page


def test_index_html_escapes_user_strings(tmp_path: Path) -> None:
    path = tmp_path / "index.html"
    evil = '<script>alert("x")</script>&.mp4'
    write_index_html(
        path,
        summary=_summary(evil),
        segments=[],
        plot_name="scores.png",
        videos=[("a b#1.mp4", evil)],
    )
    page = path.read_text()
    assert page.count("<script") == 1 and "alert(" not in page.split("<script>")[1]  # only the page's own script
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;.mp4" in page
    assert 'src="a%20b%231.mp4"' in page


def test_index_html_rejects_links_outside_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_index_html(
            tmp_path / "index.html", summary=_summary(), segments=[],
            plot_name="../secret.png", videos=[],
        )
    assert _leftovers(tmp_path) == []


def test_normalised_axis_ticks_stay_in_0_1_when_the_threshold_stretches_the_plot() -> None:
    from matplotlib.figure import Figure

    from stan_cli.report import add_normalised_axis

    raw = np.array([np.nan, 1.0, 2.0, 3.0, np.nan])
    norm = (raw - 1.0) / 2.0
    ax = Figure().add_subplot(1, 1, 1)
    ax.plot(np.arange(5), raw)
    ax.axhline(-5.0)  # a threshold far below the curve: the raw axis reaches -5
    secondary = add_normalised_axis(ax, raw, norm)
    ticks = secondary.get_yticks()
    assert ticks.min() == 0.0 and ticks.max() == 1.0 and len(ticks) == 5
    assert add_normalised_axis(ax, np.array([1.0, 1.0]), np.array([0.0, 0.0])) is None  # flat: no axis
