"""Make a folder that holds only the named distributions of this environment and what
they require (symbolic links to their installed files), for the wheel test's fresh
venv: it gets torch without a 5 GB copy, and nothing else of the project's venv.

    python scripts/link_distributions.py TARGET torch pytest hypothesis ...
"""

from __future__ import annotations

import os
import sys
from importlib import metadata

from packaging.requirements import Requirement


def closure(names: list[str]) -> dict[str, metadata.Distribution]:
    """The distributions named and, recursively, those they require (no extras)."""
    found: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional requirement of another platform
        found[key] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return found


def top_level_entries(dist: metadata.Distribution) -> set[str]:
    """The files and folders a distribution put directly into site-packages."""
    entries = set()
    for f in dist.files or []:
        first = f.parts[0]
        if first not in ("..", "__pycache__"):
            entries.add(first)
    return entries


def main() -> None:
    target, names = sys.argv[1], sys.argv[2:]
    os.makedirs(target, exist_ok=True)
    dists = closure(names)
    for dist in dists.values():
        site = str(dist.locate_file(""))
        for entry in top_level_entries(dist):
            src, dst = os.path.join(site, entry), os.path.join(target, entry)
            if os.path.exists(src) and not os.path.lexists(dst):
                os.symlink(src, dst)
    print(f"linked {len(dists)} distributions: {', '.join(sorted(dists))}")


if __name__ == "__main__":
    main()
