"""Tokens, secrets and the handshake decision: values in, values out.

No sockets and no sleeps: every function takes ``now`` as a number.
"""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_channel.config import ChannelConfig
from trio_channel.core.auth import (
    MAX_OUTSTANDING_TOKENS,
    TOKEN_PREFIX,
    Accept,
    IssuedTokenStore,
    Reject,
    allow_list_admits,
    connection_client_id,
    decide_handshake,
    handshake_client_id,
    issue_route_authorized,
    secret_matches,
    split_target,
)

TOKEN_RE = re.compile(r"nbwt_[A-Za-z0-9_-]{43}")
ANON_RE = re.compile(r"anon-[0-9a-f]{12}")

FORBIDDEN = Reject(403, "Forbidden")
UNAUTHORIZED = Reject(401, "Unauthorized")
UNAVAILABLE = Reject(503, "Service Unavailable")


# --- secret_matches -----------------------------------------------------


@pytest.mark.parametrize(
    ("expected", "supplied", "result"),
    [
        ("s3cret", "s3cret", True),
        ("s3cret", "s3creT", False),
        ("s3cret", "s3cre", False),  # shorter
        ("s3cret", "s3crets", False),  # longer
        ("s3cret", "", False),
        ("s3cret", None, False),
        ("", "", False),  # an unset secret is never matched
        ("", None, False),
        ("", "anything", False),
        ("s3cret", "s3crét", False),  # non-ASCII: mismatch, not TypeError
        ("s3cret", "\udcff", False),  # lone surrogate
        ("sécret", "sécret", False),  # non-ASCII supplied never matches
        ("sécret", "secret", False),
    ],
)
def test_secret_matches(expected: str, supplied: str | None, result: bool) -> None:
    assert secret_matches(expected, supplied) is result


@given(st.text(), st.one_of(st.none(), st.text()))
def test_secret_matches_never_raises(expected: str, supplied: str | None) -> None:
    assert secret_matches(expected, supplied) is (
        bool(expected) and supplied == expected and expected.isascii()
    )


# --- IssuedTokenStore ---------------------------------------------------


def test_token_format() -> None:
    store = IssuedTokenStore(ttl_s=300)
    tokens = {store.issue(0.0) for _ in range(50)}
    assert len(tokens) == 50
    for token in tokens:
        assert token is not None
        assert token.startswith(TOKEN_PREFIX)
        assert TOKEN_RE.fullmatch(token)
        assert set(token[len(TOKEN_PREFIX) :]) <= set(
            string.ascii_letters + string.digits + "-_"
        )


def test_token_is_single_use() -> None:
    store = IssuedTokenStore(ttl_s=300)
    token = store.issue(0.0)
    assert token is not None
    assert store.is_valid(token, 1.0)
    assert store.is_valid(token, 1.0)  # checking does not spend it
    assert store.consume(token, 1.0) is True
    assert store.consume(token, 1.0) is False
    assert store.is_valid(token, 1.0) is False
    assert store.outstanding(1.0) == 0


@pytest.mark.parametrize(
    ("now", "valid"),
    [
        (100.0, True),
        (129.999, True),  # just before issued + ttl
        (130.0, False),  # at issued + ttl: expired
        (1_000.0, False),
    ],
)
def test_token_expiry_boundary(now: float, valid: bool) -> None:
    store = IssuedTokenStore(ttl_s=30)
    token = store.issue(100.0)
    assert token is not None
    assert store.is_valid(token, now) is valid
    assert store.consume(token, now) is valid
    assert store.consume(token, now) is False


@pytest.mark.parametrize(
    "bogus",
    [None, "", "nbwt_", "nbwt_" + "x" * 43, "nbwt_é", "\udcff", 42, b"nbwt_x"],
)
def test_unknown_and_odd_tokens_are_rejected_cleanly(bogus: object) -> None:
    store = IssuedTokenStore(ttl_s=30)
    assert store.issue(0.0) is not None
    assert store.is_valid(bogus, 1.0) is False  # type: ignore[arg-type]
    assert store.consume(bogus, 1.0) is False  # type: ignore[arg-type]
    assert store.outstanding(1.0) == 1


