"""``WorkerConfig``: the settings of one worker process, built once and passed explicitly.

:meth:`WorkerConfig.from_env` reads the Kruxia Flow worker variables of
PROTOCOL §3 (``KRUXIAFLOW_*``) and kflow's own ``KFLOW_*`` names; when both
spellings of a setting are present the ``KFLOW_*`` one wins. Empty values
count as unset. This is the only worker module that reads the environment.

Authentication is one of three modes: a static bearer token
(``KRUXIAFLOW_TOKEN``), OAuth client credentials (``KRUXIAFLOW_CLIENT_ID`` +
``KRUXIAFLOW_CLIENT_SECRET``), or *insecure* — no credentials at all, requests
go without ``Authorization`` and the server decides (a dev server in
``--insecure-dev`` mode accepts them).
"""

from __future__ import annotations

import os
import pathlib
import secrets
import socket
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from kflow.errors import ConfigError
from kflow.worker.registry import check_identifier


def default_worker_id() -> str:
    """``<hostname>-<pid>-<6 random hex>``, unique per process start."""
    host = socket.gethostname().split(".")[0] or "worker"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


def default_state_dir() -> pathlib.Path:
    """``platformdirs.user_state_dir("kflow")/worker`` (the outbox lives there)."""
    import platformdirs

    return pathlib.Path(platformdirs.user_state_dir("kflow")) / "worker"


def _positive(name: str) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        kinds = int if name == "integer" else int | float
        if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
            raise ConfigError(f"{attr.name} must be a positive {name}, got {value!r}")

    return check


