#!/usr/bin/env bash
# make wheel-test: build the wheel as a user would (`pip wheel --no-build-isolation`),
# install it into a fresh venv that holds only torch (with what torch needs) and the
# test requirements, and run the package's tests against the installed copy from a
# folder that holds only the tests (so nothing can be imported from the source tree).
#
# The wheel is the CPU-only build (LARS_CUDA_FORCE_CPU=1) to keep CI time down: the
# CUDA build is compiled by `make setup` and tested by the main suite. torch is
# linked into the fresh venv from the project's venv (scripts/link_distributions.py)
# instead of copied: a copy of the CUDA build of torch is 5.5 GB.
set -euo pipefail
PY=${1:-.venv/bin/python}
UNIT=${2:-tests/unit}  # the unit layer (the Makefile's UNIT)
ROOT=$(pwd)
OUT=$ROOT/.wheel-test
rm -rf "$OUT"
mkdir -p "$OUT/src" "$OUT/dist" "$OUT/run"

# 1. The wheel, from a copy of the tracked and untracked (not ignored) files, so the
#    build leaves the checkout and its editable build as they are.
git ls-files -co --exclude-standard -z | xargs -0 -I{} cp --parents {} "$OUT/src/" 2>/dev/null || true
(cd "$OUT/src" && LARS_CUDA_FORCE_CPU=1 MAX_JOBS=${MAX_JOBS:-2} \
  "$ROOT/$PY" -m pip wheel -q --no-build-isolation --no-deps -w "$OUT/dist" .)
WHEEL=$(ls "$OUT"/dist/lars_cuda-*.whl)
echo "wheel-test: built $(basename "$WHEEL")"
"$ROOT/$PY" - "$WHEEL" <<'PYEOF'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
need = {"lars_cuda/__init__.py", "lars_cuda/__main__.py", "lars_cuda/_build_info.json", "lars_cuda/_version.py"}
missing = need - names
so = [n for n in names if n.startswith("lars_cuda/_C") and n.endswith(".so")]
assert not missing and so, f"the wheel lacks {sorted(missing)} {'' if so else 'and the _C library'}"
assert any(n.endswith("/licenses/LICENSE") or n.endswith("/LICENSE") for n in names), "no LICENSE in the wheel"
PYEOF

# 2. A fresh venv: only torch and the test requirements, then the wheel.
python3 -m venv "$OUT/venv"
SITE=$("$OUT/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
"$ROOT/$PY" scripts/link_distributions.py "$OUT/linked" torch pytest hypothesis expecttest timm packaging
echo "$OUT/linked" > "$SITE/torch-and-test-requirements.pth"
"$OUT/venv/bin/python" -m pip install -q --no-deps --no-index "$WHEEL"

# 3. The package's tests, from a folder without the package, against site-packages.
cp -r tests pytest.ini "$OUT/run/"
mkdir -p "$OUT/run/benchmarks" && cp benchmarks/originals.py benchmarks/param_sets.py "$OUT/run/benchmarks/"
cd "$OUT/run"
"$OUT/venv/bin/python" -m lars_cuda
LARS_CUDA_TEST_INSTALLED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} "$OUT/venv/bin/python" -m pytest -q -p no:cacheprovider \
  "$UNIT" tests/integration/test_diagnostics.py tests/integration/test_sharded.py
