"""Which FLOPs convention Tables 7 and 8 print: the counts of each convention beside the printed figures.

The detection FLOPs the CMT paper prints (via the PVT and Twins papers) come
from mmdetection's `get_flops.py`: mmcv 1.x's `get_model_complexity_info`
(`mmcv/cnn/utils/flops_counter.py`) on the detector's `forward_dummy` at
`input_shape=(3, 1280, 800)`. That counter is a forward hook on modules of a
fixed set of types, so it sees layers, not ops: attention matmuls
(`q @ k^T`, `attn @ v`), `F.interpolate`, `F.relu` and RoIAlign count zero,
while it adds bias adds, norms, activations and pooling that the paper's
MACs leave out. `mmcv_style_count` reproduces its rules on any module (our
code, written from those rules), so a row can be set beside three conventions:

(a) `macs`: fvcore's op counts of conv, linear and matmul MACs, attention included
    (`cmt_gen.check.measured`, the unit of `analytic_cost`);
(b) `macs_without_attention`: (a) less the matmul-family ops (all of them attention);
(c) `mmcv`: the module-hook counter's total.

Parameters likewise: all of them (`params`), and those with `requires_grad`
(`trainable_params`), what mmcv's counter reports (mmdetection's ResNet freezes
its stem and first stage, `frozen_stages=1`).

Measured at H=1280, W=800 (`benchmarks/detection_conventions.py`; the same
counts at 800x1280): (c) rounds to all six printed FLOPs (CMT-S 231B/249B,
ResNet-101 315B/336B, Swin-T 245B/264B), (a) to none and (b) to Swin-T
RetinaNet's only; `trainable_params` rounds to every printed parameter count but
CMT-S RetinaNet's 44.3M (34.55M counted; see its spec's provenance).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

# fvcore operator names of the attention matmuls; in CMT, Swin and the detection heads only attention emits them.
ATTENTION_OPERATORS = frozenset({"matmul", "bmm", "einsum", "scaled_dot_product_attention"})
MMCV_SOURCE = "open-mmlab/mmcv 1.x, mmcv/cnn/utils/flops_counter.py (get_model_complexity_info)"
# mmdetection 2.x tools/analysis_tools/get_flops.py: input_shape = (3,) + tuple(--shape), --shape 1280 800.
MMDET_INPUT = (1280, 800)  # height, width of the tensor mmdetection counted


# ---------------------------------------------------------------- mmcv's module-hook rules

def _numel(shape: Any) -> int:
    return math.prod(int(s) for s in shape)


def _conv(module: Any, inputs: tuple, output: Any) -> int:
    """conv_flops_counter_hook: per output element k*k*C_in*(C_out//groups) MACs, plus C_out bias adds each."""
    batch = inputs[0].shape[0]
    active = batch * _numel(output.shape[2:])
    per_position = _numel(module.kernel_size) * module.in_channels * (module.out_channels // module.groups)
    bias = module.out_channels * active if module.bias is not None else 0
    return per_position * active + bias


def _deconv(module: Any, inputs: tuple, output: Any) -> int:
    """deconv_flops_counter_hook: MACs per *input* pixel; the bias term uses H_out * H_out (mmcv's typo, kept)."""
    x = inputs[0]
    batch, (h_in, w_in) = x.shape[0], x.shape[2:]
    per_position = _numel(module.kernel_size) * module.in_channels * (module.out_channels // module.groups)
    bias = 0
    if module.bias is not None:
        h_out = output.shape[2]
        bias = module.out_channels * batch * h_out * h_out
    return per_position * batch * h_in * w_in + bias


def _activation(module: Any, inputs: tuple, output: Any) -> int:
    """relu_flops_counter_hook: one per output element (ReLU, PReLU, ELU, LeakyReLU, ReLU6 only)."""
    return output.numel()


def _pool(module: Any, inputs: tuple, output: Any) -> int:
    """pool_flops_counter_hook: one per *input* element (max, average and adaptive pools, 1-3d)."""
    return _numel(inputs[0].shape)


def _norm(module: Any, inputs: tuple, output: Any) -> int:
    """norm_flops_counter_hook: one per input element, two when `affine` / `elementwise_affine` is set."""
    n = _numel(inputs[0].shape)
    return 2 * n if getattr(module, "affine", False) or getattr(module, "elementwise_affine", False) else n


def _linear(module: Any, inputs: tuple, output: Any) -> int:
    """linear_flops_counter_hook: input numel x out_features; the bias is not counted."""
    return _numel(inputs[0].shape) * output.shape[-1]


def _upsample(module: Any, inputs: tuple, output: Any) -> int:
    """upsample_flops_counter_hook: elements of output[0], the first image (nn.Upsample only, not F.interpolate)."""
    return output[0].numel()


def mmcv_rules() -> dict[type, tuple[str, Callable[[Any, tuple, Any], int]]]:
    """mmcv's `get_modules_mapping()` in torch.nn types: module type -> (rule name, count per call).

    mmcv matches `type(module) in mapping`, exactly: a subclass (timm's Conv2dSame,
    MultiheadAttention's NonDynamicallyQuantizableLinear) counts zero, as do all
    other types (GELU, SiLU, Softmax, Sigmoid, Identity, RoIAlign modules) and every
    functional op. mmcv's own subclasses (`mmcv.cnn.bricks.Conv2d` etc.) are left out:
    no module here is one.
    """
    from torch import nn

    table: dict[type, tuple[str, Callable]] = {}
    for kind, rule, types in (
        ("conv", _conv, (nn.Conv1d, nn.Conv2d, nn.Conv3d)),
        ("activation", _activation, (nn.ReLU, nn.PReLU, nn.ELU, nn.LeakyReLU, nn.ReLU6)),
        ("pool", _pool, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                         nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
                         nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)),
        ("norm", _norm, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm,
                         nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm)),
        ("linear", _linear, (nn.Linear,)),
        ("upsample", _upsample, (nn.Upsample,)),
        ("deconv", _deconv, (nn.ConvTranspose2d,)),
    ):
        for t in types:
            table[t] = (kind, rule)
    return table


def mmcv_style_counts(module: Any, *inputs: Any) -> dict[str, int]:
    """mmcv's module-hook count of one forward of `module(*inputs)`, per rule (conv, norm, linear, ...).

    As mmcv does: eval mode, no gradients, a hook per call of every module of a
    listed type (a module called three times counts three times), the total
    divided by the batch of the first input (its `batch_counter_hook`).
    """
    import torch

    rules = mmcv_rules()
    counts: dict[str, int] = {kind: 0 for kind, _ in rules.values()}
    handles = []

    def hook_for(kind: str, rule: Callable) -> Callable:
        def hook(mod: Any, args: tuple, output: Any) -> None:
            if args and isinstance(args[0], torch.Tensor):
                counts[kind] += int(rule(mod, args, output))
        return hook

    for sub in module.modules():
        entry = rules.get(type(sub))
        if entry is not None:
            handles.append(sub.register_forward_hook(hook_for(*entry)))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(*inputs)
    finally:
        for handle in handles:
            handle.remove()
        module.train(was_training)
    first = inputs[0] if inputs else None
    batch = len(first) if isinstance(first, torch.Tensor) and first.dim() else 1
    return {kind: n // batch for kind, n in counts.items()}


def mmcv_style_count(module: Any, *inputs: Any) -> int:
    """The total of `mmcv_style_counts`: what mmcv's `get_model_complexity_info` prints as FLOPs."""
    return sum(mmcv_style_counts(module, *inputs).values())


def mmdet_relu_delta(spec: Any) -> int:
    """mmcv's count on mmdetection's heads minus its count on ours: where one has an `nn.ReLU` and the other `F.relu`.

    mmdetection's RPNHead applies F.relu after its conv (not counted) where torchvision's
    RPNHead has a ReLU module; its box head's `self.relu` (after each shared fc) and its
    mask head's ReLU after the transposed conv are modules, where ours call F.relu. The
    RetinaNet head, FPN and bodies match; with several RPN convs both have ReLU modules.
    """
    if spec.rpn is None:
        return 0
    from cmt_gen.cost.detector import detector_cost

    levels = detector_cost(spec).levels
    # one RPN conv: torchvision's ReLU module against mmdetection's F.relu; several: ReLU modules in both
    delta = -spec.fpn.out_channels * sum(a * b for a, b in levels) if spec.rpn.convs == 1 else 0
    if spec.box_head is not None:
        delta += spec.box_head.fcs * spec.box_head.fc_channels * spec.box_head.proposals
    if spec.mask_head is not None:
        delta += spec.mask_head.channels * (2 * spec.mask_head.roi_size) ** 2 * spec.mask_head.proposals
    return delta


def trainable_params(module: Any) -> int:
    """mmcv's parameter count (`get_model_parameters_number`): only tensors with `requires_grad`."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ---------------------------------------------------------------- fvcore's op counts

def op_macs(module: Any, *inputs: Any) -> tuple[int, int, dict[str, int], dict[str, int]]:
    """(MACs, attention MACs, MACs per operator, ops fvcore could not count) of one traced forward.

    fvcore through `check.measured`'s handles; ops it has no handle for
    (RoIAlign, max-pooling...) are returned rather than refused, since the
    MAC-bearing ops are all counted and these are not multiply-adds.
    """
    import torch

    from cmt_gen.check.measured import MAC_OPERATORS, flop_count_analysis

    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            analysis = flop_count_analysis(module, inputs)
            ops = {k: int(v) for k, v in analysis.by_operator().items()}
            unsupported = {k: int(v) for k, v in analysis.unsupported_ops().items()}
    finally:
        module.train(was_training)
    macs = {k: v for k, v in ops.items() if k in MAC_OPERATORS}
    attention = sum(v for k, v in macs.items() if k in ATTENTION_OPERATORS)
    return sum(macs.values()), attention, macs, unsupported


# ---------------------------------------------------------------- the reference rows

FLOP_CONVENTIONS = ("macs", "macs_without_attention", "mmcv")
PARAM_CONVENTIONS = ("params", "trainable_params")
REFERENCES = (("CMT-S", "RetinaNet"), ("CMT-S", "Mask R-CNN"), ("ResNet-101", "RetinaNet"),
              ("ResNet-101", "Mask R-CNN"), ("Swin-T", "RetinaNet"), ("Swin-T", "Mask R-CNN"),
              ("PVT-S", "RetinaNet"), ("PVT-S", "Mask R-CNN"))


@dataclass
class ConventionRow:
    """One reference detector counted under every convention, beside the figures Tables 7/8 print."""

    backbone: str
    detector: str
    height: int
    width: int
    printed_params: str
    printed_flops: str
    params: int | None = None
    trainable_params: int | None = None
    macs: int | None = None
    attention_macs: int | None = None
    macs_without_attention: int | None = None
    mmcv: int | None = None
    mmcv_by_rule: dict[str, int] = field(default_factory=dict)
    mmdet_relu_delta: int = 0  # add to `mmcv` for mmdetection's module structure (`mmdet_relu_delta`)
    uncounted_ops: dict[str, int] = field(default_factory=dict)  # ops fvcore saw but has no count for
    transposed_mmcv: int | None = None  # the mmcv count at width x height, when asked for
    skipped: str | None = None
    seconds: float = 0.0

    def value(self, convention: str) -> int | None:
        return getattr(self, convention)

    def within(self, convention: str) -> bool | None:
        """Whether the convention's count rounds to the printed figure (its printed interval)."""
        from cmt_gen.spec.quantity import printed_interval

        value = self.value(convention)
        if value is None:
            return None
        lo, hi = printed_interval(self.printed_params if convention in PARAM_CONVENTIONS else self.printed_flops)
        return lo <= value <= hi

    def deviation(self, convention: str) -> float | None:
        """(count - printed) / printed."""
        from cmt_gen.spec.quantity import parse_quantity

        value = self.value(convention)
        if value is None:
            return None
        printed = parse_quantity(self.printed_params if convention in PARAM_CONVENTIONS else self.printed_flops)
        return (value - printed) / printed

    def matches(self) -> list[str]:
        """The conventions, params and FLOPs, whose counts land in the printed figures' intervals."""
        return [c for c in (*PARAM_CONVENTIONS, *FLOP_CONVENTIONS) if self.within(c)]

    def as_dict(self) -> dict:
        return {**asdict(self), "matches": self.matches(),
                "deviation": {c: self.deviation(c) for c in (*PARAM_CONVENTIONS, *FLOP_CONVENTIONS)}}


def reference_model(backbone: str, detector: str, height: int, width: int) -> tuple[Any, Any]:
    """(model, spec) of a reference detector: CMT-S from `build_detector`, a peer from `peers.peer_detector`."""
    import torch

    from cmt_gen.detection.peers import detector_spec, peer_detector

    if backbone != "CMT-S":
        return peer_detector(backbone, detector, height, width)
    from cmt_gen.detection.build import build_detector

    spec = detector_spec(detector, height, width)
    torch.manual_seed(0)
    return build_detector(spec), spec


def convention_row(backbone: str, detector: str, height: int = MMDET_INPUT[0], width: int = MMDET_INPUT[1], *,
                   fvcore: bool = True, transposed: bool = False) -> ConventionRow:
    """Count one reference detector at height x width under every convention (`fvcore=False`: mmcv's only).

    A peer this package cannot build (PVT-S) comes back with `skipped` saying why.
    """
    import time

    from cmt_gen.cost.tables78 import row as printed_row
    from cmt_gen.detection.build import counting_forward, counting_input
    from cmt_gen.detection.peers import PEERS

    printed = printed_row(detector, backbone)
    result = ConventionRow(backbone, detector, height, width, printed.params, printed.flops)
    peer = PEERS.get(backbone)
    if peer is not None and peer.missing:
        result.skipped = peer.missing
        return result
    start = time.perf_counter()
    model, spec = reference_model(backbone, detector, height, width)
    result.params = sum(p.numel() for p in model.parameters())
    result.trainable_params = trainable_params(model)
    counted, image = counting_forward(model, spec), counting_input(spec)
    result.mmcv_by_rule = mmcv_style_counts(counted, image)
    result.mmcv = sum(result.mmcv_by_rule.values())
    result.mmdet_relu_delta = mmdet_relu_delta(spec)
    if fvcore:
        result.macs, result.attention_macs, _, result.uncounted_ops = op_macs(counted, image)
        result.macs_without_attention = result.macs - result.attention_macs
    del model, counted
    if transposed and height != width:
        model, spec = reference_model(backbone, detector, width, height)
        result.transposed_mmcv = mmcv_style_count(counting_forward(model, spec), counting_input(spec))
    result.seconds = time.perf_counter() - start
    return result


def convention_rows(references: tuple[tuple[str, str], ...] = REFERENCES, height: int = MMDET_INPUT[0],
                    width: int = MMDET_INPUT[1], *, fvcore: bool = True, transposed: bool = False,
                    progress: Callable[[ConventionRow], None] | None = None) -> list[ConventionRow]:
    """`convention_row` for every (backbone, detector) of `references`, in order."""
    rows = []
    for backbone, detector in references:
        rows.append(convention_row(backbone, detector, height, width, fvcore=fvcore, transposed=transposed))
        if progress is not None:
            progress(rows[-1])
    return rows
