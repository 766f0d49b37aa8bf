"""Model zoo for the demo, tests and benchmarks: `get_model(name)` returns a model and its example inputs."""

from __future__ import annotations

import difflib
from collections.abc import Callable

import torch
from torch import nn

from neutron_backend.models import cifarnet

ModelBuilder = Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]]

_REGISTRY: dict[str, ModelBuilder] = {
    "cifarnet": cifarnet.build,
}


def list_models() -> list[str]:
    """Returns the names `get_model` accepts, sorted."""
    return sorted(_REGISTRY)


def get_model(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Returns the model called `name` (case-insensitive), in eval mode, and its example inputs.

    Raises ValueError for an unknown name, listing the known ones and the closest match.
    """
    key = name.strip().lower()
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, list_models(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model {name!r}; known models: {list_models()}.{hint}")
    return _REGISTRY[key]()


_BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# Batch statistics of a single sample are degenerate (BatchNorm1d refuses them).
_WARM_UP_BATCH = 8


def warm_up_batchnorm(
    model: nn.Module, example_inputs: tuple[torch.Tensor, ...], steps: int = 8, seed: int = 0
) -> nn.Module:
    """Gives the batchnorm layers of an untrained model realistic running statistics.

    A fresh batchnorm in eval mode is an identity (mean 0, var 1), so activations of an untrained deep model
    shrink towards zero and quantize to nothing. This runs `steps` seeded random batches of 8 in train mode
    (float inputs N(0, 1) shaped like `example_inputs` past the batch dim, other inputs repeat their first
    row), with the running statistics reset and averaged over the steps. Returns `model`, in eval mode.
    """
    norms = [module for module in model.modules() if isinstance(module, _BATCHNORM_TYPES)]
    if not norms:
        return model.eval()
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        # momentum None: the running statistics are the plain average over all warm-up batches.
        norm.momentum = None
    generator = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            batch = tuple(
                torch.randn((_WARM_UP_BATCH, *x.shape[1:]), generator=generator)
                if x.is_floating_point()
                else x[:1].expand(_WARM_UP_BATCH, *x.shape[1:])
                for x in example_inputs
            )
            model(*batch)
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    return model.eval()


__all__ = ["get_model", "list_models", "warm_up_batchnorm"]
