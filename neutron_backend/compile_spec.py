"""The Neutron compile spec: one typed, validated dataclass, its builder, and its (de)serialisation by key.

ExecuTorch carries backend options as a list of `CompileSpec(key, value: bytes)`. We write one entry per
option, the value being UTF-8 JSON (real JSON booleans and lists), and read them back by key, so order never
matters and a round trip is exact.

Operators in `operators_not_to_delegate` are named, not matched by node name: `"aten::convolution"`,
`"aten.add.Tensor"`, `"aten.max_pool2d"`, `"add"` (namespace defaults to `aten`). Names are checked against
the operators registered in torch; an unknown one is an error suggesting the closest known names.

Edge lowering and our passes rename some operators (`max_pool2d` becomes `max_pool2d_with_indices`, `view`
becomes `view_copy`, `linear` becomes `addmm`/`mm`, `div` by a constant becomes `mul`, ...). A user who names
the ATen operator means the edge operator it becomes, so a name given without an overload also matches the
registered operators that declare it among their `aliases` (neutron_backend.ops), unless the node is known to
come from another spelling of that operator (its `torch_fn` origin: a `mul` written as `mul` is not a `div`). A
name given with an overload matches exactly that overload and no alias (overloads do not carry over through a
decomposition).
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neutron_backend.errors import NeutronConfigError
from neutron_backend.targets import NeutronTarget, UnknownTargetError, get_target

if TYPE_CHECKING:
    from executorch.exir.backend.compile_spec_schema import CompileSpec


_DEFAULT_NAMESPACE = "aten"
# Prefixes users copy from Python code or printed graphs; the operator name follows them.
_OPERATOR_PREFIXES = ("torch.ops.", "exir_ops.edge.")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATOR_FORMS = "'aten::convolution', 'aten::add.Tensor', 'aten.add.Tensor', 'aten.max_pool2d' or 'add'"


@dataclass(frozen=True)
class _OperatorRegistry:
    """The operators registered in torch: overloads per `namespace::name` ('default' for the unnamed one)."""

    overloads: Mapping[str, frozenset[str]]
    namespaces: frozenset[str]


@functools.cache
def _registry() -> _OperatorRegistry:
    """Reads torch's dispatcher (lazily: importing torch is slow); returns the registered operator names."""
    import torch

    overloads: dict[str, set[str]] = {}
    for full_name in torch._C._dispatch_get_all_op_names():
        base, _, overload = full_name.partition(".")
        overloads.setdefault(base, set()).add(overload or "default")
    return _OperatorRegistry(
        overloads={base: frozenset(names) for base, names in overloads.items()},
        namespaces=frozenset(base.partition("::")[0] for base in overloads),
    )


def _fresh_registry() -> _OperatorRegistry:
    """Re-reads and returns the registry: libraries imported since the last read may have added operators."""
    _registry.cache_clear()
    return _registry()


@dataclass(frozen=True)
class OperatorName:
    """An operator named by the user: `aten::add` (every overload) or `aten::add.Tensor` (one overload)."""

    namespace: str
    name: str
    overload: str | None = None

    def __str__(self) -> str:
        base = f"{self.namespace}::{self.name}"
        return base if self.overload is None else f"{base}.{self.overload}"

    def matches(self, op: object, origin: str | None = None) -> bool:
        """Returns whether `op` (an edge `EdgeOpOverload` or a torch `OpOverload`) is this operator.

        True when the namespaces and base names are equal and this name's overload is None or equal to the
        op's ('default' for the unnamed overload). An overload-less ATen name also matches the registered operator
        declaring it as an alias, unless `origin` (the torch function the node was written as, see `origin_of`)
        is another spelling of that operator. Anything without an operator schema (e.g. `operator.getitem`)
        never matches.
        """
        schema = getattr(op, "_schema", None)
        if schema is None:
            return False
        namespace, _, name = schema.name.partition("::")
        if namespace != self.namespace:
            return False
        if name == self.name:
            return self.overload is None or self.overload == (schema.overload_name or "default")
        if self.overload is not None or namespace != _DEFAULT_NAMESPACE:
            return False
        from neutron_backend import ops

        operator = ops.lookup(op)
        aliases = () if operator is None else operator.aliases
        if self.name not in aliases:
            return False
        return origin is None or origin == self.name or origin not in {*aliases, name}

    def would_match(self) -> list[str]:
        """The registered edge operators this name stands for (itself, or those declaring it as an alias)."""
        from neutron_backend import ops

        return [operator.name for operator in ops.operators()
                if any(self.matches(target) for target in operator.targets)]


