"""The report's index.html: one self-contained page a reviewer works in.

It opens from disk with no network (inline CSS, one inline script, relative links only) and
holds the facts, the score curve drawn as inline SVG from the scores (scores.png stays for
other uses), the segment table and the overlay videos. The script makes them one player: both
videos play, pause and seek together; a playhead on the curve follows them; a click on the
curve seeks there, a click on a segment row (or Enter on it) to the segment's start; n / p (or
j / k) go to the next and previous segment; space plays and pauses; `#segment-3` in the address
opens at segment 3. Every string from the user (file names, warnings) is HTML-escaped and none
reaches the script, which is the same text on every page.

Times in the videos are frame / fps (the overlay videos hold every frame at the report's rate),
so the page seeks and places the playhead by frame index; the axis labels and the table give
the frames' own times (a video's timestamps).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from .fileio import shown
from .report import _atomic_write_text, _g, _t, flagged_but_short
from .scoring import Segment

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1240px;
padding:0 1rem;color:#222;background:#fafafa}
h1{font-size:1.4rem;word-break:break-all}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.3rem .6rem;text-align:left}
th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums}
img,video{max-width:100%;height:auto;border:1px solid #ddd;background:#fff}
figure{margin:1rem 0}figcaption{font-size:.9rem;color:#555}
.none{color:#555;font-style:italic}
.warn{border:1px solid #d9a400;background:#fff8e1;padding:.5rem 1rem;margin:1rem 0;font-size:.9rem}
.warn ul{margin:.3rem 0;padding-left:1.2rem}
""".strip()

_PAGE_CSS = """
svg.curve{width:100%;height:auto;background:#fff;border:1px solid #ddd;cursor:crosshair;display:block}
svg.curve .line{fill:none;stroke:#1f5fa8;stroke-width:1.3}
svg.curve .threshold{stroke:#d62728;stroke-dasharray:6 4;stroke-width:1}
svg.curve .flagged{fill:#d62728;fill-opacity:.16}
svg.curve .axis{stroke:#999;stroke-width:1}svg.curve .grid{stroke:#eee;stroke-width:1}
svg.curve text{font-size:11px;fill:#555;font-family:inherit}
svg.curve .playhead{stroke:#111;stroke-width:1.5}
tr.segment{cursor:pointer}tr.segment:hover td{background:#f3f7fc}
tr.segment.active td{background:#fdecea}tr.segment:focus{outline:2px solid #1f5fa8}
.videos{display:grid;grid-template-columns:repeat(auto-fit,minmax(380px,1fr));gap:1rem}
.videos figure{margin:0}.videos video{width:100%}.hint{font-size:.85rem;color:#555}
kbd{border:1px solid #bbb;border-radius:3px;padding:0 .3em;background:#fff;font-size:.8rem}
details{margin:.5rem 0}
""".strip()

