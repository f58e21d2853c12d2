"""`check_detector(spec)`: a detector's parameters and MACs against Tables 7 and 8 or the user's budget.

The paper's detection FLOPs are mmcv's module-hook count (`cost.hook_convention`:
conv and linear MACs without the attention matmuls, which a hook cannot see,
plus bias adds, norms and ReLUs); `convention_rows` shows that this convention,
and no other, reproduces the tables' ResNet-101 rows. So the printed FLOPs are
checked against that count, and the MACs with and without the attention
matmuls are printed beside it, never folded in. The printed figures are read the right way round
(the tables swap their headers: `cost.tables78.SWAPPED_NOTE`). Deviations from
the paper follow `check.budget`'s rules: a provenance line starting
"Paper/code discrepancy" and naming the figure makes it a documented deviation
with both numbers; anything else off the printed precision fails. With the
analytic counter nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cmt_gen.check.budget import (
    COUNTER_AGREEMENT,
    COUNTERS,
    NO_REFERENCE,
    FigureCheck,
    Verdicts,
    _paper_check,
    settle_verdict,
)
from cmt_gen.errors import CmtGenError
from cmt_gen.spec.detector import DetectorSpec

PAPER_MACS = "hook_count"  # the count Tables 7 and 8's FLOPs are checked against: mmcv's convention
DETECTOR_MACS_UNIT = ("detector MACs = multiply-accumulates of convolutions and linear layers, plus the backbone's "
                      "attention matmuls (q @ k^T, attn @ v); 'w/o attention' leaves those out, as the module-hook "
                      "counter behind Tables 7 and 8 cannot see them; 'mmcv FLOPs' is that counter's convention, the "
                      "one the tables print (these MACs w/o attention plus bias adds, norms twice per element and "
                      "ReLUs); two-stage heads counted on each spec's box_head.proposals and mask_head.proposals RoIs "
                      "per image (by default 1000 and 100, as mmdetection's dummy forward runs them)")


@dataclass
class DetectorCheck(Verdicts):
    """One detector spec counted and checked: totals, the attention share, per-figure checks, one verdict."""

    spec: str
    kind: str
    counter: str
    height: int
    width: int
    params: int
    macs: int
    attention_macs: int
    macs_without_attention: int
    hook_count: int  # mmcv's FLOPs convention (cost.hook_convention), what the tables print
    bias_values: int  # position-bias values the backbone materialises at this input size
    parts: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (params, MACs)
    fvcore_params: int | None = None
    fvcore_macs: int | None = None
    checks: list[FigureCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    verdict: str = NO_REFERENCE


def _load(spec: Any, overrides: Any) -> DetectorSpec:
    if isinstance(spec, DetectorSpec) and not overrides:
        return spec
    if isinstance(spec, DetectorSpec):
        raise CmtGenError("overrides apply when loading a spec; pass a name, path or dict", source=spec.name)
    from cmt_gen.spec.detector_loading import load_detector_spec

    return load_detector_spec(spec, overrides)


def check_detector(spec: Any, counter: str = "analytic", *, overrides: Any = None,
                   force: bool = False) -> DetectorCheck:
    """Count a detector spec (analytic, fvcore or both) and check it against its reference and budget."""
    from cmt_gen.cost.analytic import position_bias_elements
    from cmt_gen.cost.detector import detector_cost
    from cmt_gen.cost.hook_convention import detector_hook_count

    if counter not in COUNTERS:
        raise CmtGenError(f"unknown counter {counter!r}; choose one of {', '.join(COUNTERS)}", field="counter")
    spec = _load(spec, overrides)
    cost = detector_cost(spec)
    h, w = cost.height, cost.width
    result = DetectorCheck(spec.name, spec.kind.value, counter, h, w, cost.params, cost.macs, cost.attention_macs,
                           cost.macs_without_attention, detector_hook_count(spec),
                           sum(position_bias_elements(spec.backbone, h, w)),
                           {p.name: (p.params, p.macs) for p in cost.parts})
    if counter != "analytic":
        _trace(result, spec, force)
    ref = spec.reference
    if ref is not None:
        if ref.params is not None:
            result.checks.append(_paper_check(spec, "params", result.params))
        if ref.macs is not None:
            check = _paper_check(spec, "macs", getattr(result, PAPER_MACS))
            check.note = check.note.replace("MACs:", "FLOPs (mmcv's convention):", 1).replace(" MACs (", " (", 1)
            result.checks.append(check)
            result.notes.append(_convention_note(result, check))
    settle_verdict(result, spec.budget, _counters_disagree(result))
    return result


def _convention_note(result: DetectorCheck, check: FigureCheck) -> str:
    """How each convention stands against the printed FLOPs: only mmcv's lands on it (or say that it does not)."""
    low, high = check.low or 0.0, check.high

    def verdict(value: int) -> str:
        return "within" if low <= value <= high else f"{(value - (low + high) / 2) / ((low + high) / 2):+.2%}"

    return (f"printed FLOPs {check.target}: mmcv convention {result.hook_count / 1e9:.2f}G "
            f"({verdict(result.hook_count)}), MACs w/o attention {result.macs_without_attention / 1e9:.2f}G "
            f"({verdict(result.macs_without_attention)}), all MACs {result.macs / 1e9:.2f}G ({verdict(result.macs)}: "
            f"the attention matmuls, {result.attention_macs / 1e9:.2f}G, are invisible to a hook counter)")


def convention_rows() -> list:
    """ResNet-101 with the bundled CMT-S detectors' FPN and heads (mmdetection's 1x configs) beside Tables 7 and 8's
    ResNet-101 rows, in each convention (`cost.peers78`): how the conventions used here were identified."""
    from cmt_gen.cost.peers78 import resnet101_rows
    from cmt_gen.spec.detector_loading import load_detector_spec

    return resnet101_rows([load_detector_spec("cmt_s_retinanet"), load_detector_spec("cmt_s_mask_rcnn")])


def _trace(result: DetectorCheck, spec: DetectorSpec, force: bool) -> None:
    """fvcore on the built detector's MAC-bearing path (`detection.build.counting_forward`)."""
    from cmt_gen.detection.counting import traced_detector_cost

    result.fvcore_params, result.fvcore_macs = traced_detector_cost(spec, force)
    if result.counter == "fvcore":
        result.params, result.macs = result.fvcore_params, result.fvcore_macs


def _counters_disagree(result: DetectorCheck) -> bool:
    if result.counter != "both":
        return False
    analytic_macs = result.macs
    close = abs(analytic_macs - result.fvcore_macs) <= COUNTER_AGREEMENT * analytic_macs
    if result.params == result.fvcore_params and close:
        return False
    result.notes.append(f"analytic count {result.params:,} params / {analytic_macs:,} MACs, fvcore "
                        f"{result.fvcore_params:,} / {result.fvcore_macs:,}: the two descriptions disagree")
    return True


def check_detectors(sources: list[Any], counter: str = "analytic", *, overrides: Any = None,
                    force: bool = False) -> list[DetectorCheck]:
    """`check_detector` for several specs; every spec is loaded first, so an input error stops before any count."""
    specs = [_load(s, overrides) for s in sources]
    return [check_detector(s, counter, force=force) for s in specs]
