"""Trains the digits zoo models (`neutron_backend.models.trained`) and writes their weights and a record of how.

    python -m neutron_backend.models.train                       # every trained model
    python -m neutron_backend.models.train --models resnet8_digits --threads 1

Seeded and single-threaded by default, so a rerun on the same torch version reproduces the weights bit for bit:
torch's seed `TRAINING_SEED` before building the model, a generator with that seed for shuffling and augmentation.
Training: Adam with cosine learning-rate decay, batch 32, cross-entropy, on the 1,437 training images, each
shifted by up to one pixel (of the 8x8 original) at random. Writes `weights/<name>.pt` (fp32 state dict) and
`weights/README.md` (command, seed, recipe, float test accuracy, SHA-256 of each file).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

from neutron_backend.models.digits import load_split, raw_split, shape_images
from neutron_backend.models.trained import TRAINED_MODELS, TRAINING_SEED, WEIGHTS_DIR, TrainedModel

BATCH_SIZE = 32
MAX_SHIFT = 1
_RECORD = WEIGHTS_DIR / "records.json"


def _shift(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each `[8, 8]` image moved by a random whole number of pixels in [-MAX_SHIFT, MAX_SHIFT] per axis, zero
    filled."""
    padded = nn.functional.pad(images, (MAX_SHIFT,) * 4)
    offsets = torch.randint(0, 2 * MAX_SHIFT + 1, (len(images), 2), generator=generator)
    size = images.shape[-1]
    return torch.stack([p[dy:dy + size, dx:dx + size] for p, (dy, dx) in zip(padded, offsets.tolist(), strict=True)])


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of `model` (in eval mode) on a batch of images."""
    with torch.no_grad():
        return (model.eval()(images).argmax(1) == labels).double().mean().item()


def train(variant: TrainedModel) -> tuple[nn.Module, float]:
    """Trains `variant` from its seeded initialisation; returns the model (eval mode) and its test accuracy."""
    torch.manual_seed(TRAINING_SEED)
    model = variant.architecture()
    images, labels = raw_split("train")
    test = load_split("test", variant.input_shape)
    generator = torch.Generator().manual_seed(TRAINING_SEED)
    optimizer = torch.optim.Adam(model.parameters(), lr=variant.learning_rate)
    steps = variant.epochs * -(-len(labels) // BATCH_SIZE)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for epoch in range(variant.epochs):
        model.train()
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), BATCH_SIZE):
            batch = order[start:start + BATCH_SIZE]
            inputs = shape_images(_shift(images[batch], generator), variant.input_shape)
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(inputs), labels[batch]).backward()
            optimizer.step()
            schedule.step()
        print(f"{variant.name}: epoch {epoch + 1}/{variant.epochs}, test accuracy "
              f"{accuracy(model, test.images, test.labels):.4f}", file=sys.stderr, flush=True)
    return model.eval(), accuracy(model, test.images, test.labels)


def _write_readme(records: dict[str, dict]) -> None:
    lines = [
        "# Trained weights of the digits zoo models",
        "",
        "fp32 state dicts written by `neutron_backend/models/train.py` (see its docstring for the recipe); loaded by "
        "`neutron_backend/models/trained.py`. Data: scikit-learn's digits, 80/20 stratified split "
        "(`random_state=0`), test accuracy on the 360 held-out images.",
        "",
        "| weights | command | seed | epochs | learning rate | torch | train time (s) | float test accuracy | "
        "SHA-256 |",
        "|---|---|---:|---:|---:|---|---:|---:|---|",
    ]
    for name, r in sorted(records.items()):
        lines.append(f"| `{name}.pt` | `{r['command']}` | {r['seed']} | {r['epochs']} | {r['learning_rate']:g} | "
                     f"{r['torch']} | {r['train_seconds']:.0f} | {100 * r['test_accuracy']:.2f}% | "
                     f"`{r['sha256'][:16]}...` |")
    (WEIGHTS_DIR / "README.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    names = [variant.name for variant in TRAINED_MODELS]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=names, choices=names)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps training reproducible)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    records = json.loads(_RECORD.read_text()) if _RECORD.is_file() else {}
    for variant in TRAINED_MODELS:
        if variant.name not in args.models:
            continue
        start = time.perf_counter()
        model, test_accuracy = train(variant)
        torch.save(model.state_dict(), variant.weights_path)
        records[variant.name] = dict(
            command=f"python -m neutron_backend.models.train --models {variant.name} --threads {args.threads}",
            seed=TRAINING_SEED, epochs=variant.epochs, learning_rate=variant.learning_rate, torch=torch.__version__,
            train_seconds=round(time.perf_counter() - start, 1), test_accuracy=test_accuracy,
            sha256=hashlib.sha256(Path(variant.weights_path).read_bytes()).hexdigest())
        print(f"{variant.name}: test accuracy {test_accuracy:.4f}, wrote {variant.weights_path}", flush=True)
    _RECORD.write_text(json.dumps(records, indent=2, sort_keys=True) + "\n")
    _write_readme(records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
