"""cmt-gen: CMT architectures from YAML specs, with exact costs, profiles and design tools.

Names are imported lazily so that `import cmt_gen` (and the CLI's light
commands) never pull in torch unless a torch-backed function is used. The
module keeps no helper names of its own, so `dir(cmt_gen)` lists the API.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "load_spec": "cmt_gen.spec.loading",
    "CMTSpec": "cmt_gen.spec.schema",
    "CmtGenError": "cmt_gen.errors",
    "SpecError": "cmt_gen.errors",
    "build_model": "cmt_gen.model.network",
    "convert_official_state_dict": "cmt_gen.model.convert",
    "released_state_dict": "cmt_gen.model.convert",
    "load_checkpoint": "cmt_gen.model.convert",
    "analytic_cost": "cmt_gen.cost.analytic",
    "measured_cost": "cmt_gen.check.measured",
    "check_budget": "cmt_gen.check.budget",
    "profile_model": "cmt_gen.profile.runner",
    "export_spec": "cmt_gen.jobs.export",
    "predict_latency": "cmt_gen.latency.predict",
    "scale_spec": "cmt_gen.design.scaling",
    "design_specs": "cmt_gen.design.search",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cmt_gen' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    """The public API and the version; submodules and dunders stay out of the listing."""
    return sorted([*__all__, "__version__"])
