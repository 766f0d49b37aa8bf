"""Layout at the delegate boundary and inside the IR: where TRANSPOSE ops go, and that results do not change."""

import copy

import pytest
import torch
from ai_edge_litert import schema_py_generated as schema

from neutron_backend.models import get_model
from neutron_backend.payload import read_payload
from neutron_backend.pipeline import compile_model
from neutron_backend.runtime import emulate, load_pte


def _payloads(compiled):
    program = compiled.edge_program.exported_program()
    modules = [getattr(program.graph_module, n.target) for n in program.graph.nodes
               if n.op == "get_attr" and n.target.startswith("lowered_module")]
    return [read_payload(m.processed_bytes) for m in modules]


def _operator_names(tflite: bytes) -> list[str]:
    model = schema.ModelT.InitFromPackedBuf(tflite, 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    return [names[model.operatorCodes[op.opcodeIndex].builtinCode] for op in model.subgraphs[0].operators]


@pytest.fixture(scope="module")
def cifarnet():
    model, example_inputs = get_model("cifarnet")
    batches = [(torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(i)),) for i in range(4)]
    return model, example_inputs, batches


@pytest.mark.parametrize("in_ir", [True, False])
def test_cifarnet_transposes_only_at_the_input(cifarnet, tmp_path, in_ir):
    model, example_inputs, batches = cifarnet
    compiled = compile_model(model, example_inputs, calibration_batches=batches, progress=False,
                             use_neutron_for_format_conversion=in_ir)
    (payload,) = _payloads(compiled)
    operators = _operator_names(payload.tflite)
    # NCHW input -> NHWC once; the flatten before the linear layer is absorbed by permuting the weights.
    assert operators.count("TRANSPOSE") == (1 if in_ir else 0)
    assert operators.count("CONV_2D") == 3 and operators.count("FULLY_CONNECTED") == 1
    assert payload.inputs[0].channels_last is (not in_ir)
    assert payload.outputs[0].channels_last is False

    path = tmp_path / "cifarnet.pte"
    path.write_bytes(compiled.pte)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    (host,) = load_pte(path)(x)
    (reference,) = compiled.quantized(x)
    (emulated,) = emulate(copy.deepcopy(compiled.edge_program), x)
    scale = compiled.quantized.graph.find_nodes(op="output")[0].args[0][0].args[1]
    assert torch.equal(host, emulated)
    assert (host - reference).abs().max().item() <= scale * 1.0001


class _ConvPoolAdd(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y + torch.nn.functional.max_pool2d(y, 3, stride=1, padding=1)


def test_cpu_node_between_two_supported_nodes_splits_them_without_a_cycle(tmp_path):
    """conv -> max_pool (kept on the CPU) -> add(conv, pool): conv and add must not share a delegate."""
    torch.manual_seed(0)
    model = _ConvPoolAdd().eval()
    example = (torch.randn(1, 3, 8, 8),)
    batches = [(torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(i)),) for i in range(4)]
    compiled = compile_model(model, example, calibration_batches=batches, progress=False,
                             operators_not_to_delegate=["aten::max_pool2d"])
    report = compiled.report
    assert report.num_partitions == 2
    conv = next(e for e in report.nodes if e.target == "aten.convolution.default")
    add = next(e for e in report.nodes if e.target == "aten.add.Tensor")
    pool = next(e for e in report.nodes if e.target == "aten.max_pool2d_with_indices.default")
    assert conv.delegated and add.delegated and conv.partition != add.partition
    assert not pool.delegated and "operators_not_to_delegate" in pool.reason
    path = tmp_path / "split.pte"
    path.write_bytes(compiled.pte)
    (host,) = load_pte(path)(example[0])
    (reference,) = compiled.quantized(example[0])
    scale = compiled.quantized.graph.find_nodes(op="output")[0].args[0][0].args[1]
    # Two requantizing operators on the path (conv, add): one step each (fixed-point against float requantization).
    assert (host - reference).abs().max().item() <= 2 * scale * 1.0001
