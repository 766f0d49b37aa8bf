"""Compile spec: serialisation by key, validation messages, operator names and their matching of edge ops."""

from __future__ import annotations

import json
import operator
import random
from pathlib import Path

import pytest
import torch
from executorch.exir import to_edge
from executorch.exir.backend.compile_spec_schema import CompileSpec
from executorch.exir.dialects._ops import ops as exir_ops

from neutron_backend.compile_spec import (
    SPEC_KEYS,
    NeutronCompileOptions,
    NeutronCompileSpecBuilder,
    NeutronConfigError,
    OperatorName,
    generate_neutron_compile_spec,
    parse_compile_spec,
    parse_operator_name,
)
from neutron_backend.targets import get_target

FULL = dict(
    config="imxrt700",
    neutron_converter_flavor="SDK_25_06",
    extra_flags="--opt 'a b' -v",
    operators_not_to_delegate=["aten::max_pool2d", "aten.add.Tensor", "convolution"],
    intermediates_dir="/tmp/neutron-intermediates",
    use_neutron_for_format_conversion=False,
    fetch_constants_to_sram=True,
    dump_kernel_selection_code=True,
)


def _by_key(specs: list[CompileSpec]) -> dict[str, bytes]:
    return {spec.key: spec.value for spec in specs}


def _replace(specs: list[CompileSpec], key: str, value: bytes) -> list[CompileSpec]:
    return [CompileSpec(spec.key, value if spec.key == key else spec.value) for spec in specs]


# --- round trip ---


def test_round_trip_is_exact():
    options = parse_compile_spec(generate_neutron_compile_spec(**FULL))
    assert options == NeutronCompileOptions(
        target=get_target("imxrt700"),
        neutron_converter_flavor="SDK_25_06",
        extra_flags=("--opt", "a b", "-v"),
        operators_not_to_delegate=(
            OperatorName("aten", "max_pool2d"),
            OperatorName("aten", "add", "Tensor"),
            OperatorName("aten", "convolution"),
        ),
        intermediates_dir=Path("/tmp/neutron-intermediates"),
        use_neutron_for_format_conversion=False,
        fetch_constants_to_sram=True,
        dump_kernel_selection_code=True,
    )
    assert parse_compile_spec(NeutronCompileSpecBuilder().neutron_compile_spec(**FULL).build()) == options


@pytest.mark.parametrize("seed", range(5))
def test_round_trip_ignores_order(seed):
    specs = generate_neutron_compile_spec(**FULL)
    shuffled = list(specs)
    random.Random(seed).shuffle(shuffled)
    assert parse_compile_spec(shuffled) == parse_compile_spec(specs)
    assert parse_compile_spec(list(reversed(specs))) == parse_compile_spec(specs)


def test_defaults_round_trip():
    options = parse_compile_spec(generate_neutron_compile_spec("imxrt700"))
    assert options == NeutronCompileOptions(target=get_target("imxrt700"))
    assert options.neutron_converter_flavor is None
    assert options.converter_module is None
    assert options.extra_flags == ()
    assert options.operators_not_to_delegate == ()
    assert options.intermediates_dir is None
    assert options.use_neutron_for_format_conversion is True
    assert options.fetch_constants_to_sram is False
    assert options.dump_kernel_selection_code is False


def test_only_target_key_is_required():
    options = parse_compile_spec([CompileSpec("target", b'"mcxn94x"')])
    assert options == NeutronCompileOptions(target=get_target("mcxn94x"))
    assert options.config == "mcxn94x"


def test_every_key_is_written_once():
    specs = generate_neutron_compile_spec("imx95")
    assert [spec.key for spec in specs] == list(SPEC_KEYS)


def test_target_name_is_canonicalised():
    options = parse_compile_spec(generate_neutron_compile_spec("i.MX-RT700"))
    assert options.config == "imxrt700"
    assert _by_key(generate_neutron_compile_spec("i.MX-RT700"))["target"] == b'"imxrt700"'


