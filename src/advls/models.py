"""The paper's classifiers, all taking inputs in [0, 1] and normalising inside the model.

Keeping normalisation inside the model means attacks, epsilons and the [0, 1] box are always
expressed in pixel units, whatever statistics a dataset uses.

=============== ===========================================================================
``linear``       one affine layer on the flattened input
``mlp``          784-500-256-10 ReLU network (the paper's "MNIST Linear" rows)
``lenet-mnist``  conv 10 / conv 20 / dropout / fc 320-50-10 (the classic PyTorch MNIST LeNet)
``cnn-small``    conv 16 4x4/2 / conv 32 4x4 / fc 100 (Gowal et al.'s small CNN, for IBP training)
``lenet``        conv 6 / conv 16 / fc 400-120-84-10 (CIFAR-10 and SVHN)
``resnet18``     CIFAR-style ResNet-18 (3x3 stem, no max-pool)
=============== ===========================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MODELS", "Normalize", "create", "num_parameters"]


def max_pool_2x2(x: Tensor) -> Tensor:
    """2x2 max pooling with stride 2 (floor mode): ``F.max_pool2d(x, 2)``, value for value.

    Where no gradient is recorded (evaluation, Square's queries, re-prediction), the result
    is the maximum of the four strided views instead: on CPU, ``max_pool2d``'s kernel is over
    ten times slower on the LeNets' small feature maps, and the MNIST LeNet's forward pass runs
    2.1x faster without it (``benchmarks/bench_models.py``). Where a gradient is recorded,
    ``max_pool2d`` itself runs, so the gradient (to the first maximum of each window) is kept.
    """
    if x.requires_grad:
        return F.max_pool2d(x, 2)
    height, width = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    x = x[..., :height, :width]
    rows = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])
    return torch.maximum(rows[..., 0::2], rows[..., 1::2])


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std``; buffers, so they travel with the checkpoint."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"mean and std must have equal length and std > 0, got {mean}, {std}")
        self.register_buffer(
            "mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        )
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """``(x - mean) / std``, per channel."""
        return (x - self.mean) / self.std


class Linear(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(math.prod(input_shape), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.flatten(1))


class MLP(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(math.prod(input_shape), 500)
        self.fc2 = nn.Linear(500, 256)
        self.fc3 = nn.Linear(256, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc3(F.relu(self.fc2(x)))


class LeNetMNIST(nn.Module):
    """The "MNIST LeNet" of the paper: conv 10 / conv 20 / dropout / fc 320-50-10.

    This is the classic PyTorch-examples MNIST network with one dropout before the last layer
    (the example's extra ``Dropout2d`` after ``conv2`` is left out).
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.conv1 = nn.Conv2d(channels, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.dropout = nn.Dropout(0.5)
        features = 20 * (((height - 4) // 2 - 4) // 2) * (((width - 4) // 2 - 4) // 2)
        self.fc1 = nn.Linear(features, 50)
        self.fc2 = nn.Linear(50, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(max_pool_2x2(self.conv1(x)))
        x = F.relu(max_pool_2x2(self.conv2(x)))
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(self.dropout(x))


class LeNet(nn.Module):
    """LeNet-5 as used for CIFAR-10 and SVHN: conv 6 / conv 16 / fc 400-120-84."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.conv1 = nn.Conv2d(channels, 6, kernel_size=5)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        features = 16 * (((height - 4) // 2 - 4) // 2) * (((width - 4) // 2 - 4) // 2)
        self.fc1 = nn.Linear(features, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = max_pool_2x2(F.relu(self.conv1(x)))
        x = max_pool_2x2(F.relu(self.conv2(x)))
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc3(F.relu(self.fc2(x)))


class SmallCNN(nn.Module):
    """The small CNN of Gowal et al. (2018) for certified (IBP) training: conv 16 4x4 stride
    2 / conv 32 4x4 stride 1 / fc 100. No pooling: interval bounds widen least through
    plain strided convolutions, which is why certified training uses this shape rather
    than LeNet's max-pools."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.conv1 = nn.Conv2d(channels, 16, kernel_size=4, stride=2)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=4, stride=1)
        side = lambda n: (n - 4) // 2 + 1 - 3  # noqa: E731  (conv1 then conv2)
        self.fc1 = nn.Linear(32 * side(height) * side(width), 100)
        self.fc2 = nn.Linear(100, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18: 3x3 stem without max-pool, stages of 64-128-256-512."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_shape[0], 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages, in_planes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(
                nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1))
            )
            in_planes = planes
        self.layers = nn.Sequential(*stages)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Classifier(nn.Module):
    """A network behind its input normalisation: maps [0, 1] images to logits."""

    def __init__(self, name: str, normalize: Normalize, net: nn.Module) -> None:
        super().__init__()
        self.name = name
        self.normalize = normalize
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalize(x))


Builder = Callable[[tuple[int, int, int], int], nn.Module]

#: name -> (builder, default input shape)
MODELS: dict[str, tuple[Builder, tuple[int, int, int]]] = {
    "linear": (Linear, (1, 28, 28)),
    "mlp": (MLP, (1, 28, 28)),
    "lenet-mnist": (LeNetMNIST, (1, 28, 28)),
    "cnn-small": (SmallCNN, (1, 28, 28)),
    "lenet": (LeNet, (3, 32, 32)),
    "resnet18": (ResNet18, (3, 32, 32)),
}


def create(
    name: str,
    num_classes: int = 10,
    input_shape: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Classifier:
    """Build a model by name; inputs in [0, 1], normalised inside by ``mean``/``std``.

    Args:
        name: one of :data:`MODELS`.
        num_classes: number of output logits.
        input_shape: (C, H, W) of the inputs; defaults to the model's usual data set.
        mean: per-channel means for the normalisation layer (default 0: none); pass a
            dataset's ``mean``.
        std: per-channel standard deviations for it (default 1: none); pass a dataset's
            ``std``.
    """
    if name not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {name!r}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    builder, default_shape = MODELS[name]
    shape = tuple(int(v) for v in (input_shape or default_shape))
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {input_shape!r}")
    channels = shape[0]
    if name in ("lenet-mnist", "lenet") and min(shape[1:]) < 16:
        raise ValueError(f"model {name!r} needs inputs of at least 16x16 pixels, got {shape}")
    mean = tuple(mean) if mean is not None else (0.0,) * channels
    std = tuple(std) if std is not None else (1.0,) * channels
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"mean and std must have one value per input channel ({channels}), got {mean}, {std}"
        )
    return Classifier(name, Normalize(mean, std), builder(shape, num_classes))


def num_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
