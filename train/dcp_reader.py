"""Reading sharded (torch.distributed.checkpoint) checkpoints as data, never code.

torch's own reader does not: ``FileSystemReader.read_metadata`` reads a folder's
``.metadata`` with a plain ``pickle.load``, and ``DefaultLoadPlanner.load_bytes``
reads every non-tensor entry (optimizer ``param_groups`` values, ...) with
``torch.load(weights_only=False)``, so whoever can write into a checkpoint folder
can run code on the next resume (pytorch/pytorch issue 189308, open upstream).
Here:

- ``.metadata`` goes through :class:`MetadataUnpickler`, which resolves only the
  globals that DCP metadata holds (:data:`METADATA_GLOBALS`, read off our own
  saves; tests/trainer/test_checkpoint_dcp_safety.py checks a real trainer save against it);
- non-tensor entries go through ``torch.load(weights_only=True)``
  (:class:`SafeLoadPlanner`); tensor entries already do in torch's reader;
- :func:`verify` reads every entry of a folder once, as data, so that a resume
  can tell a complete checkpoint from a truncated or corrupt one before any rank
  starts loading.

A refused global raises :class:`UnsafeCheckpointError` naming the file and the
global; nothing is called.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata, StorageMeta

METADATA_FILE = ".metadata"

# (module, name) of every global a DCP .metadata of ours holds (torch 2.11-2.14),
# besides torch's dtypes, which are allowed by type (any ``torch.<name>`` that is a
# torch.dtype): the metadata dataclasses, the storage index of the filesystem
# writer, torch.Size, the checkpoint's path and the layout lookup that TensorProperties
# pickles. Each is a constructor or a lookup without side effects.
METADATA_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    ("torch.distributed.checkpoint.metadata", "Metadata"),
    ("torch.distributed.checkpoint.metadata", "MetadataIndex"),
    ("torch.distributed.checkpoint.metadata", "StorageMeta"),
    ("torch.distributed.checkpoint.metadata", "TensorStorageMetadata"),
    ("torch.distributed.checkpoint.metadata", "ChunkStorageMetadata"),
    ("torch.distributed.checkpoint.metadata", "TensorProperties"),
    ("torch.distributed.checkpoint.metadata", "BytesStorageMetadata"),
    ("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("pathlib", "PosixPath"),  # StorageMeta.checkpoint_id; constructing a path touches no file
    ("torch.serialization", "_get_layout"),  # a name -> torch.layout lookup in a fixed table
})


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds something that is not plain data (it could run code): refused, nothing ran."""


def _is_torch_dtype(module: str, name: str) -> bool:
    return module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)


class MetadataUnpickler(pickle.Unpickler):
    """Resolves only :data:`METADATA_GLOBALS` and torch dtypes; any other global is refused."""

    def __init__(self, file, path: str):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in METADATA_GLOBALS or _is_torch_dtype(module, name):
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"{self.path}: refused to load the global {module}.{name}: a sharded checkpoint's metadata holds only "
            f"torch.distributed.checkpoint metadata types; this file was not written by torch.distributed.checkpoint "
            f"or was tampered with")


def read_metadata(path: str, filename: str = METADATA_FILE) -> Metadata:
    """A checkpoint folder's ``.metadata`` (or a per-rank ``__N.metadata``), unpickled
    with :class:`MetadataUnpickler`."""
    file = os.path.join(path, filename)
    with open(file, "rb") as f:
        metadata = MetadataUnpickler(f, file).load()
    if not isinstance(metadata, Metadata):
        raise UnsafeCheckpointError(f"{file}: holds a {type(metadata).__name__}, not torch.distributed.checkpoint "
                                    f"Metadata")
    return metadata


