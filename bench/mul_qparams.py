"""Which input qparams for mul: observed (NeutronQuantizer) or NXP's fixed (1/256, 0)?

NXP's quantizer fixes both inputs of every mul at scale 1/256, zero point 0 (the range [-0.5, 0.496]). This script
measures what that costs on a model that multiplies: a small CNN with a squeeze-excitation block (global mean ->
conv1x1 -> relu -> conv1x1 -> sigmoid -> multiply the feature map), trained here on scikit-learn's 8x8 digits.

Variants, all with NeutronQuantizer everywhere else:
- observed: mul's inputs take their producers' qparams (the feature map's observed range, the sigmoid's fixed
  (1/256, -128)); no requantization. This is what NeutronQuantizer does.
- nxp_fixed_requantized: NXP's fixed (1/256, 0) inputs, met by a dequantize -> quantize pair before mul (what NXP's
  flow produces; those pairs stay on the CPU and split the partition).
- nxp_fixed_at_producer: the fixed (1/256, 0) imposed on the producers' outputs instead (no requantization, but the
  feature map itself is clipped to [-0.5, 0.5)).

For each: test accuracy, top-1 agreement with the float model, logits MSE against the float model, the mean and
max logit error in output quantization steps (|quantized - float| / output scale), and the same for the SE block's
own output (the mul), plus the number of requantizations (dequantize -> quantize pairs) in the converted graph.
Writes bench/results/mul_qparams.{json,md}.

    python bench/mul_qparams.py
"""

from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
from pathlib import Path

import torch
from torch import nn
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
from torchao.quantization.pt2e.quantizer import QuantizationAnnotation
from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

from neutron_backend.quantizer import NeutronQuantizer
from neutron_backend.quantizer import patterns as quantizer_patterns
from neutron_backend.quantizer.config import NeutronQuantizationConfig, fixed_qparams_spec

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SEED = 0
EPOCHS = 30
BATCH_SIZE = 64
LEARNING_RATE = 1e-2
CALIBRATION_IMAGES = 256
NXP_MUL_SCALE, NXP_MUL_ZERO_POINT = 1.0 / 256.0, 0
qd = torch.ops.quantized_decomposed
aten = torch.ops.aten


class SENet(nn.Module):
    """conv -> relu -> squeeze-excitation -> conv -> relu -> global mean -> linear, on 1x8x8 digits."""

    def __init__(self, channels: int = 16, reduced: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)
        self.conv2 = nn.Conv2d(channels, 32, 3, padding=1)
        self.classifier = nn.Linear(32, 10)

    def se(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv1(x))
        gate = torch.sigmoid(self.expand(torch.relu(self.reduce(y.mean((2, 3), keepdim=True)))))
        return y * gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.relu(self.conv2(self.se(x))).mean((2, 3)))


class SEBlock(nn.Module):
    """The SE part of a trained SENet alone (its output is the mul's)."""

    def __init__(self, net: SENet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.se(x)


@dataclasses.dataclass(frozen=True)
class FixedMulInputs:
    """NXP's mul annotation: both inputs fixed at (1/256, 0); `at_producer` moves that spec onto the producers."""

    at_producer: bool

    def annotate(self, node: Node, config: NeutronQuantizationConfig, config_of) -> bool:
        inputs = [arg for arg in node.args[:2] if isinstance(arg, Node)]
        spec = fixed_qparams_spec(NXP_MUL_SCALE, NXP_MUL_ZERO_POINT)
        if self.at_producer:
            for producer in inputs:
                annotation = producer.meta.get(Q_ANNOTATION_KEY)
                if annotation is not None and annotation.output_qspec is not None:
                    annotation.output_qspec = spec
        node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
            input_qspec_map=dict.fromkeys(inputs, spec), output_qspec=config.activation, _annotated=True)
        return True


VARIANTS = {
    "observed": None,
    "nxp_fixed_requantized": FixedMulInputs(at_producer=False),
    "nxp_fixed_at_producer": FixedMulInputs(at_producer=True),
}


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, train labels, test images, test labels): 8x8 digits scaled to [0, 1], a seeded 70/30 split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(data.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SEED))
    split = int(0.7 * len(labels))
    train, test = order[:split], order[split:]
    return images[train], labels[train], images[test], labels[test]


def train(images: torch.Tensor, labels: torch.Tensor) -> SENet:
    torch.manual_seed(SEED)
    model = SENet()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    for _ in range(EPOCHS):
        order = torch.randperm(len(labels))
        for start in range(0, len(labels), BATCH_SIZE):
            batch = order[start:start + BATCH_SIZE]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images[batch]), labels[batch]).backward()
            optimizer.step()
    return model.eval()


