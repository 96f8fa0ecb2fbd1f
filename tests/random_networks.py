"""Random small networks for the bounds' tests: weights scaled by fan-in, random biases and
batch-norm statistics, all from one seed."""

from __future__ import annotations

import math

import torch
from torch import nn


def randomly_initialised(model: nn.Module, seed: int) -> nn.Module:
    """Weights scaled by fan-in and random batch-norm statistics, from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator))
                module.weight.mul_(1.5 / math.sqrt(fan_in))
                if module.bias is not None:
                    module.bias.copy_(0.3 * torch.randn(module.bias.shape, generator=generator))
            if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
                size = module.num_features
                module.running_mean.copy_(0.3 * torch.randn(size, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(size, generator=generator))
                module.weight.copy_(1 + 0.5 * torch.randn(size, generator=generator))
                module.bias.copy_(0.2 * torch.randn(size, generator=generator))
    return model.eval()
