"""Training footage for a lent GPU, small enough to travel, and `stan train`'s frame cache made from it there.

A device call carries at most 64 MiB with the working tree (48 MiB of it, the shipped weights),
and the GPU machine has no ffmpeg binary (the imageio-ffmpeg wheel holds one of 170 MB). So the
footage travels as what `stan train` would decode it into, the (N, 224, 224) grey frames of its
frame cache, encoded as grey H.264 (crf 14: about 0.9 MB for a 200-frame Ped1 clip), and there it
is decoded with OpenCV (in the GPU image) straight into the run's frame cache, under the manifest
`stan train` itself would write, so the run finds every clip decoded and never calls ffmpeg:

    python scripts/gpu/footage.py encode ../shared/data/ped1/training/frames gpu-data/ped1-train   # here
    python scripts/gpu/footage.py fill gpu-data/ped1-train RUN.safetensors.ckpt                     # there

`encode` writes NN.mp4 per clip (the clips' names kept, so training and validation clips are the
same ones) and prints the mean absolute difference to the cached frames after the round trip.
`fill` also works with a `--checkpoint-dir`: give the folder the run will use.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SIZE = 224  # the paper's input, every shipped config's image_size
CRF = "16"


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
        errors = []
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
    size = sum(p.stat().st_size for p in out.glob("*.mp4"))
    print(f"{out}: {len(clips)} clips, {size / 2**20:.1f} MiB; mean |decoded - cached| {np.mean(errors):.2f} grey levels")


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
    from stan_cli.dataset import _fingerprint, _npy_header, find_sources

    cache = ckpt_dir / "frames"
    cache.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for index, source in enumerate(find_sources(footage)):
        key = f"{index:04d}"
        frames = _decode(source)
        with open(cache / f"{key}.npy", "wb") as fh:
            fh.write(_npy_header(frames.shape))
            fh.write(np.ascontiguousarray(frames).tobytes())
        manifest[key] = {"entry": {"source": _fingerprint(source), "size": SIZE}}
    (cache / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"{cache}: {len(manifest)} clips decoded")


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("encode", "fill"):
        sys.exit(__doc__)
    {"encode": encode, "fill": fill}[sys.argv[1]](Path(sys.argv[2]), Path(sys.argv[3]))
