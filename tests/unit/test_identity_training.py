"""EM trains on the sampled record rows (`identity.max_training_rows`), never on the entities.

The rule pass already merged the records that share an identifier, so among the entities the
strong identifiers match almost no pair: EM blocked on them finds nothing to learn, and the only
session left blocks on the name, whose pairs grow with the square of the entities (94M pairs at
300,000 generated people, 1.05 billion at 1,000,000, where it ran for more than 27 minutes). The
record rows keep the links the rules made, so the e-mail session has real matches to learn from
and the EM tables stay as large as the sample, whatever the population.
"""

import numpy as np
import pandas as pd

from personaops.matching import score_entities


def _frames(entities: int = 400, linked: int = 80, seed: int = 3):
    rng = np.random.default_rng(seed)
    first = np.array(["ana", "ben", "carla", "dev", "eli", "farah", "gus", "hana", "ivan", "jo"])
    last = np.array(["smith", "jones", "garcia", "lee", "khan", "novak", "silva", "moreau"])
    names = pd.Series(rng.choice(first, entities)) + " " + pd.Series(rng.choice(last, entities))
    emails = [f"{n.replace(' ', '.')}{i}@mail{i % 3}.example" for i, n in enumerate(names)]
    ents = pd.DataFrame({"entity": np.arange(entities), "name": names, "email": emails})
    # The sample of record rows: fewer rows than entities, and `linked` e-mails seen twice, once
    # with a typo'd name (two records the rules joined on the e-mail).
    rows = ents.sample(entities // 2, random_state=seed)[["name", "email"]]
    twins = rows.head(linked).assign(name=lambda f: f["name"].str[:-1] + "x")
    training = pd.concat([rows, twins], ignore_index=True).rename_axis("entity").reset_index()
    return ents, training


def test_em_trains_on_the_record_sample_even_when_entities_outnumber_it():
    entities, training = _frames()
    assert len(training) < len(entities)
    result = score_entities(entities, training, min_entities=10, seed=1, max_pairs_u=2e4, min_probability=0.5)
    assert result.trained
    # Two sessions: the e-mail (80 linked pairs in the sample; none among the entities) and the name.
    assert result.em_sessions == 2
    # The name's m values come from the e-mail session (a session cannot train what it blocks on):
    # on the entities only the name session runs, and they would stay at their priors.
    name = next(c for c in result.model["comparisons"] if c["output_column_name"] == "name")
    m = [level["m_probability"] for level in name["comparison_levels"] if not level.get("is_null_level")]
    assert m != [0.80, 0.10, 0.05, 0.03, 0.02]
