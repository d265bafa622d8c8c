"""Where a warning of ours points: at the user's line, not at our frames."""

from __future__ import annotations

import os
import sys

import torch

__all__ = ["user_stacklevel"]

_OUR_FOLDERS = tuple(os.path.dirname(os.path.abspath(f)) + os.sep for f in (__file__, torch.__file__))


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning of our caller point at the user's line:
    the first frame outside lars_cuda and torch (whose hooks, ``no_grad`` and
    GradScaler wrap ``step``), however deep the step's call chain is."""
    level, frame = 2, sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(_OUR_FOLDERS):
        level, frame = level + 1, frame.f_back
    return level
