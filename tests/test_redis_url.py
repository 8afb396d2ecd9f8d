"""Which Redis a ``session_store`` URL names: parsed strictly, at config load."""

from __future__ import annotations

import pytest

from trio_channel.config import ConfigError, build_config
from trio_channel.store.redis_url import RedisTarget, is_redis_url, parse_redis_url


@pytest.mark.parametrize(
    ("url", "target"),
    [
        (
            "redis://127.0.0.1:6380/2",
            RedisTarget(
                "standalone", "redis://127.0.0.1:6380/2", False, (("127.0.0.1", 6380),)
            ),
        ),
        (
            "rediss://:pw@redis.internal/0?ssl_cert_reqs=required",
            RedisTarget(
                "standalone",
                "rediss://:pw@redis.internal/0?ssl_cert_reqs=required",
                True,
                (("redis.internal", 6379),),
            ),
        ),
        (
            "redis+cluster://a:7000,b:7001,[::1]:7002",
            RedisTarget(
                "cluster",
                "redis+cluster://a:7000,b:7001,[::1]:7002",
                False,
                (("a", 7000), ("b", 7001), ("::1", 7002)),
            ),
        ),
        (
            "rediss+cluster://app:s%40cret@a:7000/0",
            RedisTarget(
                "cluster",
                "rediss+cluster://app:s%40cret@a:7000/0",
                True,
                (("a", 7000),),
                username="app",
                password="s@cret",
            ),
        ),
        (
            "redis+sentinel://:pw@s1,s2:26380/my%20service/3",
            RedisTarget(
                "sentinel",
                "redis+sentinel://:pw@s1,s2:26380/my%20service/3",
                False,
                (("s1", 26379), ("s2", 26380)),
                service="my service",
                db=3,
                password="pw",
            ),
        ),
    ],
)
def test_each_kind_of_url(url: str, target: RedisTarget) -> None:
    assert is_redis_url(url)
    assert parse_redis_url(url) == target


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("redis://a:1,b:2/0", "names one server"),
        ("redis://host:99999/0", "bad port"),
        ("redis://host:6379/x", "database is a number"),
        ("redis+cluster://a:7000/1", "database 0 only"),
        ("redis+cluster://", "needs HOST:PORT"),
        ("redis+cluster://a:7000?x=1", "no query parameters"),
        ("redis+sentinel://s1:26379", "needs the service name"),
        ("redis+sentinel://s1:26379/svc/zero", "database is a number"),
        ("redis+sentinel://:26379/svc", "no host"),
        ("redis://h/0#frag", "no #fragment"),
        ("memcached://h", "starts with one of"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_redis_url(url)


def test_a_bad_url_is_one_config_line_without_the_password() -> None:
    with pytest.raises(ConfigError) as caught:
        build_config(
            None,
            overrides={"session_store": "redis+sentinel://:hunter2@s1:26379"},
        )
    message = str(caught.value)
    assert "session_store" in message
    assert "needs the service name" in message
    assert "hunter2" not in message


def test_the_kinds_are_named_when_the_scheme_is_unknown() -> None:
    with pytest.raises(ConfigError, match=r"redis\+cluster://.*redis\+sentinel://"):
        build_config(None, overrides={"session_store": "postgres://db"})


@pytest.mark.parametrize(
    "url",
    ["redis+cluster://a:7000,b:7001", "redis+sentinel://s1:26379/tc/0"],
)
def test_good_urls_load(url: str) -> None:
    assert build_config(None, overrides={"session_store": url}).session_store == url
