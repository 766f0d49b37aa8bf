"""NeutronQuantizer and helpers to quantize a model for the Neutron NPU."""

from neutron_backend.quantizer.calibration import calibrate, quantize_model, random_batches
from neutron_backend.quantizer.config import NeutronQuantizationConfig, get_neutron_quantization_config
from neutron_backend.quantizer.quantizer import EXCLUDED_META_KEY, NeutronQuantizer

__all__ = [
    "EXCLUDED_META_KEY",
    "NeutronQuantizationConfig",
    "NeutronQuantizer",
    "calibrate",
    "get_neutron_quantization_config",
    "quantize_model",
    "random_batches",
]