# The same on every page: it reads the page's data-* attributes and never any user text.
SCRIPT = r"""
(() => {
  const page = document.body.dataset;
  const n = Number(page.frames), fps = Number(page.fps);
  if (!(n > 0 && fps > 0)) return;
  const curve = document.getElementById("curve");
  const head = document.getElementById("playhead");
  const videos = [...document.querySelectorAll("video.overlay")];
  const rows = [...document.querySelectorAll("tr.segment")];
  const lead = videos[0];
  let frame = 0;

  const frameAt = (t) => Math.min(n - 1, Math.max(0, Math.floor(t * fps + 1e-6)));
  function show(f) {
    frame = f;
    if (curve && head) {
      const x = (Number(curve.dataset.left) + (f + 0.5) / n * Number(curve.dataset.width)).toFixed(1);
      head.setAttribute("x1", x);
      head.setAttribute("x2", x);
    }
    for (const row of rows) row.classList.toggle("active", Number(row.dataset.start) <= f && f <= Number(row.dataset.end));
  }
  function seekFrame(f) {
    const t = (f + 0.5) / fps;  // the middle of the frame: no rounding lands on the one before
    for (const v of videos) v.currentTime = t;
    show(f);
  }
  function go(k) {
    seekFrame(Number(rows[k].dataset.start));
    rows[k].scrollIntoView({block: "nearest"});
  }

  for (const v of videos) {
    v.addEventListener("play", () => { for (const o of videos) if (o !== v && o.paused) o.play().catch(() => {}); follow(); });
    v.addEventListener("pause", () => { for (const o of videos) if (o !== v && !o.paused) o.pause(); show(frameAt(v.currentTime)); });
    v.addEventListener("seeking", () => {
      for (const o of videos) if (o !== v && Math.abs(o.currentTime - v.currentTime) > 0.5 / fps) o.currentTime = v.currentTime;
      show(frameAt(v.currentTime));
    });
    v.addEventListener("ratechange", () => { for (const o of videos) if (o !== v) o.playbackRate = v.playbackRate; });
  }
  function follow() {  // while playing: the playhead moves, and the other video keeps in step
    if (!lead || lead.paused) return;
    show(frameAt(lead.currentTime));
    for (const o of videos) if (o !== lead && Math.abs(o.currentTime - lead.currentTime) > 0.2) o.currentTime = lead.currentTime;
    requestAnimationFrame(follow);
  }

  if (curve) curve.addEventListener("click", (e) => {
    const box = curve.getBoundingClientRect();
    const x = (e.clientX - box.left) / box.width * curve.viewBox.baseVal.width;
    seekFrame(Math.min(n - 1, Math.max(0, Math.floor((x - Number(curve.dataset.left)) / Number(curve.dataset.width) * n))));
  });
  rows.forEach((row, k) => {
    row.addEventListener("click", (e) => { if (!e.target.closest("a")) go(k); });
    row.addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.target.closest("a")) go(k); });
  });
  document.addEventListener("keydown", (e) => {
    if (e.altKey || e.ctrlKey || e.metaKey || /^(INPUT|TEXTAREA|SELECT)$/.test(e.target.tagName)) return;
    if (e.key === "n" || e.key === "j") {
      const k = rows.findIndex((r) => Number(r.dataset.start) > frame);
      if (k >= 0) go(k);
    } else if (e.key === "p" || e.key === "k") {
      let k = -1;
      rows.forEach((r, i) => { if (Number(r.dataset.start) < frame) k = i; });
      if (k >= 0) go(k);
    } else if (e.key === " " && lead && !/^(VIDEO|BUTTON|A)$/.test(e.target.tagName)) {
      if (lead.paused) lead.play().catch(() => {}); else lead.pause();
    } else return;
    e.preventDefault();
  });
  const wanted = /^#segment-(\d+)$/.exec(location.hash);
  if (wanted && rows[Number(wanted[1]) - 1]) go(Number(wanted[1]) - 1); else show(0);
})();
""".strip()

# (summary key, row label); keys the summary lacks are left out of the table.
_FACTS: tuple[tuple[str, str], ...] = (
    ("input", "Input"),
    ("frames", "Frames"),
    ("fps", "Frame rate (fps)"),
    ("size", "Size"),
    ("duration_s", "Duration (s)"),
    ("device", "Device"),
    ("weights", "Weights"),
    ("threshold", "Threshold"),
    ("threshold_source", "Threshold source"),
    ("score_kind", "Score kind"),
    ("scored_frames", "Scored frames"),
    ("abnormal_frames", "Abnormal frames"),
)


def esc(value: Any) -> str:
    return html.escape(shown(str(value)), quote=True)


def _fmt(value: Any) -> str:
    """A summary value as short text: floats to 4 significant digits, None/NaN as a dash."""
    if value is None or (isinstance(value, (float, np.floating)) and not math.isfinite(value)):
        return "\u2014"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)


