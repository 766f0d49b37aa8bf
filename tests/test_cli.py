"""The `neutron` command, end to end by subprocess: compile -> run -> verify on a small model, every --help, one-line
usage errors with exit status 2, ops/targets/models, the demo; and the data files the commands read."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from neutron_backend.datasets import load_dataset
from neutron_backend.pipeline import InputError, load_exported_program, load_model, load_samples
from neutron_backend.quantizer.calibration import quantize_model
from neutron_backend.runtime import load_pte

README = Path(__file__).resolve().parent.parent / "README.md"
COMMANDS = ("compile", "run", "verify", "ops", "targets", "models", "demo")

MODEL_SOURCE = textwrap.dedent("""
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
            self.fc = nn.Linear(16 * 4 * 4, 10)

        def forward(self, x):
            x = self.pool(torch.relu(self.conv1(x)))
            return self.fc(torch.flatten(torch.relu(self.conv2(x)), 1))


    def build():
        torch.manual_seed(0)
        return Net().eval(), (torch.randn(1, 3, 8, 8),)
""")
# conv1 + conv2 + fc: Cout * Hout * Wout * Cin * kH * kW, and inputs x outputs.
NET_MACS = 8 * 8 * 8 * 3 * 9 + 16 * 4 * 4 * 8 * 9 + 256 * 10
NUM_CALIBRATION = 8
NUM_SAMPLES = 12


def neutron(*args: str, cwd: Path, expect: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "neutron_backend.cli", *args], cwd=cwd, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == expect, f"neutron {' '.join(args)} -> {result.returncode}\n{result.stderr}"
    return result


def _one_line_error(result: subprocess.CompletedProcess, command: str) -> str:
    """The error line of a failed command: exactly one, no traceback (progress lines may precede it)."""
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"neutron {command}:")]
    assert len(lines) == 1 and lines[0].startswith(f"neutron {command}: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A directory with the model source, calibration data (.npz) and labelled test data (.pt)."""
    directory = tmp_path_factory.mktemp("cli")
    (directory / "net.py").write_text(MODEL_SOURCE)
    generator = torch.Generator().manual_seed(5)
    np.savez(directory / "calib.npz", x=torch.randn(NUM_CALIBRATION, 3, 8, 8, generator=generator).numpy())
    inputs = torch.randn(NUM_SAMPLES, 3, 8, 8, generator=generator)
    model = load_model(str(directory / "net.py") + ":build").model
    with torch.no_grad():
        labels = torch.cat([model(x.unsqueeze(0)).argmax(dim=1) for x in inputs])
    torch.save({"inputs": inputs, "labels": labels}, directory / "data.pt")
    return directory


@pytest.fixture(scope="module")
def compiled(work: Path) -> dict:
    """`neutron compile net.py:build` with calibration data, an excluded operator and every output option."""
    result = neutron("compile", "net.py:build", "--calibration-data", "calib.npz", "--exclude-op", "aten::max_pool2d",
                     "-o", "out/net.pte", "--intermediates-dir", "inter", "--report", "json", "--graph", "net.html",
                     cwd=work)
    return {"report": json.loads(result.stdout), "stderr": result.stderr}


# -- compile -> run -> verify ----------------------------------------------------------------------------------


def test_compile_writes_the_pte_the_report_and_the_intermediates(work, compiled):
    report = compiled["report"]
    assert (work / "out" / "net.pte").stat().st_size > 0
    assert report["num_partitions"] == 2
    assert report["total_macs"] == report["delegated_macs"] == NET_MACS
    (pool,) = [n for n in report["cpu_nodes"] if n["target"] == "aten.max_pool2d_with_indices.default"]
    assert pool["reason"] == "excluded by operators_not_to_delegate ('aten::max_pool2d')"
    assert json.loads((work / "inter" / "report.json").read_text()) == report
    assert len(list((work / "inter").glob("neutron_partition_*.tflite"))) == 2
    assert (work / "inter" / "quantized.pt2").is_file()
    assert "<svg" in (work / "net.html").read_text()
    stderr = compiled["stderr"]
    assert f"calibrating on {NUM_CALIBRATION} batch(es) from calib.npz" in stderr
    assert "partitioning and lowering for imxrt700: done in" in stderr
    assert "no calibration data given" not in stderr


