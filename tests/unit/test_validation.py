"""Bad input raises a clear exception and leaves params and state as they were."""

from __future__ import annotations

import math

import pytest
import torch

from lars_cuda import Lars, UnsupportedTensorError


def make_param(n=4):
    return torch.nn.Parameter(torch.ones(n))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=-0.1), "learning rate"),
        (dict(lr=math.nan), "learning rate"),
        (dict(lr=torch.tensor(-1.0)), "learning rate"),
        (dict(lr=0.1, momentum=-0.9), "momentum"),
        (dict(lr=0.1, weight_decay=-1e-4), "weight_decay"),
        (dict(lr=0.1, eeta=0.0), "eeta"),
        (dict(lr=0.1, eeta=1.5), "eeta"),
        (dict(lr=0.1, eeta=-1e-3), "eeta"),
        (dict(lr=0.1, epsilon=-1e-8), "epsilon"),
        (dict(lr=0.1, nesterov=True), "Nesterov"),
        (dict(lr=0.1, trust_clip=-1.0), "trust_clip"),
        (dict(lr=0.1, update_clip=-1.0), "update_clip"),
        (dict(lr=0.1, foreach=True, fused=True), "foreach and fused"),
        (dict(lr=torch.ones(2)), "1-element"),
    ],
)
def test_invalid_hyperparameters_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Lars([make_param()], **kwargs)


@pytest.mark.parametrize("kwargs", [dict(lr="0.1"), dict(lr=0.1, momentum="0.9"), dict(lr=0.1, fused="yes")])
def test_wrong_types_raise_type_error(kwargs):
    with pytest.raises(TypeError):
        Lars([make_param()], **kwargs)


def test_invalid_group_override_raises():
    with pytest.raises(ValueError, match="eeta"):
        Lars([dict(params=[make_param()], eeta=2.0)], lr=0.1)


def test_param_in_two_groups_raises():
    p = make_param()
    with pytest.raises(ValueError, match="more than one"):
        Lars([dict(params=[p]), dict(params=[p])], lr=0.1)


def test_complex_params_raise_type_error():
    with pytest.raises(TypeError, match="complex"):
        Lars([torch.nn.Parameter(torch.ones(2, dtype=torch.complex64))], lr=0.1)


def _snapshot(opt, params):
    return [p.detach().clone() for p in params], {
        id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in params if p in opt.state
    }


def _assert_unchanged(opt, params, snap):
    values, state = snap
    for p, v in zip(params, values):
        assert torch.equal(p.detach(), v)
    for p in params:
        if id(p) in state:
            for k, v in state[id(p)].items():
                assert torch.equal(opt.state[p][k], v)


def test_sparse_gradient_raises_and_changes_nothing(path):
    a, b = make_param(), make_param()
    opt = Lars([dict(params=[a]), dict(params=[b])], lr=0.1, momentum=0.9, **path)
    a.grad, b.grad = torch.ones(4), torch.ones(4)
    opt.step()
    snap = _snapshot(opt, [a, b])
    a.grad = torch.ones(4)
    b.grad = torch.ones(4).to_sparse()
    with pytest.raises(UnsupportedTensorError, match="sparse"):
        opt.step()
    _assert_unchanged(opt, [a, b], snap)


def test_hyperparameter_broken_after_construction_raises_at_step_and_changes_nothing(path):
    a, b = make_param(), make_param()
    opt = Lars([dict(params=[a]), dict(params=[b])], lr=0.1, momentum=0.9, **path)
    a.grad, b.grad = torch.ones(4), torch.ones(4)
    snap = _snapshot(opt, [a, b])
    opt.param_groups[1]["lr"] = -1.0
    with pytest.raises(ValueError, match="learning rate"):
        opt.step()
    _assert_unchanged(opt, [a, b], snap)


