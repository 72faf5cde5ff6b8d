"""Training footage for a lent GPU, small enough to travel, and `stan train`'s frame cache made from it there.

A device call carries at most 64 MiB with the working tree (48 MiB of it, the shipped weights),
and the GPU machine has no ffmpeg binary (the imageio-ffmpeg wheel holds one of 170 MB). So the
footage travels as what `stan train` would decode it into, the (N, 224, 224) grey frames of its
frame cache, encoded as H.264 (crf 16, full-range 4:2:0 with grey chroma: about 0.7 MB for a 200-frame Ped1 clip), and there it
is decoded with OpenCV (in the GPU image) straight into the run's frame cache, under the manifest
`stan train` itself would write, so the run finds every clip decoded and never calls ffmpeg:

    python scripts/gpu/footage.py encode ../shared/data/ped1/training/frames gpu-data/ped1-train   # here
    python scripts/gpu/footage.py fill gpu-data/ped1-train RUN.safetensors.ckpt                     # there

`encode` writes NN.mp4 per clip (the clips' names kept, so training and validation clips are the
same ones) and prints the mean absolute difference to the cached frames after the round trip.
`fill` also works with a `--checkpoint-dir`: give the folder the run will use.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SIZE = 224  # the paper's input, every shipped config's image_size
CRF = "16"
CHECKS = "checks.json"  # not footage: find_sources takes images and videos only


def encode(footage: Path, out: Path) -> None:
    import imageio_ffmpeg

    from stan_cli.dataset import find_sources, load_clips

    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    out.mkdir(parents=True, exist_ok=False)  # never over an earlier folder
    with tempfile.TemporaryDirectory() as cache:
        clips = load_clips(footage, SIZE, Path(cache))
        sources = find_sources(footage)
        if len(clips) != len(sources):
            sys.exit(f"{footage}: {len(sources) - len(clips)} clip(s) could not be read; encode readable footage only")
        errors, checks = [], {}
        for clip in clips:
            target = out / f"{Path(clip.name).stem}.mp4"
            frames = np.ascontiguousarray(clip.frames)
            subprocess.run(
                [ffmpeg, "-v", "error", "-f", "rawvideo", "-pix_fmt", "gray", "-s", f"{SIZE}x{SIZE}", "-r", "10",
                 "-i", "-", "-c:v", "libx264", "-crf", CRF, "-preset", "medium", "-pix_fmt", "gray", str(target)],
                input=frames.tobytes(), check=True,
            )
            back = _decode_ffmpeg(ffmpeg, target, len(frames))
            errors.append(float(np.abs(back.astype(np.int16) - frames).mean()))
            checks[target.name] = {"frames": len(back), "sha256": _digest(back), "mean": float(back.mean())}
    (out / CHECKS).write_text(json.dumps(checks, indent=1))
    size = sum(p.stat().st_size for p in out.glob("*.mp4"))
    print(f"{out}: {len(clips)} clips, {size / 2**20:.1f} MiB; mean |decoded - cached| {np.mean(errors):.2f} grey levels")


def _digest(frames: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(frames, dtype=np.uint8).tobytes()).hexdigest()


def _checked(path: Path, checks: dict) -> np.ndarray:
    """The clip decoded here, refused unless it is the very frames encode checked."""
    frames, want = _decode(path), checks.get(path.name)
    if want is None:
        sys.exit(f"{path}: not in {CHECKS}; encode the footage again with footage.py encode")
    if len(frames) != want["frames"] or _digest(frames) != want["sha256"]:
        sys.exit(f"{path}: decoded {len(frames)} frames (mean {frames.mean():.2f}), not the {want['frames']} "
                 f"encode checked (mean {want['mean']:.2f}); this decoder reads the clip otherwise")
    return frames


def check(footage: Path) -> None:
    from stan_cli.dataset import find_sources

    checks = json.loads((footage / CHECKS).read_text())
    sources = find_sources(footage)
    if sorted(p.name for p in sources) != sorted(checks):
        sys.exit(f"{footage}: the clips are not the ones {CHECKS} lists")
    for source in sources:
        _checked(source, checks)
    print(f"{footage}: {len(sources)} clips decode to the frames checked when they were encoded")


def _decode_ffmpeg(ffmpeg: str, path: Path, count: int) -> np.ndarray:
    raw = subprocess.run([ffmpeg, "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "gray", "-"],
                         capture_output=True, check=True).stdout
    frames = np.frombuffer(raw, np.uint8).reshape(-1, SIZE, SIZE)
    if count >= 0 and len(frames) != count:
        sys.exit(f"{path}: {len(frames)} frames decoded, {count} encoded")
    return frames


def _decode(path: Path) -> np.ndarray:
    """OpenCV where it is (the GPU image has no ffmpeg binary), else ffmpeg (here, to test `fill`)."""
    try:
        import cv2
    except ImportError:
        import imageio_ffmpeg

        return _decode_ffmpeg(imageio_ffmpeg.get_ffmpeg_exe(), path, -1)

    video, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, frame = video.read()
        if not ok:
            break
        frames.append(frame[..., 0] if frame.ndim == 3 else frame)  # grey H.264 comes back as equal B, G, R
    video.release()
    if not frames or frames[0].shape != (SIZE, SIZE):
        sys.exit(f"{path}: OpenCV decoded {len(frames)} frames of {frames[0].shape if frames else '-'}, not {SIZE} x {SIZE}")
    return np.stack(frames)


def fill(footage: Path, ckpt_dir: Path) -> None:
    """The run's frame cache (`<ckpt_dir>/frames`), as `dataset.load_clips` writes it, from the H.264 clips."""
    from stan_cli.dataset import _fingerprint, find_sources

    checks = json.loads((footage / CHECKS).read_text())
    cache = ckpt_dir / "frames"
    cache.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for index, source in enumerate(find_sources(footage)):
        key = f"{index:04d}"
        frames = _checked(source, checks)
        np.save(cache / f"{key}.npy", np.ascontiguousarray(frames))
        manifest[key] = {"entry": {"source": _fingerprint(source), "size": SIZE}}
    (cache / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"{cache}: {len(manifest)} clips decoded")


if __name__ == "__main__":
    verbs = {"encode": (encode, 4), "check": (check, 3), "fill": (fill, 4)}
    if len(sys.argv) < 2 or sys.argv[1] not in verbs or len(sys.argv) != verbs[sys.argv[1]][1]:
        sys.exit(__doc__)
    verbs[sys.argv[1]][0](*(Path(a) for a in sys.argv[2:]))
