"""Side-by-side comparison of specs, stage by stage, with profile results and Table 2 points.

Everything here is torch-free: costs are `analytic_cost`'s, throughput comes
from a `cmt-gen profile --json` file, and the paper's points from
`cmt_gen.cost.table2` (or, without it, the bundled specs' reference figures).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmt_gen.cost.analytic import ModelCost, analytic_cost
from cmt_gen.errors import CmtGenError
from cmt_gen.spec.quantity import format_macs, format_params
from cmt_gen.spec.schema import BlockOptions, CMTSpec

NAME_KEYS = ("name", "spec", "spec_name", "model", "variant")
THROUGHPUT_KEYS = ("images_per_s", "images_per_second", "throughput", "images_per_sec", "img_per_s")
SUMMARY_KEYS = ("median", "mean", "value", "images_per_second", "throughput")
MAX_PROFILE_BYTES = 64 << 20  # a profile of hundreds of models is a few MB
MAX_PROFILE_DEPTH = 32  # `cmt-gen profile --json` nests 4 deep


class ProfileError(CmtGenError):
    """A profile results file that cannot be read or matched."""


@dataclass
class Row:
    """One compared field: its display values per spec and whether they differ."""

    section: str
    label: str
    values: list[str]
    raw: list[Any]

    @property
    def differs(self) -> bool:
        present = [v for v in self.raw if v is not None]
        return len(set(map(repr, present))) > 1 or (0 < len(present) < len(self.raw))

    def differs_from_first(self, index: int) -> bool:
        return repr(self.raw[index]) != repr(self.raw[0])


@dataclass
class Throughput:
    """Best measured images/s for one spec in a profile file, with what it was measured on."""

    images_per_second: float
    details: str = ""
    device: str | None = None  # e.g. "cpu (AMD EPYC)" or "cuda:0 (NVIDIA H100)"
    precision: str | None = None
    noisy: bool = False  # cmt-gen profile marked it: its repeats still spread too much (`spread`) after extending
    spread: float | None = None  # half the min-max range of the repeats over their median

    def text(self) -> str:
        """'420.0', or '~420.0 noisy' as cmt-gen profile prints a noisy row."""
        return f"~{self.images_per_second:,.1f} noisy" if self.noisy else f"{self.images_per_second:,.1f}"


def speed_title(speeds: Sequence[Throughput | None]) -> str:
    """Colour-bar title naming where and how the speeds were measured: 'images/s, cpu (AMD EPYC), fp32'."""
    devices = sorted({t.device for t in speeds if t and t.device})
    precisions = sorted({t.precision for t in speeds if t and t.precision})
    where = " / ".join(devices) or "device not recorded"
    how = " / ".join(precisions) or "precision not recorded"
    return f"measured images/s\n{where}, {how}"


@dataclass
class Comparison:
    specs: list[CMTSpec]
    labels: list[str]
    costs: list[ModelCost]
    rows: list[Row]
    throughput: list[Throughput | None] = field(default_factory=list)

    @property
    def noisy(self) -> list[str]:
        """Labels of the specs whose profiled speed cmt-gen profile marked noisy."""
        return [label for label, t in zip(self.labels, self.throughput, strict=False) if t is not None and t.noisy]

    def as_dict(self) -> dict:
        record = {
            "specs": self.labels,
            "rows": [{"section": r.section, "field": r.label, "values": r.raw, "differs": r.differs}
                     for r in self.rows],
        }
        if self.throughput:
            record["profile"] = [None if t is None else {"images_per_s": t.images_per_second, "noisy": t.noisy,
                                                         "spread": t.spread, "device": t.device,
                                                         "precision": t.precision}
                                 for t in self.throughput]
        return record


# ---------------------------------------------------------------- profile results

def _norm(name: object) -> str:
    return str(name).strip().lower().replace("-", "_")


def _number(value: Any) -> float | None:
    if isinstance(value, Mapping):
        for key in SUMMARY_KEYS:
            if key in value:
                return _number(value[key])
        return None
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer of 10^400 img/s
        return None
    return number if math.isfinite(number) and number > 0 else None


def _records(data: Any) -> list[Mapping]:
    if isinstance(data, Mapping):
        for key in ("results", "records", "profiles", "runs"):
            if isinstance(data.get(key), list):
                return [r for r in data[key] if isinstance(r, Mapping)]
        return [data]
    if isinstance(data, list):
        return [r for r in data if isinstance(r, Mapping)]
    return []


def _depth(data: Any, limit: int) -> int:
    """Nesting depth of parsed JSON, without recursion; stops counting past `limit`."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if level <= limit:
                stack += [(v, level + 1) for v in (item.values() if isinstance(item, dict) else item)]
    return deepest