def href(name: str, fragment: str = "") -> str:
    """A relative, percent-encoded, attribute-escaped link to a file in the report folder, and
    to a place in it (`fragment`, "segment-3").

    Names like "a#b.mp4" or "x:y.png" would otherwise turn into a fragment or a URL scheme.
    """
    if name.startswith(("/", "\\")) or ".." in Path(name).parts:
        raise ValueError(f"report links must stay inside the report folder, got {name!r}")
    return esc(quote(name, safe="/") + (f"#{quote(fragment)}" if fragment else ""))


def _fact_values(summary: Mapping[str, Any]) -> dict[str, Any]:
    """Summary values as shown: size from width/height, weights with a short sha256."""
    facts = dict(summary)
    if "input" in facts:
        facts["input"] = Path(str(facts["input"])).name  # the page may be shared; paths not
    if "size" not in facts and "width" in facts and "height" in facts:
        facts["size"] = f"{facts['width']}\u00d7{facts['height']}"
    if facts.get("fps_assumed") and "fps" in facts:  # a frame folder (or a video) that states no rate
        facts["fps"] = f"{_fmt(facts['fps'])} (assumed: the input states none; times use it; set --fps)"
    sha = facts.get("weights_sha256")
    if "weights" in facts and sha:
        name = f"{facts['weights_name']}, " if facts.get("weights_name") else ""
        facts["weights"] = f"{Path(str(facts['weights'])).name} ({name}sha256 {str(sha)[:12]})"
    facts.pop("weights_name", None)
    return facts


def _facts_table(summary: Mapping[str, Any]) -> str:
    facts = _fact_values(summary)
    rows = [
        f"<tr><th>{esc(label)}</th><td>{esc(_fmt(facts[key]))}</td></tr>"
        for key, label in _FACTS
        if key in facts
    ]
    return "<table class=\"facts\">\n" + "\n".join(rows) + "\n</table>"


def _segment_times(
    segments: Sequence[Segment], summary: Mapping[str, Any], time_s: np.ndarray | None
) -> np.ndarray | None:
    """Seconds per frame index: the real timestamps if given, else frame / fps, else None."""
    if time_s is not None:
        return np.asarray(time_s, dtype=np.float64)
    fps = summary.get("fps")
    if isinstance(fps, (int, float, np.number)) and fps > 0 and segments:
        last = max(seg.end for seg in segments)
        return np.arange(last + 1, dtype=np.float64) / float(fps)
    return None


def _segments_table(segments: Sequence[Segment], times: np.ndarray | None, summary: Mapping[str, Any],
                    clips: Sequence[str | None] | None) -> str:
    if not segments:
        why = flagged_but_short(summary.get("abnormal_frames"), summary.get("min_length_frames"))
        return f'<p class="none">No abnormal segments{": " + html.escape(why) if why else " found"}.</p>'

    def at(frame: int) -> str:
        return _t(float(times[frame])) if times is not None else "\u2014"

    clips = list(clips) if clips is not None else []
    clip_head = "<th>clip</th>" if clips else ""
    head = (
        "<tr><th>#</th><th>start (s)</th><th>end (s)</th><th>peak (s)</th>"
        "<th>start frame</th><th>end frame</th><th>peak frame</th><th>frames</th>"
        f"<th>peak score</th>{clip_head}</tr>"
    )
    rows = []
    for n, s in enumerate(segments, start=1):
        clip = clips[n - 1] if n <= len(clips) else None
        link = f'<td><a href="{href(clip)}">{esc(Path(clip).name)}</a></td>' if clip else ("<td></td>" if clips else "")
        rows.append(
            f'<tr class="segment" id="segment-{n}" data-start="{s.start}" data-end="{s.end}" tabindex="0">'
            f'<td class="num">{n}</td><td class="num">{at(s.start)}</td>'
            f'<td class="num">{at(s.end)}</td><td class="num">{at(s.peak)}</td>'
            f'<td class="num">{s.start}</td><td class="num">{s.end}</td>'
            f'<td class="num">{s.peak}</td><td class="num">{s.length}</td>'
            f'<td class="num">{esc(_g(float(s.peak_score)))}</td>{link}</tr>'
        )
    return '<table class="segments">\n' + head + "\n" + "\n".join(rows) + "\n</table>"


