"""The one settings object: YAML file (``--config``) overlaid by ``CALMON_*`` environment variables.

Precedence, highest first: explicit overrides (CLI flags) > environment > YAML file > defaults.
Everything is validated here, before any socket or database is opened, so a bad deployment fails
at start with a message naming the key instead of at the first request.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from monitor.vocabulary import FITTABLE_METHODS, MODEL_WIDE

__all__ = [
    "MASK",
    "AuthConfig",
    "ConfigError",
    "DatabaseConfig",
    "DriftConfig",
    "EvaluationConfig",
    "LimitsConfig",
    "LoggingConfig",
    "ModelConfig",
    "ModelDriftOverride",
    "NotificationConfig",
    "RecalibrationConfig",
    "RetentionConfig",
    "SchedulerConfig",
    "Scope",
    "SegmentConfig",
    "Settings",
    "TokenAggregation",
    "TokenConfig",
    "load_settings",
    "mask_url",
    "parse_duration",
]


Scope = Literal["ingest", "read", "admin"]
TokenAggregation = Literal["mean", "sum", "min"]
MASK = "********"
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> int:
    """Seconds in a window name such as ``1h`` or ``7d``."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"not a duration like 1h, 24h or 7d: {text!r}")
    return int(match.group(1)) * _DURATION_SECONDS[match.group(2)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EvaluationConfig(_Section):
    interval_seconds: float = Field(60.0, gt=0)
    max_segments: int = Field(50, ge=1)  # per model, unless models.<m>.max_segments; overflow -> "other"
    bootstrap_draws: int = Field(500, ge=50)
    reload_seconds: float = Field(3600.0, gt=0)  # full reload of the leader's rolling windows
    windows: list[str] = Field(default_factory=lambda: ["1h", "24h", "7d"], min_length=1)
    bucket_seconds: int = Field(300, gt=0)
    fine_bins: int = Field(120, ge=2, le=10_000)
    ece_bins: int = Field(15, ge=1)

    @field_validator("windows")
    @classmethod
    def _windows_parse(cls, value: list[str]) -> list[str]:
        for window in value:
            parse_duration(window)
        return value

    @model_validator(mode="after")
    def _ece_bins_divide(self) -> EvaluationConfig:
        if self.fine_bins % self.ece_bins:
            raise ValueError(f"ece_bins ({self.ece_bins}) must divide fine_bins ({self.fine_bins})")
        return self


DriftPolicyName = Literal["evidence", "ece_interval", "spiegelhalter", "fixed_window"]


def _false_alarm_every(value: int | str) -> int | str:
    if isinstance(value, str):
        parse_duration(value)
    elif value < 1:
        raise ValueError("must be at least 1 evaluation")
    return value


class DriftConfig(_Section):
    # evidence: the anytime-valid e-detector against ``tolerance`` (docs/architecture.md, "Drift
    # decisions"); the others are the earlier fixed-sample rules, kept for comparison (``calmon
    # replay``, benchmarks/drift.py): ECE interval above ece_threshold, Spiegelhalter's test, and a
    # test of the tolerance once per disjoint window.
    policy: DriftPolicyName = "evidence"
    tolerance: float = Field(0.02, gt=0, lt=0.5)
    # The guarantee: on a series exactly at the tolerance, the mean time to a false alarm is at
    # least this — a count of evaluations, or a duration such as "520w" (over interval_seconds).
    false_alarm_every: int | str = 100_000
    baseline_start: float | None = None  # fixed label-free reference for confidence_shift
    baseline_end: float | None = None
    min_labelled: int = Field(500, ge=1)
    ece_threshold: float = Field(0.05, gt=0, lt=1)
    psi_threshold: float = Field(0.25, gt=0)
    p_value_threshold: float = Field(0.001, gt=0, lt=1)
    consecutive: int = Field(2, ge=1)
    cooldown_seconds: float = Field(3600.0, ge=0)
    # Alert (CalmonEstimatedAccuracyBelowFloor) when even the upper bound of the label-free accuracy
    # estimate falls below this; None: no floor. Per model and segment like the rest.
    accuracy_floor: float | None = Field(None, gt=0, lt=1)

    @field_validator("false_alarm_every")
    @classmethod
    def _every(cls, value: int | str) -> int | str:
        return _false_alarm_every(value)

    @model_validator(mode="after")
    def _baseline(self) -> DriftConfig:
        if (self.baseline_start is None) != (self.baseline_end is None):
            raise ValueError("baseline_start and baseline_end go together")
        if (
            self.baseline_start is not None
            and self.baseline_end is not None
            and self.baseline_end <= self.baseline_start
        ):
            raise ValueError("baseline_end must be after baseline_start")
        return self


class RecalibrationConfig(_Section):
    methods: list[str] = Field(default_factory=lambda: list(FITTABLE_METHODS), min_length=1)
    schedule: str | None = None
    max_rows: int = Field(200_000, ge=100)
    serving_refresh_seconds: float = Field(10.0, gt=0)  # bound on how long a promotion takes to serve
    min_rows: int = Field(1000, ge=20)  # labelled rows needed; a segment below it falls back to model-wide
    validation_fraction: float = Field(0.4, gt=0, lt=1)  # the newest rows, by prediction time
    ece_margin: float = Field(0.005, ge=0)
    brier_tolerance: float = Field(1e-4, ge=0)
    auroc_tolerance: float = Field(0.005, ge=0)
    bootstrap_draws: int = Field(500, ge=50)
    on_drift: bool = True  # recalibrate when calibration drift becomes active
    min_logit_rows: int = Field(200, ge=10)  # rows with stored logits and a class label to fit on full logits

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        """A crontab line, checked here so a typo stops ``check-config`` and ``serve`` at once."""
        if value is None:
            return value
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(value, timezone="UTC")
        except ValueError as exc:
            raise ValueError(f"not a crontab schedule like '0 3 * * 1' ({exc})") from None
        return value

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: list[str]) -> list[str]:
        unknown = [m for m in value if m not in FITTABLE_METHODS]
        if unknown:
            raise ValueError(f"unknown calibrator method(s) {unknown}; known: {list(FITTABLE_METHODS)}")
        return value