def test_capacity_cap_then_a_slot_frees_after_expiry() -> None:
    store = IssuedTokenStore(ttl_s=60)
    assert store.capacity == MAX_OUTSTANDING_TOKENS == 10_000
    first = store.issue(0.0)
    for i in range(1, MAX_OUTSTANDING_TOKENS):
        assert store.issue(i / 1_000) is not None  # issued over 0..10 s
    assert store.outstanding(10.0) == MAX_OUTSTANDING_TOKENS
    assert store.issue(10.0) is None
    assert store.issue(59.9) is None
    # The first token expires at 60.0; exactly one slot frees up.
    assert store.issue(60.0) is not None
    assert store.issue(60.0) is None
    assert store.is_valid(first, 60.0) is False
    assert store.outstanding(60.0) == MAX_OUTSTANDING_TOKENS


def test_consuming_frees_a_slot() -> None:
    store = IssuedTokenStore(ttl_s=60, capacity=2)
    a, b = store.issue(0.0), store.issue(0.0)
    assert store.issue(0.0) is None
    assert store.consume(a, 1.0)
    assert store.issue(1.0) is not None
    assert store.issue(1.0) is None
    assert store.is_valid(b, 1.0)


def test_lazy_purge_keeps_outstanding_right() -> None:
    store = IssuedTokenStore(ttl_s=10)
    tokens = [store.issue(float(t)) for t in range(5)]  # expire at 10..14
    assert store.outstanding(9.9) == 5
    assert store.consume(tokens[3], 9.9)
    assert store.outstanding(9.9) == 4
    assert store.outstanding(10.0) == 3
    assert store.outstanding(12.5) == 1  # 0, 1, 2 expired; 3 was spent
    assert store.is_valid(tokens[4], 12.5)
    assert store.outstanding(14.0) == 0
    assert store.consume(tokens[4], 14.0) is False


def test_store_repr_does_not_leak_tokens() -> None:
    store = IssuedTokenStore(ttl_s=10)
    token = store.issue(0.0)
    assert token is not None
    assert token not in repr(store)


@pytest.mark.parametrize("kwargs", [{"ttl_s": 0}, {"ttl_s": 10, "capacity": 0}])
def test_store_rejects_nonsense_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        IssuedTokenStore(**kwargs)  # type: ignore[arg-type]


# --- query helpers ------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("/", "/", {}),
        ("/ws", "/ws", {}),
        ("/ws?", "/ws", {}),
        ("/ws/?client_id=a&token=t", "/ws/", {"client_id": "a", "token": "t"}),
        ("/?client_id=a&client_id=b", "/", {"client_id": "a"}),  # first wins
        ("/?token=&client_id=", "/", {"token": "", "client_id": ""}),  # blanks kept
        ("/?token", "/", {"token": ""}),
        ("/?client_id=%20al%69ce%20", "/", {"client_id": " alice "}),
        ("/?client_id=a+b", "/", {"client_id": "a b"}),
        ("/?client_id=%E2%9C%93", "/", {"client_id": "\u2713"}),
        ("/?client_id=%ZZ%", "/", {"client_id": "%ZZ%"}),
        ("/?client_id=%FF", "/", {"client_id": "\ufffd"}),
        ("/?a=1?b=2", "/", {"a": "1?b=2"}),
        ("/?&&;=&=x", "/", {";": "", "": "x"}),
    ],
)
def test_split_target(target: str, path: str, query: dict[str, str]) -> None:
    assert split_target(target) == (path, query)


@given(st.text())
def test_split_target_never_raises(target: str) -> None:
    path, query = split_target(target)
    assert target.startswith(path)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in query.items())


