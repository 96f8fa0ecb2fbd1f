"""The dataset object: :class:`ImageDataset`, uint8 NCHW images with int64 labels and the
metadata a model needs (classes, per-channel mean and std)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from advls.data.errors import DataError
from advls.data.labels import check_labels


@dataclass(frozen=True, eq=False, repr=False)
class ImageDataset:
    """Images (uint8, ``(N, C, H, W)``, contiguous), int64 labels and their metadata.

    ``mean``/``std`` are per-channel statistics of the dataset family on ``[0, 1]`` pixels,
    meant for a normalisation layer inside the model.
    """

    name: str
    split: str
    images: torch.Tensor = field(repr=False)
    labels: torch.Tensor = field(repr=False)
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if images.dtype != torch.uint8 or images.dim() != 4 or not images.is_contiguous():
            raise DataError(
                f"images must be a contiguous uint8 (N, C, H, W) tensor, got {images.dtype} "
                f"of shape {tuple(images.shape)}"
            )
        if labels.dtype != torch.int64 or labels.dim() != 1 or len(labels) != len(images):
            raise DataError(
                f"labels must be an int64 tensor of shape ({len(images)},), got {labels.dtype} "
                f"of shape {tuple(labels.shape)}"
            )
        if 0 in images.shape[1:]:
            raise DataError(f"images of shape {tuple(images.shape)} have no pixels")
        if not self.classes:
            raise DataError("a dataset needs at least one class")
        check_labels(labels, len(self.classes), f"{self.name} ({self.split})")
        channels = images.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise DataError(f"mean and std need {channels} entries, one per channel")
        if min(self.std) <= 0:
            raise DataError(f"std must be positive, got {self.std}")

    @property
    def num_classes(self) -> int:
        """How many classes the dataset declares."""
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        _, channels, height, width = self.images.shape
        return channels, height, width

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )
