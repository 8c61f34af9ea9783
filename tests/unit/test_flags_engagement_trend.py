"""The flags' engagement trend counted per person code over the events lake
(insights._engagement_trend) equals models.churn.engagement_trend over every consented event row
with its person (insights._kind_rows): same persons, same floats (NaN without a baseline)."""

import numpy as np
import pandas as pd
import pyarrow as pa

from models import churn
from personaops import insights
from personaops.workspace import Workspace


def test_engagement_trend_by_person_code_equals_the_whole_frame(tmp_path):
    ws = Workspace(tmp_path)
    rng = np.random.default_rng(5)
    as_of = pd.Timestamp("2024-10-01T00:01:42.174509Z")
    people = [f"P{i}" for i in range(60)]
    records, batches = [], {"app": ["b1", "b2"], "web": ["w1"], "crm": ["c1"]}
    for source, ids in batches.items():
        for b in ids:
            n = 500
            ev = pd.DataFrame({
                "source_key": [f"{source}-{b}-{i}" for i in range(n)],
                # ages from 0 to 120 days, some exactly on the 30- and 90-day edges, some times missing
                "event_time": as_of - pd.to_timedelta(rng.choice(np.r_[rng.uniform(0, 120, n - 4), 30.0, 90.0, 30.0, 90.0], n), unit="D"),
                "event_type": rng.choice(["a", "b"], n),
            })  # fmt: skip
            ev.loc[rng.random(n) < 0.03, "event_time"] = pd.NaT
            person = pd.Series(rng.choice(people[:50] if source != "web" else people, n))
            if source == "web":  # a source whose files carry no event time
                ev = ev.drop(columns="event_time")
            folder = ws.lake / source / f"batch={b}"
            folder.mkdir(parents=True)
            ev.iloc[1:].to_parquet(folder / "part-0.parquet", index=False)  # row 0: a record whose lake row is gone
            records.append(pd.DataFrame({"source": source, "source_key": ev["source_key"].iloc[:-1], "person_id": person.iloc[:-1]}))  # last row: no record
    record_person = pd.concat(records, ignore_index=True)
    ws.identity.mkdir(parents=True, exist_ok=True)
    record_person.to_parquet(ws.identity / "record_person.parquet", index=False)
    kinds = {"app": "events", "web": "events", "crm": "crm"}
    rows = insights._kind_rows(ws, pa.Table.from_pandas(record_person, preserve_index=False), batches, kinds, "events", ("event_time",))
    assert rows["event_time"].isna().any() and rows["person_id"].nunique() == 60
    expected = churn.engagement_trend(rows[["person_id", "event_time"]], as_of).sort_index()
    got = insights._engagement_trend(ws, batches, kinds, as_of).sort_index()
    assert expected.notna().sum() > 20 and expected.isna().any()  # persons of the time-less source only: NaN
    pd.testing.assert_series_equal(got, expected, check_exact=True, check_names=False, check_index_type=False)
    assert got.name == "engagement_trend"
    assert not list(tmp_path.glob("flags-trend-*"))  # the DuckDB spill folder removed


def test_engagement_trend_without_event_files_is_empty(tmp_path):
    got = insights._engagement_trend(Workspace(tmp_path), {"crm": ["c1"]}, {"crm": "crm"}, pd.Timestamp("2024-10-01", tz="UTC"))
    assert got.empty and got.name == "engagement_trend"
