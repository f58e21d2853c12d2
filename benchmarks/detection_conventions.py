"""Which FLOPs convention Tables 7 and 8 print: every reference detector counted three ways, beside the tables.

For CMT-S, ResNet-101 and Swin-T under RetinaNet and Mask R-CNN (PVT-S is
skipped: timm has no PVT v1), at mmdetection's input (H=1280, W=800), it
prints params (all, and those requiring gradients, mmcv's count) and FLOPs as
(a) fvcore MACs of conv/linear/matmul with attention, (b) the same without the
attention matmuls, (c) mmcv's module-hook counter; the printed figures; and
which conventions land in the printed figures' rounding intervals. Run by hand
(about a minute per row on two cores; mmcv's count alone with --mmcv-only):

    python benchmarks/detection_conventions.py [--mmcv-only] [--transposed] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def _g(value: int | None, scale: float = 1e9, digits: int = 2, unit: str = "") -> str:
    return "-" if value is None else f"{value / scale:.{digits}f}{unit}"


def _mark(row, convention: str) -> str:
    inside = row.within(convention)
    return "" if inside is None else ("*" if inside else " ")


def print_table(rows: list) -> None:
    """One line per detector: each count with '*' where it rounds to the printed figure."""
    header = (f"{'detector':<24}{'params':>9}{'trainable':>11}{'printed':>9} | {'(a) MACs':>10}{'(b) w/o att':>12}"
              f"{'(c) mmcv':>10}{'printed':>9} | matches")
    print(header)
    print("-" * len(header))
    for r in rows:
        name = f"{r.backbone} {r.detector}"
        if r.skipped:
            print(f"{name:<24} skipped: {r.skipped}")
            continue
        print(f"{name:<24}{_g(r.params, 1e6, unit='M')}{_mark(r, 'params')}".ljust(34)
              + f"{_g(r.trainable_params, 1e6, unit='M')}{_mark(r, 'trainable_params')}".rjust(11)
              + f"{r.printed_params:>9} | "
              + f"{_g(r.macs, unit='G')}{_mark(r, 'macs')}".rjust(10)
              + f"{_g(r.macs_without_attention, unit='G')}{_mark(r, 'macs_without_attention')}".rjust(12)
              + f"{_g(r.mmcv, unit='G')}{_mark(r, 'mmcv')}".rjust(10)
              + f"{r.printed_flops:>9} | {', '.join(r.matches()) or 'none'}")
    print("\n'*': inside the printed figure's rounding interval. mmcv's count per rule (G):")
    for r in rows:
        if not r.skipped:
            rules = ", ".join(f"{k} {v / 1e9:.2f}" for k, v in r.mmcv_by_rule.items() if v)
            extra = f"; at {r.width}x{r.height}: {_g(r.transposed_mmcv)}G" if r.transposed_mmcv is not None else ""
            att = f"; attention {_g(r.attention_macs)}G" if r.attention_macs is not None else ""
            delta = f"; mmdetection's ReLU modules {r.mmdet_relu_delta:+,}" if r.mmdet_relu_delta else ""
            ops = f"; fvcore uncounted ops {sorted(r.uncounted_ops) or 'none'}" if r.macs is not None else ""
            print(f"  {r.backbone} {r.detector}: {rules}{att}{delta}{extra}{ops}; {r.seconds:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mmcv-only", action="store_true", help="skip fvcore's trace (conventions a and b)")
    parser.add_argument("--transposed", action="store_true", help="also mmcv's count at 800x1280 (H x W swapped)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the rows as JSON here")
    args = parser.parse_args(argv)

    import torch

    from cmt_gen.detection.conventions import convention_rows

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = convention_rows(fvcore=not args.mmcv_only, transposed=args.transposed,
                           progress=lambda r: print(f"  counted {r.backbone} {r.detector} ({r.seconds:.0f} s)",
                                                    file=sys.stderr, flush=True))
    print(f"input H x W = {rows[0].height} x {rows[0].width} (mmdetection get_flops --shape 1280 800); "
          f"{time.perf_counter() - start:.0f} s, {args.threads} threads\n")
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.as_dict() for r in rows], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