def test_values_are_json_with_real_booleans():
    raw = _by_key(generate_neutron_compile_spec(**FULL))
    assert raw["use_neutron_for_format_conversion"] == b"false"
    assert raw["fetch_constants_to_sram"] == b"true"
    assert raw["dump_kernel_selection_code"] == b"true"
    assert json.loads(raw["extra_flags"]) == ["--opt", "a b", "-v"]
    assert json.loads(raw["operators_not_to_delegate"]) == [
        "aten::max_pool2d",
        "aten::add.Tensor",
        "aten::convolution",
    ]
    assert json.loads(raw["intermediates_dir"]) == "/tmp/neutron-intermediates"
    defaults = _by_key(generate_neutron_compile_spec("imxrt700"))
    assert defaults["use_neutron_for_format_conversion"] == b"true"
    assert defaults["fetch_constants_to_sram"] == b"false"
    assert defaults["neutron_converter_flavor"] == b"null"
    assert defaults["intermediates_dir"] == b"null"
    assert defaults["extra_flags"] == b"[]"


# --- builder and generate function ---


def test_builder_equals_generate_function():
    assert NeutronCompileSpecBuilder().neutron_compile_spec(**FULL).build() == generate_neutron_compile_spec(
        **FULL
    )
    assert NeutronCompileSpecBuilder().neutron_compile_spec("imx95").build() == generate_neutron_compile_spec(
        "imx95"
    )


def test_builder_last_call_wins():
    builder = NeutronCompileSpecBuilder().neutron_compile_spec(**FULL).neutron_compile_spec("imx95")
    assert builder.build() == generate_neutron_compile_spec("imx95")


def test_build_before_neutron_compile_spec_is_an_error():
    with pytest.raises(NeutronConfigError, match=r"neutron_compile_spec\(config"):
        NeutronCompileSpecBuilder().build()


def test_unknown_keyword_lists_valid_options():
    with pytest.raises(NeutronConfigError) as error:
        generate_neutron_compile_spec("imxrt700", fetch_constant_to_sram=True)
    message = str(error.value)
    assert "'fetch_constant_to_sram'" in message
    assert "did you mean 'fetch_constants_to_sram'" in message
    for key in ("intermediates_dir", "use_neutron_for_format_conversion", "dump_kernel_selection_code"):
        assert key in message


# --- validation ---


def test_unknown_target_names_value_choices_and_closest():
    with pytest.raises(NeutronConfigError) as error:
        generate_neutron_compile_spec("imx700")
    message = str(error.value)
    assert "'imx700'" in message
    assert "['imxrt700', 'mcxn94x', 'imx95']" in message
    assert "Did you mean 'imxrt700'" in message


def test_non_string_target_is_an_error():
    with pytest.raises(NeutronConfigError, match="valid targets"):
        generate_neutron_compile_spec(700)


@pytest.mark.parametrize(
    ("flavor", "module"),
    [
        ("SDK_25_06", "neutron_converter_SDK_25_06"),
        ("SDK_25_12", "neutron_converter_SDK_25_12"),
        ("eiq_neutron_sdk", "eiq_neutron_sdk"),
        (None, None),
    ],
)
def test_flavor_gives_converter_module(flavor, module):
    options = parse_compile_spec(generate_neutron_compile_spec("imxrt700", neutron_converter_flavor=flavor))
    assert options.neutron_converter_flavor == flavor
    assert options.converter_module == module


@pytest.mark.parametrize(
    "flavor", ["25_06", "SDK_2506", "SDK_25_6", "neutron_converter_SDK_25_06", "", "SDK-25-06", 2506]
)
def test_malformed_flavor_names_value_and_valid_form(flavor):
    with pytest.raises(NeutronConfigError) as error:
        generate_neutron_compile_spec("imxrt700", neutron_converter_flavor=flavor)
    message = str(error.value)
    assert repr(flavor) in message
    assert "'SDK_25_06'" in message
    assert "'eiq_neutron_sdk'" in message


def test_lowercase_flavor_suggests_uppercase():
    with pytest.raises(NeutronConfigError, match="did you mean 'SDK_25_09'"):
        generate_neutron_compile_spec("imxrt700", neutron_converter_flavor="sdk_25_09")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("--a b", ("--a", "b")),
        ("--name 'two words'", ("--name", "two words")),
        (["--a", "b c"], ("--a", "b c")),
        (("-x",), ("-x",)),
        ("", ()),
        (None, ()),
    ],
)
def test_extra_flags_accepts_string_or_list(flags, expected):
    options = parse_compile_spec(generate_neutron_compile_spec("imxrt700", extra_flags=flags))
    assert options.extra_flags == expected


@pytest.mark.parametrize("flags", [3, ["--a", 1], {"--a": "b"}, [None]])
def test_extra_flags_of_wrong_type(flags):
    with pytest.raises(NeutronConfigError) as error:
        generate_neutron_compile_spec("imxrt700", extra_flags=flags)
    message = str(error.value)
    assert repr(flags) in message
    assert "a str" in message and "a list of str" in message