@pytest.mark.parametrize("switch", [dict(foreach=True), dict(fused=True)])
def test_params_on_two_devices_in_one_multi_tensor_group_raise_at_step(switch):
    # 'meta' is a second device available everywhere; the check runs before any kernel.
    a = make_param()
    b = torch.nn.Parameter(torch.ones(4, device="meta"))
    opt = Lars([a, b], lr=0.1, **switch)
    a.grad = torch.ones(4)
    b.grad = torch.ones(4, device="meta")
    with pytest.raises(ValueError, match="one device"):
        opt.step()
    assert torch.equal(a.detach(), torch.ones(4))


def test_mismatched_momentum_buffer_raises_and_changes_nothing(path):
    a = make_param()
    opt = Lars([a], lr=0.1, momentum=0.9, **path)
    opt.state[a]["momentum_buffer"] = torch.ones(3)
    a.grad = torch.ones(4)
    with pytest.raises(ValueError, match="momentum.buffer"):
        opt.step()
    assert torch.equal(a.detach(), torch.ones(4))


def test_integer_params_raise_type_error():
    with pytest.raises(TypeError, match="floating"):
        Lars([torch.ones(2, dtype=torch.int64)], lr=0.1)


def test_float64_params_in_a_fused_group_are_stepped_by_foreach_like_torch_fused_sgd():
    from ..support.reference import lars_step_f64

    p = torch.nn.Parameter(torch.linspace(-1, 1, 6, dtype=torch.float64))
    q = torch.nn.Parameter(torch.linspace(1, 2, 4))
    p.grad = torch.linspace(0.5, -0.3, 6, dtype=torch.float64)
    q.grad = torch.linspace(0.1, 0.2, 4)
    want_p, _ = lars_step_f64(p.detach(), p.grad, None, lr=0.1, momentum=0.9, eeta=0.02)
    want_q, _ = lars_step_f64(q.detach(), q.grad, None, lr=0.1, momentum=0.9, eeta=0.02)
    opt = Lars([p, q], lr=0.1, momentum=0.9, eeta=0.02, fused=True)
    assert not opt._step_supports_amp_scaling  # the float64 part cannot take GradScaler's scale
    opt.step()
    torch.testing.assert_close(p.detach(), want_p, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(q.detach(), want_q.float(), rtol=1e-6, atol=1e-7)
    assert set(opt.state) == {p, q}


def test_fused_on_a_device_without_the_kernel_raises_at_step():
    b = torch.nn.Parameter(torch.ones(4, device="meta"))
    opt = Lars([b], lr=0.1, fused=True)
    b.grad = torch.ones(4, device="meta")
    with pytest.raises(RuntimeError, match="not built for meta"):
        opt.step()


def test_unsupported_tensor_error_is_caught_by_every_usual_convention():
    for base in (TypeError, ValueError, RuntimeError):
        assert issubclass(UnsupportedTensorError, base)


def test_every_option_of_lars_is_an_argument_of_lars_but_lars_itself():
    import inspect

    from lars_cuda.options import LARS_OPTIONS

    arguments = set(inspect.signature(Lars.__init__).parameters) - {"self", "params"}
    assert arguments == set(LARS_OPTIONS) - {"lars"}
    assert set(Lars([torch.nn.Parameter(torch.ones(1))], lr=0.1).defaults) == set(LARS_OPTIONS)


def test_every_option_a_rule_checks_is_an_option_of_lars():
    from lars_cuda import validation
    from lars_cuda.options import LARS_OPTIONS

    assert set(validation._OPTION_RULES) <= set(LARS_OPTIONS)


def test_every_step_option_is_a_keyword_of_the_functional_api():
    import inspect

    from lars_cuda import functional
    from lars_cuda.options import STEP_OPTIONS

    assert set(STEP_OPTIONS) <= set(inspect.signature(functional.lars).parameters)


def test_lars_option_defaults_are_a_new_lars_s_defaults():
    # (compat's flavours start from these; called here at run time so that a change shows)
    defaults = Lars.option_defaults()
    assert defaults == {**Lars([torch.nn.Parameter(torch.ones(1))], lr=0.1).defaults, "lr": None}
    assert defaults["lars"] is True and defaults["trust_clip"] == 50.0 and defaults["decay"] is None
