"""The LARS flavours we replace that are not packages we can install here,
restated line for line: apex's LARC (apex/parallel/LARC.py, which needs a CUDA
build of apex), the LARS of the self-supervised repos (Barlow Twins'
and VICReg's main.py), Lightning Bolts' LARS as lightly ships it
(lightly/utils/lars.py) and solo-learn's (solo/utils/lars.py), and apex's
FusedLAMB. tests/unit/test_compat.py checks lars_cuda.compat against
them and bench_flavours.py times them as the peers."""

from __future__ import annotations

import torch


class ApexLARC:
    """apex.parallel.LARC.LARC, restated (apex/parallel/LARC.py, step())."""

    def __init__(self, optimizer, trust_coefficient=0.02, clip=True, eps=1e-8):
        self.optim, self.trust_coefficient, self.eps, self.clip = optimizer, trust_coefficient, eps, clip

    @torch.no_grad()
    def step(self):
        weight_decays = []
        for group in self.optim.param_groups:
            weight_decay = group["weight_decay"] if "weight_decay" in group else 0
            weight_decays.append(weight_decay)
            group["weight_decay"] = 0
            for p in group["params"]:
                if p.grad is None:
                    continue
                param_norm = torch.norm(p.data)
                grad_norm = torch.norm(p.grad.data)
                if param_norm != 0 and grad_norm != 0:
                    adaptive_lr = self.trust_coefficient * (param_norm) / (
                        grad_norm + param_norm * weight_decay + self.eps)
                    if self.clip:
                        adaptive_lr = min(adaptive_lr / group["lr"], 1)
                    p.grad.data += weight_decay * p.data
                    p.grad.data *= adaptive_lr
        self.optim.step()
        for i, group in enumerate(self.optim.param_groups):
            group["weight_decay"] = weight_decays[i]


class SSLLARS(torch.optim.Optimizer):
    """The LARS of Barlow Twins / VICReg (main.py), restated."""

    def __init__(self, params, lr, weight_decay=0, momentum=0.9, eta=0.001, weight_decay_filter=False,
                 lars_adaptation_filter=False):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta,
                        weight_decay_filter=weight_decay_filter, lars_adaptation_filter=lars_adaptation_filter)
        super().__init__(params, defaults)

    @staticmethod
    def exclude_bias_and_norm(p):
        return p.ndim == 1

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                dp = p.grad
                if dp is None:
                    continue
                if not g["weight_decay_filter"] or not self.exclude_bias_and_norm(p):
                    dp = dp.add(p, alpha=g["weight_decay"])
                if not g["lars_adaptation_filter"] or not self.exclude_bias_and_norm(p):
                    param_norm = torch.norm(p)
                    update_norm = torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(param_norm > 0.,
                                    torch.where(update_norm > 0, (g["eta"] * param_norm / update_norm), one), one)
                    dp = dp.mul(q)
                param_state = self.state[p]
                if "mu" not in param_state:
                    param_state["mu"] = torch.zeros_like(p)
                mu = param_state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])


class BoltsLARS(torch.optim.Optimizer):
    """Lightning Bolts' LARS as lightly ships it (``lightly.utils.lars.LARS``; Bolts'
    ``pl_bolts.optimizers.lars.LARS`` is the same step), restated: the ratio scales
    ``g + wd*p`` where ``weight_decay != 0`` and both norms are non-zero; SGD momentum
    whose first step copies the update."""

    def __init__(self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False,
                 trust_coefficient=0.001, eps=1e-8):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, trust_coefficient=trust_coefficient, eps=eps))

    def _adapts(self, group, p):
        return group["weight_decay"] != 0

    def _coefficient(self, group):
        return group["trust_coefficient"]

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            wd = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                w, n = torch.norm(p), torch.norm(p.grad)
                if self._adapts(group, p) and w != 0 and n != 0:
                    ratio = w / (n + w * wd + group["eps"]) * self._coefficient(group)
                    if group.get("clip_lars_lr"):
                        ratio = min(ratio / group["lr"], 1)
                    update = update.add(p, alpha=wd)
                    update *= ratio
                if group["momentum"] != 0:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        buf = state["momentum_buffer"] = update.clone()
                    else:
                        buf = state["momentum_buffer"]
                        buf.mul_(group["momentum"]).add_(update, alpha=1 - group["dampening"])
                    update = update.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                p.add_(update, alpha=-group["lr"])