@pytest.mark.parametrize(
    ("allow_from", "client_id", "admitted"),
    [
        (("*",), "anyone", True),
        (("*",), "", True),
        (("alice", "*"), "bob", True),
        ((), "alice", False),
        ((), "", False),
        (("alice",), "alice", True),
        (("alice",), "Alice", False),
        (("alice",), " alice", False),
        (("alice",), "", False),
        (("",), "", True),
    ],
)
def test_allow_list_admits(
    allow_from: tuple[str, ...], client_id: str, admitted: bool
) -> None:
    assert allow_list_admits(allow_from, client_id) is admitted


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, ""),
        ({"client_id": ""}, ""),
        ({"client_id": " alice "}, " alice "),  # raw, not stripped
        ({"client_id": "x" * 200}, "x" * 128),
        ({"client_id": " " + "x" * 200}, " " + "x" * 127),
    ],
)
def test_handshake_client_id(query: dict[str, str], expected: str) -> None:
    assert handshake_client_id(query) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"client_id": "alice"}, "alice"),
        ({"client_id": "  alice\t"}, "alice"),
        ({"client_id": "x" * 200}, "x" * 128),
        ({"client_id": "   " + "x" * 200}, "x" * 128),  # strip, then cut
        ({}, "anon-0123456789ab"),
        ({"client_id": ""}, "anon-0123456789ab"),
        ({"client_id": "   "}, "anon-0123456789ab"),
    ],
)
def test_connection_client_id(query: dict[str, str], expected: str) -> None:
    calls: list[int] = []

    def fake_hex(n: int) -> str:
        calls.append(n)
        return "0123456789ab"

    assert connection_client_id(query, token_hex=fake_hex) == expected
    assert calls == ([6] if expected.startswith("anon-") else [])


def test_anonymous_client_ids_are_random_hex() -> None:
    names = {connection_client_id({}) for _ in range(20)}
    assert len(names) == 20
    assert all(ANON_RE.fullmatch(name) for name in names)


# --- decide_handshake ---------------------------------------------------

STATIC = "static-secret"


def _decide(
    cfg: ChannelConfig,
    store: IssuedTokenStore,
    query: dict[str, str],
    *,
    now: float = 1.0,
    open_connections: int = 0,
) -> Accept | Reject:
    return decide_handshake(
        cfg, store, query, now=now, open_connections=open_connections
    )


@pytest.mark.parametrize(
    ("cfg", "token_kind", "result"),
    [
        # static token configured: static OR issued
        (ChannelConfig(token=STATIC), "static", "accept"),
        (ChannelConfig(token=STATIC), "issued", "accept"),
        (ChannelConfig(token=STATIC), "wrong", UNAUTHORIZED),
        (ChannelConfig(token=STATIC), "missing", UNAUTHORIZED),
        (ChannelConfig(token=STATIC), "expired", UNAUTHORIZED),
        (ChannelConfig(token=STATIC), "non-ascii", UNAUTHORIZED),
        # static token wins over websocket_requires_token=False
        (
            ChannelConfig(token=STATIC, websocket_requires_token=False),
            "missing",
            UNAUTHORIZED,
        ),
        # no static token, tokens required (the default): issued only
        (ChannelConfig(), "issued", "accept"),
        (ChannelConfig(), "static", UNAUTHORIZED),
        (ChannelConfig(), "wrong", UNAUTHORIZED),
        (ChannelConfig(), "missing", UNAUTHORIZED),
        (ChannelConfig(), "expired", UNAUTHORIZED),
        (ChannelConfig(), "empty", UNAUTHORIZED),
        # tokens not required: anything goes
        (ChannelConfig(websocket_requires_token=False), "missing", "accept"),
        (ChannelConfig(websocket_requires_token=False), "wrong", "accept"),
        (ChannelConfig(websocket_requires_token=False), "expired", "accept"),
        (ChannelConfig(websocket_requires_token=False), "issued", "accept"),
    ],
)
def test_token_branch(
    cfg: ChannelConfig, token_kind: str, result: Reject | str
) -> None:
    store = IssuedTokenStore(ttl_s=cfg.token_ttl_s)
    issued = store.issue(0.0)
    old = store.issue(-1_000.0)
    assert issued is not None
    assert old is not None
    supplied = {
        "static": STATIC,
        "issued": issued,
        "expired": old,
        "wrong": "nbwt_" + "A" * 43,
        "non-ascii": STATIC + "é",
        "empty": "",
    }
    query = {"client_id": "alice"}
    if token_kind != "missing":
        query["token"] = supplied[token_kind]
    decision = _decide(cfg, store, query)
    if result == "accept":
        assert decision == Accept("alice")
    else:
        assert decision == result
    # The issued token is spent exactly when it opened the connection.
    spent = token_kind == "issued" and result == "accept"
    assert store.is_valid(issued, 1.0) is not spent