class ModelDriftOverride(_Section):
    tolerance: float | None = Field(None, gt=0, lt=0.5)
    false_alarm_every: int | str | None = None
    baseline_start: float | None = None
    baseline_end: float | None = None
    min_labelled: int | None = Field(None, ge=1)
    ece_threshold: float | None = Field(None, gt=0, lt=1)
    psi_threshold: float | None = Field(None, gt=0)
    p_value_threshold: float | None = Field(None, gt=0, lt=1)
    consecutive: int | None = Field(None, ge=1)
    cooldown_seconds: float | None = Field(None, ge=0)
    accuracy_floor: float | None = Field(None, gt=0, lt=1)


Targets = list[float]


def _targets(value: Targets | None) -> Targets | None:
    if value is None:
        return value
    if len(value) > 10 or len(set(value)) != len(value):
        raise ValueError("at most 10 distinct targets (each is a label value of calmon_advised_*)")
    if any(not 0.0 < t < 1.0 for t in value):
        raise ValueError("every target precision lies strictly between 0 and 1")
    return sorted(value)


class AdviceConfig(_Section):
    """Threshold advice (selective prediction): per target precision among accepted answers, the
    lowest calibrated-confidence threshold that reaches it with probability >= 1 - alpha."""

    targets: Targets = Field(default_factory=lambda: [0.9, 0.95, 0.99])
    alpha: float = Field(0.05, gt=0, lt=0.5)
    # Thresholds the risk-coverage curve is kept at (snapshot, calmon_accept_*, charts): each is a
    # label value of calmon_accept_coverage/precision, so at most 24.
    curve: list[float] = Field(
        default_factory=lambda: [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999]
    )

    @field_validator("targets")
    @classmethod
    def _valid_targets(cls, value: Targets) -> Targets:
        return _targets(value) or []

    @field_validator("curve")
    @classmethod
    def _valid_curve(cls, value: list[float]) -> list[float]:
        if not value or len(value) > 24 or len(set(value)) != len(value):
            raise ValueError("1 to 24 distinct thresholds (each is a label value of calmon_accept_*)")
        if any(not 0.0 <= t < 1.0 for t in value):
            raise ValueError("every curve threshold lies in [0, 1)")
        return sorted(value)


class SegmentConfig(_Section):
    drift: ModelDriftOverride = Field(default_factory=ModelDriftOverride)
    advice_targets: Targets | None = None  # overrides advice.targets and the model's

    @field_validator("advice_targets")
    @classmethod
    def _valid_targets(cls, value: Targets | None) -> Targets | None:
        return _targets(value)

    @field_validator("drift")
    @classmethod
    def _model_level_bets(cls, value: ModelDriftOverride) -> ModelDriftOverride:
        """Labels are bet on when folded, for the segment and the model-wide series at once."""
        if value.tolerance is not None:
            raise ValueError("tolerance is set per model (models.<m>.drift.tolerance), not per segment")
        return value


class ModelConfig(_Section):
    drift: ModelDriftOverride = Field(default_factory=ModelDriftOverride)
    segments: dict[str, SegmentConfig] = Field(default_factory=dict)  # per-segment drift overrides
    token_aggregation: TokenAggregation = "mean"  # noqa: S105 (not a secret)
    max_segments: int | None = Field(None, ge=1)
    advice_targets: Targets | None = None  # overrides advice.targets for this model

    @field_validator("advice_targets")
    @classmethod
    def _valid_targets(cls, value: Targets | None) -> Targets | None:
        return _targets(value)


