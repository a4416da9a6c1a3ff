"""Server settings: frozen values built once from flags and the environment.

Nothing else in the engine reads the environment. :func:`server_config`
merges, in order of precedence: explicit values (command-line flags), then
``KFLOW_*`` variables (``DATABASE_URL`` accepted for the database), then
defaults. Secrets for templates come from ``KRUXIAFLOW_SECRET_<NAME>`` (and
``KFLOW_SECRET_<NAME>``) and are only ever held in memory.
"""

from __future__ import annotations

import ipaddress
import os
import pathlib
from collections.abc import Mapping
from typing import Any, Literal

import attrs
import platformdirs

from kflow.errors import ConfigError, InvalidInputError

DEFAULT_PORT = 8080

#: Every API scope (``kflow.server.auth.ALL_SCOPES``): what a seed client gets by default.
ALL_SCOPES = frozenset({"admin", "worker", "workflows:read", "workflows:write"})


def default_data_dir() -> pathlib.Path:
    """Where ``kflow serve`` keeps its SQLite file when no ``--db`` is given."""
    return pathlib.Path(platformdirs.user_data_dir("kflow", appauthor=False))


def default_database_url() -> str:
    return f"sqlite:///{default_data_dir() / 'kflow.db'}"


@attrs.frozen(kw_only=True)
class ServerConfig:
    """Everything ``kflow serve`` needs to know."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    database_url: str = attrs.field(factory=default_database_url)
    run_workers: bool = True
    #: Which built-in workers ``kflow serve`` runs in-process (when ``run_workers``).
    inprocess_workers: tuple[str, ...] = ("std", "py-std")
    insecure_dev: bool = False
    seed_client_id: str | None = None
    seed_client_secret: str | None = None
    #: Scopes of the client ``--seed-client`` creates (``KFLOW_SEED_CLIENT_SCOPES``).
    seed_client_scopes: frozenset[str] = ALL_SCOPES
    jwt_secret: str | None = None
    token_ttl_seconds: int = 86_400
    lease_grace_seconds: float = 10.0
    heartbeat_interval_seconds: float = 30.0
    max_wait_seconds: float = 60.0
    scheduler_max_sleep: float = 2.0
    json_body_limit: int = 10 * 1024 * 1024
    file_body_limit: int = 50 * 1024 * 1024
    sqlite_synchronous: str = "full"
    #: Connections of a PostgreSQL server process (its database threads).
    db_pool_size: int = 10
    #: PostgreSQL: how often the server looks whether kflow's tables need an
    #: ``ANALYZE`` or a ``VACUUM`` (``KFLOW_TABLE_UPKEEP_SECONDS``; 0 = never;
    #: see :mod:`kflow.server.table_upkeep`).
    table_upkeep_seconds: float = 5.0
    worker_concurrency: int = 16
    #: Built-in workers take a run's next step with the report of its previous one
    #: (``KFLOW_WORKER_CLAIM_NEXT``; see ``WorkerConfig.claim_next``).
    worker_claim_next: bool = True
    script_pool_size: int = 2
    script_memory_mb: int = 1024
    deploy_paths: tuple[pathlib.Path, ...] = ()
    secrets: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    log_level: str = "info"
    log_format: str = "auto"

    @property
    def builtin_workers(self) -> tuple[str, ...]:
        """The built-in workers that actually run in-process (none with ``--no-worker``)."""
        return self.inprocess_workers if self.run_workers else ()

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    @property
    def public_url(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        if self.host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"

    def check(self) -> None:
        """Refuse unsafe combinations.

        Raises:
            ConfigError: ``--insecure-dev`` on a non-loopback bind, or a seed
                client with only one of id and secret.
        """
        if self.insecure_dev and not self.is_loopback:
            raise ConfigError(
                f"--insecure-dev is refused on {self.host!r}: it lets anyone who can reach the "
                "server act without credentials; bind to 127.0.0.1 or drop --insecure-dev"
            )
        if bool(self.seed_client_id) != bool(self.seed_client_secret):
            raise ConfigError(
                "--seed-client needs both KRUXIAFLOW_CLIENT_ID and KRUXIAFLOW_CLIENT_SECRET"
            )


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` only accepts local connections."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _number(name: str, raw: str, kind: type, low: float) -> Any:
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < low:
        raise ConfigError(f"{name} must be at least {low:g}, got {raw!r}")
    return value


_ENV_FIELDS: dict[str, tuple[str, Any]] = {
    "KFLOW_HOST": ("host", str),
    "KFLOW_PORT": ("port", (int, 1)),
    "KFLOW_DATABASE_URL": ("database_url", str),
    "KFLOW_INSECURE_DEV": ("insecure_dev", bool),
    "KFLOW_JWT_SECRET": ("jwt_secret", str),
    "KFLOW_TOKEN_TTL_SECONDS": ("token_ttl_seconds", (int, 60)),
    "KFLOW_LEASE_GRACE_SECONDS": ("lease_grace_seconds", (float, 0)),
    "KFLOW_HEARTBEAT_INTERVAL_SECONDS": ("heartbeat_interval_seconds", (float, 0.1)),
    "KFLOW_SCHEDULER_MAX_SLEEP": ("scheduler_max_sleep", (float, 0.01)),
    "KFLOW_JSON_BODY_LIMIT": ("json_body_limit", (int, 1024)),
    "KFLOW_FILE_BODY_LIMIT": ("file_body_limit", (int, 1024)),
    "KFLOW_SQLITE_SYNCHRONOUS": ("sqlite_synchronous", str),
    "KFLOW_WORKER_CONCURRENCY": ("worker_concurrency", (int, 1)),
    "KFLOW_WORKER_CLAIM_NEXT": ("worker_claim_next", bool),
    "KFLOW_SCRIPT_POOL_SIZE": ("script_pool_size", (int, 1)),
    "KFLOW_DB_POOL_SIZE": ("db_pool_size", (int, 2)),
    "KFLOW_TABLE_UPKEEP_SECONDS": ("table_upkeep_seconds", (float, 0)),
    "KFLOW_SCRIPT_MEMORY_MB": ("script_memory_mb", (int, 0)),
    "KFLOW_LOG_LEVEL": ("log_level", str),
    "KFLOW_LOG_FORMAT": ("log_format", str),
}


def server_config(environ: Mapping[str, str] | None = None, **explicit: Any) -> ServerConfig:
    """Build the server configuration; ``explicit`` values (flags) win.

    ``None`` in ``explicit`` means "not given". ``seed_client=True`` reads
    the seed credentials from ``KRUXIAFLOW_CLIENT_ID``/``_SECRET``.

    Raises:
        ConfigError: a malformed or unsafe value, naming the variable.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if env.get("DATABASE_URL"):
        values["database_url"] = env["DATABASE_URL"]
    for name, (field, kind) in _ENV_FIELDS.items():
        raw = env.get(name)
        if raw is None or raw == "":
            continue
        if kind is bool:
            values[field] = _bool(name, raw)
        elif isinstance(kind, tuple):
            values[field] = _number(name, raw, kind[0], kind[1])
        else:
            values[field] = raw
    seed = explicit.pop("seed_client", None)
    if seed is None and env.get("KFLOW_SEED_CLIENT"):
        seed = _bool("KFLOW_SEED_CLIENT", env["KFLOW_SEED_CLIENT"])
    if seed:
        values["seed_client_id"] = env.get("KRUXIAFLOW_CLIENT_ID") or None
        values["seed_client_secret"] = env.get("KRUXIAFLOW_CLIENT_SECRET") or None
        if not values["seed_client_id"] or not values["seed_client_secret"]:
            raise ConfigError(
                "--seed-client needs KRUXIAFLOW_CLIENT_ID and "
                "KRUXIAFLOW_CLIENT_SECRET in the environment"
            )
    if env.get("KFLOW_SEED_CLIENT_SCOPES"):
        values["seed_client_scopes"] = seed_scopes(env["KFLOW_SEED_CLIENT_SCOPES"])
    if env.get("KFLOW_INPROCESS_WORKERS") is not None:
        values["inprocess_workers"] = inprocess_workers(env["KFLOW_INPROCESS_WORKERS"])
    values["secrets"] = secrets_from_env(env)
    values.update({k: v for k, v in explicit.items() if v is not None})
    if values.get("sqlite_synchronous", "full") not in ("full", "normal"):
        raise ConfigError("KFLOW_SQLITE_SYNCHRONOUS must be 'full' or 'normal'")
    try:
        config = ServerConfig(**values)
    except TypeError as exc:
        raise ConfigError(f"invalid server setting: {exc}") from exc
    config.check()
    return config


