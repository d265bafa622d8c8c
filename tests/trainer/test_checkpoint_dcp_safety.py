"""Sharded (torch.distributed.checkpoint) checkpoints are read as data, never code:
train/dcp_reader.py on a folder that save_dcp_atomic wrote with a real LARS
optimizer state, then tampered with or damaged (tests/support/dcp_tamper.py). The same
attacks on a real ``--fsdp`` trainer checkpoint are in test_trainer_fsdp_safety.py."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

from lars_cuda import Lars
from tests.support import dcp_tamper
from train import checkpoint as ckpt
from train import dcp_reader

FMT = ckpt.dcp_format("checkpoint-{epoch}.pth.tar")


def _model_and_optimizer(seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    opt = Lars(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    model(torch.randn(3, 6)).sum().backward()
    opt.step()
    return model, opt


def _sharded_state(model, opt):
    return {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, opt)}


def _save(log_dir, epoch):
    model, opt = _model_and_optimizer(epoch)
    path = ckpt.checkpoint_path(str(log_dir), FMT, epoch)
    ckpt.save_dcp_atomic(_sharded_state(model, opt), {"epoch": epoch, "step": epoch, "scheduler": {}}, path)
    return path, model, opt


@pytest.fixture
def two_epochs(tmp_path):
    """checkpoint-1.dcp and checkpoint-2.dcp; returns checkpoint-2's path and the marker a payload would create."""
    _save(tmp_path, 1)
    path, _, _ = _save(tmp_path, 2)
    return path, tmp_path / "code-ran"


def test_metadata_globals_are_the_ones_our_saves_hold(two_epochs):
    path, _ = two_epochs
    seen = dcp_tamper.globals_of_metadata(path)
    dtypes = {(m, n) for m, n in seen if m == "torch" and isinstance(getattr(torch, n), torch.dtype)}
    assert seen - dtypes == dcp_reader.METADATA_GLOBALS


def test_an_untampered_folder_loads_the_state_that_was_saved(tmp_path):
    path, model, opt = _save(tmp_path, 1)
    fresh_model, fresh_opt = _model_and_optimizer(seed=99)
    into = _sharded_state(fresh_model, fresh_opt)
    ckpt.load_dcp_shards(into, path)
    for key, value in _sharded_state(model, opt)["model"].items():
        assert torch.equal(into["model"][key], value)
    saved_opt = _sharded_state(model, opt)["optimizer"]
    assert into["optimizer"]["param_groups"] == saved_opt["param_groups"]
    for fqn, state in saved_opt["state"].items():
        assert torch.equal(into["optimizer"]["state"][fqn]["momentum_buffer"], state["momentum_buffer"])


@pytest.mark.parametrize("reader", ["load_dcp_shards", "verify_dcp", "latest_valid", "load_for_resume"])
def test_metadata_that_would_run_code_is_refused_naming_file_and_global(two_epochs, reader):
    path, marker = two_epochs
    dcp_tamper.replace_metadata_with_code(path, marker)
    with pytest.raises(ckpt.UnsafeCheckpointError, match=r"\.metadata: refused to load the global (builtins|io)\.open"):
        _read(reader, path)
    assert not marker.exists()


@pytest.mark.parametrize("reader", ["load_dcp_shards", "verify_dcp", "latest_valid", "load_for_resume"])
def test_a_non_tensor_entry_that_would_run_code_is_refused_naming_file_and_entry(two_epochs, reader):
    path, marker = two_epochs
    dcp_tamper.replace_entry_with_code(path, "optimizer.param_groups.0.lr", marker)
    with pytest.raises(ckpt.UnsafeCheckpointError, match=r"entry optimizer\.param_groups\.0\.lr.*refused"):
        _read(reader, path)
    assert not marker.exists()


def _read(reader, path):
    if reader == "load_dcp_shards":
        ckpt.load_dcp_shards(_sharded_state(*_model_and_optimizer(seed=5)), path)
    elif reader == "verify_dcp":
        ckpt.verify_dcp(path)
    elif reader == "latest_valid":
        ckpt.latest_valid(os.path.dirname(path), FMT, sharded=True)
    else:
        ckpt.load_for_resume(path, sharded=True)


def _damage(path, how):
    if how == "truncated shard":
        dcp_tamper.truncate_largest_shard(path)
    elif how == "corrupt metadata":
        with open(os.path.join(path, ".metadata"), "r+b") as f:
            f.seek(40)
            f.write(b"\x00garbage" * 4)
    elif how == "missing shard":
        os.remove(next(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".distcp")))
    else:  # an empty .metadata: what a crash of a non-atomic writer leaves
        open(os.path.join(path, ".metadata"), "wb").close()


DAMAGE = ["truncated shard", "corrupt metadata", "missing shard", "empty metadata"]


@pytest.mark.parametrize("how", DAMAGE)
def test_resume_auto_falls_back_from_a_damaged_folder_with_one_warning(two_epochs, how):
    path, _ = two_epochs
    _damage(path, how)
    with pytest.warns(UserWarning, match="skipping unreadable checkpoint .*checkpoint-2.dcp") as caught:
        found, state = ckpt.latest_valid(os.path.dirname(path), FMT, sharded=True)
    assert found.endswith("checkpoint-1.dcp") and state["epoch"] == 1
    assert len([w for w in caught if "checkpoint" in str(w.message)]) == 1


@pytest.mark.parametrize("how", DAMAGE)
def test_resume_from_a_named_damaged_folder_is_a_clear_error(two_epochs, how):
    path, _ = two_epochs
    _damage(path, how)
    with pytest.raises(ckpt.CheckpointError, match=f"cannot resume from {path}: "):
        ckpt.load_for_resume(path, sharded=True)


def test_a_named_plain_file_that_is_not_a_trainer_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weights": torch.ones(2)}, path)
    with pytest.raises(ckpt.CheckpointError, match="not a trainer checkpoint"):
        ckpt.load_for_resume(str(path), sharded=False)


def test_a_plain_checkpoint_that_would_run_code_stops_the_auto_resume(tmp_path):
    """A tampered newest file is not skipped in favour of an older one: a person must look."""
    plain = "checkpoint-{epoch}.pth.tar"
    ckpt.save_atomic({"model": {}, "optimizer": {}, "epoch": 1}, ckpt.checkpoint_path(str(tmp_path), plain, 1))
    marker = tmp_path / "code-ran"
    torch.save({"model": {}, "optimizer": {}, "epoch": 2, "x": dcp_tamper.RunsCode(marker)},
               ckpt.checkpoint_path(str(tmp_path), plain, 2))
    with pytest.raises(ckpt.UnsafeCheckpointError, match="checkpoint-2.pth.tar: refused"):
        ckpt.latest_valid(str(tmp_path), plain)
    assert not marker.exists()


def test_the_folder_a_refused_metadata_names_is_outside_nothing(two_epochs):
    """A .metadata that names a file outside its folder (../) is refused before anything is read."""
    path, _ = two_epochs
    metadata = dcp_tamper.read_metadata_trusted(path)
    info = next(iter(metadata.storage_data.values()))
    shutil.copy(os.path.join(path, info.relative_path), os.path.join(os.path.dirname(path), "outside.distcp"))
    info.relative_path = "../outside.distcp"
    import pickle

    with open(os.path.join(path, ".metadata"), "wb") as f:
        pickle.dump(metadata, f)
    with pytest.raises(ValueError, match="outside the folder"):
        ckpt.verify_dcp(path)
