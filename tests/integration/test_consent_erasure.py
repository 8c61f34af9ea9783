"""Consent and erasure on a copy of the session pipeline's workspace (docs/governance.md).

One test, in order: revoke a person's analytics consent (gone from the online store at once);
erase another person by one of their source records (no raw identifier of theirs left in any file
of the workspace); then the next run's stages on the same source files: the erased person's rows
are quarantined as 'erased' (rows in = accepted + quarantined still holds) and stay gone, and the
revoked person has no features and no assignment.
"""

from __future__ import annotations

import shutil
import time

import pandas as pd

from flows.build_personas import features, ingest, publish_champion, resolve
from personaops import consent, erasure, identity_store
from personaops.config import load_config
from personaops.feature_store import ASSIGNMENT_VIEW, feature_store
from personaops.workspace import Workspace


def _online(ws, cfg, ids):
    store = feature_store(ws, cfg)  # feast.FeatureStore on the repo, this workspace's online store
    return store.get_online_features(features=[f"{ASSIGNMENT_VIEW}:persona_id"], entity_rows=[{"person_id": i} for i in ids]).to_dict()["persona_id"]


def _pick_subject(generated) -> dict:
    """A CRM customer with a unique name who also wrote tickets (texts, embeddings) and got campaigns."""
    crm = pd.read_csv(generated / "crm.csv", dtype=str)
    tickets = pd.read_csv(generated / "tickets.csv", dtype=str, on_bad_lines="skip", engine="python", encoding_errors="replace")
    unique = crm[~crm["full_name"].duplicated(keep=False) & crm["email"].notna() & crm["phone"].notna()]
    with_tickets = unique[unique["email"].isin(tickets["email"])]
    row = with_tickets.iloc[0]
    return {"customer_id": row["customer_id"], "email": row["email"], "phone": row["phone"], "name": row["full_name"],
            "ticket_ids": tickets.loc[tickets["email"] == row["email"], "ticket_id"].tolist()}  # fmt: skip


def test_consent_revocation_and_erasure(pipeline, generated, tmp_path, monkeypatch):
    original, _ = pipeline
    home = tmp_path / "ws"
    shutil.copytree(original, home)
    monkeypatch.setenv("PERSONAS_HOME", str(home))
    cfg = load_config()
    cfg.home = home
    ws = Workspace.from_config(cfg)
    sources = str(generated / "sources.yaml")

    assignments = pd.read_parquet(ws.feature_table(ASSIGNMENT_VIEW))
    subject = _pick_subject(generated)
    erased_pid = identity_store.lookup_record(ws, "crm", subject["customer_id"])["person_id"]
    others = [p for p in assignments["person_id"].unique() if p != erased_pid]
    revoked_pid, control_pid = others[0], others[1]

    # --- consent revoked: out of the online store at once -------------------------------------
    assert None not in _online(ws, cfg, [revoked_pid, control_pid])
    row = consent.set_consent(ws, cfg, revoked_pid, "analytics", "revoked", reason="test")
    assert sum(row["online_deleted"].values()) > 0
    assert _online(ws, cfg, [revoked_pid, control_pid]) == [None, _online(ws, cfg, [control_pid])[0]]
    assert _online(ws, cfg, [control_pid])[0] is not None
    assert consent.status_of(ws, revoked_pid)["analytics"]["status"] == "revoked"
    assert consent.status_of(ws, control_pid)["analytics"] == {"status": "granted", "recorded_at": None, "reason": "", "default": True}

    # --- erasure by one source record: no raw identifier left anywhere -------------------------
    needles = [subject["email"], subject["phone"], subject["name"], subject["customer_id"], *subject["ticket_ids"]]
    before = erasure.scan(home, needles)
    assert any(subject["email"].lower() in hit for hit in before) and any("lake" in hit for hit in before)
    from personaops.identity_store import index_dir

    assert (index_dir(ws) / "entities.parquet").is_file()  # the incremental index holds Splink's attribute values
    result = erasure.erase(ws, cfg, source="crm", key=subject["customer_id"], reason="test")
    assert result["person_id"] == erased_pid and result["lake_rows"] >= 1 + len(subject["ticket_ids"])
    assert result["online_rows"] > 0 and result["cached_embeddings"] >= 1
    assert not index_dir(ws).exists()  # deleted whole: the next resolve is a full one
    left = erasure.scan(home, needles)
    assert left == [], "\n".join(left)
    assert _online(ws, cfg, [erased_pid]) == [None]
    audit_text = ws.audit_log.read_text()
    assert '"event": "erasure"' in audit_text.replace('"event":"erasure"', '"event": "erasure"') and erased_pid in audit_text

    # --- the next run's stages on the same source files ----------------------------------------
    run_id = ws.new_run_id()
    started = time.time()
    ingested = ingest.fn(sources, str(home), run_id)
    for report in ingested["sources"]:
        assert report["rows_in"] == report["accepted"] + report["quarantined"]
    quarantine = pd.concat([pd.read_parquet(p) for p in ws.quarantine.rglob("part-0.parquet")], ignore_index=True)
    erased_rows = quarantine[quarantine["reason"] == "erased"]
    assert len(erased_rows) == result["lake_rows"] and set(erased_rows["raw"]) == {"{}"}
    resolve.fn(str(home), ingested["batches"], run_id)
    featured = features.fn(str(home), ingested["batches"], ingested["kinds"])
    publish_champion(cfg, ws, featured["as_of"])
    left = erasure.scan(home, needles)
    assert left == [], "\n".join(left)
    persons = set(pd.read_parquet(ws.identity / "record_person.parquet")["person_id"])
    assert erased_pid not in persons and revoked_pid in persons  # revoked: still resolved, not processed
    written = [p for p in ws.features.glob("*.parquet") if p.stat().st_mtime >= started]
    assert {"person_behaviour", "person_text_embedding", "persona_assignment", "persona_traits"} <= {p.stem for p in written}
    for path in written:  # every table this run's features and publish stages wrote
        ids = set(pd.read_parquet(path, columns=["person_id"])["person_id"])
        assert revoked_pid not in ids and erased_pid not in ids, path.name
    published = pd.read_parquet(ws.feature_table(ASSIGNMENT_VIEW))
    assert control_pid in set(published["person_id"]) and revoked_pid not in set(published["person_id"])
    assert _online(ws, cfg, [revoked_pid, erased_pid]) == [None, None]