def quantize(model: nn.Module, calibration: torch.Tensor, variant: str) -> GraphModule:
    """`model` quantized with NeutronQuantizer, mul annotated per `variant`."""
    kind = VARIANTS[variant]
    saved = quantizer_patterns.PATTERNS[aten.mul.Tensor]
    if kind is not None:
        quantizer_patterns.PATTERNS[aten.mul.Tensor] = kind
    try:
        example = (calibration[:1],)
        prepared = prepare_pt2e(torch.export.export(model, example).module(), NeutronQuantizer("imxrt700"))
        with torch.no_grad():
            for image in calibration:
                prepared(image.unsqueeze(0))
        return convert_pt2e(prepared)
    finally:
        quantizer_patterns.PATTERNS[aten.mul.Tensor] = saved


def output_scale(quantized: GraphModule) -> float:
    """The scale of the quantize node producing the model's output."""
    (output,) = [n for n in quantized.graph.nodes if n.op == "output"]
    node = output.args[0][0] if isinstance(output.args[0], (list, tuple)) else output.args[0]
    while node.target != qd.quantize_per_tensor.default:
        node = node.args[0]
    return float(node.args[1])


def requantizations(quantized: GraphModule) -> int:
    return sum(1 for dq in quantized.graph.nodes if dq.target == qd.dequantize_per_tensor.default
               for q in dq.users if q.target == qd.quantize_per_tensor.default)


def errors(float_out: torch.Tensor, quantized_out: torch.Tensor, scale: float) -> dict[str, float]:
    steps = (quantized_out - float_out).abs() / scale
    return {"mse": float(((quantized_out - float_out) ** 2).mean()), "mean_error_steps": float(steps.mean()),
            "max_error_steps": float(steps.max()), "output_scale": scale}


def measure() -> dict:
    train_x, train_y, test_x, test_y = digits()
    model = train(train_x, train_y)
    calibration = train_x[:CALIBRATION_IMAGES]
    with torch.no_grad():
        float_logits = model(test_x)
        float_se = SEBlock(model)(test_x)
    results: dict = {"float_accuracy": float((float_logits.argmax(1) == test_y).float().mean()),
                     "test_images": len(test_y), "variants": {}}
    for variant in VARIANTS:
        quantized = quantize(model, calibration, variant)
        block = quantize(SEBlock(model), calibration, variant)
        with torch.no_grad():  # exported for one image at a time
            logits = torch.cat([quantized(image.unsqueeze(0)) for image in test_x])
            se_out = torch.cat([block(image.unsqueeze(0)) for image in test_x])
        results["variants"][variant] = {
            "accuracy": float((logits.argmax(1) == test_y).float().mean()),
            "top1_agreement_with_float": float((logits.argmax(1) == float_logits.argmax(1)).float().mean()),
            "logits": errors(float_logits, logits, output_scale(quantized)),
            "se_block_output": errors(float_se, se_out, output_scale(block)),
            "requantizations": requantizations(quantized),
        }
    return results


def markdown(results: dict, commit: str) -> str:
    lines = [
        "# mul input qparams: observed vs NXP's fixed (1/256, 0)",
        "",
        f"Model: conv -> squeeze-excitation (mean -> conv1x1 -> relu -> conv1x1 -> sigmoid -> mul) -> conv -> mean -> "
        f"linear, trained {EPOCHS} epochs on scikit-learn's 8x8 digits (seed {SEED}); PTQ calibrated on "
        f"{CALIBRATION_IMAGES} training images; {results['test_images']} test images. Float accuracy "
        f"{100 * results['float_accuracy']:.2f}%. Errors are against the float model, in steps of each output's "
        "quantization scale (quantized torch model after convert_pt2e, the reference the .pte matches within 1 step).",
        "",
        "| variant | accuracy | top-1 agreement with float | logits MSE | logits mean / max error (steps) | "
        "SE output mean / max error (steps) | requantizations |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, v in results["variants"].items():
        logits, block = v["logits"], v["se_block_output"]
        lines.append(
            f"| {name} | {100 * v['accuracy']:.2f}% | {100 * v['top1_agreement_with_float']:.2f}% | "
            f"{logits['mse']:.4g} | {logits['mean_error_steps']:.2f} / {logits['max_error_steps']:.1f} | "
            f"{block['mean_error_steps']:.2f} / {block['max_error_steps']:.1f} | {v['requantizations']} |")
    best = min(results["variants"], key=lambda name: results["variants"][name]["logits"]["mse"])
    lines += ["", f"Most accurate: **{best}** (lowest logits MSE against the float model). NeutronQuantizer annotates "
              "mul with observed inputs that follow their producers (quantizer/patterns.py).",
              "", f"Measured at commit {commit} on {platform.platform()} with `python bench/mul_qparams.py`.", ""]
    return "\n".join(lines)


def main() -> None:
    results = measure()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    results["commit"] = commit
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "mul_qparams.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS_DIR / "mul_qparams.md").write_text(markdown(results, commit))
    print(markdown(results, commit))


if __name__ == "__main__":
    main()