def origin_of(node: Any) -> str | None:
    """The torch function a node was written as (`max_pool1d` for the max_pool2d_with_indices it became), from the
    `torch_fn` metadata export records; None when unknown."""
    torch_fn = getattr(node, "meta", {}).get("torch_fn")
    if not torch_fn or len(torch_fn) < 2 or not isinstance(torch_fn[1], str):
        return None
    return torch_fn[1].rsplit(".", 1)[-1]


def _split_operator_text(text: str, namespaces: frozenset[str]) -> tuple[str, str, str | None]:
    """Returns (namespace, name, overload) from an accepted spelling; raises NeutronConfigError otherwise."""
    stripped = text.strip()
    for prefix in _OPERATOR_PREFIXES:
        stripped = stripped.removeprefix(prefix)
    if "::" in stripped:
        namespace, _, rest = stripped.partition("::")
        parts = [namespace, *rest.split(".")]
    else:
        parts = stripped.split(".")
        # "aten.max_pool2d" is namespace.name, while "add.Tensor" is name.overload in the default namespace.
        if len(parts) == 1 or (len(parts) == 2 and parts[0] not in namespaces):
            parts = [_DEFAULT_NAMESPACE, *parts]
    if len(parts) not in (2, 3) or not all(_IDENTIFIER.fullmatch(part) for part in parts):
        raise NeutronConfigError(f"malformed operator name {text!r}; write it as {_OPERATOR_FORMS}")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def _closest_operators(wanted: str, known: Iterable[str]) -> list[str]:
    """Returns up to 3 known `namespace::name` strings closest to `wanted`, case-insensitive equals first."""
    known = list(known)
    same_but_case = [name for name in known if name.lower() == wanted.lower()]
    close = difflib.get_close_matches(wanted, known, n=3, cutoff=0.6)
    return list(dict.fromkeys([*same_but_case, *close]))[:3]


def _check_registered(operator: OperatorName, text: str) -> None:
    """Raises NeutronConfigError unless `operator` (and its overload, if given) is registered in torch."""
    base = f"{operator.namespace}::{operator.name}"
    overloads = _registry().overloads.get(base)
    if overloads is None:
        overloads = _fresh_registry().overloads.get(base)
    if overloads is None:
        close = _closest_operators(base, _registry().overloads)
        hint = f"; did you mean {', '.join(repr(name) for name in close)}?" if close else ""
        raise NeutronConfigError(f"unknown operator {text!r} ({base} is not registered in torch){hint}")
    if operator.overload is not None and operator.overload not in overloads:
        raise NeutronConfigError(
            f"operator {text!r} has no overload {operator.overload!r}; "
            f"overloads of {base}: {sorted(overloads)}"
        )


def parse_operator_name(text: str) -> OperatorName:
    """Returns the OperatorName written as `text`, checked against the operators registered in torch.

    Accepts 'aten::convolution', 'aten::add.Tensor', 'aten.add.Tensor', 'aten.max_pool2d', 'add' (namespace
    `aten`) and the same with a 'torch.ops.' or 'exir_ops.edge.' prefix. Names are case-sensitive. Raises
    NeutronConfigError for a malformed or unknown name, suggesting the closest known ones.
    """
    if not isinstance(text, str):
        raise NeutronConfigError(
            f"an operator name must be a string, got {type(text).__name__} {text!r}; "
            f"write it as {_OPERATOR_FORMS}"
        )
    namespace, name, overload = _split_operator_text(text, _registry().namespaces)
    operator = OperatorName(namespace, name, overload)
    _check_registered(operator, text)
    return operator


_SDK_FLAVOR = re.compile(r"SDK_\d\d_\d\d")
# The eIQ Neutron SDK is a package (compiler or converter inside, see neutron_backend.converter) instead of a
# per-release top-level module.
_EIQ_NEUTRON_SDK_FLAVOR = "eiq_neutron_sdk"
_EIQ_NEUTRON_SDK_MODULE = "eiq_neutron_sdk"
_FLAVOR_FORMS = f"'SDK_<yy>_<mm>' (e.g. 'SDK_25_06', 'SDK_25_09', 'SDK_25_12') or {_EIQ_NEUTRON_SDK_FLAVOR!r}"


