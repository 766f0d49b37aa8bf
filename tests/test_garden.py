"""torchvision architectures (the model garden) lower whole: one partition, every MAC on the NPU.

Each model is torchvision's own definition (`neutron_backend.models.torchvision_garden`: weights=None, seeded,
batchnorm warmed up), quantized with NeutronQuantizer on two seeded batches and lowered with
`to_edge_transform_and_lower` + NeutronPartitioner for imxrt700. What each needed: in-place residual adds
(MobileNetV3, EfficientNet), the channel shuffle's `.contiguous()` sharing qparams (ShuffleNetV2), ceil_mode max
pooling rewritten (SqueezeNet). bench/garden.py runs the whole garden with XNNPACK alongside.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from neutron_backend.models import torchvision_garden
from neutron_backend.report import PLUMBING_KINDS

if importlib.util.find_spec("torchvision") is None:
    # Not importorskip: a plain `import torchvision` fails where its extension does not load (see the module).
    pytest.skip("the model garden needs the `models` extra (pip install -e .[models])", allow_module_level=True)

CALIBRATION_BATCHES = 2


def _lower(name: str):
    from executorch.exir import to_edge_transform_and_lower

    from neutron_backend.compile_spec import generate_neutron_compile_spec
    from neutron_backend.partitioner import NeutronPartitioner
    from neutron_backend.quantizer.calibration import quantize_model, random_batches

    model, example = torchvision_garden.build(name)
    quantized = quantize_model(model, example, calibration_batches=random_batches(example, CALIBRATION_BATCHES),
                               progress=False)
    partitioner = NeutronPartitioner(generate_neutron_compile_spec("imxrt700"))
    edge = to_edge_transform_and_lower(torch.export.export(quantized, example), partitioner=[partitioner])
    return edge, partitioner.report, example


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v3_small", "squeezenet1_1", "shufflenet_v2_x0_5", "efficientnet_b0"])
def test_garden_model_is_one_partition_with_every_mac_on_the_npu(name):
    from neutron_backend.runtime import cross_check

    edge, report, example = _lower(name)
    cpu = [(e.target, e.reason) for e in report.nodes if not e.delegated and e.kind not in PLUMBING_KINDS]
    assert not cpu, f"{name}: compute nodes on the CPU: {cpu}"
    assert report.num_partitions == 1, str(report)
    assert report.total_macs > 0 and report.delegated_macs == report.total_macs
    # Our exact engine against LiteRT's reference kernels, bit for bit, on the model's input and a random one.
    result = cross_check(edge, list(example), random_samples=1)
    assert result.identical and result.delegates == 1, f"{name}: {result}"


def test_import_works_without_torchvisions_extension():
    # The stub schemas (or the real extension, where it loads) make the import and the builders work.
    assert "mobilenet_v3_small" in torchvision_garden.list_garden()
    assert torchvision_garden.input_shape("inception_v3") == (1, 3, 299, 299)
    with pytest.raises(ValueError, match="mobilenet_v3_small"):
        torchvision_garden.build("mobilenet_v3_smal")


def test_garden_build_is_seeded_and_in_eval_mode():
    first, example = torchvision_garden.build("squeezenet1_1")
    second, _ = torchvision_garden.build("squeezenet1_1")
    assert not first.training
    assert example[0].shape == (1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(first(*example), second(*example))