def _non_negative(_: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{attr.name} must be a number >= 0, got {value!r}")


def _check_worker(_: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    try:
        check_identifier(value, what=attr.name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _check_text(_: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value.strip() or not value.isprintable():
        raise ConfigError(f"{attr.name} must be a non-empty printable string, got {value!r}")


def split_urls(value: str) -> list[str]:
    """``"http://a:8080, http://b:8080/"`` → ``["http://a:8080", "http://b:8080"]``."""
    return [part.strip().rstrip("/") for part in value.split(",") if part.strip()]


def _check_url(_: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    urls = split_urls(value) if isinstance(value, str) else []
    if not urls or not all(u.startswith(("http://", "https://")) for u in urls):
        raise ConfigError(
            f"{attr.name} must be an http:// or https:// URL (or several, "
            f"comma-separated), got {value!r}"
        )


def _strip_slash(value: Any) -> Any:
    return ",".join(split_urls(value)) if isinstance(value, str) else value


def _secret_repr(value: Any) -> str:
    return "None" if value is None else "'***'"


def _no_credentials(self: WorkerConfig) -> bool:
    return self.access_token is None and self.client_id is None and self.client_secret is None


@attrs.frozen(kw_only=True)
class WorkerConfig:
    """Settings of one worker process (see PROTOCOL §3 for the environment names).

    Construction validates every field and raises :class:`~kflow.errors.ConfigError`
    naming the field; :meth:`from_env` names the environment variable instead.
    """

    api_url: str = attrs.field(
        default="http://localhost:8080", converter=_strip_slash, validator=_check_url
    )
    client_id: str | None = None
    client_secret: str | None = attrs.field(default=None, repr=_secret_repr)
    #: Static bearer token; skips OAuth.
    access_token: str | None = attrs.field(default=None, repr=_secret_repr)
    #: Queue name served by this worker.
    worker: str = attrs.field(default="py-std", validator=_check_worker)
    worker_id: str = attrs.field(factory=default_worker_id, validator=_check_text)
    #: Concurrent activity slots.
    max_activities: int = attrs.field(default=16, validator=_positive("integer"))
    #: Most activities one poll may claim (the server caps at 100).
    poll_max_activities: int = attrs.field(default=10, validator=_positive("integer"))
    #: Pause after an empty poll, only against servers without long-poll (seconds).
    poll_interval: float = attrs.field(default=0.1, validator=_positive("number"))
    #: Timeout of an activity that arrives without ``timeout_seconds``.
    activity_timeout: float = attrs.field(default=300.0, validator=_positive("number"))
    heartbeat_interval: float = attrs.field(default=30.0, validator=_positive("number"))
    #: How long a graceful shutdown waits for in-flight activities.
    shutdown_timeout: float = attrs.field(default=30.0, validator=_non_negative)
    #: ``wait_seconds`` of a long-poll (0 disables long-polling).
    long_poll_seconds: float = attrs.field(default=20.0, validator=_non_negative)
    #: Time bound of one HTTP request (a long-poll gets ``wait + http_timeout``).
    http_timeout: float = attrs.field(default=30.0, validator=_positive("number"))
    #: How long a runner keeps retrying its final report before leaving it to the outbox.
    report_timeout: float = attrs.field(default=30.0, validator=_positive("number"))
    #: Reports finishing while others are on their way share one request
    #: (``POST /activities/reports``), when the server offers ``report_batch``.
    report_batch: bool = True
    #: Batched reports ask for their run's next activity (same queue), which the
    #: freed slot runs at once (server feature ``report_claim_next``): a run's
    #: next step goes ahead of activities already waiting in the queue. False:
    #: every activity comes by poll, oldest first.
    claim_next: bool = True
    #: A long-poll stays open and brings each activity claimed for it as one
    #: more line of its answer (server feature ``poll_stream``), instead of
    #: answering with the first and being asked again. A proxy between worker
    #: and server must pass the lines on as they come (kflow's answer says
    #: ``X-Accel-Buffering: no``, which nginx honours); False: plain long-polls.
    poll_stream: bool = True
    #: Directory of the durable outbox of unacknowledged results.
    state_dir: pathlib.Path = attrs.field(factory=default_state_dir, converter=pathlib.Path)
    #: No credentials: requests go without Authorization. Defaults to True exactly
    #: when neither a token nor client credentials are configured.
    insecure: bool = attrs.field(default=attrs.Factory(_no_credentials, takes_self=True))

    def __attrs_post_init__(self) -> None:
        if self.poll_max_activities > 100:
            raise ConfigError(
                f"poll_max_activities must be at most 100, got {self.poll_max_activities}"
            )
        if self.long_poll_seconds > 60:
            raise ConfigError(f"long_poll_seconds must be at most 60, got {self.long_poll_seconds}")
        if (self.client_id is None) != (self.client_secret is None):
            raise ConfigError("client_id and client_secret must be given together")
        if self.insecure and not _no_credentials(self):
            raise ConfigError("insecure cannot be combined with a token or client credentials")
        if not self.insecure and _no_credentials(self):
            raise ConfigError(
                "no credentials: set KRUXIAFLOW_CLIENT_ID and KRUXIAFLOW_CLIENT_SECRET, "
                "or KRUXIAFLOW_TOKEN (or allow insecure mode for a dev server)"
            )

    @property
    def api_urls(self) -> list[str]:
        """Every server URL; several (comma-separated) are tried in turn on failure."""
        return split_urls(self.api_url)

    @property
    def uses_oauth(self) -> bool:
        """True when tokens come from the OAuth client-credentials grant."""
        return self.client_id is not None and self.access_token is None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> WorkerConfig:
        """Build a config from environment variables, then apply ``overrides``.

        ``environ`` defaults to ``os.environ``. ``overrides`` are field names;
        a ``None`` override is ignored (so optional CLI flags can be passed
        through as they are).

        Raises:
            ConfigError: a variable has a bad value (the message names it and
                quotes the value), an override names no field, or the
                combination is invalid (e.g. a client id without a secret).
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field, names, parse in _ENV:
            found = _lookup(env, names)
            if found is not None:
                values[field] = parse(found[0], found[1])
        fields = attrs.fields_dict(cls)
        for key, value in overrides.items():
            if key not in fields:
                raise ConfigError(f"unknown worker setting {key!r}")
            if value is not None:
                values[key] = value
        return cls(**values)


def _lookup(env: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    for name in names:
        raw = env.get(name)
        if raw is not None and raw.strip() != "":
            return name, raw.strip()
    return None


def _text(name: str, raw: str) -> str:
    if not raw.isprintable():
        raise ConfigError(f"{name} must be printable text, got {raw!r}")
    return raw


def _url(name: str, raw: str) -> str:
    urls = split_urls(raw)
    if not urls or not all(u.startswith(("http://", "https://")) for u in urls):
        raise ConfigError(
            f"{name} must be an http:// or https:// URL (or several, comma-separated), got {raw!r}"
        )
    return ",".join(urls)


def _identifier(name: str, raw: str) -> str:
    try:
        return check_identifier(raw, what=name)
    except ValueError:
        raise ConfigError(f"{name} must match ^[A-Za-z0-9_-]+$, got {raw!r}") from None


def _int_range(low: int, high: int | None) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            what = f"an integer {low}..{high}" if high is not None else "a positive integer"
            raise ConfigError(f"{name} must be {what}, got {raw!r}")
        return value

    return parse


def _seconds(*, positive: bool, high: float | None = None) -> Callable[[str, str], float]:
    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw.removesuffix("s"))
        except ValueError:
            value = float("nan")
        ok = value > 0 if positive else value >= 0
        if not ok or value != value or value == float("inf") or (high is not None and value > high):
            what = "a positive number of seconds" if positive else "a number of seconds >= 0"
            if high is not None:
                what += f" (at most {high:g})"
            raise ConfigError(f"{name} must be {what}, got {raw!r}")
        return value

    return parse


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _bool(name: str, raw: str) -> bool:
    low = raw.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigError(f"{name} must be a boolean (1/0, true/false, yes/no, on/off), got {raw!r}")


def _path(name: str, raw: str) -> pathlib.Path:
    return pathlib.Path(raw).expanduser()


def _names(suffix: str, *, kflow: str | None = None) -> tuple[str, ...]:
    return (kflow or f"KFLOW_{suffix}", f"KRUXIAFLOW_{suffix}")


_ENV: tuple[tuple[str, tuple[str, ...], Callable[[str, str], Any]], ...] = (
    ("api_url", _names("API_URL"), _url),
    ("client_id", _names("CLIENT_ID"), _text),
    ("client_secret", _names("CLIENT_SECRET"), _text),
    ("access_token", _names("TOKEN", kflow="KFLOW_ACCESS_TOKEN"), _text),
    ("worker", _names("WORKER"), _identifier),
    ("worker_id", _names("WORKER_ID"), _text),
    ("max_activities", _names("WORKER_MAX_ACTIVITIES"), _int_range(1, None)),
    ("poll_max_activities", _names("WORKER_POLL_MAX_ACTIVITIES"), _int_range(1, 100)),
    ("poll_interval", _names("WORKER_POLL_INTERVAL"), _seconds(positive=True)),
    ("activity_timeout", _names("WORKER_ACTIVITY_TIMEOUT"), _seconds(positive=True)),
    ("heartbeat_interval", _names("WORKER_HEARTBEAT_INTERVAL"), _seconds(positive=True)),
    ("shutdown_timeout", _names("WORKER_SHUTDOWN_TIMEOUT"), _seconds(positive=False)),
    ("long_poll_seconds", ("KFLOW_WORKER_LONG_POLL_SECONDS",), _seconds(positive=False, high=60)),
    ("http_timeout", ("KFLOW_WORKER_HTTP_TIMEOUT",), _seconds(positive=True)),
    ("report_timeout", ("KFLOW_WORKER_REPORT_TIMEOUT",), _seconds(positive=True)),
    ("report_batch", ("KFLOW_WORKER_REPORT_BATCH",), _bool),
    ("claim_next", ("KFLOW_WORKER_CLAIM_NEXT",), _bool),
    ("poll_stream", ("KFLOW_WORKER_POLL_STREAM",), _bool),
    ("state_dir", ("KFLOW_WORKER_STATE_DIR",), _path),
    ("insecure", ("KFLOW_WORKER_INSECURE",), _bool),
)

#: Every environment variable :meth:`WorkerConfig.from_env` reads.
ENV_VARS: tuple[str, ...] = tuple(name for _, names, _ in _ENV for name in names)
