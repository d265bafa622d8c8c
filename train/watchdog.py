"""A progress watchdog for multi-rank training.

When a peer hangs or is frozen (a stopped process, a dead node whose TCP
connections never close), the other ranks wait inside a collective. NCCL and
Gloo time out on their own, but Horovod's MPI controller blocks in MPI and its
stall inspector never runs, so the job would wait forever. The trainer beats
the watchdog at every step, validation batch and checkpoint; after `timeout_s`
seconds without a beat it prints why and ends the process with exit code 3,
which makes mpirun/horovodrun/torchrun end (or restart) the whole job.
"""

from __future__ import annotations

import os
import sys
import threading
import time

EXIT_CODE = 3


class Watchdog:
    def __init__(self, timeout_s: float, rank: int = 0):
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = float(timeout_s)
        self.rank = rank
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress-watchdog", daemon=True)

    def start(self) -> "Watchdog":
        self.beat()
        self._thread.start()
        return self

    def beat(self) -> None:
        self._last = time.monotonic()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(min(5.0, self.timeout_s / 4)):
            idle = time.monotonic() - self._last
            if idle > self.timeout_s:
                sys.stderr.write(
                    f"error: rank {self.rank}: no training progress for {idle:.0f} s (--dist-timeout "
                    f"{self.timeout_s:g}): a peer rank stopped answering; exiting so the launcher ends the job\n")
                sys.stderr.flush()
                os._exit(EXIT_CODE)
