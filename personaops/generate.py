"""Synthetic multi-source data with planted personas and identity noise (deterministic per seed).

Five latent personas, each with its own event mix and activity, support vocabulary, survey
scores and language, campaign response and churn rate. The same people appear across CRM,
telemetry, tickets, surveys and campaigns under different keys, with typos, formatting noise,
missing fields, anonymous events on shared devices and alternate e-mail addresses. Writes the
sources, a `sources.yaml` describing them, and `truth/records.parquet` (source, source_key,
true_person) + `truth/persons.parquet` (true_person, true_persona, churned, ...).

`period` > 0 re-observes the same population 30 days later per period (new events, tickets,
surveys and campaigns), with turnover: some people join (new ids and CRM rows, active from their
sign-up) and some leave (CRM row kept, no more activity; people who churn more often); `drift`
plants a change: `mix` (half the casual browsers become deal
seekers), `behaviour` (activity halves within every persona), `vocabulary` (half the texts use
new words), `broken` (40% of events lose their event type, 30% of survey scores are text) or
`bias` (80% of one region's telemetry goes missing).

Planted for the insight questions (`truth/planted.json`): per persona campaign uplift against a
measured holdout (`arm` = exposed | holdout in campaigns), and churn drivers (cancel/refund
tickets, an error -> help -> downgrade session, billing_view + payment_failed) that raise churn.

Rows are written as they are made, every SLICE_PERSONS persons (Parquet through one
pyarrow ParquetWriter per file, CSV appended), so memory follows the slice and the per-person
state, not the ~38 rows per person of 1,000,000 people; the files are the same, byte for byte, as
writing each whole frame at once (the `broken` and `bias` drifts, which rewrite whole frames, still do).
"""

from __future__ import annotations

import json
import string
from bisect import bisect_right
from dataclasses import dataclass, field
from functools import lru_cache
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from personaops.sources import SourceSpec, dump_sources

DRIFT_KINDS = ("none", "mix", "behaviour", "vocabulary", "broken", "bias")
EVENT_TYPES = [
    "login", "page_view", "dashboard_view", "report_export", "api_call", "query_run", "error_seen",
    "help_center_view", "pricing_view", "coupon_applied", "checkout", "invite_sent", "share", "billing_view",
]  # fmt: skip
CAMPAIGNS = {"spring_promo": 1.0, "webinar_invite": 0.6, "upgrade_offer": 1.3}
REGIONS = ["north", "south", "east", "west"]
AGE_BANDS = ["18-24", "25-34", "35-44", "45-54", "55+"]
GENDERS = ["female", "male", "nonbinary"]
FIRST = ["Ana", "Ben", "Chloe", "David", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Keiko", "Liam", "Maya",
         "Noah", "Olga", "Pedro", "Quinn", "Rosa", "Sam", "Tara", "Umar", "Vera", "Wei", "Ximena", "Yusuf", "Zoe"]  # fmt: skip
LAST = ["Smith", "Garcia", "Chen", "Okafor", "Muller", "Rossi", "Kowalski", "Silva", "Nguyen", "Haddad", "Jensen",
        "Novak", "Patel", "Kim", "Dubois", "Moreau", "Ivanova", "Santos", "Berg", "Tanaka"]  # fmt: skip
DOMAINS = ["example.com", "mail.test", "inbox.test", "corp.example"]
GENDER_SHARES = [0.48, 0.48, 0.04]


@dataclass(frozen=True)
class PlantedPersona:
    name: str
    share: float
    event_mix: dict[str, float]
    sessions_per_month: float
    events_per_session: float
    tickets_per_month: float
    survey_rate: float
    nps_mean: float
    conversion: float
    churn: float
    plans: dict[str, float]
    ticket_topics: list[str]
    ticket_details: list[str]
    survey_lines: list[str]