def _check_flavor(flavor: object) -> None:
    """Raises NeutronConfigError unless `flavor` is None, an 'SDK_yy_mm' string or 'eiq_neutron_sdk'."""
    if flavor is None or flavor == _EIQ_NEUTRON_SDK_FLAVOR:
        return
    if isinstance(flavor, str) and _SDK_FLAVOR.fullmatch(flavor):
        return
    hint = ""
    if isinstance(flavor, str) and _SDK_FLAVOR.fullmatch(flavor.strip().upper()):
        hint = f"; did you mean {flavor.strip().upper()!r}?"
    raise NeutronConfigError(
        f"invalid neutron_converter_flavor {flavor!r}; valid flavors: {_FLAVOR_FORMS}{hint}"
    )


def _converter_module(flavor: str | None) -> str | None:
    """Returns the converter module of a valid flavor, or None for no flavor."""
    if flavor is None:
        return None
    if flavor == _EIQ_NEUTRON_SDK_FLAVOR:
        return _EIQ_NEUTRON_SDK_MODULE
    return f"neutron_converter_{flavor}"


def _check_bool(field: str, value: object) -> None:
    """Raises NeutronConfigError unless `value` is a real bool (the string 'True' is not)."""
    if not isinstance(value, bool):
        raise NeutronConfigError(f"{field} must be True or False, got {type(value).__name__} {value!r}")


@dataclass(frozen=True)
class NeutronCompileOptions:
    """Every Neutron compile option, typed and validated; what `parse_compile_spec` returns.

    Build it with `generate_neutron_compile_spec` / `NeutronCompileSpecBuilder`, which accept friendlier
    inputs: a target name, a flag string, operator names as strings.
    """

    target: NeutronTarget
    # None: no flavor named; the converter layer looks for an installed converter and otherwise emulates.
    neutron_converter_flavor: str | None = None
    # Passed to the converter as they are.
    extra_flags: tuple[str, ...] = ()
    operators_not_to_delegate: tuple[OperatorName, ...] = ()
    # Where each partition's Neutron IR (.tflite) is written; None writes nothing.
    intermediates_dir: Path | None = None
    # True: layout transposes at the delegate boundary run inside the Neutron IR; False: on the CPU.
    use_neutron_for_format_conversion: bool = True
    # True: the converter prefetches weights from flash to SRAM (for models that do not fit in SRAM).
    fetch_constants_to_sram: bool = False
    # True: the converter dumps its kernel selection code.
    dump_kernel_selection_code: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.target, NeutronTarget):
            raise NeutronConfigError(
                f"target must be a NeutronTarget (from get_target), "
                f"got {type(self.target).__name__} {self.target!r}"
            )
        _check_flavor(self.neutron_converter_flavor)
        if not isinstance(self.extra_flags, tuple) or not all(isinstance(f, str) for f in self.extra_flags):
            raise NeutronConfigError(f"extra_flags must be a tuple of str, got {self.extra_flags!r}")
        if not isinstance(self.operators_not_to_delegate, tuple) or not all(
            isinstance(op, OperatorName) for op in self.operators_not_to_delegate
        ):
            raise NeutronConfigError(
                f"operators_not_to_delegate must be a tuple of OperatorName, "
                f"got {self.operators_not_to_delegate!r}"
            )
        if self.intermediates_dir is not None and not isinstance(self.intermediates_dir, Path):
            raise NeutronConfigError(
                f"intermediates_dir must be a pathlib.Path or None, "
                f"got {type(self.intermediates_dir).__name__} {self.intermediates_dir!r}"
            )
        for field in (
            "use_neutron_for_format_conversion",
            "fetch_constants_to_sram",
            "dump_kernel_selection_code",
        ):
            _check_bool(field, getattr(self, field))

    @property
    def config(self) -> str:
        """Returns the platform name (`target.name`), the `config` of the compile-spec API."""
        return self.target.name

    @property
    def converter_module(self) -> str | None:
        """Returns the Python module of the converter for the flavor, or None when no flavor is named.

        'SDK_25_06' -> 'neutron_converter_SDK_25_06';
        'eiq_neutron_sdk' -> 'eiq_neutron_sdk' (the package; converter.find_converter picks its interface).
        """
        return _converter_module(self.neutron_converter_flavor)


def _extra_flags(value: object) -> tuple[str, ...]:
    """Returns the flags in `value`: None, one string (split like a shell would) or a list/tuple of str."""
    if value is None:
        return ()
    if isinstance(value, str):
        try:
            return tuple(shlex.split(value))
        except ValueError as error:
            raise NeutronConfigError(f"extra_flags {value!r} cannot be split into flags: {error}") from error
    if isinstance(value, list | tuple) and all(isinstance(flag, str) for flag in value):
        return tuple(value)
    raise NeutronConfigError(
        f"extra_flags must be a str (e.g. '--flag a') or a list of str (e.g. ['--flag', 'a']), got "
        f"{type(value).__name__} {value!r}"
    )


