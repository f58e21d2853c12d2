"""`block.position_bias: table`, the trained form's bias cache, and what the biases cost at a detector's size.

The table option: one (heads, 2 Hs - k, 2 Ws - k) table per stage indexed by query-key offset (in query-grid
units), gathered for each input grid, clamped beyond the spec's own; its parameters never depend on the input.
"""

from __future__ import annotations

import copy
import io
import itertools
import warnings

import pytest
import torch
from conftest import tiny_spec_dict

from cmt_gen import analytic_cost, build_model, load_spec
from cmt_gen.cost.analytic import position_bias_elements, position_bias_table_params, stage_bias_params
from cmt_gen.deploy import blocks as deploy_blocks
from cmt_gen.errors import CheckpointError, SpecError
from cmt_gen.model import layers as L
from cmt_gen.model.convert import released_state_dict
from cmt_gen.ops.position_bias import gather_table, table_index
from cmt_gen.spec.schema import design_problems


def numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def table_model(**block):
    torch.manual_seed(0)
    return build_model(tiny_spec_dict(block={"position_bias": "table", **block})).eval()


# ---------------------------------------------------------------- semantics

def brute_force_bias(table: torch.Tensor, grid: tuple[int, int], k: int, h: int, w: int) -> torch.Tensor:
    """The definition, one query and key cell at a time: offset q - k j, shifted into the table and clamped."""
    rows, cols = table.shape[1:]
    out = torch.empty(table.shape[0], h * w, (h // k) * (w // k))
    for qy, qx, jy, jx in itertools.product(range(h), range(w), range(h // k), range(w // k)):
        dy = min(max(qy - k * jy + grid[0] - k, 0), rows - 1)
        dx = min(max(qx - k * jx + grid[1] - k, 0), cols - 1)
        out[:, qy * w + qx, jy * (w // k) + jx] = table[:, dy, dx]
    return out


@pytest.mark.parametrize("k", [1, 2, 4])
def test_gathered_table_is_the_offset_definition_at_every_size(k):
    grid = (8, 4)
    table = torch.randn(3, 2 * grid[0] - k, 2 * grid[1] - k)
    for h, w in [grid, (4, 8), (12, 4), (16, 12)]:  # own grid, smaller, larger (clamped), non-square
        got = gather_table(table, table_index(grid, k, h, w, table.device))
        assert torch.equal(got, brute_force_bias(table, grid, k, h, w)), (h, w)


def test_at_its_own_grid_every_table_entry_is_used_and_gets_a_gradient():
    """2 Hs - k offsets per axis is exactly what the own grid spans: no dead entries."""
    stage = L.CMTStage(8, 16, 1, 2, 2, 32, options=L.BlockOptions(position_bias="table"), grid=(6, 4))
    assert stage.position_bias is None and stage.position_bias_table.shape == (2, 10, 6)
    stage.train()
    stage(torch.randn(2, 8, 12, 8)).square().sum().backward()
    assert (stage.position_bias_table.grad != 0).all()


# ---------------------------------------------------------------- parameters and counts

def test_params_are_exact_and_never_depend_on_the_input_size():
    spec = load_spec(tiny_spec_dict(block={"position_bias": "table"}))
    model = build_model(spec)
    stage = load_spec(tiny_spec_dict())
    for h, w in [(None, None), (96, 128), (32, 32)]:
        assert analytic_cost(spec, h, w).params == numel(model)
        assert analytic_cost(spec, h, w).macs == analytic_cost(stage, h, w).macs  # a gather is no MAC
    expected = sum(s.heads * (2 * side - s.reduction) ** 2 for s, (side, _) in zip(spec.stages, spec.stage_sizes(),
                                                                                   strict=True))
    assert sum(p.numel() for n, p in model.named_parameters() if n.endswith("position_bias_table")) == expected


def test_cmt_s_table_against_stage_bias_params():
    spec = load_spec("cmt_s")
    sizes = [side for side, _ in spec.stage_sizes()]
    stage = [stage_bias_params("stage", s.heads, n, n, s.reduction) for s, n in zip(spec.stages, sizes, strict=True)]
    table = [position_bias_table_params(s.heads, n, n, s.reduction) for s, n in zip(spec.stages, sizes, strict=True)]
    assert stage == [153_664, 76_832, 38_416, 19_208]  # 288,120 in all
    assert table == [10_816, 5_408, 2_704, 1_352]  # 20,280 in all: heads x (2 Hs - k)^2
    with torch.device("meta"):
        model = build_model("cmt_s", overrides=["block.position_bias=table"])
    assert analytic_cost(load_spec("cmt_s", ["block.position_bias=table"])).params == numel(model) \
        == analytic_cost(spec).params - sum(stage) + sum(table)


def test_size_estimate_counts_the_table_not_a_bias_per_size():
    """CMT-S at 6016 px: stage biases of 1.5e11 values are refused; tables of 2e7 are not."""
    with pytest.raises(SpecError, match="parameters"):
        load_spec("cmt_s", ["resolution=6016"])
    spec = load_spec("cmt_s", ["resolution=6016", "block.position_bias=table"])
    assert design_problems(spec, spec.resolution, spec.resolution) == []
    assert analytic_cost(spec).params < 50e6


def test_invariants_at_another_input_size_with_a_clamped_table():
    """analytic == numel == fvcore per part (the gather is no MAC, and no unsupported op) at 96x128."""
    from test_cost import assert_invariants

    measured = assert_invariants(load_spec(tiny_spec_dict(block={"position_bias": "table", "attention": "math"})),
                                 96, 128)
    assert "upsample_bicubic2d" not in measured.by_operator


# ---------------------------------------------------------------- memory at a detector's size

def test_cmt_s_biases_at_1280x800():
    elements = position_bias_elements(load_spec("cmt_s"), 800, 1280)
    assert elements == [64_000_000, 32_000_000, 16_000_000, 8_000_000]  # 120M: 480 MB of float32
    assert position_bias_elements(load_spec("cmt_s", ["block.position_bias=table"]), 800, 1280) == elements
    assert position_bias_elements(load_spec("cmt_s", ["block.position_bias=none"]), 800, 1280) == [0] * 4
    per_block = position_bias_elements(load_spec("cmt_s", ["block.position_bias=block"]), 800, 1280)
    assert per_block == [n * s.depth for n, s in zip(elements, load_spec("cmt_s").stages, strict=True)]


@pytest.mark.parametrize("kind", ["stage", "table", "block", "none"])
def test_bias_elements_equal_the_tensors_a_forward_makes(kind, monkeypatch):
    spec = load_spec(tiny_spec_dict(block={"position_bias": kind}))
    torch.manual_seed(0)
    model = build_model(spec).eval()
    made, current = [0] * len(spec.stages), [0]
    for i, stage in enumerate(model.stages):
        stage.register_forward_pre_hook(lambda module, args, i=i: current.__setitem__(0, i))
        shared = stage.blocks[0]  # the stage's bias (stage, table) reaches each block as its fourth argument
        shared.register_forward_pre_hook(lambda module, args: made.__setitem__(
            current[0], made[current[0]] + (args[3].numel() if args[3] is not None else 0)))
    real = L.position_bias_at  # a block's own bias (block) at this size

    def counted(*args):
        out = real(*args)
        made[current[0]] += out.numel()
        return out

    monkeypatch.setattr(L, "position_bias_at", counted)
    with torch.no_grad():
        model(torch.randn(1, 3, 96, 160))
    assert made == position_bias_elements(spec, 96, 160)
    assert (sum(made) > 0) == (kind != "none")


# ---------------------------------------------------------------- deploy form, graphs, conversion

def test_deploy_form_equals_trained_form_and_caches_the_gathered_table():
    model = table_model(attention="math")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    deployed = copy.deepcopy(model).reparameterize()
    sizes = [torch.randn(2, 3, 64, 64), torch.randn(1, 3, 96, 128)]
    with torch.inference_mode():
        for x in sizes:
            assert relative_gap(deployed(x), model(x)) < 1e-6
        cached = deployed.stages[0]._bias_cache
        assert len(cached) == 2  # a table is gathered at its own grid too, once per size
        first = dict(cached)
        deployed(sizes[1])
        assert all(cached[key] is value for key, value in first.items())
    state = {k: v + 0.5 if k.endswith("position_bias_table") else v for k, v in deployed.state_dict().items()}
    deployed.load_state_dict(state)
    fresh = copy.deepcopy(deployed)  # new tensors, empty caches
    with torch.inference_mode():
        for x in sizes:
            assert torch.equal(deployed(x), fresh(x))


@pytest.mark.slow
def test_torch_export_of_a_table_model_with_dynamic_height_width():
    from test_export_paths import _dynamic_shapes, assert_same

    from cmt_gen.export.formats import stride_multiples_supported

    if not stride_multiples_supported():
        pytest.skip("this torch.export cannot express sizes as multiples of the stride (probed)")
    model = table_model()
    program = torch.export.export(model, (torch.randn(2, 3, 64, 64),), dynamic_shapes=_dynamic_shapes())
    for shape in [(1, 3, 64, 96), (3, 3, 128, 64)]:  # a larger map: offsets clamped in the graph too
        x = torch.randn(shape)
        with torch.no_grad():
            assert_same(program.module()(x), model(x), f"table torch.export at {shape}")


def test_released_layout_refuses_a_table_as_it_refuses_a_block_bias():
    for kind in ("block", "table"):
        model = build_model(tiny_spec_dict(block={"position_bias": kind}))
        with pytest.raises(CheckpointError, match="no place in the released CMT layout"):
            released_state_dict(model.state_dict())


# ---------------------------------------------------------------- the trained form's cache

@pytest.fixture
def resamples(monkeypatch):
    calls = []
    real = deploy_blocks.resample_bias

    def counted(*args):
        calls.append(args[3:])
        return real(*args)

    monkeypatch.setattr(deploy_blocks, "resample_bias", counted)
    return calls


def test_eval_without_grad_resamples_once_per_size(resamples):
    torch.manual_seed(0)
    model = build_model(tiny_spec_dict()).eval()
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        first = model(x)
        second = model(x)
    assert torch.equal(first, second)
    assert len(resamples) == len(model.stages)  # once per stage, not per forward
    with torch.inference_mode():
        assert torch.equal(model(x), first)
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))  # the own grid: no resampling, nothing cached
    assert len(resamples) == len(model.stages)
    assert all(len(stage._bias_cache) == 1 for stage in model.stages)


@pytest.mark.parametrize("write", ["data", "load_state_dict"])
def test_a_new_bias_is_noticed(write, resamples):
    torch.manual_seed(0)
    model = build_model(tiny_spec_dict()).eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        before = model(x)
        if write == "data":
            model.stages[0].position_bias.data.add_(0.5)  # moves no version counter: the value probe notices
        else:
            model.load_state_dict({k: v * 1.5 if k.endswith("position_bias") else v
                                   for k, v in model.state_dict().items()})
        after = model(x)
        fresh = copy.deepcopy(model)
        assert not hasattr(fresh.stages[0], "_bias_cache")  # copies leave caches behind
        assert torch.equal(after, fresh(x)) and not torch.equal(after, before)
    assert len(resamples) == len(model.stages) + (1 if write == "data" else len(model.stages)) + len(model.stages)


def test_training_and_grad_never_cache(resamples):
    torch.manual_seed(0)
    model = build_model(tiny_spec_dict())
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        model.eval()(x)  # cached...
    assert all(hasattr(stage, "_bias_cache") for stage in model.stages)
    model.train()
    model(x)
    model(x)
    assert not any(hasattr(stage, "_bias_cache") for stage in model.stages)  # ...and freed on training
    model.eval()
    model(x)  # eval with grad: the bias may be trained through this output
    assert not any(hasattr(stage, "_bias_cache") for stage in model.stages)
    assert len(resamples) == 4 * len(model.stages)


def test_graphs_cache_nothing_and_a_used_model_still_scripts_and_pickles():
    model = table_model()
    x = torch.randn(1, 3, 96, 64)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, torch.randn(1, 3, 64, 64), check_trace=False)
        assert not any(hasattr(stage, "_bias_cache") for stage in model.stages)
        want = model(x)
        assert all(len(stage._bias_cache) == 1 for stage in model.stages)
        assert torch.equal(traced(x), want)
        assert torch.equal(torch.jit.script(model)(x), want)
    buffer = io.BytesIO()
    torch.save(model, buffer)  # the value probe is a closure: caches stay out of pickles


def test_table_index_is_made_once_per_grid_while_training(monkeypatch):
    calls = []
    real = deploy_blocks.table_index
    monkeypatch.setattr(deploy_blocks, "table_index", lambda *a: calls.append(a[2:4]) or real(*a))
    model = table_model().train()
    for _ in range(2):
        model(torch.randn(2, 3, 96, 64)).sum().backward()
    assert calls == [(24, 16), (12, 8), (6, 4), (3, 2)]
    assert all(p.grad is not None for p in model.parameters() if p.ndim == 3)


def test_the_bias_cache_keeps_a_few_sizes_not_every_one() -> None:
    """A detector's padded batches come in many sizes; each CMT-S bias set at 1280x800 is 458 MiB."""
    from conftest import tiny_spec_dict

    from cmt_gen.deploy.blocks import BIAS_CACHE_SIZES
    from cmt_gen.model.network import build_model

    model = build_model(tiny_spec_dict()).eval()
    stage = model.stages[0]
    with torch.no_grad():
        for side in range(64, 64 + 32 * (BIAS_CACHE_SIZES + 3), 32):
            model(torch.randn(1, 3, side, 64))
    assert len(stage._bias_cache) == BIAS_CACHE_SIZES
