"""Plain data and YAML text of a validated spec."""

from __future__ import annotations

import yaml

from cmt_gen.spec.schema import CMTSpec


def spec_to_dict(spec: CMTSpec) -> dict:
    """Plain data of a spec, in schema order, without unset optional sections."""
    return spec.model_dump(mode="json", exclude_none=True)


def spec_to_yaml(spec: CMTSpec) -> str:
    """Block-style YAML, one key per line; long strings (provenance) never wrap mid-line."""
    return yaml.safe_dump(spec_to_dict(spec), sort_keys=False, default_flow_style=False, width=1_000_000,
                          allow_unicode=True)

