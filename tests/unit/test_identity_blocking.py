"""Splink's blocking rules stay within a pairs budget: a rule on a value many entities share (a
name) compares pairs growing with the square of the entities (962M at 1,000,000 generated
people); above `identity.max_block_pairs_per_entity` x entities it is narrowed or dropped."""

import itertools

import numpy as np
import pandas as pd

from personaops.config import IdentityConfig
from personaops.identity import resolve_identities
from personaops.matching import _blocking_rules, block_pairs, email_parts
from tests.unit.test_identity_fuzzy_email import _population


def _brute(table: pd.DataFrame, keys: list) -> int:
    values = [tuple(k(table)[i] for k in keys) for i in range(len(table))]
    return sum(1 for a, b in itertools.combinations(values, 2) if not any(pd.isna(x) for x in a + b) and a == b)


def test_block_pairs_counts_what_an_equi_join_on_the_keys_compares():
    rng = np.random.default_rng(0)
    names = pd.array(rng.choice(["ana smith", "ben chen", "ana silva", "bo", None], 120).tolist(), dtype="string")
    domains = pd.array(rng.choice(["a.test", "b.test", None], 120).tolist(), dtype="string")
    table = pd.DataFrame({"name": names, "email_domain": domains})
    assert block_pairs(table, ["name"]) == _brute(table, [lambda t: t["name"]])
    assert block_pairs(table, ["name", "email_domain"]) == _brute(table, [lambda t: t["name"], lambda t: t["email_domain"]])
    # substr as DuckDB / Spark SQL evaluate it: 1-based; a negative start counts from the end
    assert block_pairs(table, ["substr(name, 1, 3)", "substr(name, -3)"]) == _brute(
        table, [lambda t: t["name"].str[:3], lambda t: t["name"].str[-3:]]
    )
    assert block_pairs(table, ["substr(name, 1, 3)"]) > block_pairs(table, ["name"]) > 0


def test_a_rule_over_budget_is_narrowed_then_dropped_and_the_rest_kept():
    n = 400
    table = pd.DataFrame({
        "name": pd.array(["ana smith"] * n, dtype="string"),  # everyone shares one name: n(n-1)/2 pairs
        "email": pd.array([f"ana.x{i % 50}@{'ab'[i % 2]}.test" for i in range(n)], dtype="string"),
    })  # fmt: skip
    table = table.join(email_parts(table["email"]))  # email_domain (2 values), email_digits (50), head, tail
    everyone = n * (n - 1) // 2
    _, unlimited = _blocking_rules(["name", "email"], None, None)
    assert unlimited == []  # no budget: the rules as written, nothing counted
    _, decisions = _blocking_rules(["name", "email"], table, everyone)
    assert all(d["action"] == "kept" for d in decisions)
    _, decisions = _blocking_rules(["name", "email"], table, everyone // 2)
    by_rule = {d["rule"]: d for d in decisions}
    assert by_rule["name"]["pairs"] == everyone
    assert by_rule["name"]["action"] == "narrowed" and by_rule["name"]["to"] == "name & email_domain"
    assert by_rule["name"]["pairs_after"] == 2 * (n // 2) * (n // 2 - 1) // 2
    assert by_rule["email"]["action"] == "kept"
    _, decisions = _blocking_rules(["name", "email"], table, 10)  # name & domain & digits still pairs 50 groups of 8: 1,400
    by_rule = {d["rule"]: d for d in decisions}
    assert by_rule["name"]["action"] == "dropped"


def test_resolve_narrows_the_name_rule_of_a_crowded_population_and_still_links_the_typos():
    records, truth, typoed = _population(1500)
    cfg = IdentityConfig(u_sampling_max_pairs=1e4)
    narrow = cfg.model_copy(update={"max_block_pairs_per_entity": 0.5})  # 1,500 people, 520 names: ~1.3 name pairs per entity
    wide = resolve_identities(records, cfg)
    tight = resolve_identities(records, narrow)
    rules = [r["blocking_rule"] if isinstance(r, dict) else r for r in tight.index.model["blocking_rules_to_generate_predictions"]]
    wide_rules = [r["blocking_rule"] if isinstance(r, dict) else r for r in wide.index.model["blocking_rules_to_generate_predictions"]]
    assert any("email_domain" in r for r in rules) and not any("email_domain" in r for r in wide_rules)
    person = tight.records.set_index("source_key")["person_id"]
    joined = sum(person[k] == person[f"C{truth[k]}"] for k in typoed)
    assert typoed and joined >= 0.9 * len(typoed)  # mistyped e-mails block on their head/tail parts, not on the name