def _operator_names(value: object) -> tuple[OperatorName, ...]:
    """Returns the operators in `value`: None or a list/tuple of names (strings or OperatorName)."""
    if value is None:
        return ()
    if isinstance(value, str):
        raise NeutronConfigError(
            f"operators_not_to_delegate must be a list of operator names, got the single string {value!r}; "
            f"write [{value!r}]"
        )
    if not isinstance(value, list | tuple):
        raise NeutronConfigError(
            f"operators_not_to_delegate must be a list of operator names ({_OPERATOR_FORMS}), got "
            f"{type(value).__name__} {value!r}"
        )
    return tuple(name if isinstance(name, OperatorName) else parse_operator_name(name) for name in value)


def _intermediates_dir(value: object) -> Path | None:
    """Returns `value` (None, a str or an os.PathLike) as a Path or None."""
    if value is None:
        return None
    if isinstance(value, str | os.PathLike):
        return Path(value)
    raise NeutronConfigError(
        f"intermediates_dir must be a path (str or os.PathLike) or None, got {type(value).__name__} {value!r}"
    )


def _target(config: Any, flavor: str | None) -> NeutronTarget:
    """Returns the target named `config`; the converter of `flavor`, when installed, supplies its numbers."""
    try:
        return get_target(config, _converter_module(flavor))
    except UnknownTargetError as error:
        raise NeutronConfigError(str(error)) from error


def _make_options(
    config: Any,
    neutron_converter_flavor: Any = None,
    extra_flags: Any = None,
    operators_not_to_delegate: Any = None,
    intermediates_dir: Any = None,
    use_neutron_for_format_conversion: Any = True,
    fetch_constants_to_sram: Any = False,
    dump_kernel_selection_code: Any = False,
) -> NeutronCompileOptions:
    """Returns the options for unchecked user-level values; raises NeutronConfigError naming any bad one."""
    _check_flavor(neutron_converter_flavor)
    return NeutronCompileOptions(
        target=_target(config, neutron_converter_flavor),
        neutron_converter_flavor=neutron_converter_flavor,
        extra_flags=_extra_flags(extra_flags),
        operators_not_to_delegate=_operator_names(operators_not_to_delegate),
        intermediates_dir=_intermediates_dir(intermediates_dir),
        use_neutron_for_format_conversion=use_neutron_for_format_conversion,
        fetch_constants_to_sram=fetch_constants_to_sram,
        dump_kernel_selection_code=dump_kernel_selection_code,
    )


TARGET_KEY = "target"
# Keys beyond the four named in the user's API, accepted by generate_neutron_compile_spec as keywords.
_MORE_KEYS = (
    "intermediates_dir",
    "use_neutron_for_format_conversion",
    "fetch_constants_to_sram",
    "dump_kernel_selection_code",
)
SPEC_KEYS = (TARGET_KEY, "neutron_converter_flavor", "extra_flags", "operators_not_to_delegate", *_MORE_KEYS)


def _json_values(options: NeutronCompileOptions) -> dict[str, Any]:
    """Returns each spec key's value as a JSON-ready object."""
    return {
        TARGET_KEY: options.target.name,
        "neutron_converter_flavor": options.neutron_converter_flavor,
        "extra_flags": list(options.extra_flags),
        "operators_not_to_delegate": [str(op) for op in options.operators_not_to_delegate],
        "intermediates_dir": None if options.intermediates_dir is None else str(options.intermediates_dir),
        "use_neutron_for_format_conversion": options.use_neutron_for_format_conversion,
        "fetch_constants_to_sram": options.fetch_constants_to_sram,
        "dump_kernel_selection_code": options.dump_kernel_selection_code,
    }


def _to_compile_specs(options: NeutronCompileOptions) -> list[CompileSpec]:
    """Returns one CompileSpec per key, its value UTF-8 JSON."""
    # Imported here: executorch.exir takes seconds to import, which `neutron --help` should not pay.
    from executorch.exir.backend.compile_spec_schema import CompileSpec

    return [
        CompileSpec(key, json.dumps(value).encode("utf-8")) for key, value in _json_values(options).items()
    ]