def test_extra_flags_with_unbalanced_quote():
    with pytest.raises(NeutronConfigError, match='"--name \'oops"'):
        generate_neutron_compile_spec("imxrt700", extra_flags="--name 'oops")


@pytest.mark.parametrize(
    "field", ["use_neutron_for_format_conversion", "fetch_constants_to_sram", "dump_kernel_selection_code"]
)
@pytest.mark.parametrize("value", ["True", "false", 1, None])
def test_booleans_must_be_bool(field, value):
    with pytest.raises(NeutronConfigError) as error:
        generate_neutron_compile_spec("imxrt700", **{field: value})
    message = str(error.value)
    assert field in message
    assert repr(value) in message
    assert "True or False" in message


def test_operators_not_to_delegate_single_string_is_an_error():
    with pytest.raises(NeutronConfigError) as error:
        generate_neutron_compile_spec("imxrt700", operators_not_to_delegate="aten::add")
    assert "'aten::add'" in str(error.value)
    assert "['aten::add']" in str(error.value)


def test_operators_not_to_delegate_of_wrong_type():
    with pytest.raises(NeutronConfigError, match="got int 5"):
        generate_neutron_compile_spec("imxrt700", operators_not_to_delegate=5)


def test_operators_not_to_delegate_accepts_operator_names():
    options = parse_compile_spec(
        generate_neutron_compile_spec("imxrt700", operators_not_to_delegate=[OperatorName("aten", "mm")])
    )
    assert options.operators_not_to_delegate == (OperatorName("aten", "mm"),)


def test_unknown_operator_in_spec_suggests_closest():
    with pytest.raises(NeutronConfigError) as error:
        generate_neutron_compile_spec("imxrt700", operators_not_to_delegate=["aten::convolutoin"])
    assert "'aten::convolutoin'" in str(error.value)
    assert "'aten::convolution'" in str(error.value)


def test_intermediates_dir_accepts_paths():
    options = parse_compile_spec(generate_neutron_compile_spec("imxrt700", intermediates_dir=Path("out/ir")))
    assert options.intermediates_dir == Path("out/ir")


def test_intermediates_dir_of_wrong_type():
    with pytest.raises(NeutronConfigError, match="intermediates_dir.*got int 3"):
        generate_neutron_compile_spec("imxrt700", intermediates_dir=3)


def test_options_validate_direct_construction():
    with pytest.raises(NeutronConfigError, match="got str 'imxrt700'"):
        NeutronCompileOptions(target="imxrt700")
    with pytest.raises(NeutronConfigError, match="extra_flags must be a tuple"):
        NeutronCompileOptions(target=get_target("imxrt700"), extra_flags=["-v"])
    with pytest.raises(NeutronConfigError, match="tuple of OperatorName"):
        NeutronCompileOptions(target=get_target("imxrt700"), operators_not_to_delegate=("aten::add",))
    with pytest.raises(NeutronConfigError, match="pathlib.Path"):
        NeutronCompileOptions(target=get_target("imxrt700"), intermediates_dir="/tmp")
    with pytest.raises(NeutronConfigError, match="fetch_constants_to_sram.*'yes'"):
        NeutronCompileOptions(target=get_target("imxrt700"), fetch_constants_to_sram="yes")
    with pytest.raises(NeutronConfigError, match="'SDK_25_06'"):
        NeutronCompileOptions(target=get_target("imxrt700"), neutron_converter_flavor="25_06")


# --- parse_compile_spec errors ---


def test_parse_rejects_unknown_key():
    specs = [*generate_neutron_compile_spec("imxrt700"), CompileSpec("output_format", b'"tflite"')]
    with pytest.raises(NeutronConfigError) as error:
        parse_compile_spec(specs)
    assert "'output_format'" in str(error.value)
    assert "'target'" in str(error.value) and "'extra_flags'" in str(error.value)


def test_parse_suggests_close_key():
    with pytest.raises(NeutronConfigError, match="did you mean 'extra_flags'"):
        parse_compile_spec([CompileSpec("target", b'"imxrt700"'), CompileSpec("extra_flag", b"[]")])


