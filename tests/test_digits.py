"""End to end on real data: a small CNN trained here on scikit-learn's 8x8 digits, quantized with NeutronQuantizer,
lowered to one Neutron partition, written to a .pte and run on the host through ExecuTorch's runtime.

The .pte must agree with the quantized torch model (the reference, DESIGN.md §7) on >= 99% of the test images
and its accuracy must stay within 1 point of the float model's.
"""

from __future__ import annotations

from pathlib import Path

import executorch.kernels.quantized  # noqa: F401  (out-variants of quantize/dequantize for to_executorch)
import pytest
import torch
from executorch.exir import to_edge_transform_and_lower
from torch import nn

from neutron_backend.compile_spec import generate_neutron_compile_spec
from neutron_backend.partitioner import NeutronPartitioner
from neutron_backend.quantizer.calibration import quantize_model
from neutron_backend.verify import verify

SEED = 0
TEST_FRACTION = 0.3
EPOCHS = 8
BATCH_SIZE = 64
CALIBRATION_IMAGES = 256
MIN_FLOAT_ACCURACY = 0.90
MIN_AGREEMENT = 0.99
MAX_ACCURACY_DROP = 0.01


class DigitsNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def _digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train and test images ([N, 1, 8, 8] in [0, 1]) and labels, split 70/30 with a fixed seed."""
    datasets = pytest.importorskip("sklearn.datasets")
    model_selection = pytest.importorskip("sklearn.model_selection")
    digits = datasets.load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.int64)
    train_idx, test_idx = model_selection.train_test_split(
        range(len(labels)), test_size=TEST_FRACTION, random_state=SEED, stratify=digits.target)
    train_idx, test_idx = torch.tensor(train_idx), torch.tensor(test_idx)
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]


def _train(images: torch.Tensor, labels: torch.Tensor) -> DigitsNet:
    torch.manual_seed(SEED)
    model = DigitsNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(EPOCHS):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), BATCH_SIZE):
            batch = order[start:start + BATCH_SIZE]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images[batch]), labels[batch]).backward()
            optimizer.step()
    return model.eval()


def test_digits_cnn_on_neutron(tmp_path: Path) -> None:
    train_x, train_y, test_x, test_y = _digits()
    model = _train(train_x, train_y)
    with torch.no_grad():
        float_accuracy = (model(test_x).argmax(1) == test_y).double().mean().item()
    assert float_accuracy >= MIN_FLOAT_ACCURACY, f"float model only reached {float_accuracy:.3f}"

    # The .pte has a fixed batch of 1: export, calibrate and run image by image.
    example = (train_x[:1],)
    calibration = [(image.unsqueeze(0),) for image in train_x[:CALIBRATION_IMAGES]]
    quantized = quantize_model(model, example, calibration_batches=calibration, progress=False)
    partitioner = NeutronPartitioner(generate_neutron_compile_spec("imxrt700"))
    edge = to_edge_transform_and_lower(torch.export.export(quantized, example), partitioner=[partitioner])
    report = partitioner.report
    assert report.num_partitions == 1, str(report)
    on_cpu = [e for e in report.nodes if not e.delegated and not e.target.startswith("quantized_decomposed.")]
    assert not on_cpu, f"left on the CPU: {[(e.target, e.reason) for e in on_cpu]}"
    assert report.delegated_mac_fraction == 1.0
    pte = tmp_path / "digits.pte"
    pte.write_bytes(edge.to_executorch().buffer)

    result = verify(pte, quantized, [(image.unsqueeze(0),) for image in test_x], float_model=model,
                    labels=list(test_y))

    assert result.num_samples == len(test_y)
    assert result.float_accuracy == pytest.approx(float_accuracy)
    assert result.top1_agreement >= MIN_AGREEMENT, str(result)
    assert abs(result.pte_accuracy - result.float_accuracy) <= MAX_ACCURACY_DROP, str(result)
    # Per-operator differences are at most one step; through four layers they stay small on average.
    assert result.mean_error_steps < 0.5, str(result)
