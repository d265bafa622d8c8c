"""train/watchdog.py: a rank that makes no progress ends itself with a message."""

from __future__ import annotations

import subprocess
import sys

import pytest

from train.watchdog import EXIT_CODE, Watchdog
from ..support.paths import ROOT



def run(body: str) -> subprocess.CompletedProcess:
    code = f"import sys, time; sys.path.insert(0, {ROOT!r}); from train.watchdog import Watchdog\n{body}"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_no_beat_for_the_timeout_exits_with_its_code_and_says_why():
    proc = run("w = Watchdog(0.4, rank=1).start()\ntime.sleep(30)")
    assert proc.returncode == EXIT_CODE
    assert "rank 1: no training progress" in proc.stderr


def test_regular_beats_keep_the_process_alive():
    proc = run("w = Watchdog(0.4).start()\nfor _ in range(20):\n    time.sleep(0.05)\n    w.beat()\nw.stop()")
    assert proc.returncode == 0, proc.stderr


def test_a_timeout_that_is_not_positive_is_a_value_error():
    with pytest.raises(ValueError, match="timeout_s"):
        Watchdog(0)
