"""`neutron verify` on a data set of 1,800 images, as a user runs it: compile a trained zoo model, write the held-out
digits test images and four shifted copies of each (one pixel up, down, left, right, on the 8x8 original) as a folder
of PNG files with one subfolder per class, and verify the .pte on that folder against the quantized reference that
compile saved next to it and the float model.

    python bench/verify_dataset.py                         # mobilenet_v2_digits
    python bench/verify_dataset.py --model resnet8_digits

Writes bench/results/verify_dataset.md: the commands, verify's report (stdout) and its progress bar's last line.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "verify_dataset.md"
SHIFTS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))


def write_image_folder(model: str, folder: Path) -> int:
    """The shifted test images of `model`'s digits split, as 8-bit PNGs at its input size; returns the count."""
    from PIL import Image

    from neutron_backend.models import zoo_entry
    from neutron_backend.models.digits import raw_split, shape_images

    entry = zoo_entry(model)
    images, labels = raw_split("test")
    count = 0
    for dy, dx in SHIFTS:
        padded = torch.nn.functional.pad(images, (1, 1, 1, 1))
        shifted = padded[:, 1 + dy:9 + dy, 1 + dx:9 + dx]
        shaped = shape_images(shifted, entry.input_shape)
        for index, (image, label) in enumerate(zip(shaped, labels.tolist(), strict=True)):
            pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            (folder / str(label)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).save(
                folder / str(label) / f"{index:03d}_{dy:+d}{dx:+d}.png")
            count += 1
    return count


def _neutron(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "neutron_backend.cli", *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2_digits")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        count = write_image_folder(args.model, work / "digits_shifted")
        pte = work / f"{args.model}.pte"
        _neutron("compile", args.model, "-o", str(pte), "-q")
        verified = _neutron("verify", str(pte), "--model", args.model, "--data", str(work / "digits_shifted"))
        report = verified.stdout.replace(directory + os.sep, "")
        progress = [line for line in verified.stderr.replace("\r", "\n").splitlines() if "verifying:" in line]
    lines = [
        f"# `neutron verify` on {count:,} images",
        "",
        f"The {count // len(SHIFTS)} held-out digits test images of `{args.model}` and four copies of each shifted by "
        "one pixel (of the 8x8 original), resized to the model's input and written as 8-bit PNG files in one "
        "folder per class. The .pte is verified against the quantized reference `neutron compile` saved next to it "
        "(`MODEL.quantized.pt2`) and the float model.",
        "",
        f"Command: `python {' '.join([os.path.relpath(__file__, Path.cwd()), *(argv or sys.argv[1:])])}`, which runs",
        "",
        "```sh",
        f"neutron compile {args.model} -o {args.model}.pte",
        f"neutron verify {args.model}.pte --model {args.model} --data digits_shifted/",
        "```",
        "",
        "stdout:",
        "",
        "```text",
        report.rstrip(),
        "```",
        "",
        f"Progress bar (stderr), last line: `{progress[-1].strip() if progress else '-'}`",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
