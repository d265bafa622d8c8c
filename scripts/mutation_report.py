"""Summarises `mutmut results --all true` output: killed / survived / no tests per
module and the mutation score of lars_cuda/ (the issue's target: >= 90 % killed).

    python scripts/mutation_report.py mutmut-results.txt"""

from __future__ import annotations

import collections
import sys


def main(path: str) -> int:
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in open(path, encoding="utf-8"):
        name, sep, status = line.strip().rpartition(": ")
        if not sep:
            continue
        module = ".".join(name.split(".")[:2])
        counts[module][status] += 1
    total = collections.Counter()
    print(f"{'module':28} {'killed':>7} {'survived':>9} {'no tests':>9} {'timeout':>8} {'score':>7}")
    for module in sorted(counts):
        c = counts[module]
        n = sum(c.values())
        killed = c["killed"] + c["timeout"]
        print(f"{module:28} {c['killed']:7} {c['survived']:9} {c['no tests']:9} {c['timeout']:8} {killed / n:7.1%}")
        if module.startswith("lars_cuda."):
            total += c
    n = sum(total.values())
    score = (total["killed"] + total["timeout"]) / n if n else 0.0
    print(f"lars_cuda/ in all: {total['killed'] + total['timeout']} of {n} mutants killed ({score:.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
