"""TEST DOUBLE of NXP's proprietary ``eiq_neutron_sdk`` package (not installable here), SDK 3.2.2: the Neutron
compiler interface (``neutron_compiler.compileModel``) and ``neutron_library_utils``, with ``useProfiling``."""

__version__ = "3.2.2"
