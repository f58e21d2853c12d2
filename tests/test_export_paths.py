"""Every way of turning a CMT into a graph gives the eager model's outputs, at its own size and others.

jit.script, jit.trace and FX run over all five bundled variants (all but
CMT-Ti marked slow: scripting and tracing take 5-15 s each); torch.export with dynamic batch, height and
width, and the dynamo ONNX exporter run in onnxruntime, are slow (20-60 s per
export on 2 cores) and cover CMT-Ti (both) and CMT-B (torch.export). Graphs are made at the spec's
own resolution, the case where a "same grid" branch would bake the size in,
and run at other multiples of 32, non-square included.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import tiny_spec_dict

from cmt_gen import build_model
from cmt_gen.errors import InputShapeError
from cmt_gen.export.formats import stride_multiples_supported
from cmt_gen.ops.position_bias import resample_position_bias

REL = 1e-5
SLOW = pytest.mark.slow
VARIANTS = ["cmt_ti", *(pytest.param(n, marks=SLOW) for n in ("cmt_xs", "cmt_s", "cmt_b", "cmt_l"))]
OTHER_SIZES = [(64, 64), (64, 96)]


def assert_same(got: torch.Tensor | list, want: torch.Tensor | list, label: str) -> None:
    got = got if isinstance(got, (list, tuple)) else [got]
    want = want if isinstance(want, (list, tuple)) else [want]
    assert len(got) == len(want), label
    for g, w in zip(got, want, strict=True):
        g = torch.as_tensor(g)
        assert g.shape == w.shape, f"{label}: {tuple(g.shape)} != {tuple(w.shape)}"
        scale = w.abs().max().clamp_min(1e-12)
        assert ((g - w).abs().max() / scale).item() <= REL, f"{label}: relative error over {REL}"


def _inputs(resolution: int, native: bool = True) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    sizes = [(resolution, resolution)] * native + OTHER_SIZES
    return [torch.randn(2 if native else 1, 3, h, w, generator=gen) for h, w in sizes]


def _graphs(model: torch.nn.Module, example: torch.Tensor) -> dict[str, torch.nn.Module]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jit.script / jit.trace are deprecated in favour of torch.export
        fx = torch.fx.symbolic_trace(model)
        return {
            "jit.script": torch.jit.script(model),
            "jit.trace": torch.jit.trace(model, example, check_trace=False),
            "fx": fx,
            "fx+jit.script": torch.jit.script(fx),
        }


def assert_graphs_match_eager(model: torch.nn.Module, inputs: list[torch.Tensor], example: torch.Tensor,
                              what: str) -> None:
    """Every graph of `model` (made from `example`) gives the eager outputs on every input."""
    with torch.no_grad():
        want = [model(x) for x in inputs]
        for label, graph in _graphs(model, example).items():
            for x, w in zip(inputs, want, strict=True):
                assert_same(graph(x), w, f"{what} {label} at {tuple(x.shape[-2:])}")


@pytest.mark.parametrize("name", VARIANTS)
def test_script_trace_and_fx_match_eager_at_every_size(released_model, name):
    """Traced at the spec's resolution; the big variants are then compared at small sizes only (CPU time)."""
    model = released_model(name)
    r = model.spec.resolution
    assert_graphs_match_eager(model, _inputs(r, native=name == "cmt_ti"), torch.randn(1, 3, r, r), name)


def test_features_model_scripts_and_traces():
    torch.manual_seed(0)
    model = build_model(tiny_spec_dict(), features_only=True, out_indices=(1, 3)).eval()
    inputs = _inputs(64)
    assert_graphs_match_eager(model, inputs, inputs[0], "features")


@pytest.mark.parametrize("option", [{"position_bias": "block", "reduction_kind": "avgpool"},
                                    {"position_bias": "none", "reduction_kind": "conv_ln", "attention": "math",
                                     "lpu": False},
                                    {"position_bias": "table"}])
