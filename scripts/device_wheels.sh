#!/usr/bin/env bash
# Wheels of prn's dependencies that a GPU machine with PyTorch but no network lacks (Python 3.12, x86-64
# manylinux), into .whl/ for benchmarks/device_check.sh to install there. The versions are those this
# project's .venv resolved; the GPU image already has numpy, scipy, scikit-image, Pillow, OpenCV, fsspec,
# PyYAML and the rest (Typer, click and rich are carried anyway: the CLI wants their versions here).
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-.venv/bin/pip}
mkdir -p .whl
ver() { $PIP show "$1" 2>/dev/null | sed -n 's/^Version: //p'; }
for name in zarr numcodecs donfig google-crc32c dask distributed partd locket tblib zict tornado imagecodecs \
    typer click rich annotated-doc shellingham; do
  v=$(ver "$name")
  spec=$name${v:+==$v}
  $PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$spec" 2>&1 | grep -v "is ignored" || true
done
du -sh .whl
