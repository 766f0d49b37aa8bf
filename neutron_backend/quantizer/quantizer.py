"""NeutronQuantizer: a torchao PT2E quantizer producing the int8 scheme the Neutron NPU runs."""

from __future__ import annotations

import difflib
import functools
import logging

import torch
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e.quantizer import Quantizer
from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

from neutron_backend.quantizer.config import NeutronQuantizationConfig, get_neutron_quantization_config
from neutron_backend.quantizer.kinds import KIND_META_KEY, Weighted, is_annotated, is_float_tensor
from neutron_backend.quantizer.patterns import patterns, settle_input_specs
from neutron_backend.targets import NeutronTarget, get_target

logger = logging.getLogger(__name__)

# node.meta key naming why the quantizer configuration left a quantizable node in float; read by the
# partitioner. The top-level key lives only as long as the annotated graph (through convert_pt2e). A re-export
# drops unknown top-level keys but keeps node.meta["custom"] (torch.export copies it to every node a node is
# traced or decomposed into, through to_edge), so the reason is mirrored to
# node.meta["custom"][EXCLUDED_META_KEY] too.
EXCLUDED_META_KEY = "neutron_quantizer_excluded"
# Why the quantizer left a node in float although its configuration covers it (the partitioner reports it).
SKIPPED_META_KEY = "neutron_quantizer_skipped"


def _normalize_module_path(path: str) -> str:
    # Older capture APIs prefix paths with "L['self'].".
    prefix = "L['self']."
    return path[len(prefix) :] if path.startswith(prefix) else path


@functools.cache
def _convolutions(transposed: bool) -> frozenset:
    """The pre-dispatch convolution targets (transposed or not), read from the declarations' annotations:
    convolutions are the weighted ones with per-channel weights (linear layers are per tensor)."""
    return frozenset(target for target, kind in patterns().items()
                     if isinstance(kind, Weighted) and kind.per_channel and kind.transposed is transposed)


# Argument position of `groups` in aten.conv_transpose{1,2}d(input, weight, bias, stride, padding,
# output_padding, groups, dilation).
_TRANSPOSED_GROUPS_ARG = 6


def _conv_bias(conv: Node) -> object:
    return conv.args[2] if len(conv.args) > 2 else conv.kwargs.get("bias")


def _conv_out_channels(conv: Node) -> int:
    weight_shape = conv.args[1].meta["val"].shape
    if conv.target in _convolutions(transposed=False):
        return int(weight_shape[0])
    groups = conv.args[_TRANSPOSED_GROUPS_ARG] if len(conv.args) > _TRANSPOSED_GROUPS_ARG else conv.kwargs.get(
        "groups", 1)
    return int(weight_shape[1]) * int(groups)


# aten.batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn_enabled)
_RUNNING_MEAN_ARG, _MOMENTUM_ARG = 3, 6


def drop_batch_norm_counter_updates(model: GraphModule) -> int:
    """Removes the `num_batches_tracked += 1` of every batchnorm with a momentum, in place.

    With a momentum the counter is never read (it only replaces the momentum when that is None), but convert_pt2e
    removes the update only for BatchNorm2d: a BatchNorm1d's would stay in the converted model as a buffer mutation
    on the CPU. Returns the number of updates removed.
    """
    unread_counters = set()
    for node in model.graph.nodes:
        if node.op != "call_function" or node.target != torch.ops.aten.batch_norm.default:
            continue
        running_mean = node.args[_RUNNING_MEAN_ARG] if len(node.args) > _RUNNING_MEAN_ARG else None
        momentum = node.args[_MOMENTUM_ARG] if len(node.args) > _MOMENTUM_ARG else node.kwargs.get("momentum")
        if isinstance(running_mean, Node) and running_mean.op == "get_attr" and momentum is not None:
            unread_counters.add(running_mean.target.removesuffix("running_mean") + "num_batches_tracked")
    removed = 0
    for node in list(model.graph.nodes):
        counter = node.args[0] if node.op == "call_function" and node.args else None
        if (
            node.target == torch.ops.aten.add_.Tensor
            and isinstance(counter, Node)
            and counter.op == "get_attr"
            and counter.target in unread_counters
            and not node.users
        ):
            model.graph.erase_node(node)
            removed += 1
    if removed:
        model.recompile()
    return removed


