"""Configuration: a TOML file, overridden by ``KONSIL_*`` environment variables, overridden by flags.

Top-level keys map to ``KONSIL_<KEY>``; keys of a section ``[turn]`` map to ``KONSIL_TURN_<KEY>``.
Every value is checked here so that a bad setting stops startup with one clear line.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from konsil.errors import ConfigError

ENV_PREFIX = "KONSIL_"

# The feature packages one process can serve (`features`), in setup order, each with the
# features it cannot work without. The kernel (login, admin, API tokens, /healthz, /metrics) is
# always served. RCP posts its notices into the boards' Matrix rooms, and the homeserver's
# notifier and caches are per process, so RCP runs in the process that serves Matrix.
FEATURES: dict[str, tuple[str, ...]] = {
    "messaging": (),
    "rcp": ("messaging", "workflow"),
    "video": ("workflow",),
    "workflow": (),
}


@dataclass(frozen=True)
class AuthConfig:
    lockout_threshold: int = 5
    lockout_seconds: int = 300
    session_hours: int = 12
    totp_required_roles: tuple[str, ...] = ()
    cookie_secure: bool = False
    # Argon2id cost of new password hashes (libsodium's "interactive" profile by default). Each
    # hash or check holds password_memory_kib of RAM for its duration, up to
    # password_hash_concurrency at a time: that is most of a small server's peak memory.
    password_memory_kib: int = 65536
    password_passes: int = 2
    password_hash_concurrency: int = 2


@dataclass(frozen=True)
class MatrixConfig:
    registration_enabled: bool = False
    max_upload_bytes: int = 50 * 1024 * 1024
    sync_timeout_max_ms: int = 30_000
    login_rate_per_s: float = 0.5
    login_burst: int = 20
    send_rate_per_s: float = 20.0
    send_burst: int = 100
    upload_rate_per_s: float = 1.0
    upload_burst: int = 20
    retention_check_seconds: int = 3600  # 0: only `konsil messaging-purge`


@dataclass(frozen=True)
class TurnConfig:
    secret: str = ""
    urls: tuple[str, ...] = ()
    ttl_seconds: int = 3600


@dataclass(frozen=True)
class SmtpConfig:
    host: str = ""
    port: int = 25
    sender: str = "konsil@localhost"


@dataclass(frozen=True)
class VideoConfig:
    link_valid_hours: int = 72  # invitation link lifetime after the appointment's start
    max_upload_bytes: int = 10 * 1024 * 1024
    max_check_peers: int = 20  # concurrent pre-call check peers (aiortc) per process
    check_timeout_seconds: int = 60
    force_relay: bool = False  # browsers use TURN relay candidates only


@dataclass(frozen=True)
class WorkflowConfig:
    dsp_url: str = ""
    dsp_transport: str = "xds"
    dsp_update_url: str = ""  # XDS ITI-57 endpoint; default: dsp_url's …/iti41 as …/iti57
    cns_url: str = ""
    signing_key_secret: str = ""
    worker_enabled: bool = True
    max_attempts: int = 8
    client_cert: str = ""
    client_key: str = ""
    ca_file: str = ""
    lease_seconds: int = 60
    worker_batch: int = 100
    worker_concurrency: int = 32


@dataclass(frozen=True)
class Config:
    database_url: str = ""
    database_max_connections: int = 0  # 0: 20 (SQLite), 10 + 10 overflow (PostgreSQL)
    server_name: str = "localhost"
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: str = "var"
    public_base_url: str = ""
    secret_key: str = ""
    log_level: str = "INFO"
    log_format: str = "json"
    default_language: str = "fr"
    features: tuple[str, ...] = tuple(FEATURES)
    auth: AuthConfig = field(default_factory=AuthConfig)
    matrix: MatrixConfig = field(default_factory=MatrixConfig)
    turn: TurnConfig = field(default_factory=TurnConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    workflow: WorkflowConfig = field(default_factory=WorkflowConfig)
    video: VideoConfig = field(default_factory=VideoConfig)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_path / 'konsil.db').as_posix()}"

    @property
    def base_url(self) -> str:
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        return f"http://{self.host}:{self.port}"


T = TypeVar("T")


def _coerce(name: str, raw: Any, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    if typ is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in {"1", "true", "yes", "on"}:
            return True
        if isinstance(raw, str) and raw.lower() in {"0", "false", "no", "off", ""}:
            return False
        raise ConfigError(f"{name}: expected true or false, got {raw!r}")
    if typ is int:
        if isinstance(raw, bool):
            raise ConfigError(f"{name}: expected an integer, got {raw!r}")
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected an integer, got {raw!r}") from None
    if typ is float:
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a number, got {raw!r}") from None
    if typ is str:
        if not isinstance(raw, str):
            raise ConfigError(f"{name}: expected a string, got {raw!r}")
        return raw
    if origin is tuple:
        if isinstance(raw, str):
            items = [p.strip() for p in raw.split(",") if p.strip()]
        elif isinstance(raw, list | tuple):
            items = list(raw)
        else:
            raise ConfigError(f"{name}: expected a list, got {raw!r}")
        return tuple(_coerce(name, i, str) for i in items)
    raise ConfigError(f"{name}: unsupported type {typ!r}")  # pragma: no cover


def _build(cls: type[T], values: Mapping[str, Any], env: Mapping[str, str], prefix: str) -> T:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(values) - known
    if unknown:
        where = prefix.removeprefix(ENV_PREFIX).rstrip("_").lower() or "top level"
        raise ConfigError(f"unknown setting(s) in {where}: {', '.join(sorted(unknown))}")
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        typ = hints[f.name]
        env_name = f"{prefix}{f.name.upper()}"
        if dataclasses.is_dataclass(typ):
            sub = values.get(f.name, {})
            if not isinstance(sub, Mapping):
                raise ConfigError(f"[{f.name}] must be a table")
            kwargs[f.name] = _build(typ, sub, env, f"{env_name}_")  # type: ignore[arg-type]
            continue
        if env_name in env:
            kwargs[f.name] = _coerce(env_name, env[env_name], typ)
        elif f.name in values:
            kwargs[f.name] = _coerce(f.name, values[f.name], typ)
    return cls(**kwargs)


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """File, then environment, then explicit overrides (CLI flags); checked as a whole."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    path = path or env.get("KONSIL_CONFIG")
    if path:
        p = Path(path)
        try:
            values = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
    config = _build(Config, values, env, ENV_PREFIX)
    if overrides:
        clean = {k: v for k, v in overrides.items() if v is not None}
        config = dataclasses.replace(config, **clean)
    validate(config)
    return config


