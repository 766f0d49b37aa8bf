"""ExecuTorch export recipes: `executorch.export.export(model, inputs, export_recipe=...)` gives a Neutron .pte.

The .pte runs on the host (neutron_backend.runtime) and is compared with the quantized PyTorch model, which is
built here independently of the recipe: NeutronQuantizer + torchao's prepare_pt2e/convert_pt2e on the same
calibration inputs (DESIGN §7: the quantized model is the reference; at most 1 output step per requantizing op).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from executorch.exir.lowered_backend_module import LoweredBackendModule
from executorch.export import ExportRecipe, StageType, export, recipe_registry
from torchao.quantization.pt2e import FakeQuantize
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

from neutron_backend.compile_spec import NeutronConfigError
from neutron_backend.quantizer import NeutronQuantizer
from neutron_backend.recipes import (
    BACKEND_NAME,
    NeutronRecipeType,
    neutron_recipe,
    register,
)
from neutron_backend.runtime import load_pte

TARGETS = ["imxrt700", "mcxn94x", "imx95"]
INPUT_SHAPE = (1, 3, 8, 8)
# conv+relu requantizes once (the ReLU is fused); max pooling keeps its input's qparams and is exact in int8.
REQUANTIZING_OPS = 1


class ConvReluPool(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.pool = torch.nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.conv(x)))


def batches(count: int, seed: int) -> list[tuple[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(INPUT_SHAPE, generator=generator),) for _ in range(count)]


def model() -> ConvReluPool:
    torch.manual_seed(0)
    return ConvReluPool().eval()


def qparams(module: torch.fx.GraphModule) -> list[tuple[str, list[float], list[int]]]:
    """Returns (op, scales, zero points) of every quantize/dequantize node, in graph order."""

    def values(arg: object) -> list[float]:
        if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
            return [float(v) for v in getattr(module, str(arg.target)).flatten()]
        return [float(arg)]  # type: ignore[arg-type]

    found = []
    for node in module.graph.nodes:
        if node.op == "call_function" and node.target.__module__.endswith("quantized_decomposed"):
            name = str(node.target)
            found.append((name, values(node.args[1]), [int(v) for v in values(node.args[2])]))
    return found


def output_scale(module: torch.fx.GraphModule) -> float:
    """Returns the scale of the dequantize node that produces the model's output."""
    (output,) = [n for n in module.graph.nodes if n.op == "output"]
    (result,) = output.args[0]
    assert "dequantize_per_tensor" in str(result.target), result.target
    return float(result.args[1])


def reference_quantized(target: str, calibration: list[tuple[torch.Tensor]]) -> torch.fx.GraphModule:
    """The quantized model built without the recipe: export the first input tuple, calibrate on all of them."""
    exported = torch.export.export(model(), calibration[0]).module()
    prepared = prepare_pt2e(exported, NeutronQuantizer(target))
    with torch.no_grad():
        for inputs in calibration:
            prepared(*inputs)
    return convert_pt2e(prepared)


def check_lowered_to_neutron(session: object) -> None:
    """Asserts the program has one NeutronBackend delegate and no convolution left outside it."""
    graph_module = session.get_edge_program_manager().exported_program().graph_module
    delegates = [m for m in graph_module.children() if isinstance(m, LoweredBackendModule)]
    assert [d.backend_id for d in delegates] == ["NeutronBackend"]
    outside = [str(n.target) for n in graph_module.graph.nodes if n.op == "call_function"]
    assert not [t for t in outside if "convolution" in t or "max_pool" in t], outside


def steps_apart(a: torch.Tensor, b: torch.Tensor, scale: float) -> float:
    return float((a - b).abs().max()) / scale


