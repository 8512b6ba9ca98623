"""htpasswd files, as ``htpasswd`` writes them: parsing and password checks.

Supported hashes: bcrypt (``$2y$``, ``$2b$``, ``$2a$``), Apache's MD5-crypt (``$apr1$``) and
SHA-1 (``{SHA}``, base64). Lines in other formats (DES crypt, plain text) are skipped and named
by user, so a file that holds none of the supported ones is refused as a whole. Passwords and
hashes never appear in messages. bcrypt is deliberately slow, so ``needs_thread`` tells the
caller which checks to run off the event loop, and checks that succeeded are remembered for
``cache_ttl_s`` (keyed by a digest, never the password itself).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import bcrypt

from funcmesh.errors import Invalid

APR1_PREFIX = "$apr1$"
SHA_PREFIX = "{SHA}"
BCRYPT_PREFIXES = ("$2y$", "$2b$", "$2a$")
CACHE_TTL_S = 60.0
MAX_CACHED = 1024
_APR1_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@dataclass(slots=True, kw_only=True)
class Htpasswd:
    """The users of one htpasswd file and their hashes; remembers recent successful checks."""

    hashes: dict[str, str]
    skipped_users: tuple[str, ...] = ()
    cache_ttl_s: float = CACHE_TTL_S
    clock: Callable[[], float] = time.monotonic
    _verified: dict[bytes, float] = field(default_factory=dict)

    def needs_thread(self, user: str, password: str) -> bool:
        """True when checking this pair is slow (bcrypt) and has not been verified lately."""
        stored = self.hashes.get(user)
        if stored is None or not stored.startswith(BCRYPT_PREFIXES):
            return False
        return not self._recently_verified(_cache_key(user, password, stored))

    def verify(self, user: str, password: str) -> bool:
        """True when ``password`` is ``user``'s; unknown users are refused."""
        stored = self.hashes.get(user)
        if stored is None:
            return False
        key = _cache_key(user, password, stored)
        if self._recently_verified(key):
            return True
        if not check_password(password, stored):
            return False
        if len(self._verified) >= MAX_CACHED:
            self._verified.clear()
        self._verified[key] = self.clock() + self.cache_ttl_s
        return True

    def _recently_verified(self, key: bytes) -> bool:
        expires_s = self._verified.get(key)
        return expires_s is not None and expires_s > self.clock()


def parse_htpasswd(text: str, *, source: str) -> Htpasswd:
    """The users of an htpasswd file; Invalid when no line has a supported hash."""
    hashes: dict[str, str] = {}
    skipped: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, stored = line.partition(":")
        if sep and user and stored.startswith((APR1_PREFIX, SHA_PREFIX, *BCRYPT_PREFIXES)):
            hashes[user] = stored
        else:
            skipped.append(user if sep else "?")
    if not hashes:
        raise Invalid(
            f"{source} is not an htpasswd file with bcrypt, apr1 or SHA1 entries "
            "(make one with `htpasswd -cB FILE USER`)"
        )
    return Htpasswd(hashes=hashes, skipped_users=tuple(skipped))


def check_password(password: str, stored: str) -> bool:
    """True when ``password`` matches the htpasswd hash ``stored``."""
    if stored.startswith(BCRYPT_PREFIXES):
        try:
            return bcrypt.checkpw(password.encode(), ("$2b$" + stored[4:]).encode())
        except ValueError:  # a malformed hash
            return False
    if stored.startswith(APR1_PREFIX):
        salt = stored[len(APR1_PREFIX) :].partition("$")[0]
        return hmac.compare_digest(apr1_hash(password, salt), stored)
    if stored.startswith(SHA_PREFIX):
        digest = base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()
        return hmac.compare_digest(SHA_PREFIX + digest, stored)
    return False


def apr1_hash(password: str, salt: str) -> str:
    """Apache's MD5-crypt: ``$apr1$SALT$HASH`` (the salt is cut to 8 characters)."""
    secret, salt_bytes = password.encode(), salt[:8].encode()
    alternate = hashlib.md5(secret + salt_bytes + secret).digest()
    context = hashlib.md5(secret + APR1_PREFIX.encode() + salt_bytes)
    for offset in range(0, len(secret), 16):
        context.update(alternate[: min(16, len(secret) - offset)])
    length = len(secret)
    while length:
        context.update(b"\0" if length & 1 else secret[:1])
        length >>= 1
    digest = context.digest()
    for round_index in range(1000):
        digest = _apr1_round(round_index, secret, salt_bytes, digest)
    return f"{APR1_PREFIX}{salt[:8]}${_apr1_encode(digest)}"


def _apr1_round(index: int, secret: bytes, salt: bytes, digest: bytes) -> bytes:
    step = hashlib.md5(secret if index & 1 else digest)
    if index % 3:
        step.update(salt)
    if index % 7:
        step.update(secret)
    step.update(digest if index & 1 else secret)
    return step.digest()


def _apr1_encode(digest: bytes) -> str:
    groups = ((0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5))
    text = "".join(_to64((digest[a] << 16) | (digest[b] << 8) | digest[c], 4) for a, b, c in groups)
    return text + _to64(digest[11], 2)


def _to64(value: int, count: int) -> str:
    chars = []
    for _ in range(count):
        chars.append(_APR1_ALPHABET[value & 0x3F])
        value >>= 6
    return "".join(chars)


def _cache_key(user: str, password: str, stored: str) -> bytes:
    return hashlib.sha256(f"{user}\0{password}\0{stored}".encode()).digest()
