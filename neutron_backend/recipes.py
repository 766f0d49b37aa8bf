"""ExecuTorch export recipes for Neutron: int8 PTQ and int8 QAT, for every target.

Importing this module registers the recipe provider with ExecuTorch's recipe registry (once, however often it is
imported or `register` is called), so the recipes work through ExecuTorch's own API:

    from executorch.export import ExportRecipe, export
    from neutron_backend.recipes import NeutronRecipeType

    recipe = ExportRecipe.get_recipe(NeutronRecipeType.INT8_PTQ, target="mcxn94x")
    session = export(model, calibration_inputs, export_recipe=recipe)   # a list of input tuples
    open("model.pte", "wb").write(session.get_pte_buffer())

ExecuTorch exports the model with the first input tuple and calibrates on all of them (PTQ); QAT runs the
`train_fn` it is given on the QAT-prepared model instead. The recipe quantizes with `NeutronQuantizer` and lowers
with `NeutronPartitioner`; `recipe.lowering_recipe.partitioners[0].report` holds the delegation report afterwards.
It is not imported by `import neutron_backend`: importing `executorch.export` takes seconds.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import executorch.kernels.quantized  # noqa: F401 - registers the out-variants of quantize/dequantize to_executorch needs
import torch
from executorch.export import (
    BackendRecipeProvider,
    ExportRecipe,
    LoweringRecipe,
    QuantizationRecipe,
    RecipeType,
    recipe_registry,
)
from torchao.quantization.pt2e import move_exported_model_to_eval

from neutron_backend.compile_spec import SPEC_KEYS, NeutronConfigError, generate_neutron_compile_spec
from neutron_backend.delegation_options import CustomDelegationOptions
from neutron_backend.partitioner import NeutronPartitioner
from neutron_backend.quantizer import NeutronQuantizer
from neutron_backend.targets import UnknownTargetError, get_target

BACKEND_NAME = "neutron_backend"
DEFAULT_TARGET = "imxrt700"


class NeutronRecipeType(RecipeType):
    """The Neutron recipes; the target is the `target` keyword of `ExportRecipe.get_recipe` (default imxrt700)."""

    # Static int8 post-training quantization, calibrated on the inputs given to executorch.export.export.
    INT8_PTQ = "neutron_int8_ptq"
    # Static int8 quantization-aware training: needs train_fn, which trains the QAT-prepared model.
    INT8_QAT = "neutron_int8_qat"

    @classmethod
    def get_backend_name(cls) -> str:
        return BACKEND_NAME


# Keywords every recipe takes besides the compile-spec keys (neutron_converter_flavor, extra_flags, ...).
_COMMON_KEYWORDS = ("target", "delegation_options")
_ONLY_FOR = {"calibration_inputs_fn": NeutronRecipeType.INT8_PTQ, "train_fn": NeutronRecipeType.INT8_QAT}


def _valid_keywords(recipe_type: NeutronRecipeType) -> list[str]:
    only = [name for name, kind in _ONLY_FOR.items() if kind is recipe_type]
    return [*_COMMON_KEYWORDS, *only, *SPEC_KEYS[1:]]


def _check_keywords(recipe_type: NeutronRecipeType, kwargs: dict[str, Any]) -> None:
    """Raises NeutronConfigError for a keyword `recipe_type` does not take, naming the valid ones."""
    valid = _valid_keywords(recipe_type)
    for name in kwargs:
        if name in valid:
            continue
        if name in _ONLY_FOR:
            raise NeutronConfigError(
                f"{name} is for the {_ONLY_FOR[name].name} recipe, not {recipe_type.name}; "
                f"{recipe_type.name} takes: {valid}"
            )
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise NeutronConfigError(
            f"unknown keyword {name!r} for Neutron recipe {recipe_type.name}; valid: {valid}{hint}"
        )


def _to_eval(model: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Gives dropout and batch norm of the captured model their inference behaviour, as PTQ calibration needs."""
    return move_exported_model_to_eval(model)


def _callable_or_none(name: str, value: object) -> Callable[..., Any] | None:
    if value is not None and not callable(value):
        raise NeutronConfigError(f"{name} must be a callable, got {type(value).__name__} {value!r}")
    return value  # type: ignore[return-value]