PERSONAS: list[PlantedPersona] = [
    PlantedPersona(
        "power_analyst", 0.20,
        {"dashboard_view": 3, "report_export": 3, "api_call": 4, "query_run": 4, "login": 1, "page_view": 1},
        6, 5, 0.35, 0.45, 8.6, 0.12, 0.05, {"pro": 0.6, "enterprise": 0.3, "basic": 0.1},
        ["The API returns a 429 rate limit error", "Our nightly export job via the REST API times out",
         "Query performance on large datasets is slow", "The webhook integration stopped firing",
         "Need higher API rate limits for our pipeline", "SQL query editor loses the schema",
         "The Python SDK pagination skips records", "Scheduled report export to S3 fails"],
        ["when we sync more than a million rows", "since the last API version bump", "in our ETL pipeline",
         "for our analytics warehouse", "during the batch window", "with the bulk endpoint"],
        ["Love the API and the query engine, export to the warehouse is great",
         "Powerful analytics, but we need higher API rate limits",
         "The SQL editor and scheduled exports save our data team hours",
         "Best reporting and query tooling we have used, please add more API endpoints"],
    ),
    PlantedPersona(
        "casual_browser", 0.30,
        {"login": 3, "page_view": 5, "dashboard_view": 1, "pricing_view": 0.5},
        1.2, 2.5, 0.03, 0.30, 6.0, 0.03, 0.35, {"free": 0.8, "basic": 0.2},
        ["How do I change my profile picture", "Where can I find my old notes",
         "Is there a mobile app", "I forgot what this app does for me"],
        ["just wondering", "when I have time", "no rush"],
        ["I only open it once in a while, it's fine", "Nice app but I rarely need it",
         "Honestly I forget to use it most weeks", "It's okay, nothing special for occasional use"],
    ),
    PlantedPersona(
        "frustrated_struggler", 0.15,
        {"login": 4, "error_seen": 4, "help_center_view": 3, "page_view": 1, "dashboard_view": 1},
        2.5, 3, 1.4, 0.55, 2.5, 0.04, 0.45, {"basic": 0.7, "free": 0.2, "pro": 0.1},
        ["I cannot log in, password reset email never arrives", "The app crashes every time I open settings",
         "Error 500 when I try to save my work", "The page freezes and I lose everything",
         "Two-factor code is rejected again", "Sync keeps failing with an unknown error",
         "I was charged but my account is locked", "Nothing loads after the update"],
        ["this is really frustrating", "please fix this urgently", "I have tried three times already",
         "your help center did not help", "I am about to cancel", "again today"],
        ["Buggy and crashes constantly, support is slow", "I keep getting errors and cannot log in",
         "Too many bugs, I am thinking of cancelling", "Frustrating experience, things break after every update"],
    ),
    PlantedPersona(
        "deal_seeker", 0.20,
        {"pricing_view": 4, "coupon_applied": 3, "checkout": 2, "page_view": 2, "login": 1},
        2, 3.5, 0.25, 0.35, 6.8, 0.40, 0.20, {"free": 0.5, "basic": 0.5},
        ["My discount code did not apply at checkout", "Can I get the student discount",
         "Is the annual plan cheaper than monthly", "The promo price was not honored on my invoice",
         "Do you offer a coupon for upgrading", "Black friday deal question"],
        ["I saw the offer in your newsletter", "before the promotion ends", "on the yearly plan",
         "for my renewal", "compared to your competitor's price"],
        ["Good value when there is a discount, the promo emails are useful",
         "I upgraded because of the coupon, pricing is fair with the deal",
         "Would love more promotions and cheaper annual plans",
         "Price matters most to me, the sale was great"],
    ),
    PlantedPersona(
        "team_admin", 0.15,
        {"invite_sent": 3, "share": 3, "billing_view": 3, "dashboard_view": 2, "login": 1},
        3.5, 4, 0.45, 0.45, 7.8, 0.15, 0.08, {"team": 0.5, "enterprise": 0.4, "pro": 0.1},
        ["How do I add more seats for my team", "SSO with Okta is not working for new members",
         "I need to change permissions for a workspace", "Please send the invoice to our finance team",
         "Can we get an admin audit log", "Transferring ownership of the team account"],
        ["for our department", "before onboarding new hires", "for the quarterly billing",
         "across all our workspaces", "for compliance"],
        ["Great for collaboration, managing seats and permissions is easy",
         "Our whole team uses it, admin controls and SSO matter to us",
         "Sharing and team workspaces are the reason we pay",
         "Billing for many seats could be simpler, otherwise great for teams"],
    ),
]  # fmt: skip

GENERIC_TEXTS = ["Thanks for the quick reply", "Just checking on my previous message", "Ok", "Following up"]
DRIFT_TEXTS = [
    "The new AI assistant gave me wrong answers", "Voice commands in the mobile app do not work",
    "The chatbot keeps recommending irrelevant templates", "Augmented reality preview is blurry",
]  # fmt: skip
# --- planted effects for the insight questions (campaign uplift, churn drivers) ----------------
# Conversion without a campaign ("organic") is half the persona's exposed base rate; exposure adds
# the planted uplift below. Not-exposed people are a measured holdout with this probability.
CAMPAIGN_HOLDOUT_SHARE = 0.5
PLANTED_UPLIFT: dict[str, dict[str, float]] = {
    "spring_promo": {"deal_seeker": 0.40, "team_admin": 0.08, "power_analyst": 0.06, "casual_browser": 0.03, "frustrated_struggler": 0.02},
    "webinar_invite": {"power_analyst": 0.35, "team_admin": 0.10, "deal_seeker": 0.05, "frustrated_struggler": 0.03, "casual_browser": 0.02},
    "upgrade_offer": {"team_admin": 0.45, "power_analyst": 0.12, "deal_seeker": 0.10, "casual_browser": 0.02, "frustrated_struggler": 0.02},
}  # fmt: skip
# Churn drivers: each person carries a driver with this probability (independent of persona);
# each driver adds a CHURN_DRIVER_BOOST chance to churn, and leaves its trace in the sources.
CHURN_DRIVERS: dict[str, dict] = {
    "cancel_intent": {"prevalence": 0.10, "trace": "a ticket asking to cancel the subscription or for a refund",
                      "match": r"^intent:.*\b(cancel|cancellation|refund|subscription)\b"},
    "error_help_downgrade": {"prevalence": 0.10, "trace": "a session error_seen -> help_center_view -> plan_downgrade",
                             "match": r"plan_downgrade"},
    "billing_payment_failed": {"prevalence": 0.10, "trace": "a session where billing_view and payment_failed co-occur",
                               "match": r"payment_failed"},
}  # fmt: skip
CHURN_DRIVER_BOOST = 0.6
CHURNED_ACTIVE_SHARE = 0.7  # people who churn are active in the first 70% of the window only
DRIVER_NOISE = 0.02  # people without the driver who still leave its trace (no churn effect)
CANCEL_TEXTS = [
    "Please cancel my subscription and refund the last charge", "How do I cancel my plan before the next billing date",
    "I want a refund and to cancel my account", "Cancel my subscription, I was billed twice",
    "Requesting cancellation and a refund of this month",
]  # fmt: skip


def planted_drivers(users: int, seed: int) -> pd.DataFrame:
    """Per person (row i = T{i:06d}): which churn drivers they carry and whether the drivers alone
    make them churn (population-level: the same for every period)."""
    rng = np.random.default_rng([seed, 1001])
    flags = {f"driver_{name}": rng.random(users) < spec["prevalence"] for name, spec in CHURN_DRIVERS.items()}
    n = np.sum(list(flags.values()), axis=0)
    extra = rng.random(users) < 1 - (1 - CHURN_DRIVER_BOOST) ** n
    noise = {f"noise_{name}": rng.random(users) < DRIVER_NOISE for name in CHURN_DRIVERS}
    return pd.DataFrame({**flags, **noise, "driver_churn": extra})


