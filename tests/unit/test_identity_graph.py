"""Identity graph behaviour: Splink pass, guards, stable ids, merge/split history, review queue."""

import numpy as np
import pandas as pd
import pytest

from personaops.config import IdentityConfig
from personaops.identity import pair_id_for, resolve_identities
from personaops.identity_store import decide, decisions, history, review_queue, write_identity
from personaops.workspace import Workspace

LETTERS = list("abcdefghijklmnopqrstuvwxyz")


def _frame(rows):
    frame = pd.DataFrame(rows)
    for col in ("customer_id", "email", "phone", "device_id", "name"):
        if col not in frame:
            frame[col] = None
    frame["_batch_id"], frame["_row_hash"] = "b", "h"
    frame["_row_number"] = range(1, len(frame) + 1)
    return frame


def _word(rng, n):
    return "".join(rng.choice(LETTERS, n))


@pytest.fixture(scope="module")
def population():
    """300 people: a CRM row each, tickets and surveys that share their e-mail (rule links for
    the model to learn from), and one survey whose name and e-mail both carry a typo."""
    rng = np.random.default_rng(3)
    rows = []
    for i in range(300):
        first, last = _word(rng, 5).capitalize(), _word(rng, 7).capitalize()
        email = f"{first.lower()}.{last.lower()}{i}@example.com"
        rows.append({"source": "crm", "source_key": f"C{i}", "customer_id": f"C{i}", "name": f"{first} {last}", "email": email,
                     "phone": f"555{rng.integers(1000000, 9999999)}"})  # fmt: skip
        if i % 2 == 0:
            rows.append({"source": "tickets", "source_key": f"K{i}", "email": email.upper()})
        if i % 3 == 0:
            typo = last[:2] + last[3] + last[2] + last[4:]
            rows.append({"source": "surveys", "source_key": f"S{i}", "name": f"{first} {typo}", "email": email})
    first, last = rows[0]["name"].split()
    local, domain = rows[0]["email"].split("@")
    typo_email = local[:2] + local[3] + local[2] + local[4:] + "@" + domain  # two letters swapped
    rows.append({"source": "surveys", "source_key": "TYPO", "name": f"{first} {last[:-1]}", "email": typo_email})
    return _frame(rows)


def _pid(result):
    return result.records.set_index(["source", "source_key"])["person_id"]


def test_splink_links_a_typo_record_that_the_rules_miss(population):
    rules_only = resolve_identities(population, IdentityConfig(probabilistic=False))
    assert _pid(rules_only)[("surveys", "TYPO")] != _pid(rules_only)[("crm", "C0")]
    result = resolve_identities(population, IdentityConfig())
    pid = _pid(result)
    assert pid[("surveys", "TYPO")] == pid[("crm", "C0")]
    linked = result.records.set_index("source_key")["linked_by"]
    assert linked["TYPO"] == "splink"
    splink_edges = result.edges[result.edges["method"] == "splink"]
    edge = splink_edges[(splink_edges["record_l"] == "surveys:TYPO") | (splink_edges["record_r"] == "surveys:TYPO")]
    assert len(edge) == 1 and edge["match_probability"].iloc[0] >= IdentityConfig().match_probability_threshold
    assert "name:fuzzy" in edge["agreed"].iloc[0] and "email:fuzzy" in edge["agreed"].iloc[0]
    # It merged nothing else: every other person is exactly one CRM customer.
    assert result.stats["persons"] == 300


def test_every_record_maps_to_exactly_one_person(population):
    result = resolve_identities(population, IdentityConfig())
    out = result.records
    assert len(out) == len(population)
    assert not out.duplicated(["source", "source_key"]).any()
    assert out["person_id"].notna().all() and out["person_id"].str.match(r"^P[0-9a-f]{12}$").all()
    # One customer id per person: the cap holds across both passes.
    crm = out[out["source"] == "crm"]
    assert crm["person_id"].is_unique


def test_blocked_values_never_link_people():
    rows = [
        {"source": "crm", "source_key": "A", "customer_id": "A", "email": "test@test.com", "phone": "0000000000", "name": "Ann Lee"},
        {"source": "crm", "source_key": "B", "customer_id": "B", "email": "TEST@test.com", "phone": "000-000-0000", "name": "Bo Kim"},
        {"source": "tickets", "source_key": "T1", "email": "unknown"},
        {"source": "tickets", "source_key": "T2", "email": "unknown"},
        {"source": "tickets", "source_key": "T3", "email": "n/a", "phone": "0000000000"},
    ]
    result = resolve_identities(_frame(rows), IdentityConfig(min_entities_for_matching=2))
    assert result.records["person_id"].nunique() == 5
    assert (result.edges["method"] != "rule").all() or result.edges.empty