def add_zero_bias_before_batch_norm(model: GraphModule) -> int:
    """Gives every biasless convolution that feeds a batchnorm a zero float32 bias, in place.

    prepare_qat_pt2e fuses conv+batchnorm after annotation and convert_pt2e folds the batchnorm's shift into the
    conv's bias. A conv annotated without a bias gets that bias as an unquantized float constant, which the NPU
    cannot run; with a zero bias present at annotation time, the folded bias is quantized to int32 (s_in * s_w)
    like any other. Returns the number of convolutions given a bias.
    """
    added = 0
    for node in list(model.graph.nodes):
        if node.op != "call_function" or node.target not in _convolutions(False) | _convolutions(True):
            continue
        users = list(node.users)
        if _conv_bias(node) is not None or len(users) != 1 or users[0].target != torch.ops.aten.batch_norm.default:
            continue
        weight = node.args[1]
        if not isinstance(weight, Node) or "val" not in weight.meta:
            continue
        name = f"_neutron_zero_bias_{added}"
        while hasattr(model, name):
            name = f"_{name}"
        bias_value = torch.zeros(_conv_out_channels(node), dtype=weight.meta["val"].dtype)
        # A parameter, as convert_pt2e re-registers the folded bias under this name as one.
        model.register_parameter(name, torch.nn.Parameter(bias_value))
        with model.graph.inserting_before(node):
            bias = model.graph.get_attr(name)
        bias.meta["val"] = weight.meta["val"].new_zeros(bias_value.shape)
        if len(node.args) > 2:
            node.update_arg(2, bias)
        else:
            node.kwargs = {k: v for k, v in node.kwargs.items() if k != "bias"}
            node.args = (*node.args[:2], bias, *node.args[3:])
        added += 1
    if added:
        model.recompile()
    return added


def _type_name(module_type: type | str) -> str:
    # nn_module_stack stores the module type as a "module.qualname" string (a type in older torch versions).
    if isinstance(module_type, str):
        return module_type
    return f"{module_type.__module__}.{module_type.__qualname__}"


