"""The param-group options and momentum-state key of every LARS flavour
lars_cuda speaks: what each class's ``state_dict()`` holds, and so what tells a
state dict of one flavour from another's (``validation.check_state_dict_schema``).
Lars's own options are ``lars_cuda.options.LARS_OPTIONS``."""

from __future__ import annotations

from .lamb_options import LAMB_OPTIONS
from .options import LARS_OPTIONS

__all__ = ["ALL_BUFFER_KEYS", "ALL_OPTIONS", "APEX_LAMB_OPTIONS", "BOLTS_OPTIONS", "HOME", "SGD_OPTIONS",
           "SOLO_OPTIONS", "SSL_OPTIONS", "TIMM_LAMB_OPTIONS", "TIMM_OPTIONS"]

# timm.optim.Lars, torch.optim.SGD (under apex LARC), the self-supervised repos' LARS,
# Lightning Bolts'/lightly's LARS, solo-learn's LARS.
TIMM_OPTIONS = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "trust_coeff", "eps", "trust_clip",
                "always_adapt", "foreach", "fused")
SGD_OPTIONS = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize", "foreach", "differentiable",
               "fused")
SSL_OPTIONS = ("lr", "weight_decay", "momentum", "eta", "weight_decay_filter", "lars_adaptation_filter", "foreach",
               "fused")
BOLTS_OPTIONS = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "trust_coefficient", "eps", "foreach",
                 "fused")
SOLO_OPTIONS = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "eta", "eps", "clip_lars_lr",
                "exclude_bias_n_norm_lars", "foreach", "fused")
# LAMB: timm.optim.Lamb and apex.optimizers.FusedLAMB (lars_cuda.Lamb's own: LAMB_OPTIONS).
TIMM_LAMB_OPTIONS = ("lr", "bias_correction", "betas", "eps", "weight_decay", "grad_averaging", "max_grad_norm",
                     "trust_clip", "always_adapt", "caution", "decoupled_decay", "corrected_weight_decay",
                     "max_lr_snapshot", "foreach", "fused")
APEX_LAMB_OPTIONS = ("lr", "bias_correction", "betas", "eps", "weight_decay", "grad_averaging", "max_grad_norm",
                     "foreach", "fused")

# A state dict holding one of these that a class does not have comes from another
# flavour. Keys no flavour defines (a scheduler's ``initial_lr``, timm's ``lr_scale``)
# pass, and so does torch's ``differentiable`` (every torch.optim state dict has it,
# and Lars reads SGD's).
ALL_OPTIONS = frozenset(LARS_OPTIONS + TIMM_OPTIONS + SGD_OPTIONS + SSL_OPTIONS + BOLTS_OPTIONS + SOLO_OPTIONS
                        + LAMB_OPTIONS + TIMM_LAMB_OPTIONS + APEX_LAMB_OPTIONS) - {"differentiable"}
ALL_BUFFER_KEYS = frozenset({"momentum_buffer", "mu", "exp_avg"})
# Whose a key is, for the message.
HOME = {"eeta": "lars_cuda.Lars", "update_clip": "lars_cuda.Lars", "ratio_on_grad": "lars_cuda.Lars",
        "trust_coeff": "timm.optim.Lars (lars_cuda.compat.TimmLars)",
        "eta": "the self-supervised LARS (lars_cuda.compat.SSLLars)",
        "mu": "the self-supervised LARS (lars_cuda.compat.SSLLars)",
        "trust_coefficient": "Lightning Bolts' / lightly's LARS (lars_cuda.compat.BoltsLars)",
        "clip_lars_lr": "solo-learn's LARS (lars_cuda.compat.SoloLars)",
        "exclude_bias_n_norm_lars": "solo-learn's LARS (lars_cuda.compat.SoloLars)",
        "betas": "an Adam-family optimizer (lars_cuda.Lamb, TimmLamb, FusedLAMB)",
        "decay_mode": "lars_cuda.Lamb", "max_lr": "lars_cuda.Lamb",
        "decoupled_decay": "timm.optim.Lamb (lars_cuda.compat.TimmLamb)",
        "max_lr_snapshot": "timm.optim.Lamb (lars_cuda.compat.TimmLamb)",
        "exp_avg": "an Adam-family optimizer (lars_cuda.Lamb, TimmLamb, FusedLAMB)",
        "momentum_buffer": "torch.optim.SGD, Lars, TimmLars, LARC, BoltsLars or SoloLars"}