class SoloLARS(BoltsLARS):
    """solo-learn's LARS (``solo.utils.lars.LARS``, Bolts' with ``eta``), restated: every
    param adapts whatever the weight decay, but 1-D ones when
    ``exclude_bias_n_norm_lars`` (then neither decay nor ratio); ``clip_lars_lr``
    turns the ratio into ``min(r/lr, 1)``."""

    def __init__(self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, eta=1e-3, eps=1e-8,
                 clip_lars_lr=False, exclude_bias_n_norm_lars=False):
        torch.optim.Optimizer.__init__(self, params, dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov, eta=eta,
            eps=eps, clip_lars_lr=clip_lars_lr, exclude_bias_n_norm_lars=exclude_bias_n_norm_lars))

    def _adapts(self, group, p):
        return p.ndim != 1 or not group["exclude_bias_n_norm_lars"]

    def _coefficient(self, group):
        return group["eta"]


class ApexFusedLAMB(torch.optim.Optimizer):
    """apex.optimizers.FusedLAMB, restated on any device (apex/optimizers/fused_lamb.py,
    step(); csrc/multi_tensor_lamb.cu, LAMBStage1Functor / LAMBStage2Functor), in the
    tensors' own dtype where apex computes in float32. Like apex it writes the update
    into p.grad (stage 1 stores it over g) and keeps one step count per group."""

    def __init__(self, params, lr=1e-3, bias_correction=True, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01,
                 amsgrad=False, adam_w_mode=True, grad_averaging=True, set_grad_none=True, max_grad_norm=1.0,
                 use_nvlamb=False):
        if amsgrad:
            raise RuntimeError("FusedLAMB does not support the AMSGrad variant.")
        defaults = dict(lr=lr, bias_correction=bias_correction, betas=betas, eps=eps, weight_decay=weight_decay,
                        grad_averaging=grad_averaging, max_grad_norm=max_grad_norm)
        super().__init__(params, defaults)
        self.adam_w_mode, self.set_grad_none, self.use_nvlamb = 1 if adam_w_mode else 0, set_grad_none, use_nvlamb

    @torch.no_grad()
    def step(self):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        global_grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        max_grad_norm = self.defaults["max_grad_norm"]
        clipped = global_grad_norm / max_grad_norm if global_grad_norm > max_grad_norm else 1.0
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            beta3 = 1 - beta1 if group["grad_averaging"] else 1.0
            group["step"] = group.get("step", 0) + 1
            bc1, bc2 = ((1 - beta1 ** group["step"], 1 - beta2 ** group["step"]) if group["bias_correction"]
                        else (1.0, 1.0))
            decay = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if len(state) == 0:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                param_norm = torch.linalg.vector_norm(p)  # (before stage 1, as multi_tensor_lamb_cuda)
                # stage 1
                scaled_grad = p.grad / clipped
                if self.adam_w_mode == 0:
                    scaled_grad = scaled_grad + decay * p
                m.mul_(beta1).add_(beta3 * scaled_grad)
                v.mul_(beta2).add_((1 - beta2) * scaled_grad * scaled_grad)
                update = (m / bc1) / ((v / bc2).sqrt() + group["eps"])
                if self.adam_w_mode == 1:
                    update = update + decay * p
                p.grad.copy_(update)
                # stage 2
                ratio = group["lr"]
                if self.use_nvlamb or decay != 0.0:
                    update_norm = torch.linalg.vector_norm(update)
                    if update_norm != 0 and param_norm != 0:
                        ratio = group["lr"] * (param_norm / update_norm)
                p.sub_(ratio * update)
