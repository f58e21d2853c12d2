"""The calibration file: a fitted latency model with the settings and machine it holds for.

JSON validated by a strict pydantic schema, like specs: a wrong, truncated or
hand-edited file is one `CalibrationError` naming the file, the field and the
rule. A calibration is only valid for the device, precision, batch size,
thread count and torch it was measured with; `check_compatible` refuses any
other (or, forced, returns warnings). Torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cmt_gen.devices import KINDS, find
from cmt_gen.devices.cpu import caps_text, instruction_set_caps
from cmt_gen.errors import CmtGenError
from cmt_gen.files import read_bounded
from cmt_gen.latency.features import EARLIER_FEATURES, FEATURES, PART_KINDS
from cmt_gen.spec.schema import BlockOptions, CMTSpec

FORMAT = "cmt-gen-calibration/1"
FORMS = ("as-built", "deploy")
MAX_CALIBRATION_BYTES = 64 << 20  # a calibration is a few hundred kB


class CalibrationError(CmtGenError):
    """A calibration file that cannot be read, is malformed, or does not fit this run."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# Seconds per unit of work: a per-call constant above this is no timing of a building block, and
# larger products would overflow a prediction to infinity.
MAX_COEFFICIENT = 1e4


class PartModel(_Strict):
    """One kind of building block: seconds per call = sum(coefficients * features)."""

    features: list[str]
    coefficients: list[float]
    samples: int = Field(ge=1)
    median_error: float = Field(ge=0, description="Median |predicted/measured - 1| over its own samples.")
    worst_error: float = Field(ge=0)
    outliers: int = Field(0, ge=0, description="Timings left out of the final fit as disturbed by other load.")

    @model_validator(mode="after")
    def _same_length(self) -> PartModel:
        if len(self.features) != len(self.coefficients):
            raise ValueError(f"{len(self.features)} features but {len(self.coefficients)} coefficients")
        if any(not 0 <= c <= MAX_COEFFICIENT for c in self.coefficients):
            raise ValueError(f"coefficients are seconds per unit of work, from 0 to {MAX_COEFFICIENT:g}")
        if not any(c > 0 for c in self.coefficients):
            raise ValueError("all coefficients are 0: this part would take no time (a fit of real timings "
                             "has at least one positive coefficient)")
        return self


class Measurement(_Strict):
    """One timed building block: its shape and seconds per call at the calibration's batch."""

    kind: Literal["stem", "patch", "block", "head"]
    shape: dict[str, int | str | bool]
    seconds: float = Field(gt=0)


class ReferenceTiming(_Strict):
    """A whole network timed during calibration, beside the sum of its fitted parts."""

    name: str
    resolution: int = Field(gt=0)
    measured_seconds: float = Field(gt=0)
    parts_seconds: float = Field(gt=0)


class DriftTiming(_Strict):
    """One timing of the drift reference: its place in the timing order, seconds, and the smoothed curve."""

    at: int = Field(ge=0)
    seconds: float = Field(gt=0)
    smoothed: float = Field(gt=0)


class CalibrationSettings(_Strict):
    device: str
    device_type: Literal[KINDS]  # "cpu", "cuda", "mps": every registered kind of device
    precision: Literal["fp32", "fp16", "bf16", "amp"]
    batch_size: int = Field(ge=1)
    threads: int | None = Field(None, ge=1)
    form: Literal["as-built", "deploy"] = "as-built"
    # Files written before the allocator was recorded were measured under the C library's defaults.
    allocator: Literal["system", "retain"] = "system"


class CalibratedBlockOptions(BlockOptions):
    """The spec's block options (its own fields and enums, so a new option is recorded without an edit
    here; a file written before an option existed reads as its default) plus the spec's `qkv_bias`."""

    qkv_bias: bool = True

    @classmethod
    def of_spec(cls, spec: CMTSpec) -> CalibratedBlockOptions:
        return cls(**dict(spec.block), qkv_bias=spec.qkv_bias)

    def spec_options(self) -> BlockOptions:
        """The options as the layers take them (without qkv_bias, a spec-wide field)."""
        return BlockOptions(**{name: getattr(self, name) for name in BlockOptions.model_fields})


class Calibration(_Strict):
    """A device's latency model for CMT building blocks."""

    format: Literal["cmt-gen-calibration/1"] = FORMAT
    created: str
    settings: CalibrationSettings
    block_options: CalibratedBlockOptions = CalibratedBlockOptions()
    machine: str = Field(description="CPU model (cpu) or device name (cuda, mps).")
    torch_version: str
    environment: dict[str, Any] = Field(default_factory=dict)
    parts: dict[str, PartModel]
    channel_block: int = Field(1, ge=1, le=64, description="Channels the device's kernels work on at once: "
                               "features count channels in whole blocks of it (files from before it: 1).")
    padded_kinds: tuple[str, ...] = Field(("block",), description="The parts whose channels count in whole "
                                          "channel blocks (files from before stems were: blocks only).")
    network_factor: float = Field(1.0, ge=0.01, le=100,
                                  description="Median whole network / its fitted parts over the timed networks.")
    references: list[ReferenceTiming] = Field(default_factory=list)
    measurements: list[Measurement] = Field(default_factory=list)
    drift: list[DriftTiming] = Field(default_factory=list, description="The drift reference's timings; "
                                     "files from before drift correction have none.")
    seconds: float = Field(0.0, ge=0, description="How long the calibration took.")

    @model_validator(mode="after")
    def _parts_complete(self) -> Calibration:
        missing = [k for k in PART_KINDS if k not in self.parts]
        extra = [k for k in self.parts if k not in PART_KINDS]
        if missing or extra:
            raise ValueError(f"parts must be exactly {', '.join(PART_KINDS)} "
                             f"(missing: {missing or 'none'}, unknown: {extra or 'none'})")
        unknown = [k for k in self.padded_kinds if k not in PART_KINDS]
        if unknown:
            raise ValueError(f"padded_kinds must name parts among {', '.join(PART_KINDS)}, got {unknown}")
        for kind, model in self.parts.items():
            known = (FEATURES[kind], *EARLIER_FEATURES.get(kind, ()))
            if tuple(model.features) not in known:
                raise ValueError(f"parts.{kind}.features must be {list(FEATURES[kind])}"
                                 + "".join(f" (or, in files from before, {list(f)})" for f in known[1:])
                                 + f", got {model.features}")
        return self

    @property
    def reference_seconds(self) -> float | None:
        """The drift reference's median seconds per call over the calibration (None in older files)."""
        import statistics

        return statistics.median(d.seconds for d in self.drift) if self.drift else None

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=1) + "\n"


