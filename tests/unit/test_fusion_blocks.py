"""The fusion represents persons a block at a time (models/fusion.py BLOCK_ROWS) and fits its PCA
from a covariance summed over blocks: both must give what the whole-frame computation gives."""

import numpy as np
import pandas as pd

from models.fusion import Fusion, row_blocks

DIM = 16


def _frame(n: int, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 4, n)
    frame = pd.DataFrame({f"f{j}": rng.normal(groups * (j % 3), 1.0) for j in range(6)}, index=pd.Index([f"p{i:06d}" for i in range(n)], name="person_id"))
    frame["plan__basic"] = (groups % 2).astype(float)
    frame["plan__pro"] = 1.0 - frame["plan__basic"]
    frame.loc[rng.random(n) < 0.15, ["f0", "f1"]] = np.nan  # a few gaps
    frame.loc[rng.random(n) < 0.1, [f"f{j}" for j in range(6)] + ["plan__basic"]] = np.nan  # little behaviour
    centres = rng.normal(size=(4, DIM))
    vectors = centres[groups] + rng.normal(scale=0.5, size=(n, DIM))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    has_text = rng.random(n) > 0.3
    frame["text_embedding"] = [v.astype(np.float32) if h else None for v, h in zip(vectors, has_text)]
    return frame


def _fusion(block_rows: int) -> Fusion:
    fusion = Fusion([c for c in _frame(1).columns if c != "text_embedding"], pca_components=5, neighbours=5)
    fusion.block_rows = block_rows
    return fusion


def test_row_blocks_cover_every_row_once_and_merge_a_short_tail():
    assert row_blocks(0, 4096) == []
    assert row_blocks(100, 4096) == [(0, 100)]
    assert row_blocks(8192 + 10, 4096) == [(0, 4096), (4096, 8202)]  # a 10-row tail joins the block before
    assert row_blocks(8192 + 5000, 4096) == [(0, 4096), (4096, 8192), (8192, 13192)]


def test_blocked_fit_and_transform_equal_the_whole_frame_computation():
    frame = _frame(13_000)
    whole, blocked = _fusion(1_000_000), _fusion(4096)
    x_whole = whole.fit_transform(frame, DIM, seed=1)
    x_blocked = blocked.fit_transform(frame, DIM, seed=1)
    for key, value in whole.arrays().items():
        if key != "pca_matrix":  # medians .. pca_mean: the same sums in the same order, bit for bit
            np.testing.assert_array_equal(getattr(blocked, key), value, err_msg=key)
    np.testing.assert_allclose(blocked.pca_matrix, whole.pca_matrix, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(x_blocked, blocked.transform(frame))  # fit_transform = fit, then transform
    # one fitted model, represented whole and in blocks: the same float32 values bit for bit
    whole_model = Fusion.restore(blocked.params(), blocked.arrays())
    whole_model.block_rows = 1_000_000
    np.testing.assert_array_equal(whole_model.transform(frame), x_blocked)
    assert np.abs(x_whole - x_blocked).max() < 1e-5


def test_covariance_pca_gives_the_svd_directions_with_the_largest_loading_positive():
    frame = _frame(9_000)
    fusion = _fusion(4096)
    fusion.fit(frame, DIM, seed=2)
    raw = np.vstack([r for _, _, r in fusion._raw_blocks(frame, fusion._prepare(frame))])
    np.testing.assert_allclose(fusion.pca_mean, raw.mean(axis=0), rtol=0, atol=1e-15)
    _, _, vt = np.linalg.svd(raw - raw.mean(axis=0), full_matrices=False)
    svd = vt[: fusion.pca_matrix.shape[1]].T
    signs = np.sign((svd * fusion.pca_matrix).sum(axis=0))
    np.testing.assert_allclose(fusion.pca_matrix, svd * signs, rtol=0, atol=1e-10)
    top = np.abs(fusion.pca_matrix).argmax(axis=0)
    assert (fusion.pca_matrix[top, np.arange(fusion.pca_matrix.shape[1])] > 0).all()
    # the imputation was exercised: people with little behaviour, and people without text
    assert fusion._prepare(frame).lend_rows.size > 1000


def test_transform_with_the_text_vectors_read_from_parquet_equals_the_frame_column(tmp_path):
    """Monitoring represents the champion's reference with its text vectors read from the file
    (ParquetVectors) instead of a pandas column of arrays: the same float32 values bit for bit,
    with file batches that do not line up with the fusion's blocks, null rows and a wrong-length row."""
    from models.fusion import ParquetVectors

    frame = _frame(13_000)
    vectors = frame["text_embedding"].to_list()
    vectors[5] = np.ones(DIM - 1, dtype=np.float32)  # no vector for the fusion
    frame["text_embedding"] = pd.Series(vectors, index=frame.index, dtype=object)
    fusion = _fusion(4096)
    fusion.fit(frame, DIM, seed=1)
    path = tmp_path / "reference.parquet"
    frame.reset_index().to_parquet(path, index=False, row_group_size=3_000)
    features = pd.read_parquet(path, columns=[c for c in frame.reset_index().columns if c != "text_embedding"])
    stored = ParquetVectors(path, batch_rows=2_500)
    assert len(stored) == len(frame)
    lengths = stored.lengths()
    assert lengths[5] == DIM - 1 and (lengths == -1).sum() == frame["text_embedding"].isna().sum()
    expected = fusion.transform(frame)
    np.testing.assert_array_equal(fusion.transform(features, stored), expected)
    # whatever the file's batches: one larger than a block, and one row at a time near the end
    np.testing.assert_array_equal(fusion.transform(features, ParquetVectors(path, batch_rows=10_000)), expected)
    picked = np.array([12_999, 7, 4_100, 0])
    picked = picked[lengths[picked] == DIM]
    np.testing.assert_array_equal(stored.take(picked, DIM), np.vstack(frame["text_embedding"].iloc[picked].to_list()))


def test_parquet_vectors_of_a_column_without_any_vector(tmp_path):
    """Sources without texts leave the embedding column all null, which Parquet stores with the null
    type: every row reads as having no vector (monitoring's reference draw failed on it with
    ArrowNotImplementedError before)."""
    from models.fusion import ParquetVectors

    path = tmp_path / "reference.parquet"
    pd.DataFrame({"person_id": [f"p{i}" for i in range(7)], "text_embedding": [None] * 7}).to_parquet(path, index=False)
    stored = ParquetVectors(path, batch_rows=3)
    assert stored.lengths().tolist() == [-1] * 7
    assert not stored.has(DIM).any()
    assert [block.shape for block in stored.ranges([(0, 4), (4, 7)], DIM)] == [(4, DIM), (3, DIM)]
