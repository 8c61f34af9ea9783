"""One typed configuration root for PersonaOps.

`personas.yaml` is looked up at `$PERSONAS_CONFIG`, then `./personas.yaml`; every key can be
overridden from the environment as `PERSONAS_<SECTION>__<KEY>` (e.g. `PERSONAS_MODEL__K_MAX=6`),
and `PERSONAS_HOME` / `PERSONAS_PROFILE` set the top-level keys. Unknown keys are an error that
names the file and the key. Loading does no I/O beyond reading that one file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from personaops.errors import ConfigError

PACKAGE_ROOT = Path(__file__).resolve().parent
# The Feast repo ships beside the package in the source tree (installed editable by `make`).
DEFAULT_FEATURE_REPO = PACKAGE_ROOT.parent / "feature_repo"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IngestConfig(_Section):
    max_future_skew_hours: float = Field(24.0, description="timestamps later than now + this are quarantined (hours)")
    max_text_chars: int = Field(20_000, description="longer text fields are quarantined (characters)")
    incremental: bool = Field(True, description="validate only the rows added at the end of files that grew since the last ingest (docs/incremental-ingest.md); false = every run ingests every file whole")


class IdentityConfig(_Section):
    # Deterministic linking keys, in priority order; the probabilistic pass is a later seam.
    link_keys: list[Literal["customer_id", "email", "phone", "account_id", "device_id"]] = [
        "customer_id",
        "email",
        "phone",
        "account_id",
        "device_id",
    ]
    # Per source, the link keys its records may link on (a subset of link_keys, same priority);
    # a source not listed links on every key. E.g. {tickets: [email]} keeps a helpdesk's
    # free-typed phone numbers from joining people.
    source_link_keys: dict[str, list[Literal["customer_id", "email", "phone", "account_id", "device_id"]]] = {}
    # A device seen with more customer ids than this is shared and never used to link.
    max_persons_per_device: int = 1
    junk_values: list[str] = ["", "unknown", "none", "null", "n/a", "test@test.com", "0000000000"]
    # Guard against over-merging: a person holds at most this many distinct values of a key kind;
    # a link that would exceed it is refused (higher-priority keys link first).
    max_values_per_person: dict[str, int] = {"customer_id": 1, "email": 5, "phone": 5, "account_id": 1, "device_id": 10}
    # The probabilistic pass (Splink on DuckDB) over what the rules leave.
    probabilistic: bool = True
    match_probability_threshold: float = Field(0.95, description="pairs at or above this are merged (probability 0-1)")
    review_probability_min: float = Field(0.70, description="pairs from this up to the threshold go to the review queue (0-1)")
    min_entities_for_matching: int = Field(200, description="below this many entities the model cannot be trained and no pass runs")
    # 250k pairs in one pass per comparison: FEBRL3/FEBRL4 F1 as with 1M (0.9989 / 0.9968 no id), u 3-4x faster.
    u_sampling_max_pairs: float = Field(2.5e5, description="record pairs sampled to estimate u probabilities")
    max_training_rows: int = Field(200_000, description="distinct record attribute rows the model is trained on at most")
    seed: int = 42
    em_max_iterations: int = Field(25, description="expectation-maximisation iterations per training session at most (Splink's max_iterations)")
    # Splink's cost is the pairs its blocking rules compare; a rule on a common value (a name) grows
    # with the square of the entities: 9.6M pairs at 100,000 generated people, 962M at 1,000,000.
    max_block_pairs_per_entity: float | None = Field(
        100.0, gt=0, description="a blocking rule comparing more pairs than this times the entities is narrowed by another column, or dropped (none: no limit)"
    )
    # Where the Splink pass runs: embedded DuckDB, or Spark (Splink's SparkAPI) for the scale path.
    backend: Literal["duckdb", "spark"] = "duckdb"
    spark_master: str = Field("local[*]", description="Spark master URL when backend is spark (local[*] = all cores of this machine)")
    spark_driver_memory: str = Field("1g", description="Spark driver memory when backend is spark (JVM size, e.g. 1g)")
    spark_shuffle_partitions: int = Field(4, description="spark.sql.shuffle.partitions when backend is spark (small for local mode)")
    incremental: bool = Field(True, description="link only added records when the previous run's records are all unchanged (false = always a full resolve)")

    @model_validator(mode="after")
    def _source_keys_are_link_keys(self) -> "IdentityConfig":
        for source, kinds in self.source_link_keys.items():
            extra = [k for k in kinds if k not in self.link_keys]
            if extra:
                raise ValueError(f"source_link_keys of {source!r} names {extra[0]!r}, which is not in link_keys ({', '.join(self.link_keys)})")
        return self

    def source_may_link_on(self, source: str, kind: str) -> bool:
        """Whether records of `source` may link on key kind `kind` in the rule pass."""
        return kind in self.link_keys and kind in self.source_link_keys.get(source, self.link_keys)


class EmbeddingConfig(_Section):
    model_path: str = Field("", description="sentence-transformers model path; empty = the bundled all-MiniLM-L6-v2")
    batch_size: int = 64
    max_texts_per_person: int = 20
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto = bf16 autocast where the CPU has native bf16 and it passes the quality floors, else fp32")
    quality_min_cosine: float = Field(0.999, description="floor on the lowest per-text cosine (0-1) of the fast path vs fp32")
    quality_mean_cosine: float = Field(0.9999, description="floor on the mean per-text cosine (0-1) of the fast path vs fp32")
    quality_min_top10_overlap: float = Field(0.98, description="floor on the mean top-10 neighbour overlap (0-1) of the fast path vs fp32")
    quality_sample: int = Field(256, description="texts the fast path is checked on against fp32 (once per workspace and model)")
    threads: int = Field(0, description="torch CPU threads for embedding; 0 = torch's default")
    bf16_batch_size: int = Field(128, description="encoder batch size on the bf16 path (bf16 kernels pay off on larger batches)")


class ModelConfig(_Section):
    registered_name: str = "persona-model"
    experiment: str = "personas"
    k_min: int = 3
    k_max: int = 8
    restarts: int = 10
    iterations: int = 50
    seed: int = 42
    behaviour_weight: float = 1.0
    text_weight: float = 1.0
    pca_components: int = 24
    silhouette_sample: int = 3000
    quotes_per_persona: int = 3
    traits_per_persona: int = 5
    min_persona_share: float = Field(0.03, description="a k whose smallest persona holds less than this share (0-1) is not considered")
    outlier_mads: float = Field(8.0, description="unassigned when farther from every centroid than median + this many MADs")
    stability_rounds: int = 5
    selection_rows: int = Field(25_000, ge=1_000, description="people the choice of k (fits per k, bootstrap stability, silhouette) runs on; the chosen k is then fitted on everyone")
    stability_floor: float = Field(0.9, description="mean bootstrap ARI (0-1) below which a version is not promotable")
    promotion_tolerance: float = Field(0.02, description="how much worse than the champion a challenger may be (silhouette, stability)")
    auto_promote: bool = Field(True, description="promote a new version to champion when it passes the gate")
    bias_tolerance: float = Field(0.05, description="how much larger a challenger's max demographic-parity difference (0-1) may be than the champion's")
    continuity_min_jaccard: float = Field(0.3, description="membership overlap (0-1) needed to keep a previous persona id")
    # Human review of high-stakes promotions (docs/governance.md "Held promotions"): a candidate that
    # passes the gate is held for approval instead of promoted when either of these is exceeded.
    review_moved_share: float = Field(0.25, description="share of the champion's persons (0-1) a candidate would move to another persona above which the promotion waits for review")
    bias_review_increase: float = Field(0.02, description="increase of the max demographic-parity difference (0-1) over the champion's above which (up to bias_tolerance) the promotion waits for review")
    retrain: Literal["auto", "always"] = Field("auto", description="auto = a run that only adds records scores them with the champion unless quality or monitoring calls for a retrain; always = every run with new inputs trains")


class MonitoringConfig(_Section):
    drift_share_alert: float = Field(0.3, description="share of drifted feature columns that counts as drift (0-1)")
    policy: Path | None = Field(None, description="monitoring policy file; empty = monitoring/policy.yaml")
    # 1000: Evidently's t-SNE plot of the sample was most of a 10k-person pass at 3000 (docs/monitoring.md#cost-of-a-monitoring-pass)
    embedding_sample: int = Field(1000, description="text vectors per side in the embedding drift check")


# "writer" (pushes events; reads like a reader) stands outside the reader < analyst < ml-engineer < admin order (personaops/roles.py).
ApiRole = Literal["reader", "analyst", "ml-engineer", "admin", "writer"]


class CliConfig(_Section):
    # The CLI's role when no API token is configured (docs/governance.md "Roles"); with tokens
    # configured the CLI takes its role from $PERSONAS_TOKEN instead.
    role: Literal["reader", "analyst", "ml-engineer", "admin"] = "admin"


class ApiConfig(_Section):
    # API token -> role (reader < analyst < admin); PERSONAS_API_TOKENS='tok:role,...' adds more.
    tokens: dict[str, ApiRole] = {}
    max_lookup_ids: int = Field(1000, description="person ids one batch lookup may ask for")
    max_body_bytes: int = Field(4 * 1024 * 1024, description="largest request body (bytes) the API reads; larger ones get 413")


class InsightsConfig(_Section):
    intent_k: int = Field(0, description="intents mined from ticket and survey texts (Ward clusters); 0 = chosen from the data by silhouette")
    intent_k_max: int = Field(60, description="most intents the silhouette choice considers (intent_k = 0)")
    min_signal_persons: int = Field(10, description="graph signals shown by fewer people are not ranked or used")
    churn_label: str = Field("churned", description="the outcome label the risk flag predicts")
    risk_threshold: float = Field(0.5, description="churn probability (0-1) at or above which the risk flag is amber")
    engagement_threshold: float = Field(0.5, description="recent/baseline activity ratio below which the engagement flag is amber")
    test_size: float = Field(0.3, description="share of labelled people held out to measure the churn model (0-1)")
    opportunity_campaign: str = Field("upgrade_offer", description="the expansion offer whose conversion (among exposed people) the opportunity flag predicts")
    opportunity_threshold: float = Field(0.4, description="conversion probability (0-1) at or above which the opportunity flag is amber")
    seed: int = 42
    retrain: Literal["auto", "always"] = Field("auto", description="flag models: auto = a run that only adds records (same champion, settings and intents) scores everyone with the last trained risk and opportunity models; always = train them every run")


class ComputeConfig(_Section):
    # Where the heavy stages (ingest, features, batch scoring, identity's Splink pass) run:
    # pandas in this process, or Spark (local[*] here, a cluster URL in production); docs/scaling.md.
    engine: Literal["pandas", "spark"] = "pandas"
    spark_master: str = Field("local[*]", description="Spark master URL when engine is spark (local[*] = all cores of this machine; spark://host:7077 or k8s://... for a cluster)")
    spark_driver_memory: str = Field("2g", description="Spark driver memory when engine is spark (JVM size, e.g. 2g)")
    spark_shuffle_partitions: int = Field(4, ge=1, description="spark.sql.shuffle.partitions when engine is spark (small for local mode; about 2-3x the cluster's cores)")
    spark_rows_per_task: int = Field(200_000, ge=1_000, description="rows of one source a Spark validation or feature task handles at most")


class PersonasConfig(_Section):
    home: Path = Path(".personas")
    profile: Literal["local", "production"] = "local"
    feature_repo: Path = DEFAULT_FEATURE_REPO
    ingest: IngestConfig = IngestConfig()
    identity: IdentityConfig = IdentityConfig()
    embedding: EmbeddingConfig = EmbeddingConfig()
    model: ModelConfig = ModelConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    api: ApiConfig = ApiConfig()
    insights: InsightsConfig = InsightsConfig()
    cli: CliConfig = CliConfig()
    compute: ComputeConfig = ComputeConfig()


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for top in ("home", "profile", "feature_repo"):
        value = environ.get(f"PERSONAS_{top.upper()}")
        if value:
            out[top] = value
    for name, value in environ.items():
        if not name.startswith("PERSONAS_") or "__" not in name:
            continue
        section, _, key = name[len("PERSONAS_") :].lower().partition("__")
        # Lists are written as YAML in the variable, e.g. PERSONAS_IDENTITY__LINK_KEYS='[email]'.
        out.setdefault(section, {})[key] = yaml.safe_load(value)
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def config_path(environ: dict[str, str] | None = None) -> Path | None:
    """The personas.yaml in force, or None when defaults apply."""
    environ = dict(os.environ) if environ is None else environ
    if environ.get("PERSONAS_CONFIG"):
        return Path(environ["PERSONAS_CONFIG"])
    local = Path("personas.yaml")
    return local if local.is_file() else None


def load_config(path: Path | None = None, environ: dict[str, str] | None = None) -> PersonasConfig:
    """Load personas.yaml (if any) with environment overrides; raise ConfigError naming file and key."""
    environ = dict(os.environ) if environ is None else environ
    path = path if path is not None else config_path(environ)
    raw: dict[str, Any] = {}
    where = "the environment"
    if path is not None:
        where = str(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"Config file {path} does not exist; create it or unset PERSONAS_CONFIG.") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"Config file {path} is not valid YAML ({exc.__class__.__name__}); fix its syntax.") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"Config file {path} must be a mapping of settings; see docs/configuration.md.")
    try:
        cfg = PersonasConfig.model_validate(_merge(raw, _env_overrides(environ)))
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            raise ConfigError(f"Unknown setting '{key}' in {where}; remove it or see docs/configuration.md for valid keys.") from None
        raise ConfigError(f"Setting '{key}' in {where} is invalid ({err['msg']}); fix its value.") from None
    cfg.home = cfg.home.expanduser().resolve()
    cfg.feature_repo = cfg.feature_repo.expanduser().resolve()
    return cfg
