"""The `neutron` command: compile models for the NXP eIQ Neutron NPU, run and verify them on this PC, explain.

Heavy imports (torch, executorch) happen inside the commands, so `neutron --help` stays fast. Progress and
warnings go to stderr, results to stdout (`--report json` prints nothing else there). Exit status: 0 success,
1 the job failed, 2 a bad command line, model or data file (one line naming the bad value and what would work).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from neutron_backend.targets import UnknownTargetError, get_target, list_targets

DEMO_MODEL = "mobilenet_v2_digits"
DEMO_SAMPLES = 50
RANDOM_VERIFY_SAMPLES = 20
USAGE_ERROR = 2
FAILURE = 1
_EMULATION_NOTE = "emulation payload: runs on this PC with `neutron run`, not on a device"

logger = logging.getLogger("neutron_backend.cli")


class UsageError(Exception):
    """A bad value on the command line; the message names it and what would be valid."""


# -- argument types ------------------------------------------------------------------------------------------


def _target(text: str) -> str:
    try:
        return get_target(text).name
    except UnknownTargetError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _operator_list(values: list[str] | None) -> list[str]:
    """--exclude-op values, each possibly comma-separated."""
    return [name.strip() for value in values or [] for name in value.split(",") if name.strip()]


# -- shared helpers ------------------------------------------------------------------------------------------


def _say(args: argparse.Namespace, message: str) -> None:
    """Progress on stderr, unless -q."""
    if not args.quiet:
        print(f"neutron: {message}", file=sys.stderr)


def _load_model(spec: str):
    from neutron_backend.pipeline import load_model

    return load_model(spec)


def _calibration(args: argparse.Namespace, loaded) -> list | None:
    """Calibration batches from --calibration-data, else the model source's own, else None (random, warned)."""
    if args.calibration_data is None:
        return loaded.calibration_batches
    from neutron_backend.pipeline import load_samples

    example = loaded.example_inputs
    samples = load_samples(args.calibration_data, [x.shape for x in example], [x.dtype for x in example])
    _say(args, f"calibrating on {len(samples.batches)} batch(es) from {args.calibration_data}")
    return samples.batches


def _delegation_options(args: argparse.Namespace):
    from neutron_backend.delegation_options import CustomDelegationOptions

    return CustomDelegationOptions(force_delegate_cat=args.force_delegate_cat,
                                   allow_no_op_partitions=args.allow_no_op_partitions,
                                   min_compute_ops_per_partition=args.min_compute_ops)


def _write_outputs(path: Path, outputs: list[tuple]) -> None:
    """Saves per-sample outputs, stacked along a new first dimension, as .pt (a tuple) or .npz (output_<i>)."""
    import torch

    stacked = [torch.stack([sample[i] for sample in outputs]) for i in range(len(outputs[0]))]
    if path.suffix == ".npz":
        import numpy as np

        np.savez(path, **{f"output_{i}": t.numpy() for i, t in enumerate(stacked)})
    else:
        torch.save(tuple(stacked), path)


# -- commands ------------------------------------------------------------------------------------------------