EVENT_COLUMNS = ["event_id", "user_id", "device_id", "event_type", "session_id", "ts"]
TICKET_COLUMNS = ["ticket_id", "email", "subject", "body", "created_at"]
SURVEY_COLUMNS = ["response_id", "respondent_email", "respondent_name", "nps", "answer", "submitted_at"]
CAMPAIGN_COLUMNS = ["exposure_id", "customer_id", "email", "campaign", "sent_at", "converted", "arm"]
CRM_COLUMNS = ["customer_id", "full_name", "email", "phone", "plan", "region", "signup_date", "age_band", "gender", "churned"]
RECORD_COLUMNS = ["source", "source_key", "true_person"]
# Rows are written to the files every SLICE_PERSONS persons (memory follows the slice, not the
# population); Parquet row groups hold ROW_GROUP rows, as DataFrame.to_parquet wrote them whole
# (pyarrow's default), so a streamed file is the same file.
SLICE_PERSONS = 20_000
ROW_GROUP = 1024 * 1024
WHOLE_FRAME_DRIFTS = ("broken", "bias")  # they rewrite whole frames: their rows stay in memory, written at the end


class _ParquetSink:
    """One Parquet file written slice by slice: every slice's frame converts with the same columns
    and dtypes, so one schema (with its pandas metadata) holds for every row group, and the rows are
    cut into ROW_GROUP-row groups across slices exactly as writing the whole frame at once would."""

    def __init__(self, path: Path):
        self.path, self.writer, self.pending, self.n_pending = path, None, [], 0

    def write(self, frame: pd.DataFrame) -> None:
        if not len(frame):
            return  # an empty slice has no types to infer (object -> null): nothing to write
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema, compression="snappy")
        elif not table.schema.equals(self.writer.schema, check_metadata=True):
            raise ValueError(f"{self.path.name}: a slice's schema differs from the file's ({table.schema} vs {self.writer.schema})")
        self.pending.append(table)
        self.n_pending += len(table)
        while self.n_pending >= ROW_GROUP:
            self._emit(ROW_GROUP)

    def _emit(self, n: int) -> None:
        table = pa.concat_tables(self.pending)
        self.writer.write_table(table.slice(0, n).combine_chunks(), row_group_size=n)
        rest = table.slice(n)
        self.pending, self.n_pending = ([rest] if len(rest) else []), len(rest)

    def close(self, empty: pd.DataFrame) -> None:
        if self.writer is None:  # no rows at all: the empty frame, as it was written whole
            empty.to_parquet(self.path, index=False)
            return
        if self.n_pending:
            self._emit(self.n_pending)
        self.writer.close()


class _CsvSink:
    """One CSV file written slice by slice: the header once, then each slice's rows (a slice's frame
    has the columns and dtypes of the whole frame, so every value prints as it would whole)."""

    def __init__(self, path: Path, columns: list[str]):
        self.columns, self.file = columns, open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115 (closed in close())
        pd.DataFrame(columns=columns).to_csv(self.file, index=False)

    def write(self, frame: pd.DataFrame) -> None:
        if len(frame):
            frame.to_csv(self.file, index=False, header=False)

    def close(self) -> None:
        self.file.close()


class _Stream:
    """The period's source files (events, tickets, surveys, campaigns, truth records), written slice by slice."""

    def __init__(self, out: Path, suffix: str):
        self.events = _ParquetSink(out / f"events{suffix}.parquet")
        self.records = _ParquetSink(out / "truth" / f"records{suffix}.parquet")
        self.tickets = _CsvSink(out / f"tickets{suffix}.csv", TICKET_COLUMNS)
        self.surveys = _CsvSink(out / f"surveys{suffix}.csv", SURVEY_COLUMNS)
        self.campaigns = _CsvSink(out / f"campaigns{suffix}.csv", CAMPAIGN_COLUMNS)

    def write(self, rows: _Rows) -> None:
        self.events.write(pd.DataFrame(rows.events, columns=EVENT_COLUMNS))
        self.tickets.write(pd.DataFrame(rows.tickets, columns=TICKET_COLUMNS))
        self.surveys.write(pd.DataFrame(rows.surveys, columns=SURVEY_COLUMNS))
        self.campaigns.write(pd.DataFrame(rows.exposures, columns=CAMPAIGN_COLUMNS))
        self.records.write(pd.DataFrame(rows.records, columns=RECORD_COLUMNS))

    def close(self) -> None:
        self.events.close(pd.DataFrame([], columns=EVENT_COLUMNS))
        self.records.close(pd.DataFrame([], columns=RECORD_COLUMNS))
        for sink in (self.tickets, self.surveys, self.campaigns):
            sink.close()


@dataclass
class _Rows:
    """The period's source rows not yet written, with the running id counters of each source. With
    a `stream`, the rows go to the files every SLICE_PERSONS persons; without, they stay in memory
    (the drift modes that rewrite whole frames)."""

    events: list = field(default_factory=list)
    tickets: list = field(default_factory=list)
    surveys: list = field(default_factory=list)
    exposures: list = field(default_factory=list)
    records: list = field(default_factory=list)
    ev_n: int = 0
    tk_n: int = 0
    sv_n: int = 0
    ex_n: int = 0
    stream: _Stream | None = None
    persons: int = 0

    def person_done(self) -> None:
        self.persons += 1
        if self.stream is not None and self.persons % SLICE_PERSONS == 0:
            self.flush()

    def flush(self) -> None:
        if self.stream is not None:
            self.stream.write(self)
            self.events, self.tickets, self.surveys, self.exposures, self.records = [], [], [], [], []


