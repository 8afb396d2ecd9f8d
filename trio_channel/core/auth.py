"""Who may connect: secrets, issued tokens and the handshake decision.

Everything here is sans-IO: no trio, no sockets, no clock reads. The server
passes ``now`` (``trio.current_time()``), so tests drive token expiry with
plain numbers or ``MockClock`` and never sleep.

:func:`decide_handshake` is the whole of PROTOCOL section 1 steps 2-4 as one
pure function returning a value (:class:`Accept` or :class:`Reject`); the
server only turns that value into bytes. Keeping the order in one place is
what makes "403 before 401 before 503" testable without a socket.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import TypeGuard
from urllib.parse import parse_qsl

import attrs

from ..config import ChannelConfig

#: Every issued token starts with this, so logs and clients can tell it apart
#: from a static ``token`` at a glance.
TOKEN_PREFIX = "nbwt_"
#: Past this many unexpired tokens the issue route answers 429: an open
#: issue route must not let anyone grow the store without bound.
MAX_OUTSTANDING_TOKENS = 10_000
#: ``client_id`` values are cut to this many characters.
MAX_CLIENT_ID_CHARS = 128

_BEARER_RE = re.compile(r"\s*bearer(?:\s+(.*?))?\s*", re.IGNORECASE | re.DOTALL)
#: ``host[:port]`` or ``[v6][:port]``, as a ``Host`` header or URL authority.
_AUTHORITY_RE = re.compile(
    r"(?P<host>[A-Za-z0-9_.-]{1,253}|\[(?P<v6>[0-9A-Fa-f:.]{2,45})\])"
    r"(?::(?P<port>[0-9]{1,5}))?"
)
#: Host names that only ever reach this machine (PROTOCOL 1 and 6).
LOOPBACK_HOST_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def secret_matches(expected: str, supplied: str | None) -> bool:
    """Compare a supplied secret with the configured one in constant time.

    An empty ``expected`` never matches: an unset secret must not be
    "guessed" by sending an empty one. ``hmac.compare_digest`` refuses
    non-ASCII ``str``, so ``supplied`` is encoded first and a value that is
    not ASCII is simply a mismatch; a client can never turn a bad header or
    query value into a 500.
    """
    if not expected or not isinstance(supplied, str):
        return False
    try:
        supplied_bytes = supplied.encode("ascii")
    except UnicodeEncodeError:
        return False
    # "surrogatepass" never raises, and a non-ASCII expected value yields
    # non-ASCII bytes that no ASCII supplied value can equal.
    expected_bytes = expected.encode("utf-8", "surrogatepass")
    return hmac.compare_digest(expected_bytes, supplied_bytes)


@attrs.define
class IssuedTokenStore:
    """Short-lived, single-use tokens handed out by the issue route.

    A token issued at ``t`` is valid while ``now < t + ttl_s``. Because the
    TTL is fixed and ``now`` never goes backwards (trio's clock is
    monotonic), insertion order is expiry order: expired tokens are always
    at the front of the ordered dict, so purging pops from the front and
    costs amortized O(1) per token. An :class:`~collections.OrderedDict` is
    used rather than a plain ``dict`` because popping the front of a plain
    dict leaves holes that every later "first item" lookup scans over.

    Lookups are by the token itself. Tokens carry 256 random bits, so the
    timing of a hash lookup reveals nothing useful to a guesser.
    """

    ttl_s: float = attrs.field(validator=attrs.validators.gt(0))
    capacity: int = attrs.field(
        default=MAX_OUTSTANDING_TOKENS, validator=attrs.validators.ge(1)
    )
    #: Called once per token minted by :meth:`issue` (a metrics hook).
    on_issue: Callable[[], None] | None = attrs.field(default=None, eq=False)
    # token -> expiry time; never in repr, these are live credentials.
    _expiry: OrderedDict[str, float] = attrs.field(
        factory=OrderedDict, init=False, repr=False, eq=False
    )

    def issue(self, now: float) -> str | None:
        """Mint a new token, or return ``None`` when ``capacity`` are live.

        ``None`` is the caller's cue to answer 429; nothing is evicted, so a
        flood of issue requests cannot invalidate tokens already handed out.
        """
        self._purge(now)
        if len(self._expiry) >= self.capacity:
            return None
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        self._expiry[token] = now + self.ttl_s
        if self.on_issue is not None:
            self.on_issue()
        return token

    def adopt(self, token: str, now: float) -> bool:
        """Accept a token minted by another store until ``now + ttl_s``.

        Bootstrap tokens live in two stores: spent by one WebSocket upgrade in
        one, valid as an API token until expiry in the other. False at capacity.
        """
        self._purge(now)
        if len(self._expiry) >= self.capacity:
            return False
        self._expiry[token] = now + self.ttl_s
        return True

    def consume(self, token: str | None, now: float) -> bool:
        """Spend ``token``: ``True`` (and forgotten) if it was valid.

        An expired token is forgotten too, and the answer is ``False``.
        Anything that is not an ASCII ``str`` is just ``False``.
        """
        self._purge(now)
        if not _plausible(token):
            return False
        expires = self._expiry.pop(token, None)
        return expires is not None and now < expires

    def is_valid(self, token: str | None, now: float) -> bool:
        """Whether ``token`` would be accepted now, without spending it."""
        if not _plausible(token):
            return False
        expires = self._expiry.get(token)
        return expires is not None and now < expires

    def outstanding(self, now: float) -> int:
        """How many issued tokens are still unspent and unexpired at ``now``."""
        self._purge(now)
        return len(self._expiry)

    def _purge(self, now: float) -> None:
        expiry = self._expiry
        while expiry:
            token = next(iter(expiry))
            if now < expiry[token]:
                return
            del expiry[token]


def _plausible(token: object) -> TypeGuard[str]:
    # Typed callers only pass str | None, but query values come from the
    # network: keep non-str and non-ASCII out of the lookup explicitly.
    return isinstance(token, str) and token.isascii()


# --- request parsing ----------------------------------------------------


def split_target(target: str) -> tuple[str, dict[str, str]]:
    """Split a request target into its raw path and its query parameters.

    Each parameter maps to its *first* value, percent-decoded, blank values
    kept (``?token=`` is a supplied, empty token, not a missing one). Garbage
    in the query never raises: at worst it yields odd keys or none.
    """
    path, _, query = target.partition("?")
    params: dict[str, str] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True)
    except ValueError:  # includes UnicodeError; parse_qsl is lenient anyway
        return path, params
    for key, value in pairs:
        params.setdefault(key, value)
    return path, params


def allow_list_admits(allow_from: Sequence[str], client_id: str) -> bool:
    """``"*"`` admits everyone, an empty list nobody, else an exact match."""
    return "*" in allow_from or client_id in allow_from


def handshake_client_id(query: Mapping[str, str]) -> str:
    """The ``client_id`` the allow list sees: raw, cut to 128, ``""`` if missing.

    Deliberately *not* stripped, as in the reference: ``" alice"`` is not
    ``"alice"`` for the allow list.
    """
    return query.get("client_id", "")[:MAX_CLIENT_ID_CHARS]


def connection_client_id(
    query: Mapping[str, str], *, token_hex: Callable[[int], str] = secrets.token_hex
) -> str:
    """The ``client_id`` a connection is known by after accept.

    Stripped; empty or missing becomes ``anon-`` plus 12 hex characters so
    every connection has a name in logs; cut to 128. ``token_hex`` is
    injectable so tests can pin the anonymous name.
    """
    client_id = query.get("client_id", "").strip()
    if not client_id:
        return "anon-" + token_hex(6)
    return client_id[:MAX_CLIENT_ID_CHARS]


# --- the handshake decision --------------------------------------------


@attrs.frozen
class Accept:
    """Upgrade the connection; it will be known as ``client_id``."""

    client_id: str


@attrs.frozen
class Reject:
    """Answer with a plain HTTP response and close the connection."""

    status: int
    body: str


FORBIDDEN = Reject(403, "Forbidden")
UNAUTHORIZED = Reject(401, "Unauthorized")
SERVICE_UNAVAILABLE = Reject(503, "Service Unavailable")


def decide_handshake(
    cfg: ChannelConfig,
    tokens: IssuedTokenStore,
    query: Mapping[str, str],
    *,
    now: float,
    open_connections: int,
) -> Accept | Reject:
    """Decide a WebSocket upgrade, in PROTOCOL section 1 order.

    1. Allow list on the raw ``client_id`` → 403.
    2. Token → 401: a static ``token``, when set, must match or the query
       token must be a valid issued one; with no static token and
       ``websocket_requires_token``, a valid issued token is required; with
       neither, anyone passes.
    3. Capacity: ``open_connections >= max_connections`` → 503.

    A valid issued token in the query is consumed at the token step, as
    PROTOCOL 1 says, whether or not it was required: a 403 leaves it usable,
    a 503 (which comes after) does not.
    """
    if not allow_list_admits(cfg.allow_from, handshake_client_id(query)):
        return FORBIDDEN
    supplied = query.get("token")
    issued = tokens.is_valid(supplied, now)
    if cfg.token:
        if not (issued or secret_matches(cfg.token, supplied)):
            return UNAUTHORIZED
    elif cfg.websocket_requires_token and not issued:
        return UNAUTHORIZED
    if issued:
        tokens.consume(supplied, now)
    if open_connections >= cfg.max_connections:
        return SERVICE_UNAVAILABLE
    return Accept(connection_client_id(query))


def bearer_value(headers: Mapping[str, str]) -> str | None:
    """What ``Authorization: Bearer ...`` carries ("" when empty), else None.

    ``headers`` keys are lower-cased. Other schemes (``Basic ...``) are None.
    """
    match = _BEARER_RE.fullmatch(headers.get("authorization", ""))
    if match is None:
        return None
    return match.group(1) or ""


# --- who may reach us: Host and Origin (DNS rebinding, cross-site pages) ------


def parse_authority(value: str) -> tuple[str, int | None] | None:
    """``(host, port)`` of a plain ``host[:port]`` or ``[v6][:port]``, else None.

    The host is lower-cased, an IPv6 address without its brackets. Nothing
    else passes: no user info, path, list or stray characters.
    """
    m = _AUTHORITY_RE.fullmatch(value.strip())
    if m is None:
        return None
    port = None if m["port"] is None else int(m["port"])
    if port is not None and port > 65535:
        return None
    if m["v6"] is not None:
        try:
            return str(ipaddress.IPv6Address(m["v6"])), port
        except ValueError:
            return None
    return m["host"].lower().rstrip("."), port


def secret_configured(cfg: ChannelConfig) -> bool:
    """A ``token`` or ``token_issue_secret`` guards the channel."""
    return bool(cfg.token or cfg.token_issue_secret)


def host_allowed(cfg: ChannelConfig, host_header: str) -> bool:
    """With no secret, only a loopback ``Host`` or one in ``allowed_hosts``.

    A DNS-rebinding page reaches us under its own name: refusing every
    name but ours keeps it from getting a token. With a secret set, the
    secret is the guard and any ``Host`` is fine.
    """
    if secret_configured(cfg):
        return True
    authority = parse_authority(host_header)
    if authority is None:
        return False
    name = authority[0]
    return name in LOOPBACK_HOST_NAMES or name in {
        host.lower().rstrip(".") for host in cfg.allowed_hosts
    }


def origin_allowed(cfg: ChannelConfig, origin: str | None, host_header: str) -> bool:
    """Whether a browser page at ``origin`` may open a WebSocket (PROTOCOL 1).

    No ``Origin`` (CLIs, scripts) is fine. Otherwise: a loopback origin, one
    listed in ``allowed_origins``, or, while a secret is set, the request's
    own ``Host`` (the page the daemon itself served).
    """
    if origin is None:
        return True
    origin = origin.strip()
    if origin.rstrip("/") in {o.rstrip("/") for o in cfg.allowed_origins}:
        return True
    scheme, sep, rest = origin.partition("://")
    authority = parse_authority(rest) if sep else None
    if authority is None:
        return False
    if authority[0] in LOOPBACK_HOST_NAMES:
        return True
    if not secret_configured(cfg):
        return False
    own = parse_authority(host_header)
    default = _DEFAULT_PORTS.get(scheme.lower())
    return own is not None and (
        own[0] == authority[0] and (own[1] or default) == (authority[1] or default)
    )


def issue_route_authorized(cfg: ChannelConfig, headers: Mapping[str, str]) -> bool:
    """Whether a request may mint a token (issue route, and bootstrap's check).

    The secret is ``token_issue_secret``, else ``token``; with neither, the
    route is open. ``Authorization: Bearer <secret>`` (scheme in any case)
    is checked first; ``X-Nanobot-Auth: <secret>`` counts only when no
    Bearer header is sent, so a wrong Bearer value cannot be rescued by the
    other header. Other schemes (``Basic ...``) are ignored. ``headers`` keys
    must be lower-cased by the caller.
    """
    secret = cfg.token_issue_secret or cfg.token
    if not secret:
        return True
    bearer = bearer_value(headers)
    if bearer is not None:
        return secret_matches(secret, bearer)
    return secret_matches(secret, headers.get("x-nanobot-auth"))
