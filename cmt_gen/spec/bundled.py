"""The specs that ship with cmt-gen: where they live and how a name finds one."""

from __future__ import annotations

import difflib
import os
from pathlib import Path


def bundled_dir() -> Path:
    """The folder of bundled specs: `cmt_gen/specs` in an installed wheel, `specs/` in a checkout."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "specs"
    return installed if installed.is_dir() else package.parent / "specs"


def _names_in(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml"))


def _path_in(name: str, folder: Path) -> Path | None:
    key = name.strip().lower().replace("-", "_")
    if key not in _names_in(folder):  # never probe the file system with arbitrary text (too long, NUL, ../)
        return None
    return folder / f"{key}.yaml"


def bundled_names() -> list[str]:
    return _names_in(bundled_dir())


def bundled_path(name: str) -> Path | None:
    return _path_in(name, bundled_dir())


def looks_like_path(source: str) -> bool:
    return source.endswith((".yaml", ".yml", ".json")) or os.sep in source or "/" in source


def unknown_name_rule(text: str) -> str:
    key = text.lower().replace("-", "_")
    if key in bundled_detector_names():
        return (f"{text!r} is a bundled detector spec; this takes a backbone spec "
                f"(bundled: {', '.join(bundled_names())})")
    hint = difflib.get_close_matches(key, bundled_names() + bundled_detector_names(), n=1)
    suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
    return (f"no bundled spec or file named {text!r}{suggestion} (bundled: {', '.join(bundled_names())}; "
            f"detectors: {', '.join(bundled_detector_names())})")



def bundled_detector_dir() -> Path:
    """Bundled detector specs: a folder of their own, so every `specs/*.yaml` stays a backbone."""
    return bundled_dir() / "detectors"


def bundled_detector_names() -> list[str]:
    return _names_in(bundled_detector_dir())


def bundled_detector_path(name: str) -> Path | None:
    return _path_in(name, bundled_detector_dir())


def unknown_detector_rule(text: str) -> str:
    names = bundled_detector_names()
    hint = difflib.get_close_matches(text.lower().replace("-", "_"), names, n=1)
    suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
    return f"no bundled detector spec or file named {text!r}{suggestion} (bundled: {', '.join(names)})"

