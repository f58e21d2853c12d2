"""fvcore's count of a built detector, on the path its MACs are defined on (`build.counting_forward`).

The same strictness as the backbone's traced count (`check.measured`): every
op of the trace is counted by a handle, named as free here with its reason, or
the count fails; a total is never short because fvcore met an op it does not
know. Detection adds a few ops that hold no multiply-accumulates: ReLU,
max-pooling (P6 of Mask R-CNN), nearest upsampling (the FPN's top-down path),
RoIAlign (bilinear sampling; MultiScaleRoIAlign scatters each level's RoIs back in order) and the
concatenations of the heads' outputs.
"""

from __future__ import annotations

from typing import Any

from cmt_gen.errors import CmtGenError

DETECTION_FREE_OPS = frozenset({
    "aten::relu", "aten::relu_", "aten::max_pool2d", "aten::upsample_nearest2d", "torchvision::roi_align",
    "aten::cat", "aten::stack", "aten::zeros", "aten::new_zeros", "aten::full", "aten::clamp", "aten::log2",
    "aten::sqrt", "aten::floor", "aten::sub", "aten::div", "aten::select", "aten::slice", "aten::index",
    "aten::copy_", "aten::expand", "aten::unsqueeze", "aten::squeeze", "aten::zeros_like", "aten::ones",
    "aten::arange", "aten::max", "aten::min", "aten::ge", "aten::le", "aten::lt", "aten::gt", "aten::eq",
    "aten::nonzero", "aten::index_put_", "aten::fill_", "aten::scalar_tensor", "aten::type_as", "aten::repeat",
    "aten::full_like", "aten::masked_fill", "aten::where", "aten::abs", "aten::round", "aten::numel",
    "aten::empty", "aten::to", "aten::scatter", "aten::scatter_", "aten::mul_", "aten::add_", "aten::sub_",
    "aten::div_",
})


def traced_detector_cost(spec: Any, force: bool = False) -> tuple[int, int]:
    """(parameters, MACs) of the built detector: numel, and fvcore's MAC-type ops on `counting_forward`."""
    import torch

    from cmt_gen.check.measured import FREE_OPS, MAC_OPERATORS, UNCOUNTED_ELEMENTWISE_OPS, flop_count_analysis
    from cmt_gen.cost.memory_guard import check_detector_fits
    from cmt_gen.detection.build import build_detector, counting_forward, counting_input

    check_detector_fits(spec, 1, force, "tracing the detector")
    model = build_detector(spec).eval()
    params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        analysis = flop_count_analysis(counting_forward(model, spec), (counting_input(spec),))
        analysis.set_op_handle(**{op: None for op in DETECTION_FREE_OPS})
        ops = analysis.by_operator()
        unknown = set(analysis.unsupported_ops()) - DETECTION_FREE_OPS - FREE_OPS - UNCOUNTED_ELEMENTWISE_OPS
    if unknown:
        raise CmtGenError(f"fvcore met ops it cannot count in the detector's trace: {', '.join(sorted(unknown))}",
                          source=spec.name, field="--counter")
    return params, int(sum(v for k, v in ops.items() if k in MAC_OPERATORS))