def _plant_driver_traces(rows: _Rows, people: Iterable[tuple], period: int, rng: np.random.Generator) -> None:
    """Append each driver's trace (a cancel ticket; an error -> help -> downgrade session; a
    billing + payment_failed session) for the people who carry it (or its noise). `people`:
    (index, driver flags, e-mail, devices, start of activity, its length in seconds) per person."""
    for i, row, email, devices, act_start, span in people:
        customer_id, true_person = f"C{i:06d}", f"T{i:06d}"
        if row["driver_cancel_intent"] or row["noise_cancel_intent"]:
            rows.tk_n += 1
            ticket_id = f"K{period}-{rows.tk_n:07d}"
            ts = act_start + timedelta(seconds=float(rng.uniform(0, span)))
            rows.tickets.append({"ticket_id": ticket_id, "email": email, "subject": "",
                                 "body": f"{CANCEL_TEXTS[rng.integers(len(CANCEL_TEXTS))]}.", "created_at": ts.isoformat()})  # fmt: skip
            rows.records.append(("tickets", ticket_id, true_person))
        sessions = []
        if row["driver_error_help_downgrade"] or row["noise_error_help_downgrade"]:
            sessions.append(["error_seen", "help_center_view", "plan_downgrade"])
        if row["driver_billing_payment_failed"] or row["noise_billing_payment_failed"]:
            sessions.append(["billing_view", "payment_failed", "billing_view"])
        for s, types in enumerate(sessions):
            t0 = act_start + timedelta(seconds=float(rng.uniform(0, span)))
            device = devices[rng.integers(len(devices))]
            for e, event_type in enumerate(types):
                rows.ev_n += 1
                event_id = f"E{period}-{rows.ev_n:09d}"
                rows.events.append((event_id, customer_id, device, event_type, f"S{period}-{i:06d}-d{s}", (t0 + timedelta(seconds=30 * e)).isoformat()))
                rows.records.append(("events", event_id, true_person))
        rows.person_done()


def planted_truth(seed: int) -> dict:
    """What the insight questions should find: the top-uplift persona per campaign, the drivers."""
    return {
        "seed": seed,
        "campaigns": {c: {"uplift": u, "top_persona": max(u, key=u.get)} for c, u in PLANTED_UPLIFT.items()},
        "churn_drivers": CHURN_DRIVERS,
        "churn_driver_boost": CHURN_DRIVER_BOOST,
    }


# Fixed (deterministic per seed) and far enough back that two years of monthly periods stay in the past.
BASE_DATE = datetime(2024, 10, 1, tzinfo=timezone.utc)
WINDOW_DAYS = 90
# Population turnover per later period (shares of the base population): new people join, and people
# leave (no more activity; people who churn CHURNED_LEAVE_WEIGHT times as likely as others).
DEFAULT_JOIN_RATE = 0.03
DEFAULT_LEAVE_RATE = 0.02
CHURNED_LEAVE_WEIGHT = 4.0


def _cdf(p: np.ndarray | list[float]) -> list[float]:
    """The cumulative shares `Generator.choice(len(p), p=p)` draws against (NumPy's own steps)."""
    cdf = np.asarray(p, dtype=float).cumsum()
    cdf /= cdf[-1]
    return cdf.tolist()


def _pick(rng: np.random.Generator, cdf: list[float]) -> int:
    """`rng.choice(len(p), p=p)` for `cdf = _cdf(p)` without its per-call checks (a hot loop): the
    same single uniform draw and the same index (`searchsorted(u, side="right")`), ~30x faster."""
    return bisect_right(cdf, rng.random())


@lru_cache(maxsize=64)
def _options_cdf(weights: tuple[float, ...]) -> list[float]:
    p = np.array(weights, dtype=float)
    return _cdf(p / p.sum())


def _choice(rng: np.random.Generator, options: dict[str, float]) -> str:
    keys = list(options)
    return keys[_pick(rng, _options_cdf(tuple(options[k] for k in keys)))]


GENDER_CDF = _cdf(GENDER_SHARES)


def _typo(rng: np.random.Generator, text: str) -> str:
    if len(text) < 3:
        return text
    i = int(rng.integers(1, len(text) - 1))
    op = rng.integers(3)
    if op == 0:
        return text[:i] + text[i + 1 :]
    if op == 1:
        return text[:i] + text[i + 1] + text[i] + text[i + 2 :]
    return text[:i] + rng.choice(list(string.ascii_lowercase)) + text[i:]


def _phone_format(rng: np.random.Generator, digits: str) -> str:
    style = rng.integers(4)
    if style == 0:
        return digits
    if style == 1:
        return f"+1 ({digits[:3]}) {digits[3:6]}-{digits[6:]}"
    if style == 2:
        return f"{digits[:3]}.{digits[3:6]}.{digits[6:]}"
    return f"1-{digits[:3]}-{digits[3:6]}-{digits[6:]}"


