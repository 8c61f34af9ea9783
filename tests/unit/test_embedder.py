"""The embedding cache and the fast path's quality guard, on the real bundled MiniLM model."""

from __future__ import annotations

import json
from itertools import product

import numpy as np
import pytest

from models.embedder import TextEmbedder, model_fingerprint, normalise_text

SUBJECTS = ["The export", "My invoice", "The mobile app", "Password reset", "The dashboard", "Billing", "Search"]
PROBLEMS = ["fails with error 500", "is slower than last week", "shows the wrong currency", "works great, thanks", "logs me out every hour", "needs a dark mode"]


def texts(n: int, offset: int = 0) -> list[str]:
    combos = [f"{s} {p}." for s, p in product(SUBJECTS, PROBLEMS)]
    return combos[offset : offset + n]


@pytest.fixture(scope="module")
def shared_embedder():
    """One loaded model for the module (loading it is the slow part)."""
    return TextEmbedder(precision="fp32")


def embedder_like(model_holder: TextEmbedder, cache_dir, **kw) -> TextEmbedder:
    e = TextEmbedder(model_holder.model_path, cache_dir, 16, **kw)
    e.__dict__["model"] = model_holder.model  # same loaded weights, fresh cache state
    return e


def test_cache_returns_identical_vectors_for_identical_text_and_model(shared_embedder, tmp_path):
    first = embedder_like(shared_embedder, tmp_path, precision="fp32")
    batch = texts(12)
    a = first.encode(batch)
    assert first.texts_encoded == 12 and a.shape == (12, 384)
    second = embedder_like(shared_embedder, tmp_path, precision="fp32")
    b = second.encode(batch)
    assert np.array_equal(a, b)  # the stored bytes, not a re-computation
    assert second.texts_encoded == 0 and second.last_run.cached == 12
    # Normalised text shares the key: extra whitespace is the same text.
    spaced = second.encode(["  " + batch[3].replace(" ", "   ") + "\n"])
    assert np.array_equal(spaced[0], a[3]) and second.texts_encoded == 0
    assert normalise_text(" a \t b\n") == "a b"
    stored = list((tmp_path / first.model_id).glob("part-*.parquet"))
    assert len(stored) == 1


def test_model_fingerprint_follows_the_model_files(tmp_path):
    one, two = tmp_path / "m1", tmp_path / "m2"
    for folder, weights in ((one, b"w1"), (two, b"w2")):
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(weights)
    assert model_fingerprint(str(one)) != model_fingerprint(str(two))
    (two / "model.safetensors").write_bytes(b"w1")
    assert model_fingerprint(str(one)) == model_fingerprint(str(two))


def test_incremental_run_embeds_only_new_texts(shared_embedder, tmp_path):
    embedder = embedder_like(shared_embedder, tmp_path, precision="fp32")
    old = texts(20)
    before = embedder.encode(old)
    assert embedder.texts_encoded == 20
    new = texts(5, offset=20)
    rerun = embedder_like(shared_embedder, tmp_path, precision="fp32")
    after = rerun.encode(old + new + [old[0], new[0]])  # duplicates are embedded once
    assert rerun.texts_encoded == 5
    assert (rerun.last_run.distinct, rerun.last_run.cached, rerun.last_run.encoded) == (25, 20, 5)
    assert np.array_equal(after[:20], before)
    assert np.array_equal(after[25], after[0]) and np.array_equal(after[26], after[20])
    unchanged = embedder_like(shared_embedder, tmp_path, precision="fp32")
    unchanged.encode(old + new)
    assert unchanged.texts_encoded == 0


def test_fast_path_guard_falls_back_to_fp32_below_the_floor(shared_embedder, tmp_path):
    batch = texts(30)
    # A cosine floor above 1 cannot be met: the guard must measure bf16 and refuse it.
    guarded = embedder_like(shared_embedder, tmp_path / "strict", precision="bf16", min_cosine=1.01, quality_sample=24)
    vectors = guarded.encode(batch)
    run = guarded.last_run
    assert run.precision == "fp32"
    cal = run.calibration
    assert cal["precision"] == "fp32" and "below the quality floor" in cal["reason"] and "min_cosine" in cal["reason"]
    assert cal["sample"] == 24 and 0.99 < cal["min_cosine"] < 1.01
    reference = shared_embedder._raw_encode([normalise_text(t) for t in batch], "fp32")
    assert np.min((vectors * reference).sum(axis=1)) > 0.99999
    stored = json.loads((tmp_path / "strict" / guarded.model_id / "calibration.json").read_text())
    assert stored["precision"] == "fp32" and stored["floors"]["min_cosine"] == 1.01