def test_every_block_option_scripts_and_traces(option):
    torch.manual_seed(0)
    model = build_model(tiny_spec_dict(block=option)).eval()
    inputs = _inputs(64)
    assert_graphs_match_eager(model, inputs, inputs[0], str(option))


def test_eager_checks_stay_and_do_not_enter_graphs():
    torch.manual_seed(0)
    model = build_model(tiny_spec_dict()).eval()
    with pytest.raises(InputShapeError, match="total stride 32"):
        model(torch.randn(1, 3, 65, 64))
    graph = torch.fx.symbolic_trace(model)
    assert "InputShapeError" not in graph.code and "check" not in graph.code


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("q, kv", [((16, 16), (2, 2)), ((8, 12), (4, 6)), ((5, 7), (5, 7)), ((2, 3), (1, 1))])
def test_resampling_at_the_stored_grid_is_bit_exact(q, kv, dtype):
    """The branch-free resampling relies on bicubic at scale 1 being an exact copy, in every dtype."""
    bias = (torch.randn(3, q[0] * q[1], kv[0] * kv[1], dtype=torch.float64) * 1e4).to(dtype)
    assert torch.equal(resample_position_bias(bias, q, kv, q, kv), bias)


# ---------------------------------------------------------------- torch.export and ONNX (slow)

needs_stride_multiples = pytest.mark.skipif(
    not stride_multiples_supported(),
    reason="this torch.export cannot express sizes as multiples of the stride (probed); "
           "tests/test_export.py checks that `export --format program` says so")


def _dynamic_shapes():
    from torch.export import Dim

    return {"x": {0: Dim("batch", min=1, max=256), 2: 32 * Dim("h32", min=2, max=64),
                  3: 32 * Dim("w32", min=2, max=64)}}


def _exported(model: torch.nn.Module) -> torch.export.ExportedProgram:
    r = model.spec.resolution
    example = torch.randn(2, 3, r, r)  # batch 2: a batch of 1 would be specialised
    return torch.export.export(model, (example,), dynamic_shapes=_dynamic_shapes())


def _export_inputs(model: torch.nn.Module, native: bool) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    r = model.spec.resolution
    shapes = [(2, r, r)] * native + [(1, 64, 96), (3, 96, 64)]
    return [torch.randn(b, 3, h, w, generator=gen) for b, h, w in shapes]


@SLOW
@needs_stride_multiples
def test_torch_export_of_a_big_variant_with_dynamic_batch_height_width(released_model):
    model = released_model("cmt_b")
    inputs = _export_inputs(model, native=False)
    with torch.no_grad():
        want = [model(x) for x in inputs]
    program = _exported(model)
    for x, w in zip(inputs, want, strict=True):
        assert_same(program.module()(x), w, f"cmt_b torch.export at {tuple(x.shape)}")


@SLOW
@needs_stride_multiples
def test_torch_export_and_onnx_with_dynamic_batch_height_width():
    """The training form through torch.export, then ONNX from the program. The tiny spec has every
    released feature (the big-variant test above covers depth; it was cmt_ti here, 3x the time)."""
    onnxruntime = pytest.importorskip("onnxruntime")  # the test extra installs it; a bare checkout skips
    name = "tiny"
    torch.manual_seed(0)
    model = build_model(tiny_spec_dict()).eval()
    inputs = _export_inputs(model, native=True)
    with torch.no_grad():
        want = [model(x) for x in inputs]
    program = _exported(model)
    for x, w in zip(inputs, want, strict=True):
        assert_same(program.module()(x), w, f"{name} torch.export at {tuple(x.shape)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(program, dynamo=True, verbose=False)
    session = onnxruntime.InferenceSession(onnx_program.model_proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    for x, w in zip(inputs, want, strict=True):
        (out,) = session.run(None, {input_name: x.numpy()})
        assert_same(torch.from_numpy(np.asarray(out)), w, f"{name} onnxruntime at {tuple(x.shape)}")