@pytest.mark.parametrize("target", TARGETS)
def test_ptq_recipe_exports_a_neutron_pte_that_runs_within_one_step(target: str, tmp_path: Path) -> None:
    calibration, test_inputs = batches(4, seed=1), batches(3, seed=2)
    recipe = ExportRecipe.get_recipe(NeutronRecipeType.INT8_PTQ, target=target)
    session = export(model(), calibration, export_recipe=recipe)

    report = recipe.lowering_recipe.partitioners[0].report
    assert report.target == target and report.delegated_mac_fraction == 1.0
    check_lowered_to_neutron(session)

    # The recipe quantized exactly as NeutronQuantizer does on the same calibration data.
    quantized = session.get_stage_artifacts()[StageType.QUANTIZE].data["forward"]
    reference = reference_quantized(target, calibration)
    assert qparams(quantized) == qparams(reference)
    assert len(qparams(reference)) >= 4

    pte = tmp_path / "model.pte"
    pte.write_bytes(session.get_pte_buffer())
    program = load_pte(pte)
    scale = output_scale(reference)
    for (x,) in test_inputs:
        (got,) = program(x)
        expected = reference(x)
        assert got.shape == expected.shape == (1, 8, 4, 4)
        assert float((expected != 0).float().mean()) > 0.2  # not a trivially zero output
        assert steps_apart(got, expected, scale) <= REQUANTIZING_OPS + 1e-4


def test_qat_recipe_trains_the_qat_prepared_model_and_lowers(tmp_path: Path) -> None:
    calibration, test_inputs = batches(4, seed=3), batches(2, seed=4)
    seen: dict[str, object] = {}

    def train(prepared: torch.fx.GraphModule) -> None:
        seen["fake_quantizers"] = sum(isinstance(m, FakeQuantize) for m in prepared.modules())
        weights = [p for p in prepared.parameters() if p.dim() == 4]
        seen["before"] = weights[0].detach().clone()
        optimizer = torch.optim.SGD(prepared.parameters(), lr=0.05)
        for (x,) in calibration:
            loss = (prepared(x) - 0.5).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        seen["after"] = weights[0].detach().clone()

    recipe = neutron_recipe("imx95", qat=True, train_fn=train)
    assert recipe.quantization_recipe.is_qat and recipe.name == "neutron_int8_qat_imx95"
    session = export(model(), calibration, export_recipe=recipe)

    # Fake quantizers on the conv's input, weight and output: the QAT flow, and training moved the weights.
    assert seen["fake_quantizers"] >= 3
    assert not torch.equal(seen["before"], seen["after"])
    assert recipe.lowering_recipe.partitioners[0].report.delegated_mac_fraction == 1.0
    check_lowered_to_neutron(session)

    quantized = session.get_stage_artifacts()[StageType.QUANTIZE].data["forward"]
    pte = tmp_path / "model.pte"
    pte.write_bytes(session.get_pte_buffer())
    program = load_pte(pte)
    scale = output_scale(quantized)
    for (x,) in test_inputs:
        (got,) = program(x)
        assert steps_apart(got, quantized(x), scale) <= REQUANTIZING_OPS + 1e-4


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("recipe_type", list(NeutronRecipeType))
def test_every_target_has_both_recipes(target: str, recipe_type: NeutronRecipeType) -> None:
    extra = {"train_fn": lambda prepared: None} if recipe_type is NeutronRecipeType.INT8_QAT else {}
    recipe = ExportRecipe.get_recipe(recipe_type, target=target, **extra)
    assert recipe.name == f"{recipe_type.value}_{target}"
    (quantizer,) = recipe.quantization_recipe.quantizers
    assert isinstance(quantizer, NeutronQuantizer) and quantizer.target.name == target
    assert quantizer.is_qat is recipe.quantization_recipe.is_qat is (recipe_type is NeutronRecipeType.INT8_QAT)
    (partitioner,) = recipe.lowering_recipe.partitioners
    assert partitioner.target.name == target


def test_registration_is_idempotent() -> None:
    provider = recipe_registry._providers[BACKEND_NAME]
    register()
    register()
    assert list(recipe_registry.list_backends()).count(BACKEND_NAME) == 1
    assert recipe_registry._providers[BACKEND_NAME] is provider
    assert list(recipe_registry.get_supported_recipes(BACKEND_NAME)) == [
        NeutronRecipeType.INT8_PTQ,
        NeutronRecipeType.INT8_QAT,
    ]


