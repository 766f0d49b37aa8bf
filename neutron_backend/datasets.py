"""Data sets for `neutron verify --data` (and `neutron run --inputs`): a folder of images with one subfolder per
class, a `FILE.py:FUNCTION` returning a DataLoader (or any iterable of batches), or a `.pt`/`.npz` tensor file
(`neutron_backend.pipeline.load_samples`). Each becomes batch-sized samples for a model whose inputs have given
shapes, with labels when the source has them.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from neutron_backend.pipeline import InputError, Samples, load_samples

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
DATASET_FORMS = ("a folder of images with one subfolder per class (the subfolder names, sorted, are the labels 0, "
                 "1, ...), FILE.py:FUNCTION where FUNCTION() returns a DataLoader or an iterable of batches "
                 "(inputs, or (inputs, labels)), or a .pt/.npz tensor file")


def load_dataset(spec: str | Path, input_shapes: Sequence[Sequence[int]],
                 input_dtypes: Sequence[torch.dtype] | None = None) -> Samples:
    """Samples for a model whose inputs have `input_shapes` (batch dimension first) from `spec`: an image folder,
    `FILE.py:FUNCTION`, or a tensor file (see `DATASET_FORMS`).

    Raises InputError naming the problem and what would work.
    """
    shapes = [tuple(int(d) for d in s) for s in input_shapes]
    dtypes = list(input_dtypes or [torch.float32] * len(shapes))
    text = str(spec)
    path_text, _, function = text.rpartition(":")
    if path_text.endswith(".py") and function:
        return _from_python(Path(path_text), function, shapes, dtypes)
    if Path(text).is_dir():
        return _from_folder(Path(text), shapes, dtypes)
    return load_samples(text, shapes, dtypes)


def _from_folder(folder: Path, shapes: list[tuple[int, ...]], dtypes: list[torch.dtype]) -> Samples:
    if len(shapes) != 1 or len(shapes[0]) != 4 or shapes[0][0] != 1:
        raise InputError(f"{folder}: an image folder feeds models with one [1, C, H, W] input; this model takes "
                         f"{[list(s) for s in shapes]}. Use a .pt/.npz file or FILE.py:FUNCTION instead")
    try:
        from PIL import Image
    except ImportError as error:
        raise InputError(f"{folder}: reading an image folder needs Pillow (pip install pillow), or give the data as "
                         f"a .pt/.npz file or FILE.py:FUNCTION") from error
    _, channels, height, width = shapes[0]
    if channels not in (1, 3):
        raise InputError(f"{folder}: images become 1 (grayscale) or 3 (RGB) channels; the model takes {channels}")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise InputError(f"{folder} has no class subfolders; expected {DATASET_FORMS}")
    batches, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((folder / name).iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            with Image.open(file) as image:
                converted = image.convert("L" if channels == 1 else "RGB").resize((width, height),
                                                                                   Image.Resampling.BILINEAR)
                pixels = torch.frombuffer(bytearray(converted.tobytes()), dtype=torch.uint8)
            tensor = pixels.reshape(height, width, channels).permute(2, 0, 1).unsqueeze(0).to(dtypes[0]) / 255.0
            batches.append((tensor,))
            labels.append(torch.tensor([label]))
    if not batches:
        raise InputError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class subfolders {classes}")
    return Samples(batches, labels)


def _from_python(path: Path, function: str, shapes: list[tuple[int, ...]], dtypes: list[torch.dtype]) -> Samples:
    if not path.is_file():
        raise InputError(f"no such file: {path} (expected FILE.py:FUNCTION returning a DataLoader)")
    module_name = f"_neutron_user_data_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # DataLoader workers and pickling look the module up by name
    module_spec.loader.exec_module(module)
    builder = getattr(module, function, None)
    if not callable(builder):
        raise InputError(f"{path} has no function {function!r}")
    where = f"{path}:{function}()"
    loader = builder()
    try:
        items = iter(loader)
    except TypeError as error:
        raise InputError(f"{where} returned a {type(loader).__name__}; expected a DataLoader or an iterable of "
                         "batches") from error
    batches: list[tuple[torch.Tensor, ...]] = []
    labels: list[torch.Tensor] = []
    for number, item in enumerate(items):
        inputs, item_labels = _inputs_and_labels(item, len(shapes), f"{where} batch {number}")
        split = _split_batch(inputs, shapes, f"{where} batch {number}")
        batches += [tuple(t.to(d) if t.is_floating_point() else t for t, d in zip(s, dtypes, strict=True))
                    for s in split]
        if item_labels is not None:
            labels += list(torch.as_tensor(item_labels).reshape(len(split), -1))
        elif labels:
            raise InputError(f"{where} batch {number} has no labels but earlier batches had")
    if not batches:
        raise InputError(f"{where} yielded no batches")
    return Samples(batches, labels or None)


def _inputs_and_labels(item: Any, num_inputs: int, where: str) -> tuple[tuple[torch.Tensor, ...], Any]:
    """Splits one loader item into the model's inputs and its labels: a tensor, or (inputs..., labels)."""
    if isinstance(item, torch.Tensor):
        return (item,), None
    if isinstance(item, dict) and "inputs" in item:
        inputs = item["inputs"]
        return (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs), item.get("labels")
    if isinstance(item, list | tuple) and len(item) == num_inputs + 1:
        return tuple(item[:num_inputs]), item[num_inputs]
    if isinstance(item, list | tuple) and len(item) == num_inputs:
        return tuple(item), None
    raise InputError(f"{where} is a {type(item).__name__}; expected inputs or (inputs, labels) for a model with "
                     f"{num_inputs} input(s)")


def _split_batch(inputs: tuple[torch.Tensor, ...], shapes: list[tuple[int, ...]],
                 where: str) -> list[tuple[torch.Tensor, ...]]:
    """A loader batch split into samples of the model's batch size."""
    per_input = []
    for index, (tensor, shape) in enumerate(zip(inputs, shapes, strict=True)):
        if not isinstance(tensor, torch.Tensor):
            raise InputError(f"{where}: input {index} is a {type(tensor).__name__}, not a tensor")
        if tuple(tensor.shape[1:]) != shape[1:] or tensor.shape[0] % shape[0]:
            raise InputError(f"{where}: input {index} has shape {list(tensor.shape)}; the model's input {index} "
                             f"is {list(shape)}, so expected [N*{shape[0]}, {', '.join(map(str, shape[1:]))}]")
        per_input.append(torch.split(tensor, shape[0]))
    return list(zip(*per_input, strict=True))
