#!/bin/bash
# Here, before the device call of scripts/gpu/run.sh: the footage as H.264 of the frames stan train
# caches, and imageio-ffmpeg's Python code without its 170 MB ffmpeg (the GPU machine decodes with
# OpenCV; stan imports imageio_ffmpeg but never calls its ffmpeg there). Output: gpu-data/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v stan > /dev/null || . .venv/bin/activate
test -e gpu-data && { echo "gpu-data/ is there already: remove it first (rm -r gpu-data)"; exit 1; }
python scripts/gpu/footage.py encode ../shared/data/ped1/training/frames gpu-data/ped1-train
python scripts/gpu/footage.py encode ../shared/data/ped2/training/frames gpu-data/ped2-train
src=$(python -c "import imageio_ffmpeg, os; print(os.path.dirname(imageio_ffmpeg.__file__))")
mkdir -p gpu-data/py/imageio_ffmpeg/binaries
cp "$src"/*.py gpu-data/py/imageio_ffmpeg/
cp "$src"/binaries/__init__.py gpu-data/py/imageio_ffmpeg/binaries/
du -sh gpu-data; echo "tracked files: $(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) bytes (with gpu-data: at most 64 MiB)"
