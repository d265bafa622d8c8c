"""lars_cuda.Lamb against the LAMB contract's float64 oracle (docs/semantics.md,
"LAMB"; tests/support/reference.py, lamb_step_f64, itself held to real timm and to
apex's FusedLAMB restated in tests/unit/test_lamb_oracle.py), on both paths and
every switch; and the behaviours torch.optim users rely on."""

from __future__ import annotations

import contextlib
import copy
import io
import pickle

import pytest
import torch

from lars_cuda import Lamb, Lars, UnsupportedTensorError
from lars_cuda.ops import has_fused

from ..support.reference import global_clip_f64, lamb_step_f64

PATHS = {"loop": dict(foreach=False), "foreach": dict(foreach=True)}
SHAPES = [(7, 5), (5,), (3, 2, 2), (4,)]
STEPS = 4
LR = 0.02

# (Lamb's keyword arguments, the oracle's) — every switch of the contract
SWITCHES = {
    "defaults": ({}, {}),
    "no clipping": (dict(max_grad_norm=None), {}),
    "clipping binds": (dict(max_grad_norm=0.5), {}),
    "clipping does not bind": (dict(max_grad_norm=1e3), {}),
    "no decay, not adapted": (dict(weight_decay=0.0), dict(weight_decay=0.0)),
    "no decay, always adapted": (dict(weight_decay=0.0, always_adapt=True), dict(weight_decay=0.0, always_adapt=True)),
    "trust clip": (dict(trust_clip=True), dict(trust_clip=True)),
    "decay in the gradient": (dict(decay_mode="grad", weight_decay=0.1), dict(decay_mode="grad", weight_decay=0.1)),
    "decoupled decay": (dict(decay_mode="decoupled", weight_decay=0.1), dict(decay_mode="decoupled", weight_decay=0.1)),
    "corrected decoupled decay": (dict(decay_mode="decoupled", weight_decay=0.1, max_lr=0.05),
                                  dict(decay_mode="decoupled", weight_decay=0.1, max_lr=0.05)),
    "no bias correction": (dict(bias_correction=False), dict(bias_correction=False)),
    "no grad averaging": (dict(grad_averaging=False), dict(grad_averaging=False)),
    "caution": (dict(caution=True), dict(caution=True)),
    "other betas and eps": (dict(betas=(0.8, 0.99), eps=1e-4), dict(betas=(0.8, 0.99), eps=1e-4)),
}


def tensors(seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    params[1].zero_()  # a zero weight: ratio 1
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) * 3 for s in SHAPES] for _ in range(STEPS)]
    grads[0][3].zero_()  # a zero gradient
    return [p.to(dtype) for p in params], [[g.to(dtype) for g in gs] for gs in grads]


def oracle(params, grads, oracle_kw, max_grad_norm=1.0, steps=STEPS, lr=LR, maximize=False):
    """The oracle's params and moments after ``steps`` steps (float64)."""
    ps = [p.double() for p in params]
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in ps]
    for t in range(1, steps + 1):
        gs = [(-g if maximize else g).double() for g in grads[t - 1]]
        clip = global_clip_f64(gs, max_grad_norm)
        for i, (p, g) in enumerate(zip(ps, gs)):
            ps[i], m, v = lamb_step_f64(p, g, *moments[i], step=t, lr=lr, clip=clip, **oracle_kw)
            moments[i] = (m, v)
    return ps, moments


def train(make, params, grads, steps=STEPS):
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    opt = make(ps)
    for t in range(steps):
        for p, g in zip(ps, grads[t]):
            p.grad = g.clone()
        opt.step()
    return ps, opt


def record_paths(monkeypatch) -> list:
    """Replaces Lamb's three steps with recorders: the list of the paths steps take."""
    from lars_cuda import lamb

    called: list = []
    for name, path in (("fused_lamb", "fused"), ("multi_tensor_lamb", "foreach"), ("single_tensor_lamb", "loop")):
        monkeypatch.setattr(lamb, name, lambda *a, _path=path, **k: called.append(_path))
    return called