@pytest.fixture(scope="module")
def run_outputs(work: Path, compiled) -> tuple[subprocess.CompletedProcess, torch.Tensor]:
    result = neutron("run", "out/net.pte", "--inputs", "data.pt", "--save", "outputs.pt", "--repeat", "2", cwd=work)
    (outputs,) = torch.load(work / "outputs.pt")
    return result, outputs


def test_run_prints_outputs_and_timing_and_saves_them(work, run_outputs):
    result, outputs = run_outputs
    assert "sample 0 output 0: shape [1, 10], torch.float32, top-1 class " in result.stdout
    assert f"(mean of {2 * NUM_SAMPLES}," in result.stdout
    assert re.search(r"host run time: \d+\.\d\d ms per run", result.stdout)
    assert outputs.shape == (NUM_SAMPLES, 1, 10)


@pytest.fixture(scope="module")
def verified(work: Path, compiled) -> dict:
    result = neutron("verify", "out/net.pte", "--model", "net.py:build", "--data", "data.pt", "--calibration-data",
                     "calib.npz", "--json", cwd=work)
    return json.loads(result.stdout)


def test_verify_against_quantized_and_float_references(verified):
    assert verified["num_samples"] == NUM_SAMPLES
    # Three requantizing NPU ops (conv, conv, linear) plus a CPU max pool: LiteRT vs torch differ by at most one
    # output step per requantizing op; measured here: at most 1 step at the output.
    assert verified["max_error_steps"] <= 1.0
    assert verified["top1_agreement"] >= 11 / 12
    # The labels are the float model's own classes.
    assert verified["float_accuracy"] == 1.0
    assert verified["pte_accuracy"] == verified["top1_agreement_with_float"]
    assert verified["max_error_steps_vs_float"] >= verified["max_error_steps"] - 1


def test_run_outputs_match_what_verify_measured(work, run_outputs, verified):
    """`neutron run` and `neutron verify` run the same .pte on the same inputs: the error of run's saved outputs
    against the quantized reference (quantized.pt2, computed here) is the one verify reported."""
    _, outputs = run_outputs
    reference = load_exported_program(work / "inter" / "quantized.pt2").module()
    inputs = load_samples(work / "data.pt", [(1, 3, 8, 8)]).batches
    (scale,) = verified["output_scales"]
    with torch.no_grad():
        expected = torch.stack([reference(*batch) for batch in inputs])
    steps = ((outputs.double() - expected.double()).abs().max() / scale).item()
    assert round(steps, 4) == verified["max_error_steps"]


def test_int8_io_pte_takes_and_returns_int8_and_run_and_verify_convert_for_the_user(work, run_outputs, verified):
    result = neutron("compile", "net.py:build", "--calibration-data", "calib.npz", "--exclude-op", "aten::max_pool2d",
                     "--int8-io", "-o", "out/net_int8.pte", cwd=work)
    assert re.search(r"int8 input 0: real = \(q - -?\d+\) \* [0-9.e-]+", result.stderr), result.stderr
    program = load_pte(work / "out" / "net_int8.pte")
    assert program.input_specs == (((1, 3, 8, 8), torch.int8),)
    (output_qparams,) = program.int8_io.outputs.values()
    assert output_qparams.scale == pytest.approx(verified["output_scales"][0])
    run = neutron("run", "out/net_int8.pte", "--inputs", "data.pt", "--save", "outputs_int8.pt", cwd=work)
    assert "has int8 inputs/outputs: quantizing inputs [0] and dequantizing outputs [0]" in run.stderr
    (outputs,) = torch.load(work / "outputs_int8.pt")
    _, float_io_outputs = run_outputs
    # The same partitions on the same int8 values: only the input quantization moved from the .pte to the CLI.
    steps = (outputs.double() - float_io_outputs.double()).abs().max().item() / output_qparams.scale
    assert round(steps, 4) <= 1.0
    check = neutron("verify", "out/net_int8.pte", "--model", "net.py:build", "--data", "data.pt",
                    "--calibration-data", "calib.npz", "--json", cwd=work)
    assert json.loads(check.stdout)["max_error_steps"] <= 1.0


