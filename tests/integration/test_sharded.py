"""Sharded LARS (DTensor params: FSDP2, HSDP, any Shard/Replicate placement):
the step equals the unsharded step, with ONE all-reduce per step.

The two-rank cases run in one ``torchrun`` launch (tests/support/sharded_worker.py,
gloo on the CPU); each test below asserts one behaviour of its results. The
kernel's two halves (norms, apply) are tested in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import lars_cuda
from lars_cuda import ops
from lars_cuda.functional import fused_lars_groups
from ..support.paths import ROOT

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed")

PATHS = ("default", "fused", "foreach", "reference")
TOL = 1e-6  # relative: the sharded norms add the same squares in another order


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded") / "results.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         os.path.join(ROOT, "tests", "support", "sharded_worker.py"), str(out)],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    return results


def result(two_ranks, name):
    r = two_ranks[name]
    assert "error" not in r, r.get("trace", r["error"])
    return r


# ---- FSDP2 (fully_shard, uneven shards, the seed's grouping) ---------------------

@pytest.mark.parametrize("nesterov", ["plain", "nesterov"])
@pytest.mark.parametrize("path", PATHS)
def test_fsdp_seed_grouping_step_equals_unsharded_step(two_ranks, path, nesterov):
    r = result(two_ranks, f"seed_{path}_{nesterov}")
    assert r["err"] < TOL


@pytest.mark.parametrize("path", PATHS)
def test_fsdp_step_is_one_collective(two_ranks, path):
    r = result(two_ranks, f"seed_{path}_plain")
    assert r["collectives"] == [1, 1, 1]


def test_fused_sharded_step_is_bit_identical_to_unsharded_on_two_ranks(two_ranks):
    # float64 sums of float32 squares: exact here, whatever order the ranks add them in
    assert result(two_ranks, "seed_fused_plain")["err"] == 0.0


def test_fsdp_forward_backward_matches_unsharded_model(two_ranks):
    assert result(two_ranks, "fsdp_forward_backward")["err"] < 1e-5


# ---- other meshes and placements ---------------------------------------------------

@pytest.mark.parametrize("mesh", ["hsdp_1x2", "hsdp_2x1"])
def test_hsdp_matches_unsharded_with_one_collective(two_ranks, mesh):
    for path in PATHS:
        r = result(two_ranks, mesh)[path]
        assert r["err"] < TOL, path
        assert r["collectives"] == [1, 1], path


def test_shard_on_last_tensor_dim_matches_unsharded(two_ranks):
    for path in PATHS:
        assert result(two_ranks, "shard_dim1")[path]["err"] < TOL, path


def test_replicated_tensor_counts_once_next_to_sharded_ones(two_ranks):
    for path in PATHS:
        r = result(two_ranks, "replicate_and_shard")[path]
        assert r["err"] < TOL, path
        assert r["collectives"] == [1, 1], path


def test_sharding_along_two_mesh_dims_reduces_along_each(two_ranks):
    for path in PATHS:
        r = result(two_ranks, "shard_two_mesh_dims")[path]
        assert r["err"] < TOL, path
        assert r["collectives"] == [2, 2], path  # one per sharded mesh dim (documented)


def test_an_empty_local_shard_is_stepped_and_mixed_group_ratios_keep_group_order(two_ranks):
    for path in PATHS:
        r = result(two_ranks, "empty_shard_and_mixed_trust_ratios")[path]
        assert r["local_rows"] == [1, 0], path  # the (1, 4) tensor's one row is on rank 0
        assert r["err"] < TOL, path
        assert r["ratio_err"] < 1e-6, path


def test_partial_placement_is_refused_naming_it_and_nothing_changes(two_ranks):
    r = result(two_ranks, "partial_refused")
    assert r["message"] is not None and "Partial" in r["message"] and "P(sum)" in r["message"]
    assert r["unchanged"]


def test_group_of_sharded_and_plain_params_matches_unsharded(two_ranks):
    for path in PATHS:
        r = result(two_ranks, "mixed_group")[path]
        assert r["plain"] == 4, path
        assert r["err"] < TOL, path


@pytest.mark.parametrize("flavour", ["timm", "larc", "ssl"])
def test_every_flavour_on_fsdp_equals_its_unsharded_step_with_one_collective(two_ranks, flavour):
    for path in PATHS:
        r = result(two_ranks, "flavours_fsdp")[f"{flavour}_{path}"]
        assert r["err"] < TOL, path
        assert r["collectives"] == [1, 1, 1], path


# ---- AMP, monitoring, checkpoints, ZeRO-1 ---------------------------------------------

def test_grad_scale_is_divided_on_device_in_the_sharded_step(two_ranks):
    r = result(two_ranks, "amp_scale_and_inf")
    assert r["err"] < TOL
    assert r["collectives"] == 1  # the inf flag rides in the same all-reduce


def test_inf_on_one_rank_skips_the_step_on_every_rank(two_ranks):
    assert result(two_ranks, "amp_scale_and_inf")["skipped_everywhere"]


def test_grad_scaler_drives_the_sharded_fused_step(two_ranks):
    r = result(two_ranks, "grad_scaler")
    assert r["amp_scaling"]
    assert r["err"] < 1e-5


def test_trust_ratios_of_sharded_params_are_global(two_ranks):
    r = result(two_ranks, "trust_ratios")
    assert r["n"] == [3, 3]
    assert r["err"] < 1e-6


def test_dcp_checkpoint_round_trip_steps_bit_identically(two_ranks):
    r = result(two_ranks, "dcp_round_trip")
    assert r["bit_identical"]
    assert r["buffer_is_dtensor"]
    assert r["lr"] == pytest.approx(0.1)


def test_zero1_with_lars_matches_lars(two_ranks):
    for path in PATHS:
        assert result(two_ranks, "zero1")[path]["err"] < TOL, path


# ---- the kernel's two halves, in this process ----------------------------------------

def _groups(dtype, momentum=0.9):
    gen = torch.Generator().manual_seed(0)
    shapes = [(33, 17), (40000,), (0,), (5, 3, 3), (7,)]
    params = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    grads = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    bufs = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    opts = dict(lr=0.1, momentum=momentum, weight_decay=1e-3, eeta=1e-3, epsilon=1e-5, trust_clip=50.0,
                update_clip=10.0, maximize=False)
    return [
        (params[:4], grads[:4], bufs[:4], dict(opts, lars=True, nesterov=True)),
        (params[4:], grads[4:], bufs[4:], dict(opts, lars=False, nesterov=False, weight_decay=0.0)),
    ]


def _clone(groups):
    return [([p.clone() for p in ps], [g.clone() for g in gs], [b.clone() for b in bs], o) for ps, gs, bs, o in groups]


FLAVOUR_OPTIONS = {
    "seed": {},
    "timm": dict(ratio_on_grad=True, larc_clip=True, dampening=0.1, nesterov=False, trust_clip=None),
    "ssl": dict(ratio_on_grad=True, norm_of_update=True, decay=True, epsilon=0.0, trust_clip=None,
                update_clip=None, nesterov=False),
}


@pytest.mark.parametrize("flavour", FLAVOUR_OPTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_apply_with_own_norms_is_bit_identical_to_the_one_call_step(dtype, flavour):
    groups = [(ps, gs, bs, {**o, **FLAVOUR_OPTIONS[flavour]}) for ps, gs, bs, o in _groups(dtype)]
    a, b = _clone(groups), _clone(groups)
    fused_lars_groups(a)
    flags = [int(o["lars"]) | 32 * int(o.get("norm_of_update", False)) for _, _, _, o in groups]
    sums = ops.fused_lars_norms([p for g in b for p in g[0]], [t for g in b for t in g[1]], [4, 1], flags)
    if flavour == "ssl":
        assert sums[0, 2] != 0  # <g, p> carried for the SSL ratio
    fused_lars_groups(b, sums=sums)
    for (pa, _, ba, _), (pb, _, bb, _) in zip(a, b):
        for x, y in zip(pa + ba, pb + bb):
            assert torch.equal(x, y)


def test_norms_are_float64_sums_of_squares_and_zero_where_lars_is_off():
    groups = _groups(torch.float32)
    params = [p for g in groups for p in g[0]]
    grads = [t for g in groups for t in g[1]]
    sums = ops.fused_lars_norms(params, grads, [4, 1], [1, 0])
    assert sums.dtype == torch.float64 and sums.shape == (5, 3)
    for i in range(4):
        expect = torch.stack([params[i].double().square().sum(), grads[i].double().square().sum(),
                              torch.zeros((), dtype=torch.float64)])  # no <g,p>: the seed's ratio needs none
        torch.testing.assert_close(sums[i], expect, rtol=1e-6, atol=0)
    assert sums[4].tolist() == [0.0, 0.0, 0.0]  # lars=False: no norms
    assert sums[2].tolist() == [0.0, 0.0, 0.0]  # an empty shard


def test_apply_takes_the_given_norms_not_the_tensors_own():
    (ps, gs, bs, o), = _groups(torch.float32)[:1]
    o = dict(o, nesterov=False)
    doubled = [p.clone() for p in ps]
    sums = ops.fused_lars_norms(ps, gs, [4], [1]) * 4.0  # as if each norm were twice as large
    fused_lars_groups([(doubled, [g.clone() for g in gs], [b.clone() for b in bs], o)], sums=sums)
    expect = [p.clone() for p in ps]
    bufs = [b.clone() for b in bs]
    lars_cuda.functional.lars(expect, [g.clone() for g in gs], bufs, **o, sums=sums)
    for x, y in zip(doubled, expect):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


def test_apply_rejects_sums_of_the_wrong_shape_or_dtype_and_writes_nothing():
    (ps, gs, bs, o), = _groups(torch.float32)[:1]
    before = [p.clone() for p in ps]
    with pytest.raises(ValueError, match=r"sums must be a contiguous \[4, 3\]"):
        fused_lars_groups([(ps, gs, bs, o)], sums=torch.zeros(3, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="sums must be float64"):
        fused_lars_groups([(ps, gs, bs, o)], sums=torch.zeros(4, 3))
    assert all(torch.equal(a, b) for a, b in zip(ps, before))


def test_norms_and_apply_ops_pass_opcheck():
    groups = _groups(torch.float32)
    params = [p for g in groups for p in g[0]]
    grads = [t for g in groups for t in g[1]]
    bufs = [b for g in groups for b in g[2]]
    torch.library.opcheck(torch.ops.lars_cuda.fused_lars_norms.default, (params, grads, [4, 1], [1, 0]))
    sums = ops.fused_lars_norms(params, grads, [4, 1], [1, 0])
    hyper = [0.1, 0.9, 1e-3, 1e-3, 1e-5, 50.0, 10.0, 0.0] * 2
    torch.library.opcheck(torch.ops.lars_cuda.fused_lars_apply_.default,
                          (params, grads, bufs, [4, 1], hyper, [11, 0], [None, None], sums))
