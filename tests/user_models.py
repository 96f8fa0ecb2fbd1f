"""A user's model module for the tests, and how a user's script would train it.

The module's text is written to a folder outside the package (as a user's file would be)
and imported from there by ``advls evaluate --model file.py:factory`` or a sweep spec.
"""

from __future__ import annotations

import importlib.util
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

MODELS = textwrap.dedent(
    '''
    """A user's models: nothing here knows advls."""
    import torch
    from torch import nn


    def small_cnn(channels=1, classes=10, width=8):
        return nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
            nn.Flatten(), nn.Linear(2 * width * 16, classes),
        )


    class MLP(nn.Module):
        def __init__(self, pixels, hidden, classes):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(pixels, hidden), nn.ReLU())
            self.head = nn.Linear(hidden, classes)

        def forward(self, x):
            return self.head(self.body(x.flatten(1)))


    def mlp(pixels=784, hidden=64, classes=10):
        return MLP(pixels, hidden, classes)


    def exploding(**kwargs):
        raise RuntimeError("the factory exploded")


    def not_a_model():
        return 3


    class Flat(nn.Module):
        def __init__(self, pixels):
            super().__init__()
            self.linear = nn.Linear(pixels, 1)

        def forward(self, x):
            return self.linear(x.flatten(1)).squeeze(1)


    def flat(pixels=256):
        return Flat(pixels)


    class Pair(MLP):
        def forward(self, x):
            return super().forward(x), x


    def pair(pixels=256):
        return Pair(pixels, 8, 2)


    class ChannelsLast(nn.Module):
        """Expects (N, H, W, C) images, as a model exported from another framework may."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.conv(x.permute(0, 3, 1, 2)).mean((2, 3)))


    def channels_last():
        return ChannelsLast()


    class Rounded(nn.Module):
        """A classifier behind 8-bit input quantisation: its input gradient is zero."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(torch.round(x * 255) / 255)


    def rounded_cnn(channels=1, classes=10, width=8):
        return Rounded(small_cnn(channels, classes, width))
    '''
)


def write_models(path: Path) -> ModuleType:
    """The module written to ``path`` and imported from there, as the user's own script."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(MODELS)
    spec = importlib.util.spec_from_file_location(f"user_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_briefly(
    build: Callable[[], nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    seed: int,
    steps: int = 200,
) -> nn.Module:
    """The model ``build`` makes (seeded) after a few hundred SGD steps, as a user's
    training script would take them."""
    torch.manual_seed(seed)
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    draw = torch.Generator().manual_seed(seed)
    x = images.float() / 255
    for _ in range(steps):
        batch = torch.randint(0, len(x), (16,), generator=draw)
        loss = F.cross_entropy(model(x[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model
