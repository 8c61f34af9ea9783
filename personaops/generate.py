"""Synthetic multi-source data with planted personas and identity noise (deterministic per seed).

Five latent personas, each with its own event mix and activity, support vocabulary, survey
scores and language, campaign response and churn rate. The same people appear across CRM,
telemetry, tickets, surveys and campaigns under different keys, with typos, formatting noise,
missing fields, anonymous events on shared devices and alternate e-mail addresses. Writes the
sources, a `sources.yaml` describing them, and `truth/records.parquet` (source, source_key,
true_person) + `truth/persons.parquet` (true_person, true_persona, churned, ...).

`period` > 0 re-observes the same population 30 days later per period (new events, tickets,
surveys and campaigns); `drift` plants a change: `mix` (half the casual browsers become deal
seekers), `behaviour` (activity halves within every persona), `vocabulary` (half the texts use
new words), `broken` (40% of events lose their event type, 30% of survey scores are text) or
`bias` (80% of one region's telemetry goes missing).

Planted for the insight questions (`truth/planted.json`): per persona campaign uplift against a
measured holdout (`arm` = exposed | holdout in campaigns), and churn drivers (cancel/refund
tickets, an error -> help -> downgrade session, billing_view + payment_failed) that raise churn.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

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


def _plant_driver_traces(drivers: pd.DataFrame, period: int, seed: int, window_start: datetime, person_emails: list[str],
                         person_devices: list[list[str]], events: list, tickets: list, records: list, ev_n: int, tk_n: int) -> None:
    """Append each driver's trace (a cancel ticket; an error -> help -> downgrade session; a
    billing + payment_failed session) for the people who carry it (or its noise)."""
    rng = np.random.default_rng([seed, period + 1, 1001])
    for i in range(len(drivers)):
        customer_id, true_person = f"C{i:06d}", f"T{i:06d}"
        row = drivers.iloc[i]
        if row["driver_cancel_intent"] or row["noise_cancel_intent"]:
            tk_n += 1
            ticket_id = f"K{period}-{tk_n:07d}"
            ts = window_start + timedelta(seconds=float(rng.uniform(0, WINDOW_DAYS * 86400)))
            tickets.append({"ticket_id": ticket_id, "email": person_emails[i], "subject": "",
                            "body": f"{CANCEL_TEXTS[rng.integers(len(CANCEL_TEXTS))]}.", "created_at": ts.isoformat()})  # fmt: skip
            records.append(("tickets", ticket_id, true_person))
        sessions = []
        if row["driver_error_help_downgrade"] or row["noise_error_help_downgrade"]:
            sessions.append(["error_seen", "help_center_view", "plan_downgrade"])
        if row["driver_billing_payment_failed"] or row["noise_billing_payment_failed"]:
            sessions.append(["billing_view", "payment_failed", "billing_view"])
        for s, types in enumerate(sessions):
            t0 = window_start + timedelta(seconds=float(rng.uniform(0, WINDOW_DAYS * 86400)))
            device = person_devices[i][rng.integers(len(person_devices[i]))]
            for e, event_type in enumerate(types):
                ev_n += 1
                event_id = f"E{period}-{ev_n:09d}"
                events.append({"event_id": event_id, "user_id": customer_id, "device_id": device, "event_type": event_type,
                               "session_id": f"S{period}-{i:06d}-d{s}", "ts": (t0 + timedelta(seconds=30 * e)).isoformat()})  # fmt: skip
                records.append(("events", event_id, true_person))


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


def _choice(rng: np.random.Generator, options: dict[str, float]) -> str:
    keys = list(options)
    p = np.array([options[k] for k in keys], dtype=float)
    return keys[rng.choice(len(keys), p=p / p.sum())]


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


def generate(users: int, seed: int, out: Path, period: int = 0, drift: str = "none") -> dict[str, int]:
    """Write synthetic sources + sources.yaml + truth files under `out`; return row counts per source."""
    if drift not in DRIFT_KINDS:
        raise ValueError(f"drift must be one of {', '.join(DRIFT_KINDS)}")
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
    persons = []
    crm_rows = []
    records: list[tuple[str, str, str]] = []
    person_emails: list[str] = []
    person_alt_emails: list[str] = []
    person_names: list[str] = []
    person_devices: list[list[str]] = []
    device_counter = 0
    for i in range(users):
        p = PERSONAS[persona_idx[i]]
        true_person = f"T{i:06d}"
        first, last = FIRST[pop_rng.integers(len(FIRST))], LAST[pop_rng.integers(len(LAST))]
        name = f"{first} {last}"
        local = f"{first}.{last}{i}".lower()
        email = f"{local}@{DOMAINS[pop_rng.integers(len(DOMAINS))]}"
        alt_email = f"{first[0]}{last}{pop_rng.integers(100, 999)}@personal.test".lower()
        digits = f"{pop_rng.integers(200, 999)}{pop_rng.integers(200, 999)}{pop_rng.integers(1000, 9999)}"
        n_devices = 1 + int(pop_rng.random() < 0.4)
        devices = [f"D{device_counter + k:07d}" for k in range(n_devices)]
        device_counter += n_devices
        churned = bool(pop_rng.random() < p.churn) or bool(drivers.at[i, "driver_churn"])
        plan = _choice(pop_rng, p.plans)
        signup = BASE_DATE - timedelta(days=int(pop_rng.integers(30, 900)))
        customer_id = f"C{i:06d}"
        age_band = AGE_BANDS[pop_rng.integers(len(AGE_BANDS))]
        gender = GENDERS[pop_rng.choice(3, p=[0.48, 0.48, 0.04])]
        region = REGIONS[pop_rng.integers(len(REGIONS))]
        persons.append(
            {"true_person": true_person, "true_persona": p.name, "true_persona_id": int(persona_idx[i]), "churned": churned,
             "plan": plan, "region": region, "age_band": age_band, "gender": gender,
             **{c: bool(drivers.at[i, c]) for c in drivers.columns if c.startswith("driver_")}}
        )  # fmt: skip
        crm_email = email if pop_rng.random() > 0.02 else ""
        crm_phone = _phone_format(pop_rng, digits) if pop_rng.random() > 0.05 else ""
        crm_rows.append(
            {"customer_id": customer_id, "full_name": name, "email": crm_email, "phone": crm_phone, "plan": plan,
             "region": region, "signup_date": signup.date().isoformat(), "age_band": age_band, "gender": gender,
             "churned": int(churned)}
        )  # fmt: skip
        records.append(("crm", customer_id, true_person))
        person_emails.append(email)
        person_alt_emails.append(alt_email)
        person_names.append(name)
        person_devices.append(devices)

    # Households: a few devices are shared by two people (anonymous events become ambiguous).
    n_shared = max(1, users // 40)
    sharers = pop_rng.choice(users, size=(n_shared, 2), replace=False) if users >= 2 * n_shared else np.empty((0, 2), int)
    for a, b in sharers:
        person_devices[b] = person_devices[b] + [person_devices[a][0]]

    start = BASE_DATE + timedelta(days=30 * period)
    window_start = start - timedelta(days=WINDOW_DAYS)
    behaviour_scale = 0.5 if drift == "behaviour" else 1.0

    events, tickets, surveys, exposures = [], [], [], []
    ev_n = tk_n = sv_n = ex_n = 0
    holdout_rng = np.random.default_rng([seed, period + 1, 1002])  # planted holdout: its own stream
    for i in range(users):
        p = PERSONAS[persona_idx[i]]
        true_person = f"T{i:06d}"
        customer_id = f"C{i:06d}"
        activity = rng.lognormal(0, 0.35) * behaviour_scale
        types = list(p.event_mix) + [t for t in EVENT_TYPES if t not in p.event_mix]
        base = np.array([p.event_mix.get(t, 0.15) for t in types])
        mix = rng.dirichlet(base / base.sum() * 40)
        n_sessions = rng.poisson(p.sessions_per_month * 3 * activity)
        if persons[i]["churned"]:
            n_sessions = int(n_sessions * 0.6)
        for s in range(n_sessions):
            session_id = f"S{period}-{i:06d}-{s:04d}"
            # planted: people who churn fade out, active only in the first part of the window
            fade = CHURNED_ACTIVE_SHARE if persons[i]["churned"] else 1.0
            t0 = window_start + timedelta(seconds=float(rng.uniform(0, WINDOW_DAYS * 86400)) * fade)
            device = person_devices[i][rng.integers(len(person_devices[i]))]
            anonymous = rng.random() < 0.12
            for e in range(1 + rng.poisson(p.events_per_session - 1)):
                ev_n += 1
                event_id = f"E{period}-{ev_n:09d}"
                events.append(
                    {"event_id": event_id, "user_id": "" if anonymous else customer_id, "device_id": device,
                     "event_type": types[rng.choice(len(types), p=mix)], "session_id": session_id,
                     "ts": (t0 + timedelta(seconds=30 * e)).isoformat()}
                )  # fmt: skip
                records.append(("events", event_id, true_person))
        n_tickets = rng.poisson(p.tickets_per_month * 3)
        for _ in range(n_tickets):
            tk_n += 1
            ticket_id = f"K{period}-{tk_n:07d}"
            r = rng.random()
            email = person_emails[i]
            if r < 0.08:
                email = f"  {email.upper()} "
            elif r < 0.14:
                email = person_alt_emails[i]  # not in the CRM: a different key for the same person
            if drift == "vocabulary" and rng.random() < 0.5:
                body = f"{DRIFT_TEXTS[rng.integers(len(DRIFT_TEXTS))]}."
            elif rng.random() < 0.08:
                body = GENERIC_TEXTS[rng.integers(len(GENERIC_TEXTS))]
            else:
                body = f"{p.ticket_topics[rng.integers(len(p.ticket_topics))]} {p.ticket_details[rng.integers(len(p.ticket_details))]}."
            ts = window_start + timedelta(seconds=float(rng.uniform(0, WINDOW_DAYS * 86400)))
            tickets.append({"ticket_id": ticket_id, "email": email, "subject": "", "body": body, "created_at": ts.isoformat()})
            records.append(("tickets", ticket_id, true_person))
        if rng.random() < p.survey_rate:
            sv_n += 1
            response_id = f"R{period}-{sv_n:07d}"
            use_name = rng.random() < 0.12
            name = person_names[i] if rng.random() < 0.5 else _typo(rng, person_names[i])
            nps = int(np.clip(np.round(rng.normal(p.nps_mean, 1.3)), 0, 10))
            answer = p.survey_lines[rng.integers(len(p.survey_lines))]
            if drift == "vocabulary" and rng.random() < 0.5:
                answer = DRIFT_TEXTS[rng.integers(len(DRIFT_TEXTS))]
            ts = window_start + timedelta(seconds=float(rng.uniform(0, WINDOW_DAYS * 86400)))
            survey_email = person_emails[i]
            if not use_name and typo_rng.random() < 0.1:
                # A respondent mistypes the address: one edit in the letters of its local part, so
                # no rule links it and the Splink pass (name + e-mail one typo apart) has to.
                local, _, domain = survey_email.partition("@")
                letters = local.rstrip("0123456789")
                survey_email = f"{_typo(typo_rng, letters)}{local[len(letters):]}@{domain}"
            surveys.append(
                {"response_id": response_id, "respondent_email": "" if use_name else survey_email,
                 "respondent_name": name, "nps": nps, "answer": answer, "submitted_at": ts.isoformat()}
            )  # fmt: skip
            records.append(("surveys", response_id, true_person))
        for campaign, factor in CAMPAIGNS.items():
            organic = 0.5 * p.conversion * factor
            if rng.random() < 0.45:
                ex_n += 1
                exposure_id = f"X{period}-{ex_n:07d}"
                converted = rng.random() < min(0.95, organic + PLANTED_UPLIFT[campaign][p.name])
                by_email = rng.random() < 0.3
                ts = window_start + timedelta(seconds=float(rng.uniform(0, WINDOW_DAYS * 86400)))
                exposures.append(
                    {"exposure_id": exposure_id, "customer_id": "" if by_email else customer_id,
                     "email": person_emails[i] if by_email else "", "campaign": campaign,
                     "sent_at": ts.isoformat(), "converted": "yes" if converted else "no", "arm": "exposed"}
                )  # fmt: skip
                records.append(("campaigns", exposure_id, true_person))
            elif holdout_rng.random() < CAMPAIGN_HOLDOUT_SHARE:  # held out of the campaign; conversion still measured
                ex_n += 1
                exposure_id = f"X{period}-{ex_n:07d}"
                ts = window_start + timedelta(seconds=float(holdout_rng.uniform(0, WINDOW_DAYS * 86400)))
                exposures.append(
                    {"exposure_id": exposure_id, "customer_id": customer_id, "email": "", "campaign": campaign,
                     "sent_at": ts.isoformat(), "converted": "yes" if holdout_rng.random() < organic else "no", "arm": "holdout"}
                )  # fmt: skip
                records.append(("campaigns", exposure_id, true_person))

    _plant_driver_traces(drivers, period, seed, window_start, person_emails, person_devices, events, tickets, records, ev_n, tk_n)
    crm = pd.DataFrame(crm_rows)
    ev = pd.DataFrame(events, columns=["event_id", "user_id", "device_id", "event_type", "session_id", "ts"])
    tk = pd.DataFrame(tickets, columns=["ticket_id", "email", "subject", "body", "created_at"])
    sv = pd.DataFrame(surveys, columns=["response_id", "respondent_email", "respondent_name", "nps", "answer", "submitted_at"])
    ex = pd.DataFrame(exposures, columns=["exposure_id", "customer_id", "email", "campaign", "sent_at", "converted", "arm"])
    qrng = np.random.default_rng([seed, period, 7])
    if drift == "broken":  # a telemetry export loses its key field; survey scores arrive as text
        ev.loc[qrng.random(len(ev)) < 0.4, "event_type"] = ""
        if len(sv):
            sv["nps"] = sv["nps"].astype(object)
            sv.loc[qrng.random(len(sv)) < 0.3, "nps"] = "n/a"
    if drift == "bias":  # one group is mostly missing from this period's telemetry
        north = {f"C{i:06d}" for i in range(users) if persons[i]["region"] == "north"}
        drop = ev["user_id"].isin(north) & (qrng.random(len(ev)) < 0.8)
        kept = set(ev.loc[~drop, "event_id"])
        ev = ev[~drop].reset_index(drop=True)
        records = [r for r in records if r[0] != "events" or r[1] in kept]

    suffix = f"_p{period}" if period else ""
    crm.to_csv(out / f"crm{suffix}.csv", index=False)
    ev.to_parquet(out / f"events{suffix}.parquet", index=False)
    tk.to_csv(out / f"tickets{suffix}.csv", index=False)
    sv.to_csv(out / f"surveys{suffix}.csv", index=False)
    ex.to_csv(out / f"campaigns{suffix}.csv", index=False)
    pd.DataFrame(records, columns=["source", "source_key", "true_person"]).to_parquet(out / "truth" / f"records{suffix}.parquet", index=False)
    pd.DataFrame(persons).to_parquet(out / "truth" / f"persons{suffix}.parquet", index=False)
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
    return {"crm": len(crm), "events": len(ev), "tickets": len(tk), "surveys": len(sv), "campaigns": len(ex), "persons": users}