class TokenConfig(_Section):
    """A bearer token: inline ``token`` (tests, local use) or ``token_env`` naming the variable holding it."""

    name: str = Field(min_length=1)
    token: SecretStr | None = None
    token_env: str | None = None
    scopes: list[Scope] = Field(min_length=1)

    @model_validator(mode="after")
    def _resolve(self) -> TokenConfig:
        if (self.token is None) == (self.token_env is None):
            raise ValueError(f"token {self.name!r}: give exactly one of 'token' or 'token_env'")
        if self.token_env is not None:
            value = os.environ.get(self.token_env)
            if not value:
                raise ValueError(
                    f"token {self.name!r}: environment variable {self.token_env} is not set or empty"
                )
            self.token = SecretStr(value)
        assert self.token is not None
        if len(self.token.get_secret_value()) < 16:
            raise ValueError(f"token {self.name!r}: must be at least 16 characters")
        return self

    def secret(self) -> str:
        assert self.token is not None
        return self.token.get_secret_value()


class AuthConfig(_Section):
    tokens: list[TokenConfig] = Field(default_factory=list)
    protect_metrics: bool = False

    @field_validator("tokens")
    @classmethod
    def _unique_names(cls, value: list[TokenConfig]) -> list[TokenConfig]:
        names = [token.name for token in value]
        if len(names) != len(set(names)):
            raise ValueError("token names must be unique")
        return value


class NotificationConfig(_Section):
    """One receiver. ``events`` lists the event kinds it wants (empty: all). ``apprise``: ``url`` is any
    Apprise URL (``msteams://``, ``pagerduty://``, ``opsgenie://``, ``discord://``, ``tgram://``, ...)."""

    kind: Literal["webhook", "slack", "email", "apprise"]
    url: SecretStr | None = None
    events: list[str] = Field(default_factory=list)
    smtp_host: str | None = None
    smtp_port: int = Field(25, ge=1, le=65535)
    sender: str | None = None
    recipients: list[str] = Field(default_factory=list)
    max_attempts: int = Field(5, ge=1)
    backoff_seconds: float = Field(1.0, ge=0)  # doubles after every failed attempt
    timeout_seconds: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _complete(self) -> NotificationConfig:
        if self.kind in ("webhook", "slack", "apprise") and self.url is None:
            raise ValueError(f"a {self.kind} notification needs 'url'")
        if self.kind == "email" and not (self.smtp_host and self.sender and self.recipients):
            raise ValueError("an email notification needs 'smtp_host', 'sender' and 'recipients'")
        if self.kind == "apprise":
            _check_apprise_url(self.url)
        return self


def _check_apprise_url(url: SecretStr | None) -> None:
    """Refuse at start-up what Apprise cannot parse, instead of at the first event."""
    import apprise

    if url is None or not apprise.Apprise().add(url.get_secret_value()):
        raise ValueError("an apprise notification needs a 'url' Apprise understands (see its URL list)")


class RetentionConfig(_Section):
    raw_days: float = Field(30, gt=0)
    sketch_days: float = Field(400, gt=0)
    interval_seconds: float = Field(3600.0, gt=0)
    # A batch's pks are bound one parameter each in its DELETE: PostgreSQL takes at most 65,535.
    batch_rows: int = Field(10_000, ge=100, le=50_000)


class SchedulerConfig(_Section):
    """Leader election: one replica runs the jobs; the lease moves within ``lease_ttl_seconds``."""

    enabled: bool = True
    lease_ttl_seconds: float = Field(15.0, gt=0)
    instance_id: str | None = None  # default: hostname:pid
    reconcile_interval_seconds: float = Field(30.0, gt=0)
    misfire_grace_seconds: float = Field(30.0, gt=0)
    recalibration_poll_seconds: float = Field(1.0, gt=0)  # how soon a queued recalibration starts


class LimitsConfig(_Section):
    """Bounds on what one request may carry; every one is a 413/422 naming the field when exceeded."""

    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_batch_records: int = Field(10_000, ge=1)
    max_models: int = Field(100, ge=1)  # models tracked; a new one beyond it is rejected (field model)
    max_vector_length: int = Field(4096, ge=2)
    max_id_length: int = Field(256, ge=1)
    max_label_length: int = Field(256, ge=1)
    max_future_skew_seconds: float = Field(3600.0, ge=0)
    probs_sum_tolerance: float = Field(1e-3, gt=0, lt=1)


