#!/usr/bin/env bash
# Builds Horovod 0.28.1 (its last release) against the venv's torch, with MPI and
# Gloo. Torch >= 2.10 headers need C++20, while Horovod 0.28.1 asks for C++14 in
# two CMakeLists, so the sdist is patched before the build. Takes ~3 minutes.
# Usage: install_horovod.sh PYTHON
set -euo pipefail
PY=${1:-.venv/bin/python}
if "$PY" -c "import horovod.torch" >/dev/null 2>&1; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -m pip download -q --no-deps --no-binary :all: -d "$work" horovod==0.28.1
tar -xzf "$work"/horovod-0.28.1.tar.gz -C "$work"
src="$work/horovod-0.28.1"
sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 20)/' "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
grep -q 'CMAKE_CXX_STANDARD 20' "$src/horovod/torch/CMakeLists.txt"
if [ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ]; then
  export CUDA_HOME=/usr/local/cuda
fi
export HOROVOD_CUDA_HOME=${HOROVOD_CUDA_HOME:-${CUDA_HOME:-}}
export HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITH_PYTORCH=1
export HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
export MAKEFLAGS="-j$(nproc)"
echo "install_horovod.sh: building Horovod 0.28.1 (a few minutes)"
"$PY" -m pip install -q --no-build-isolation "$src" > "$work/build.log" 2>&1 || { tail -50 "$work/build.log"; exit 1; }
"$PY" -c "import horovod.torch as hvd; print('horovod', hvd.__version__ if hasattr(hvd, '__version__') else '0.28.1', 'built')"
