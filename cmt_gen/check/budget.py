"""`check_budget(spec)`: a spec's parameters and MACs against the paper's figures or the user's budget.

Tolerances follow what was printed, never a percentage chosen to make a row
pass: Table 2's `0.6B` (0.6G) stands for 0.55G to 0.65G, `25.1M` for 25.05M to
25.15M. A user's `budget:` figure is a target within its tolerance, a
min..max range, or (a plain figure) an upper limit. Two kinds of documented
deviation from the paper are reported as such, visibly and with both numbers,
instead of as a match or a plain failure:

- a provenance line starting with "Paper/code discrepancy" that names the
  figure ("param..." or "FLOPs"/"MACs"): the released code and the paper
  disagree (CMT-S: Table 2 prints 25.1M, the released model has 26.26M);
- a provenance line starting with "Derived configuration": the paper never
  released this configuration (CMT-L) and cmt-gen derived one to the paper's
  figures; the derivation must stay within `DERIVED_TOLERANCE`, stated in the
  output, or the row fails like any other.

Exit codes (`exit_code`), as the issue set them: 0 all within reference or
budget; 1 any spec outside its budget, off the paper without a documented reason,
or counted differently by two counters; 2 is left to input errors. A
documented deviation exits 0 but is never silent: its row says
"paper/code discrepancy" or "derived config" with both numbers, and
`strict=True` (`cmt-gen check --strict`) makes it exit 1. With `counter="analytic"` nothing here imports torch.
`check_budgets(specs, ...)` checks several specs, the traced counters in
parallel worker processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from cmt_gen.errors import CmtGenError
from cmt_gen.spec.quantity import format_in_unit, parse_quantity, printed_interval
from cmt_gen.spec.schema import Budget, BudgetLimit, CMTSpec, design_problems

COUNTERS = ("analytic", "fvcore", "both")
DISCREPANCY_PREFIX = "paper/code discrepancy"
DERIVED_PREFIX = "derived configuration"
DERIVED_TOLERANCE = {"params": 0.01, "macs": 0.02}  # what a derived configuration must reach
COUNTER_AGREEMENT = 1e-3  # analytic vs fvcore MACs, relative

MACS_UNIT = ("MACs = multiply-accumulates of convolutions, linear layers and attention matmuls "
             "(what Table 2 calls FLOPs; torch's FlopCounterMode reports 2 FLOPs per MAC)")
FVCORE_UNIT = "fvcore total = fvcore's own count: these MACs plus batch/layer norms and pooling"
TOLERANCE_RULE = ("paper figures are checked to the precision printed (0.6G means 0.55G to 0.65G, "
                  "25.1M means 25.05M to 25.15M); a budget target passes within its tolerance, a range "
                  "between its ends, a single figure as a maximum")

# Verdicts, worst first: a spec's verdict is the worst of its figures'.
COUNTERS_DISAGREE = "counters disagree"
OVER_BUDGET = "outside budget"
DIFFERS = "differs from paper"
DISCREPANCY = "paper/code discrepancy"
DERIVED = "derived config"
WITHIN_BUDGET = "within budget"
MATCHES = "matches paper"
NO_REFERENCE = "no reference"
_SEVERITY = [COUNTERS_DISAGREE, OVER_BUDGET, DIFFERS, DISCREPANCY, DERIVED, WITHIN_BUDGET, MATCHES, NO_REFERENCE]
FAILING = {COUNTERS_DISAGREE, OVER_BUDGET, DIFFERS}
DOCUMENTED = {DISCREPANCY, DERIVED}


@dataclass
class FigureCheck:
    """One figure (params or MACs) against one target (the paper or the user's budget)."""

    quantity: str  # "params" | "macs"
    against: str  # "paper" | "budget"
    ours: int
    target: str  # as printed ("25.1M") or the budget ("30M")
    low: float | None  # lowest value that passes (None: no lower limit)
    high: float
    delta_pct: float  # ours vs the target's nominal value
    status: str  # a verdict from _SEVERITY
    note: str = ""


class Verdicts:
    """What every checked result (a backbone's `BudgetCheck`, a detector's) answers from its `checks` and
    `verdict`; the dataclasses that mix it in hold those fields."""

    checks: list[FigureCheck]
    verdict: str

    @property
    def failed(self) -> bool:
        return self.verdict in FAILING

    @property
    def documented(self) -> bool:
        return self.verdict in DOCUMENTED

    def check(self, quantity: str, against: str = "paper") -> FigureCheck | None:
        return next((c for c in self.checks if c.quantity == quantity and c.against == against), None)

    def as_dict(self) -> dict:
        return {**asdict(self), "failed": self.failed, "documented_deviation": self.documented}


@dataclass
class BudgetCheck(Verdicts):
    """The result of checking one spec: counts, per-figure checks, one verdict."""

    spec: str
    counter: str
    height: int
    width: int
    params: int
    macs: int
    analytic_params: int | None = None
    analytic_macs: int | None = None
    fvcore_params: int | None = None
    fvcore_macs: int | None = None
    fvcore_total: int | None = None
    checks: list[FigureCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    verdict: str = NO_REFERENCE


def exit_code(results: list[BudgetCheck], strict: bool = False) -> int:
    """0 all fine (documented deviations included unless `strict`); 1 any failure."""
    if any(r.failed for r in results):
        return 1
    if strict and any(r.documented for r in results):
        return 1
    return 0


def check_budget(spec: Any, counter: str = "analytic", *, overrides: Any = None, force: bool = False) -> BudgetCheck:
    """Count a spec (analytic, fvcore or both) and check it against its reference and budget.

    `spec` is a CMTSpec, a bundled name, a path or a dict. Paper figures are
    checked at the reference's resolution (the one Table 2 measured), budgets
    at the same counts. `force` lets fvcore trace a model the memory guard
    would refuse.
    """
    if counter not in COUNTERS:
        raise CmtGenError(f"unknown counter {counter!r}; choose one of {', '.join(COUNTERS)}", field="counter")
    if not isinstance(spec, CMTSpec) or overrides:
        from cmt_gen.spec.loading import load_spec

        if isinstance(spec, CMTSpec):
            raise CmtGenError("overrides apply when loading a spec; pass a name, path or dict", source=spec.name)
        spec = load_spec(spec, overrides)
    ref = spec.reference
    size = ref.resolution if ref is not None and ref.resolution else spec.resolution
    problems = design_problems(spec, size, size)
    if problems:
        raise CmtGenError(problems[0][1] + f" (the reference resolution {size})", source=spec.name,
                          field=problems[0][0])
    result = BudgetCheck(spec.name, counter, size, size, 0, 0)
    if size != spec.resolution:
        result.notes.append(f"counted at the reference's {size}x{size}, not the spec's {spec.resolution}")
    _count(result, spec, counter, force)
    if ref is not None:
        for quantity in ("params", "macs"):
            if getattr(ref, quantity) is not None:
                result.checks.append(_paper_check(spec, quantity, getattr(result, quantity)))
    settle_verdict(result, spec.budget, _counters_disagree(result))
    if ref is not None and result.verdict != DERIVED and _documented_line(spec, DERIVED_PREFIX) is not None:
        result.notes.append("derived configuration, not the authors': the paper's figures are the targets "
                            "it was fitted to, not measurements of this model")
    return result


def settle_verdict(result: Verdicts, budget: Budget | None, counters_disagree: bool) -> None:
    """The budget's figures checked, the worst status as the verdict, then each check's note (in that order)."""
    if budget is not None:
        for quantity in ("params", "macs"):
            limit = getattr(budget, quantity)
            if limit is not None:
                result.checks.append(_budget_check(quantity, getattr(result, quantity), limit))
    statuses = [c.status for c in result.checks] + ([COUNTERS_DISAGREE] if counters_disagree else [])
    if statuses:
        result.verdict = min(statuses, key=_SEVERITY.index)
    result.notes += [c.note for c in result.checks if c.note]  # type: ignore[attr-defined]


def check_budgets(sources: list[Any], counter: str = "analytic", *, overrides: Any = None, force: bool = False,
                  workers: int | None = None, progress: Callable[[str], None] | None = None,
                  threads: int | None = None) -> list[BudgetCheck]:
    """`check_budget` for several specs, in order; traced counters run in parallel processes.

    Every spec is loaded (and so validated) first, so an input error stops the
    run before any model is built. fvcore's tracer is single-threaded Python
    and C++ for most of its time, so one process per spec (largest first, each
    with its share of the CPUs' threads) is what shortens a multi-spec traced
    check; the analytic counter needs no torch and runs here. `progress` hears
    one line per spec traced (seconds per model), only once it is done, so a
    refusal (a model too large to trace) stays the only line. `threads`: the CPU
    threads to share out (default: every core this process may use).
    """
    from cmt_gen.spec.loading import load_spec

    specs = [s if isinstance(s, CMTSpec) and not overrides else load_spec(s, overrides) for s in sources]
    if counter not in COUNTERS:
        raise CmtGenError(f"unknown counter {counter!r}; choose one of {', '.join(COUNTERS)}", field="counter")
    cpus = threads or _cpu_count()
    workers = min(len(specs), cpus) if workers is None else max(1, workers)
    say = progress if progress is not None and counter != "analytic" else (lambda _text: None)
    if counter == "analytic" or workers <= 1 or len(specs) <= 1:
        results = []
        for k, spec in enumerate(specs, 1):
            results.append(check_budget(spec, counter, force=force))
            say(f"traced {spec.name} ({k}/{len(specs)})")
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from cmt_gen.cost.analytic import analytic_cost

    order = sorted(range(len(specs)), key=lambda i: -analytic_cost(specs[i]).macs)
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold OpenMP threads
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_threads,
                             initargs=(max(1, cpus // workers),)) as pool:
        futures = {pool.submit(_check_in_worker, specs[i], counter, force): i for i in order}
        outcomes = {}
        for future in as_completed(futures):
            outcomes[futures[future]] = future.result()
            say(f"traced {specs[futures[future]].name} ({len(outcomes)}/{len(specs)})")
    results = []
    for i in range(len(specs)):
        outcome = outcomes[i]
        if isinstance(outcome, tuple):  # a CmtGenError raised in the worker, rebuilt whole
            rule, source, field_name = outcome
            raise CmtGenError(rule, source=source, field=field_name)
        results.append(outcome)
    return results


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _worker_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _check_in_worker(spec: CMTSpec, counter: str, force: bool) -> BudgetCheck | tuple:
    try:
        return check_budget(spec, counter, force=force)
    except CmtGenError as exc:
        return exc.rule, exc.source, exc.field


# ---------------------------------------------------------------- counting

def _count(result: BudgetCheck, spec: CMTSpec, counter: str, force: bool) -> None:
    if counter in ("analytic", "both"):
        from cmt_gen.cost.analytic import analytic_cost

        cost = analytic_cost(spec, result.height, result.width)
        result.analytic_params, result.analytic_macs = cost.params, cost.macs
    if counter in ("fvcore", "both"):
        from cmt_gen.check.measured import measured_cost

        measured = measured_cost(spec, result.height, result.width, cross_check=False, force=force)
        result.fvcore_params, result.fvcore_macs = measured.params, measured.macs
        result.fvcore_total = measured.fvcore_total
    if counter == "fvcore":
        result.params, result.macs = result.fvcore_params, result.fvcore_macs
    else:
        result.params, result.macs = result.analytic_params, result.analytic_macs


def _counters_disagree(result: BudgetCheck) -> bool:
    if result.counter != "both":
        return False
    disagree = result.analytic_params != result.fvcore_params or (
        abs(result.analytic_macs - result.fvcore_macs) > COUNTER_AGREEMENT * max(result.analytic_macs, 1)
    )
    if disagree:
        result.notes.append(
            f"analytic count {result.analytic_params:,} params / {result.analytic_macs:,} MACs, fvcore "
            f"{result.fvcore_params:,} / {result.fvcore_macs:,}: the two descriptions of the model disagree"
        )
    return disagree


# ---------------------------------------------------------------- checks

def _delta(ours: float, nominal: float) -> float:
    return (ours - nominal) / nominal * 100 if nominal else 0.0


def _label(quantity: str) -> str:
    return "params" if quantity == "params" else "MACs"


def _documented_line(spec: CMTSpec, prefix: str, quantity: str | None = None) -> str | None:
    """A provenance line starting with `prefix` (and, for a discrepancy, naming the figure)."""
    words = ("param",) if quantity == "params" else ("flop", "mac")
    for line in spec.provenance:
        text = line.strip().lower()
        if text.startswith(prefix) and (quantity is None or any(w in text for w in words)):
            return line.strip()
    return None


def _paper_check(spec: CMTSpec, quantity: str, ours: int) -> FigureCheck:
    printed = getattr(spec.reference, quantity)
    low, high = printed_interval(printed)
    nominal = (low + high) / 2
    delta = _delta(ours, nominal)
    check = FigureCheck(quantity, "paper", ours, printed, low, high, delta, MATCHES)
    if low <= ours <= high:
        return check
    what = (f"{spec.reference.source or 'the paper'} prints {printed} {_label(quantity)} "
            f"({format_in_unit(low, quantity, 3)} to {format_in_unit(high, quantity, 3)}), "
            f"this spec counts {ours:,} ({delta:+.2f}%)")
    line = _documented_line(spec, DISCREPANCY_PREFIX, quantity)
    if line is not None:
        check.status = DISCREPANCY
        check.note = f"{_label(quantity)}: paper/code discrepancy: {what}; documented: {line!r}"
        return check
    limit = DERIVED_TOLERANCE[quantity]
    if _documented_line(spec, DERIVED_PREFIX) is not None and abs(delta) <= 100 * limit:
        check.status = DERIVED
        check.note = (f"{_label(quantity)}: derived configuration, not the authors': {what}; "
                      f"a derived configuration must stay within {limit:.0%} of the paper's figure")
        return check
    check.status = DIFFERS
    check.note = f"{_label(quantity)}: differs from the paper: {what}"
    return check


def _budget_check(quantity: str, ours: int, limit: BudgetLimit) -> FigureCheck:
    """Against the user's budget as written: a target within its tolerance, or a min/max range."""
    low, high = limit.bounds(quantity)
    if limit.target is not None:
        text = f"{limit.target} ±{limit.tolerance_text(quantity)}"
        delta = _delta(ours, parse_quantity(limit.target))
    else:
        text = (f"{limit.min}..{limit.max}" if limit.min and limit.max
                else f"<= {limit.max}" if limit.max else f">= {limit.min}")
        delta = _delta(ours, high) if ours > high or limit.min is None else _delta(ours, max(low, 1.0))
    if low <= ours <= high:
        return FigureCheck(quantity, "budget", ours, text, low or None, high, delta, WITHIN_BUDGET)
    side = "over" if ours > high else "under"
    note = f"{_label(quantity)}: {side} budget: {ours:,} is outside the budget of {text} ({delta:+.2f}%)"
    return FigureCheck(quantity, "budget", ours, text, low or None, high, delta, OVER_BUDGET, note)
