"""`cmt-gen check` for detector specs: the table against Tables 7 and 8, with every deviation's numbers."""

from __future__ import annotations

from cmt_gen.cli.common import console, literal, one_line, verdict_cell


def _cells(result, quantity: str) -> tuple[str, str]:
    checks = [c for c in result.checks if c.quantity == quantity]
    if not checks:
        return "-", "-"
    targets = [f"{c.target} (budget)" if c.against == "budget" else c.target for c in checks]
    return "\n".join(literal(t) for t in targets), "\n".join(f"{c.delta_pct:+.2f}%" for c in checks)


def render_detectors(results, counter: str, code: int, exit_help: str) -> None:
    from rich.table import Table

    from cmt_gen.check.budget import TOLERANCE_RULE
    from cmt_gen.check.detector import DETECTOR_MACS_UNIT
    from cmt_gen.cost.tables78 import SWAPPED_NOTE

    table = Table(title=f"Detectors against Tables 7 and 8 ({counter} counter)", title_justify="left")
    columns = ["spec", "kind", "input (WxH)", "params", "paper", "Δ params", "MACs", "attention",
               "MACs w/o attention", "mmcv FLOPs", "paper FLOPs", "Δ FLOPs"]
    if counter == "both":
        columns.append("fvcore MACs")
    columns.append("verdict")
    for column in columns:
        table.add_column(column, justify="left" if column in ("spec", "kind", "verdict") else "right")
    for r in results:
        params_target, params_delta = _cells(r, "params")
        macs_target, macs_delta = _cells(r, "macs")
        row = [literal(r.spec), r.kind, f"{r.width}x{r.height}", f"{r.params / 1e6:.2f}M", params_target,
               params_delta, f"{r.macs / 1e9:.1f}G", f"{r.attention_macs / 1e9:.1f}G",
               f"{r.macs_without_attention / 1e9:.1f}G", f"{r.hook_count / 1e9:.2f}G", macs_target, macs_delta]
        if counter == "both":
            row.append(f"{r.fvcore_macs / 1e9:.1f}G")
        row.append(verdict_cell(r))
        table.add_row(*row)
    console.print(table)
    console.print(DETECTOR_MACS_UNIT + ".", soft_wrap=True)
    console.print(SWAPPED_NOTE + f". Tolerance: {TOLERANCE_RULE}.", soft_wrap=True)
    for r in results:
        name = one_line(r.spec)
        parts = ", ".join(f"{part} {params / 1e6:.2f}M / {macs / 1e9:.1f}G" for part, (params, macs) in r.parts.items())
        console.print(f"  {name}: {parts}", markup=False, highlight=False, soft_wrap=True)
        console.print(f"  {name}: position biases at {r.width}x{r.height}: {r.bias_values / 1e6:.1f}M values "
                      f"({r.bias_values * 4 / 2**20:,.0f} MiB in float32), made for each input size (kept per size "
                      "in eval mode without gradients)",
                      markup=False, highlight=False, soft_wrap=True)
        for note in r.notes:
            console.print(f"  {name}: {one_line(note)}", markup=False, highlight=False, soft_wrap=True)
    if any(r.check("macs") is not None for r in results):
        render_conventions()
    console.print(f"Exit code {code}. ({exit_help.removeprefix('Exit code: ')})", soft_wrap=True)


def convention_records() -> list[dict]:
    from cmt_gen.check.detector import convention_rows

    return [{"detector": r.detector, "backbone": r.backbone, "params": r.params, "trainable_params": r.trainable_params,
             "macs": r.macs, "mmcv_flops": r.hook_count, "printed_params": r.row.params, "printed_flops": r.row.flops,
             "matches": r.matches()} for r in convention_rows()]


def render_conventions() -> None:
    """The ResNet-101 rows, counted here, in each convention: which one the tables print."""
    from rich.table import Table

    table = Table(title="Which convention Tables 7 and 8 print: ResNet-101 (torchvision's) with the same FPN and "
                        "heads, counted here", title_justify="left")
    for column in ("detector", "params (all)", "params (trainable)", "paper", "MACs", "mmcv FLOPs", "paper FLOPs"):
        table.add_column(column, justify="left" if column == "detector" else "right")
    records = convention_records()

    def mark(value: str, ok: bool) -> str:
        return f"[green]{value} ✓[/]" if ok else f"{value} ✗"

    for r in records:
        ok = r["matches"]
        table.add_row(f"{r['detector']} ResNet-101", mark(f"{r['params'] / 1e6:.2f}M", ok["params (all)"]),
                      mark(f"{r['trainable_params'] / 1e6:.2f}M", ok["params (trainable, mmcv)"]), r["printed_params"],
                      mark(f"{r['macs'] / 1e9:.2f}G", ok["MACs (conv, linear)"]),
                      mark(f"{r['mmcv_flops'] / 1e9:.2f}G", ok["FLOPs (mmcv hooks)"]), r["printed_flops"])
    console.print(table)
    landing = [name for name in records[0]["matches"] if all(r["matches"][name] for r in records)]
    console.print("✓ = rounds to the printed figure. Conventions that land on every row: "
                  f"{', '.join(landing) or 'none'} (trainable: mmdetection freezes ResNet's stem and first stage; "
                  "mmcv hooks: conv and linear MACs without attention matmuls, plus bias adds, norms and ReLUs). "
                  "The CMT rows' FLOPs are checked in mmcv's convention; CMT-S is counted with every parameter "
                  "(no frozen stages).", soft_wrap=True)
