"""Peer models from timm, profiled beside CMT under the same settings, and the paper's Table 2 ratios.

`timm:<model>[@<resolution>]` names a peer. Models are created with
`pretrained=False`: nothing is downloaded, only the architecture is timed.
Without an explicit resolution a peer runs at its Table 2 resolution when the
paper lists it (EfficientNet-B3 at 300), else at timm's default input size.

timm is an optional extra and needs a torchvision built for the installed
torch; either missing is a CmtGenError naming the install command.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

from cmt_gen.errors import CmtGenError
from cmt_gen.profile.targets import ModelTarget, canonical_hash

PREFIX = "timm:"
INSTALL_HINT = "pip install 'cmt-gen[timm]'"
# timm imports torchvision; a torchvision whose compiled ops do not match the installed torch
# fails at import. A matching pair known to work from PyPI (CUDA build, about 5.5 GB):
KNOWN_GOOD_PAIR = "pip install torch==2.14.1 torchvision==0.29.1 timm"
_PEER = re.compile(r"^timm:(?P<name>[A-Za-z0-9_.\-]+)(?:@(?P<res>\d+))?$")


@dataclass(frozen=True)
class PaperRow:
    """The part of a Table 2 row a comparison needs."""

    model: str
    throughput: float | None
    resolution: int | None
    timm: str | None
    exact: bool  # False when matched through a port name (efficientnet_b3 ~ tf_efficientnet_b3)


def is_peer(text: str) -> bool:
    return isinstance(text, str) and text.startswith(PREFIX)


def parse_peer(text: str) -> tuple[str, int | None]:
    """'timm:swin_tiny_patch4_window7_224@224' -> ('swin_tiny_patch4_window7_224', 224)."""
    match = _PEER.match(text.strip())
    if not match:
        raise CmtGenError("a peer is written timm:<model name>[@<resolution>], e.g. "
                          "timm:swin_tiny_patch4_window7_224 or timm:efficientnet_b3@300", source=text,
                          field="compare")
    res = int(match["res"]) if match["res"] else None
    if res is not None and res < 1:
        raise CmtGenError("resolution must be >= 1", source=text, field="compare")
    return match["name"], res


def require_timm() -> Any:
    """Import timm, or explain in one line why it cannot be used and how to install it."""
    try:
        import timm
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == "timm" or missing.startswith("timm."):
            raise CmtGenError(f"timm is not installed; comparing peers needs it: {INSTALL_HINT} (timm pulls "
                              f"torchvision, which must be built for your torch; e.g. {KNOWN_GOOD_PAIR})",
                              field="compare") from None
        raise CmtGenError(_broken_timm(f"its dependency {missing!r} is missing"), field="compare") from None
    except (ImportError, OSError, RuntimeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CmtGenError(_broken_timm(first), field="compare") from None
    return timm


def _broken_timm(reason: str) -> str:
    import torch

    return (f"timm is installed but cannot be imported ({reason}); timm needs a torchvision built for "
            f"torch {torch.__version__}: install a matching pair, e.g. {KNOWN_GOOD_PAIR}")


def check_model_name(timm: Any, name: str, source: str) -> None:
    if timm.is_model(name):
        return
    known = timm.list_models()
    hint = difflib.get_close_matches(name, known, n=3)
    suggestion = f"; did you mean {', '.join(hint)}?" if hint else ""
    raise CmtGenError(f"timm has no model {name!r}{suggestion}", source=source, field="compare")


def paper_row_for(name: str) -> PaperRow | None:
    """The Table 2 row of a timm model, if the paper lists it (exact name first, then its port name)."""
    from cmt_gen.cost.table2 import rows

    for exact in (True, False):
        for row in rows():
            if not row.timm:
                continue
            if (row.timm == name) if exact else (_base_name(row.timm) == _base_name(name)):
                return PaperRow(model=row.model, throughput=row.value("throughput"),
                                resolution=row.resolution, timm=row.timm, exact=exact)
    return None


def _base_name(name: str) -> str:
    """timm's TF ports and pretrained tags name the same architecture: tf_efficientnet_b3.ra -> efficientnet_b3."""
    return name.split(".")[0].removeprefix("tf_")


def default_resolution(timm: Any, name: str) -> int:
    cfg = timm.get_pretrained_cfg(name)
    size = getattr(cfg, "input_size", None) if cfg is not None else None
    return int(size[-1]) if size else 224


def create_peer(timm: Any, name: str, resolution: int, native: int):
    """The timm model, randomly initialised; ViT-like models are told their input size."""
    if resolution != native:
        try:
            return timm.create_model(name, pretrained=False, img_size=resolution)
        except TypeError:
            pass  # convolutional models take any size and have no img_size argument
    return timm.create_model(name, pretrained=False)


def peer_target(text: str, resolution: int | None = None) -> ModelTarget:
    """A ModelTarget for 'timm:<name>[@res]', checked now (timm importable, model known)."""
    name, res = parse_peer(text)
    timm = require_timm()
    check_model_name(timm, name, text)
    paper = paper_row_for(name)
    native = default_resolution(timm, name)
    res = res or resolution or (paper.resolution if paper and paper.resolution else None) or native
    content = {"timm": name, "timm_version": getattr(timm, "__version__", None), "resolution": res,
               "pretrained": False}
    return ModelTarget(
        name=name, kind="timm", resolution=res, in_channels=3,
        build=lambda: create_peer(timm, name, res, native), content_hash=canonical_hash(content),
        macs_source="FlopCounterMode/2", count_macs=lambda: count_peer_macs(timm, name, res, native),
        paper_throughput=paper.throughput if paper and paper.resolution in (None, res) else None,
        source=text,
    )


def count_peer_macs(timm: Any, name: str, resolution: int, native: int) -> int:
    """MACs of one image, counted on the meta device (no memory, no compute); real CPU as a fallback."""
    import torch

    from cmt_gen.profile.targets import count_macs

    try:
        with torch.device("meta"):
            model = create_peer(timm, name, resolution, native)
        return count_macs(model, resolution, 3)
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return count_macs(create_peer(timm, name, resolution, native), resolution, 3)


# ---------------------------------------------------------------- ratios

@dataclass
class Ratio:
    """Throughput of a CMT model over a peer's: in the paper (Table 2) and measured here."""

    cmt: str
    peer: str
    paper: float | None
    measured: float | None
    paper_peer_row: str | None = None

    def as_dict(self) -> dict:
        return dict(vars(self))


def throughput_ratios(results) -> list[Ratio]:
    """Every CMT result over every peer result; the paper's ratio where both have a Table 2 figure."""
    cmts = [r for r in results if r.kind == "cmt"]
    peers = [r for r in results if r.kind == "timm"]
    ratios = []
    for peer in peers:
        paper_row = paper_row_for(peer.name)
        for cmt in cmts:
            measured = (cmt.images_per_s / peer.images_per_s
                        if cmt.images_per_s and peer.images_per_s else None)
            paper = (cmt.paper_throughput / peer.paper_throughput
                     if cmt.paper_throughput and peer.paper_throughput else None)
            label = None
            if paper_row is not None:
                label = paper_row.model if paper_row.exact else f"{paper_row.model} (as {paper_row.timm})"
            ratios.append(Ratio(cmt.name, peer.name, paper, measured, label))
    return ratios