def load_weights_only(stream: io.IOBase, where: str) -> Any:
    """``torch.load(weights_only=True)``; its refusal becomes an UnsafeCheckpointError naming ``where``."""
    try:
        return torch.load(stream, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            # torch's message is a page long; the line that names what was refused is the one a user needs.
            lines = [ln.strip() for ln in str(exc).splitlines() if "WeightsUnpickler error" in ln]
            refused = lines[0].split("WeightsUnpickler error:", 1)[1].split(" Please use")[0].strip() if lines \
                else "an object that is not data"
            raise UnsafeCheckpointError(f"{where}: refused by torch.load(weights_only=True): {refused}; "
                                        f"nothing ran") from None
        raise


class SafeFileSystemReader(FileSystemReader):
    """torch's FileSystemReader with ``.metadata`` read by :class:`MetadataUnpickler`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")  # set: a per-rank metadata file of a no-collectives save
        metadata = read_metadata(str(self.path), METADATA_FILE if rank is None else f"__{rank}{METADATA_FILE}")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """torch's DefaultLoadPlanner with non-tensor entries read by ``torch.load(weights_only=True)``."""

    def __init__(self, path: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.path = path

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        obj = load_weights_only(value, f"{self.path} (entry {fqn})")
        if self.flatten_state_dict:  # as DefaultLoadPlanner.load_bytes does
            set_element(self.original_state_dict, self.mappings[fqn], obj)
        else:
            self.state_dict[fqn] = obj


def load(state_dict: dict[str, Any], path: str) -> None:
    """``torch.distributed.checkpoint.load`` of ``path`` into ``state_dict`` (in place), as data only.
    Every rank of the job calls it, as with torch's."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    read_metadata(path)  # a refusal here raises as itself (inside dcp.load it becomes an AssertionError's text)
    try:
        dcp.load(state_dict, storage_reader=SafeFileSystemReader(path), planner=SafeLoadPlanner(path))
    except CheckpointException as wrapped:
        # DCP wraps every rank's failure in a BaseException; hand the caller the
        # first one itself (UnsafeCheckpointError first), so that it can be caught.
        failures = [exc for exc, _ in wrapped.failures.values()]
        first = next((e for e in failures if isinstance(e, UnsafeCheckpointError)), failures[0] if failures else None)
        if isinstance(first, Exception):
            raise first from wrapped
        raise


def verify(path: str) -> Metadata:
    """Reads every entry of the checkpoint folder ``path`` once, each as data, one at a time
    (memory: the largest entry). Raises UnsafeCheckpointError for a refused object, another
    exception (OSError, EOFError, RuntimeError, ValueError, ...) for a missing, truncated or
    corrupt file; returns the metadata of a complete folder."""
    metadata = read_metadata(path)
    storage = metadata.storage_data
    if not isinstance(storage, dict) or not storage:
        raise ValueError(f"{path}: the metadata lists no stored entries")
    transforms = SafeFileSystemReader(path).transforms
    by_file: dict[str, list] = {}
    for index, info in storage.items():
        if os.path.dirname(os.path.normpath(info.relative_path)) or info.relative_path.startswith("."):
            raise ValueError(f"{path}: the metadata names a file outside the folder: {info.relative_path!r}")
        by_file.setdefault(info.relative_path, []).append((info.offset, index, info))
    for relative_path, entries in by_file.items():
        file = os.path.join(path, relative_path)
        size = os.path.getsize(file)
        with open(file, "rb") as f:  # one open per shard file, its entries in file order
            for offset, index, info in sorted(entries, key=lambda e: e[0]):
                if offset < 0 or info.length < 0 or offset + info.length > size:
                    raise EOFError(f"{file}: truncated ({size} bytes; entry {index.fqn} needs bytes "
                                   f"{offset}..{offset + info.length})")
                f.seek(offset)
                raw = io.BytesIO(f.read(info.length))
                stream = transforms.transform_load_stream(None, info.transform_descriptors or (), raw)
                obj = load_weights_only(io.BytesIO(stream.read(-1)), f"{file} (entry {index.fqn})")
                expected = metadata.state_dict_metadata.get(index.fqn)
                if expected is None:
                    raise ValueError(f"{file}: entry {index.fqn} is not in the metadata's state dict")
                if not isinstance(expected, BytesStorageMetadata) and not isinstance(obj, torch.Tensor):
                    raise ValueError(f"{file}: entry {index.fqn} should be a tensor, holds a {type(obj).__name__}")
    return metadata