def test_bad_recipe_arguments_name_what_is_valid() -> None:
    with pytest.raises(NeutronConfigError, match=r"INT8_QAT recipe needs train_fn=<callable>"):
        ExportRecipe.get_recipe(NeutronRecipeType.INT8_QAT)
    with pytest.raises(NeutronConfigError, match=r"unknown Neutron target 'imxrt600'.*Did you mean 'imxrt700'"):
        neutron_recipe("imxrt600")
    with pytest.raises(NeutronConfigError, match=r"unknown keyword 'flavor'.*'neutron_converter_flavor'"):
        neutron_recipe(flavor="SDK_25_06")
    with pytest.raises(NeutronConfigError, match=r"train_fn is for the INT8_QAT recipe, not INT8_PTQ"):
        neutron_recipe(train_fn=lambda prepared: None)
    with pytest.raises(NeutronConfigError, match=r"train_fn must be a callable, got int 3"):
        neutron_recipe(qat=True, train_fn=3)
    # Compile-spec keys reach generate_neutron_compile_spec: a named flavor must be installed.
    with pytest.raises(ImportError, match=r"neutron_converter_SDK_25_06.*pip install"):
        neutron_recipe(neutron_converter_flavor="SDK_25_06")


def test_importing_neutron_backend_does_not_import_executorch_export() -> None:
    code = (
        "import sys, neutron_backend, neutron_backend.compile_spec, neutron_backend.targets\n"
        "print('executorch.export' in sys.modules, 'neutron_backend.recipes' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


class ConvBatchNormDropout(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.dropout = torch.nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(torch.relu(self.bn(self.conv(x))))


def test_ptq_recipe_quantizes_a_model_left_in_train_mode_as_in_eval_mode() -> None:
    from executorch.export.stages import PipelineArtifact, QuantizeStage

    torch.manual_seed(0)
    net = ConvBatchNormDropout()
    net.bn.running_mean.uniform_(-1, 1)
    net.bn.running_var.uniform_(0.5, 2.0)
    calibration = batches(3, seed=5)
    stage = QuantizeStage(neutron_recipe().quantization_recipe)
    stage.run(PipelineArtifact(data={"forward": net.train()}, context={"example_inputs": {"forward": calibration}}))
    quantized = stage.get_artifacts().data["forward"]

    # Reference: the same quantizer on the model put in eval mode by hand (running statistics, no dropout).
    prepared = prepare_pt2e(torch.export.export(net.eval(), calibration[0]).module(), NeutronQuantizer("imxrt700"))
    with torch.no_grad():
        for inputs in calibration:
            prepared(*inputs)
    reference = convert_pt2e(prepared)
    assert qparams(quantized) == qparams(reference)
    for (x,) in batches(2, seed=6):
        assert torch.equal(quantized(x), reference(x))


def test_recipe_with_the_eiq_neutron_sdk_flavor_compiles_with_the_compiler_double(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # TEST DOUBLE of NXP's eiq_neutron_sdk with the Neutron compiler (tests/fake_converter/compiler_sdk).
    fake_dir = Path(__file__).parent / "fake_converter"
    monkeypatch.syspath_prepend(str(fake_dir))
    monkeypatch.syspath_prepend(str(fake_dir / "compiler_sdk"))
    monkeypatch.setenv("FAKE_NEUTRON_RECORD_DIR", str(tmp_path / "record"))
    try:
        recipe = neutron_recipe("mcxn94x", neutron_converter_flavor="eiq_neutron_sdk", extra_flags="--use-profiling")
        session = export(model(), batches(2, seed=7), export_recipe=recipe)
        graph_module = session.get_edge_program_manager().exported_program().graph_module
        (delegate,) = [m for m in graph_module.children() if isinstance(m, LoweredBackendModule)]
        (record,) = list((tmp_path / "record").iterdir())
        calls = json.loads((record / "calls.json").read_text())
        options = json.loads((record / "options.json").read_text())
    finally:
        for name, module in list(sys.modules.items()):
            if str(getattr(module, "__file__", None) or "").startswith(str(fake_dir)):
                del sys.modules[name]
    assert [call[0] for call in calls] == ["isNeutronTarget", "CompilationContext", "getNeutronTarget", "compileModel"]
    assert calls[0] == ["isNeutronTarget", "mcxn94x"]
    assert options["useProfiling"] is True and options["minNumOpsPerGraph"] == 1
    # A deployable payload (NXP's layout, microcode from the double), not an emulation payload.
    payload = bytes(delegate.processed_bytes)
    assert not payload.startswith(b"NTRNEMU") and (record / "microcode.bin").read_bytes() in payload
    assert payload in session.get_pte_buffer()
