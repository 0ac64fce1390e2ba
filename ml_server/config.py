"""One settings class: environment variables, or files in the secrets folder the instances mount."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_SECRETS_DIR = "/run/secrets/humansa"

# Values that mean "nobody filled this in"; refused outside development.
PLACEHOLDERS = frozenset(
    {"", "changeme", "change-me", "changethis", "placeholder", "secret", "password", "xxx", "todo"}
)
_PLACEHOLDER_PREFIX_ONLY = frozenset({"sk-", "sk-...", "sk-xxx", "your-api-key", "<api-key>"})

SECRET_FIELDS = (
    "db_password",
    "openai_api_key",
    "anthropic_api_key",
    "deepseek_api_key",
    "google_api_key",
    "xai_api_key",
    "azure_inference_credential",
    "webshare_proxy_password",
    "mem0_api_key",
    "admin_api_key",
)

# Optional provider settings: an empty value (the boot writes an empty file for a provider secret
# still at its CDK placeholder) means "not configured", never a placeholder to refuse.
OPTIONAL_PROVIDER_FIELDS = (
    "openai_api_key",
    "anthropic_api_key",
    "deepseek_api_key",
    "google_api_key",
    "xai_api_key",
    "azure_inference_endpoint",
    "azure_inference_credential",
    "webshare_proxy_username",
    "webshare_proxy_password",
    "mem0_api_key",
)

PROVIDER_NAMES = ("openai", "anthropic", "deepseek", "gemini", "xai", "azure", "fake")


def _is_placeholder(value: str) -> bool:
    v = value.strip().lower()
    return v in PLACEHOLDERS or v in _PLACEHOLDER_PREFIX_ONLY or v.endswith("...")


def read_password_file(path: Path) -> str | None:
    """The file's content without surrounding whitespace; None if unreadable or empty."""
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return value or None


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names it."""


class Settings(BaseSettings):
    """Server settings.

    Every field reads the upper-case environment variable of the same name (the seed's names), or a
    file of that name in ``SECRETS_DIR`` (how the instances deliver secrets). A file wins over the
    variable: the instances keep the files current (the DB password rotates), so a stale
    ``DB_PASSWORD`` in an environment cannot shadow the rotated one. An empty optional provider
    value means "not configured". Unknown variables are ignored (the instance env file carries
    ALB_DNS_NAME and friends).
    """

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False, populate_by_name=True)

    environment: str = "development"
    ml_server_port: int = Field(default=5001, ge=1, le=65535)
    ml_server_host: str = "0.0.0.0"
    aws_region: str | None = None
    instance_id: str | None = None

    # Database: DATABASE_URL wins; else DB_* builds a PostgreSQL URL; else SQLite under .humansa/.
    database_url: str | None = None
    db_host: str | None = None
    db_port: int = Field(default=5432, ge=1, le=65535)
    db_username: str | None = None
    db_password: SecretStr | None = None
    db_active_database: str = Field(
        default="humansa", validation_alias=AliasChoices("DB_ACTIVE_DATABASE", "DB_NAME")
    )
    db_pool_size: int = Field(default=5, ge=1)
    # TLS to PostgreSQL, libpq's names (ml_server/db/tls.py). "auto": verify-full with
    # DB_SSLROOTCERT for an RDS endpoint (*.rds.amazonaws.com), else prefer (local PostgreSQL).
    # Else one of disable, prefer, require, verify-ca, verify-full; production refuses any
    # explicit mode but verify-full. DB_SSLROOTCERT: the CA file; default the Amazon RDS bundle
    # shipped in ml_server/certs/.
    db_sslmode: str = "auto"
    db_sslrootcert: str | None = None
    local_data_dir: str = ".humansa"

    # Provider credentials.
    openai_api_key: SecretStr | None = None
    anthropic_api_key: SecretStr | None = None
    deepseek_api_key: SecretStr | None = None
    google_api_key: SecretStr | None = None
    xai_api_key: SecretStr | None = None
    azure_inference_endpoint: str | None = None
    azure_inference_credential: SecretStr | None = None
    azure_inference_api_version: str = "2024-05-01-preview"
    webshare_proxy_username: str | None = None
    webshare_proxy_password: SecretStr | None = None
    mem0_api_key: SecretStr | None = None
    # Link analysis (ml_server/links.py): every fetch goes through the Webshare proxy when its
    # credentials are set; without them only LINKS_ALLOW_DIRECT=true fetches directly.
    links_proxy_url: str = "http://p.webshare.io:80"
    links_allow_direct: bool = False
    # Extra ranges never fetched (the VPC CIDR, peered networks), e.g. ["10.0.0.0/16"].
    links_blocked_cidrs: list[str] = Field(default_factory=list)
    # Exceptions to the SSRF rule. For tests on 127.0.0.1 only; refused in production.
    links_allowed_cidrs: list[str] = Field(default_factory=list)
    # Ports a fetched URL may name.
    links_allowed_ports: list[int] = Field(default_factory=lambda: [80, 443])
    links_max_bytes: int = Field(default=2 * 1024 * 1024, ge=1024, le=50 * 1024 * 1024)
    links_timeout_seconds: float = Field(default=15.0, gt=0, le=120)
    links_max_redirects: int = Field(default=5, ge=0, le=20)
    # Longest extracted text returned and handed to a model.
    links_max_chars: int = Field(default=20_000, ge=100, le=1_000_000)
    # Memory layer (ml_server/memory/): "local" stores memories in this server's database
    # (pgvector on PostgreSQL, an exact search on SQLite); "mem0" forwards the same API to
    # Mem0's cloud with MEM0_API_KEY. Local is the default: nothing leaves the stack unasked.
    memory_backend: Literal["local", "mem0"] = "local"
    mem0_base_url: str = "https://api.mem0.ai"
    mem0_timeout_seconds: float = Field(default=20.0, gt=0, le=120)
    # The embeddings model (through the router); unset: fake/embed when the offline fake
    # provider is on, else openai/text-embedding-3-small when OpenAI is configured.
    memory_embeddings_model: str | None = None
    # Sent as `dimensions`; the vectors stored and indexed (HNSW indexes up to 2,000).
    memory_embedding_dimensions: int = Field(default=1536, ge=1, le=2000)
    # Unset: one memory per user message (no LLM). A model name: that model extracts facts.
    memory_extraction_model: str | None = None
    memory_max_chars: int = Field(default=4000, ge=100, le=100_000)
    # Admin API (/admin/): its bearer key; unset or empty = the admin API answers 503.
    admin_api_key: SecretStr | None = None

    # Provider base URLs (tests and proxies point these elsewhere).
    openai_base_url: str = "https://api.openai.com/v1"
    anthropic_base_url: str = "https://api.anthropic.com/v1"
    anthropic_version: str = "2023-06-01"
    anthropic_default_max_tokens: int = Field(default=4096, ge=1)
    deepseek_base_url: str = "https://api.deepseek.com/v1"
    xai_base_url: str = "https://api.x.ai/v1"
    gemini_base_url: str = "https://generativelanguage.googleapis.com/v1beta/openai"

    # Routing: {"alias": "provider/model" or ["provider/model", ...fallbacks]} and extra listed
    # models ["provider/model", ...].
    model_aliases: dict[str, str | list[str]] = Field(default_factory=dict)
    extra_models: list[str] = Field(default_factory=list)
    # None = on when no provider has a key and ENVIRONMENT=development.
    enable_fake_provider: bool | None = None

    # HTTP behaviour.
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    # A request body not complete within this many seconds is answered 408.
    body_read_timeout_seconds: float = Field(default=30.0, gt=0)
    # A request head (request line and headers) not complete within this many seconds of the
    # connection opening or the head starting is answered 408 and the connection closed.
    header_read_seconds: float = Field(default=20.0, gt=0, le=600)
    # Provider key files in SECRETS_DIR are looked at this often (and after a provider's 401);
    # a changed file's key is used from then on (ml_server/provider_keys.py).
    provider_key_reload_seconds: float = Field(default=10.0, gt=0)
    # Connections + requests served at once (uvicorn limit_concurrency); more get 503.
    max_concurrency: int = Field(default=2000, ge=1)
    # X-Forwarded-For / X-Forwarded-Proto are trusted only from these peers: comma-separated IPs
    # or CIDRs. On the instances: the VPC CIDR (the ALB's addresses), never "*".
    forwarded_allow_ips: str = "127.0.0.1"
    # Prometheus metrics on their own port, never the public one: 0 = on the app port at
    # /metrics (development and tests only). METRICS_HOST: the address it binds (in the
    # container 0.0.0.0; publish it to the host's 127.0.0.1 only).
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = "0.0.0.0"
    provider_timeout_seconds: float = Field(default=600.0, gt=0)
    provider_connect_timeout_seconds: float = Field(default=10.0, gt=0)
    stream_keepalive_seconds: float = Field(default=5.0, gt=0)
    key_cache_seconds: float = Field(default=30.0, ge=0)

    # Resilience (docs/ml-server.md, "Resilience").
    # {"openai": {"connect": 5, "read": 120}}: per-provider overrides of the two timeouts above.
    provider_timeouts: dict[str, dict[str, float]] = Field(default_factory=dict)
    # Total time for one request across retries and fallbacks (a stream: until its first
    # event); below the ALB idle timeout (300 s) so the client gets our 504, not the ALB's.
    request_deadline_seconds: float = Field(default=280.0, gt=0)
    provider_max_retries: int = Field(default=2, ge=0, le=10)
    retry_backoff_base_seconds: float = Field(default=0.25, ge=0)
    retry_backoff_max_seconds: float = Field(default=4.0, ge=0)
    # A provider asking (Retry-After) for a longer wait is not retried: fall back or answer 429.
    retry_after_max_seconds: float = Field(default=20.0, ge=0)
    breaker_failure_threshold: int = Field(default=5, ge=1)
    breaker_cooldown_seconds: float = Field(default=30.0, gt=0)
    # A stream whose response head takes longer than this counts as a breaker failure even when
    # it then succeeds (time to first byte is the provider's health, not a generation's length).
    breaker_slow_first_byte_seconds: float = Field(default=30.0, gt=0)
    # Calls in flight to one provider per process (0 = no limit); when all are taken, a freed
    # slot goes to the waiting key holding the fewest (a fair share per key).
    provider_max_concurrency: int = Field(default=256, ge=0)
    # Requests per minute per API key (per process); 0 = no limit. `keys set-rpm` overrides.
    rate_limit_rpm: int = Field(default=0, ge=0)
    # Fleet-wide limits and budgets (ml_server/limits.py): shared counters in PostgreSQL are
    # reconciled this often per process; the overshoot bound grows with it (docs/ml-server.md).
    limits_sync_seconds: float = Field(default=0.5, gt=0, le=60)
    # Processes serving the port (uvicorn workers); 0 = one per CPU (nproc).
    web_concurrency: int = Field(default=1, ge=0, le=64)
    # SIGTERM: stop accepting, let requests and streams finish for this long, flush usage, exit 0.
    # 600 s: a rollout cuts no stream shorter than 10 minutes (long reasoning answers; the same
    # as PROVIDER_TIMEOUT_SECONDS). Below the ALB deregistration delay (610 s) and Docker's stop
    # grace (610 s); an instance with no open stream stops at once.
    drain_seconds: int = Field(default=600, ge=0, le=3600)
    # HTTP keep-alive of idle connections; above the load balancer's idle timeout (the boot
    # passes the ALB's + 5 s), else the ALB reuses a connection the server closes: a 502.
    keep_alive_seconds: int = Field(default=65, ge=1, le=4100)

    # Usage accounting.
    usage_queue_size: int = Field(default=10_000, ge=1)
    usage_batch_size: int = Field(default=200, ge=1)
    usage_flush_seconds: float = Field(default=1.0, gt=0)
    usage_retry_max_seconds: float = Field(default=30.0, gt=0)
    # Durable spool: rows the database did not take (outage, shutdown) are kept here and written
    # at the next start; bounded (rows beyond it are dropped and counted). Default:
    # LOCAL_DATA_DIR/usage-spool.
    usage_spool_dir: str | None = None
    usage_spool_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    # The writer counts as stuck on /ready when no batch was written for this long while rows wait.
    usage_stuck_seconds: float = Field(default=120.0, gt=0)
    # An operator's model catalogue, merged over ml_server/catalog/models.yaml (prices, limits).
    model_catalog_file: str | None = None

    log_level: str = "INFO"
    secrets_dir: str = DEFAULT_SECRETS_DIR

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Secret files before the environment (pydantic-settings' default is the reverse).
        return init_settings, file_secret_settings, env_settings, dotenv_settings

    @field_validator(*OPTIONAL_PROVIDER_FIELDS, mode="before")
    @classmethod
    def _empty_means_not_configured(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, SecretStr) and not value.get_secret_value().strip():
            return None
        return value

    @property
    def effective_metrics_port(self) -> int:
        """METRICS_PORT, or its default: 0 (the app port) in development, else 9101."""
        if self.metrics_port is not None:
            return self.metrics_port
        return 0 if self.is_development else 9101

    @property
    def is_development(self) -> bool:
        return self.environment.lower() in {"development", "dev-local", "local", "test"}

    @field_validator("admin_api_key", mode="before")
    @classmethod
    def _empty_admin_key_means_off(cls, value: object) -> object:
        # The boot writes an empty file while the secret is at its CDK placeholder: admin API off.
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _check_routing(self) -> Settings:
        for alias, value in self.model_aliases.items():
            chain = [value] if isinstance(value, str) else value
            if not chain:
                raise SettingsError(f"MODEL_ALIASES: {alias!r} has an empty list of targets")
            for target in chain:
                prefix, sep, model = target.partition("/")
                if not sep or not prefix or not model:
                    raise SettingsError(
                        f"MODEL_ALIASES: {alias!r} -> {target!r} must be 'provider/model' "
                        "(or a list of them, tried in order)"
                    )
        for name, entry in self.provider_timeouts.items():
            if name not in PROVIDER_NAMES:
                raise SettingsError(
                    f"PROVIDER_TIMEOUTS: unknown provider {name!r} "
                    f"(allowed: {', '.join(PROVIDER_NAMES)})"
                )
            for key, seconds in entry.items():
                if key not in ("connect", "read") or seconds <= 0:
                    raise SettingsError(
                        f"PROVIDER_TIMEOUTS[{name!r}]: {key!r}={seconds!r}; allowed keys are "
                        "'connect' and 'read', each a number of seconds > 0"
                    )
        from ml_server.links import parse_networks  # checks each CIDR, naming the setting

        parse_networks(self.links_blocked_cidrs, "LINKS_BLOCKED_CIDRS")
        parse_networks(self.links_allowed_cidrs, "LINKS_ALLOWED_CIDRS")
        if self.links_allowed_cidrs and self.environment == "production":
            raise SettingsError(
                "LINKS_ALLOWED_CIDRS lifts the link fetcher's SSRF rule and is for tests only; "
                "leave it empty in production"
            )
        if self.memory_backend == "mem0" and self.mem0_api_key is None:
            raise SettingsError("MEMORY_BACKEND=mem0 needs MEM0_API_KEY (or MEMORY_BACKEND=local)")
        return self

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> Settings:
        if self.is_development:
            return self
        if self.database_url is None:
            if not self.db_host:
                raise SettingsError(
                    f"DB_HOST is required when ENVIRONMENT={self.environment} (or set DATABASE_URL)"
                )
            if self.db_password is None or _is_placeholder(self.db_password.get_secret_value()):
                raise SettingsError(
                    "DB_PASSWORD is missing or a placeholder value; "
                    f"ENVIRONMENT={self.environment} requires a real password "
                    "(environment variable or file in SECRETS_DIR)"
                )
        for name in SECRET_FIELDS:
            value = getattr(self, name)
            if value is not None and _is_placeholder(value.get_secret_value()):
                raise SettingsError(
                    f"{name.upper()} holds a placeholder value; set a real value or unset it "
                    f"(ENVIRONMENT={self.environment})"
                )
        return self

    @model_validator(mode="after")
    def _check_db_tls(self) -> Settings:
        from ml_server.db import tls

        if self.db_sslmode != "auto":
            if self.db_sslmode not in tls.SSL_MODES:
                raise SettingsError(
                    f"DB_SSLMODE={self.db_sslmode!r}: allowed values are auto, "
                    + ", ".join(tls.SSL_MODES)
                )
            if self.environment.lower() == "production" and self.db_sslmode != "verify-full":
                raise SettingsError(
                    f"DB_SSLMODE={self.db_sslmode} in production: the server verifies the "
                    "database's certificate and name there; use verify-full (or unset it: auto)"
                )
        if self.db_host and self.database_url is None:
            try:
                tls.check(
                    self.effective_db_sslmode,
                    self.effective_db_sslrootcert,
                    mode_name="DB_SSLMODE",
                    cert_name="DB_SSLROOTCERT",
                )
            except tls.TlsSettingError as exc:
                raise SettingsError(str(exc)) from None
        return self

    @property
    def effective_db_sslmode(self) -> str:
        """DB_SSLMODE, or for "auto": verify-full for an RDS endpoint, else prefer."""
        if self.db_sslmode != "auto":
            return self.db_sslmode
        from ml_server.db import tls

        return "verify-full" if self.db_host and tls.is_rds_endpoint(self.db_host) else "prefer"

    @property
    def effective_db_sslrootcert(self) -> str:
        """DB_SSLROOTCERT, or the Amazon RDS CA bundle shipped in ml_server/certs/."""
        from ml_server.db import tls

        return self.db_sslrootcert or str(tls.RDS_CA_BUNDLE)

    @cached_property
    def sqlalchemy_url(self) -> str:
        """The async SQLAlchemy URL the server uses."""
        if self.database_url:
            return self.database_url
        if self.db_host:
            from sqlalchemy.engine import URL

            password = self.db_password.get_secret_value() if self.db_password else None
            url = URL.create(
                "postgresql+asyncpg",
                username=self.db_username,
                password=password,
                host=self.db_host,
                port=self.db_port,
                database=self.db_active_database,
            )
            mode = self.effective_db_sslmode
            if mode != "prefer":  # asyncpg's default; the URL stays as it was
                from ml_server.db import tls

                url = tls.url_with_tls(url, mode, self.effective_db_sslrootcert)
            return url.render_as_string(hide_password=False)
        path = Path(self.local_data_dir) / "ml_server.db"
        return f"sqlite+aiosqlite:///{path}"

    @cached_property
    def db_password_file(self) -> Path | None:
        """The DB_PASSWORD file in SECRETS_DIR, when the password came from it.

        The instances refresh that file when the database secret rotates; every new database
        connection re-reads it (``make_engine(password_file=...)``). None when the password came
        from the environment, or DATABASE_URL is used.
        """
        if self.database_url or not self.db_host or self.db_password is None:
            return None
        folder = Path(self.secrets_dir)
        if not folder.is_dir():
            return None
        for path in folder.iterdir():
            if path.name.lower() == "db_password" and path.is_file():
                try:
                    current = path.read_text(encoding="utf-8").strip()
                except OSError:
                    return None
                return path if current == self.db_password.get_secret_value() else None
        return None

    def current_sqlalchemy_url(self) -> str:
        """``sqlalchemy_url`` with the password as the DB_PASSWORD file holds it now."""
        password = read_password_file(self.db_password_file) if self.db_password_file else None
        if password is None:
            return self.sqlalchemy_url
        from sqlalchemy.engine import make_url

        url = make_url(self.sqlalchemy_url).set(password=password)
        return url.render_as_string(hide_password=False)

    @property
    def fake_provider_enabled(self) -> bool:
        if self.enable_fake_provider is not None:
            return self.enable_fake_provider
        return self.is_development and not self.configured_provider_names()

    def configured_provider_names(self) -> list[str]:
        names = []
        pairs: list[tuple[str, Any]] = [
            ("openai", self.openai_api_key),
            ("anthropic", self.anthropic_api_key),
            ("deepseek", self.deepseek_api_key),
            ("gemini", self.google_api_key),
            ("xai", self.xai_api_key),
        ]
        for name, key in pairs:
            if key is not None and key.get_secret_value():
                names.append(name)
        if self.azure_inference_endpoint and self.azure_inference_credential is not None:
            names.append("azure")
        return names


def load_settings(**overrides: Any) -> Settings:
    """Build the settings, reading ``SECRETS_DIR`` only when that folder exists.

    Raises:
        SettingsError: one line naming the offending variable.
    """
    secrets_dir = overrides.pop("secrets_dir", None) or os.environ.get(
        "SECRETS_DIR", DEFAULT_SECRETS_DIR
    )
    kwargs: dict[str, Any] = dict(overrides)
    if Path(secrets_dir).is_dir():
        kwargs["_secrets_dir"] = secrets_dir
    try:
        return Settings(secrets_dir=secrets_dir, **kwargs)
    except SettingsError:
        raise
    except ValueError as exc:  # pydantic ValidationError, possibly wrapping SettingsError
        errors = getattr(exc, "errors", None)
        if callable(errors):
            first = errors()[0]
            ctx_err = first.get("ctx", {}).get("error")
            if isinstance(ctx_err, SettingsError):
                raise SettingsError(str(ctx_err)) from None
            loc = ".".join(str(p) for p in first.get("loc", ())) or "settings"
            raise SettingsError(f"{loc.upper()}: {first.get('msg')}") from None
        raise
