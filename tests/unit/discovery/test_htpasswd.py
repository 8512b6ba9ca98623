"""htpasswd parsing and password checks: each format htpasswd writes, with vectors from
``openssl passwd -apr1``, the bcrypt library and SHA-1."""

from __future__ import annotations

import base64
import hashlib

import bcrypt
import pytest

from funcmesh.discovery.htpasswd import apr1_hash, check_password, parse_htpasswd
from funcmesh.errors import Invalid

# openssl passwd -apr1 -salt SALT PASSWORD
APR1_VECTORS = [
    ("bar", "abcdefgh", "$apr1$abcdefgh$bGLO42WqKpmLoPH9uGWTg1"),
    ("", "xy.z/9", "$apr1$xy.z/9$Z/zjz2qgzoHTYrJLEGnpd1"),
    ("a", "xy.z/9", "$apr1$xy.z/9$/Hz6SsvebmRwQt3aU7QRa1"),
    ("password1234567890abcdefgh", "xy.z/9", "$apr1$xy.z/9$i5v824/HDzO6Dyjia1xdB/"),
    ("héllo", "xy.z/9", "$apr1$xy.z/9$hXNu5d5AA8JUz9/DzsMAn."),
    ("pässwörd", "Zq9/.aB1", "$apr1$Zq9/.aB1$fYUZrWusLokwFmgwbCjQm1"),
]
BCRYPT_BAR = bcrypt.hashpw(b"bar", bcrypt.gensalt(rounds=4)).decode()
SHA_BAR = "{SHA}" + base64.b64encode(hashlib.sha1(b"bar").digest()).decode()


@pytest.mark.parametrize(("password", "salt", "expected"), APR1_VECTORS)
def test_apr1_matches_openssl(password: str, salt: str, expected: str) -> None:
    assert apr1_hash(password, salt) == expected


@pytest.mark.parametrize(
    "stored",
    [
        APR1_VECTORS[0][2],
        "$2y$" + BCRYPT_BAR[4:],
        "$2b$" + BCRYPT_BAR[4:],
        "$2a$" + BCRYPT_BAR[4:],
        SHA_BAR,
    ],
)
def test_each_format_accepts_the_password_and_nothing_else(stored: str) -> None:
    assert check_password("bar", stored)
    assert not check_password("baz", stored)
    assert not check_password("", stored)


def test_a_malformed_bcrypt_hash_is_refused() -> None:
    assert not check_password("bar", "$2y$10$short")


def test_parse_skips_unsupported_lines_and_verifies_users() -> None:
    text = f"# users\nfoo:{BCRYPT_BAR}\n\nann:{SHA_BAR}\nold:rl0U7J3VpPFaY\nbroken\n"
    users = parse_htpasswd(text, source="test")
    assert sorted(users.hashes) == ["ann", "foo"]
    assert users.skipped_users == ("old", "?")
    assert users.verify("foo", "bar")
    assert users.verify("ann", "bar")
    assert not users.verify("ann", "baz")
    assert not users.verify("nobody", "bar")


def test_a_file_without_supported_entries_is_invalid() -> None:
    with pytest.raises(Invalid, match="not an htpasswd file"):
        parse_htpasswd("old:rl0U7J3VpPFaY\n", source="the Secret")


def test_bcrypt_checks_need_a_thread_until_verified_then_come_from_the_cache() -> None:
    now_s = [100.0]
    users = parse_htpasswd(f"foo:{BCRYPT_BAR}\nann:{SHA_BAR}\n", source="test")
    users.clock = lambda: now_s[0]
    assert users.needs_thread("foo", "bar")
    assert not users.needs_thread("ann", "bar")  # SHA-1 is fast: always inline
    assert users.verify("foo", "bar")
    assert not users.needs_thread("foo", "bar")
    assert users.needs_thread("foo", "other")  # only what was verified is cached
    now_s[0] += users.cache_ttl_s + 1
    assert users.needs_thread("foo", "bar")