def test_verify_with_the_saved_quantized_reference_gives_the_same_result(work, verified):
    """Re-quantizing with the same calibration data reproduces compile's reference exactly; --max-steps 0 fails
    (exit 1) exactly when there is any error."""
    expect = 1 if verified["max_error_steps"] > 0 else 0
    result = neutron("verify", "out/net.pte", "--model", "net.py:build", "--data", "data.pt", "--quantized",
                     "inter/quantized.pt2", "--json", "--max-steps", "0", cwd=work, expect=expect)
    assert json.loads(result.stdout) == verified
    assert ("FAILED" in result.stderr) == bool(expect)


DATA_LOADER_SOURCE = textwrap.dedent("""
    import torch
    from torch.utils.data import DataLoader, TensorDataset


    def loader():
        data = torch.load("data.pt")
        return DataLoader(TensorDataset(data["inputs"], data["labels"]), batch_size=4)
""")


def test_compile_saves_the_quantized_reference_next_to_the_pte(work, compiled):
    assert (work / "out" / "net.quantized.pt2").is_file()
    assert "its quantized reference out/net.quantized.pt2" in compiled["stderr"]


def test_verify_on_a_data_loader_gives_what_the_tensor_file_gives(work, verified):
    (work / "data_loader.py").write_text(DATA_LOADER_SOURCE)
    result = neutron("verify", "out/net.pte", "--model", "net.py:build", "--data", "data_loader.py:loader", "--json",
                     cwd=work)
    assert json.loads(result.stdout) == verified
    # The progress bar (tqdm, on stderr) counts the samples.
    assert "verifying: 100%" in result.stderr and f"{NUM_SAMPLES}/{NUM_SAMPLES}" in result.stderr


def test_verify_on_an_image_folder_reads_labels_from_subfolders(work, compiled):
    image = pytest.importorskip("PIL.Image")
    folder = work / "images"
    generator = torch.Generator().manual_seed(9)
    for name in ("dog", "cat"):  # written out of order: the labels follow the sorted names, cat = 0, dog = 1
        (folder / name).mkdir(parents=True)
        for number in range(3):
            pixels = torch.randint(0, 256, (8, 8, 3), generator=generator, dtype=torch.uint8).numpy()
            image.fromarray(pixels).save(folder / name / f"{number}.png")
    (folder / "cat" / "notes.txt").write_text("not an image")
    samples = load_dataset(folder, [(1, 3, 8, 8)])
    assert len(samples.batches) == 6 and [int(t) for t in samples.labels] == [0, 0, 0, 1, 1, 1]
    first = torch.from_numpy(np.array(image.open(folder / "cat" / "0.png"))).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(samples.batches[0][0], first.unsqueeze(0))
    text = neutron("verify", "out/net.pte", "--model", "net.py:build", "--data", "images", cwd=work).stdout
    assert "on 6 sample(s)" in text and re.search(r"accuracy: pte [\d.]+%, reference [\d.]+%, float [\d.]+%", text)
    assert re.search(r"output 0: max [\d.]+ step\(s\), mean [\d.]+, RMSE [\d.]+, cosine similarity [\d.]+", text)
    assert "worst inputs (index, max error in steps)" in text or "max |pte - reference| = 0 " in text


@pytest.fixture(scope="module")
def other_calibration(work: Path) -> Path:
    """Calibration data other than compile's: inputs 10x larger, so every range (and qparam) differs."""
    generator = torch.Generator().manual_seed(11)
    np.savez(work / "other_calib.npz", x=(10 * torch.randn(NUM_CALIBRATION, 3, 8, 8, generator=generator)).numpy())
    return work / "other_calib.npz"


