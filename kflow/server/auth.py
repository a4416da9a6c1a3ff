"""OAuth client credentials, signed JWT bearer tokens and scopes (PROTOCOL §2).

Clients are stored with a bcrypt hash of their secret, never the secret.
``POST /api/v1/oauth/token`` exchanges credentials for an HS256 JWT
(``sub``, ``jti``, ``iss``, ``aud``, ``exp``, ``iat``, ``scope``). Every other
protected route checks the token and the scope it needs:

* ``worker`` — poll, heartbeat, complete, fail, files
* ``workflows:read`` — read runs, definitions, outputs, events, files
* ``workflows:write`` — deploy, start, cancel, signal (implies read)
* ``admin`` — everything, including client management

Insecure dev mode lets requests without a token act as a dev principal with
every scope; the server refuses that mode on a non-loopback bind.
"""

from __future__ import annotations

import datetime as dt
import functools
import secrets
import time
from collections.abc import Iterable

import attrs
import bcrypt
import jwt
import trio

from kflow.errors import ConflictError, ForbiddenError, InvalidInputError, UnauthorizedError
from kflow.ids import new_id
from kflow.store.base import Store, Tx
from kflow.store.codec import load_time

#: The principal of the server's own in-process workers (never a stored client).
INTERNAL_CLIENT = "kflow-internal"
ALL_SCOPES = ("admin", "worker", "workflows:read", "workflows:write")
ISSUER = "kflow"
AUDIENCE = "kflow"
_IMPLIED = {"workflows:write": {"workflows:read"}, "admin": set(ALL_SCOPES)}


def parse_scopes(text: str | Iterable[str]) -> frozenset[str]:
    """Scopes from ``"a b"``, ``"a,b"`` or an iterable.

    Raises:
        InvalidInputError: an unknown scope.
    """
    items = text.replace(",", " ").split() if isinstance(text, str) else list(text)
    unknown = sorted(set(items) - set(ALL_SCOPES))
    if unknown:
        raise InvalidInputError(
            f"unknown scope(s) {', '.join(unknown)}; known scopes: {', '.join(ALL_SCOPES)}"
        )
    return frozenset(items)


def expand(scopes: Iterable[str]) -> frozenset[str]:
    """Scopes plus what they imply (admin → all, write → read)."""
    out = set(scopes)
    for scope in list(out):
        out |= _IMPLIED.get(scope, set())
    return frozenset(out)


@attrs.frozen(kw_only=True)
class Principal:
    """Who is calling, and what they may do."""

    client_id: str
    scopes: frozenset[str]
    dev: bool = False

    def require(self, scope: str) -> None:
        """Raises ForbiddenError unless the principal holds ``scope``."""
        if scope not in self.scopes:
            raise ForbiddenError(
                f"client {self.client_id!r} lacks the {scope!r} scope for this request",
                details={"required_scope": scope},
            )


DEV_PRINCIPAL = Principal(client_id="dev", scopes=frozenset(ALL_SCOPES), dev=True)


@attrs.frozen(kw_only=True)
class NewClient:
    """A created client; ``secret`` is shown once and never stored."""

    client_id: str
    secret: str
    scopes: frozenset[str]


def hash_secret(secret: str) -> str:
    """bcrypt hash of a client secret (slow on purpose: call it in a thread)."""
    return bcrypt.hashpw(secret.encode(), bcrypt.gensalt(rounds=12)).decode()


def check_secret(secret: str, hashed: str) -> bool:
    """Whether ``secret`` matches ``hashed`` (slow on purpose)."""
    try:
        return bcrypt.checkpw(secret.encode(), hashed.encode())
    except ValueError:
        return False


def create_client_in_tx(
    tx: Tx,
    *,
    client_id: str | None,
    secret: str | None,
    scopes: frozenset[str],
    description: str | None,
    now: dt.datetime,
    secret_hash: str | None = None,
) -> NewClient:
    """Insert a client. Pass ``secret_hash`` to avoid hashing inside the transaction.

    Raises:
        ConflictError: the client id exists.
    """
    cid = client_id or f"client-{new_id().hex[:12]}"
    if cid == INTERNAL_CLIENT:
        raise ConflictError(f"client id {cid!r} is reserved")
    plain = secret or secrets.token_urlsafe(32)
    if tx.one("get_client", client_id=cid) is not None:
        raise ConflictError(f"client {cid!r} already exists")
    tx.run(
        "insert_client",
        client_id=cid,
        secret_hash=secret_hash or hash_secret(plain),
        scopes=" ".join(sorted(scopes)),
        description=description,
        now=tx.time(now),
    )
    return NewClient(client_id=cid, secret=plain, scopes=scopes)