@pytest.mark.parametrize(
    "cfg",
    [
        ChannelConfig(),
        ChannelConfig(token=STATIC),
        ChannelConfig(websocket_requires_token=False),
    ],
)
def test_issued_token_cannot_open_two_connections(cfg: ChannelConfig) -> None:
    store = IssuedTokenStore(ttl_s=300)
    token = store.issue(0.0)
    assert token is not None
    query = {"client_id": "alice", "token": token}
    assert _decide(cfg, store, query) == Accept("alice")
    second = _decide(cfg, store, query)
    assert second == (
        Accept("alice") if not cfg.websocket_requires_token else UNAUTHORIZED
    )
    assert store.outstanding(1.0) == 0


@pytest.mark.parametrize(
    ("allow_from", "client_id", "admitted"),
    [
        (("*",), None, True),
        (("alice",), "alice", True),
        (("alice",), " alice ", False),  # allow list sees the raw value
        (("alice",), None, False),
        (("",), None, True),  # missing client_id is "" for the allow list
        ((), "alice", False),
        (("x" * 128,), "x" * 200, True),  # cut to 128 first
    ],
)
def test_allow_list_step(
    allow_from: tuple[str, ...], client_id: str | None, admitted: bool
) -> None:
    cfg = ChannelConfig(allow_from=allow_from, websocket_requires_token=False)
    query = {} if client_id is None else {"client_id": client_id}
    decision = _decide(cfg, IssuedTokenStore(ttl_s=30), query)
    assert isinstance(decision, Accept) is admitted
    if not admitted:
        assert decision == FORBIDDEN


def test_forbidden_comes_before_unauthorized_and_keeps_the_token() -> None:
    cfg = ChannelConfig(allow_from=("bob",))
    store = IssuedTokenStore(ttl_s=30)
    token = store.issue(0.0)
    assert token is not None
    assert _decide(cfg, store, {"client_id": "eve", "token": token}) == FORBIDDEN
    assert _decide(cfg, store, {"client_id": "eve"}) == FORBIDDEN  # not 401
    assert store.is_valid(token, 1.0)  # a 403 does not spend the token
    assert _decide(cfg, store, {"client_id": "bob", "token": token}) == Accept("bob")


@pytest.mark.parametrize(
    ("open_connections", "accepted"),
    [(0, True), (9, True), (10, False), (11, False)],
)
def test_capacity(open_connections: int, accepted: bool) -> None:
    cfg = ChannelConfig(max_connections=10, websocket_requires_token=False)
    decision = _decide(
        cfg, IssuedTokenStore(ttl_s=30), {}, open_connections=open_connections
    )
    assert isinstance(decision, Accept) is accepted
    if not accepted:
        assert decision == UNAVAILABLE


def test_order_is_403_then_401_then_503() -> None:
    store = IssuedTokenStore(ttl_s=30)
    full = 5
    cfg = ChannelConfig(allow_from=("bob",), token=STATIC, max_connections=full)
    everything_wrong = {"client_id": "eve", "token": "nope"}
    assert _decide(cfg, store, everything_wrong, open_connections=full) == FORBIDDEN
    bad_token = {"client_id": "bob", "token": "nope"}
    assert _decide(cfg, store, bad_token, open_connections=full) == UNAUTHORIZED
    good = {"client_id": "bob", "token": STATIC}
    assert _decide(cfg, store, good, open_connections=full) == UNAVAILABLE
    assert _decide(cfg, store, good, open_connections=full - 1) == Accept("bob")


