"""The `neutron` command: compile models for the Neutron NPU, run and check them on the host, list targets and ops.

Heavy imports (torch, executorch) happen inside the commands, so `neutron --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

DEMO_SAMPLES = 50


def _cmd_targets(args: argparse.Namespace) -> int:
    from neutron_backend.targets import get_target, list_targets

    print(f"{'target':<10} {'NPU':<20} {'MACs/cycle':>10} {'num_macs':>8} {'NPU clock':>10}  assumptions")
    for name in list_targets():
        t = get_target(name)
        print(f"{t.name:<10} {t.npu:<20} {t.macs_per_cycle:>10} {t.num_macs:>8} {t.npu_clock_hz / 1e6:>7.0f} MHz  "
              f"{'; '.join(t.assumptions)}")
    return 0


def _cmd_ops(args: argparse.Namespace) -> int:
    from neutron_backend.ops.support_table import support_csv

    print(support_csv(), end="")
    return 0


def _load_model(name: str):
    from neutron_backend.models import get_model, list_models

    if name not in list_models():
        raise SystemExit(f"neutron: unknown model {name!r}; zoo models: {', '.join(list_models())}")
    return get_model(name)


def _cmd_compile(args: argparse.Namespace) -> int:
    from neutron_backend.delegation_options import CustomDelegationOptions
    from neutron_backend.pipeline import compile_model

    model, example_inputs = _load_model(args.model)
    options = CustomDelegationOptions(allow_no_op_partitions=args.allow_no_op_partitions,
                                      force_delegate_cat=args.force_delegate_cat)
    compiled = compile_model(model, example_inputs, args.target, delegation_options=options,
                             progress=not args.quiet, neutron_converter_flavor=args.flavor,
                             operators_not_to_delegate=args.operators_not_to_delegate or None,
                             intermediates_dir=args.intermediates_dir)
    output = Path(args.output or f"{args.model}.pte")
    output.write_bytes(compiled.pte)
    if args.report == "json":
        print(json.dumps(compiled.report.to_dict(), indent=2))
    else:
        print(compiled.report)
    print(f"wrote {output} ({len(compiled.pte):,} bytes)", file=sys.stderr)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import torch

    from neutron_backend.runtime import load_pte

    if not Path(args.pte).is_file():
        raise FileNotFoundError(f"no such .pte file: {args.pte}")
    program = load_pte(args.pte)
    generator = torch.Generator().manual_seed(args.seed)
    inputs = [torch.randn(shape, generator=generator) if dtype.is_floating_point else torch.zeros(shape, dtype=dtype)
              for shape, dtype in program.input_specs]
    start = time.perf_counter()
    outputs = program(*inputs)
    elapsed = time.perf_counter() - start
    for index, output in enumerate(outputs):
        print(f"output {index}: shape {list(output.shape)} dtype {output.dtype}")
        print(output)
    print(f"host run time: {elapsed * 1e3:.2f} ms (emulation on this PC, not a device estimate)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from neutron_backend.pipeline import compile_model
    from neutron_backend.quantizer.calibration import random_batches
    from neutron_backend.verify import verify

    print(f"Quantizing CifarNet (calibrated on 16 seeded random batches), partitioning and lowering it for "
          f"{args.target} ...")
    model, example_inputs = _load_model("cifarnet")
    compiled = compile_model(model, example_inputs, args.target, calibration_batches=random_batches(example_inputs),
                             progress=not args.quiet)
    output = Path(args.output)
    output.write_bytes(compiled.pte)
    print(compiled.report.summary())
    print(f"\nwrote {output} ({len(compiled.pte):,} bytes; emulation payload, runs on this PC)")
    generator = torch.Generator().manual_seed(1)
    samples = [(torch.randn(example_inputs[0].shape, generator=generator),) for _ in range(DEMO_SAMPLES)]
    result = verify(output, compiled.quantized, samples, float_model=model)
    print(f"\nHost run of {output} against the quantized PyTorch model on {DEMO_SAMPLES} random inputs:")
    print(result)
    return 0


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    common.add_argument("-v", "--verbose", action="store_true", help="log what the backend does")
    parser = argparse.ArgumentParser(prog="neutron", description=__doc__.splitlines()[0], parents=[common])
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("targets", help="list the supported Neutron targets", parents=[common])
    commands.add_parser("ops", help="print the operator support table (CSV)", parents=[common])

    compile_ = commands.add_parser("compile", help="quantize and lower a zoo model to a .pte", parents=[common])
    compile_.add_argument("model", help="zoo model name (see neutron_backend.models)")
    compile_.add_argument("--target", default="imxrt700")
    compile_.add_argument("--flavor", default=None, help="neutron converter flavor, e.g. SDK_25_06 (needs NXP's SDK)")
    compile_.add_argument("--operators-not-to-delegate", nargs="*", metavar="OP", help="e.g. aten::add")
    compile_.add_argument("--allow-no-op-partitions", action="store_true")
    compile_.add_argument("--force-delegate-cat", action="store_true")
    compile_.add_argument("--intermediates-dir", default=None, help="write each partition's .tflite here")
    compile_.add_argument("--report", choices=("text", "json"), default="text")
    compile_.add_argument("-o", "--output", default=None, help="output .pte (default MODEL.pte)")

    run = commands.add_parser("run", help="run a .pte on the host with random inputs", parents=[common])
    run.add_argument("pte")
    run.add_argument("--seed", type=int, default=0)

    demo = commands.add_parser("demo", help="the main job on CifarNet: compile, run on the host, check accuracy",
                               parents=[common])
    demo.add_argument("--target", default="imxrt700")
    demo.add_argument("-o", "--output", default="cifarnet.pte")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `neutron` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    handlers = {"targets": _cmd_targets, "ops": _cmd_ops, "compile": _cmd_compile, "run": _cmd_run,
                "demo": _cmd_demo}
    try:
        return handlers[args.command](args)
    except (ValueError, TypeError, OSError, RuntimeError, ImportError) as error:
        # Library errors carry the bad value and the fix; a traceback would bury them.
        print(f"neutron {args.command}: error: {error}", file=sys.stderr)
        if args.verbose:
            raise
        return 2


if __name__ == "__main__":
    sys.exit(main())