def test_a_shared_email_never_merges_two_customers():
    rows = [
        {"source": "crm", "source_key": "A", "customer_id": "A", "email": "family@example.com"},
        {"source": "crm", "source_key": "B", "customer_id": "B", "email": "family@example.com"},
        {"source": "tickets", "source_key": "T", "email": "family@example.com"},
    ]
    result = resolve_identities(_frame(rows), IdentityConfig(probabilistic=False))
    pid = result.records.set_index("source_key")["person_id"]
    assert pid["A"] != pid["B"]
    assert pid["T"] in {pid["A"], pid["B"]}  # the ticket joins the first customer by rule priority
    assert result.stats["refused_links"] == 1


def test_ids_are_stable_across_a_rerun(population):
    first = resolve_identities(population, IdentityConfig())
    second = resolve_identities(population, IdentityConfig(), previous=first.records)
    assert (first.records["person_id"] == second.records["person_id"]).all()
    assert second.events == []
    shuffled = population.sample(frac=1, random_state=1)
    third = resolve_identities(shuffled, IdentityConfig(), previous=second.records)
    merged = third.records.merge(second.records, on=["source", "source_key"], suffixes=("_new", "_old"))
    assert len(merged) == len(population) and (merged["person_id_new"] == merged["person_id_old"]).all()


def test_a_merge_and_a_split_are_recorded_in_history(tmp_path):
    ws = Workspace(tmp_path)
    cfg = IdentityConfig(probabilistic=False)
    base = [
        {"source": "crm", "source_key": "C1", "customer_id": "C1", "email": "a@example.com"},
        {"source": "tickets", "source_key": "T1", "email": "b@example.com", "phone": "5551112222"},
    ]
    run1 = resolve_identities(_frame(base), cfg)
    write_identity(ws, run1, "run1")
    p1, p2 = _pid(run1)[("crm", "C1")], _pid(run1)[("tickets", "T1")]
    assert p1 != p2

    bridge = base + [{"source": "tickets", "source_key": "T2", "email": "a@example.com", "phone": "555-111-2222"}]
    run2 = resolve_identities(_frame(bridge), cfg, previous=run1.records)
    write_identity(ws, run2, "run2")
    merged_id = _pid(run2)[("crm", "C1")]
    assert _pid(run2)[("tickets", "T1")] == merged_id == p1  # on a tie, the id of the anchor (customer C1) survives
    (merge,) = run2.events
    assert merge["event"] == "merge" and merge["old_ids"] == sorted([p1, p2]) and merge["new_ids"] == [p1]
    assert {e["rule"] for e in merge["evidence"]} & {"email", "phone"}

    run3 = resolve_identities(_frame(base), cfg, previous=run2.records)  # the bridging ticket is gone
    write_identity(ws, run3, "run3")
    (split,) = run3.events
    assert split["event"] == "split" and split["old_ids"] == [p1] and p1 in split["new_ids"] and len(split["new_ids"]) == 2
    assert _pid(run3)[("crm", "C1")] == p1
    assert _pid(run3)[("tickets", "T1")] == p2  # undoing the merge gives the split-off records their anchor's id back

    events = history(ws, p1)
    assert [(e["event"], e["run_id"]) for e in events] == [("merge", "run2"), ("split", "run3")]


def test_review_decisions_are_honoured_by_later_runs(tmp_path, population):
    ws = Workspace(tmp_path)
    # A threshold no pair reaches puts the typo'd survey's match in the review band.
    cautious = IdentityConfig(match_probability_threshold=0.999999999999, review_probability_min=0.5)
    run1 = resolve_identities(population, cautious)
    write_identity(ws, run1, "run1")
    pair = pair_id_for("surveys:TYPO", "crm:C0")
    queue = review_queue(ws)
    assert pair in set(queue["pair_id"])
    assert _pid(run1)[("surveys", "TYPO")] != _pid(run1)[("crm", "C0")]

    decide(ws, pair, "accept")
    assert pair not in set(review_queue(ws)["pair_id"])
    run2 = resolve_identities(population, cautious, previous=run1.records, decisions=decisions(ws))
    assert _pid(run2)[("surveys", "TYPO")] == _pid(run2)[("crm", "C0")]
    assert run2.records.set_index("source_key")["linked_by"]["TYPO"] == "review"
    write_identity(ws, run2, "run2")

    # A later rejection wins over the acceptance, even at a threshold that would merge the pair.
    with (ws.identity / "review_decisions.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(f'{{"pair_id": "{pair}", "record_l": "crm:C0", "record_r": "surveys:TYPO", "decision": "reject"}}\n')
    run3 = resolve_identities(population, IdentityConfig(), previous=run2.records, decisions=decisions(ws))
    assert _pid(run3)[("surveys", "TYPO")] != _pid(run3)[("crm", "C0")]
    assert run3.stats["refused_links"] >= 1
    assert pair not in set(run3.review["pair_id"])  # decided pairs never return to the queue
