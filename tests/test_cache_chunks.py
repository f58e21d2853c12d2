"""The deploy form runs cache-spilling stages a few images at a time, with the same outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_spec_dict

from cmt_gen import build_model
from cmt_gen.deploy import cache_chunks
from cmt_gen.deploy.rewrite import DeployCMTStage


def _fake_caches(root: Path, caches: list[tuple[str, str]]) -> Path:
    for i, (kind, size) in enumerate(caches):
        index = root / f"index{i}"
        index.mkdir(parents=True)
        (index / "type").write_text(kind + "\n")
        (index / "size").write_text(size + "\n")
    return root


def test_last_level_cache_is_the_largest_data_cache(tmp_path: Path) -> None:
    root = _fake_caches(tmp_path / "cache", [("Data", "48K"), ("Instruction", "64M"), ("Unified", "1024K"),
                                             ("Unified", "32768K")])
    assert cache_chunks.last_level_cache_bytes(root) == 32 << 20


def test_last_level_cache_falls_back_where_sysfs_says_nothing(tmp_path: Path) -> None:
    assert cache_chunks.last_level_cache_bytes(tmp_path / "absent") == cache_chunks.FALLBACK_CACHE_BYTES
    root = _fake_caches(tmp_path / "odd", [("Unified", "lots"), ("Data", "0K")])
    assert cache_chunks.last_level_cache_bytes(root) == cache_chunks.FALLBACK_CACHE_BYTES


def test_a_batch_splits_into_as_many_even_chunks_as_half_caches_it_fills(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_chunks, "last_level_cache_bytes", lambda: 32 << 20)
    stage1 = torch.empty(16, 3136, 64)  # CMT-S at 224: 16 x 3136 x 256 x 4 B = 51 MB of IRFFN map
    assert [len(part) for part in cache_chunks.image_chunks(stage1, 256)] == [4, 4, 4, 4]
    stage2 = torch.empty(16, 784, 128)
    assert [len(part) for part in cache_chunks.image_chunks(stage2, 512)] == [8, 8]
    stage3 = torch.empty(16, 196, 256)  # 12.8 MB: one chunk, the batch itself
    parts = cache_chunks.image_chunks(stage3, 1024)
    assert len(parts) == 1 and parts[0] is stage3
    assert [len(part) for part in cache_chunks.image_chunks(torch.empty(10, 3136, 64), 256)] == [5, 5]
    assert len(cache_chunks.image_chunks(torch.empty(1, 3136 * 64, 64), 256)) == 1  # one image is the floor


def test_chunked_stages_give_the_whole_batch_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_spec_dict()).eval().reparameterize()
    x = torch.randn(6, 3, 64, 64)
    calls: list[int] = []
    real = cache_chunks.image_chunks

    def counting(tokens: torch.Tensor, widest: int) -> list[torch.Tensor]:
        parts = real(tokens, widest)
        calls.append(len(parts))
        return parts

    monkeypatch.setattr(cache_chunks, "image_chunks", counting)
    with torch.inference_mode():
        monkeypatch.setattr(cache_chunks, "last_level_cache_bytes", lambda: 1 << 40)
        whole = model(x)
        assert calls == [1, 1, 1, 1]
        monkeypatch.setattr(cache_chunks, "last_level_cache_bytes", lambda: 2 * 16 * 16 * 32 * 4)  # 1 image, stage 1
        chunked = model(x)
    assert calls[4] == 6  # stage 1 ran image by image
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)


def test_graph_capture_and_autograd_see_no_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Traced and compiled graphs (and training-time calls) stay whole-batch: the split is an
    eager CPU inference choice, not part of the network."""
    monkeypatch.setattr(cache_chunks, "last_level_cache_bytes", lambda: 1)
    calls: list[int] = []
    monkeypatch.setattr(cache_chunks, "image_chunks", lambda t, w: calls.append(1) or [t])
    model = build_model(tiny_spec_dict()).eval().reparameterize()
    x = torch.randn(2, 3, 64, 64)
    model(x)  # grad enabled
    with torch.no_grad():
        torch.export.export(model, (x,))
    assert calls == []
    assert any(isinstance(m, DeployCMTStage) for m in model.modules())
