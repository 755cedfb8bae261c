"""The TOML config file (docs/api.md, "The config file") as pydantic models. Loaded in the app's lifespan
and the CLI, never at import."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CONFIG_ENV = "SYNTHSERVE_CONFIG"
LOCAL_BACKEND = "local"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Section):
    max_rows_per_request: int = Field(10_000, ge=1)
    # output rows: input rows (or generations) x rows per unit (num_generations)
    max_output_rows_per_request: int = Field(100_000, ge=1)
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    # a JSON body is parsed whole on the event loop (~10 ms a MB, every request waits): kept
    # smaller than uploads (multipart files stream); more rows go in a job's file
    max_json_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_field_chars: int = Field(1_000_000, ge=1)  # any one string in a row or in params
    api_keys_env: str = "SYNTHSERVE_API_KEYS"
    # env var with a key that opens /metrics only (a scraper need not hold an API key)
    metrics_key_env: str = "SYNTHSERVE_METRICS_KEY"
    cors_origins: list[str] = Field(default_factory=list)  # ["*"]: any origin
    # a backend with more calls than this waiting for a slot: new requests get 429 + Retry-After
    max_queued_calls: int = Field(100_000, ge=1)

    def api_keys(self) -> frozenset[str]:
        raw = os.environ.get(self.api_keys_env, "")
        return frozenset(k.strip() for k in raw.split(",") if k.strip())

    def metrics_key(self) -> str | None:
        return os.environ.get(self.metrics_key_env, "").strip() or None


class BackendConfig(_Section):
    provider: Literal["openai", "mistral", "tgi", "local"]
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    max_concurrency: int = Field(16, ge=1)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(3, ge=0)
    # spend and rate limits (docs/api.md, "Spend and rate limits"); rpm/tpm are shared through Redis
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    adaptive: bool = False
    price_input_per_mtok: float = Field(0.0, ge=0, allow_inf_nan=False)
    price_output_per_mtok: float = Field(0.0, ge=0, allow_inf_nan=False)
    # local provider only: model path or cached id (None = the embedded SmolLM2)
    model_path: str | None = None
    device: str | None = None

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class LLMConfig(_Section):
    default_backend: str | None = None


DATA_DIR_ENV = "SYNTHSERVE_DATA_DIR"


class JobsConfig(_Section):
    # None: a private redis-server child of `synthserve serve`, under data_dir (app.jobs.private)
    redis_url: str | None = None
    data_dir: str = Field(default_factory=lambda: os.environ.get(DATA_DIR_ENV, ".synthserve"))
    # the API process runs a worker too; None = only with the private redis (no separate workers)
    consume: bool | None = None
    pool_size: int = Field(64, ge=2)  # Redis connections per process (event streams share one more)
    result_ttl_s: int = Field(7 * 24 * 3600, ge=1)
    max_row_attempts: int = Field(3, ge=1)
    claim_idle_ms: int = Field(5_000, ge=100)
    chunk_units: int = Field(16, ge=1, le=1000)  # units (input rows) per queue entry
    worker_units: int | None = Field(None, ge=1)  # units in flight per worker; None = 2 x the largest max_concurrency
    shutdown_grace_s: float = Field(10.0, ge=0)  # on SIGTERM, time for in-flight chunks to finish


class CacheConfig(_Section):
    enabled: bool = True
    ttl_days: float = Field(30, gt=0, allow_inf_nan=False)


class TasksConfig(_Section):
    custom_dir: str | None = None


class PipelinesConfig(_Section):
    dir: str | None = None  # pipeline files (*.toml, *.json), relative to the config file (app.pipelines.catalog)


class Settings(_Section):
    server: ServerConfig = ServerConfig()
    llm: LLMConfig = LLMConfig()
    backends: dict[str, BackendConfig] = Field(
        default_factory=lambda: {LOCAL_BACKEND: BackendConfig(provider="local", max_concurrency=16)}
    )
    jobs: JobsConfig = Field(default_factory=JobsConfig)  # (data_dir: read $SYNTHSERVE_DATA_DIR now)
    tasks: TasksConfig = TasksConfig()
    pipelines: PipelinesConfig = PipelinesConfig()
    cache: CacheConfig = CacheConfig()
    config_dir: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _default_backend(self) -> Settings:
        if not self.backends:
            raise ValueError("at least one [backends.NAME] section is required")
        if self.llm.default_backend is None:
            self.llm.default_backend = next(iter(self.backends))
        elif self.llm.default_backend not in self.backends:
            raise ValueError(f"llm.default_backend {self.llm.default_backend!r} is not a configured backend")
        return self


class ConfigError(Exception):
    pass


def load_settings(path: str | os.PathLike | None = None) -> Settings:
    """Settings from `path`, else from $SYNTHSERVE_CONFIG, else the built-in defaults."""
    path = path or os.environ.get(CONFIG_ENV) or None
    if path is None:
        return Settings()
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {p}: {exc}") from exc
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid config {p}:\n{exc}") from exc
    settings.config_dir = p.resolve().parent
    return settings