class Authenticator:
    """Issues and checks tokens for one server (shared signing key in the database)."""

    def __init__(
        self,
        store: Store,
        signing_key: str,
        *,
        insecure_dev: bool = False,
        token_ttl_seconds: int = 86_400,
        client_cache_seconds: float = 30.0,
    ) -> None:
        self.store = store
        self._key = signing_key
        self.insecure_dev = insecure_dev
        self.token_ttl_seconds = token_ttl_seconds
        self._cache_seconds = client_cache_seconds
        self._clients: dict[str, tuple[float, frozenset[str] | None]] = {}
        #: token → (expiry as Unix time, claims): verified signatures, so a worker's
        #: every poll and report does not pay for HMAC and claim checks again.
        self._verified: dict[str, tuple[float, dict[str, object]]] = {}

    @staticmethod
    async def signing_key(store: Store, configured: str | None) -> str:
        """The configured key, or the one stored in the database (created once)."""
        if configured:
            return configured

        def key_tx(tx: Tx) -> str:
            tx.run("put_meta_if_absent", key="jwt_signing_key", value=secrets.token_hex(32))
            row = tx.one("get_meta", key="jwt_signing_key")
            assert row is not None
            return str(row["value"])

        key: str = await store.write(key_tx)
        return key

    def mint(self, client_id: str, scopes: Iterable[str], *, ttl_seconds: int | None = None) -> str:
        """A signed token for ``client_id`` with ``scopes``."""
        now = int(time.time())
        claims = {
            "sub": client_id,
            "jti": new_id().hex,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + (ttl_seconds or self.token_ttl_seconds),
            "scope": " ".join(sorted(scopes)),
        }
        return jwt.encode(claims, self._key, algorithm="HS256")

    async def issue(self, client_id: str, secret: str, requested: str | None) -> str:
        """Exchange client credentials for a token.

        Raises:
            UnauthorizedError: unknown client, disabled client or wrong secret.
            InvalidInputError: requested scopes the client does not have.
        """
        row = await self.store.read(lambda tx: tx.one("get_client", client_id=client_id))
        if row is None or row["disabled_at"] is not None:
            await trio.to_thread.run_sync(check_secret, secret, _dummy_hash())  # same timing
            raise UnauthorizedError("invalid client credentials")
        if not await trio.to_thread.run_sync(check_secret, secret, row["secret_hash"]):
            raise UnauthorizedError("invalid client credentials")
        granted = frozenset(str(row["scopes"]).split())
        if requested:
            wanted = frozenset(requested.replace(",", " ").split())
            if not wanted <= expand(granted):
                missing = ", ".join(sorted(wanted - expand(granted)))
                raise InvalidInputError(f"client {client_id!r} may not request scope(s) {missing}")
            granted = wanted
        return self.mint(client_id, granted)

    async def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization`` header value.

        Raises:
            UnauthorizedError: missing (outside insecure dev mode), malformed,
                expired or revoked token.
        """
        if not authorization:
            if self.insecure_dev:
                return DEV_PRINCIPAL
            raise UnauthorizedError("missing bearer token (Authorization: Bearer <token>)")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthorizedError("the Authorization header must be 'Bearer <token>'")
        claims = self._verify(token.strip())
        client_id = str(claims["sub"])
        if client_id == INTERNAL_CLIENT:
            return Principal(
                client_id=client_id, scopes=expand(str(claims.get("scope", "")).split())
            )
        allowed = await self._client_scopes(client_id)
        if allowed is None:
            raise UnauthorizedError(f"client {client_id!r} is disabled or deleted")
        scopes = frozenset(str(claims.get("scope", "")).split()) & expand(allowed)
        return Principal(client_id=client_id, scopes=expand(scopes))

    def _verify(self, token: str) -> dict[str, object]:
        """The claims of a token whose signature, issuer and audience check out.

        A verified token is remembered until it expires (bounded cache), so the
        repeat requests of one worker skip the HMAC and claim checks.

        Raises:
            UnauthorizedError: expired, malformed or wrongly signed token.
        """
        cached = self._verified.get(token)
        if cached is not None:
            if time.time() < cached[0]:
                return cached[1]
            del self._verified[token]
            raise UnauthorizedError("the bearer token has expired")
        try:
            claims: dict[str, object] = jwt.decode(
                token,
                self._key,
                algorithms=["HS256"],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise UnauthorizedError("the bearer token has expired") from exc
        except jwt.PyJWTError as exc:
            raise UnauthorizedError("invalid bearer token") from exc
        if len(self._verified) >= 4_096:
            self._verified.clear()
        self._verified[token] = (float(claims["exp"]), claims)  # type: ignore[arg-type]
        return claims

    async def _client_scopes(self, client_id: str) -> frozenset[str] | None:
        now = time.monotonic()
        cached = self._clients.get(client_id)
        if cached is not None and now - cached[0] < self._cache_seconds:
            return cached[1]
        row = await self.store.read(lambda tx: tx.one("get_client", client_id=client_id))
        scopes = (
            None
            if row is None or row["disabled_at"] is not None
            else frozenset(str(row["scopes"]).split())
        )
        if len(self._clients) > 10_000:
            self._clients.clear()
        self._clients[client_id] = (now, scopes)
        return scopes


def client_summary(row: dict[str, object]) -> dict[str, object]:
    """A clients row as the JSON the CLI and API show (never the hash)."""
    return {
        "client_id": row["client_id"],
        "scopes": str(row["scopes"]).split(),
        "description": row.get("description"),
        "created_at": load_time(row["created_at"]),
        "disabled": row.get("disabled_at") is not None,
    }


@functools.cache
def _dummy_hash() -> str:
    """A real hash to compare against for unknown clients, so timing reveals nothing."""
    return hash_secret(secrets.token_hex(16))