def _draw_person(rng: np.random.Generator, i: int, p: PlantedPersona, device_counter: int, driver_churn: bool) -> dict:
    """One person's stable attributes and CRM row, drawn from `rng` in a fixed order (the base
    population's draws from the seed's population stream must not change)."""
    first, last = FIRST[rng.integers(len(FIRST))], LAST[rng.integers(len(LAST))]
    name = f"{first} {last}"
    local = f"{first}.{last}{i}".lower()
    email = f"{local}@{DOMAINS[rng.integers(len(DOMAINS))]}"
    alt_email = f"{first[0]}{last}{rng.integers(100, 999)}@personal.test".lower()
    digits = f"{rng.integers(200, 999)}{rng.integers(200, 999)}{rng.integers(1000, 9999)}"
    n_devices = 1 + int(rng.random() < 0.4)
    devices = [f"D{device_counter + k:07d}" for k in range(n_devices)]
    churned = bool(rng.random() < p.churn) or driver_churn
    plan = _choice(rng, p.plans)
    signup = BASE_DATE - timedelta(days=int(rng.integers(30, 900)))
    age_band = AGE_BANDS[rng.integers(len(AGE_BANDS))]
    gender = GENDERS[_pick(rng, GENDER_CDF)]
    region = REGIONS[rng.integers(len(REGIONS))]
    crm_email = email if rng.random() > 0.02 else ""
    crm_phone = _phone_format(rng, digits) if rng.random() > 0.05 else ""
    return {"name": name, "email": email, "alt_email": alt_email, "devices": devices, "churned": churned, "plan": plan,
            "signup": signup, "age_band": age_band, "gender": gender, "region": region, "crm_email": crm_email, "crm_phone": crm_phone}  # fmt: skip


def _joiner_pool(users: int, seed: int, n: int, device_start: int) -> tuple[np.ndarray, pd.DataFrame, list[dict]]:
    """The first `n` people who join after the base population (indices users, users+1, ...):
    persona index, churn drivers and attributes, drawn person by person from their own stream, so
    person users+j is the same whoever asks for how many joiners."""
    rng = np.random.default_rng([seed, 1004])
    shares = np.array([p.share for p in PERSONAS])
    persona_cdf = _cdf(shares / shares.sum())
    personas, drivers, people = np.zeros(n, dtype=int), [], []
    device_counter = device_start
    for j in range(n):
        personas[j] = _pick(rng, persona_cdf)
        flags = {f"driver_{name}": bool(rng.random() < spec["prevalence"]) for name, spec in CHURN_DRIVERS.items()}
        extra = bool(rng.random() < 1 - (1 - CHURN_DRIVER_BOOST) ** sum(flags.values()))
        noise = {f"noise_{name}": bool(rng.random() < DRIVER_NOISE) for name in CHURN_DRIVERS}
        month_fraction = float(rng.random())  # when in their joining month they sign up
        person = _draw_person(rng, users + j, PERSONAS[personas[j]], device_counter, extra)
        person["month_fraction"] = month_fraction
        device_counter += len(person["devices"])
        drivers.append({**flags, **noise, "driver_churn": extra})
        people.append(person)
    return personas, pd.DataFrame(drivers, columns=[*planted_drivers(0, seed).columns]), people


def _leave_periods(u: np.ndarray, joined: np.ndarray, churned: np.ndarray, leave_rate: float, mean_weight: float) -> np.ndarray:
    """The period in which each person leaves (first period after joining; a large number when
    never): a geometric number of periods from uniforms `u`, with a per-period hazard of
    `leave_rate`, CHURNED_LEAVE_WEIGHT times as high for people who churn (scaled so the base
    population's average hazard is `leave_rate`)."""
    hazard = np.minimum(1.0, leave_rate * np.where(churned, CHURNED_LEAVE_WEIGHT, 1.0) / mean_weight)
    never = np.iinfo(np.int64).max // 2
    with np.errstate(divide="ignore", invalid="ignore"):
        wait = np.where(hazard >= 1, 1, np.ceil(np.log1p(-u) / np.log1p(-hazard)))
    wait = np.where(hazard <= 0, never, np.maximum(wait, 1))
    return joined + np.minimum(wait, never).astype(np.int64)


