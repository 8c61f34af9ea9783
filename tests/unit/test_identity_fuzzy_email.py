"""Regression: survey answers typed under a mistyped e-mail join the person they belong to.

On 10,000 generated people the Splink pass used to link none of them. The u sample (250,000
random pairs of 21,809 training rows, 0.1% of all pairs) reached no pair in the rare fuzzy e-mail
levels, so Splink fell back to a generic default u; EM, starting from it, pushed those levels' m
towards 0, and one typo in an otherwise unique address counted *against* a match. Smaller data
hid it: there the sample does catch a few such pairs. Here 3,000 people (520 name combinations,
as in the generator) with a u sample of 10,000 pairs (0.04% of their pairs) put the test in the
large-data regime: the old code linked 0 of the 373 mistyped surveys, this one links all.
"""

import numpy as np
import pandas as pd

from personaops.config import IdentityConfig
from personaops.generate import _typo  # the generator's own one-edit typo
from personaops.identity import resolve_identities
from tests.helpers import lake_records

FIRST = ["ana", "ben", "chloe", "dan", "elena", "farid", "grace", "hugo", "ines", "jonas", "kira", "liam", "maya",
         "noah", "olga", "pedro", "quinn", "rosa", "sam", "tara", "umar", "vera", "wei", "ximena", "yuki", "zoe"]  # fmt: skip
LAST = ["berg", "chen", "garcia", "haddad", "ivanova", "jensen", "kim", "kowalski", "moreau", "muller", "novak",
        "nguyen", "okafor", "patel", "rossi", "santos", "silva", "tanaka", "cohen", "smith"]  # fmt: skip
DOMAINS = ["example.com", "mail.test", "inbox.test", "corp.example"]


def _population(people: int, seed: int = 3):
    """Shaped like the generator's sources: CRM rows (name, e-mail, phone), a ticket per person
    (some under a second address of their own), and a survey answer from every 4th person — half
    of them with one typo in the name, 1 in 8 under the name alone, the others under the e-mail,
    which every other one of those mistypes (one edit in its letters)."""
    rng = np.random.default_rng(seed)
    rows, truth, typoed = [], {}, []
    for i in range(people):
        first, last = FIRST[rng.integers(len(FIRST))], LAST[rng.integers(len(LAST))]
        name = f"{first} {last}"
        local = f"{first}.{last}{i}"
        email = f"{local}@{DOMAINS[rng.integers(len(DOMAINS))]}"
        phone = f"{rng.integers(200, 999)}{rng.integers(200, 999)}{rng.integers(1000, 9999)}"
        rows.append({"source": "crm", "source_key": f"C{i}", "customer_id": f"C{i}", "email": email, "phone": phone, "name": name})
        ticket_email = email if rng.random() > 0.1 else f"{first[0]}{last}{rng.integers(100, 999)}@personal.test"
        rows.append({"source": "tickets", "source_key": f"K{i}", "email": ticket_email})
        truth.update({f"C{i}": i, f"K{i}": i})
        if i % 4 == 0:
            survey_name = name if rng.random() < 0.5 else _typo(rng, name)
            survey_email = email
            if i % 32 == 4:
                survey_email = None
            elif i % 8 == 0:
                letters = local.rstrip("0123456789")
                survey_email = f"{_typo(rng, letters)}{local[len(letters):]}@{email.split('@')[1]}"
                if survey_email != email:
                    typoed.append(f"S{i}")
            rows.append({"source": "surveys", "source_key": f"S{i}", "email": survey_email, "name": survey_name})
            truth[f"S{i}"] = i
    return lake_records(rows), truth, typoed


def test_typo_email_surveys_join_their_person_and_nobody_else():
    records, truth, typoed = _population(3000)
    result = resolve_identities(records, IdentityConfig(u_sampling_max_pairs=1e4))
    person = result.records.set_index("source_key")["person_id"]
    joined = [k for k in typoed if person[k] == person[f"C{truth[k]}"]]
    # Every mistyped address is one edit from a unique one with the same digits and domain, and
    # the name agrees or is one typo off: require nearly all.
    assert len(joined) >= 0.95 * len(typoed), f"{len(joined)} of {len(typoed)} typo'd surveys joined their person"
    # ... and none joined someone else: each person holds only its own records.
    owners = pd.Series(truth).groupby(person.reindex(list(truth)).to_numpy()).nunique()
    assert owners.max() == 1


def test_unobserved_level_gets_the_sample_resolution_as_u():
    from personaops.matching import _clamp

    model = {
        "comparisons": [
            {
                "output_column_name": "email",
                "comparison_levels": [
                    {"is_null_level": True},
                    {"m_probability": 0.9, "u_probability": 1e-7},  # below what the sample resolves
                    {"m_probability": 0.0, "u_probability": "level not observed in training dataset"},
                    {"m_probability": 0.1},  # no u at all
                    {"m_probability": 1.0, "u_probability": 1.0},
                ],
            }
        ]
    }
    levels = _clamp(model, 250_000)["comparisons"][0]["comparison_levels"]
    assert "u_probability" not in levels[0]  # a null level has no m or u
    assert levels[1]["u_probability"] == levels[2]["u_probability"] == levels[3]["u_probability"] == 1 / 250_000
    assert levels[2]["m_probability"] == 1e-4  # EM's 0 would veto any pair
    assert levels[4]["m_probability"] == levels[4]["u_probability"] == 1 - 1e-4
