"""What an attacker who can write into a sharded checkpoint folder can do to it, for
the tests: replace ``.metadata`` by a pickle that runs code, point one non-tensor
entry at such a pickle, truncate a shard. Each payload creates a marker file when
unpickled, so a test can see whether anything ran."""

from __future__ import annotations

import os
import pickle

import torch

METADATA = ".metadata"


class RunsCode:
    """Unpickling this creates ``marker`` (it could as well run ``os.system``)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def read_metadata_trusted(folder):
    """The .metadata of a folder we just wrote ourselves (a plain pickle.load: tests only)."""
    with open(os.path.join(folder, METADATA), "rb") as f:
        return pickle.load(f)


def globals_of_metadata(folder) -> set[tuple[str, str]]:
    """Every (module, name) global the folder's .metadata resolves."""
    seen = set()

    class Recording(pickle.Unpickler):
        def find_class(self, module, name):
            seen.add((module, name))
            return super().find_class(module, name)

    with open(os.path.join(folder, METADATA), "rb") as f:
        Recording(f).load()
    return seen


def replace_metadata_with_code(folder, marker):
    with open(os.path.join(folder, METADATA), "wb") as f:
        pickle.dump(RunsCode(marker), f)


def replace_entry_with_code(folder, fqn, marker):
    """Points the non-tensor entry ``fqn`` at a torch.save'd object that runs code,
    leaving the rest of the metadata as DCP wrote it."""
    metadata = read_metadata_trusted(folder)
    index = next(i for i in metadata.storage_data if i.fqn == fqn)
    evil = os.path.join(folder, "__evil.distcp")
    torch.save({"value": RunsCode(marker)}, evil)
    info = metadata.storage_data[index]
    info.relative_path, info.offset, info.length = "__evil.distcp", 0, os.path.getsize(evil)
    with open(os.path.join(folder, METADATA), "wb") as f:
        pickle.dump(metadata, f)


def truncate_largest_shard(folder):
    shards = [os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".distcp")]
    largest = max(shards, key=os.path.getsize)
    with open(largest, "r+b") as f:
        f.truncate(os.path.getsize(largest) // 2)
    return largest