class NeutronQuantizer(Quantizer):
    """Annotates an exported (`torch.export.export(...).module()`) graph for `prepare_pt2e` or
    `prepare_qat_pt2e`.

    After calibration and `convert_pt2e`, every supported compute node is a QDQ cluster: activations int8
    per-tensor affine, conv weights int8 symmetric per-channel, linear weights int8 symmetric per-tensor,
    biases int32 with scale s_in * s_w, relu/relu6 fused into the preceding conv/linear. The supported ops and
    how each is annotated are declared with each operator (`NeutronOperator.annotated_as`, read by
    `neutron_backend.quantizer.patterns.patterns()`).

    Configuration precedence for a node: `set_node_name`, then `set_module_name` (innermost matching module
    first), then `set_module_type` (innermost first), then `set_global`. A None configuration leaves the node in
    float and records why in `node.meta["neutron_quantizer_excluded"]` and, surviving re-export and `to_edge`,
    `node.meta["custom"]["neutron_quantizer_excluded"]`; the partitioner keeps such a node on the CPU with the
    reason "left in float by the quantizer configuration (<setting>)".
    """

    def __init__(self, target: str, is_qat: bool = False) -> None:
        super().__init__()
        self.target: NeutronTarget = get_target(target)
        self.is_qat = is_qat
        self.global_config: NeutronQuantizationConfig | None = get_neutron_quantization_config(is_qat)
        self.module_name_configs: dict[str, NeutronQuantizationConfig | None] = {}
        self.module_type_configs: dict[str, tuple[type, NeutronQuantizationConfig | None]] = {}
        self.node_name_configs: dict[str, NeutronQuantizationConfig | None] = {}

    def set_global(self, config: NeutronQuantizationConfig | None) -> NeutronQuantizer:
        """Sets the configuration of nodes no module setting matches (None: float). Returns self."""
        self.global_config = config
        return self

    def set_module_type(
        self, module_type: type, config: NeutronQuantizationConfig | None
    ) -> NeutronQuantizer:
        """Sets the configuration of nodes inside modules of `module_type` (None: float). Returns self."""
        self.module_type_configs[_type_name(module_type)] = (module_type, config)
        return self

    def set_module_name(self, module_name: str, config: NeutronQuantizationConfig | None) -> NeutronQuantizer:
        """Sets the configuration of nodes inside the submodule with this qualified name, e.g. "features.3"
        (None: float). Returns self."""
        self.module_name_configs[module_name] = config
        return self

    def set_node_name(self, node_name: str, config: NeutronQuantizationConfig | None) -> NeutronQuantizer:
        """Sets the configuration of one node of the exported graph, by name, e.g. "linear_1" (the names printed
        by `torch.export.export(model, inputs).module().graph`), over any module setting (None: float). A name
        that matches no node is reported as a warning during annotation. Returns self."""
        self.node_name_configs[node_name] = config
        return self

    def _resolve(self, node: Node) -> tuple[NeutronQuantizationConfig | None, str]:
        """Returns the configuration for `node` and the setting that chose it, e.g.
        "set_module_name('fc', None)"."""
        if node.name in self.node_name_configs:
            config = self.node_name_configs[node.name]
            return config, f"set_node_name({node.name!r}, {'None' if config is None else '...'})"
        stack = list(node.meta.get("nn_module_stack", {}).values())
        for path, _ in reversed(stack):
            name = _normalize_module_path(path)
            if name in self.module_name_configs:
                config = self.module_name_configs[name]
                return config, f"set_module_name({name!r}, {'None' if config is None else '...'})"
        for _, module_type in reversed(stack):
            entry = self.module_type_configs.get(_type_name(module_type))
            if entry is not None:
                cls, config = entry
                return config, f"set_module_type({cls.__name__}, {'None' if config is None else '...'})"
        return self.global_config, f"set_global({'None' if self.global_config is None else '...'})"

    def _config_of(self, node: Node) -> NeutronQuantizationConfig | None:
        return self._resolve(node)[0]

    def transform_for_annotation(self, model: GraphModule) -> GraphModule:
        """Runs the rewrites of `neutron_backend.passes` (called by prepare_pt2e/prepare_qat_pt2e before
        annotation) and, for QAT, `add_zero_bias_before_batch_norm` and `drop_batch_norm_counter_updates`. Returns
        `model`, rewritten in place."""
        from neutron_backend.passes import run_all

        run_all(model)
        if self.is_qat:
            add_zero_bias_before_batch_norm(model)
            drop_batch_norm_counter_updates(model)
        return model

    def annotate(self, model: GraphModule) -> GraphModule:
        """Annotates `model`'s graph in place (topological order, so a conv claims its activation before the
        activation is visited). Returns `model`."""
        counts: dict[str, int] = {"annotated": 0, "excluded": 0}
        calls = [node for node in model.graph.nodes if node.op == "call_function"]
        for node in calls:
            node.meta[KIND_META_KEY] = patterns().get(node.target)
        for node in calls:
            if is_annotated(node):
                continue
            kind = patterns().get(node.target)
            if kind is None:
                _record(node, SKIPPED_META_KEY, f"NeutronQuantizer has no rule for {node.target} and left it in "
                                                "float")
                continue
            config, reason = self._resolve(node)
            if config is None:
                _record(node, EXCLUDED_META_KEY, reason)
                counts["excluded"] += 1
            elif kind.annotate(node, config, self._config_of):
                counts["annotated"] += 1
            else:
                _record(node, SKIPPED_META_KEY, "NeutronQuantizer left it in float because an input or its output "
                                                "is not a float32 tensor (it quantizes float32 values only)")
        for node in calls:
            del node.meta[KIND_META_KEY]
        counts["settled"] = settle_input_specs(model, self._config_of)
        self._warn_unmatched_node_names(model)
        logger.debug("NeutronQuantizer(%s): %s", self.target.name, counts)
        return model

    def _warn_unmatched_node_names(self, model: GraphModule) -> None:
        names = [node.name for node in model.graph.nodes]
        for missing in sorted(set(self.node_name_configs) - set(names)):
            close = difflib.get_close_matches(missing, names, n=3)
            logger.warning("NeutronQuantizer.set_node_name(%r, ...) matches no node of the graph%s", missing,
                           f"; close names: {close}" if close else "")

    def validate(self, model: GraphModule) -> None:
        """Raises ValueError if an annotation would quantize a tensor that is not float32 (indices, float64,
        shapes); returns None otherwise."""
        for node in model.graph.nodes:
            annotation = node.meta.get(Q_ANNOTATION_KEY)
            if annotation is None:
                continue
            for arg, spec in annotation.input_qspec_map.items():
                if spec is not None and not is_float_tensor(arg):
                    raise ValueError(f"{node.name}: input {arg} is not a float32 tensor, cannot be quantized")
            if annotation.output_qspec is not None and not is_float_tensor(node):
                raise ValueError(f"{node.name}: output is not a float32 tensor and cannot be quantized")


def _record(node: Node, key: str, reason: str) -> None:
    """Leaves `reason` on the node, also in meta["custom"], which survives export and to_edge's decompositions."""
    node.meta[key] = reason
    node.meta.setdefault("custom", {})[key] = reason


__all__ = ["EXCLUDED_META_KEY", "SKIPPED_META_KEY", "NeutronQuantizer"]
