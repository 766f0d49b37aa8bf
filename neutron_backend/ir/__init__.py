"""Neutron IR: the int8 TFLite subgraph handed to the eIQ Neutron converter (or run on the host by LiteRT)."""

from neutron_backend.ir.builder import IRBuilder
from neutron_backend.ir.interpreter import run_tflite
from neutron_backend.ir.layout import (
    NCHW_TO_NHWC,
    NHWC_TO_NCHW,
    channels_first_perm,
    channels_last_perm,
    conv_weight_to_ohwi,
    to_channels_first_shape,
    to_channels_last_shape,
)

__all__ = [
    "IRBuilder",
    "NCHW_TO_NHWC",
    "NHWC_TO_NCHW",
    "channels_first_perm",
    "channels_last_perm",
    "conv_weight_to_ohwi",
    "run_tflite",
    "to_channels_first_shape",
    "to_channels_last_shape",
]
