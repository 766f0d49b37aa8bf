"""Graph rewrites run before quantization annotation (`NeutronQuantizer.transform_for_annotation`).

Each module in this package is one rewrite and declares:
- `ORDER: int` — when it runs relative to the others (lower first);
- `run(graph_module: torch.fx.GraphModule) -> int` — rewrites in place and returns how many sites it changed.

The rewrites turn what PyTorch exports into operators the NPU runs, with exact math (e.g. division by a
constant -> multiplication). They work on the pre-dispatch ATen graph of `torch.export.export(...).module()`,
before observers are inserted, so the quantizer annotates the rewritten graph.
"""

from __future__ import annotations

import functools
import importlib
import logging
import pkgutil
from types import ModuleType

from torch.fx import GraphModule

logger = logging.getLogger(__name__)


@functools.cache
def rewrites() -> tuple[ModuleType, ...]:
    """Every rewrite module, in ORDER (modules named with a leading underscore hold shared helpers, not rewrites)."""
    modules = [importlib.import_module(f"{__name__}.{info.name}") for info in pkgutil.iter_modules(__path__)
               if not info.name.startswith("_")]
    return tuple(sorted(modules, key=lambda module: (module.ORDER, module.__name__)))


def run_all(graph_module: GraphModule) -> dict[str, int]:
    """Runs every rewrite in order on `graph_module` (in place); returns the sites changed per rewrite."""
    changed: dict[str, int] = {}
    for module in rewrites():
        count = module.run(graph_module)
        if count:
            changed[module.__name__.rsplit(".", 1)[-1]] = count
    if changed:
        graph_module.graph.eliminate_dead_code()
        graph_module.recompile()
        logger.debug("rewrites before quantization: %s", changed)
    return changed
