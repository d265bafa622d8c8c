"""What was built, why the compiled library did not load, and the one command
that rebuilds it. A leaf module (it imports nothing of lars_cuda): ``ops`` reads
it when the library fails to load, ``diagnostics`` when it reports.

The build's facts come from ``lars_cuda/_build_info.json``, written by setup.py
at build time, so that they can be reported even when the compiled library no
longer loads (a torch upgraded after the build: "undefined symbol").
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Optional

import torch

__all__ = ["PACKAGE_DIR", "build_info", "load_failure", "rebuild_command"]

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def build_info() -> Optional[dict[str, Any]]:
    """The facts setup.py recorded at build time, or None (a source tree never built)."""
    path = os.path.join(PACKAGE_DIR, "_build_info.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _source_folder() -> Optional[str]:
    info = build_info()
    candidates = [info.get("source")] if info else []
    candidates.append(os.path.dirname(PACKAGE_DIR))  # a source checkout imported in place
    for folder in candidates:
        if folder and os.path.isfile(os.path.join(folder, "setup.py")) and os.path.isfile(
                os.path.join(folder, "pyproject.toml")):
            return folder
    return None


def rebuild_command(cuda_arch: Optional[str] = None) -> str:
    """The command that rebuilds the extension against the torch that runs now;
    with ``cuda_arch`` ("10.0"), for that card's architecture."""
    arch = f"TORCH_CUDA_ARCH_LIST={cuda_arch} " if cuda_arch else ""
    pip = f"{arch}{sys.executable} -m pip install --no-build-isolation --no-deps"
    source = _source_folder()
    if source is None:
        return f"{pip} --force-reinstall <the lars_cuda source folder>"
    if os.path.realpath(os.path.join(source, "lars_cuda")) == os.path.realpath(PACKAGE_DIR):
        return f"{pip} -e {source}"  # imported from the source tree: an editable or in-place build
    return f"{pip} --force-reinstall {source}"


def load_failure(error: BaseException) -> str:
    """Why ``lars_cuda._C`` did not load, in a user's words, with what to do."""
    info = build_info()
    text = str(error)
    if isinstance(error, ModuleNotFoundError) and getattr(error, "name", "") == "lars_cuda._C":
        why = "the compiled extension was never built here"
    elif "undefined symbol" in text and info and info.get("torch") != torch.__version__:
        why = (f"it was built against torch {info['torch']} and this is torch {torch.__version__} "
               f"(torch's C++ ABI changes between releases)")
    else:
        why = "the compiled library failed to load"
    return f"{why}: {type(error).__name__}: {text}; rebuild it with: {rebuild_command()}"
