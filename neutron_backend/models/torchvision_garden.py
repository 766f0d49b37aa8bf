"""The torchvision model garden: any `torchvision.models` classification builder, untrained but realistic.

`import_torchvision()` is the one way this project imports torchvision. The classification models need none of
torchvision's C++ operators, but its wheel can be built against a different torch than the one installed (a CUDA
build, another version); then its extension `_C` fails to load and `import torchvision` stops at
`RuntimeError: operator torchvision::nms does not exist`, because `torchvision/_meta_registrations.py` registers
fake kernels for `nms` and `qnms` without checking that the extension defined them. When the extension does not
load, this module defines the two operator schemas itself (schemas only, no kernel: calling `nms` still fails
with torchvision's "Couldn't load custom C++ ops"), so the import and every classification model work.

`build(name)` returns the model with `weights=None`, everything seeded, batchnorm statistics warmed up, in eval
mode, and a seeded example input (1x3x224x224, 1x3x299x299 for inception_v3).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from neutron_backend.models.common import seeded_input, warm_up_batchnorm

logger = logging.getLogger(__name__)

PREFIX = "torchvision:"
MODEL_SEED = 0
INPUT_SEED = 0
_DEFAULT_SIZE = 224
# Models whose architecture fixes another input size (torchvision's own weights metadata, `min_size` aside).
_INPUT_SIZES = {"inception_v3": 299}

# Schemas of the operators torchvision's meta registrations touch unconditionally (torchvision/csrc/ops/nms.cpp
# and quantized/qnms_kernel.cpp declare them so).
_STUB_SCHEMAS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
                 "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_stub_library: torch.library.Library | None = None


def _extension_loads(package_dir: Path) -> bool:
    """Whether torchvision's C++ extension loads into this torch (it then defines its operators itself)."""
    for candidate in sorted(package_dir.glob("_C*.so")) + sorted(package_dir.glob("_C*.pyd")):
        try:
            torch.ops.load_library(str(candidate))
            return True
        except (OSError, RuntimeError) as error:
            logger.debug("torchvision extension %s does not load: %s", candidate, error)
    return False


@functools.cache
def import_torchvision() -> ModuleType:
    """Imports torchvision, defining stub schemas for its detection operators when its extension cannot load.

    Raises ImportError, saying how to install it, when torchvision is not installed.
    """
    global _stub_library
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        raise ImportError("torchvision is not installed; install the model garden with `pip install -e .[models]` "
                          "(torchvision==0.28.0)")
    if not _extension_loads(Path(spec.origin).parent):
        logger.info("torchvision's C++ extension does not load with torch %s; defining stub schemas for %s so the "
                    "classification models import (detection operators stay unavailable)", torch.__version__,
                    ", ".join(schema.split("(")[0] for schema in _STUB_SCHEMAS))
        _stub_library = torch.library.Library("torchvision", "DEF")
        for schema in _STUB_SCHEMAS:
            _stub_library.define(schema)
    return importlib.import_module("torchvision")


def list_garden() -> list[str]:
    """The torchvision classification builders `build` accepts, sorted (without the `torchvision:` prefix)."""
    models = import_torchvision().models
    return sorted(models.list_models(module=models))


def input_shape(name: str) -> tuple[int, int, int, int]:
    """The example input shape of garden model `name`."""
    size = _INPUT_SIZES.get(name, _DEFAULT_SIZE)
    return (1, 3, size, size)


def build(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Garden model `name` (a torchvision classification builder): weights=None, seeded, batchnorm warmed up, eval.

    Raises ValueError for a name that is not a classification builder, listing the closest ones.
    """
    known = list_garden()
    if name not in known:
        import difflib

        close = difflib.get_close_matches(name, known, n=3)
        raise ValueError(f"unknown torchvision classification model {name!r}; closest: {close}; all: "
                         f"`neutron models` lists {len(known)}")
    models = import_torchvision().models
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(MODEL_SEED)
        model = models.get_model(name, weights=None)
    example = (seeded_input(input_shape(name), INPUT_SEED),)
    return warm_up_batchnorm(model, example, seed=MODEL_SEED), example