@contextlib.contextmanager
def default_dtype(dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


# ---- the math -----------------------------------------------------------------------------

@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("switch", SWITCHES)
def test_every_path_steps_as_the_float64_oracle(switch, path):
    kw, oracle_kw = SWITCHES[switch]
    params, grads = tensors()
    want, moments = oracle(params, grads, oracle_kw, max_grad_norm=kw.get("max_grad_norm", 1.0))
    got, opt = train(lambda ps: Lamb(ps, lr=LR, **kw, **PATHS[path]), params, grads)
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a.detach(), b, rtol=1e-12, atol=1e-13, msg=f"param {i}")
        torch.testing.assert_close(opt.state[a]["exp_avg"], moments[i][0], rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(opt.state[a]["exp_avg_sq"], moments[i][1], rtol=1e-12, atol=1e-13)
        assert opt.state[a]["step"] == STEPS


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("switch", ["defaults", "clipping binds", "decoupled decay", "caution"])
def test_float32_params_step_as_the_oracle_to_float32_rounding(switch, path):
    kw, oracle_kw = SWITCHES[switch]
    params, grads = tensors(dtype=torch.float32)
    want, _ = oracle(params, grads, oracle_kw, max_grad_norm=kw.get("max_grad_norm", 1.0))
    got, _ = train(lambda ps: Lamb(ps, lr=LR, **kw, **PATHS[path]), params, grads)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.detach().double(), b, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("switch", ["defaults", "decoupled decay"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_step_is_the_float32_step_rounded_with_moments_in_the_param_dtype(dtype, switch, path):
    kw, _ = SWITCHES[switch]
    params, grads = tensors(dtype=torch.float32)
    params = [p.to(dtype).float() for p in params]  # representable in both
    grads = [[g.to(dtype).float() for g in gs] for gs in grads]
    want, opt32 = train(lambda ps: Lamb(ps, lr=LR, **kw, **PATHS[path]), params, grads, steps=1)
    got, opt = train(lambda ps: Lamb(ps, lr=LR, **kw, **PATHS[path]), [p.to(dtype) for p in params],
                     [[g.to(dtype) for g in gs] for gs in grads], steps=1)
    for a, b in zip(got, want):
        assert a.dtype == dtype and opt.state[a]["exp_avg"].dtype == dtype
        torch.testing.assert_close(a.detach(), b.detach().to(dtype), rtol=0, atol=0)
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(opt.state[a][key], opt32.state[b][key].to(dtype), rtol=0, atol=0)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", ["grad", "update", "decoupled"])
def test_a_weight_decay_of_one_is_applied_in_every_mode(mode, path):
    kw = dict(decay_mode=mode, weight_decay=1.0)
    params, grads = tensors()
    want, _ = oracle(params, grads, kw)
    got, _ = train(lambda ps: Lamb(ps, lr=LR, **kw, **PATHS[path]), params, grads)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.detach(), b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("path", PATHS)
def test_caution_masks_the_update_where_the_gradient_is_zero(path):
    """u*g > 0 (timm's mask): where g is 0 and the momentum is not, u is masked out."""
    params, grads = tensors()
    for t in (1, 2):
        grads[t][0][::2] = 0.0  # rows of zeros after the first step
    want, _ = oracle(params, grads, dict(caution=True))
    got, _ = train(lambda ps: Lamb(ps, lr=LR, caution=True, **PATHS[path]), params, grads)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.detach(), b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("switch", ["defaults", "no bias correction", "caution", "decoupled decay"])
def test_the_bias_corrections_traced_as_tensors_step_as_the_float_ones(switch, path, monkeypatch):
    """Under torch.compile a tensor step count stays a tensor (one graph); that branch
    is run here in eager mode, so that the float32 step it takes is checked."""
    kw, _ = SWITCHES[switch]
    params, grads = tensors(dtype=torch.float32)
    want, _ = train(lambda ps: Lamb(ps, lr=LR, **kw, **PATHS[path]), params, grads)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    got, _ = train(lambda ps: Lamb(ps, lr=LR, **kw, **PATHS[path]), params, grads)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)


def test_the_step_count_is_a_float32_tensor_whatever_the_default_dtype():
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    with default_dtype(torch.float64):
        opt = Lamb([p], lr=LR)
        opt.step()
    assert opt.state[p]["step"].dtype == torch.float32


def test_betas_given_as_a_list_become_a_tuple():
    from lars_cuda.lamb_options import LambOptions

    assert LambOptions.of(dict(lr=LR, betas=[0.8, 0.9])).betas == (0.8, 0.9)


@pytest.mark.parametrize("path", PATHS)
def test_maximize_steps_as_minimising_the_negated_gradient(path):
    params, grads = tensors()
    want, _ = oracle(params, grads, {}, maximize=True)
    got, _ = train(lambda ps: Lamb(ps, lr=LR, maximize=True, **PATHS[path]), params, grads)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.detach(), b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("path", PATHS)
def test_the_global_clip_spans_every_group(path):
    """One clip factor from the gradients of all groups, as timm and apex compute it."""
    params, grads = tensors()
    want, _ = oracle(params, grads, {}, max_grad_norm=0.5)
    got, _ = train(lambda ps: Lamb([{"params": ps[:2]}, {"params": ps[2:]}], lr=LR, max_grad_norm=0.5,
                                   **PATHS[path]), params, grads)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.detach(), b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("path", PATHS)
def test_param_groups_with_their_own_options_step_with_them(path):
    params, grads = tensors()
    got, _ = train(lambda ps: Lamb([{"params": ps[:2]}, {"params": ps[2:], "weight_decay": 0.0, "caution": True}],
                                   lr=LR, max_grad_norm=None, **PATHS[path]), params, grads)
    first, _ = oracle(params[:2], [g[:2] for g in grads], {}, max_grad_norm=None)
    second, _ = oracle(params[2:], [g[2:] for g in grads], dict(weight_decay=0.0, caution=True), max_grad_norm=None)
    for a, b in zip(got, first + second):
        torch.testing.assert_close(a.detach(), b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("path", PATHS)
def test_a_tensor_lr_steps_like_the_float(path):
    params, grads = tensors()
    want, _ = train(lambda ps: Lamb(ps, lr=LR, decay_mode="decoupled", **PATHS[path]), params, grads)
    got, _ = train(lambda ps: Lamb(ps, lr=torch.tensor(LR, dtype=torch.float64), decay_mode="decoupled",
                                   **PATHS[path]), params, grads)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("path", PATHS)
def test_a_param_added_later_counts_its_own_steps(path):
    """Steps are counted per param (torch.optim.AdamW's state), so a param added after
    two steps takes its first bias correction."""
    params, grads = tensors()
    late = torch.nn.Parameter(params[0].clone())
    first = [torch.nn.Parameter(p.clone()) for p in params[1:]]
    opt = Lamb(first, lr=LR, max_grad_norm=None, **PATHS[path])
    for t in range(2):
        for p, g in zip(first, grads[t][1:]):
            p.grad = g.clone()
        opt.step()
    opt.add_param_group({"params": [late]})
    late.grad = grads[2][0].clone()
    for p in first:
        p.grad = None
    opt.step()
    want, _ = oracle([params[0]], [[grads[2][0]]], {}, max_grad_norm=None, steps=1)
    torch.testing.assert_close(late.detach(), want[0], rtol=1e-12, atol=1e-13)
    assert opt.state[late]["step"] == 1 and opt.state[first[0]]["step"] == 2


def trained_with_next_grads(steps):
    """A Lamb after ``steps`` steps, with the next step's gradients in place."""
    params, grads = tensors()
    ps, opt = train(lambda ps: Lamb(ps, lr=LR), params, grads, steps=steps)
    for p, g in zip(ps, grads[steps]):
        p.grad = g.clone()
    return params, grads, ps, opt


@pytest.mark.parametrize("done", [0, 2], ids=["fresh", "after two steps"])
def test_trust_ratios_are_the_ratios_the_next_step_applies(done):
    params, grads, ps, opt = trained_with_next_grads(done)
    ratios = opt.trust_ratios()
    before = [p.detach().clone() for p in ps]
    state_before = copy.deepcopy(opt.state_dict())
    assert torch.equal(opt.trust_ratios(), ratios)  # nothing changed by asking
    assert all(torch.equal(a, p) for a, p in zip(before, ps))
    assert len(opt.state) == len(state_before["state"]) == (len(ps) if done else 0)  # (fresh: without state)
    if done:
        assert opt.state_dict()["state"][0]["step"] == state_before["state"][0]["step"]
    # the oracle's ratio of the next step, per param
    _, moments = oracle(params, grads, {}, steps=done)
    clip = global_clip_f64(grads[done], 1.0)
    want: list = []
    for i, (p, g) in enumerate(zip(ps, grads[done])):
        lamb_step_f64(p.detach(), g, *moments[i], step=done + 1, lr=LR, clip=clip, ratio_out=want)
    assert len(want) == len(ps)
    torch.testing.assert_close(ratios, torch.tensor(want, dtype=torch.float32), rtol=1e-6, atol=0)


# ---- what torch.optim users rely on ---------------------------------------------------------

def test_state_dict_saves_and_loads_with_weights_only():
    params, grads = tensors(dtype=torch.float32)
    ps, opt = train(lambda ps: Lamb(ps, lr=torch.tensor(LR), decay_mode="decoupled"), params, grads, steps=2)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    again = Lamb([torch.nn.Parameter(p.detach().clone()) for p in ps], lr=1.0)
    again.load_state_dict(loaded)
    assert again.param_groups[0]["decay_mode"] == "decoupled"
    assert torch.equal(again.state[again.param_groups[0]["params"][0]]["exp_avg"], opt.state[ps[0]]["exp_avg"])


@pytest.mark.parametrize("path", PATHS)
def test_a_loaded_state_dict_continues_the_run_bit_for_bit(path):
    params, grads = tensors(dtype=torch.float32)
    want, _ = train(lambda ps: Lamb(ps, lr=LR, **PATHS[path]), params, grads)
    ps, opt = train(lambda ps: Lamb(ps, lr=LR, **PATHS[path]), params, grads, steps=2)
    saved = copy.deepcopy(opt.state_dict())
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt2 = Lamb(resumed, lr=LR, **PATHS[path])
    opt2.load_state_dict(saved)
    for t in range(2, STEPS):
        for p, g in zip(resumed, grads[t]):
            p.grad = g.clone()
        opt2.step()
    for a, b in zip(resumed, want):
        assert torch.equal(a, b)


def test_state_dict_is_a_fixed_point_of_load_deepcopy_and_pickle():
    params, grads = tensors(dtype=torch.float32)
    _, opt = train(lambda ps: Lamb(ps, lr=LR, caution=True), params, grads, steps=1)
    state = opt.state_dict()
    for other in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert other.state_dict()["param_groups"] == state["param_groups"]
    opt.load_state_dict(copy.deepcopy(state))
    assert opt.state_dict()["param_groups"] == state["param_groups"]


def test_a_lars_state_dict_is_refused_naming_the_key():
    p = torch.nn.Parameter(torch.ones(3))
    lars = Lars([p], lr=0.1, momentum=0.9)
    p.grad = torch.ones(3)
    lars.step()
    with pytest.raises(ValueError, match=r"Lamb.load_state_dict: param group 0 holds 'eeta'"):
        Lamb([p]).load_state_dict(lars.state_dict())


def test_a_lamb_state_dict_is_refused_by_lars_naming_the_key():
    p = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match=r"Lars.load_state_dict: param group 0 holds 'betas'.*Adam-family"):
        Lars([p], lr=0.1).load_state_dict(Lamb([p]).state_dict())


@pytest.mark.parametrize("path", PATHS)
def test_a_step_without_grads_changes_nothing(path):
    params, _ = tensors()
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    opt = Lamb(ps, lr=LR, **PATHS[path])
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(ps, params)) and not opt.state


@pytest.mark.parametrize("path", PATHS)
def test_a_strided_view_param_steps_like_its_contiguous_copy(path):
    """To the last bits: a norm may sum a strided tensor in another order."""
    torch.manual_seed(0)
    base = torch.randn(6, 8, dtype=torch.float64)
    view = torch.nn.Parameter(base.t())  # non-contiguous
    dense = torch.nn.Parameter(base.t().contiguous())
    grad = torch.randn(8, 6, dtype=torch.float64)
    for p in (view, dense):
        opt = Lamb([p], lr=LR, **PATHS[path])
        p.grad = grad.clone()
        opt.step()
    torch.testing.assert_close(view.detach(), dense.detach(), rtol=1e-15, atol=1e-16)


def test_a_closure_is_called_once_and_its_loss_returned():
    p = torch.nn.Parameter(torch.ones(3))
    calls = []

    def closure():
        calls.append(1)
        p.grad = torch.ones(3)
        return torch.tensor(2.0)

    assert Lamb([p]).step(closure) == 2.0 and calls == [1]


@pytest.mark.parametrize("path", PATHS)
def test_twenty_steps_reduce_a_least_squares_loss(path):
    torch.manual_seed(0)
    x, w_true = torch.randn(64, 8), torch.randn(8, 1)
    y = x @ w_true
    w = torch.nn.Parameter(torch.zeros(8, 1) + 0.1)
    opt = Lamb([w], lr=0.2, weight_decay=0.0, always_adapt=True, **PATHS[path])
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = ((x @ w - y) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# ---- errors, before any write ---------------------------------------------------------------

BAD = [
    (dict(lr=-0.1), ValueError, r"^Invalid learning rate: -0.1$"),
    (dict(lr=None), TypeError, r"^Lamb needs a learning rate"),
    (dict(betas=(0.9,)), TypeError, r"^betas must be a pair of floats"),
    (dict(betas=(1.0, 0.999)), ValueError, r"^Invalid beta parameter at index 0: 1.0"),
    (dict(betas=(0.9, -0.1)), ValueError, r"^Invalid beta parameter at index 1: -0.1"),
    (dict(eps=-1e-6), ValueError, r"^Invalid eps value: -1e-06$"),
    (dict(weight_decay=float("nan")), ValueError, r"^Invalid weight_decay value: nan$"),
    (dict(decay_mode="adamw"), ValueError, r"^decay_mode must be one of \('update', 'grad', 'decoupled'\)"),
    (dict(max_grad_norm=0.0), ValueError, r"^Invalid max_grad_norm value: 0.0; it must be positive"),
    (dict(max_grad_norm="1"), TypeError, r"^max_grad_norm must be a positive real number or None"),
    (dict(max_lr=0.0), ValueError, r"^Invalid max_lr value: 0.0"),
    (dict(caution=1), TypeError, r"^caution must be a bool, got int$"),
    (dict(foreach="yes"), TypeError, r"^foreach must be None or a bool"),
]


@pytest.mark.parametrize("kwargs,error,message", BAD, ids=[str(b[0]) for b in BAD])
def test_a_bad_option_is_refused_at_construction(kwargs, error, message):
    with pytest.raises(error, match=message):
        Lamb([torch.nn.Parameter(torch.ones(3))], **kwargs)


@pytest.mark.parametrize("path", PATHS)
def test_a_bad_option_set_later_is_refused_before_any_write(path):
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = Lamb([{"params": [a]}, {"params": [b]}], lr=LR, **PATHS[path])
    a.grad, b.grad = torch.ones(3), torch.ones(2)
    opt.param_groups[1]["betas"] = (0.9, 1.5)
    with pytest.raises(ValueError, match="Invalid beta parameter at index 1"):
        opt.step()
    assert torch.equal(a.detach(), torch.ones(3)) and not opt.state


@pytest.mark.parametrize("path", PATHS)
def test_a_bad_moment_in_a_later_group_leaves_every_group_unwritten(path):
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = Lamb([{"params": [a]}, {"params": [b]}], lr=LR, **PATHS[path])
    a.grad, b.grad = torch.ones(3), torch.ones(2)
    opt.step()
    before = (a.detach().clone(), opt.state[a]["exp_avg"].clone(), opt.state[a]["step"].clone())
    opt.state[b]["exp_avg"] = torch.zeros(5)
    with pytest.raises(ValueError, match=r"exp_avg of param 0 \(\(5,\).*does not match it \(\(2,\)"):
        opt.step()
    assert torch.equal(a.detach(), before[0]) and torch.equal(opt.state[a]["exp_avg"], before[1])
    assert torch.equal(opt.state[a]["step"], before[2])


def test_sparse_and_integer_tensors_are_refused():
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3).to_sparse()
    with pytest.raises(UnsupportedTensorError, match="Lamb does not support sparse gradients"):
        Lamb([p]).step()
    with pytest.raises(UnsupportedTensorError, match="Lamb steps floating-point parameters only"):
        Lamb([torch.ones(3, dtype=torch.int64)])


def test_foreach_over_two_devices_is_refused_naming_them():
    a = torch.nn.Parameter(torch.ones(3))
    b = torch.nn.Parameter(torch.ones(3, device="meta"))
    opt = Lamb([a, b], foreach=True)
    a.grad, b.grad = torch.ones(3), torch.ones(3, device="meta")
    with pytest.raises(ValueError, match=r"foreach/fused Lamb steps one device per param group, got \['cpu', 'meta'\]"):
        opt.step()


def test_the_default_path_is_the_kernel_where_it_serves_else_foreach(monkeypatch):
    called = record_paths(monkeypatch)
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    d = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    d.grad = torch.ones(3, dtype=torch.float64)
    Lamb([p]).step()
    Lamb([d]).step()  # float64: not the kernel's
    Lamb([p], foreach=True).step()
    Lamb([p], fused=False).step()
    Lamb([p], foreach=False).step()
    assert called == ["fused" if has_fused("cpu") else "foreach", "foreach", "foreach", "foreach", "loop"]


# ---- the functional API: lars_cuda.lamb_functional.lamb -------------------------------------

FUNCTIONAL_PATHS = {"loop": (dict(foreach=False), torch.float64), "foreach": (dict(foreach=True), torch.float64),
                    "fused": (dict(fused=True), torch.float32)}


@pytest.mark.parametrize("path", FUNCTIONAL_PATHS)
@pytest.mark.parametrize("switch", SWITCHES)
def test_the_functional_lamb_steps_as_the_float64_oracle(switch, path):
    from lars_cuda.lamb_functional import lamb

    flags, dtype = FUNCTIONAL_PATHS[path]
    if flags.get("fused") and not has_fused("cpu"):
        pytest.skip("lars_cuda's compiled extension is not built")
    kw, oracle_kw = SWITCHES[switch]
    kw = {"max_grad_norm": 1.0, **kw}  # (the functional clips only when asked; Lamb's default is 1.0)
    params, grads = tensors(dtype=dtype)
    want, moments = oracle(params, grads, oracle_kw, max_grad_norm=kw["max_grad_norm"])
    ps = [p.clone() for p in params]
    exp_avgs, exp_avg_sqs = [torch.zeros_like(p) for p in ps], [torch.zeros_like(p) for p in ps]
    for t in range(1, STEPS + 1):
        lamb(ps, grads[t - 1], exp_avgs, exp_avg_sqs, [float(t)] * len(ps), lr=LR, **kw, **flags)
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    for i, (a, b) in enumerate(zip(ps, want)):
        torch.testing.assert_close(a.double(), b, **tol, msg=f"param {i}")
        torch.testing.assert_close(exp_avgs[i].double(), moments[i][0], **tol)
        torch.testing.assert_close(exp_avg_sqs[i].double(), moments[i][1], **tol)


def test_the_functional_lamb_takes_a_precomputed_clip():
    from lars_cuda.lamb_functional import global_clip_factor, lamb

    params, grads = tensors()
    want, _ = oracle(params, grads, {}, max_grad_norm=0.5, steps=1)
    ps = [p.clone() for p in params]
    clip = global_clip_factor(grads[0], 0.5)
    lamb(ps, grads[0], [torch.zeros_like(p) for p in ps], [torch.zeros_like(p) for p in ps], [1.0] * len(ps), lr=LR,
         max_grad_norm=None, clip=clip)
    for a, b in zip(ps, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


def test_the_functional_lambs_defaults_are_lambs_but_for_clipping_and_the_path():
    import inspect

    from lars_cuda.lamb_functional import lamb

    signature = inspect.signature(lamb).parameters
    ours = {name: default for name, default in Lamb.option_defaults().items()
            if name not in ("lr", "max_grad_norm", "foreach", "fused")}
    assert {name: signature[name].default for name in ours} == ours
    assert signature["lr"].default is inspect.Parameter.empty  # required, as the caller's schedule sets it
    assert (signature["max_grad_norm"].default, signature["foreach"].default, signature["fused"].default) == (
        None, False, False)


def test_lambs_defaults_are_its_signatures():
    assert Lamb.option_defaults() == {k: v for k, v in Lamb([torch.nn.Parameter(torch.ones(1))]).defaults.items()}


def test_the_signature_in_docs_api_md_is_lambs():
    import inspect
    import os
    import re

    from ..support.paths import ROOT

    if not os.path.isfile(f"{ROOT}/docs/api.md"):
        pytest.skip("needs the source tree")
    text = open(f"{ROOT}/docs/api.md").read()
    (documented,) = re.findall(r"`Lamb\((params, .*?)\)`", text)
    namespace: dict = {}
    exec(f"def documented({documented}): pass", namespace)  # the docs' own text, read as Python

    def described(fn):
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]
    assert described(namespace["documented"]) == described(Lamb)


def test_trust_ratios_read_gradients_still_multiplied_by_grad_scale():
    _, _, ps, opt = trained_with_next_grads(1)
    want = opt.trust_ratios()
    for p in ps:
        p.grad.mul_(1024.0)
    assert torch.equal(opt.trust_ratios(grad_scale=torch.tensor(1024.0)), want)
    with pytest.raises(ValueError, match="grad_scale must be a positive finite number"):
        opt.trust_ratios(grad_scale=0.0)


@pytest.mark.parametrize("path", PATHS)
def test_a_lamb_step_compiles_whole_and_steps_as_eager(path):
    from ..support.compiled import assert_compiled_step_matches_eager

    assert_compiled_step_matches_eager(lambda ps: Lamb(ps, lr=torch.tensor(0.01), caution=True, **PATHS[path]))


def test_a_compiled_lamb_step_does_not_recompile_per_step():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = torch.nn.Linear(6, 3)
    opt = Lamb(list(model.parameters()), lr=torch.tensor(0.01), foreach=True)

    @torch.compile(fullgraph=True)
    def step():
        opt.step()

    for i in range(6):
        for p in model.parameters():
            p.grad = torch.full_like(p, 0.1 * (i + 1))
        step()
    assert counters["stats"]["unique_graphs"] <= 2  # the first step (fresh state) and the rest


def _torchs_error_inputs():
    from torch.testing._internal.common_optimizers import get_error_inputs_for_all_optims

    return get_error_inputs_for_all_optims("cpu", torch.float32)


@pytest.mark.parametrize("error_input", _torchs_error_inputs(), ids=lambda e: e.optimizer_error_input.desc)
def test_torchs_generic_error_inputs_are_refused_as_by_every_torch_optimizer(error_input):
    oi = error_input.optimizer_error_input
    params = oi.params if oi.params is not None else [torch.nn.Parameter(torch.randn(2, 2))]
    if error_input.error_type is UserWarning:
        with pytest.warns(UserWarning, match=error_input.error_regex):
            Lamb(params, **oi.kwargs)
        return
    with pytest.raises(error_input.error_type, match=error_input.error_regex):
        Lamb(params, **oi.kwargs)


def test_named_parameters_are_taken_and_kept_in_the_state_dict():
    model = torch.nn.Linear(3, 2)
    opt = Lamb(model.named_parameters(), lr=LR)
    assert opt.state_dict()["param_groups"][0]["param_names"] == ["weight", "bias"]


@pytest.mark.parametrize("path", PATHS)
def test_gradscaler_unscales_before_a_lamb_step_and_skips_an_inf_step(path):
    params, grads = tensors(dtype=torch.float32)
    want, _ = train(lambda ps: Lamb(ps, lr=LR, **PATHS[path]), params, grads, steps=1)
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    opt = Lamb(ps, lr=LR, **PATHS[path])
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    scaler.scale(sum((p * g).sum() for p, g in zip(ps, grads[0]))).backward()  # grads: 256 g
    scaler.step(opt)
    scaler.update()
    for a, b in zip(ps, want):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-7)
    before = [p.detach().clone() for p in ps]
    opt.zero_grad()
    scaler.scale(sum((p * g).sum() for p, g in zip(ps, grads[1]))).backward()
    ps[0].grad[0, 0] = float("inf")
    scaler.step(opt)  # an inf: GradScaler skips the step
    assert all(torch.equal(a, p.detach()) for a, p in zip(before, ps))


