"""NeutronQuantizer and helpers to quantize a model for the Neutron NPU."""

from neutron_backend.quantizer.config import NeutronQuantizationConfig, get_neutron_quantization_config
from neutron_backend.quantizer.quantizer import EXCLUDED_META_KEY, NeutronQuantizer

__all__ = [
    "EXCLUDED_META_KEY",
    "NeutronQuantizationConfig",
    "NeutronQuantizer",
    "get_neutron_quantization_config",
]