def _person_activity(rows: _Rows, rng: np.random.Generator, holdout_rng: np.random.Generator, typo_rng: np.random.Generator,
                     i: int, p: PlantedPersona, person: dict, period: int, drift: str, behaviour_scale: float,
                     act_start: datetime, span: float) -> None:
    """One person's events, tickets, survey answer and campaign exposures in the period, active
    from `act_start` for `span` seconds (the whole window, or from the sign-up of someone who
    joined during it; volumes scale with the share of the window)."""
    share = span / (WINDOW_DAYS * 86400)
    true_person, customer_id = f"T{i:06d}", f"C{i:06d}"
    devices = person["devices"]
    activity = rng.lognormal(0, 0.35) * behaviour_scale
    types = list(p.event_mix) + [t for t in EVENT_TYPES if t not in p.event_mix]
    base = np.array([p.event_mix.get(t, 0.15) for t in types])
    mix = _cdf(rng.dirichlet(base / base.sum() * 40))  # each event's type: _pick(rng, mix)
    n_sessions = rng.poisson(p.sessions_per_month * 3 * activity * share)
    if person["churned"]:
        n_sessions = int(n_sessions * 0.6)
    for s in range(n_sessions):
        session_id = f"S{period}-{i:06d}-{s:04d}"
        # planted: people who churn fade out, active only in the first part of the window
        fade = CHURNED_ACTIVE_SHARE if person["churned"] else 1.0
        t0 = act_start + timedelta(seconds=float(rng.uniform(0, span)) * fade)
        device = devices[rng.integers(len(devices))]
        anonymous = rng.random() < 0.12
        for e in range(1 + rng.poisson(p.events_per_session - 1)):
            rows.ev_n += 1
            event_id = f"E{period}-{rows.ev_n:09d}"
            rows.events.append(  # EVENT_COLUMNS
                (event_id, "" if anonymous else customer_id, device, types[_pick(rng, mix)], session_id,
                 (t0 + timedelta(seconds=30 * e)).isoformat())
            )  # fmt: skip
            rows.records.append(("events", event_id, true_person))
    n_tickets = rng.poisson(p.tickets_per_month * 3 * share)
    for _ in range(n_tickets):
        rows.tk_n += 1
        ticket_id = f"K{period}-{rows.tk_n:07d}"
        r = rng.random()
        email = person["email"]
        if r < 0.08:
            email = f"  {email.upper()} "
        elif r < 0.14:
            email = person["alt_email"]  # not in the CRM: a different key for the same person
        if drift == "vocabulary" and rng.random() < 0.5:
            body = f"{DRIFT_TEXTS[rng.integers(len(DRIFT_TEXTS))]}."
        elif rng.random() < 0.08:
            body = GENERIC_TEXTS[rng.integers(len(GENERIC_TEXTS))]
        else:
            body = f"{p.ticket_topics[rng.integers(len(p.ticket_topics))]} {p.ticket_details[rng.integers(len(p.ticket_details))]}."
        ts = act_start + timedelta(seconds=float(rng.uniform(0, span)))
        rows.tickets.append({"ticket_id": ticket_id, "email": email, "subject": "", "body": body, "created_at": ts.isoformat()})
        rows.records.append(("tickets", ticket_id, true_person))
    if rng.random() < p.survey_rate * share:
        rows.sv_n += 1
        response_id = f"R{period}-{rows.sv_n:07d}"
        use_name = rng.random() < 0.12
        name = person["name"] if rng.random() < 0.5 else _typo(rng, person["name"])
        nps = int(np.clip(np.round(rng.normal(p.nps_mean, 1.3)), 0, 10))
        answer = p.survey_lines[rng.integers(len(p.survey_lines))]
        if drift == "vocabulary" and rng.random() < 0.5:
            answer = DRIFT_TEXTS[rng.integers(len(DRIFT_TEXTS))]
        ts = act_start + timedelta(seconds=float(rng.uniform(0, span)))
        survey_email = person["email"]
        if not use_name and typo_rng.random() < 0.1:
            # A respondent mistypes the address: one edit in the letters of its local part, so
            # no rule links it and the Splink pass (name + e-mail one typo apart) has to.
            local, _, domain = survey_email.partition("@")
            letters = local.rstrip("0123456789")
            survey_email = f"{_typo(typo_rng, letters)}{local[len(letters):]}@{domain}"
        rows.surveys.append(
            {"response_id": response_id, "respondent_email": "" if use_name else survey_email,
             "respondent_name": name, "nps": nps, "answer": answer, "submitted_at": ts.isoformat()}
        )  # fmt: skip
        rows.records.append(("surveys", response_id, true_person))
    for campaign, factor in CAMPAIGNS.items():
        if share < 1 and rng.random() >= share:
            continue  # not yet a customer when this campaign went out
        organic = 0.5 * p.conversion * factor
        if rng.random() < 0.45:
            rows.ex_n += 1
            exposure_id = f"X{period}-{rows.ex_n:07d}"
            converted = rng.random() < min(0.95, organic + PLANTED_UPLIFT[campaign][p.name])
            by_email = rng.random() < 0.3
            ts = act_start + timedelta(seconds=float(rng.uniform(0, span)))
            rows.exposures.append(
                {"exposure_id": exposure_id, "customer_id": "" if by_email else customer_id,
                 "email": person["email"] if by_email else "", "campaign": campaign,
                 "sent_at": ts.isoformat(), "converted": "yes" if converted else "no", "arm": "exposed"}
            )  # fmt: skip
            rows.records.append(("campaigns", exposure_id, true_person))
        elif holdout_rng.random() < CAMPAIGN_HOLDOUT_SHARE:  # held out of the campaign; conversion still measured
            rows.ex_n += 1
            exposure_id = f"X{period}-{rows.ex_n:07d}"
            ts = act_start + timedelta(seconds=float(holdout_rng.uniform(0, span)))
            rows.exposures.append(
                {"exposure_id": exposure_id, "customer_id": customer_id, "email": "", "campaign": campaign,
                 "sent_at": ts.isoformat(), "converted": "yes" if holdout_rng.random() < organic else "no", "arm": "holdout"}
            )  # fmt: skip
            rows.records.append(("campaigns", exposure_id, true_person))


def _write_whole(rows: _Rows, out: Path, suffix: str, seed: int, period: int, drift: str, people: list[dict]) -> dict[str, int]:
    """Write the period's rows kept in memory, after a drift that rewrites whole frames (`broken`,
    `bias`) changed them; return the row counts per source."""
    ev = pd.DataFrame(rows.events, columns=EVENT_COLUMNS)
    tk = pd.DataFrame(rows.tickets, columns=TICKET_COLUMNS)
    sv = pd.DataFrame(rows.surveys, columns=SURVEY_COLUMNS)
    ex = pd.DataFrame(rows.exposures, columns=CAMPAIGN_COLUMNS)
    records = rows.records
    qrng = np.random.default_rng([seed, period, 7])
    if drift == "broken":  # a telemetry export loses its key field; survey scores arrive as text
        ev.loc[qrng.random(len(ev)) < 0.4, "event_type"] = ""
        if len(sv):
            sv["nps"] = sv["nps"].astype(object)
            sv.loc[qrng.random(len(sv)) < 0.3, "nps"] = "n/a"
    if drift == "bias":  # one group is mostly missing from this period's telemetry
        north = {f"C{i:06d}" for i in range(len(people)) if people[i]["region"] == "north"}
        drop = ev["user_id"].isin(north) & (qrng.random(len(ev)) < 0.8)
        kept = set(ev.loc[~drop, "event_id"])
        ev = ev[~drop].reset_index(drop=True)
        records = [r for r in records if r[0] != "events" or r[1] in kept]
    ev.to_parquet(out / f"events{suffix}.parquet", index=False)
    tk.to_csv(out / f"tickets{suffix}.csv", index=False)
    sv.to_csv(out / f"surveys{suffix}.csv", index=False)
    ex.to_csv(out / f"campaigns{suffix}.csv", index=False)
    pd.DataFrame(records, columns=RECORD_COLUMNS).to_parquet(out / "truth" / f"records{suffix}.parquet", index=False)
    return {"events": len(ev), "tickets": len(tk), "surveys": len(sv), "campaigns": len(ex)}