def test_an_lr_scheduler_drives_lambs_lr():
    from torch.optim.lr_scheduler import StepLR

    params, grads = tensors()
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    opt = Lamb(ps, lr=2 * LR, max_grad_norm=None)
    scheduler = StepLR(opt, step_size=1, gamma=0.5)
    for p, g in zip(ps, grads[0]):
        p.grad = g.clone()
    opt.step()
    scheduler.step()
    assert opt.param_groups[0]["lr"] == LR
    for p, g in zip(ps, grads[1]):
        p.grad = g.clone()
    opt.step()
    want = [p.double() for p in params]
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in want]
    for t, lr in ((1, 2 * LR), (2, LR)):
        for i, (p, g) in enumerate(zip(want, grads[t - 1])):
            want[i], m, v = lamb_step_f64(p, g, *moments[i], step=t, lr=lr)
            moments[i] = (m, v)
    for a, b in zip(ps, want):
        torch.testing.assert_close(a.detach(), b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("path", PATHS)
def test_a_compiled_step_of_an_optimizer_with_state_has_no_graph_break(path):
    """The step counts are tensors in the state: read as Python floats they would break the graph at every step."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = torch.nn.Linear(6, 3)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt = Lamb(list(model.parameters()), lr=torch.tensor(0.01), **PATHS[path])
    opt.step()  # state (and step counts) exist before the first compiled step
    step = torch.compile(opt.step)
    for _ in range(3):
        step()
    assert not counters["graph_break"]


# ---- fused=True where the kernel cannot run: a warning once per device, then foreach ----

@pytest.fixture
def lamb_kernel_cannot_run(monkeypatch):
    from lars_cuda import ops, validation

    monkeypatch.setattr(validation, "_WARNED_LAMB", set())
    monkeypatch.setattr(ops, "fused_lamb_unavailable", lambda device: f"WHY({device})")


def _lamb_step_warnings(**path):
    import warnings

    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    opt = Lamb([p], lr=LR, **path)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        opt.step()  # the line a warning must point at
        line = __import__("inspect").currentframe().f_lineno - 1
    return [w for w in record if issubclass(w.category, RuntimeWarning)], line, p


def test_a_fused_request_the_kernel_cannot_serve_warns_once_per_device_and_steps_foreach(lamb_kernel_cannot_run,
                                                                                        monkeypatch):
    called = record_paths(monkeypatch)
    record, line, _ = _lamb_step_warnings(fused=True)
    assert [str(w.message) for w in record] == [
        "lars_cuda: fused=True was asked for, but WHY(cpu); Lamb runs the foreach path on cpu (the same math)"]
    assert (record[0].filename, record[0].lineno) == (__file__, line)  # the user's step line
    assert called == ["foreach"]
    assert _lamb_step_warnings(fused=True)[0] == []  # once per device and process


def test_the_default_path_falls_back_to_foreach_without_a_warning(lamb_kernel_cannot_run, monkeypatch):
    called = record_paths(monkeypatch)
    assert _lamb_step_warnings()[0] == []
    assert called == ["foreach"]