# ---------------------------------------------------------------- reading and writing

def load_calibration(path: str | Path) -> Calibration:
    """Read and validate a calibration file; every problem is one CalibrationError line."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise CalibrationError("calibration file not found" if not path.exists() else "not a file", source=source)
    try:
        data = json.loads(read_bounded(path, MAX_CALIBRATION_BYTES, CalibrationError).decode("utf-8"),
                          parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise CalibrationError("not a text file (expected JSON from cmt-gen calibrate)", source=source) from None
    except json.JSONDecodeError as exc:
        raise CalibrationError(f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
                               source=source) from None
    except RecursionError:
        raise CalibrationError("not a calibration: nested too deeply", source=source) from None
    except ValueError as exc:  # Infinity / NaN, or an integer of thousands of digits
        why = str(exc).splitlines()[0][:160]
        if "integer string conversion" in why:
            why = "a number has thousands of digits"
        raise CalibrationError(f"not valid JSON for a calibration: {why}", source=source) from None
    except OSError as exc:
        raise CalibrationError(f"cannot read: {exc.strerror or exc}", source=source) from None
    return calibration_from_dict(data, source)


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows (a calibration holds finite figures)")


def calibration_from_dict(data: Any, source: str = "calibration") -> Calibration:
    if not isinstance(data, dict):
        raise CalibrationError(f"expected a JSON object from cmt-gen calibrate, got {type(data).__name__}",
                               source=source)
    if data.get("format") != FORMAT:
        raise CalibrationError(f"not a cmt-gen calibration (format is {data.get('format')!r}, expected {FORMAT!r})",
                               source=source, field="format")
    try:
        return Calibration.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    first = errors[0]
    field = ".".join(str(p) for p in first.get("loc", ())) or None
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "missing":
        message = "required field is missing"
    elif first.get("type") == "extra_forbidden":
        message = "unknown key"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    raise CalibrationError(message + more, source=source, field=field)


def save_calibration(calibration: Calibration, path: str | Path) -> None:
    from cmt_gen.files import write_atomic

    write_atomic(Path(path), calibration.to_json())


# ---------------------------------------------------------------- does it hold here?

def installed_torch_version() -> str | None:
    """torch's version from its installed metadata, without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return None


def current_machine(device_type: str) -> str | None:
    """What identifies the device: the CPU model, or the GPU's name when torch is already loaded."""
    device = find(device_type)
    return device.machine_name() if device is not None else None


def _normalised(caps: dict) -> dict[str, str]:
    return {str(k): str(v).strip().upper() for k, v in caps.items() if str(v).strip()}


def check_compatible(calibration: Calibration, *, source: str = "calibration", device: str | None = None,
                     precision: str | None = None, batch_size: int | None = None, threads: int | None = None,
                     force: bool = False) -> list[str]:
    """Refuse a calibration made under other settings or on another machine or torch; warnings if forced.

    Settings left None are taken from the calibration (nothing to compare).
    """
    s = calibration.settings
    problems: list[tuple[str, str]] = []
    for field, asked, held in (("device", device, s.device), ("precision", precision, s.precision),
                               ("batch_size", batch_size, s.batch_size), ("threads", threads, s.threads)):
        if asked is not None and asked != held:
            problems.append((f"settings.{field}", f"calibrated with {field} {held}, asked for {asked}"))
    machine = current_machine(s.device_type)
    if machine is not None and machine != calibration.machine:
        problems.append(("machine", f"calibrated on {calibration.machine!r}, this machine is {machine!r}"))
    held_caps = calibration.environment.get("instruction_set_caps")
    if s.device_type == "cpu" and isinstance(held_caps, dict):  # files from before record none: not compared
        now_caps = instruction_set_caps()
        if _normalised(held_caps) != _normalised(now_caps):
            problems.append(("environment.instruction_set_caps",
                             f"calibrated with {caps_text(held_caps)}, this process runs with {caps_text(now_caps)} "
                             "(they change which CPU kernels run)"))
    torch_version = installed_torch_version()
    if torch_version is not None and torch_version != calibration.torch_version:
        problems.append(("torch_version", f"calibrated with torch {calibration.torch_version}, "
                                          f"installed is {torch_version}"))
    if not problems:
        return []
    if force:
        return [f"{field}: {rule} (forced: predictions may be off)" for field, rule in problems]
    field, rule = problems[0]
    raise CalibrationError(f"{rule}; recalibrate with cmt-gen calibrate, or pass --force to use it anyway",
                           source=source, field=field)
