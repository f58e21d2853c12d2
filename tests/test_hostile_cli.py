"""Hostile and careless inputs across every command: one line, the right exit code, nothing touched.

Classes of the corpus (issue 11): spec files, --set strings, CLI flags (numbers
without bound, inf, nan, 1,000-digit integers), output targets (devices, links,
FIFOs, folders, the command's own inputs, two outputs on one path), reads
without a bound (/dev/zero, FIFOs, a 3 GB file, deep JSON), memory guards,
checkpoints, and user text that rich would read as markup. The environment
(closed pipes, full devices, full disks, internal errors) is in
test_hostile_env.py; random inputs in test_hostile_fuzz.py.
"""

from __future__ import annotations

import json
import os

import pytest
from conftest import tiny_spec_dict
from hostile_support import make_arena, run_refused, snapshot

BIG = "9" * 1000  # a 1,000-digit integer
DEPTH = "stages.0.depth"

# (id, argv, exit code, fragment of the one stderr line)
CASES: list[tuple[str, list[str], int, str]] = [
    # ---- spec files: unbounded reads, hangs, numbers past every bound
    ("spec-dev-zero", ["validate", "/dev/zero"], 2, "not a regular file"),
    ("spec-fifo", ["validate", "fifo.yaml"], 2, "not a regular file"),
    ("spec-sparse-3gb", ["validate", "sparse.yaml"], 2, "larger than"),
    ("spec-folder", ["validate", "folder.yaml"], 2, "is a folder"),
    ("spec-missing", ["check", "absent.yaml"], 2, "no such file"),
    ("spec-name-too-long", ["validate", "x" * 5000], 2, "no bundled spec or file"),
    ("spec-deep-json", ["validate", "deep.json"], 2, "nests too deeply"),
    ("spec-1000-digit-resolution", ["validate", "huge_int.yaml"], 2, "less than or equal to 8192"),
    ("spec-inf-expansion", ["check", "inf_expansion.yaml"], 2, "finite number"),
    ("spec-nan-expansion", ["validate", "nan_expansion.yaml"], 2, "finite number"),
    ("spec-billion-depth-check", ["check", "depth_billion.yaml"], 2, "less than or equal to 1024"),
    ("spec-billion-depth-build", ["build", "depth_billion.yaml"], 2, "less than or equal to 1024"),
    ("spec-giant-network", ["check", "giant_network.yaml"], 2, "beyond any real machine"),
    ("spec-nine-stages", ["validate", "nine_stages.yaml"], 2, "at most 8 items"),
    ("spec-huge-channels", ["check", "huge_width_multiplier.yaml"], 2, "less than or equal to 16384"),
    ("spec-sample-from-fifo", ["sample", "--n", "2", "--from", "fifo.yaml", "-o", "s.jsonl"], 2, "not a regular"),
    ("spec-compare-sparse", ["compare", "sparse.yaml"], 2, "larger than"),
    # ---- --set strings
    ("set-billion-depth-check", ["check", "cmt_s", "--set", f"{DEPTH}=1000000000"], 2, "less than or equal"),
    ("set-billion-depth-build", ["build", "cmt_ti", "--set", f"{DEPTH}=1000000000"], 2, "less than or equal"),
    ("set-1000-digit", ["validate", "cmt_s", "--set", f"resolution={BIG}"], 2, "less than or equal to 8192"),
    ("set-5000-digit", ["validate", "cmt_s", "--set", f"resolution={'9' * 5000}"], 2, "cannot be read"),
    ("set-inf", ["check", "cmt_s", "--set", "stages.1.expansion=.inf"], 2, "finite number"),
    ("set-nan-int", ["check", "cmt_s", "--set", "resolution=.nan"], 2, "valid integer"),
    ("set-in-channels", ["build", "cmt_ti", "--set", "in_channels=100000"], 2, "less than or equal to 1024"),
    ("set-path-parts", ["validate", "cmt_s", "--set", "a." * 5000 + "b=1"], 2, "at most 16 deep"),
    ("set-newline-value", ["validate", "cmt_s", "--set", "resolution=[1,\n2]"], 2, "resolution"),
    ("set-newline-key", ["validate", "cmt_s", "--set", "reso\nlution=224"], 2, "unknown key"),
    ("set-no-equals", ["check", "cmt_s", "--set", "resolution"], 2, "key.path=value"),
    ("set-index", ["new", "n", "--from", "tiny.yaml", "--set", "stages.99.depth=1", "-o", "n.yaml"], 2,
     "out of range"),
    ("set-huge-heads", ["validate", "cmt_s", "--set", "stages.0.heads=100000"], 2, "less than or equal"),
    # ---- flags: bounds, inf, nan, huge integers
    ("design-resolution-range-1e12", ["design", "--macs", "4G", "--resolution", "32..1e12"], 2, "within 1..8192"),
    ("design-resolution-range-inf", ["design", "--macs", "4G", "--resolution", "32..inf"], 2, "within 1..8192"),
    ("design-resolution-huge", ["design", "--macs", "4G", "--resolution", BIG], 2, "at most 8192"),
    ("design-params-inf", ["design", "--params", "1e400"], 2, "finite"),
    ("design-macs-nan", ["design", "--macs", "nan"], 2, "not a quantity"),
    ("design-top-huge", ["design", "--macs", "4G", "--top", BIG], 2, "top"),
    ("design-divisor-huge", ["design", "--macs", "4G", "--divisor", BIG], 2, "divisor"),
    ("design-tolerance-inf", ["design", "--macs", "4G", "--tolerance", "inf%"], 2, "tolerance"),
    ("new-width-inf", ["new", "n", "--from", "cmt_s", "--width", "inf", "-o", "n.yaml"], 2, "finite"),
    ("new-width-nan", ["new", "n", "--from", "cmt_s", "--width", "nan", "-o", "n.yaml"], 2, "finite"),
    ("new-width-1e300", ["new", "n", "--from", "cmt_s", "--width", "1e300", "-o", "n.yaml"], 2, "outside"),
    ("new-depth-tiny", ["new", "n", "--from", "cmt_s", "--depth", "1e-300", "-o", "n.yaml"], 2, "outside"),
    ("new-resolution-factor", ["new", "n", "--from", "cmt_s", "--resolution", "1e12x", "-o", "n.yaml"], 2,
     "outside"),
    ("new-resolution-huge", ["new", "n", "--from", "cmt_s", "--resolution", BIG, "-o", "n.yaml"], 2,
     "at most 8192"),
    ("new-empty-name", ["new", "", "--from", "cmt_s", "-o", "n.yaml"], 2, "not blank"),
    ("design-blank-name", ["design", "--macs", "3M..4M", "--from", "tiny.yaml", "--name", " ", "-o", "d.yaml"], 2,
     "not blank"),
    ("new-blank-name", ["new", "  ", "--from", "cmt_s", "-o", "n.yaml"], 2, "not blank"),
    ("sample-n-huge", ["sample", "--n", BIG, "-o", "s.jsonl"], 2, "from 1 to"),
    ("sample-n-zero", ["sample", "--n", "0", "-o", "s.jsonl"], 2, "from 1 to"),
    ("sample-width-range", ["sample", "--n", "2", "--width-range", "1..1e300", "-o", "s.jsonl"], 2, "lies within"),
    ("sample-depth-range", ["sample", "--n", "2", "--depth-range", "1..1e6", "-o", "s.jsonl"], 2, "lies within"),
    ("sample-expansion-nan", ["sample", "--n", "2", "--expansion-range", "nan..2", "-o", "s.jsonl"], 2,
     "0 < min <= max"),
    ("sample-exhausted-space", ["sample", "--n", "1000", "--from", "tiny.yaml", "--width-range", "1..1",
                                "--expansion-range", "2..2", "-o", "s.jsonl"], 1, "of 1000 distinct specs"),
    # a space of a few dozen specs: used to draw a million times before it gave up
    ("sample-resolution-range", ["sample", "--n", "2", "--resolution", "64..1e15", "-o", "s.jsonl"], 2,
     "within 1..8192"),
    ("profile-iters-huge", ["profile", "tiny.yaml", "--device", "cpu", "--iters", BIG], 2, "from 1 to"),
    ("profile-min-time-inf", ["profile", "tiny.yaml", "--device", "cpu", "--min-time", "inf"], 2, "seconds"),
    ("profile-batch-zero", ["profile", "tiny.yaml", "--device", "cpu", "--batch-size", "0"], 2, ">= 1"),
    ("profile-bad-device", ["profile", "tiny.yaml", "--device", "tpu[red]"], 2, "tpu[red]"),
    ("check-bad-counter", ["check", "cmt_s", "--counter", "[bold]x"], 2, "[bold]x"),
    ("usage-unknown-option", ["list", "--bogus"], 2, "No such option"),
    ("usage-bad-int", ["design", "--top", "abc"], 2, "--top"),
    ("usage-unknown-command", ["explode"], 2, "No such command"),
    ("usage-missing-argument", ["new"], 2, "Missing argument"),
    # ---- memory guards: weights + input batch + activations, before anything is allocated
    ("guard-build-resolution", ["build", "cmt_ti", "--set", "resolution=3200"], 2, "GiB"),
    ("guard-build-input", ["build", "cmt_ti", "--set", "in_channels=1024", "--set", "resolution=4096"], 2, "input"),
    ("guard-profile-resolution", ["profile", "cmt_ti", "--device", "cpu", "--set", "resolution=3200"], 2,
     "--force"),
    ("guard-profile-batch", ["profile", "tiny.yaml", "--device", "cpu", "--batch-size", "65536", "--set",
                             "resolution=1024"], 2, "GiB"),
    # ---- output targets
    ("out-dev-null", ["schema", "-o", "/dev/null"], 2, "not a regular file"),
    ("out-link-to-dev-null", ["schema", "-o", "to_devnull.json"], 2, "not a regular file"),
    ("out-dangling-link", ["schema", "-o", "dangling.json"], 2, "link to nothing"),
    ("out-folder", ["schema", "-o", "folder"], 2, "a folder"),
    ("out-missing-folder", ["schema", "-o", "nowhere/x.json"], 2, "folder does not exist"),
    ("out-fifo", ["sample", "--n", "2", "--from", "tiny.yaml", "-o", "fifo_out.jsonl"], 2, "not a regular file"),
    ("out-sample-link", ["sample", "--n", "2", "--from", "tiny.yaml", "-o", "to_devnull.jsonl"], 2,
     "not a regular file"),
    ("out-new-onto-base", ["new", "n", "--from", "tiny.yaml", "-o", "tiny.yaml"], 2, "also an input"),
    ("out-new-onto-extends-base", ["new", "n", "--from", "child.yaml", "-o", "tiny.yaml"], 2, "also an input"),
    ("out-new-onto-link", ["new", "n", "--from", "tiny.yaml", "-o", "to_devnull.yaml"], 2, "not a regular"),
    ("out-design-onto-base", ["design", "--macs", "3M..4M", "--from", "tiny.yaml", "-o", "tiny.yaml"], 2,
     "also an input"),
    ("out-build-onto-weights", ["build", "tiny.yaml", "--weights", "good.pt", "-o", "good.pt"], 2, "also an input"),
    ("out-build-onto-device-link", ["build", "tiny.yaml", "-o", "to_devnull.pt"], 2, "not a regular file"),
    ("out-profile-json-equals-csv", ["profile", "tiny.yaml", "--device", "cpu", "--json", "r.json", "--csv",
                                     "r.json"], 2, "two outputs"),
    ("out-profile-onto-spec", ["profile", "tiny.yaml", "--device", "cpu", "--json", "tiny.yaml"], 2, "also an input"),
    ("out-compare-plot-onto-profile", ["compare", "tiny.yaml", "--profile", "profile.png", "--plot", "profile.png"],
     2, "also an input"),
    # ---- profile results read by compare
    ("profile-dev-zero", ["compare", "tiny.yaml", "--profile", "/dev/zero"], 2, "not a regular file"),
    ("profile-fifo", ["compare", "tiny.yaml", "--profile", "fifo.json"], 2, "not a regular file"),
    ("profile-sparse", ["compare", "tiny.yaml", "--profile", "sparse.json"], 2, "larger than"),
    ("profile-deep", ["compare", "tiny.yaml", "--profile", "deep_profile.json"], 2, "nests deeper"),
    ("profile-folder", ["compare", "tiny.yaml", "--profile", "folder"], 2, "is a folder"),
    # ---- checkpoints
    ("ckpt-int-keys", ["build", "tiny.yaml", "--weights", "int_keys.pt"], 2, "int_keys.pt: "),
    ("ckpt-int32", ["build", "tiny.yaml", "--weights", "int32.pt"], 2, "int32.pt: stem.0.conv.weight: dtype int32"),
    ("ckpt-complex", ["build", "tiny.yaml", "--weights", "complex.pt"], 2, "complex.pt: stem.0.conv.weight"),
    ("ckpt-bool", ["build", "tiny.yaml", "--weights", "bool.pt"], 2, "bool.pt: stem.0.conv.weight: dtype bool"),
    ("ckpt-float-counter", ["build", "tiny.yaml", "--weights", "float_counter.pt"], 2, "num_batches_tracked"),
    ("ckpt-wrong-shape", ["build", "tiny.yaml", "--weights", "wrong_shape.pt"], 2, "wrong_shape.pt: "),
    ("ckpt-not-tensors", ["build", "tiny.yaml", "--weights", "lists.pt"], 2, "lists.pt: "),
    ("ckpt-empty", ["build", "tiny.yaml", "--weights", "empty.pt"], 2, "empty.pt: unreadable"),
    ("ckpt-truncated", ["build", "tiny.yaml", "--weights", "truncated.pt"], 2, "truncated.pt: unreadable"),
    ("ckpt-official-unknown", ["build", "tiny.yaml", "--weights", "official_unknown.pt"], 2,
     "official_unknown.pt: "),
    ("ckpt-dev-zero", ["build", "tiny.yaml", "--weights", "/dev/zero"], 2, "not a regular file"),
    ("ckpt-fifo", ["build", "tiny.yaml", "--weights", "fifo.pt"], 2, "not a regular file"),
    ("ckpt-safetensors-int", ["build", "tiny.yaml", "--weights", "int32.safetensors"], 2,
     "int32.safetensors: stem.0.conv.weight: dtype int32"),
    # ---- paths the OS refuses (round 2: once OSError, exit 70)
    ("path-schema-name-300", ["schema", "-o", "a" * 300 + ".json"], 2, "File name too long"),
    ("path-schema-4kb", ["schema", "-o", "b/" * 2100 + "x.json"], 2, "(4206 characters): File name too long"),
    ("path-design-name-300", ["design", "--macs", "4G", "-o", "a" * 300 + ".yaml"], 2, "File name too long"),
    ("path-export-name-300", ["export", "tiny.yaml", "-f", "torchscript", "-o", "a" * 300 + ".pt"], 2,
     "File name too long"),
    ("path-predict-calibration-300", ["predict", "tiny.yaml", "--calibration", "a" * 300 + ".json"], 2,
     "File name too long"),
    # ---- knobs of the newer commands (round 2)
    ("knob-calibrate-billion-blocks", ["calibrate", "--blocks", "1000000000", "-o", "c.json"], 2, "from 3 to 1000"),
    ("knob-calibrate-min-time-1e12", ["calibrate", "--min-time", "1e12", "-o", "c.json"], 2, "from 0 to 60"),
    ("knob-calibrate-part-passes-0", ["calibrate", "--part-passes", "0", "-o", "c.json"], 2, "from 1 to 10"),
    ("knob-export-threads-4096", ["export", "tiny.yaml", "-f", "torchscript", "-o", "m.pt", "--threads", "4096"],
     2, "would only measure contention"),
    ("knob-profile-billion-compare", ["compare", "tiny.yaml", "--profile", "huge_rate.json"], 2, "no record"),
]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Broken checkpoints of the tiny spec, made once per module."""
    import torch
    from safetensors.torch import save_file

    from cmt_gen import build_model

    folder = tmp_path_factory.mktemp("checkpoints")
    state = build_model(tiny_spec_dict()).state_dict()
    first = next(iter(state))
    torch.save(state, folder / "good.pt")
    torch.save({**state, 7: torch.zeros(1)}, folder / "int_keys.pt")
    for dtype, name in ((torch.int32, "int32"), (torch.complex64, "complex"), (torch.bool, "bool")):
        cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        torch.save(cast, folder / f"{name}.pt")
    torch.save({k: v.float() if not v.is_floating_point() else v for k, v in state.items()},
               folder / "float_counter.pt")
    torch.save({**state, first: torch.zeros(3)}, folder / "wrong_shape.pt")
    torch.save({"a": [1, 2], "b": "text"}, folder / "lists.pt")
    (folder / "empty.pt").write_bytes(b"")
    good = (folder / "good.pt").read_bytes()
    (folder / "truncated.pt").write_bytes(good[: len(good) // 2])
    torch.save({"blocks_a.0.proj.weight": torch.zeros(1), "blocks_a.0.bogus.weight": torch.zeros(1)},
               folder / "official_unknown.pt")
    save_file({k: v.to(torch.int32) if v.is_floating_point() else v for k, v in state.items()},
              str(folder / "int32.safetensors"))
    return folder


@pytest.fixture
def arena(tmp_path, monkeypatch, checkpoints):
    root = make_arena(tmp_path / "arena", checkpoints)
    monkeypatch.chdir(root)
    return root


def test_corpus_has_every_class():
    prefixes = {case[0].split("-")[0] for case in CASES}
    assert {"spec", "set", "design", "new", "sample", "profile", "check", "usage", "guard", "out", "ckpt",
            "path", "knob"} <= prefixes
    assert len(CASES) >= 60


@pytest.mark.parametrize("argv, code, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input_is_refused_in_one_line(cli, arena, argv, code, fragment):
    run_refused(cli, arena, argv, code, fragment)


# ---------------------------------------------------------------- user text printed literally

BRACKET_NAME = "x[bold]y[/]z[link=http://a]"


@pytest.mark.parametrize("argv, shown", [
    (["validate", "bracket_name.yaml"], BRACKET_NAME),
    (["check", "bracket_name.yaml"], BRACKET_NAME),
    (["build", "bracket_name.yaml"], BRACKET_NAME),
    (["compare", "bracket_name.yaml", "tiny.yaml"], BRACKET_NAME),
    (["new", "n[red]", "--from", "bracket_name.yaml", "-o", "n.yaml"], "n[red]"),
    (["sample", "--n", "2", "--from", "bracket_name.yaml", "-o", "s.jsonl"], BRACKET_NAME + "_s0_0000"),
    (["design", "--macs", "2M..5M", "--from", "[red]file.yaml", "--top", "1"], "base [red]file.yaml"),
    (["validate", "[red]file.yaml"], "ok [red]file.yaml: tiny"),
])
def test_names_with_brackets_are_printed_literally(cli, arena, argv, shown):
    result = cli(*argv)
    assert result.code in (0, 1), result.err
    assert shown in result.out, result.out
    assert "Traceback" not in result.err


def test_new_writes_the_bracket_name_and_nothing_else(cli, arena):
    before = set(snapshot(arena))
    assert cli("new", "n[red]", "--from", "bracket_name.yaml", "-o", "n.yaml").code == 0
    assert set(snapshot(arena)) - before == {"n.yaml"}
    assert "n[red]" in (arena / "n.yaml").read_text()


@pytest.mark.parametrize("argv", [
    ["validate", "control_name.yaml"],
    ["check", "control_name.yaml"],
    ["compare", "control_name.yaml"],
])
def test_control_characters_are_shown_escaped(cli, arena, argv):
    result = cli(*argv)
    assert result.code == 0, result.err
    assert "\x1b" not in result.out and "\u202e" not in result.out
    assert "ansi\\x1b[31mred\\u202eflip" in result.out


def test_invisible_characters_in_a_name_are_shown(cli, arena):
    """A zero-width space once printed raw, so "tiny" and "ti\u200bny" looked the same."""
    (arena / "zw.yaml").write_text((arena / "tiny.yaml").read_text().replace("name: tiny", "name: ti\u200bny"))
    result = cli("validate", "zw.yaml")
    assert result.code == 0, result.err
    assert "\u200b" not in result.out and "ti\\u200bny" in result.out


def test_control_characters_in_an_error_stay_on_one_line(cli, arena):
    result = run_refused(cli, arena, ["validate", "bad\x1b[2Jname\nnext"], 2, "no bundled spec")
    assert "\x1b" not in result.err and "\\x1b[2J" in result.err and "\\n" in result.err


def test_profile_with_a_bracket_name_writes_its_results(cli, arena):
    """Used to crash after every measurement was done, so the results were never written."""
    result = cli("profile", "bracket_name.yaml", "--device", "cpu", "--threads", "1", "--warmup", "0", "--iters",
                 "1", "--repeats", "1", "--min-time", "0", "--batch-size", "1", "--json", "out.json")
    assert result.code == 0, result.err
    assert "x[bold]y[/]z" in result.out  # the wide table may cut the name short, never read it as markup
    records = json.loads((arena / "out.json").read_text())["results"]
    assert [r["name"] for r in records] == [BRACKET_NAME]


def test_force_lets_profile_past_its_guard(cli, arena, monkeypatch):
    """The guard is up front and --force overrides it: a tiny limit refuses, --force then measures."""
    import cmt_gen.profile.fits as fits

    monkeypatch.setattr(fits, "device_memory", lambda settings: 1024)
    argv = ["profile", "tiny.yaml", "--device", "cpu", "--threads", "1", "--warmup", "0", "--iters", "1",
            "--repeats", "1", "--min-time", "0", "--batch-size", "1"]
    refused = run_refused(cli, arena, argv, 2, "--force")
    assert "weights" in refused.err and "input" in refused.err and "activations" in refused.err
    assert cli(*argv, "--force").code == 0


def test_guard_counts_the_input_batch():
    """A spec with few weights and activations but a huge input is refused for its input."""
    from cmt_gen.cost.memory_guard import memory_parts
    from cmt_gen.errors import CmtGenError
    from cmt_gen.jobs.build import check_build_fits
    from cmt_gen.spec.loading import load_spec

    spec = load_spec(tiny_spec_dict(in_channels=1024, resolution=1024))
    parts = memory_parts(spec, 1024, 1024, batch=2, mode="infer")
    assert parts["input"] == 4 * 2 * 1024 * 1024 * 1024
    without_input = parts["weights"] + parts["activations"]
    assert without_input < parts["input"]
    import cmt_gen.cost.memory_guard as guard

    original = guard.available_memory
    try:
        guard.available_memory = lambda: without_input + parts["input"] // 2
        with pytest.raises(CmtGenError, match="input 8.0"):
            check_build_fits(spec)
    finally:
        guard.available_memory = original


def test_analytic_cost_does_not_loop_over_blocks(monkeypatch):
    """Counting 1024 blocks does the work of counting one (O(stages)), and stays equal to numel. Counted in
    calls of the per-layer cost functions, not timed: the same on any machine, however busy."""
    import torch

    from cmt_gen import build_model
    from cmt_gen.cost import analytic
    from cmt_gen.cost.analytic import analytic_cost
    from cmt_gen.spec.loading import load_spec

    def spec(depth: int):
        data = tiny_spec_dict()
        data["stages"][1]["depth"] = depth
        return load_spec(data)

    calls = {"block": 0, "layer": 0}

    def counted(name: str, kind: str):
        original = getattr(analytic, name)

        def wrapper(*args, **kwargs):
            calls[kind] += 1
            return original(*args, **kwargs)
        monkeypatch.setattr(analytic, name, wrapper)

    counted("cmt_block_cost", "block")
    for name in ("conv2d", "linear", "norm"):
        counted(name, "layer")
    made = {}
    for depth in (1, 1024):
        calls.update(block=0, layer=0)
        cost = analytic_cost(spec(depth))
        made[depth] = (dict(calls), cost.macs)
    assert made[1][0] == made[1024][0] and made[1][0]["block"] > 0, made  # looping over blocks: 1023 more
    assert made[1024][1] > made[1][1]
    monkeypatch.undo()
    with torch.device("meta"):
        model = build_model(spec(5))
    assert analytic_cost(spec(5)).params == sum(p.numel() for p in model.parameters())


def test_a_link_to_a_regular_file_is_followed_and_kept(cli, arena):
    """Writing through a link replaces the file it points to; the link itself stays a link."""
    (arena / "real.json").write_text("old\n")
    (arena / "link.json").symlink_to("real.json")
    assert cli("schema", "-o", "link.json").code == 0
    assert (arena / "link.json").is_symlink() and os.readlink(arena / "link.json") == "real.json"
    assert json.loads((arena / "real.json").read_text())["title"] == "CMTSpec"