def load_profile(path: str | Path) -> dict[str, Throughput]:
    """Images/s per spec name from `cmt-gen profile --json` output (best record per name).

    Accepts a list of records or an object holding one under results/records;
    a record (`ProfileResult.as_dict()`) names its spec under name/spec and its
    speed under images_per_s, images_per_second or throughput (a number, or a
    mapping with a median). Failed records (with an `error`) are skipped. A record
    `cmt-gen profile` marked `noisy` keeps the mark (and its `spread`).
    """
    from cmt_gen.files import read_bounded

    path = Path(path)
    raw = read_bounded(path, MAX_PROFILE_BYTES, ProfileError)
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ProfileError("not UTF-8 text; a profile file is JSON", source=str(path)) from None
    except json.JSONDecodeError as exc:
        raise ProfileError(f"not JSON (line {exc.lineno}): {exc.msg}", source=str(path)) from None
    except RecursionError:
        raise ProfileError(f"JSON nests deeper than {MAX_PROFILE_DEPTH} levels", source=str(path)) from None
    except ValueError:  # Python's limit on the digits of one integer
        raise ProfileError("a number has thousands of digits; a profile file holds measured figures",
                           source=str(path)) from None
    if _depth(data, MAX_PROFILE_DEPTH) > MAX_PROFILE_DEPTH:
        raise ProfileError(f"JSON nests deeper than {MAX_PROFILE_DEPTH} levels", source=str(path))
    found: dict[str, Throughput] = {}
    predictions = 0
    env = data.get("env") if isinstance(data, Mapping) and isinstance(data.get("env"), Mapping) else {}
    for record in _records(data):
        if record.get("error"):
            continue  # a failed measurement has no speed to show
        name = next((record[k] for k in NAME_KEYS if isinstance(record.get(k), str)), None)
        if name is None and isinstance(record.get("spec"), Mapping):
            name = record["spec"].get("name")
        if record.get("source") == "predicted":  # cmt-gen predict's rows: only what --measure measured counts
            predictions += 1
            speed = _number(record.get("measured_images_per_s"))
        else:
            speed = next((s for s in (_number(record.get(k)) for k in THROUGHPUT_KEYS) if s is not None), None)
        if name is None or speed is None:
            continue
        settings = record.get("settings") if isinstance(record.get("settings"), Mapping) else {}
        facts = {**{k: settings.get(k) for k in ("device", "precision")}, **{k: record.get(k) for k in
                 ("device", "precision", "batch_size")}}
        details = ", ".join(f"{k} {v}" for k, v in facts.items() if isinstance(v, (str, int, float)))
        device = settings.get("device") or record.get("device")
        if device and env.get("device_name"):
            device = f"{device} ({env['device_name']})"
        known = found.get(_norm(name))
        if known is None or speed > known.images_per_second:
            spread = record.get("spread")
            spread = float(spread) if isinstance(spread, (int, float)) and not isinstance(spread, bool) \
                and math.isfinite(spread) and spread >= 0 else None
            found[_norm(name)] = Throughput(speed, details, device, settings.get("precision") or
                                            record.get("precision"), record.get("noisy") is True, spread)
    if not found and predictions:
        raise ProfileError("holds predictions (cmt-gen predict), not measurements: use cmt-gen profile --json, "
                           "or predict --measure", source=str(path))
    if not found:
        raise ProfileError("no record with a spec name and images_per_s (or images_per_second, throughput)",
                           source=str(path))
    return found


def match_throughput(profile: Mapping[str, Throughput], spec: CMTSpec, label: str) -> Throughput | None:
    for key in (spec.name, label, Path(label).stem):
        hit = profile.get(_norm(key))
        if hit is not None:
            return hit
    return None


# ---------------------------------------------------------------- Table 2 points

@dataclass
class ReferencePoint:
    """A published model: name, parameters and MACs (Table 2's '# FLOPs')."""

    name: str
    params: float
    macs: float
    resolution: int | None = None
    top1: float | None = None

    @property
    def is_cmt(self) -> bool:
        return self.name.lower().startswith("cmt")


