"""The tuning knobs' defaults as the docs state them (README, docs/api.md,
docs/ARCHITECTURE.md, `python -m lars_cuda`'s switch table) equal the code's,
read from the C++ that owns each. Needs the source tree (skipped in the wheel test)."""

from __future__ import annotations

import pathlib
import re

import pytest

from lars_cuda.diagnostics import ENV_SWITCHES

from ..support import paths

ROOT = pathlib.Path(paths.ROOT)
pytestmark = pytest.mark.skipif(not (ROOT / "csrc").is_dir(), reason="needs the source tree")

# switch: (the file that owns its default, the pattern that reads it there)
OWNERS = {
    "LARS_CUDA_CPU_WAVE_MB": ("csrc/cpu/lars_cpu_kernel.h", r"int64_t\((\d+)\) << 20"),
    "LARS_CUDA_WAVE_MB": ("csrc/launch_config.h", r"int64_t wave_bytes = (\d+);"),
    "LARS_CUDA_BLOCKS_PER_SM": ("csrc/launch_config.h", r"int64_t blocks_per_sm = (\d+);"),
}
# switch: where the docs state its default, as (file, pattern)
STATED = {
    "LARS_CUDA_CPU_WAVE_MB": [("README.md", r"`LARS_CUDA_CPU_WAVE_MB` \(default (\d+)"),
                              ("docs/api.md", r"`LARS_CUDA_CPU_WAVE_MB` the wave\s+size \(default (\d+)\)"),
                              ("docs/ARCHITECTURE.md", r"LARS_CUDA_CPU_WAVE_MB, default (\d+) MiB"),
                              ("docs/ARCHITECTURE.md", r"params\+grads fit in (\d+) MiB")],
    "LARS_CUDA_WAVE_MB": [("docs/api.md", r"`LARS_CUDA_WAVE_MB` cuts the step into L2-sized waves\s+\(default (\d+)")],
    "LARS_CUDA_BLOCKS_PER_SM": [("docs/api.md", r"`LARS_CUDA_BLOCKS_PER_SM` caps the grid \(default (\d+)\)")],
}


def _read(rel: str, pattern: str) -> list[str]:
    found = re.findall(pattern, (ROOT / rel).read_text())
    assert found, f"{rel} no longer states it as {pattern!r}"
    return found


@pytest.mark.parametrize("switch", OWNERS)
def test_the_docs_state_each_knobs_default_as_the_code_sets_it(switch):
    (code_default,) = _read(*OWNERS[switch])
    for rel, pattern in STATED[switch]:
        assert set(_read(rel, pattern)) == {code_default}, f"{rel} states another default for {switch}"
    table = re.findall(r"\(default (\d+)", ENV_SWITCHES[switch])
    assert table == [code_default], f"diagnostics.ENV_SWITCHES[{switch!r}] = {ENV_SWITCHES[switch]!r}"