def generate(users: int, seed: int, out: Path, period: int = 0, drift: str = "none",
             join_rate: float | None = None, leave_rate: float | None = None) -> dict[str, int]:
    """Write synthetic sources + sources.yaml + truth files under `out`; return row counts per source.

    Population turnover: `join_rate` (share of `users`, per period) new people join in each
    period 1..`period`, and each person present leaves with a per-period chance of `leave_rate`
    (people who churn CHURNED_LEAVE_WEIGHT times as likely); a leaver keeps their CRM row but has no
    activity from the period they leave. Defaults: none in period 0 (its output is unchanged),
    DEFAULT_JOIN_RATE / DEFAULT_LEAVE_RATE in later periods. In period 0, a `join_rate` adds that
    share of new people to the base population ("grow", for incremental runs): every base person's
    rows stay exactly those of period 0 without it, and the new people's rows come after them.
    """
    if drift not in DRIFT_KINDS:
        raise ValueError(f"drift must be one of {', '.join(DRIFT_KINDS)}")
    join_rate = (DEFAULT_JOIN_RATE if period else 0.0) if join_rate is None else float(join_rate)
    leave_rate = (DEFAULT_LEAVE_RATE if period else 0.0) if leave_rate is None else float(leave_rate)
    if not (0 <= join_rate <= 1 and 0 <= leave_rate <= 1):
        raise ValueError(f"join_rate and leave_rate are shares per period between 0 and 1 (got {join_rate}, {leave_rate})")
    out = Path(out)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    pop_rng = np.random.default_rng(seed)  # the population: the same for every period
    rng = np.random.default_rng([seed, period + 1])  # what happens in this period
    typo_rng = np.random.default_rng([seed, period + 1, 1003])  # typed e-mail typos: own stream, other draws unchanged

    shares = np.array([p.share for p in PERSONAS])
    persona_idx = pop_rng.choice(len(PERSONAS), size=users, p=shares / shares.sum())
    if drift == "mix":  # half the casual browsers became deal seekers
        movers = (persona_idx == 1) & (rng.random(users) < 0.5)
        persona_idx = np.where(movers, 3, persona_idx)

    drivers = planted_drivers(users, seed)
    driver_churn = drivers["driver_churn"].to_numpy()
    people: list[dict] = []
    device_counter = 0
    for i in range(users):
        p = PERSONAS[persona_idx[i]]
        person = _draw_person(pop_rng, i, p, device_counter, bool(driver_churn[i]))
        device_counter += len(person["devices"])
        people.append(person)

    # Households: a few devices are shared by two people (anonymous events become ambiguous).
    n_shared = max(1, users // 40)
    sharers = pop_rng.choice(users, size=(n_shared, 2), replace=False) if users >= 2 * n_shared else np.empty((0, 2), int)
    for a, b in sharers:
        people[b]["devices"] = people[b]["devices"] + [people[a]["devices"][0]]

    # Turnover: who joined (in which period) and who has left by this period.
    per_period = int(round(join_rate * users))
    n_joined = per_period * (period if period else 1)
    joined = np.zeros(users + n_joined, dtype=np.int64)
    if n_joined:
        j_personas, j_drivers, j_people = _joiner_pool(users, seed, n_joined, device_counter)
        if drift == "mix":
            j_movers = (j_personas == 1) & (np.random.default_rng([seed, period + 1, 1014]).random(n_joined) < 0.5)
            j_personas = np.where(j_movers, 3, j_personas)
        persona_idx = np.concatenate([persona_idx, j_personas])
        drivers = pd.concat([drivers, j_drivers], ignore_index=True)
        joined[users:] = 1 + np.arange(n_joined) // per_period if period else 0
        for j, person in enumerate(j_people):
            fraction = person.pop("month_fraction")
            if period:  # signed up during the month they joined in (period 0 "grow": like the base people)
                person["signup"] = BASE_DATE + timedelta(days=30 * (int(joined[users + j]) - 1), seconds=fraction * 30 * 86400)
            people.append(person)
    churned = np.array([person["churned"] for person in people], dtype=bool)
    mean_weight = float(np.where(churned[:users], CHURNED_LEAVE_WEIGHT, 1.0).mean()) if users else 1.0
    u = np.concatenate([np.random.default_rng([seed, 1006]).random(users), np.random.default_rng([seed, 1007]).random(n_joined)])
    left = _leave_periods(u, joined, churned, leave_rate, mean_weight)
    present = left > period
    turnover = bool(period or n_joined)

    suffix = f"_p{period}" if period else ""
    flags = {c: drivers[c].to_numpy() for c in drivers.columns}  # per-person lookups without pandas indexing
    driver_columns = [c for c in drivers.columns if c.startswith("driver_")]
    persons_sink, crm_sink = _ParquetSink(out / "truth" / f"persons{suffix}.parquet"), _CsvSink(out / f"crm{suffix}.csv", CRM_COLUMNS)
    for lo in range(0, len(people), SLICE_PERSONS):
        persons, crm_rows = [], []
        for i in range(lo, min(lo + SLICE_PERSONS, len(people))):
            person = people[i]
            p = PERSONAS[persona_idx[i]]
            true_person, customer_id = f"T{i:06d}", f"C{i:06d}"
            row = {"true_person": true_person, "true_persona": p.name, "true_persona_id": int(persona_idx[i]), "churned": person["churned"],
                   "plan": person["plan"], "region": person["region"], "age_band": person["age_band"], "gender": person["gender"],
                   **{c: bool(flags[c][i]) for c in driver_columns}}  # fmt: skip
            if turnover:
                row["joined_period"] = int(joined[i])
                row["left_period"] = int(left[i]) if left[i] <= period else -1
            persons.append(row)
            crm_rows.append(
                (customer_id, person["name"], person["crm_email"], person["crm_phone"], person["plan"], person["region"],
                 person["signup"].date().isoformat(), person["age_band"], person["gender"], int(person["churned"]))
            )  # fmt: skip  (CRM_COLUMNS)
        persons_sink.write(pd.DataFrame(persons))
        crm_sink.write(pd.DataFrame(crm_rows, columns=CRM_COLUMNS))
    persons_sink.close(pd.DataFrame([]))
    crm_sink.close()

    start = BASE_DATE + timedelta(days=30 * period)
    window_start = start - timedelta(days=WINDOW_DAYS)
    window = WINDOW_DAYS * 86400
    behaviour_scale = 0.5 if drift == "behaviour" else 1.0

    # Rows go to the files slice by slice, except for the drifts that rewrite whole frames (in memory).
    stream = None if drift in WHOLE_FRAME_DRIFTS else _Stream(out, suffix)
    rows = _Rows(stream=stream)
    for lo in range(0, len(people), SLICE_PERSONS):  # the CRM rows' truth first, then every row in the order written
        rows.records.extend(("crm", f"C{i:06d}", f"T{i:06d}") for i in range(lo, min(lo + SLICE_PERSONS, len(people))))
        rows.flush()

    def traced(i: int, act_start: datetime, span: float) -> tuple:
        return i, {c: a[i] for c, a in flags.items()}, people[i]["email"], people[i]["devices"], act_start, span

    holdout_rng = np.random.default_rng([seed, period + 1, 1002])  # planted holdout: its own stream
    base_present = [i for i in range(users) if present[i]]
    for i in base_present:  # people who left are silent: no draws, no rows
        _person_activity(rows, rng, holdout_rng, typo_rng, i, PERSONAS[persona_idx[i]], people[i], period, drift, behaviour_scale, window_start, window)
        rows.person_done()
    traces = np.random.default_rng([seed, period + 1, 1001])
    _plant_driver_traces(rows, (traced(i, window_start, window) for i in base_present), period, traces)
    # Joiners after every base row (their own streams), so base rows do not depend on how many joined.
    joiners = [i for i in range(users, len(people)) if present[i]]
    spans = {}
    for i in joiners:  # active from sign-up in later periods; the whole window in period 0 (like the base people)
        act_start = max(window_start, people[i]["signup"]) if period else window_start
        spans[i] = (act_start, max((start - act_start).total_seconds(), 3600.0))
    j_rng = np.random.default_rng([seed, period + 1, 1010])
    j_holdout, j_typo = np.random.default_rng([seed, period + 1, 1012]), np.random.default_rng([seed, period + 1, 1013])
    for i in joiners:
        _person_activity(rows, j_rng, j_holdout, j_typo, i, PERSONAS[persona_idx[i]], people[i], period, drift, behaviour_scale, *spans[i])
        rows.person_done()
    _plant_driver_traces(rows, (traced(i, *spans[i]) for i in joiners), period, np.random.default_rng([seed, period + 1, 1011]))
    rows.flush()
    if stream is not None:
        stream.close()
        n_rows = {"events": rows.ev_n, "tickets": rows.tk_n, "surveys": rows.sv_n, "campaigns": rows.ex_n}
    else:
        n_rows = _write_whole(rows, out, suffix, seed, period, drift, people)

    (out / "truth" / f"planted{suffix}.json").write_text(json.dumps(planted_truth(seed), indent=2), encoding="utf-8")
    specs = [
        SourceSpec(name="crm", kind="crm", path=out / f"crm{suffix}.csv", key="customer_id",
                   identifiers={"customer_id": "customer_id", "email": "email", "phone": "phone", "name": "full_name"},
                   timestamp="signup_date", categorical=["plan", "region"], labels=["churned"],
                   sensitive=["age_band", "gender"]),
        SourceSpec(name="events", kind="events", path=out / f"events{suffix}.parquet", key="event_id",
                   identifiers={"customer_id": "user_id", "device_id": "device_id"}, timestamp="ts",
                   fields={"event_type": "event_type", "session_id": "session_id"}),
        SourceSpec(name="tickets", kind="tickets", path=out / f"tickets{suffix}.csv", key="ticket_id",
                   identifiers={"email": "email"}, timestamp="created_at", text=["subject", "body"]),
        SourceSpec(name="surveys", kind="surveys", path=out / f"surveys{suffix}.csv", key="response_id",
                   identifiers={"email": "respondent_email", "name": "respondent_name"}, timestamp="submitted_at",
                   text=["answer"], fields={"score": "nps"}),
        SourceSpec(name="campaigns", kind="campaigns", path=out / f"campaigns{suffix}.csv", key="exposure_id",
                   identifiers={"customer_id": "customer_id", "email": "email"}, timestamp="sent_at",
                   fields={"campaign": "campaign", "converted": "converted"}, categorical=["arm"]),
    ]  # fmt: skip
    dump_sources(specs, out / f"sources{suffix}.yaml")
    return {"crm": len(people), **n_rows, "persons": int(present.sum()),
            **({"joined": n_joined, "left": int((~present).sum())} if turnover else {})}
