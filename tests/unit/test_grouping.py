"""create_optimizer_lars groups parameters as the contract says (spec §2)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lars_cuda import Lars, create_optimizer_lars


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)  # weight: LARS, bias: excluded (name)
        self.bn = nn.BatchNorm2d(4)
        self.sbn = nn.SyncBatchNorm(4)
        self.gn = nn.GroupNorm(2, 4)
        self.inorm = nn.InstanceNorm2d(4, affine=True)
        self.ln = nn.LayerNorm(4)
        self.rms = nn.RMSNorm(4)
        self.fc = nn.Linear(4, 2, bias=False)
        self.head_bias = nn.Parameter(torch.zeros(2))  # excluded by its name
        self.frozen = nn.Linear(2, 2)
        self.frozen.weight.requires_grad_(False)


def names(model, params):
    lookup = {id(p): n for n, p in model.named_parameters()}
    return [lookup[id(p)] for p in params]


def test_bn_bias_separately_puts_norm_and_bias_params_in_a_second_group():
    model = Net()
    opt = create_optimizer_lars(model, lr=1.0, momentum=0.9, weight_decay=1e-4, bn_bias_separately=True)
    g0, g1 = opt.param_groups
    assert names(model, g0["params"]) == ["conv.weight", "fc.weight"]
    assert names(model, g1["params"]) == [
        "head_bias", "conv.bias", "bn.weight", "bn.bias", "sbn.weight", "sbn.bias", "gn.weight", "gn.bias",
        "inorm.weight", "inorm.bias", "ln.weight", "ln.bias", "rms.weight", "frozen.bias",
    ]
    assert g0["lars"] is True and g0["weight_decay"] == 1e-4
    assert g1["lars"] is False and g1["weight_decay"] == 0.0


def test_frozen_parameters_are_in_no_group():
    model = Net()
    for flag in (True, False):
        opt = create_optimizer_lars(model, lr=1.0, momentum=0.9, weight_decay=1e-4, bn_bias_separately=flag)
        all_params = [p for g in opt.param_groups for p in g["params"]]
        assert not any(p is model.frozen.weight for p in all_params)


def test_without_bn_bias_separately_there_is_one_lars_group_with_weight_decay():
    model = Net()
    opt = create_optimizer_lars(model, lr=1.0, momentum=0.9, weight_decay=1e-4, bn_bias_separately=False,
                                epsilon=1e-5)
    assert len(opt.param_groups) == 1
    g = opt.param_groups[0]
    assert g["lars"] and g["weight_decay"] == 1e-4 and g["epsilon"] == 1e-5
    assert len(g["params"]) == sum(1 for p in model.parameters() if p.requires_grad)


def test_every_parameter_is_in_exactly_one_group_for_torchvision_resnet():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18()
    opt = create_optimizer_lars(model, lr=1.0, momentum=0.9, weight_decay=1e-4, bn_bias_separately=True)
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert len(opt.param_groups[0]["params"]) == 21  # 20 convs + fc.weight


def test_keywords_reach_lars():
    opt = create_optimizer_lars(nn.Linear(2, 2), lr=0.5, momentum=0.8, weight_decay=0.0,
                                bn_bias_separately=True, epsilon=0.0, eeta=0.02, nesterov=True, foreach=True)
    assert isinstance(opt, Lars)
    assert opt.param_groups[0]["eeta"] == 0.02 and opt.param_groups[0]["nesterov"] is True


def test_non_module_raises_type_error():
    with pytest.raises(TypeError):
        create_optimizer_lars([torch.ones(2)], lr=0.1)
