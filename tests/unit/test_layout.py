"""The op's packed group layout has one owner per language: ``StepOptions`` in
Python (lars_cuda/options.py) and ``csrc/group_args.h`` in C++. These tests hold
the two to each other: by the header's constants and by behaviour."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from lars_cuda.options import FLAG_BITS, HYPER_FIELDS, StepOptions

from ..support.paths import ROOT

HEADER = Path(ROOT) / "csrc" / "group_args.h"
needs_source = pytest.mark.skipif(not HEADER.exists(), reason="the C++ sources are not next to these tests "
                                                                "(the wheel test runs the installed package)")


def _cpp_constants() -> dict[str, int]:
    text = HEADER.read_text()
    return {name: int(value) for name, value in re.findall(r"\b(k\w+) = (\d+)", text)}


def _camel(name: str) -> str:
    return "kFlag" + "".join(part.capitalize() for part in name.split("_"))


def _slot(name: str) -> str:
    return "kSlot" + "".join(part.capitalize() for part in name.split("_"))


@needs_source
def test_each_field_of_the_hyper_row_is_in_its_cpp_slot():
    constants = _cpp_constants()
    assert constants["kHyperStride"] == len(HYPER_FIELDS)
    cpp_slots = {k: v for k, v in constants.items() if k.startswith("kSlot")}
    assert cpp_slots == {_slot(name): i for i, name in enumerate(HYPER_FIELDS)}


@needs_source
def test_every_flag_bit_matches_its_cpp_constant():
    constants = _cpp_constants()
    cpp_flags = {k: v for k, v in constants.items() if k.startswith("kFlag")}
    assert cpp_flags == {_camel(name): bit for name, bit in FLAG_BITS.items()}


def test_a_disabled_clip_packs_as_nan_and_a_tensor_lr_as_zero_with_its_tensor():
    lr = torch.tensor(0.25)
    o = StepOptions(lr=lr, trust_clip=None, update_clip=None, momentum=0.9, dampening=0.1)
    row = dict(zip(HYPER_FIELDS, o.hyper_row()))
    assert row["lr"] == 0.0 and o.lr_tensor is lr
    assert math.isnan(row["trust_clip"]) and math.isnan(row["update_clip"])
    assert (row["momentum"], row["dampening"]) == (0.9, 0.1)


@pytest.mark.parametrize("switch", sorted(FLAG_BITS))
def test_each_switch_sets_exactly_its_bit(switch):
    off = {name: False for name in FLAG_BITS}
    o = StepOptions.of({"lr": 0.1, **off, switch: True})
    assert o.flags == FLAG_BITS[switch]


def test_decay_none_means_decay_exactly_where_lars_adapts():
    assert StepOptions.of({"lr": 0.1, "lars": True, "decay": None}).decay is True
    assert StepOptions.of({"lr": 0.1, "lars": False, "decay": None}).decay is False
    assert StepOptions.of({"lr": 0.1, "lars": False, "decay": True}).decay is True


def test_the_kernel_reads_the_packed_row_as_the_reference_loop_reads_the_options():
    # Behaviour, not text: every hyper field and flag is given a value that changes
    # the step; the op (reading the packed row) and the reference loop must agree.
    from lars_cuda import functional, ops

    if not ops.has_fused("cpu"):
        pytest.skip("the compiled extension did not load")
    gen = torch.Generator().manual_seed(0)
    for switches in (dict(nesterov=True, maximize=True), dict(ratio_on_grad=True, larc_clip=True, dampening=0.3),
                     dict(norm_of_update=True, decay=False), dict(zero_norm_skip=True, ratio_on_grad=True)):
        o = StepOptions.of(dict(lr=0.4, momentum=0.8, weight_decay=0.01, eeta=0.3, epsilon=1e-3, trust_clip=1.5,
                                update_clip=0.7, **switches))
        p = [torch.randn(5, 3, generator=gen), torch.zeros(4)]
        g = [torch.randn(5, 3, generator=gen), torch.randn(4, generator=gen)]
        b = [torch.randn(5, 3, generator=gen), torch.randn(4, generator=gen)]
        p2, b2 = [t.clone() for t in p], [t.clone() for t in b]
        ops.fused_lars_groups_(p, g, b, [2], o.hyper_row(), [o.flags], [None])
        functional.single_tensor_lars(p2, g, b2, o)
        for x, y in zip(p + b, p2 + b2):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


# ---- the LAMB op's layout: LambOptions (lars_cuda/lamb_options.py) and csrc/lamb_args.h ----

LAMB_HEADER = Path(ROOT) / "csrc" / "lamb_args.h"


def _lamb_constants() -> dict[str, int]:
    return {name: int(value) for name, value in re.findall(r"\b(kLamb\w+) = (\d+)", LAMB_HEADER.read_text())}


def _lamb_name(prefix: str, name: str) -> str:
    return prefix + "".join(part.capitalize() for part in name.split("_"))


@needs_source
def test_each_lamb_field_is_in_its_cpp_slot():
    from lars_cuda.lamb_options import LAMB_HYPER_FIELDS

    constants = _lamb_constants()
    assert constants["kLambHyperStride"] == len(LAMB_HYPER_FIELDS)
    slots = {k: v for k, v in constants.items() if k.startswith("kLambSlot")}
    assert slots == {_lamb_name("kLambSlot", name): i for i, name in enumerate(LAMB_HYPER_FIELDS)}


@needs_source
def test_every_lamb_flag_bit_matches_its_cpp_constant():
    from lars_cuda.lamb_options import LAMB_FLAG_BITS

    flags = {k: v for k, v in _lamb_constants().items() if k.startswith("kLambFlag")}
    assert flags == {_lamb_name("kLambFlag", name): bit for name, bit in LAMB_FLAG_BITS.items()}


def test_lamb_options_pack_each_switch_into_its_bit_and_a_tensor_lr_as_zero():
    from lars_cuda.lamb_options import LAMB_FLAG_BITS, LAMB_HYPER_FIELDS, LambOptions

    lr = torch.tensor(0.5)
    o = LambOptions(lr=lr, betas=(0.8, 0.95), eps=1e-5, weight_decay=0.0, max_lr=None)
    assert dict(zip(LAMB_HYPER_FIELDS, o.hyper_row())) == dict(lr=0.0, beta1=0.8, beta2=0.95, eps=1e-5,
                                                               weight_decay=0.0, max_lr=0.0)
    assert o.lr_tensor is lr
    assert o.flags == LAMB_FLAG_BITS["bias_correction"] | LAMB_FLAG_BITS["grad_averaging"]  # wd 0: not adapted
    base = LambOptions(lr=0.1).flags
    for field, value, bit in (("trust_clip", True, "trust_clip"), ("caution", True, "caution"),
                              ("maximize", True, "maximize"), ("decay_mode", "grad", "decay_grad"),
                              ("decay_mode", "decoupled", "decay_decoupled"),
                              ("bias_correction", False, "bias_correction"),
                              ("grad_averaging", False, "grad_averaging")):
        assert LambOptions(lr=0.1).replace(**{field: value}).flags == base ^ LAMB_FLAG_BITS[bit], field
    assert LambOptions(lr=0.1, weight_decay=0.0, always_adapt=True).flags & LAMB_FLAG_BITS["adapt"]


@needs_source
def test_the_lamb_row_of_sums_is_as_wide_as_the_cpp_row():
    from lars_cuda.lamb_options import LAMB_SUM_FIELDS

    width = re.search(r"kLambSumsPerTensor = (\d+);", (Path(ROOT) / "csrc" / "lamb.h").read_text())
    assert width is not None and int(width.group(1)) == len(LAMB_SUM_FIELDS)