def _nice_step(span: float, count: int) -> float:
    """A step of 1, 2 or 5 times a power of ten that cuts `span` into about `count` parts."""
    raw = span / max(count, 1)
    if not raw > 0 or not math.isfinite(raw):
        return 1.0
    power = 10 ** math.floor(math.log10(raw))
    return next(k * power for k in (1, 2, 5, 10) if k * power >= raw)


def curve_svg(score_raw: np.ndarray, time_s: np.ndarray, threshold: float | None, segments: Sequence[Segment],
              width: int = 1200, height: int = 260) -> str:
    """The raw score over the frames as inline SVG: the curve (each pixel column the highest
    score of its frames, so a one-frame spike survives a long clip; gaps where unscored), the
    threshold dashed, the flagged segments shaded, a time axis, and the playhead the script moves.
    x is linear in frame index: the videos' time is frame / fps."""
    raw = np.asarray(score_raw, dtype=np.float64)
    times = np.asarray(time_s, dtype=np.float64)
    n = raw.size
    left, right, top, bottom = 58, 12, 10, 26
    plot_w, plot_h = width - left - right, height - top - bottom
    finite = raw[np.isfinite(raw)]
    limits = [float(finite.max())] if finite.size else []
    if threshold is not None and math.isfinite(threshold):
        limits.append(float(threshold))
    lo = min(0.0, float(finite.min())) if finite.size else 0.0
    hi = max(limits, default=1.0) * 1.05
    hi = hi if hi > lo else lo + 1.0

    def x(frame: float) -> float:
        return left + frame / max(n, 1) * plot_w

    def y(value: float) -> float:
        return top + (1.0 - (value - lo) / (hi - lo)) * plot_h

    parts = [
        f'<svg id="curve" class="curve" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="anomaly score over time; click to seek" data-left="{left}" data-width="{plot_w}">'
    ]
    step = _nice_step(hi - lo, 4)
    for k in range(math.ceil(lo / step), math.floor(hi / step) + 1):
        v = k * step
        parts.append(f'<line class="grid" x1="{left}" x2="{left + plot_w}" y1="{y(v):.1f}" y2="{y(v):.1f}"/>'
                     f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{_g(v)}</text>')
    if n:
        span = float(np.nanmax(times) - np.nanmin(times)) if np.isfinite(times).any() else 0.0
        tick = _nice_step(span, 10)
        for k in range(int(math.floor(span / tick)) + 1):
            frame = int(np.searchsorted(times, times[0] + k * tick - 1e-9))
            if frame < n:
                parts.append(f'<line class="axis" x1="{x(frame):.1f}" x2="{x(frame):.1f}" y1="{top + plot_h}" y2="{top + plot_h + 4}"/>'
                             f'<text x="{x(frame):.1f}" y="{height - 8}" text-anchor="middle">{k * tick:g} s</text>')
    for s in segments:
        parts.append(f'<rect class="flagged" x="{x(s.start):.1f}" y="{top}" width="{max(x(s.end + 1) - x(s.start), 1):.1f}" height="{plot_h}"/>')
    if threshold is not None and math.isfinite(threshold) and lo <= threshold <= hi:
        parts.append(f'<line class="threshold" x1="{left}" x2="{left + plot_w}" y1="{y(threshold):.1f}" y2="{y(threshold):.1f}"/>')
    parts.append(f'<path class="line" d="{_curve_path(raw, plot_w, x, y)}"/>')
    parts.append(f'<line class="axis" x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}"/>'
                 f'<line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}"/>')
    parts.append(f'<line id="playhead" class="playhead" x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}"/>')
    return "".join(parts) + "</svg>"


def _curve_path(raw: np.ndarray, columns: int, x, y) -> str:
    """SVG path data: at most `columns` points, each the highest score of its frames; a new
    stroke after each unscored stretch."""
    n = raw.size
    if n == 0:
        return ""
    starts = (np.arange(min(n, columns), dtype=np.int64) * n) // min(n, columns)
    ends = np.append(starts[1:], n)
    with np.errstate(all="ignore"):
        highest = np.fmax.reduceat(raw, starts)  # NaN only where all of a column's frames are
    points, pen = [], "M"
    for a, b, value in zip(starts, ends, highest):
        if not math.isfinite(value):
            pen = "M"
            continue
        points.append(f"{pen}{x((a + b) / 2):.1f},{y(value):.1f}")
        pen = "L"
    return " ".join(points)


def _videos(videos: Sequence[tuple[str, str]]) -> str:
    figures = "\n".join(
        f'<figure><video class="overlay" controls muted playsinline preload="metadata" src="{href(name)}"></video>'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
        for name, caption in videos
    )
    return f'<div class="videos">\n{figures}\n</div>'


def _warnings(messages: Sequence[str]) -> list[str]:
    items = "".join(f"<li>{esc(m)}</li>" for m in messages)
    return [f'<div class="warn"><strong>Warnings</strong><ul>{items}</ul></div>'] if messages else []


_HINT = (
    '<p class="hint">Click the curve or a segment row to seek; <kbd>n</kbd> / <kbd>p</kbd> next / previous '
    "segment; <kbd>space</kbd> play / pause. The two videos play in step.</p>"
)


def write_index_html(
    path,
    *,
    summary: Mapping[str, Any],
    segments: Sequence[Segment],
    plot_name: str,
    videos: Sequence[tuple[str, str]] = (),
    time_s: np.ndarray | None = None,
    score_raw: np.ndarray | None = None,
    threshold: float | None = None,
    clips: Sequence[str | None] | None = None,
) -> None:
    """The report page (see the module's docstring).

    summary keys used when present: input, frames, fps, size (or width + height), duration_s,
    device, weights, weights_sha256, threshold, threshold_source, score_kind, scored_frames,
    abnormal_frames, warnings (a list of strings, shown above the facts). Segment times come
    from `time_s` if given, else frame / fps. `score_raw` (one value per frame, NaN where
    unscored) draws the curve; `clips`, one relative link per segment (or None), the clip column.
    """
    name = Path(str(summary.get("input", "video"))).name
    times = _segment_times(segments, summary, time_s)
    fps = summary.get("fps")
    frames = len(score_raw) if score_raw is not None else summary.get("frames")
    plot = f'<img src="{href(plot_name)}" alt="anomaly score over time" width="1200" height="400">'
    if score_raw is not None and len(score_raw):
        curve_times = times if times is not None and len(times) == len(score_raw) else np.arange(len(score_raw)) / float(fps or 1)
        scores = [curve_svg(score_raw, curve_times, threshold, segments),
                  f"<details><summary>The same as a picture ({esc(plot_name)})</summary>{plot}</details>"]
    else:
        scores = [plot]
    body = [
        f"<h1>STAN report \u2014 {esc(name)}</h1>",
        *_warnings(summary.get("warnings") or ()),
        _facts_table(summary),
        "<h2>Scores</h2>",
        *scores,
        _HINT if score_raw is not None or videos else "",
        "<h2>Abnormal segments</h2>",
        _segments_table(segments, times, summary, clips),
    ]
    if videos:
        body += ["<h2>Videos</h2>", _videos(videos)]
    data = ""
    if isinstance(fps, (int, float, np.number)) and isinstance(frames, (int, np.integer)):
        data = f' data-frames="{int(frames)}" data-fps="{float(fps):.9g}"'
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>STAN report \u2014 {esc(name)}</title>\n<style>\n{CSS}\n{_PAGE_CSS}\n</style>\n"
        f"</head>\n<body{data}>\n" + "\n".join(part for part in body if part)
        + f"\n<script>\n{SCRIPT}\n</script>\n</body>\n</html>\n"
    )
    _atomic_write_text(path, page)