def test_parse_rejects_duplicate_key():
    specs = [*generate_neutron_compile_spec("imxrt700"), CompileSpec("fetch_constants_to_sram", b"true")]
    with pytest.raises(NeutronConfigError, match="'fetch_constants_to_sram' appears more than once"):
        parse_compile_spec(specs)


def test_parse_requires_target():
    specs = [spec for spec in generate_neutron_compile_spec("imxrt700") if spec.key != "target"]
    with pytest.raises(NeutronConfigError, match="no 'target' key"):
        parse_compile_spec(specs)


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"True", b"imxrt700", b""])
def test_parse_rejects_undecodable_values(raw):
    specs = _replace(generate_neutron_compile_spec("imxrt700"), "target", raw)
    with pytest.raises(NeutronConfigError) as error:
        parse_compile_spec(specs)
    assert "'target'" in str(error.value)
    assert repr(raw) in str(error.value)


def test_parse_rejects_string_booleans():
    specs = _replace(generate_neutron_compile_spec("imxrt700"), "fetch_constants_to_sram", b'"True"')
    with pytest.raises(
        NeutronConfigError, match="fetch_constants_to_sram must be True or False, got str 'True'"
    ):
        parse_compile_spec(specs)


def test_parse_rejects_non_bytes_value():
    with pytest.raises(NeutronConfigError, match="must hold bytes"):
        parse_compile_spec([CompileSpec("target", "imxrt700")])


def test_parse_validates_values():
    specs = _replace(generate_neutron_compile_spec("imxrt700"), "operators_not_to_delegate", b'["aten::ad"]')
    with pytest.raises(NeutronConfigError, match="'aten::ad'"):
        parse_compile_spec(specs)


# --- operator names ---


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("aten::convolution", OperatorName("aten", "convolution")),
        ("aten.add.Tensor", OperatorName("aten", "add", "Tensor")),
        ("aten.max_pool2d", OperatorName("aten", "max_pool2d")),
        ("aten::add.Tensor", OperatorName("aten", "add", "Tensor")),
        ("add", OperatorName("aten", "add")),
        ("add.Tensor", OperatorName("aten", "add", "Tensor")),
        ("aten::addmm.default", OperatorName("aten", "addmm", "default")),
        ("torch.ops.aten.add.Scalar", OperatorName("aten", "add", "Scalar")),
        ("exir_ops.edge.aten.convolution.default", OperatorName("aten", "convolution", "default")),
        ("  aten::mm  ", OperatorName("aten", "mm")),
    ],
)
def test_parse_operator_name_forms(text, expected):
    assert parse_operator_name(text) == expected


@pytest.mark.parametrize(
    ("operator_name", "text"),
    [
        (OperatorName("aten", "add"), "aten::add"),
        (OperatorName("aten", "add", "Tensor"), "aten::add.Tensor"),
        (
            OperatorName("quantized_decomposed", "quantize_per_tensor", "default"),
            "quantized_decomposed::quantize_per_tensor.default",
        ),
    ],
)
def test_operator_name_str(operator_name, text):
    assert str(operator_name) == text


def test_operator_names_are_case_sensitive():
    with pytest.raises(NeutronConfigError) as error:
        parse_operator_name("aten::Convolution")
    assert "'aten::Convolution'" in str(error.value)
    assert "did you mean 'aten::convolution'" in str(error.value)


@pytest.mark.parametrize(
    ("text", "suggestion"),
    [
        ("aten::convolutoin", "aten::convolution"),
        ("aten.max_pool2", "aten::max_pool2d"),
        ("sofmax", "aten::softmax"),
    ],
)
def test_unknown_operator_suggests_closest(text, suggestion):
    with pytest.raises(NeutronConfigError) as error:
        parse_operator_name(text)
    assert repr(text) in str(error.value)
    assert repr(suggestion) in str(error.value)


def test_unknown_overload_lists_overloads():
    with pytest.raises(NeutronConfigError) as error:
        parse_operator_name("aten.add.Tensorr")
    message = str(error.value)
    assert "'Tensorr'" in message
    assert "'Tensor'" in message and "'Scalar'" in message


@pytest.mark.parametrize(
    "text", ["", "aten::", "::add", "a..b", "aten::add.Tensor.out", "aten::add-x", "a.b.c.d"]
)
def test_malformed_operator_names(text):
    with pytest.raises(NeutronConfigError) as error:
        parse_operator_name(text)
    assert repr(text) in str(error.value)
    assert "'aten::convolution'" in str(error.value)