def test_fast_path_is_used_when_it_meets_the_floors_and_its_decision_is_kept(shared_embedder, tmp_path):
    batch = texts(30)
    fast = embedder_like(shared_embedder, tmp_path, precision="bf16", min_cosine=0.99, mean_cosine=0.999, min_top10_overlap=0.8, quality_sample=24)
    vectors = fast.encode(batch)
    cal = fast.last_run.calibration
    assert fast.last_run.precision == "bf16" and cal["precision"] == "bf16"
    assert cal["min_cosine"] >= 0.99 and cal["top10_overlap"] >= 0.8
    reference = shared_embedder._raw_encode([normalise_text(t) for t in batch], "fp32")
    cosine = (vectors * reference).sum(axis=1)
    assert cosine.min() > 0.99 and not np.array_equal(vectors, reference)
    # A later run reads the stored decision instead of re-measuring.
    later = embedder_like(shared_embedder, tmp_path, precision="bf16", min_cosine=0.99, mean_cosine=0.999, min_top10_overlap=0.8, quality_sample=24)
    later.encode(texts(2, offset=30))
    assert later._calibration is not None and later._calibration.fp32_seconds == cal["fp32_seconds"]


def test_encode_rows_holds_each_distinct_text_once_and_reads_the_cache_a_row_group_at_a_time(shared_embedder, tmp_path, monkeypatch):
    import models.embedder as E

    monkeypatch.setattr(E, "CACHE_ROW_GROUP", 4)  # several row groups per cache part
    first = embedder_like(shared_embedder, tmp_path, precision="fp32")
    batch = texts(10)
    direct = first.encode(batch)  # stored as one part of 3 row groups
    rows = texts(10) + [batch[2], " " + batch[7], batch[2]] + texts(3, offset=10)  # repeats, then 3 new texts
    again = embedder_like(shared_embedder, tmp_path, precision="fp32")
    compact = again.encode_rows(rows)
    assert (again.last_run.distinct, again.last_run.cached, again.last_run.encoded) == (13, 10, 3)
    assert compact.shape == (16, 384) and compact.distinct.shape == (13, 384)
    whole = embedder_like(shared_embedder, tmp_path, precision="fp32").encode(rows)
    assert np.array_equal(compact.to_numpy(), whole) and np.array_equal(whole[:10], direct)
    mask = np.arange(16) % 3 == 0
    assert np.array_equal(compact[mask], whole[mask])
    assert np.array_equal(whole[10], whole[2]) and np.array_equal(whole[11], whole[7])


def test_person_embeddings_sum_each_persons_latest_vectors_as_np_add_at_does():
    """The per-position sums give the bit-for-bit result of np.add.at over the latest `max_texts`
    rows of each person (rows in any order, missing times first, persons with 1..12 texts)."""
    import pandas as pd

    from models.embedder import person_embeddings

    rng = np.random.default_rng(3)
    n = 4_000
    texts = pd.DataFrame({"person_id": [f"p{x:04d}" for x in rng.integers(0, 700, n)],
                          "event_time": pd.to_datetime(rng.integers(1_600_000_000, 1_700_000_000, n), unit="s")})  # fmt: skip
    texts.loc[rng.integers(0, n, 40), "event_time"] = pd.NaT
    vectors = rng.standard_normal((n, 16)).astype(np.float32)
    for max_texts in (1, 5, 50):
        got = person_embeddings(texts, vectors, max_texts)
        frame = texts.assign(row=np.arange(n)).sort_values(["person_id", "event_time"], na_position="first").groupby("person_id", sort=False).tail(max_texts)
        codes, persons = pd.factorize(frame["person_id"], sort=True)
        sums = np.zeros((len(persons), 16))
        np.add.at(sums, codes, vectors[frame["row"].to_numpy()])
        want = (sums / np.linalg.norm(sums, axis=1, keepdims=True)).astype(np.float32)
        assert list(got["person_id"]) == list(persons)
        assert got["n_texts"].tolist() == np.bincount(codes).tolist()
        assert got["n_texts"].max() == min(max_texts, texts["person_id"].value_counts().max())
        assert np.array_equal(np.stack(got["text_embedding"]), want)
