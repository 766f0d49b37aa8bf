"""Every name of the user's specification (the public API the README documents) exists and behaves as written."""

import subprocess
import sys

import neutron_backend


def test_every_specified_name_is_exported():
    for name in ["NeutronPartitioner", "NeutronQuantizer", "generate_neutron_compile_spec",
                 "NeutronCompileSpecBuilder", "CustomDelegationOptions", "NeutronBackend", "get_target",
                 "list_targets", "DelegationReport"]:
        assert hasattr(neutron_backend, name), name
    assert neutron_backend.NeutronBackend.__name__ == "NeutronBackend"


def test_builder_and_generate_function_give_the_same_spec():
    from neutron_backend import NeutronCompileSpecBuilder, generate_neutron_compile_spec

    built = NeutronCompileSpecBuilder().neutron_compile_spec(
        "imxrt700", operators_not_to_delegate=["aten::add"]).build()
    generated = generate_neutron_compile_spec("imxrt700", operators_not_to_delegate=["aten::add"])
    assert [(s.key, s.value) for s in built] == [(s.key, s.value) for s in generated]


def test_partitioner_reads_target_from_the_compile_spec():
    from neutron_backend import NeutronPartitioner, generate_neutron_compile_spec

    partitioner = NeutronPartitioner(generate_neutron_compile_spec("mcxn94x"))
    assert partitioner.target.name == "mcxn94x"
    assert partitioner.report is None
    assert partitioner.delegation_spec.backend_id == "NeutronBackend"


def test_import_and_help_do_not_pay_for_executorch():
    code = ("import sys, neutron_backend, neutron_backend.cli; "
            "print(any(m.startswith('executorch') or m == 'torch' for m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_unknown_attribute_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'NeutronThing'"):
        neutron_backend.NeutronThing  # noqa: B018


def test_named_flavor_not_installed_fails_when_the_partitioner_is_made():
    import pytest

    from neutron_backend import NeutronPartitioner, generate_neutron_compile_spec
    from neutron_backend.converter import ConverterNotInstalledError

    spec = generate_neutron_compile_spec("imxrt700", neutron_converter_flavor="SDK_25_06")
    with pytest.raises(ConverterNotInstalledError, match="neutron_converter_SDK_25_06") as error:
        NeutronPartitioner(spec)
    assert "pip install" in str(error.value)