def test_verify_refuses_a_reference_whose_qparams_differ_from_the_pte(work, compiled, other_calibration):
    """A reference quantized with other calibration data is not the model the .pte came from: verify refuses it,
    naming the qparams that differ and how to get the right one."""
    loaded = load_model(str(work / "net.py") + ":build")
    other = quantize_model(loaded.model, loaded.example_inputs,
                           calibration_batches=load_samples(other_calibration, [(1, 3, 8, 8)]).batches,
                           progress=False)
    torch.export.save(torch.export.export(other, loaded.example_inputs), work / "other.pt2")
    line = _one_line_error(neutron("verify", "out/net.pte", "--quantized", "other.pt2", "--data", "data.pt",
                                   cwd=work, expect=2), "verify")
    assert "the reference is not the quantized model out/net.pte was lowered from" in line
    assert "CPU quantize_per_tensor (instruction 0): scale" in line
    assert "`neutron compile MODEL -o out/net.pte` writes the .pte and its reference out/net.quantized.pt2" in line


def test_verify_without_a_reference_says_how_to_get_it(work, compiled, other_calibration):
    lone = work / "lone"
    lone.mkdir(exist_ok=True)
    (lone / "net.pte").write_bytes((work / "out" / "net.pte").read_bytes())
    line = _one_line_error(neutron("verify", "lone/net.pte", "--data", "data.pt", cwd=work, expect=2), "verify")
    assert line == ("neutron verify: error: no quantized reference for lone/net.pte: `neutron compile MODEL -o "
                    "lone/net.pte` writes the .pte and its reference lone/net.quantized.pt2; pass that file (or "
                    "compile's --intermediates-dir quantized.pt2) with --quantized")
    # Quantizing MODEL again with other calibration data than compile's is refused too.
    result = neutron("verify", "lone/net.pte", "--model", "net.py:build", "--data", "data.pt", "--calibration-data",
                     other_calibration.name, cwd=work, expect=2)
    assert "deprecated" in result.stderr
    assert "not the quantized model lone/net.pte was lowered from" in _one_line_error(result, "verify")


def test_compile_a_saved_exported_program_quietly_with_a_text_report(work):
    model, inputs = load_model(str(work / "net.py") + ":build").model, (torch.randn(1, 3, 8, 8),)
    torch.export.save(torch.export.export(model, inputs), work / "net.pt2")
    result = neutron("compile", "net.pt2", "-q", "-o", "saved.pte", cwd=work)
    assert (work / "saved.pte").stat().st_size > 0
    assert result.stdout.startswith("Neutron delegation report for imxrt700\n  1 partition(s)")
    assert f"{NET_MACS:,} of {NET_MACS:,} MACs on the NPU (100.0%)" in result.stdout
    assert "Estimated latency on imxrt700" in result.stdout
    # Quiet: no progress, but the warning about random calibration data stays.
    assert "no calibration data given; calibrating on 16 random" in result.stderr
    assert "neutron: quantizing" not in result.stderr and "calibrating:" not in result.stderr


# -- help and errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help(command, tmp_path):
    args = ["--help"] if command is None else [command, "--help"]
    result = neutron(*args, cwd=tmp_path)
    assert result.stdout.startswith(f"usage: neutron {command or ''}".rstrip())
    if command is None:
        for name in COMMANDS:
            assert re.search(rf"^    {name} ", result.stdout, re.MULTILINE), name


