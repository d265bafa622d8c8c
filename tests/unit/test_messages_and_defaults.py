"""Every error names what is wrong (the parameter and the value), and every default
is the documented one: table-driven, so a changed message or default shows."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from torch import nn
from torch.nn import Parameter

from lars_cuda import Lars, PolynomialWarmup, create_optimizer_lars, functional, ops, polynomial_warmup_lr
from lars_cuda import optimizer as optimizer_module

from ..support.reference import lars_step_f64

P = [Parameter(torch.ones(2))]


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(), TypeError, r"^Lars needs a learning rate: pass lr=\.\.\. \(or give every param group an 'lr'\)$"),
        (dict(lr="0.1"), TypeError, r"^lr must be a float or a one-element tensor, got str$"),
        (dict(lr=torch.ones(2)), ValueError, r"^Tensor lr must be 1-element, got shape \(2,\)$"),
        (dict(lr=torch.tensor(1)), TypeError, r"^a tensor lr must be floating point, got torch.int64$"),
        (dict(lr=torch.tensor(-0.5)), ValueError, r"^Invalid learning rate: -0.5$"),
        (dict(lr=float("inf")), ValueError, r"^Invalid learning rate: inf$"),
        (dict(lr=0.1, momentum="x"), TypeError, r"^momentum must be a real number, got str$"),
        (dict(lr=0.1, momentum=True), TypeError, r"^momentum must be a real number, got bool$"),
        (dict(lr=0.1, weight_decay=-2.0), ValueError, r"^Invalid weight_decay value: -2.0$"),
        (dict(lr=0.1, epsilon=float("nan")), ValueError, r"^Invalid epsilon value: nan$"),
        (dict(lr=0.1, eeta="x"), TypeError, r"^eeta must be a real number, got str$"),
        (dict(lr=0.1, eeta=1.5), ValueError,
         r"^Invalid eeta \(trust coefficient\) value: 1.5; it must lie in \(0, 1\]$"),
        (dict(lr=0.1, trust_clip="50"), TypeError, r"^trust_clip must be a real number or None, got str$"),
        (dict(lr=0.1, trust_clip=None, update_clip=-1.0), ValueError, r"^Invalid update_clip value: -1.0$"),
        (dict(lr=0.1, update_clip=float("nan")), ValueError, r"^Invalid update_clip value: nan$"),
        (dict(lr=0.1, nesterov=1), TypeError, r"^nesterov must be a bool, got int$"),
        (dict(lr=0.1, maximize="yes"), TypeError, r"^maximize must be a bool, got str$"),
        (dict(lr=0.1, foreach=1), TypeError, r"^foreach must be None or a bool, got int$"),
        (dict(lr=0.1, fused="no"), TypeError, r"^fused must be None or a bool, got str$"),
        (dict(lr=0.1, foreach=True, fused=True), ValueError, r"^foreach and fused cannot both be True$"),
        (dict(lr=0.1, nesterov=True), ValueError,
         r"^Nesterov momentum requires a nonzero momentum and zero dampening$"),
    ],
    # Plain ids (the option names): an id holding the message's regex escapes is not found again
    # when mutmut passes node ids to a second pytest run in its process.
    ids=lambda v: v.__name__ if isinstance(v, type) else ("+".join(v) or "no-lr") if isinstance(v, dict) else "",
)
def test_invalid_options_raise_an_error_naming_the_option_and_value(kwargs, error, message):
    with pytest.raises(error, match=message):
        Lars(P, **kwargs)


def test_a_group_added_later_is_checked_with_its_tensor_lr_read():
    opt = Lars(P, lr=0.1)
    with pytest.raises(ValueError, match=r"^Invalid learning rate: nan$"):
        opt.add_param_group({"params": [Parameter(torch.ones(3))], "lr": torch.tensor(float("nan"))})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("clip", ["trust_clip", "update_clip"])
def test_a_clip_of_zero_is_allowed(clip):
    p = Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    Lars([p], lr=0.1, **{clip: 0.0}).step()
    assert torch.equal(p.detach(), torch.ones(3))  # a zero clip gives a zero step


def test_lars_defaults_are_the_seed_values():
    group = Lars(P, lr=0.1).param_groups[0]
    want = dict(momentum=0, eeta=1e-3, weight_decay=0, epsilon=0.0, lars=True, nesterov=False, trust_clip=50.0,
                update_clip=10.0, maximize=False, foreach=None, fused=None)
    assert {k: group[k] for k in want} == want


def test_an_sgd_state_dict_loads_with_the_lars_defaults():
    p = Parameter(torch.ones(2))
    sgd = torch.optim.SGD([p], lr=0.2, momentum=0.9)
    p.grad = torch.ones(2)
    sgd.step()
    opt = Lars([p], lr=0.1)
    opt.load_state_dict(sgd.state_dict())
    group = opt.param_groups[0]
    assert group["lars"] is True and group["maximize"] is False and group["trust_clip"] == 50.0
    assert group["lr"] == 0.2 and group["eeta"] == 1e-3


def test_several_devices_in_one_foreach_group_raise_naming_them():
    a, b = Parameter(torch.ones(2)), Parameter(torch.ones(2, device="meta"))
    a.grad, b.grad = torch.ones(2), torch.ones(2, device="meta")
    with pytest.raises(ValueError, match=r"one device per param group, got \['cpu', 'meta'\]; put each device's "
                                         r"params in its own group or use foreach=False, fused=False"):
        Lars([a, b], lr=0.1, foreach=True).step()


@pytest.mark.parametrize("path", [dict(foreach=True), dict(fused=True)])
def test_an_lr_tensor_on_another_device_raises_naming_both(path):
    a = Parameter(torch.ones(2))
    a.grad = torch.ones(2)
    opt = Lars([a], lr=0.1, **path)
    opt.param_groups[0]["lr"] = torch.tensor(0.1, device="meta")
    with pytest.raises(ValueError, match=r"^lr tensor is on meta but the params are on cpu$"):
        opt.step()
    assert torch.equal(a.detach(), torch.ones(2))


def test_sparse_gradients_raise_naming_the_problem():
    a = Parameter(torch.ones(2))
    a.grad = torch.ones(2).to_sparse()
    with pytest.raises(optimizer_module.UnsupportedTensorError, match=r"^Lars does not support sparse gradients$"):
        Lars([a], lr=0.1).step()


# ---- without the compiled extension --------------------------------------------------------------


def test_without_the_extension_fused_true_warns_with_the_rebuild_command_and_steps_by_foreach(monkeypatch):
    from lars_cuda import plan

    monkeypatch.setattr(ops, "_C", None)
    monkeypatch.setattr(ops, "EXTENSION_ERROR", ImportError("no _C"))
    monkeypatch.setattr(plan, "_WARNED_UNAVAILABLE", set())
    assert not ops.has_fused("cpu") and not ops.has_fused("cuda")
    p = Parameter(torch.ones(2))
    p.grad = torch.ones(2)
    with pytest.warns(RuntimeWarning, match=r"fused=True was asked for, but lars_cuda's compiled kernels did not "
                                            r"load \(the compiled library failed to load: ImportError: no _C; "
                                            r"rebuild it with: .*pip install --no-build-isolation"):
        Lars([p], lr=0.1, fused=True).step()
    with pytest.raises(RuntimeError, match=r"compiled extension did not load, so its ops are unavailable"):
        ops.cpu_kernel()
    q = Parameter(torch.ones(2))
    q.grad = torch.ones(2)
    Lars([q], lr=0.1).step()  # the default then runs foreach
    assert torch.equal(p.detach(), q.detach())
    assert not torch.equal(p.detach(), torch.ones(2))


def test_has_fused_serves_the_cpu_and_cuda_only():
    assert ops.has_fused("cpu") and not ops.has_fused("meta")
    has_cuda_kernel = torch._C._dispatch_has_kernel_for_dispatch_key("lars_cuda::fused_lars_groups_", "CUDA")
    assert ops.has_fused("cuda") == has_cuda_kernel


# ---- the functional API ----------------------------------------------------------------------------


def test_functional_lars_defaults_to_the_loop_and_no_maximize():
    p = torch.linspace(-1, 1, 5)
    g = torch.linspace(0.5, -0.5, 5)
    with mock.patch.object(functional, "single_tensor_lars", wraps=functional.single_tensor_lars) as loop:
        functional.lars([p], [g], [None], lr=0.1, momentum=0.0, weight_decay=0.0, eeta=0.05, epsilon=0.0, lars=True,
                        nesterov=False, trust_clip=50.0, update_clip=10.0)
    assert loop.called
    want, _ = lars_step_f64(torch.linspace(-1, 1, 5), g, None, lr=0.1, eeta=0.05)
    torch.testing.assert_close(p.double(), want)


@pytest.mark.parametrize("clips", [dict(trust_clip=0.01, update_clip=0.2), dict(trust_clip=None, update_clip=None)])
def test_functional_lars_fused_applies_both_clips_as_the_oracle(clips):
    p = torch.linspace(-1, 1, 5)
    g = torch.linspace(0.5, -0.5, 5) * torch.tensor([1.0, 100.0, 1.0, 1.0, 1.0])  # one element beyond 0.2
    functional.lars([p], [g], [], lr=0.5, momentum=0.0, weight_decay=0.01, eeta=0.5, epsilon=0.0, lars=True,
                    nesterov=False, fused=True, **clips)
    want, _ = lars_step_f64(torch.linspace(-1, 1, 5), g, None, lr=0.5, weight_decay=0.01, eeta=0.5, **clips)
    torch.testing.assert_close(p.double(), want, rtol=1e-6, atol=1e-7)


def test_functional_lars_fused_steps_as_the_oracle_and_takes_grad_scale():
    p, b = torch.linspace(-1, 1, 5), [None]
    g = torch.linspace(0.5, -0.5, 5)
    functional.lars([p], [g * 8.0], b, lr=0.1, momentum=0.9, weight_decay=0.01, eeta=0.05, epsilon=0.0, lars=True,
                    nesterov=True, trust_clip=50.0, update_clip=10.0, maximize=True, fused=True,
                    grad_scale=torch.tensor(8.0), found_inf=torch.tensor(0.0))
    want, want_b = lars_step_f64(torch.linspace(-1, 1, 5), g, None, lr=0.1, momentum=0.9, weight_decay=0.01, eeta=0.05,
                                 nesterov=True, maximize=True)
    torch.testing.assert_close(p.double(), want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(b[0].double(), want_b, rtol=1e-6, atol=1e-7)
    q = torch.ones(3)
    functional.lars([q], [torch.ones(3)], [None], lr=0.1, momentum=0.9, weight_decay=0.0, eeta=0.05, epsilon=0.0,
                    lars=True, nesterov=False, trust_clip=50.0, update_clip=10.0, fused=True,
                    found_inf=torch.tensor(1.0))
    assert torch.equal(q, torch.ones(3))  # found_inf reached the kernel


@pytest.mark.parametrize("kwargs, message", [
    (dict(foreach=True, fused=True), r"^foreach and fused are mutually exclusive$"),
    (dict(found_inf=torch.tensor(0.0)), r"^grad_scale/found_inf are only supported by the fused path$"),
    (dict(grad_scale=torch.tensor(2.0), foreach=True), r"^grad_scale/found_inf are only supported by the fused path$"),
])
def test_functional_lars_refuses_contradictory_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        functional.lars([torch.ones(2)], [torch.ones(2)], [None], lr=0.1, momentum=0.0, weight_decay=0.0, eeta=0.05,
                        epsilon=0.0, lars=True, nesterov=False, trust_clip=50.0, update_clip=10.0, **kwargs)


def test_the_first_release_s_single_group_op_is_gone():
    # fused_lars_ (0.1) was removed in 0.2: fused_lars_groups_ with one group does its work.
    if ops.EXTENSION_ERROR is not None:
        pytest.skip("the compiled library did not load")
    assert not hasattr(torch.ops.lars_cuda, "fused_lars_")


# ---- create_optimizer_lars and PolynomialWarmup -------------------------------------------------------


def test_create_optimizer_lars_defaults_are_the_seed_signature():
    group = create_optimizer_lars(nn.Linear(3, 2), lr=0.1).param_groups
    assert len(group) == 1
    assert (group[0]["momentum"], group[0]["weight_decay"], group[0]["epsilon"]) == (0.9, 0.0, 0.0)


def test_create_optimizer_lars_checks_its_model():
    with pytest.raises(TypeError, match=r"^model must be a torch.nn.Module, got list$"):
        create_optimizer_lars([Parameter(torch.ones(2))], lr=0.1)
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match=r"^the model has no trainable parameters$"):
        create_optimizer_lars(frozen, lr=0.1)


def test_qualified_names_decide_the_bias_rule_and_every_param_lands_once():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.bias_proj = nn.Linear(3, 3, bias=False)  # its weight's qualified name contains "bias"
            self.block = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))

    net = Net()
    opt = create_optimizer_lars(net, lr=0.1, bn_bias_separately=True)
    lars_ids = {id(p) for p in opt.param_groups[0]["params"]}
    excluded_ids = {id(p) for p in opt.param_groups[1]["params"]}
    assert id(net.bias_proj.weight) in excluded_ids
    assert lars_ids == {id(net.block[0].weight)}
    assert len(opt.param_groups[0]["params"]) + len(opt.param_groups[1]["params"]) == len(list(net.parameters()))


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(decay_steps="10"), TypeError, r"^decay_steps must be a real number, got str$"),
    (dict(decay_steps=10, warmup_steps=True), TypeError, r"^warmup_steps must be a real number, got bool$"),
    (dict(decay_steps=10, end_lr=float("inf")), ValueError, r"^end_lr must be finite, got inf$"),
    (dict(decay_steps=10, power=float("nan")), ValueError, r"^power must be finite, got nan$"),
    (dict(decay_steps=0), ValueError, r"^decay_steps must be positive, got 0$"),
    (dict(decay_steps=10, warmup_steps=-1), ValueError, r"^warmup_steps must be non-negative, got -1$"),
    (dict(decay_steps=10, end_lr=-0.1), ValueError, r"^end_lr must be non-negative, got -0.1$"),
    (dict(decay_steps=10, power=0), ValueError, r"^power must be positive, got 0$"),
])
def test_polynomial_warmup_errors_name_the_argument(kwargs, error, message):
    with pytest.raises(error, match=message):
        PolynomialWarmup(Lars(P, lr=0.1), **kwargs)


def test_polynomial_warmup_defaults_decay_linearly_to_1e_4_without_warmup():
    opt = Lars(P, lr=1.0)
    sched = PolynomialWarmup(opt, decay_steps=10)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(10):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    want = [(1.0 - 1e-4) * (1 - k / 10) + 1e-4 for k in range(11)]
    assert lrs == pytest.approx(want, rel=1e-12)


def test_a_single_decay_step_and_no_decay_span_are_allowed():
    sched = PolynomialWarmup(Lars(P, lr=1.0), decay_steps=1)
    assert sched.get_last_lr() == [1.0]
    # warmup as long as the whole schedule: after it, the end lr
    assert polynomial_warmup_lr(5, 1.0, 5, 5, 0.01, 2.0) == 0.01
    assert polynomial_warmup_lr(2, 1.0, 5, 5, 0.01, 2.0) == pytest.approx(0.4)


def test_fused_runs_on_the_cpu_always_and_asks_the_kernel_for_a_cuda_device(monkeypatch):
    assert ops.fused_runs_on("cpu") and not ops.fused_runs_on("meta")
    asked = []
    monkeypatch.setattr(ops, "has_fused", lambda device: True)
    monkeypatch.setattr(ops, "_RUNS_ON", {})
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)

    class FakeOps:
        @staticmethod
        def cuda_kernel_runs(index):
            asked.append(index)
            return index == 1

    monkeypatch.setattr(torch.ops, "lars_cuda", FakeOps)
    assert ops.fused_runs_on("cuda:1") and not ops.fused_runs_on("cuda")  # "cuda" means the current device, 3
    assert ops.fused_runs_on("cuda:1")
    assert asked == [1, 3]  # answers are cached per device


def test_the_card_and_the_rebuild_command_are_described_from_its_capability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (10, 0) if index == 2 else (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: f"card {index}")
    assert ops.describe_cuda_device("cuda:2") == "card 2 (sm_100)"
    assert ops.describe_cuda_device("cuda") == "card 0 (sm_90)"
    assert ops.cuda_arch("cuda:2") == "10.0" and ops.cuda_arch("cuda") == "9.0"


def test_the_rebuild_command_for_a_card_is_the_one_rebuild_command_for_its_architecture():
    from lars_cuda import build_facts

    assert build_facts.rebuild_command("10.0") == "TORCH_CUDA_ARCH_LIST=10.0 " + build_facts.rebuild_command()


@pytest.mark.skipif(ops.EXTENSION_ERROR is not None, reason="the compiled library did not load")
def test_launch_env_sets_and_unsets_knobs_for_the_block_and_restores_them(monkeypatch):
    import os

    monkeypatch.setenv("LARS_CUDA_LAUNCH", "cooperative")
    monkeypatch.delenv("LARS_CUDA_WAVE_MB", raising=False)
    with mock.patch.object(torch.ops.lars_cuda, "reload_launch_config",
                           wraps=torch.ops.lars_cuda.reload_launch_config) as reload:
        with ops.launch_env(LARS_CUDA_WAVE_MB="4", LARS_CUDA_LAUNCH=None):
            assert os.environ["LARS_CUDA_WAVE_MB"] == "4" and "LARS_CUDA_LAUNCH" not in os.environ
            assert reload.call_count == 1  # read again inside the block ...
        assert reload.call_count == 2  # ... and after it
    assert os.environ["LARS_CUDA_LAUNCH"] == "cooperative" and "LARS_CUDA_WAVE_MB" not in os.environ


@pytest.mark.skipif(ops.EXTENSION_ERROR is not None, reason="the compiled library did not load")
def test_launch_env_restores_the_knobs_when_the_block_raises(monkeypatch):
    import os

    monkeypatch.setenv("LARS_CUDA_BLOCKS_PER_SM", "2")
    with pytest.raises(KeyError):
        with ops.launch_env(LARS_CUDA_BLOCKS_PER_SM="8"):
            raise KeyError("inside")
    assert os.environ["LARS_CUDA_BLOCKS_PER_SM"] == "2"


@pytest.mark.parametrize("option, value, message", [
    ("decay", "yes", "decay must be None or a bool, got str"),
    ("dampening", "0.1", "dampening must be a real number, got str"),
])
def test_decay_and_dampening_of_the_wrong_type_are_named(option, value, message):
    with pytest.raises(TypeError) as info:
        Lars([Parameter(torch.ones(2))], lr=0.1, momentum=0.9, **{option: value})
    assert str(info.value) == message


def test_a_dampening_of_one_is_allowed():
    Lars([Parameter(torch.ones(2))], lr=0.1, momentum=0.9, dampening=1.0)
