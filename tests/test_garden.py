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


def test_small_vision_transformer_keeps_only_layer_norm_and_gelu_on_the_cpu():
    # torchvision's own ViT at a small size. nn.MultiheadAttention unflattens its packed q/k/v projection; that
    # view once took bmm's symmetric qparams while its input kept the projection's, so it requantized on the CPU
    # (vit_b_16: 12 view_copy nodes). LayerNorm and GELU have no NPU implementation (facts.md).
    from executorch.exir import to_edge_transform_and_lower

    from neutron_backend.compile_spec import generate_neutron_compile_spec
    from neutron_backend.partitioner import NeutronPartitioner
    from neutron_backend.quantizer.calibration import quantize_model, random_batches

    vision_transformer = torchvision_garden.import_torchvision().models.vision_transformer.VisionTransformer
    torch.manual_seed(0)
    model = vision_transformer(image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=32, mlp_dim=64,
                               num_classes=10).eval()
    example = (torch.randn(1, 3, 32, 32),)
    quantized = quantize_model(model, example, calibration_batches=random_batches(example, CALIBRATION_BATCHES),
                               progress=False)
    partitioner = NeutronPartitioner(generate_neutron_compile_spec("imxrt700"))
    to_edge_transform_and_lower(torch.export.export(quantized, example), partitioner=[partitioner])
    cpu = sorted(str(e.target) for e in partitioner.report.nodes if not e.delegated and e.kind not in PLUMBING_KINDS)
    # ln_1 and ln_2 of the one encoder layer, the encoder's final ln, the MLP's GELU.
    assert cpu == ["aten.gelu.default"] + ["aten.native_layer_norm.default"] * 3
