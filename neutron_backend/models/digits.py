"""scikit-learn's handwritten digits (1,797 8x8 images, 10 classes) shaped for a zoo model's input: the data the
trained zoo models learn from and are checked on.

The split is fixed: 80% train / 20% test, stratified by class, `random_state=SPLIT_SEED` (1,437 / 360 images).
Pixels (0..16) are scaled to [0, 1], then resized with bilinear interpolation to the model's spatial size:

- a 4-D input `[1, C, H, W]`: the image becomes HxW and is replicated to C channels (e.g. 3x32x32 for CifarNet);
- a 3-D input `[1, C, L]` (a 1-D model over L time steps of C features): the image is resized to L rows x C
  columns and each row is one time step, as spectrogram frames are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

SPLIT_SEED = 0
TEST_FRACTION = 0.2
NUM_CLASSES = 10
# Digits pixels are integers in [0, 16].
_PIXEL_MAX = 16.0


@dataclass(frozen=True)
class DigitsSplit:
    """Images shaped for a model (`[N, *input_shape[1:]]`, float32) and their labels (`[N]`, int64)."""

    images: torch.Tensor
    labels: torch.Tensor

    def batches(self, count: int | None = None) -> list[tuple[torch.Tensor]]:
        """The first `count` images (all by default) as batch-1 input tuples, as a batch-1 model takes them."""
        images = self.images if count is None else self.images[:count]
        return [(image.unsqueeze(0),) for image in images]


def raw_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The `split` ("train" or "test") as `[N, 8, 8]` images in [0, 1] and `[N]` int64 labels.

    Raises ValueError for another split name, ImportError without scikit-learn.
    """
    if split not in ("train", "test"):
        raise ValueError(f"unknown digits split {split!r}; expected 'train' or 'test'")
    images, labels, train, test = _load_images()
    index = torch.tensor(train if split == "train" else test)
    return images[index], labels[index]


def _load_images() -> tuple[torch.Tensor, torch.Tensor, list[int], list[int]]:
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise ImportError("the digits data set needs scikit-learn: pip install scikit-learn (it ships the images, "
                          "no download)") from error
    loaded = load_digits()
    images = torch.tensor(loaded.images, dtype=torch.float32) / _PIXEL_MAX
    labels = torch.tensor(loaded.target, dtype=torch.int64)
    train, test = train_test_split(list(range(len(labels))), test_size=TEST_FRACTION, random_state=SPLIT_SEED,
                                   stratify=loaded.target)
    return images, labels, train, test


def shape_images(images: torch.Tensor, input_shape: Sequence[int]) -> torch.Tensor:
    """`[N, 8, 8]` images in [0, 1] resized and replicated for a model input of `input_shape` (batch dim first).

    Raises ValueError for an input that is neither `[1, C, H, W]` nor `[1, C, L]`.
    """
    batch = images.unsqueeze(1)
    if len(input_shape) == 4:
        _, channels, height, width = input_shape
        resized = torch.nn.functional.interpolate(batch, size=(height, width), mode="bilinear", align_corners=False)
        return resized.expand(-1, channels, -1, -1).contiguous()
    if len(input_shape) == 3:
        _, channels, length = input_shape
        resized = torch.nn.functional.interpolate(batch, size=(length, channels), mode="bilinear",
                                                  align_corners=False)
        return resized.squeeze(1).transpose(1, 2).contiguous()
    raise ValueError(f"cannot shape digits for a model input of shape {list(input_shape)}; expected [1, C, H, W] "
                     "or [1, C, L]")


def load_split(split: str, input_shape: Sequence[int]) -> DigitsSplit:
    """The `split` ("train" or "test") of the digits, shaped for a model input of `input_shape`.

    Raises ValueError for another split name, ImportError without scikit-learn.
    """
    images, labels = raw_split(split)
    return DigitsSplit(shape_images(images, input_shape), labels)
