"""Model zoo for the demo, tests and benchmarks: `get_model(name)` returns a model and its example inputs,
`zoo_entry(name)` what it is and where it comes from.

Every model is our own definition (no torchvision). Two kinds:

- trained on scikit-learn's digits (names ending in `_digits`, `neutron_backend.models.trained`): weights ship in
  `weights/`, quantization calibrates on training images, accuracy is measured on the held-out test split. These
  are the models accuracy claims are made on.
- random-weight architectures (the other names): seeded weights and, where there is batchnorm, running statistics
  warmed up on random data so quantization sees realistic ranges. For lowering, delegation and speed, not accuracy.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from neutron_backend.models import autoencoder, cifarnet, ds_cnn, mobilenet_v1_vww, mobilenet_v2, resnet8
from neutron_backend.models.common import warm_up_batchnorm
from neutron_backend.models.trained import TRAINED_MODELS

ModelBuilder = Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]]


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: its registry name, builder, input shape, what it is, where it comes from, and whether its
    output is class logits (top-1 comparisons make sense) or something else (a reconstruction). A trained model
    also has `dataset` (the data set it was trained on, "digits") and `calibration()`, its calibration batches
    from the training split; `test_split()` gives its held-out test images and labels."""

    name: str
    build: ModelBuilder
    input_shape: tuple[int, ...]
    description: str
    source: str
    classifier: bool = True
    dataset: str | None = None
    calibration: Callable[[], list[tuple[torch.Tensor, ...]]] | None = None

    @property
    def trained(self) -> bool:
        return self.dataset is not None

    def test_split(self):
        """The held-out test split (a `digits.DigitsSplit`) of a trained model. Raises ValueError for a
        random-weight model."""
        if self.dataset != "digits":
            raise ValueError(f"{self.name} has random weights and no test split; trained models: "
                             f"{[n for n, e in _REGISTRY.items() if e.trained]}")
        from neutron_backend.models.digits import load_split

        return load_split("test", self.input_shape)


_ENTRIES = (
    *(ZooEntry(t.name, t.build, t.input_shape, t.description, "scikit-learn digits, "
               "`python -m neutron_backend.models.train`", dataset="digits", calibration=t.calibration_batches)
      for t in TRAINED_MODELS),
    ZooEntry("cifarnet", cifarnet.build, cifarnet.INPUT_SHAPE,
             "CifarNet: 3 conv5x5 (32/32/64) + ReLU + 2x2 max pool, FC 1024 -> 10; random weights",
             "TensorFlow-Slim CifarNet (CIFAR-10)"),
    ZooEntry("resnet8", resnet8.build, resnet8.INPUT_SHAPE,
             "ResNet-8: 3 residual stacks (16/32/64 ch), avg pool, FC 64 -> 10 (CIFAR-10); random weights",
             "MLPerf Tiny image classification (arXiv:2106.07597)"),
    ZooEntry("ds_cnn", ds_cnn.build, ds_cnn.INPUT_SHAPE,
             "DS-CNN keyword spotting: conv10x4 + 4 depthwise-separable blocks (64 ch), avg pool, FC 64 -> 12; "
             "random weights",
             "MLPerf Tiny keyword spotting; Zhang et al., Hello Edge (arXiv:1711.07128)"),
    ZooEntry("mobilenet_v1_vww", mobilenet_v1_vww.build, mobilenet_v1_vww.INPUT_SHAPE,
             "MobileNetV1 0.25 visual wake words: 13 depthwise-separable blocks (8..256 ch), avg pool, FC 256 -> 2; "
             "random weights",
             "MLPerf Tiny visual wake words; Howard et al., MobileNets (arXiv:1704.04861)"),
    ZooEntry("autoencoder", autoencoder.build, autoencoder.INPUT_SHAPE,
             "Deep autoencoder: Linear 640 -> 128 x4 -> 8 -> 128 x4 -> 640, BatchNorm1d + ReLU; random weights",
             "MLPerf Tiny anomaly detection (DCASE 2020 task 2 baseline)", classifier=False),
    ZooEntry("mobilenet_v2", mobilenet_v2.build, mobilenet_v2.INPUT_SHAPE,
             "MobileNetV2 1.0: 17 inverted residual blocks (ReLU6), 1x1 to 1280 ch, avg pool, FC 1280 -> 1000; "
             "random weights",
             "Sandler et al., MobileNetV2 (arXiv:1801.04381)"),
)
_REGISTRY: dict[str, ZooEntry] = {entry.name: entry for entry in _ENTRIES}


def list_models() -> list[str]:
    """Returns the names `get_model` accepts, sorted."""
    return sorted(_REGISTRY)


def zoo_entry(name: str) -> ZooEntry:
    """Returns the zoo entry called `name` (case-insensitive).

    Raises ValueError for an unknown name, listing the known ones and the closest match.
    """
    key = name.strip().lower()
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, list_models(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model {name!r}; known models: {list_models()}.{hint}")
    return _REGISTRY[key]


def get_model(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Returns the model called `name` (case-insensitive), in eval mode, and its example inputs.

    Raises ValueError for an unknown name, listing the known ones and the closest match.
    """
    return zoo_entry(name).build()


__all__ = ["ZooEntry", "get_model", "list_models", "warm_up_batchnorm", "zoo_entry"]
