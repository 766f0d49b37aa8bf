"""A pure-Python second oracle: run a lowered program's graph, Neutron delegates included, without
ExecuTorch's C++ runtime.

Ordinary nodes run with their own (edge or ATen) op implementations; each ``executorch_call_delegate`` node
whose backend is ``NeutronBackend`` runs its payload through
:class:`~neutron_backend.runtime.execute.PreparedPayload` with the engine ``kernels`` names. The shim and this
emulator share the layout code but not necessarily the engine: pick ``kernels="reference"`` here against the
shim's default exact engine (or the other way round) to make them two independent oracles.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from neutron_backend.payload import DeployablePayload, read_payload
from neutron_backend.runtime.execute import DEFAULT_KERNELS, PreparedPayload

BACKEND_ID = "NeutronBackend"

# Prepared payloads per lowered module and engine, kept across emulate() calls (a dataset is many calls).
_PREPARED: weakref.WeakKeyDictionary[Any, dict[str, PreparedPayload]] = weakref.WeakKeyDictionary()


def _exported_program(program: Any) -> torch.export.ExportedProgram:
    """Returns the ExportedProgram of an EdgeProgramManager or ExecutorchProgramManager, or ``program``."""
    if isinstance(program, torch.export.ExportedProgram):
        return program
    if hasattr(program, "exported_program"):
        return program.exported_program()
    raise TypeError(
        f"expected an EdgeProgramManager, ExecutorchProgramManager or ExportedProgram, got {type(program).__name__}"
    )


def _prepare(lowered: Any, kernels: str) -> PreparedPayload:
    """Returns the prepared emulation payload of a lowered Neutron module; ValueError if it cannot run."""
    if lowered.backend_id != BACKEND_ID:
        raise NotImplementedError(f"emulate() runs {BACKEND_ID} delegates only, found a {lowered.backend_id} one")
    payload = read_payload(bytes(lowered.processed_bytes))
    if isinstance(payload, DeployablePayload):
        raise ValueError(
            "this delegate holds a deployable Neutron payload (NXP microcode) that only runs on "
            "Neutron hardware; recompile without a neutron_converter_flavor to emulate it"
        )
    return PreparedPayload(payload, kernels)


class _Emulator(torch.fx.Interpreter):
    """Runs a lowered graph module, emulating Neutron delegate calls."""

    def __init__(self, graph_module: torch.fx.GraphModule, kernels: str,
                 on_delegate: Callable[[list[np.ndarray]], None] | None) -> None:
        super().__init__(graph_module)
        self._kernels = kernels
        self._on_delegate = on_delegate
        from executorch.exir.delegate import executorch_call_delegate

        self._call_delegate = executorch_call_delegate

    def call_function(self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Returns the node's value: the emulated delegate outputs (a tuple) or the op's own result."""
        if target is not self._call_delegate:
            return super().call_function(target, args, kwargs)
        lowered, *operands = args
        engines = _PREPARED.setdefault(lowered, {})
        prepared = engines.get(self._kernels)
        if prepared is None:
            prepared = engines[self._kernels] = _prepare(lowered, self._kernels)
        arrays = [operand.detach().contiguous().numpy() for operand in operands]
        if self._on_delegate is not None:
            self._on_delegate([a.copy() for a in arrays])
        return tuple(torch.from_numpy(np.ascontiguousarray(out)) for out in prepared.run(arrays))


def emulate(program: Any, *inputs: torch.Tensor, kernels: str = DEFAULT_KERNELS,
            on_delegate: Callable[[list[np.ndarray]], None] | None = None) -> tuple[torch.Tensor, ...]:
    """Runs a lowered program (an EdgeProgramManager after ``to_edge_transform_and_lower``, the
    ExecutorchProgramManager from ``to_executorch()``, or their ExportedProgram) on ``inputs``, the Neutron
    delegates with the ``kernels`` engine (``"exact"``: ours, ``"reference"``: LiteRT's reference kernels).
    ``on_delegate``, when given, receives each delegate call's input arrays before it runs.

    Returns the user outputs. Raises ValueError when the inputs do not match the program or a delegate holds a
    deployable payload, NotImplementedError for another backend's delegate.
    """
    from torch.export.graph_signature import InputKind, OutputKind

    ep = _exported_program(program)
    signature = ep.graph_signature
    user_inputs = iter(inputs)
    expected = sum(spec.kind == InputKind.USER_INPUT for spec in signature.input_specs)
    if len(inputs) != expected:
        raise ValueError(f"the program expects {expected} user inputs, got {len(inputs)}")
    arguments: list[Any] = []
    for spec in signature.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            arguments.append(next(user_inputs))
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER) and spec.target in ep.state_dict:
            arguments.append(ep.state_dict[spec.target])
        else:
            arguments.append(ep.constants[spec.target])
    with torch.no_grad():
        outputs = _Emulator(ep.graph_module, kernels, on_delegate).run(*arguments, enable_io_processing=False)
    return tuple(
        value
        for value, spec in zip(outputs, signature.output_specs, strict=True)
        if spec.kind == OutputKind.USER_OUTPUT
    )
