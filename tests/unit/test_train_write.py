"""The training reference frame is written to Parquet a block of rows at a time
(models/train.py write_frame): the file must read back as `to_parquet` of the whole frame."""

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from models.train import write_frame


def test_blocked_write_reads_back_as_the_whole_frame_written_at_once(tmp_path):
    rng = np.random.default_rng(0)
    n = 1_050
    frame = pd.DataFrame({"person_id": [f"p{i:05d}" for i in range(n)], "n_events": rng.integers(0, 9, n).astype(float), "persona_id": rng.integers(-1, 4, n)})
    frame.loc[rng.random(n) < 0.2, "n_events"] = np.nan
    frame["text_embedding"] = [None if i < 300 or i % 7 == 0 else rng.normal(size=8).astype(np.float32) for i in range(n)]  # a first block without any
    frame.to_parquet(tmp_path / "whole.parquet", index=False)
    write_frame(frame, tmp_path / "blocks.parquet", rows=256)
    assert pq.ParquetFile(tmp_path / "blocks.parquet").num_row_groups == 5
    whole, blocks = pd.read_parquet(tmp_path / "whole.parquet"), pd.read_parquet(tmp_path / "blocks.parquet")
    pd.testing.assert_frame_equal(whole.drop(columns="text_embedding"), blocks.drop(columns="text_embedding"), check_exact=True)
    for a, b in zip(whole["text_embedding"], blocks["text_embedding"]):
        assert (a is None and b is None) or (a.dtype == b.dtype and np.array_equal(a, b))
    assert pq.read_schema(tmp_path / "whole.parquet").remove_metadata() == pq.read_schema(tmp_path / "blocks.parquet").remove_metadata()
