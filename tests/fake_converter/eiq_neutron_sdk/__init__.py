"""TEST DOUBLE of NXP's proprietary ``eiq_neutron_sdk`` package (not installable here); see neutron_converter."""