def test_help_does_not_import_torch(tmp_path):
    code = ("import sys\nfrom neutron_backend.cli import main\nfor argv in (['--help'], ['compile', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'executorch') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_readme_documents_every_command_and_option():
    from neutron_backend.cli import _parser

    readme = README.read_text()
    commands = next(a for a in _parser()._actions if a.dest == "command")
    for name, parser in commands.choices.items():
        assert f"neutron {name}" in readme, name
        for action in parser._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help":
                    assert option in readme, f"README does not document `neutron {name} {option}`"


def test_usage_errors_are_one_line_with_status_2(work):
    line = _one_line_error(neutron("compile", "net.py:build", "--target", "rt700", cwd=work, expect=2), "compile")
    assert "'rt700'" in line and "imxrt700" in line
    line = _one_line_error(neutron("compile", "resnet9", cwd=work, expect=2), "compile")
    assert "unknown model 'resnet9'" in line and "cifarnet" in line and "FILE.py:FUNCTION" in line
    line = _one_line_error(neutron("compile", "net.py:nothing", cwd=work, expect=2), "compile")
    assert "has no function 'nothing'" in line and "'build'" in line
    line = _one_line_error(neutron("compile", "net.py:build", "--exclude-op", "aten::convolutoin", cwd=work,
                                   expect=2), "compile")
    assert "aten::convolutoin" in line and "convolution" in line
    np.savez(work / "wrong.npz", x=np.zeros((4, 3, 9, 9), dtype=np.float32))
    line = _one_line_error(neutron("compile", "net.py:build", "--calibration-data", "wrong.npz", cwd=work,
                                   expect=2), "compile")
    assert "[4, 3, 9, 9]" in line and "[1, 3, 8, 8]" in line
    line = _one_line_error(neutron("compile", "net.py:build", "--min-compute-ops", "0", cwd=work, expect=2),
                           "compile")
    assert "'0'" in line
    line = _one_line_error(neutron("run", "missing.pte", cwd=work, expect=2), "run")
    assert "missing.pte" in line
    line = _one_line_error(neutron("verify", "missing.pte", cwd=work, expect=2), "verify")
    assert "no such .pte file: missing.pte" in line


# -- ops, targets, models, demo ----------------------------------------------------------------------------------


def test_ops_evaluates_the_constraints_for_a_target(tmp_path):
    from neutron_backend.ops.support_table import support_csv

    result = neutron("ops", "--target", "mcxn94x", "--csv", cwd=tmp_path)
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["Operator", "Compute DType", "Quantization", "Constraints", "Limits on target",
                       "QParams contract", "Also written as"]
    conv = next(row for row in rows if row[0] == "aten.convolution.default")
    assert "ceil_to(Cin, 8) <= 65535" in conv[3]
    # 3x3: 65535 // 9 = 7281 weights per output channel, rounded down to a multiple of num_macs = 8.
    assert "7280 for 3x3" in conv[4]
    assert not any("num_macs" in cell for row in rows for cell in row)
    assert neutron("ops", "--csv", cwd=tmp_path).stdout == support_csv()
    text = neutron("ops", "--target", "imxrt700", cwd=tmp_path).stdout
    assert text.startswith("Neutron operator support on imxrt700 (eIQ Neutron N3-64: num_macs = 8, num_pipes = 8")


def test_targets_and_costs_and_models(tmp_path):
    from neutron_backend.cost_model import assumptions
    from neutron_backend.models import list_models
    from neutron_backend.targets import get_target, list_targets

    out = neutron("targets", "--costs", cwd=tmp_path).stdout
    for name in list_targets():
        assert re.search(rf"^{name} ", out, re.MULTILINE)
        assert f"Latency cost model for {name}" in out
        for assumption in assumptions(get_target(name)):
            assert str(assumption) in out
    out = neutron("models", cwd=tmp_path).stdout
    names = [line.split()[0] for line in out.splitlines()]
    if importlib.util.find_spec("torchvision") is None:  # without the `models` extra only the zoo is listed
        assert names == list_models()
        return
    from neutron_backend.models.torchvision_garden import list_garden

    assert names == list_models() + [f"torchvision:{name}" for name in list_garden()]
    assert "torchvision:mobilenet_v3_small" in names and "torchvision:inception_v3" in names
    assert re.search(r"^torchvision:inception_v3 +\[1, 3, 299, 299\]", out, re.MULTILINE)


def test_demo_explains_where_why_how_accurate_how_fast(tmp_path):
    out = neutron("demo", "--model", "cifarnet_digits", "--samples", "40", "-o", "demo.pte", "-q", cwd=tmp_path).stdout
    assert out.startswith("Neutron backend demo: cifarnet_digits on imxrt700 (eIQ Neutron N3-64, 64 MACs/cycle)")
    assert "on the 40 held-out test images" in out
    cifarnet_macs = 32 * 32 * 32 * 3 * 25 + 32 * 16 * 16 * 32 * 25 + 64 * 8 * 8 * 32 * 25 + 1024 * 10
    short = out[out.index("In short:"):].splitlines()
    assert short[1] == (f"  where:    100.0% of the {cifarnet_macs / 1e6:.1f} M multiply-accumulates run on the NPU, "
                        "in 1 delegate call(s)")
    assert short[2].startswith("  why:      every operator met Neutron's constraints on imxrt700")
    accuracy = re.fullmatch(r"  accuracy: on 40 held-out images: float ([\d.]+)%, quantized ([\d.]+)%, \.pte "
                            r"([\d.]+)%; top-1 agreement \.pte vs quantized ([\d.]+)%", short[3])
    assert accuracy, short[3]
    float_accuracy, _, pte_accuracy, agreement = map(float, accuracy.groups())
    # The acceptance criteria of the trained models (issue 14): within 1 point of float, >= 99% agreement; on 40
    # images one sample is 2.5 points, so both mean "no sample lost".
    assert abs(pte_accuracy - float_accuracy) <= 1.0 and agreement >= 99.0
    assert re.match(r"  speed:    about \d+\.\d\d ms per inference on imxrt700, vs ~\d+\.\d ms on the Cortex-M33",
                    short[4])
    assert (tmp_path / "demo.pte").stat().st_size > 0
    assert (tmp_path / "demo.quantized.pt2").is_file()
    # verify finds the reference the demo saved and, for a trained zoo model, defaults to its held-out test split.
    verified = json.loads(neutron("verify", "demo.pte", "--model", "cifarnet_digits", "--json", "-q",
                                  cwd=tmp_path).stdout)
    assert verified["num_samples"] == 360 and verified["distinct_reference_classes"] == 10
    assert abs(verified["pte_accuracy"] - verified["float_accuracy"]) <= 0.01
    assert verified["top1_agreement"] >= 0.99 and verified["agreement_is_meaningful"]


# -- data files --------------------------------------------------------------------------------------------------


def test_load_samples_splits_stacked_data_into_model_batches(tmp_path):
    data = torch.arange(4 * 2 * 3, dtype=torch.float64).reshape(4, 2, 3)
    torch.save(data, tmp_path / "stacked.pt")
    batches = load_samples(tmp_path / "stacked.pt", [(2, 2, 3)]).batches
    assert [b[0].shape for b in batches] == [(2, 2, 3)] * 2 and batches[0][0].dtype == torch.float32
    assert torch.equal(torch.cat([b[0] for b in batches]), data.float())
    # A leading sample dimension over the full input shape, and two inputs as a tuple.
    torch.save((data.reshape(4, 1, 2, 3), data.reshape(4, 1, 2, 3) + 1), tmp_path / "pairs.pt")
    pairs = load_samples(tmp_path / "pairs.pt", [(1, 2, 3), (1, 2, 3)]).batches
    assert len(pairs) == 4 and torch.equal(pairs[3][1], data[3:4].float() + 1)
    # A list of ready batches; a .npz with labels.
    torch.save([data[:1], data[1:2]], tmp_path / "list.pt")
    assert len(load_samples(tmp_path / "list.pt", [(1, 2, 3)]).batches) == 2
    np.savez(tmp_path / "labelled.npz", images=data.numpy(), labels=np.array([3, 1, 4, 1]))
    samples = load_samples(tmp_path / "labelled.npz", [(1, 2, 3)])
    assert [int(label) for label in samples.labels] == [3, 1, 4, 1]


def test_load_samples_errors_name_the_shapes(tmp_path):
    torch.save(torch.zeros(3, 2, 3), tmp_path / "odd.pt")
    with pytest.raises(InputError, match=r"input 0 has shape \[3, 2, 3\]; the model's input 0 is \[2, 2, 3\]"):
        load_samples(tmp_path / "odd.pt", [(2, 2, 3)])
    with pytest.raises(InputError, match=r"holds 1 input array\(s\); the model takes 2"):
        load_samples(tmp_path / "odd.pt", [(1, 2, 3), (1, 2, 3)])
    (tmp_path / "data.csv").write_text("1,2,3\n")
    with pytest.raises(InputError, match=r"unsupported data file type '\.csv'"):
        load_samples(tmp_path / "data.csv", [(1, 3)])