def _decode(key: str, raw: object) -> object:
    """Returns the JSON value of one spec entry; raises NeutronConfigError if it is not UTF-8 JSON bytes."""
    if not isinstance(raw, bytes):
        raise NeutronConfigError(
            f"compile spec {key!r} must hold bytes (UTF-8 JSON), got {type(raw).__name__} {raw!r}"
        )
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise NeutronConfigError(
            f"compile spec {key!r} holds {raw!r}, which is not UTF-8 JSON: {error}"
        ) from error


def parse_compile_spec(specs: Sequence[CompileSpec]) -> NeutronCompileOptions:
    """Returns the options stored in `specs`, read by key in any order.

    Raises NeutronConfigError for an unknown or repeated key, an undecodable or invalid value, or a missing
    "target".
    Keys other than "target" may be absent and then take their defaults.
    """
    values: dict[str, object] = {}
    for spec in specs:
        if spec.key not in SPEC_KEYS:
            close = difflib.get_close_matches(spec.key, SPEC_KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise NeutronConfigError(
                f"unknown compile spec key {spec.key!r}; valid keys: {list(SPEC_KEYS)}{hint}"
            )
        if spec.key in values:
            raise NeutronConfigError(f"compile spec key {spec.key!r} appears more than once")
        values[spec.key] = _decode(spec.key, spec.value)
    if TARGET_KEY not in values:
        raise NeutronConfigError(
            f"compile spec has no {TARGET_KEY!r} key (got {sorted(values)}); build it with "
            f"generate_neutron_compile_spec(config, ...) naming a target, e.g. 'imxrt700'"
        )
    return _make_options(values.pop(TARGET_KEY), **values)


class NeutronCompileSpecBuilder:
    """Builds a compile spec: `NeutronCompileSpecBuilder().neutron_compile_spec("imxrt700").build()`."""

    def __init__(self) -> None:
        self._options: NeutronCompileOptions | None = None

    def neutron_compile_spec(
        self,
        config: str,
        neutron_converter_flavor: str | None = None,
        extra_flags: str | Sequence[str] | None = None,
        operators_not_to_delegate: Sequence[str | OperatorName] | None = None,
        intermediates_dir: str | os.PathLike[str] | None = None,
        use_neutron_for_format_conversion: bool = True,
        fetch_constants_to_sram: bool = False,
        dump_kernel_selection_code: bool = False,
    ) -> NeutronCompileSpecBuilder:
        """Sets (replacing any earlier call) and validates every option; returns self for chaining.

        `config` is the platform, e.g. "imxrt700"; `neutron_converter_flavor` the MCUXpresso SDK version of
        the converter, e.g. "SDK_25_06" (module `neutron_converter_SDK_25_06`) or "eiq_neutron_sdk";
        `extra_flags` reach the converter (one string is split like a shell would);
        `operators_not_to_delegate` names operators to keep on the CPU. Raises NeutronConfigError naming any
        bad value and the valid choices.
        """
        self._options = _make_options(
            config,
            neutron_converter_flavor,
            extra_flags,
            operators_not_to_delegate,
            intermediates_dir,
            use_neutron_for_format_conversion,
            fetch_constants_to_sram,
            dump_kernel_selection_code,
        )
        return self

    def build(self) -> list[CompileSpec]:
        """Returns the compile spec list, one entry per key.

        Raises NeutronConfigError if neutron_compile_spec() was not called first.
        """
        if self._options is None:
            raise NeutronConfigError(
                "call neutron_compile_spec(config, ...) before build(), e.g. config='imxrt700'"
            )
        return _to_compile_specs(self._options)


def generate_neutron_compile_spec(
    config: str,
    neutron_converter_flavor: str | None = None,
    extra_flags: str | Sequence[str] | None = None,
    operators_not_to_delegate: Sequence[str | OperatorName] | None = None,
    **more: Any,
) -> list[CompileSpec]:
    """Returns the compile spec list for these options (as `NeutronCompileSpecBuilder.neutron_compile_spec`).

    `more` takes the further keys: intermediates_dir, use_neutron_for_format_conversion,
    fetch_constants_to_sram, dump_kernel_selection_code. Raises NeutronConfigError for an unknown keyword or a
    bad value.
    """
    for key in more:
        if key not in _MORE_KEYS:
            close = difflib.get_close_matches(key, _MORE_KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise NeutronConfigError(
                f"unknown option {key!r}; valid options: {['config', *SPEC_KEYS[1:]]}{hint}"
            )
    return (
        NeutronCompileSpecBuilder()
        .neutron_compile_spec(
            config, neutron_converter_flavor, extra_flags, operators_not_to_delegate, **more
        )
        .build()
    )
