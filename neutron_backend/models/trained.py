"""The zoo models trained on scikit-learn's digits (`neutron_backend.models.digits`): which architecture, at which
input size, trained how, and where their weights are.

The weights ship in `weights/<name>.pt` (fp32 state dicts), written by `python -m neutron_backend.models.train`;
`weights/README.md` records the command, seeds and float test accuracy of each. Quantization calibrates on the
first `CALIBRATION_IMAGES` training images; accuracy is measured on the 360 held-out test images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from neutron_backend.models import cifarnet, ds_cnn, mobilenet_v2, resnet8
from neutron_backend.models.digits import NUM_CLASSES, load_split

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
CALIBRATION_IMAGES = 256
TRAINING_SEED = 0


@dataclass(frozen=True)
class TrainedModel:
    """A zoo architecture trained on digits: `architecture()` builds it untrained; `input_shape` is what the
    digits are resized to; `epochs` and `learning_rate` are its training recipe (Adam, cosine decay, batch 32)."""

    name: str
    architecture: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    epochs: int
    learning_rate: float
    description: str

    @property
    def weights_path(self) -> Path:
        return WEIGHTS_DIR / f"{self.name}.pt"

    def build(self) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
        """The trained model in eval mode and one example input (the first training image).

        Raises FileNotFoundError naming the training command when the weights file is missing.
        """
        if not self.weights_path.is_file():
            raise FileNotFoundError(f"no trained weights at {self.weights_path}; train them with `python -m "
                                    f"neutron_backend.models.train --models {self.name}`")
        model = self.architecture()
        model.load_state_dict(torch.load(self.weights_path, weights_only=True))
        return model.eval(), self.calibration_batches(1)[0]

    def calibration_batches(self, count: int = CALIBRATION_IMAGES) -> list[tuple[torch.Tensor, ...]]:
        """The first `count` training images, one batch-1 input tuple each."""
        return load_split("train", self.input_shape).batches(count)


TRAINED_MODELS = (
    TrainedModel("cifarnet_digits", lambda: cifarnet.CifarNet(NUM_CLASSES), (1, 3, 32, 32), 15, 2e-3,
                 "CifarNet trained on digits (upsampled to 3x32x32)"),
    TrainedModel("resnet8_digits", lambda: resnet8.ResNet8(NUM_CLASSES), (1, 3, 32, 32), 15, 2e-3,
                 "ResNet-8 trained on digits (upsampled to 3x32x32)"),
    TrainedModel("ds_cnn_digits", lambda: ds_cnn.DSCNN(NUM_CLASSES), (1, 1, 49, 10), 20, 2e-3,
                 "DS-CNN trained on digits (resized to its 1x49x10 input)"),
    TrainedModel("ds_cnn_1d_digits", lambda: ds_cnn.DSCNN1d(NUM_CLASSES), ds_cnn.INPUT_SHAPE_1D, 20, 2e-3,
                 "1-D DS-CNN trained on digits (49 rows of 10 features as frames)"),
    TrainedModel("mobilenet_v2_digits", lambda: mobilenet_v2.MobileNetV2(NUM_CLASSES, width_mult=0.35),
                 (1, 3, 32, 32), 30, 2e-3, "MobileNetV2 0.35 trained on digits (upsampled to 3x32x32)"),
)
