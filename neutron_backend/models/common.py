"""Helpers shared by the zoo models: seeded weight initialisation and seeded example inputs."""

from __future__ import annotations

import torch
from torch import nn


def init_weights(model: nn.Module, seed: int) -> nn.Module:
    """Re-initialises every conv/linear of `model` (Kaiming-uniform weights for ReLU, small uniform biases)
    from a generator seeded with `seed`, leaving the global RNG untouched. Returns `model`."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Conv1d | nn.Linear):
                nn.init.kaiming_uniform_(module.weight, nonlinearity="relu", generator=generator)
                if module.bias is not None:
                    module.bias.uniform_(-0.05, 0.05, generator=generator)
    return model


def seeded_input(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """One N(0, 1) tensor of `shape` drawn from a generator seeded with `seed`."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


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
