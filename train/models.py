"""Models: torchvision's classifiers by name, plus two small ones for 28x28 data
(Fashion-MNIST): a CIFAR-style ResNet (He et al. 2016, §4.2) and, for the
equivalence tests that need a model without BatchNorm, a small ConvNet."""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) with 16/32/64 channels; n=3 is ResNet-20."""

    def __init__(self, n: int = 3, in_channels: int = 1, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        layers, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            for j in range(n):
                layers.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.layers(torch.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class SmallConvNet(nn.Module):
    """Two convolutions and a linear layer, no normalisation layers."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
        )
        self.fc = nn.Linear(16 * 16, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


SMALL_MODELS = {
    "cifar_resnet20": lambda c, k: CifarResNet(3, c, k),
    "cifar_resnet8": lambda c, k: CifarResNet(1, c, k),
    "small_convnet": SmallConvNet,
}


def build_model(name: str, in_channels: int, num_classes: int) -> nn.Module:
    if name in SMALL_MODELS:
        return SMALL_MODELS[name](in_channels, num_classes)
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"unknown --model {name!r}: use one of {sorted(SMALL_MODELS)} or a torchvision classifier")
    if in_channels != 3:
        raise ValueError(f"torchvision's {name} takes 3-channel images; use {sorted(SMALL_MODELS)} for this data")
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