class NeutronRecipeProvider(BackendRecipeProvider):
    """Builds the Neutron export recipes for ExecuTorch's recipe registry."""

    @property
    def backend_name(self) -> str:
        return BACKEND_NAME

    def get_supported_recipes(self) -> Sequence[RecipeType]:
        return list(NeutronRecipeType)

    def create_recipe(self, recipe_type: RecipeType, **kwargs: Any) -> ExportRecipe | None:
        """Returns the recipe of `recipe_type` (None for a type that is not Neutron's).

        Keywords: `target` (a target name, default imxrt700), `delegation_options` (a CustomDelegationOptions),
        the keys of `generate_neutron_compile_spec` (neutron_converter_flavor, extra_flags,
        operators_not_to_delegate, intermediates_dir, ...), and `calibration_inputs_fn` (INT8_PTQ: a callable
        returning the calibration input tuples; default: the inputs given to export) or `train_fn` (INT8_QAT,
        required: trains the QAT-prepared torch.fx.GraphModule it is given). Raises NeutronConfigError naming
        any bad keyword or value and what would be valid.
        """
        if not isinstance(recipe_type, NeutronRecipeType):
            return None
        _check_keywords(recipe_type, kwargs)
        options = dict(kwargs)
        target = options.pop("target", DEFAULT_TARGET)
        try:
            target_name = get_target(target).name
        except UnknownTargetError as error:
            raise NeutronConfigError(str(error)) from error
        delegation_options = options.pop("delegation_options", None)
        if delegation_options is not None and not isinstance(delegation_options, CustomDelegationOptions):
            raise NeutronConfigError(
                f"delegation_options must be a CustomDelegationOptions, got {type(delegation_options).__name__}"
            )
        is_qat = recipe_type is NeutronRecipeType.INT8_QAT
        train_fn = _callable_or_none("train_fn", options.pop("train_fn", None))
        calibration_inputs_fn = _callable_or_none("calibration_inputs_fn", options.pop("calibration_inputs_fn", None))
        if is_qat and train_fn is None:
            raise NeutronConfigError(
                "the INT8_QAT recipe needs train_fn=<callable>: ExecuTorch calls it with the QAT-prepared "
                "torch.fx.GraphModule (fake quantizers inserted, in train mode) to fine-tune it before conversion"
            )
        spec = generate_neutron_compile_spec(target_name, **options)
        quantization = QuantizationRecipe(
            quantizers=[NeutronQuantizer(target_name, is_qat=is_qat)],
            is_qat=is_qat,
            train_fn=train_fn,
            calibration_inputs_fn=calibration_inputs_fn,
            pre_prepare_passes=None if is_qat else [_to_eval],
        )
        lowering = LoweringRecipe(partitioners=[NeutronPartitioner(spec, delegation_options)])
        return ExportRecipe(
            name=f"{recipe_type.value}_{target_name}", quantization_recipe=quantization, lowering_recipe=lowering
        )


def register() -> None:
    """Registers the Neutron recipe provider with ExecuTorch's recipe registry, unless it already is."""
    if BACKEND_NAME not in recipe_registry.list_backends():
        recipe_registry.register_backend_recipe_provider(NeutronRecipeProvider())


def neutron_recipe(
    target: str = DEFAULT_TARGET,
    *,
    qat: bool = False,
    train_fn: Callable[[torch.fx.GraphModule], None] | None = None,
    calibration_inputs_fn: Callable[[], Iterable[tuple[Any, ...]]] | None = None,
    **options: Any,
) -> ExportRecipe:
    """Returns the int8 PTQ recipe for `target` (with `qat`, the QAT recipe, which needs `train_fn`).

    `options` are those of `NeutronRecipeProvider.create_recipe` (delegation_options, the compile-spec keys).
    Same as `ExportRecipe.get_recipe(NeutronRecipeType.INT8_PTQ or INT8_QAT, target=target, ...)`.
    """
    recipe_type = NeutronRecipeType.INT8_QAT if qat else NeutronRecipeType.INT8_PTQ
    for name, value in (("train_fn", train_fn), ("calibration_inputs_fn", calibration_inputs_fn)):
        if value is not None:
            options[name] = value
    return ExportRecipe.get_recipe(recipe_type, target=target, **options)


register()