class DatabaseConfig(_Section):
    """Every wait on the database is bounded, so a stalled server gives callers a timely 503."""

    pool_size: int = Field(10, ge=1)
    max_overflow: int = Field(10, ge=0)
    connect_timeout_seconds: int = Field(5, ge=1)
    pool_timeout_seconds: float = Field(3.0, gt=0)  # waiting for a free pooled connection
    statement_timeout_seconds: float = Field(30.0, gt=0)  # PostgreSQL's server-side statement_timeout
    request_timeout_seconds: float = Field(4.0, gt=0)  # an API request's deadline, then 503 + Retry-After
    sqlite_synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = "FULL"
    sqlite_busy_timeout_ms: int = Field(10_000, ge=0)


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"
    access_log: bool = True


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CALMON_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    database_url: SecretStr = SecretStr("sqlite:///./calmon.db")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # The path prefix a reverse proxy serves calmon under ("/calmon"): the status page's links keep it.
    root_path: str = Field("", max_length=256, pattern=r"^(/[A-Za-z0-9._~-]+)*$")
    shutdown_grace_seconds: float = Field(30.0, ge=0)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    recalibration: RecalibrationConfig = Field(default_factory=RecalibrationConfig)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    notifications: list[NotificationConfig] = Field(default_factory=list)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    advice: AdviceConfig = Field(default_factory=AdviceConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @field_validator("database_url")
    @classmethod
    def _known_backend(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        if not (url.startswith("sqlite") or url.startswith("postgresql")):
            raise ValueError("database_url must be a sqlite:/// or postgresql+psycopg:// URL")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("yaml_file"):
            sources.append(YamlConfigSettingsSource(settings_cls))
        return tuple(sources)

    def url(self) -> str:
        return self.database_url.get_secret_value()

    def model_config_for(self, model: str) -> ModelConfig:
        return self.models.get(model) or ModelConfig()

    def max_segments_for(self, model: str) -> int:
        """Segments of ``model`` with a series of their own; later ones are folded into ``other``."""
        return self.model_config_for(model).max_segments or self.evaluation.max_segments

    def advice_targets_for(self, model: str, segment: str) -> Targets:
        """Target precisions advised for one series: the segment's, else the model's, else advice.targets."""
        model_cfg = self.model_config_for(model)
        own = model_cfg.segments.get(segment)
        if own is not None and own.advice_targets is not None:
            return own.advice_targets
        return model_cfg.advice_targets if model_cfg.advice_targets is not None else self.advice.targets

    def drift_for(self, model: str, segment: str) -> DriftConfig:
        """Drift thresholds for one series: defaults, then the model's, then the segment's overrides."""
        values = self.drift.model_dump()
        model_cfg = self.model_config_for(model)
        layers = [model_cfg.drift]
        if segment in model_cfg.segments:
            layers.append(model_cfg.segments[segment].drift)
        for layer in layers:
            values.update({k: v for k, v in layer.model_dump().items() if v is not None})
        return DriftConfig(**values)

    def tolerance_for(self, model: str) -> float:
        """The τ a model's labels are bet at: per model (the model-wide series holds every segment);
        the leader's fold, the sketch route and the Spark job all bet at it."""
        return self.drift_for(model, MODEL_WIDE).tolerance

    def masked(self) -> dict[str, Any]:
        """The effective configuration as plain data, every secret masked."""
        data = self.model_dump(mode="json")
        data["database_url"] = mask_url(self.url())
        for token in data["auth"]["tokens"]:
            token["token"] = MASK
        for notification in data["notifications"]:
            if notification.get("url"):
                notification["url"] = MASK
        return data


def mask_url(url: str) -> str:
    """Hide the password of a database URL (``user:***@host``)."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


class ConfigError(Exception):
    """The configuration cannot be used; the message names the offending key."""


def load_settings(config_path: str | Path | None = None, **overrides: Any) -> Settings:
    """Build validated settings from an optional YAML file, the environment and explicit overrides."""
    settings_cls: type[Settings] = Settings
    if config_path is not None:
        path = Path(config_path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        settings_cls = type(
            "FileSettings", (Settings,), {"model_config": {**Settings.model_config, "yaml_file": path}}
        )
    clean = {key: value for key, value in overrides.items() if value is not None}
    try:
        return settings_cls(**clean)
    except Exception as exc:  # pydantic ValidationError, YAML errors
        raise ConfigError(_describe(exc)) from exc


def _describe(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        parts = []
        for err in errors():
            loc = ".".join(str(p) for p in err.get("loc", ())) or "<root>"
            parts.append(f"{loc}: {err.get('msg')}")
        return "invalid configuration:\n  " + "\n  ".join(parts)
    return f"invalid configuration: {exc}"