def test_the_token_is_spent_at_the_token_step_even_before_a_503() -> None:
    # PROTOCOL 1: a valid issued token "is then consumed" at step 3; the
    # capacity check (step 4) comes after it.
    cfg = ChannelConfig(max_connections=1)
    store = IssuedTokenStore(ttl_s=30)
    token = store.issue(0.0)
    assert token is not None
    query = {"client_id": "bob", "token": token}
    assert _decide(cfg, store, query, open_connections=1) == UNAVAILABLE
    assert _decide(cfg, store, query, open_connections=0) == UNAUTHORIZED


def test_token_expiry_follows_now() -> None:
    cfg = ChannelConfig(token_ttl_s=30)
    store = IssuedTokenStore(ttl_s=cfg.token_ttl_s)
    token = store.issue(100.0)
    assert token is not None
    query = {"client_id": "bob", "token": token}
    assert _decide(cfg, store, query, now=130.0) == UNAUTHORIZED
    token = store.issue(100.0)
    assert token is not None
    query["token"] = token
    assert _decide(cfg, store, query, now=129.5) == Accept("bob")


@pytest.mark.parametrize(
    ("client_id", "expected"),
    [("  bob  ", "bob"), ("b" * 300, "b" * 128), ("", None), ("   ", None)],
)
def test_accept_carries_the_cleaned_client_id(
    client_id: str, expected: str | None
) -> None:
    cfg = ChannelConfig(websocket_requires_token=False)
    decision = _decide(cfg, IssuedTokenStore(ttl_s=30), {"client_id": client_id})
    assert isinstance(decision, Accept)
    if expected is None:
        assert ANON_RE.fullmatch(decision.client_id)
    else:
        assert decision.client_id == expected


# --- issue_route_authorized ---------------------------------------------


OPEN = ChannelConfig()
ISSUE = ChannelConfig(token_issue_secret="iss")
STATIC_ONLY = ChannelConfig(token=STATIC)
BOTH = ChannelConfig(token=STATIC, token_issue_secret="iss")


@pytest.mark.parametrize(
    ("cfg", "headers", "authorized"),
    [
        # no secret at all: open to anyone
        (OPEN, {}, True),
        (OPEN, {"authorization": "Bearer whatever"}, True),
        # Bearer, scheme in any case
        (ISSUE, {}, False),
        (ISSUE, {"authorization": "Bearer iss"}, True),
        (ISSUE, {"authorization": "bearer iss"}, True),
        (ISSUE, {"authorization": "BEARER  iss "}, True),
        (ISSUE, {"authorization": "Bearer"}, False),
        (ISSUE, {"authorization": "Bearer x"}, False),
        (ISSUE, {"authorization": "Bearerisss"}, False),
        (ISSUE, {"authorization": "Bearer isé"}, False),
        # X-Nanobot-Auth
        (ISSUE, {"x-nanobot-auth": "iss"}, True),
        (ISSUE, {"x-nanobot-auth": "nope"}, False),
        (ISSUE, {"x-nanobot-auth": ""}, False),
        # ... counts only when no Bearer header is sent
        (ISSUE, {"authorization": "Bearer wrong", "x-nanobot-auth": "iss"}, False),
        (ISSUE, {"authorization": "Bearer iss", "x-nanobot-auth": "wrong"}, True),
        # other schemes are ignored
        (ISSUE, {"authorization": "Basic iss"}, False),
        (ISSUE, {"authorization": "Basic aXNzOg==", "x-nanobot-auth": "iss"}, True),
        # the static token stands in when there is no issue secret...
        (STATIC_ONLY, {"authorization": f"Bearer {STATIC}"}, True),
        (STATIC_ONLY, {"x-nanobot-auth": STATIC}, True),
        (STATIC_ONLY, {}, False),
        # ... but not when there is one
        (BOTH, {"authorization": f"Bearer {STATIC}"}, False),
        (BOTH, {"x-nanobot-auth": STATIC}, False),
        (BOTH, {"authorization": "Bearer iss"}, True),
    ],
)
def test_issue_route_authorized(
    cfg: ChannelConfig, headers: dict[str, str], authorized: bool
) -> None:
    assert issue_route_authorized(cfg, headers) is authorized