def table2_points() -> list[ReferencePoint]:
    """The paper's Table 2 models (`cmt_gen.cost.table2`) as numbers to plot."""
    from cmt_gen.cost.table2 import rows

    return [ReferencePoint(r.model, r.value("params"), r.value("flops"), r.resolution, r.value("top1"))
            for r in rows()]


# ---------------------------------------------------------------- comparison rows

def _stage_value(spec: CMTSpec, i: int, getter: Callable[[Any], Any]) -> Any:
    return getter(spec.stages[i]) if i < len(spec.stages) else None


def compare_specs(sources: Sequence[CMTSpec | str | Path | Mapping],
                  profile: str | Path | Mapping[str, Throughput] | None = None,
                  overrides: Sequence[str] | None = None) -> Comparison:
    """Load specs and lay them side by side: layout, cost per stage, totals, paper figures, speed.

    `overrides` (`--set`) apply to every spec loaded from a name, path or dict.
    """
    from cmt_gen.spec.loading import load_spec

    if not sources:
        raise CmtGenError("give at least one spec to compare", field="specs")
    specs = [s if isinstance(s, CMTSpec) else load_spec(s, overrides) for s in sources]
    labels = [s.name if isinstance(src, (CMTSpec, Mapping)) else str(src) for s, src in zip(specs, sources,
                                                                                            strict=True)]
    costs = [analytic_cost(s) for s in specs]
    rows: list[Row] = []

    def add(section: str, label: str, raw: list[Any], show: Callable[[Any], str] = str) -> None:
        rows.append(Row(section, label, ["-" if v is None else show(v) for v in raw], raw))

    count = lambda v: f"{v:,}"  # noqa: E731
    add("spec", "name", [s.name for s in specs])
    add("input", "resolution", [s.resolution for s in specs])
    add("stem", "channels", [s.stem.channels for s in specs])
    add("stem", "params", [c.part("stem").params for c in costs], count)
    for i in range(max(len(s.stages) for s in specs)):
        section = f"stage {i}"
        add(section, "feature map", [f"{s.stage_sizes()[i][0]}x{s.stage_sizes()[i][1]}" if i < len(s.stages)
                                     else None for s in specs])
        add(section, "channels", [_stage_value(s, i, lambda st: st.channels) for s in specs])
        add(section, "depth", [_stage_value(s, i, lambda st: st.depth) for s in specs])
        add(section, "heads", [_stage_value(s, i, lambda st: st.heads) for s in specs])
        add(section, "reduction", [_stage_value(s, i, lambda st: st.reduction) for s in specs])
        add(section, "expansion (hidden)", [_stage_value(s, i, lambda st: (st.expansion, st.hidden)) for s in specs],
            lambda v: f"{v[0]:g} ({v[1]})")
        add(section, "params", [c.part(f"stage{i}").params if i < len(c.stages) else None for c in costs], count)
        add(section, "MACs", [c.part(f"stage{i}").macs if i < len(c.stages) else None for c in costs],
            lambda v: format_macs(v, 3))
    add("head", "fc channels", [s.head.fc_channels for s in specs])
    add("head", "classes", [s.num_classes for s in specs])
    add("head", "dropout", [s.head.dropout for s in specs])
    add("options", "drop_path", [s.drop_path for s in specs])
    add("options", "qkv_bias", [s.qkv_bias for s in specs])
    for option in BlockOptions.model_fields:
        add("options", option, [_option(getattr(s.block, option)) for s in specs])
    add("total", "depth", [sum(st.depth for st in s.stages) for s in specs])
    add("total", "params", [c.params for c in costs], count)
    add("total", "MACs", [c.macs for c in costs], lambda v: format_macs(v, 3))
    add("total", "activations", [c.activations for c in costs], format_params)  # elements, in M
    if any(s.reference is not None for s in specs):
        add("paper", "params", [s.reference.params if s.reference else None for s in specs])
        add("paper", "MACs (Table 2 FLOPs)", [s.reference.macs if s.reference else None for s in specs])
        add("paper", "top-1", [s.reference.top1 if s.reference else None for s in specs])
    speeds: list[Throughput | None] = []
    if profile is not None:
        table = profile if isinstance(profile, Mapping) else load_profile(profile)
        speeds = [match_throughput(table, s, label) for s, label in zip(specs, labels, strict=True)]
        rows.append(Row("profile", "images/s", ["-" if t is None else t.text() for t in speeds],
                        [t.images_per_second if t else None for t in speeds]))
    return Comparison(specs, labels, costs, rows, speeds)


def _option(value: Any) -> Any:
    return getattr(value, "value", value)
