"""The report page in a real browser: headless Chromium loads a generated report from disk.

A copy of index.html with a probe script appended (the page's own script untouched) drives the
page the way a reviewer would: it waits for both overlay videos and the segment clip to load,
clicks the first segment row, then the curve, and writes what it saw into the DOM, which
`chromium --dump-dom` prints after a virtual-time budget. No driver or websocket: only the
browser's command line.

Skips, saying why, where no Chromium can be found (`STAN_CHROMIUM` names one); `.ci/run`
installs Debian's package and sets STAN_REQUIRE_BROWSER=1, which turns that skip into a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from stan_cli.detect import detect

pytestmark = pytest.mark.usefixtures("one_thread")

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")

PROBE = """
<script>
// The segment's clip gets a video element while the page is parsed, so that, like the overlay
// videos, it holds back the load event while it loads: the browser's media pipeline runs in real
// time, the probe's timers in the virtual time of --virtual-time-budget, and a clip created after
// load could lose a race against them on a busy machine.
const clip = document.createElement("video");
clip.preload = "auto";
clip.muted = true;
clip.hidden = true;
clip.src = document.querySelector("tr.segment a").getAttribute("href");
document.body.appendChild(clip);
window.addEventListener("load", async () => {
  const out = {};
  const until = (target, event) => new Promise((done) => {
    target.addEventListener(event, done, {once: true});
    target.addEventListener("error", () => done("error"), {once: true});
  });
  const videos = [...document.querySelectorAll("video.overlay")];
  const waited = [...videos, clip].map((v) => v.readyState >= 1 ? null : until(v, "loadedmetadata"));
  await Promise.race([Promise.all(waited), new Promise((done) => setTimeout(done, 4000))]);
  out.ready = videos.map((v) => v.readyState);
  out.clip_duration = clip.duration;
  const path = document.querySelector("#curve path.line");
  out.curve_points = (path.getAttribute("d").match(/[ML]/g) || []).length;
  out.curve_length = path.getTotalLength();
  out.curve_box = path.getBBox().width;
  const head = document.getElementById("playhead");
  const row = document.querySelector("tr.segment");
  out.start = Number(row.dataset.start);
  out.fps = Number(document.body.dataset.fps);
  out.head_before = Number(head.getAttribute("x1"));
  const seeked = videos.map((v) => until(v, "seeked"));
  row.click();
  await Promise.race([Promise.all(seeked), new Promise((done) => setTimeout(done, 2000))]);
  out.after_row = videos.map((v) => v.currentTime);
  out.head_after = Number(head.getAttribute("x1"));
  out.row_active = row.classList.contains("active");
  const curve = document.getElementById("curve"), box = curve.getBoundingClientRect();
  const frames = Number(document.body.dataset.frames), left = Number(curve.dataset.left), width = Number(curve.dataset.width);
  const x = (left + (30.5 / frames) * width) / curve.viewBox.baseVal.width * box.width + box.left;  // frame 30
  curve.dispatchEvent(new MouseEvent("click", {clientX: x, clientY: box.top + box.height / 2, bubbles: true}));
  out.after_curve = videos.map((v) => v.currentTime);
  document.dispatchEvent(new KeyboardEvent("keydown", {key: "p", bubbles: true}));
  out.after_p = videos.map((v) => v.currentTime);
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""


def chromium() -> str | None:
    named = os.environ.get("STAN_CHROMIUM")
    return next(filter(None, map(shutil.which, [named] if named else CANDIDATES)), None)


@pytest.fixture(scope="module")
def browser() -> str:
    found = chromium()
    if found is None:
        why = f"no headless Chromium here (looked for {', '.join(CANDIDATES)}; set STAN_CHROMIUM)"
        if os.environ.get("STAN_REQUIRE_BROWSER"):
            pytest.fail(why + ", and STAN_REQUIRE_BROWSER is set: .ci/run installs Debian's chromium")
        pytest.skip(why + ": apt-get install chromium")
    return found


def test_the_page_draws_the_curve_and_a_segment_row_seeks_both_videos(browser, clip_video, tiny_weights, tmp_path):
    out = tmp_path / "report"
    result = detect(clip_video, out=out, weights=tiny_weights, device="cpu")
    assert [(s.start, s.end) for s in result.segments] == [(18, 27)]
    page = (out / "index.html").read_text()
    probe = out / ".probe.html"  # beside index.html, so that its relative links work
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--mute-audio",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=8000", "--dump-dom", probe.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout)
    assert found, f"the probe did not finish: {done.stderr[-2000:]}"
    seen = json.loads(found.group(1).replace("&quot;", '"'))

    fps, start = seen["fps"], seen["start"]
    assert (fps, start) == (10, 18)
    assert seen["curve_points"] >= 20 and seen["curve_length"] > 100 and seen["curve_box"] > 100  # drawn, from the data
    assert seen["ready"] == [4, 4] or min(seen["ready"]) >= 1, "the overlay videos did not load"
    assert seen["clip_duration"] == pytest.approx(3.0, abs=0.15)  # the segment's clip plays: 18-27 and 1 s either side
    for t in seen["after_row"]:  # both videos at the segment's start (the middle of its first frame)
        assert t == pytest.approx(start / fps, abs=0.5 / fps + 1e-3)
    assert seen["row_active"] and seen["head_after"] > seen["head_before"]
    for t in seen["after_curve"]:
        assert t == pytest.approx(30.5 / fps, abs=1e-3)
    for t in seen["after_p"]:  # p: back to the segment before frame 30, the only one
        assert t == pytest.approx((start + 0.5) / fps, abs=1e-3)
