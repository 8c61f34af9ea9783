"""sources.yaml: what each source is, where it lives, and which columns play which role.

```yaml
sources:
  - name: crm                 # unique, [a-z0-9_]
    kind: crm                 # crm | events | tickets | surveys | campaigns
    path: crm.csv             # CSV or Parquet, file or folder; relative to this file
    key: customer_id          # the source's own record id (optional: row number otherwise)
    identifiers: {customer_id: customer_id, email: email, phone: phone, name: full_name}
    attributes: {}            # person attributes the probabilistic match compares, never rule
                              # keys: first_name, last_name, date_of_birth, postcode, address,
                              # city, national_id; a value may list columns to join
    timestamp: signup_date
    text: []                  # free-text columns (embedded)
    numeric: [] ; categorical: [plan, region]
    labels: [churned]         # outcomes, never model inputs
    sensitive: [age_band, gender]   # bias audits only, never model inputs
    fields: {}                # kind roles: events {event_type, session_id}, surveys {score},
                              #             campaigns {campaign, converted}
```
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from personaops.errors import SourceError

SourceKind = Literal["crm", "events", "tickets", "surveys", "campaigns"]
IdentifierKind = Literal["customer_id", "email", "phone", "name", "device_id", "account_id"]
IDENTIFIER_KINDS: tuple[str, ...] = ("customer_id", "email", "phone", "name", "device_id", "account_id")
# Person attributes: compared by the probabilistic identity pass (with typo tolerance), never
# used as deterministic link keys — a date of birth or postcode is shared by many people, and a
# national id is often keyed with typos.
AttributeKind = Literal["first_name", "last_name", "date_of_birth", "postcode", "address", "city", "national_id"]
ATTRIBUTE_KINDS: tuple[str, ...] = ("first_name", "last_name", "date_of_birth", "postcode", "address", "city", "national_id")

# Kind-specific roles: which `fields` each kind requires and allows.
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "crm": (),
    "events": ("event_type",),
    "tickets": (),
    "surveys": (),
    "campaigns": ("campaign", "converted"),
}
ALLOWED_FIELDS: dict[str, tuple[str, ...]] = {
    "crm": (),
    "events": ("event_type", "session_id"),
    "tickets": (),
    "surveys": ("score",),
    "campaigns": ("campaign", "converted"),
}


class SourceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    kind: SourceKind
    path: Path
    format: Literal["csv", "parquet"] | None = None
    key: str | None = None
    identifiers: dict[IdentifierKind, str] = {}
    # One column, or several joined with a space (e.g. address: [street_number, street, locality]).
    attributes: dict[AttributeKind, str | list[str]] = {}
    timestamp: str | None = None
    text: list[str] = []
    numeric: list[str] = []
    categorical: list[str] = []
    labels: list[str] = []
    sensitive: list[str] = []
    fields: dict[str, str] = {}

    @model_validator(mode="after")
    def _check_roles(self) -> "SourceSpec":
        if not self.identifiers and not self.attributes:
            raise ValueError("needs at least one identifier column (customer_id, email, phone, name, device_id or account_id) or person attribute column")
        if any(not isinstance(v, str) and not v for v in self.attributes.values()):
            raise ValueError("an attribute maps to an empty list of columns; name at least one column")
        missing = [f for f in REQUIRED_FIELDS[self.kind] if f not in self.fields]
        if missing:
            raise ValueError(f"a {self.kind} source needs fields: {', '.join(missing)}")
        unknown = [f for f in self.fields if f not in ALLOWED_FIELDS[self.kind]]
        if unknown:
            raise ValueError(f"fields {', '.join(unknown)} are not roles of a {self.kind} source (allowed: {', '.join(ALLOWED_FIELDS[self.kind]) or 'none'})")
        if self.kind == "events" and not self.timestamp:
            raise ValueError("an events source needs a timestamp column")
        if self.kind == "tickets" and not self.text:
            raise ValueError("a tickets source needs at least one text column")
        return self

    def mapped_columns(self) -> list[str]:
        """Every file column this mapping reads, in a stable order, without repeats."""
        cols = ([self.key] if self.key else []) + list(self.identifiers.values())
        cols += [c for v in self.attributes.values() for c in ([v] if isinstance(v, str) else v)]
        cols += [self.timestamp] if self.timestamp else []
        cols += self.text + self.numeric + self.categorical + self.labels + self.sensitive
        cols += list(self.fields.values())
        return list(dict.fromkeys(cols))

    def files(self) -> list[Path]:
        """The data files of this source (a file, or a folder's CSV/Parquet files in name order)."""
        if self.path.is_dir():
            found = sorted(p for p in self.path.iterdir() if p.suffix.lower() in (".csv", ".parquet") and p.is_file())
            if not found:
                raise SourceError(f"Source '{self.name}': folder {self.path} holds no .csv or .parquet files; point path at your data.")
            return found
        if not self.path.exists():
            raise SourceError(f"Source '{self.name}': file {self.path} does not exist; fix its path in sources.yaml.")
        return [self.path]

    def require_columns(self, path: Path, columns: list) -> None:
        """Raise the one-sentence error of a mapped column that is not among a file's columns."""
        missing = [c for c in self.mapped_columns() if c not in columns]
        if missing:
            raise SourceError(
                f"Source '{self.name}': column '{missing[0]}' of the mapping is not in {path} (it has: {', '.join(map(str, list(columns)[:12]))}); fix the mapping in sources.yaml."
            )

    def check_columns(self) -> None:
        """Fail fast, before any service starts: every mapped column is in every file's header
        (only headers and Parquet schemas are read; an empty file is zero rows, not an error)."""
        for path in self.files():
            columns = read_columns(self, path)
            if columns is not None:
                self.require_columns(path, columns)

    def file_format(self, path: Path) -> str:
        if self.format:
            return self.format
        suffix = path.suffix.lower()
        if suffix in (".csv", ".parquet"):
            return suffix[1:]
        raise SourceError(f"Source '{self.name}': cannot tell the format of {path} from its name; set format: csv or parquet.")


class SourcesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sources: list[SourceSpec]


def load_sources(path: Path) -> list[SourceSpec]:
    """Parse sources.yaml; paths become absolute (relative to the file). Raises SourceError."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"Sources file {path} does not exist; pass the path of your sources.yaml with --sources.")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SourceError(f"Sources file {path} is not valid YAML ({exc.__class__.__name__}); fix its syntax.") from None
    try:
        parsed = SourcesFile.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = list(err["loc"])
        where = ""
        if len(loc) >= 2 and loc[0] == "sources" and isinstance(loc[1], int):
            entries = raw.get("sources") or []
            name = entries[loc[1]].get("name") if isinstance(entries[loc[1]], dict) else None
            where = f" source '{name or loc[1]}'"
            loc = loc[2:]
        key = ".".join(str(p) for p in loc)
        msg = re.sub(r"^Value error, ", "", err["msg"])
        what = f"unknown key '{key}'" if err["type"] == "extra_forbidden" else (f"'{key}' {msg}" if key else msg)
        raise SourceError(f"Sources file {path}{where}: {what}; see docs/sources.md.") from None
    names = [s.name for s in parsed.sources]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SourceError(f"Sources file {path}: source name '{dupes[0]}' is used twice; give each source a unique name.")
    if not parsed.sources:
        raise SourceError(f"Sources file {path} lists no sources; add at least one (a CRM table alone is enough).")
    for spec in parsed.sources:
        if not spec.path.is_absolute():
            spec.path = (path.parent / spec.path).resolve()
    return parsed.sources


def dump_sources(specs: list[SourceSpec], path: Path) -> None:
    """Write a sources.yaml with paths relative to its folder when they lie under it."""
    entries = []
    for spec in specs:
        data = spec.model_dump(mode="json", exclude_none=True, exclude_defaults=False)
        p = Path(spec.path)
        try:
            data["path"] = str(p.relative_to(path.parent))
        except ValueError:
            data["path"] = str(p)
        entries.append({k: v for k, v in data.items() if v not in ([], {})})
    path.write_text(yaml.safe_dump({"sources": entries}, sort_keys=False), encoding="utf-8")


def read_columns(spec: SourceSpec, path: Path) -> list[str] | None:
    """A file's column names from its header line or Parquet schema (None: an empty file)."""
    import csv

    if spec.file_format(path) == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(path).names)
        except (pa.ArrowException, OSError) as exc:
            raise SourceError(f"Source '{spec.name}': {path} is not a readable Parquet file ({exc.__class__.__name__}); re-export it or fix format.") from None
    try:
        with open(path, "rb") as fh:
            first = fh.read(2)
            if first in (b"\xff\xfe", b"\xfe\xff"):
                raise SourceError(f"Source '{spec.name}': {path} is UTF-16 encoded; save it as UTF-8 (CSV UTF-8) and run again.")
            fh.seek(0)
            for line in iter(lambda: fh.readline(1 << 20), b""):
                text = line.decode("utf-8", errors="replace").lstrip("\ufeff")
                if text.strip():
                    try:
                        return [h.strip() for h in next(csv.reader([text]))]
                    except (csv.Error, StopIteration):
                        return None  # a header the ingest itself will report on
    except OSError as exc:
        raise SourceError(f"Source '{spec.name}': cannot read {path} ({exc.strerror}); check the path and its permissions.") from None
    return None