def _cmd_targets(args: argparse.Namespace) -> int:
    rows = [("target", "NPU", "MACs/cycle", "num_macs x pipes", "NPU clock", "CPU", "SRAM", "flash", "assumptions")]
    for name in list_targets():
        t = get_target(name)
        rows.append((t.name, t.npu, str(t.macs_per_cycle), f"{t.num_macs} x {t.num_pipes}",
                     f"{t.npu_clock_hz / 1e6:.0f} MHz", f"{t.cpu} {t.cpu_clock_hz / 1e6:.0f} MHz",
                     "unknown" if t.sram_bytes is None else f"{t.sram_bytes:,} B",
                     "none/unknown" if t.flash_bytes is None else f"{t.flash_bytes:,} B",
                     "; ".join(t.assumptions) or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    print("\nMemory budgets (neutron compile checks them; see the README, Memory):")
    for name in list_targets():
        t = get_target(name)
        print(f"  {t.name}: SRAM: {t.sram_source}; flash: {t.flash_source}")
    if args.costs:
        from neutron_backend.cost_model import assumptions

        for name in list_targets():
            print(f"\nLatency cost model for {name} (neutron_backend/cost_model.py):")
            for assumption in assumptions(get_target(name)):
                print(f"  {assumption}")
    return 0


def _cmd_ops(args: argparse.Namespace) -> int:
    from neutron_backend.ops.support_table import support_csv, support_text

    print(support_csv(args.target) if args.csv else support_text(args.target), end="")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from neutron_backend.models import list_models, zoo_entry

    entries = [zoo_entry(name) for name in list_models()]
    width = max(len(e.name) for e in entries)
    shape_width = max(len(str(list(e.input_shape))) for e in entries)
    for e in entries:
        print(f"{e.name:<{width}}  {str(list(e.input_shape)):<{shape_width}}  {e.description}")
    from neutron_backend.models import torchvision_garden

    try:
        garden = torchvision_garden.list_garden()
    except ImportError as error:
        _say(args, f"the torchvision garden is not listed: {error}")
        return 0
    names = [torchvision_garden.PREFIX + name for name in garden]
    width = max(len(name) for name in names)
    for name, builder in zip(names, garden, strict=True):
        shape = str(list(torchvision_garden.input_shape(builder)))
        print(f"{name:<{width}}  {shape:<{shape_width}}  torchvision.models.{builder}(weights=None), seeded, "
              "batchnorm warmed up")
    return 0


def _cmd_compile(args: argparse.Namespace) -> int:
    from neutron_backend.pipeline import compile_model

    loaded = _load_model(args.model)
    _say(args, f"compiling {loaded.name} ({loaded.description}) for {args.target}")
    output = Path(args.output or f"{loaded.name}.pte")
    compiled = compile_model(
        loaded.model, loaded.example_inputs, args.target, calibration_batches=_calibration(args, loaded),
        delegation_options=_delegation_options(args), progress=not args.quiet,
        neutron_converter_flavor=args.flavor, operators_not_to_delegate=_operator_list(args.exclude_op) or None,
        intermediates_dir=args.intermediates_dir, int8_io=args.int8_io)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(compiled.pte)
    from neutron_backend.pipeline import save_reference

    reference = save_reference(compiled, output)
    if args.report == "json":
        print(json.dumps(compiled.report.to_dict(), indent=2))
    else:
        print(compiled.report.summary())
    if args.graph:
        Path(args.graph).write_text(compiled.report.to_html())
        _say(args, f"wrote the graph picture and the per-layer table to {args.graph}")
    if args.per_layer:
        Path(args.per_layer).write_text(compiled.report.per_layer_csv())
        _say(args, f"wrote the per-layer profile to {args.per_layer}")
    if compiled.int8_io is not None:
        for kind, quantization in (("input", compiled.int8_io.inputs), ("output", compiled.int8_io.outputs)):
            for index, q in sorted(quantization.items()):
                _say(args, f"int8 {kind} {index}: real = (q - {q.zero_point}) * {q.scale:.9g}")
    kind = _EMULATION_NOTE if args.flavor is None else f"deployable payload for NXP's runtime ({args.flavor})"
    _say(args, f"wrote {output} ({len(compiled.pte):,} bytes; {kind}) and its quantized reference {reference} "
               "(for `neutron verify`)")
    return 0


class _FloatIO:
    """A loaded program with float inputs and outputs: a .pte made with int8 I/O gets its float inputs quantized
    and its int8 outputs dequantized with the qparams stored in it (other programs run as they are)."""

    def __init__(self, program, args: argparse.Namespace) -> None:
        import torch

        self.program, self.io = program, program.int8_io
        self.input_specs = [(shape, torch.float32 if self.io is not None and index in self.io.inputs else dtype)
                            for index, (shape, dtype) in enumerate(program.input_specs)]
        if self.io is not None:
            _say(args, f"{program.path} has int8 inputs/outputs: quantizing inputs {sorted(self.io.inputs)} and "
                       f"dequantizing outputs {sorted(self.io.outputs)} with the qparams stored in it")

    def __call__(self, *inputs):
        if self.io is None:
            return self.program(*inputs)
        return self.io.dequantize_outputs(*self.program(*self.io.quantize_inputs(*inputs)))


def _cmd_run(args: argparse.Namespace) -> int:
    import torch

    from neutron_backend.runtime import load_pte

    if not Path(args.pte).is_file():
        raise UsageError(f"no such .pte file: {args.pte}")
    program = _FloatIO(load_pte(args.pte, kernels=args.kernels), args)
    shapes = [shape for shape, _ in program.input_specs]
    dtypes = [dtype if isinstance(dtype, torch.dtype) else torch.float32 for _, dtype in program.input_specs]
    if args.inputs:
        from neutron_backend.pipeline import load_samples

        batches = load_samples(args.inputs, shapes, dtypes).batches
    else:
        generator = torch.Generator().manual_seed(args.seed)
        batches = [tuple(torch.randn(s, generator=generator).to(d) if d.is_floating_point else torch.zeros(s, dtype=d)
                         for s, d in zip(shapes, dtypes, strict=True))]
        _say(args, f"no --inputs: one random N(0, 1) input (seed {args.seed})")
    times, outputs = [], []
    for repeat in range(args.repeat):
        for batch in batches:
            start = time.perf_counter()
            result = program(*batch)
            times.append(time.perf_counter() - start)
            if repeat == 0:
                outputs.append(result)
    shown = outputs if len(outputs) <= 3 else outputs[:1]
    for number, result in enumerate(shown):
        for index, tensor in enumerate(result):
            extra = ""
            if tensor.is_floating_point() and tensor.dim() == 2 and tensor.shape[0] == 1 and tensor.numel() > 1:
                extra = f", top-1 class {int(tensor.argmax())}"
            print(f"sample {number} output {index}: shape {list(tensor.shape)}, {tensor.dtype}{extra}")
            print(tensor)
    if len(shown) < len(outputs):
        print(f"(outputs of {len(outputs) - len(shown)} more sample(s) not shown; --save FILE keeps them all)")
    mean = sum(times) / len(times)
    print(f"host run time: {mean * 1e3:.2f} ms per run (mean of {len(times)}, min {min(times) * 1e3:.2f} ms) - "
          f"this PC emulating the NPU with the {args.kernels} kernels, not a device time (the compile report has an "
          "estimate)")
    if args.save:
        _write_outputs(Path(args.save), outputs)
        _say(args, f"wrote {len(outputs)} sample(s) of outputs to {args.save}")
    return 0


def _float_errors(outputs: list[tuple], float_model, batches: list[tuple], scales: tuple[float, ...]) -> tuple:
    """Max and mean |pte - float model| in output quantization steps, over every output element."""
    import torch

    worst, total, count = 0.0, 0.0, 0
    with torch.no_grad():
        for result, batch in zip(outputs, batches, strict=True):
            expected = float_model(*batch)
            expected = expected if isinstance(expected, tuple | list) else (expected,)
            for got, want, scale in zip(result, expected, scales, strict=False):
                steps = (got.double() - want.double()).abs() / scale
                worst, total, count = max(worst, steps.max().item()), total + steps.sum().item(), count + steps.numel()
    return worst, total / max(count, 1)


def _verify_reference(args: argparse.Namespace, loaded):
    """The quantized model the .pte came from: --quantized, else the one `neutron compile` saved next to the .pte,
    else (deprecated) MODEL quantized again; checked against the .pte's qparams, or refused."""
    from neutron_backend.pipeline import load_exported_program, reference_path
    from neutron_backend.pte_qparams import check_reference

    saved = reference_path(args.pte)
    how = (f"`neutron compile MODEL -o {args.pte}` writes the .pte and its reference {saved}; pass that file (or "
           "compile's --intermediates-dir quantized.pt2) with --quantized")
    if args.quantized or saved.is_file():
        path = args.quantized or saved
        quantized = load_exported_program(path).module()
        _say(args, f"reference: {path}")
    elif loaded is not None:
        from neutron_backend.quantizer.calibration import quantize_model

        logger.warning("no quantized reference next to %s (%s): quantizing %s again (deprecated: the reference is "
                       "then only right with the same --target and --calibration-data as compile, which is checked)",
                       args.pte, saved, loaded.name)
        quantized = quantize_model(loaded.model, loaded.example_inputs, target=args.target,
                                   calibration_batches=_calibration(args, loaded), progress=not args.quiet)
    else:
        raise UsageError(f"no quantized reference for {args.pte}: {how}")
    check_reference(args.pte, quantized, how)
    return quantized


def _verify_data(args: argparse.Namespace, program) -> tuple[list, list | None]:
    """The samples and labels to verify on: --data, else a trained zoo model's test split, else random inputs."""
    import torch

    shapes = [shape for shape, _ in program.input_specs]
    dtypes = [dtype if isinstance(dtype, torch.dtype) else torch.float32 for _, dtype in program.input_specs]
    if args.data:
        from neutron_backend.datasets import load_dataset

        samples = load_dataset(args.data, shapes, dtypes)
        _say(args, f"data: {len(samples.batches)} sample(s) from {args.data}"
                   f"{' with labels' if samples.labels is not None else ' (no labels: no accuracy)'}")
        return samples.batches, samples.labels
    entry = _zoo_entry(args.model)
    if entry is not None and entry.trained:
        split = entry.test_split()
        _say(args, f"data: the {len(split.labels)} held-out {entry.dataset} test images of {entry.name}")
        return split.batches(), list(split.labels)
    from neutron_backend.quantizer.calibration import random_batches

    logger.warning("no --data: verifying on %d random N(0, 1) inputs (seed 1); pass --data (a folder of images, "
                   "FILE.py:FUNCTION or a .pt/.npz file) for real inputs and labels", RANDOM_VERIFY_SAMPLES)
    examples = tuple(torch.zeros(s, dtype=d) for s, d in zip(shapes, dtypes, strict=True))
    return random_batches(examples, RANDOM_VERIFY_SAMPLES, seed=1), None


def _zoo_entry(spec: str | None):
    """The zoo entry a MODEL argument names, or None when it names a file (even one called like a zoo model)."""
    from neutron_backend.models import list_models, zoo_entry

    if spec is None or spec.strip().lower() not in list_models():
        return None
    return zoo_entry(spec)


def _cmd_verify(args: argparse.Namespace) -> int:
    import torch

    from neutron_backend.runtime import load_pte
    from neutron_backend.verify import verify

    if not Path(args.pte).is_file():
        raise UsageError(f"no such .pte file: {args.pte}")
    loaded = _load_model(args.model) if args.model else None
    quantized = _verify_reference(args, loaded)
    program = _FloatIO(load_pte(args.pte, kernels=args.kernels), args)
    batches, labels = _verify_data(args, program)
    outputs: list[tuple] = []

    def run(*inputs: torch.Tensor) -> tuple:
        outputs.append(program(*inputs))
        return outputs[-1]

    float_model = loaded.model if loaded is not None else None
    torch.set_num_threads(1)  # batch-1 models: intra-op threads only add wake-ups on a shared machine
    result = verify(run, quantized, batches, float_model=float_model, labels=labels, progress=not args.quiet,
                    num_worst=args.worst)
    float_errors = _float_errors(outputs, float_model, batches, result.output_scales) if float_model else None
    if args.json:
        from dataclasses import asdict

        extra = {"agreement_is_meaningful": result.agreement_is_meaningful}
        if float_errors is not None:
            extra.update(max_error_steps_vs_float=float_errors[0], mean_error_steps_vs_float=float_errors[1])
        print(json.dumps({**asdict(result), **extra}, indent=2))
    else:
        against = f"the quantized and float {loaded.name}" if loaded is not None else "its quantized reference"
        print(f"{args.pte} against {against} on {result.num_samples} sample(s):")
        print(result)
        if float_errors is not None:
            print(f"  against the float model: max {float_errors[0]:.3g} step(s), mean {float_errors[1]:.3g} step(s) "
                  "(quantization error: the float model is not the reference)")
        if loaded is not None and not loaded.classifier:
            print("  (this model's output is not class scores: top-1 figures do not mean much)")
    if args.max_steps is not None and result.max_error_steps > args.max_steps:
        print(f"neutron verify: FAILED: {result.max_error_steps:.4g} step(s) > --max-steps {args.max_steps:g}",
              file=sys.stderr)
        return FAILURE
    return 0


def _in_short(loaded, report, estimate, result) -> list[str]:
    """What a newcomer should take away from the demo, in four lines."""
    cpu_operators = [e for e in report.rejected() if e.kind not in ("quantize", "dequantize", "getitem")]
    plumbing = len(report.rejected()) - len(cpu_operators)
    where = (f"{100 * report.delegated_mac_fraction:.1f}% of the {report.total_macs / 1e6:.1f} M multiply-accumulates "
             f"run on the NPU, in {report.num_partitions} delegate call(s)")
    if cpu_operators:
        reasons = "; ".join(f"{e.target.split('.')[1] if e.target.count('.') == 2 else e.target}: {e.reason}"
                            for e in cpu_operators[:3])
        why = f"{len(cpu_operators)} operator node(s) stay on the CPU - {reasons}"
    else:
        why = (f"every operator met Neutron's constraints on {report.target} (`neutron ops --target {report.target}`);"
               f" the CPU only converts between float and int8 at the edges ({plumbing} quantize/dequantize node(s))")
    if result.pte_accuracy is not None:
        accuracy = (f"on {result.num_top1_samples} held-out images: float {100 * result.float_accuracy:.2f}%, "
                    f"quantized {100 * result.reference_accuracy:.2f}%, .pte {100 * result.pte_accuracy:.2f}%; "
                    f"top-1 agreement .pte vs quantized {result.agreement_text(result.top1_agreement)}")
    else:
        accuracy = (f"the .pte is within {result.max_error_steps:.3g} output quantization step(s) of the quantized "
                    f"PyTorch model; random weights: no accuracy, top-1 agreement "
                    f"{result.agreement_text(result.top1_agreement)}")
    lines = ["In short:", f"  where:    {where}", f"  why:      {why}", f"  accuracy: {accuracy}"]
    lines.append(f"  speed:    about {estimate.total_us / 1000:.2f} ms per inference on {report.target}, vs "
                 f"~{estimate.all_cpu_us / 1000:.1f} ms on the {estimate.cpu} alone - a cost-model estimate, "
                 "not a measurement")
    return lines


def _cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from neutron_backend.pipeline import compile_model, save_reference
    from neutron_backend.quantizer.calibration import random_batches
    from neutron_backend.verify import verify

    target = get_target(args.target)
    loaded = _load_model(args.model)
    entry = _zoo_entry(args.model)
    trained = entry is not None and entry.trained
    output = Path(args.output or f"{loaded.name}.pte")
    print(f"Neutron backend demo: {loaded.name} on {target.name} ({target.npu}, {target.macs_per_cycle} MACs/cycle)")
    if trained:
        print(f"Model: {loaded.description}; weights in neutron_backend/models/weights, calibrated on "
              f"{len(loaded.calibration_batches)} training images, checked on the held-out test images.")
        calibration = loaded.calibration_batches
    else:
        print(f"Model: {loaded.description}. Its weights are seeded random, so no accuracy is claimed; it is "
              "calibrated on 16 seeded random batches.")
        calibration = random_batches(loaded.example_inputs)
    print(f"\n1. Compile: quantize to int8 (NeutronQuantizer), partition (NeutronPartitioner), lower to {output}\n")
    sys.stdout.flush()
    compiled = compile_model(loaded.model, loaded.example_inputs, target.name, calibration_batches=calibration,
                             progress=not args.quiet)
    output.write_bytes(compiled.pte)
    save_reference(compiled, output)
    report = compiled.report
    print(report.summary())
    print(f"\nwrote {output} ({len(compiled.pte):,} bytes; {_EMULATION_NOTE})")
    if trained:
        split = entry.test_split()
        count = min(args.samples or len(split.labels), len(split.labels))
        samples, labels = split.batches(count), list(split.labels[:count])
        what = f"the {count} held-out test images"
    else:
        generator = torch.Generator().manual_seed(1)
        count = args.samples or DEMO_SAMPLES
        samples = [tuple(torch.randn(x.shape, generator=generator) for x in loaded.example_inputs)
                   for _ in range(count)]
        labels, what = None, f"{count} random inputs"
    print(f"\n2. Run {output} on this PC (ExecuTorch's runtime, the NPU partitions emulated on the host) on {what}, "
          "against the quantized and the float PyTorch model\n")
    sys.stdout.flush()
    torch.set_num_threads(1)  # batch-1 models: intra-op threads only add wake-ups on a shared machine
    result = verify(output, compiled.quantized, samples, float_model=loaded.model, labels=labels,
                    progress=not args.quiet)
    print(result)
    print("\n" + "\n".join(_in_short(loaded, report, report.latency_estimate(), result)))
    return 0


# -- the parser ----------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `neutron compile: error: <what> (see neutron compile --help)`."""

    def error(self, message: str) -> None:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


_EPILOG = """\
examples:
  neutron demo                                     what `make demo` runs
  neutron compile cifarnet -o cifarnet.pte         a zoo model (`neutron models` lists them)
  neutron compile torchvision:mobilenet_v3_small   a torchvision classification model (weights=None)
  neutron compile model.pt2 --calibration-data calib.npz --exclude-op aten::max_pool2d
  neutron compile mymodel.py:build --report json > report.json
  neutron run cifarnet.pte --inputs images.pt
  neutron verify cifarnet.pte --model cifarnet --data images.pt
  neutron ops --target mcxn94x
"""

_MODEL_HELP = ("a zoo model name or torchvision:NAME (`neutron models`), a saved ExportedProgram FILE.pt2 "
               "(torch.export.save), or FILE.py:FUNCTION where FUNCTION() returns (model, example_inputs[, "
               "calibration_batches])")
_DATA_HELP = ("a .pt file (torch.save of a tensor, a tuple of tensors - one per model input -, a list of batches, or "
              "a dict with 'inputs' and optional 'labels') or a .npz file (one array per model input, optional "
              "'labels'); samples stacked on the first dimension")


def _common(quiet_default: Any) -> argparse.ArgumentParser:
    """-q and -v, accepted before or after the command (defaults only on the main parser)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", default=quiet_default,
                        help="no progress output (warnings and errors still show)")
    common.add_argument("-v", "--verbose", action="store_true", default=quiet_default,
                        help="log every step of the backend, show tracebacks")
    return common


def _add_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", type=_target, default="imxrt700", metavar="TARGET",
                        help=f"Neutron target: {', '.join(list_targets())} (default imxrt700)")


def _add_kernels(parser: argparse.ArgumentParser) -> None:
    # The names of neutron_backend.runtime.KERNEL_CHOICES, spelled here so that --help does not import the runtime.
    parser.add_argument("--kernels", choices=("exact", "reference"), default="exact",
                        help="engine of the Neutron partitions: exact (our int8 kernels, bit-identical to LiteRT's "
                        "reference kernels; default) or reference (LiteRT's reference kernels, the cross-check)")


def _parser() -> argparse.ArgumentParser:
    sub_common = _common(argparse.SUPPRESS)
    parser = _Parser(prog="neutron", description=__doc__.splitlines()[0], epilog=_EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter, parents=[_common(False)])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    compile_ = commands.add_parser("compile", parents=[sub_common], help="quantize, partition, lower a model to .pte",
                                   description="Quantize MODEL to int8, delegate what Neutron runs, write a .pte and "
                                   "print the delegation report (what runs where, why, estimated latency).")
    compile_.add_argument("model", metavar="MODEL", help=_MODEL_HELP)
    _add_target(compile_)
    compile_.add_argument("--flavor", metavar="FLAVOR", help="NXP converter flavor (e.g. SDK_25_06, eiq_neutron_sdk) "
                          "for a deployable payload; needs NXP's converter installed. Default: emulation payload")
    compile_.add_argument("--exclude-op", "--operators-not-to-delegate", dest="exclude_op", action="append",
                          metavar="OP", help="an operator to keep on the CPU, e.g. aten::max_pool2d or "
                          "aten.add.Tensor; repeat or comma-separate for several")
    compile_.add_argument("--force-delegate-cat", action="store_true",
                          help="delegate cat even when its channels are not a multiple of num_macs")
    compile_.add_argument("--allow-no-op-partitions", action="store_true",
                          help="delegate partitions holding only shape operators (view, permute, ...)")
    compile_.add_argument("--min-compute-ops", type=_positive_int, default=1, metavar="N",
                          help="partitions with fewer compute operators stay on the CPU (default 1)")
    compile_.add_argument("--calibration-data", metavar="FILE",
                          help=f"calibration inputs: {_DATA_HELP}. Default: the model source's own, else 16 "
                          "random batches (with a warning)")
    compile_.add_argument("--int8-io", action="store_true",
                          help="the .pte takes int8 inputs and returns int8 outputs (no float quantize/dequantize "
                               "on the CPU); neutron run and verify quantize and dequantize for you")
    compile_.add_argument("-o", "--output", metavar="PTE", help="the .pte to write (default MODEL_NAME.pte)")
    compile_.add_argument("--intermediates-dir", metavar="DIR", help="also write each partition's .tflite (Neutron "
                          "IR, opens in Netron), quantized.pt2, report.json and report.html there")
    compile_.add_argument("--report", choices=("text", "json"), default="text",
                          help="report format on stdout (json: the schema in docs/report-schema.md)")
    compile_.add_argument("--graph", metavar="FILE.html", help="write a picture of the graph coloured by placement, "
                          "next to the per-layer profile as a sortable table")
    compile_.add_argument("--per-layer", metavar="FILE.csv", help="write the per-layer profile (operator, shapes, "
                          "MACs, bytes, estimated cycles, compute or memory bound, share of the time) as CSV")

    run = commands.add_parser("run", parents=[sub_common], help="run a .pte on this PC; print outputs and timing",
                              description="Run PTE through ExecuTorch's runtime on this PC, its Neutron partitions "
                              "emulated with our exact int8 kernels (--kernels reference: LiteRT's reference kernels).")
    run.add_argument("pte", metavar="PTE")
    _add_kernels(run)
    run.add_argument("--inputs", metavar="FILE", help=f"inputs: {_DATA_HELP}. Default: one random N(0, 1) input")
    run.add_argument("--seed", type=int, default=0, help="seed of the random input (default 0)")
    run.add_argument("--repeat", type=_positive_int, default=1, metavar="N", help="run every input N times for timing")
    run.add_argument("--save", metavar="FILE", help="save the outputs, stacked per output, to a .pt or .npz file")

    verify = commands.add_parser("verify", parents=[sub_common], help="check a .pte against its quantized model",
                                 description="Run PTE on this PC over a data set and compare it with the quantized "
                                 "model it was lowered from (the reference, saved by compile as "
                                 "PTE_NAME.quantized.pt2: error in output quantization steps, RMSE, cosine "
                                 "similarity, top-1 agreement, worst inputs) and with the float model (--model); "
                                 "with labels, the accuracy of all three. A reference whose qparams differ from "
                                 "the .pte's is refused.")
    verify.add_argument("pte", metavar="PTE")
    _add_kernels(verify)
    verify.add_argument("--model", metavar="MODEL", help=f"the float model PTE was compiled from, for float accuracy "
                        f"and agreement: {_MODEL_HELP}")
    verify.add_argument("--data", metavar="DATA", help="inputs (and labels for accuracy): a folder of images with one "
                        "subfolder per class, FILE.py:FUNCTION returning a DataLoader (or an iterable of (inputs, "
                        f"labels)), or {_DATA_HELP}. Default: a trained zoo MODEL's test split, else "
                        f"{RANDOM_VERIFY_SAMPLES} random inputs (with a warning)")
    verify.add_argument("--quantized", metavar="FILE.pt2", help="the quantized reference (default: "
                        "PTE_NAME.quantized.pt2 next to PTE, written by compile)")
    _add_target(verify)
    verify.add_argument("--calibration-data", metavar="FILE", help="deprecated: without a saved reference, MODEL is "
                        "quantized again with this calibration data (refused unless its qparams match the .pte's)")
    verify.add_argument("--worst", type=int, default=5, metavar="N", help="list the N inputs with the largest error "
                        "(default 5)")
    verify.add_argument("--max-steps", type=_non_negative_float, metavar="STEPS",
                        help="exit with status 1 when the error exceeds STEPS output quantization steps")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")

    ops = commands.add_parser("ops", parents=[sub_common], help="the operators Neutron runs, and their constraints",
                              description="The operator support table, generated from the operator registry.")
    ops.add_argument("--target", type=_target, metavar="TARGET",
                     help=f"evaluate the limits for one target ({', '.join(list_targets())})")
    ops.add_argument("--csv", action="store_true", help="CSV (without --target: docs/op-support.csv)")

    targets = commands.add_parser("targets", parents=[sub_common], help="the Neutron targets and their numbers",
                                  description="The target table, with the assumptions behind each number.")
    targets.add_argument("--costs", action="store_true", help="also every number of the latency cost model")

    commands.add_parser("models", parents=[sub_common], help="the model zoo and the torchvision garden",
                        description="The zoo models MODEL may name, then the torchvision classification models "
                        "(torchvision:NAME, with the `models` extra installed), with their input shapes.")

    demo = commands.add_parser("demo", parents=[sub_common], help="compile, run and check a zoo model (make demo)",
                               description="Compile a zoo model, run it on this PC, check it against PyTorch and "
                               "explain what ran where, why, how accurate and how fast it is estimated to be.")
    demo.add_argument("--model", default=DEMO_MODEL, metavar="MODEL", help=f"a zoo model (default {DEMO_MODEL})")
    _add_target(demo)
    demo.add_argument("-o", "--output", metavar="PTE", help="the .pte to write (default MODEL.pte)")
    demo.add_argument("--samples", type=_positive_int, metavar="N",
                      help=f"check on the first N test images of a trained model (default all), or N random inputs "
                      f"for a random-weight one (default {DEMO_SAMPLES})")
    return parser


# -- main ----------------------------------------------------------------------------------------------------


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"neutron: {level}{record.getMessage()}"


def _configure_logging(args: argparse.Namespace) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    if args.verbose:
        logging.getLogger("neutron_backend").setLevel(logging.INFO)
        return
    if not args.quiet:
        logging.getLogger("neutron_backend.pipeline").setLevel(logging.INFO)
    # Import-time noise from dependencies that says nothing about the user's model.
    logging.getLogger("torchao").setLevel(logging.ERROR)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    logging.getLogger("torch.export").setLevel(logging.ERROR)  # a failed load is reported in one line below
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def _is_usage_error(error: BaseException) -> bool:
    """Whether `error` is about what the user asked for (exit 2) rather than a failure of the job (exit 1)."""
    from neutron_backend.compile_spec import NeutronConfigError

    usage = [UsageError, NeutronConfigError, UnknownTargetError, FileNotFoundError]
    for module, name in (("neutron_backend.pipeline", "InputError"),
                         ("neutron_backend.converter", "ConverterNotInstalledError"),
                         ("neutron_backend.pte_qparams", "ReferenceMismatchError")):
        if module in sys.modules:
            usage.append(getattr(sys.modules[module], name))
    return isinstance(error, tuple(usage))


_COMMANDS = {"compile": _cmd_compile, "run": _cmd_run, "verify": _cmd_verify, "ops": _cmd_ops,
             "targets": _cmd_targets, "models": _cmd_models, "demo": _cmd_demo}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `neutron` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    _configure_logging(args)
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f"neutron {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - every failure becomes one readable line (-v: the traceback)
        if args.verbose:
            raise
        usage = _is_usage_error(error)
        message = " ".join(str(error).split()) or type(error).__name__
        label = "error" if usage else f"failed ({type(error).__name__})"
        hint = "" if usage else " (-v shows the traceback)"
        print(f"neutron {args.command}: {label}: {message}{hint}", file=sys.stderr)
        return USAGE_ERROR if usage else FAILURE


if __name__ == "__main__":
    sys.exit(main())
