"""The quantization specs of the scheme the Neutron NPU runs (`reference/facts.md`, "Quantization scheme")."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torchao.quantization.pt2e import (
    FakeQuantize,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
)
from torchao.quantization.pt2e.quantizer import FixedQParamsQuantizationSpec, QuantizationSpec

from neutron_backend.quantizer.observers import FastHistogramObserver

ACT_QMIN, ACT_QMAX = -128, 127
# Weights are symmetric over [-127, 127]: -128 is unused so that negating a weight never overflows.
WEIGHT_QMIN, WEIGHT_QMAX = -127, 127
BIAS_QMIN, BIAS_QMAX = -(2**31), 2**31 - 1

# Softmax output: [0, 1) over the int8 range, the fixed qparams TFLite's int8 SOFTMAX requires.
SOFTMAX_SCALE, SOFTMAX_ZERO_POINT = 1.0 / 256.0, -128
# Sigmoid output: [0, 1) like softmax; tanh output: [-1, 1) over the int8 range (TFLite's int8 LOGISTIC/TANH).
SIGMOID_SCALE, SIGMOID_ZERO_POINT = 1.0 / 256.0, -128
TANH_SCALE, TANH_ZERO_POINT = 1.0 / 128.0, 0


@dataclass(frozen=True)
class NeutronQuantizationConfig:
    """The specs one part of a model is quantized with.

    `conv_weight` is per-channel (axis 0), `conv_transpose_weight` per-channel on axis 1 (a transposed conv's
    weight is [Cin, Cout/groups, kH, kW]: axis 1 holds the output channels), `linear_weight` per-tensor; biases are
    derived from the input and weight scales per node, so they have no spec here.
    """

    activation: QuantizationSpec
    conv_weight: QuantizationSpec
    linear_weight: QuantizationSpec
    conv_transpose_weight: QuantizationSpec


def get_neutron_quantization_config(is_qat: bool = False) -> NeutronQuantizationConfig:
    """Returns the configuration for the NPU's scheme: observers for PTQ, fake quantizers for QAT."""
    if is_qat:
        act_ctr = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver)
        # torchao hands a spec's ch_axis only to constructors whose class name contains "PerChannel", which
        # FakeQuantize's does not: bind the axis here, or a transposed conv's weight is fake-quantized on axis 0.
        conv_weight_ctr = FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, ch_axis=0)
        conv_transpose_weight_ctr = FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, ch_axis=1)
        linear_weight_ctr = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver)
    else:
        # Histogram search for the range minimising quantization error: clips rare outliers that MinMax would
        # spend most of the 256 levels on (torchao's HistogramObserver, its search sped up).
        act_ctr = FastHistogramObserver
        conv_weight_ctr = conv_transpose_weight_ctr = PerChannelMinMaxObserver
        linear_weight_ctr = MinMaxObserver
    conv_weight = QuantizationSpec(
        dtype=torch.int8,
        quant_min=WEIGHT_QMIN,
        quant_max=WEIGHT_QMAX,
        qscheme=torch.per_channel_symmetric,
        ch_axis=0,
        observer_or_fake_quant_ctr=conv_weight_ctr,
    )
    return NeutronQuantizationConfig(
        activation=QuantizationSpec(
            dtype=torch.int8,
            quant_min=ACT_QMIN,
            quant_max=ACT_QMAX,
            qscheme=torch.per_tensor_affine,
            observer_or_fake_quant_ctr=act_ctr,
        ),
        conv_weight=conv_weight,
        linear_weight=QuantizationSpec(
            dtype=torch.int8,
            quant_min=WEIGHT_QMIN,
            quant_max=WEIGHT_QMAX,
            qscheme=torch.per_tensor_symmetric,
            observer_or_fake_quant_ctr=linear_weight_ctr,
        ),
        conv_transpose_weight=dataclasses.replace(
            conv_weight, ch_axis=1, observer_or_fake_quant_ctr=conv_transpose_weight_ctr
        ),
    )


def fixed_qparams_spec(scale: float, zero_point: int) -> FixedQParamsQuantizationSpec:
    """Returns an int8 per-tensor spec with the given fixed scale and zero point."""
    return FixedQParamsQuantizationSpec(
        dtype=torch.int8,
        scale=scale,
        zero_point=zero_point,
        quant_min=ACT_QMIN,
        quant_max=ACT_QMAX,
        qscheme=torch.per_tensor_affine,
    )
