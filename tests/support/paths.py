"""Where the tests find the repository's files: the one owner of these paths.
(Under ``make wheel-test`` the root is the folder the tests were copied into,
which holds the tests and the two benchmark modules they import, not the package.)"""

from __future__ import annotations

import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCHMARKS = os.path.join(ROOT, "benchmarks")