def seed_scopes(raw: str) -> frozenset[str]:
    """``KFLOW_SEED_CLIENT_SCOPES``: scopes separated by commas or spaces.

    Raises:
        ConfigError: an unknown scope, or none at all (names the variable).
    """
    from kflow.server.auth import parse_scopes  # the server's own check, loaded only if needed

    try:
        scopes = parse_scopes(raw)
    except InvalidInputError as exc:
        raise ConfigError(f"KFLOW_SEED_CLIENT_SCOPES: {exc}") from exc
    if not scopes:
        raise ConfigError(
            f"KFLOW_SEED_CLIENT_SCOPES names no scope; use some of {', '.join(sorted(ALL_SCOPES))}"
        )
    return scopes


@attrs.frozen(kw_only=True)
class ScriptPoolSettings:
    """Size and memory limit of the ``script`` interpreter pool of a py-std worker."""

    size: int = 2
    memory_mb: int = 1024


def script_pool_settings(environ: Mapping[str, str] | None = None) -> ScriptPoolSettings:
    """``KFLOW_SCRIPT_POOL_SIZE`` and ``KFLOW_SCRIPT_MEMORY_MB`` (0 = no limit).

    Raises:
        ConfigError: a value is not a number in range.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if env.get("KFLOW_SCRIPT_POOL_SIZE"):
        values["size"] = _number("KFLOW_SCRIPT_POOL_SIZE", env["KFLOW_SCRIPT_POOL_SIZE"], int, 1)
    if env.get("KFLOW_SCRIPT_MEMORY_MB"):
        values["memory_mb"] = _number(
            "KFLOW_SCRIPT_MEMORY_MB", env["KFLOW_SCRIPT_MEMORY_MB"], int, 0
        )
    return ScriptPoolSettings(**values)


def env_log_level(environ: Mapping[str, str] | None = None) -> str:
    """The log level named by ``KFLOW_LOG_LEVEL`` (default ``info``)."""
    env = os.environ if environ is None else environ
    return env.get("KFLOW_LOG_LEVEL") or "info"


LogFormat = Literal["auto", "json", "console"]

#: Values of ``--log-format`` and ``KFLOW_LOG_FORMAT``.
LOG_FORMATS: tuple[LogFormat, ...] = ("auto", "json", "console")


def env_log_format(environ: Mapping[str, str] | None = None) -> LogFormat:
    """The log format named by ``KFLOW_LOG_FORMAT`` (default ``auto``).

    Raises:
        ConfigError: not one of ``auto``, ``json``, ``console`` (names the variable).
    """
    env = os.environ if environ is None else environ
    raw = env.get("KFLOW_LOG_FORMAT") or "auto"
    for value in LOG_FORMATS:
        if raw.strip().lower() == value:
            return value
    raise ConfigError(f"KFLOW_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, got {raw!r}")


BUILT_IN_WORKERS = ("std", "py-std")


def inprocess_workers(text: str) -> tuple[str, ...]:
    """``KFLOW_INPROCESS_WORKERS``: a comma/space separated subset of ``std, py-std``.

    Raises:
        ConfigError: an unknown worker name.
    """
    names = tuple(dict.fromkeys(text.replace(",", " ").split()))
    unknown = [n for n in names if n not in BUILT_IN_WORKERS]
    if unknown:
        raise ConfigError(
            f"KFLOW_INPROCESS_WORKERS: unknown worker(s) {', '.join(unknown)}; "
            f"the built-in workers are {', '.join(BUILT_IN_WORKERS)}"
        )
    return names


def secrets_from_env(env: Mapping[str, str]) -> dict[str, str]:
    """``SECRET.NAME`` values from ``KRUXIAFLOW_SECRET_NAME`` / ``KFLOW_SECRET_NAME``."""
    found: dict[str, str] = {}
    for prefix in ("KRUXIAFLOW_SECRET_", "KFLOW_SECRET_"):
        for key, value in env.items():
            if key.startswith(prefix) and len(key) > len(prefix):
                found.setdefault(key[len(prefix) :], value)
    return found


def sqlite_path(database_url: str) -> pathlib.Path | None:
    """The file of a ``sqlite:///path`` URL, None for a PostgreSQL URL.

    Raises:
        ConfigError: any other form (a bare path or a libpq key=value string
            would otherwise silently become an SQLite file of that name).
    """
    if database_url.startswith(("postgres://", "postgresql://")):
        return None
    if not database_url.startswith("sqlite:"):
        raise ConfigError(
            f"unsupported database URL {database_url!r}; use sqlite:///PATH "
            "(sqlite:////ABSOLUTE/PATH) or postgresql://user@host/dbname"
        )
    rest = database_url[len("sqlite:") :]
    if rest.startswith("///"):  # sqlite:///relative, sqlite:////absolute
        rest = rest[3:]
    elif rest.startswith("//"):
        rest = rest[2:]
    if not rest:
        raise ConfigError(f"the SQLite URL {database_url!r} names no file")
    return pathlib.Path(rest).expanduser()
