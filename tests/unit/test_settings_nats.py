"""``--nats-url`` / ``FUNCMESH_NATS_URL`` in the daemon's settings."""

from __future__ import annotations

import pytest

from funcmesh.errors import Invalid
from funcmesh.settings import load_daemon_settings, parse_nats_url


def test_no_url_means_no_nats_server() -> None:
    assert load_daemon_settings({"HOME": "/h"}).nats_url is None


def test_the_flag_wins_over_the_environment() -> None:
    env = {"HOME": "/h", "FUNCMESH_NATS_URL": "nats://env:4222"}

    assert load_daemon_settings(env).nats_url == "nats://env:4222"
    assert load_daemon_settings(env, nats_url="nats://flag:4222").nats_url == "nats://flag:4222"


@pytest.mark.parametrize(
    "url", ["nats://127.0.0.1:4222", "nats://nats.local", "tls://u:p@nats.local:4443"]
)
def test_good_urls(url: str) -> None:
    assert parse_nats_url(f" {url} ") == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:4222", "got 'http://127.0.0.1:4222'"),
        ("127.0.0.1:4222", "must be nats://HOST:PORT"),
        ("nats://:4222", "must be nats://HOST:PORT"),
        ("nats://h:99999", "Port out of range"),
        ("nats://h:4222/path", "must be nats://HOST:PORT"),
        ("nats://user:secret@h:4222/x", "got 'nats://***@h:4222/x'"),
    ],
)
def test_bad_urls_are_refused_without_repeating_credentials(url: str, message: str) -> None:
    with pytest.raises(Invalid) as caught:
        parse_nats_url(url)

    assert message in str(caught.value)
    assert "secret" not in str(caught.value)