def validate(config: Config) -> None:
    if not (0 < config.port < 65536):
        raise ConfigError(f"port must be between 1 and 65535, got {config.port}")
    url = config.effective_database_url
    if not url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        raise ConfigError(
            "database_url must start with sqlite+aiosqlite:// or postgresql+asyncpg://, "
            f"got {url.split('://')[0]}://…"
        )
    if not config.server_name or any(c in config.server_name for c in "/@ "):
        raise ConfigError(f"server_name is not a valid Matrix server name: {config.server_name!r}")
    if config.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(
            f"log_level must be DEBUG, INFO, WARNING or ERROR, got {config.log_level}"
        )
    if config.log_format not in {"json", "text"}:
        raise ConfigError(f"log_format must be json or text, got {config.log_format}")
    if config.default_language not in {"fr", "en"}:
        raise ConfigError(f"default_language must be fr or en, got {config.default_language}")
    validate_features(config.features)
    if not 0 <= config.database_max_connections <= 1000:
        raise ConfigError(
            "database_max_connections must be between 0 (the default) and 1000, "
            f"got {config.database_max_connections}"
        )
    if config.workflow.dsp_transport not in {"xds", "mhd"}:
        raise ConfigError("workflow.dsp_transport must be xds or mhd")
    if config.auth.lockout_threshold < 1:
        raise ConfigError("auth.lockout_threshold must be at least 1")
    validate_password_cost(config.auth)


def validate_features(features: tuple[str, ...]) -> None:
    if not features:
        raise ConfigError(f"features must name at least one of {', '.join(FEATURES)}")
    unknown = [f for f in features if f not in FEATURES]
    if unknown:
        raise ConfigError(
            f"features: unknown feature(s) {', '.join(unknown)}; known: {', '.join(FEATURES)}"
        )
    for feature in features:
        missing = [n for n in FEATURES[feature] if n not in features]
        if missing:
            raise ConfigError(f"features: {feature} needs {', '.join(missing)} in the same process")


# OWASP's Argon2id floor: 46 MiB x 1 pass, 19 x 2, 12 x 3, 9 x 4 or 7 x 5 (memory x passes
# of at least ~35 MiB, and never under 7 MiB).
MIN_PASSWORD_MEMORY_KIB = 7 * 1024
MIN_PASSWORD_MEMORY_X_PASSES_KIB = 35 * 1024


def validate_password_cost(auth: AuthConfig) -> None:
    m, t = auth.password_memory_kib, auth.password_passes
    if not 1 <= t <= 10:
        raise ConfigError(f"auth.password_passes must be between 1 and 10, got {t}")
    if not MIN_PASSWORD_MEMORY_KIB <= m <= 1024 * 1024:
        raise ConfigError(
            f"auth.password_memory_kib must be between {MIN_PASSWORD_MEMORY_KIB} and 1048576, "
            f"got {m}"
        )
    if m * t < MIN_PASSWORD_MEMORY_X_PASSES_KIB:
        raise ConfigError(
            f"auth.password_memory_kib x auth.password_passes must be at least "
            f"{MIN_PASSWORD_MEMORY_X_PASSES_KIB} (OWASP: 19456 x 2, 12288 x 3, 9216 x 4, "
            f"7168 x 5), got {m} x {t}"
        )
    if not 1 <= auth.password_hash_concurrency <= 64:
        raise ConfigError(
            "auth.password_hash_concurrency must be between 1 and 64, "
            f"got {auth.password_hash_concurrency}"
        )