def test_operator_name_must_be_a_string():
    with pytest.raises(NeutronConfigError, match="got int 3"):
        parse_operator_name(3)


def test_operators_registered_later_are_found():
    library = torch.library.Library("neutron_compile_spec_test", "DEF")
    parse_operator_name("aten::add")  # fill the cache before the new operator exists
    library.define("late_op(Tensor x) -> Tensor")
    assert parse_operator_name("neutron_compile_spec_test::late_op") == OperatorName(
        "neutron_compile_spec_test", "late_op"
    )


def test_declared_aliases_name_registered_operators():
    from neutron_backend import ops

    for registered in ops.operators():
        for name in registered.aliases:
            parse_operator_name(f"aten::{name}")


# --- matching edge operators ---

edge = exir_ops.edge.aten


@pytest.mark.parametrize(
    ("text", "op", "expected"),
    [
        ("aten::add", edge.add.Tensor, True),
        ("aten::add", edge.add.Scalar, True),
        ("aten::add", torch.ops.aten.add.Tensor, True),
        ("aten::add", edge.addmm.default, False),
        ("aten::add.Tensor", edge.add.Tensor, True),
        ("aten::add.Tensor", edge.add.Scalar, False),
        ("aten.add.Tensor", torch.ops.aten.add.Tensor, True),
        ("aten::addmm", edge.addmm.default, True),
        ("aten::addmm.default", edge.addmm.default, True),
        ("aten::addmm", edge.add.Tensor, False),
        ("aten::convolution", edge.convolution.default, True),
        ("aten.convolution.default", edge.convolution.default, True),
        ("aten::max_pool2d_with_indices", edge.max_pool2d_with_indices.default, True),
        # decomposition renames
        ("aten.max_pool2d", edge.max_pool2d_with_indices.default, True),
        ("aten::max_pool2d.default", edge.max_pool2d_with_indices.default, False),
        ("aten::conv2d", edge.convolution.default, True),
        ("aten::linear", edge.addmm.default, True),
        ("aten::linear", edge.mm.default, True),
        ("aten::softmax", edge._softmax.default, True),
        ("aten::view", edge.view_copy.default, True),
        ("aten::permute", edge.permute_copy.default, True),
        ("aten::max_pool2d", edge.max_pool2d.default, True),
        ("aten::max_pool2d_with_indices", edge.max_pool2d.default, False),
        ("aten::div", edge.mul.Tensor, True),
        ("aten::adaptive_avg_pool2d", edge.mean.dim, True),
        ("aten::convolution", edge.max_pool2d_with_indices.default, False),
        ("aten::add", exir_ops.edge.quantized_decomposed.quantize_per_tensor.default, False),
        (
            "quantized_decomposed::quantize_per_tensor",
            exir_ops.edge.quantized_decomposed.quantize_per_tensor.default,
            True,
        ),
    ],
)
def test_matches_edge_ops(text, op, expected):
    assert parse_operator_name(text).matches(op) is expected


def test_non_operators_never_match():
    assert not parse_operator_name("aten::add").matches(operator.getitem)
    assert not parse_operator_name("aten::add").matches("aten::add")


def test_aliases_cover_what_edge_lowering_produces():
    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.linear = torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.nn.functional.max_pool2d(self.conv(x), 2)
            return torch.softmax(self.linear(y.mean((2, 3)).view(1, 4)), -1)

    program = torch.export.export(Model().eval(), (torch.randn(1, 3, 8, 8),))
    targets = [
        node.target for node in to_edge(program).exported_program().graph.nodes if node.op == "call_function"
    ]
    for name in ("aten::max_pool2d", "aten::conv2d", "aten::linear", "aten::softmax", "aten::view"):
        assert any(parse_operator_name(name).matches(target) for target in targets), name


@pytest.mark.parametrize(("text", "op", "origin", "expected"), [
    ("aten::div", edge.mul.Tensor, "div", True),
    ("aten::div", edge.mul.Tensor, "mul", False),  # a mul written as mul is not a div
    ("aten::div", edge.mul.Tensor, "__mul__", True),  # an unknown spelling: the alias still stands
    ("aten::relu6", edge.hardtanh.default, "hardtanh", False),
    ("aten::mul", edge.mul.Tensor, "div", True),  # the exact name always matches
])
def test_aliases_follow_the_spelling_the_node_came_from(text, op, origin, expected):
    assert parse_operator_name(text).matches(op, origin) is expected
