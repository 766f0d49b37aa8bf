"""Resizing: nearest and bilinear 2D upsampling (RESIZE_NEAREST_NEIGHBOR, RESIZE_BILINEAR).

PyTorch samples output pixel `dst` of an axis at source coordinate
- nearest: floor(dst * s), s = 1 / scale_factor when one is given, else in / out;
- bilinear, align_corners=False: (dst + 0.5) * s - 0.5 with the same s (clamped at 0);
- bilinear, align_corners=True: dst * (in - 1) / (out - 1).
LiteRT's resize kernels use s = in / out, or (in - 1) / (out - 1) with align_corners, and the half-pixel form with
half_pixel_centers. They agree exactly with PyTorch when a given scale factor equals out / in.
"""

from __future__ import annotations

from torch.fx import Node

from neutron_backend.ops.base import (
    SUPPORTED,
    CheckContext,
    Layout,
    NeutronOperator,
    OpKind,
    QParamsContract,
    Verdict,
    arg,
    reject,
    shape_of,
)
from neutron_backend.ops.edge import edge
from neutron_backend.quantizer.kinds import (
    SHARED,
    aten,
)

SUPPORTED_SCALES = (1, 2, 4, 8)


def _is_bilinear(node: Node) -> bool:
    return "bilinear" in node.target._schema.name


def _align_corners(node: Node) -> bool:
    """upsample_bilinear2d.vec(input, output_size, align_corners, scale_factors); nearest has no such flag."""
    return _is_bilinear(node) and bool(arg(node, 2, "align_corners", False))


def _scale_factors(node: Node) -> list[float] | None:
    """upsample_nearest2d.vec(input, output_size, scale_factors) or the bilinear form above."""
    factors = arg(node, 3 if _is_bilinear(node) else 2, "scale_factors", None)
    return None if factors is None else [float(f) for f in factors]


def effective_scales(node: Node) -> tuple[float, float]:
    """The (h, w) upscaling factors the resize kernel steps by: out / in, or (out - 1) / (in - 1) with
    align_corners."""
    in_h, in_w = shape_of(node.args[0])[2:]
    out_h, out_w = shape_of(node)[2:]
    if _align_corners(node):
        return (out_h - 1) / (in_h - 1), (out_w - 1) / (in_w - 1)
    return out_h / in_h, out_w / in_w


def _check(node: Node, ctx: CheckContext) -> Verdict:
    # Sizes are static here (the partitioner keeps dynamic-shaped nodes on the CPU) and rank 4 (torch's 2D ops).
    (in_h, in_w), (out_h, out_w) = shape_of(node.args[0])[2:], shape_of(node)[2:]
    if _align_corners(node):
        if in_h == 1 or in_w == 1:
            return reject(f"align_corners=True with an input of size {in_h}x{in_w}: a size-1 axis has no corners to "
                          "align; use align_corners=False")
    elif (factors := _scale_factors(node)) is not None:
        for axis, factor, size_in, size_out in (("H", factors[0], in_h, out_h), ("W", factors[1], in_w, out_w)):
            if factor * size_in != size_out:
                return reject(f"scale_factor {factor:g} along {axis} does not equal output/input size "
                              f"{size_out}/{size_in}; PyTorch then samples with step 1/{factor:g}, which the resize "
                              "kernel cannot express: pass size= or recompute_scale_factor=True")
    return SUPPORTED


def _check_target(node: Node, ctx: CheckContext) -> Verdict:
    in_h, in_w = shape_of(node.args[0])[2:]
    out_h, out_w = shape_of(node)[2:]
    for axis, scale, size_in, size_out in zip("HW", effective_scales(node), (in_h, in_w), (out_h, out_w),
                                              strict=True):
        if scale not in SUPPORTED_SCALES:
            how = "(out - 1) / (in - 1) with align_corners" if _align_corners(node) else "out / in"
            return reject(f"scale {scale:g} along {axis} ({size_in} -> {size_out}, {how}); Neutron resizes by "
                          f"{', '.join(map(str, SUPPORTED_SCALES))} per axis")
    return SUPPORTED


def _is_identity(node: Node) -> bool:
    return shape_of(node.args[0]) == shape_of(node)


def _converter(op: str):
    def convert(node: Node, ctx) -> None:
        from ai_edge_litert import schema_py_generated as schema

        x = ctx.input(node, 0, channels_last=True)
        output = ctx.output(node, channels_last=True)
        if op == "RESIZE_BILINEAR":
            options = schema.ResizeBilinearOptionsT()
            options.alignCorners = _align_corners(node)
            options.halfPixelCenters = not options.alignCorners
        else:
            options = schema.ResizeNearestNeighborOptionsT()
            options.alignCorners = False
            options.halfPixelCenters = False
        size = ctx.int32_constant(f"{node.name}_size", shape_of(node)[2:])
        ctx.builder.add_operator(op, [x, size], [output], options)

    return convert


_CONSTRAINTS = ("rank 4; static sizes; scale in {1, 2, 4, 8} per axis (out / in, or (out - 1) / (in - 1) with "
                "align_corners); a given scale_factor must equal out / in")
OPERATORS = [
    NeutronOperator(name="aten.upsample_nearest2d.vec",
                    annotated_as={
                        aten.upsample_nearest2d.vec: SHARED,
                    }, targets=(edge("aten.upsample_nearest2d.vec"),),
                    layout=Layout.CHANNELS_FIRST, kind=OpKind.COMPUTE,
                    constraints=_CONSTRAINTS, check=_check, check_target=_check_target,
                    convert=_converter("RESIZE_NEAREST_NEIGHBOR"), no_op=_is_identity,
                    quantization="int8; output shares the input's qparams",
                    qparams=QParamsContract.OUTPUT_EQUALS_INPUT),
    NeutronOperator(name="aten.upsample_bilinear2d.vec",
                    annotated_as={
                        aten.upsample_bilinear2d.vec: SHARED,
                    }, targets=(edge("aten.upsample_bilinear2d.vec"),),
                    layout=Layout.CHANNELS_FIRST, kind=OpKind.COMPUTE,
                    constraints=f"{_CONSTRAINTS}; align_corners True or False",
                    check=_check, check_target=_check_target, convert=_converter("RESIZE_BILINEAR"),
                    no_op=_is_identity, quantization="int8; output shares the input's qparams",
                    qparams=QParamsContract.OUTPUT_EQUALS_INPUT),
]
