"""Multi-bit RaBitQ indexes: no float32 copy, refined from their own codes, and `auto`."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from test_index import bytes_per_vector, low_rank, noisy_copies, paths

from multigrain.runtime.errors import MultiGrainError
from multigrain.search import refine
from multigrain.search.dedup import find_duplicate_groups
from multigrain.search.index import ImageIndex
from multigrain.search.index_store import DESCRIPTORS_FILE, current_version, load_index, save_index

FACTORY = "PCAR32,IVF16,RaBitQ6"


def test_multi_bit_rabitq_keeps_no_copy_and_one_bit_does() -> None:
    assert refine.keeps_no_copy(refine.new_base_index(64, FACTORY))
    assert not refine.keeps_no_copy(refine.new_base_index(64, "PCAR32,IVF16,RaBitQ"))
    assert not refine.keeps_no_copy(refine.new_base_index(64, "IVF16,PQ32"))
    # it visits 128 lists by default, not faiss' 1 (0.95 recall@1 needs ~96 at 1M)
    ivf = faiss.extract_index_ivf(refine.new_base_index(64, FACTORY))
    assert ivf.nprobe == refine.SELF_REFINING_NPROBE


def test_rabitq_index_agrees_with_flat_and_survives_save_remove_add(tmp_path) -> None:
    data = low_rank(3000, 64, rank=24)
    queries, _ = noisy_copies(data, 100, noise=0.02)
    truth = ImageIndex.build(data, paths(3000)).search(queries, 5)
    index = ImageIndex.build(data, paths(3000), factory=FACTORY, train_size=3000)
    assert not index.has_exact_copy and not isinstance(index.faiss_index, faiss.IndexRefine)
    found = index.search(queries, 5)
    assert np.mean(found.ids[:, 0] == truth.ids[:, 0]) >= 0.97
    np.testing.assert_allclose(found.scores[:, 0], truth.scores[:, 0], atol=0.02)
    # 6 bits a coordinate of 32 kept ones (+ a few factors and the 8-byte id), not 256 bytes
    assert bytes_per_vector(index) < 64
    with pytest.raises(MultiGrainError, match="no float32 copy"):
        _ = index.descriptors
    save_index(index, tmp_path / "idx")
    assert not (current_version(tmp_path / "idx") / DESCRIPTORS_FILE).exists()
    loaded = load_index(tmp_path / "idx")
    assert not loaded.has_exact_copy and loaded.factory == FACTORY
    again = loaded.search(queries, 5, rerank=True)  # rerank: nothing to widen, same answer
    np.testing.assert_array_equal(again.ids, found.ids)
    assert loaded.remove([int(found.ids[0, 0])]) == 1
    assert found.ids[0, 0] not in loaded.search(queries[:1], 5).ids
    assert loaded.add(data[:1], ["img/new.jpg"])[0] == 3000
    assert loaded.search(data[:1], 1).paths[0][0] in ("img/new.jpg", "img/000000.jpg")
    hits = loaded.range_search(data[5:6], 0.9)
    assert int(loaded.ids_of(["img/000005.jpg"])[0]) in hits[0][0]


def test_dedup_on_a_rabitq_index_says_to_use_the_descriptors() -> None:
    """faiss decodes a RaBitQ code's 1-bit part only, whatever the bits: too coarse to find
    duplicates with, so dedup from such an index is refused with the way that works."""
    data = low_rank(1500, 64, rank=24)
    copies, _ = noisy_copies(data, 40, noise=0.003)
    everything = np.concatenate([data, copies])
    names = paths(1540)
    index = ImageIndex.build(everything, names, factory="PCAR32,IVF8,RaBitQ6", train_size=1540)
    decoded = faiss.downcast_index(index.faiss_index).reconstruct_n(0, 200)
    cosine = (decoded * everything[:200]).sum(1) / np.linalg.norm(decoded, axis=1)
    assert np.mean(cosine) < 0.95  # what makes decoded queries useless (0.86 measured)
    with pytest.raises(MultiGrainError, match="embed` output"):
        find_duplicate_groups(index, threshold=0.98)
    assert len(find_duplicate_groups(everything, names, threshold=0.98)) >= 40


def test_auto_factory_is_flat_below_the_threshold_and_rabitq_above() -> None:
    assert refine.auto_factory(refine.AUTO_COMPRESSED_FROM - 1, 512) == "Flat"
    assert refine.auto_factory(1_000_000, 512) == "PCAR192,IVF4096,RaBitQ6"
    assert refine.auto_factory(250_000, 513) == "PCAR192,IVF2048,RaBitQ6"  # whitened: d + 1
    assert refine.auto_factory(4_000_000, 2048) == "PCAR768,IVF8192,RaBitQ6"
    assert refine.keeps_no_copy(refine.new_base_index(512, refine.auto_factory(10**6, 512)))


def test_build_auto_resolves_the_factory(monkeypatch) -> None:
    data = low_rank(2000, 64, rank=24)
    assert ImageIndex.build(data, paths(2000), factory="auto").factory == "Flat"
    monkeypatch.setattr(refine, "AUTO_COMPRESSED_FROM", 1000)
    index = ImageIndex.build(data, paths(2000), factory="auto")
    assert index.factory == "PCAR24,IVF32,RaBitQ6" and not index.has_exact_copy
