"""TEST DOUBLE of NXP's proprietary ``eiq_neutron_sdk`` package (not installable here), an SDK before 3.2.1: it has
the older converter interface (``neutron_converter.convertModel``) and ``neutron_library_utils``, and no
``useProfiling`` option. ``compiler_sdk/eiq_neutron_sdk`` is the double of the newer compiler interface."""

__version__ = "3.1.2"
