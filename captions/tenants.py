"""Tenants, their limits and API keys (stored as salted scrypt hashes).

Keys file (YAML or JSON; path from $CAPTIONS_KEYS_FILE, in production a
Kubernetes Secret mounted at /etc/captions/keys/keys.yaml):

    tenants:
      - id: acme
        limits: {max_concurrent_streams: 4, audio_minutes_per_period: 600, period: month}
        keys:
          - id: k7f3a9c2            # public key id, safe to log
            hash: scrypt$16384$8$1$<salt b64>$<digest b64>

An API key reads `ck_<key id>_<secret>`: the id finds the one hash to check,
so a request costs one scrypt however many keys exist. Keys are never logged.

    python -m captions.tenants add-key --file keys.yaml --tenant acme [limits]

adds a key (and the tenant if new), prints the key once and stores its hash.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import logging
import os
import secrets
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

import yaml

from captions.errors import ConfigError, Unauthorized

log = logging.getLogger(__name__)

KEYS_FILE_ENV = "CAPTIONS_KEYS_FILE"
PRODUCTION_KEYS_FILE = Path("/etc/captions/keys/keys.yaml")
PERIODS = ("hour", "day", "month")
KEY_PREFIX = "ck"
# scrypt cost: 16 MiB of memory and ~50 ms per check (OWASP's minimum is N=2^17 with r=8 for
# passwords; API keys are 256-bit random secrets, so the hash only has to resist lookup, not guessing).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
# An Authorization header or key longer than this is rejected before hashing.
MAX_KEY_CHARS = 256


@dataclass(frozen=True)
class Limits:
    """Per-tenant limits."""

    max_concurrent_streams: int = 2
    audio_minutes_per_period: float = 600.0
    period: str = "month"  # hour | day | month, calendar periods in UTC

    def __post_init__(self) -> None:
        if self.max_concurrent_streams < 0 or self.audio_minutes_per_period < 0:
            raise ConfigError("limits must not be negative")
        if self.period not in PERIODS:
            raise ConfigError(f"period must be one of {PERIODS}, got {self.period!r}")


@dataclass(frozen=True)
class Tenant:
    id: str
    limits: Limits = field(default_factory=Limits)
    key_hashes: Mapping[str, str] = field(default_factory=dict)  # key id -> scrypt hash string


# Accepted keys remembered (as SHA-256) per Authenticator; more are forgotten all at once.
MAX_VERIFIED_KEYS = 10_000


def hash_secret(secret: str, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """`scrypt$N$r$p$salt$digest`: the parameters travel with the hash so they can be raised later."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return "$".join(["scrypt", str(n), str(r), str(p), _b64(salt), _b64(digest)])


def verify_secret(secret: str, stored: str) -> bool:
    """Constant-time check of a secret against `hash_secret` output."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        raise ConfigError("malformed key hash in the keys file") from None
    if scheme != "scrypt":
        raise ConfigError(f"unsupported key hash scheme {scheme!r}")
    expected = base64.urlsafe_b64decode(digest)
    actual = hashlib.scrypt(
        secret.encode(), salt=base64.urlsafe_b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected),
        maxmem=128 * 1024 * 1024,
    )
    return hmac.compare_digest(actual, expected)


def _is_scrypt_hash(stored: str) -> bool:
    parts = stored.split("$")
    return len(parts) == 6 and parts[0] == "scrypt" and all(p.isdigit() for p in parts[1:4])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


def new_key() -> tuple[str, str]:
    """A fresh (key id, full API key)."""
    key_id = secrets.token_hex(4)
    return key_id, f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"


# ------------------------------------------------------------------ keys file
def parse_tenants(doc: object) -> dict[str, Tenant]:
    """Tenants from a parsed keys file, validated."""
    if not isinstance(doc, dict) or not isinstance(doc.get("tenants"), list):
        raise ConfigError("keys file must be a mapping with a 'tenants' list")
    out: dict[str, Tenant] = {}
    for entry in doc["tenants"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not entry["id"]:
            raise ConfigError("every tenant needs a non-empty string 'id'")
        if entry["id"] in out:
            raise ConfigError(f"tenant {entry['id']!r} is listed twice")
        try:
            limits = Limits(**(entry.get("limits") or {}))
        except TypeError as exc:
            raise ConfigError(f"tenant {entry['id']!r}: bad limits: {exc}") from None
        hashes: dict[str, str] = {}
        for key in entry.get("keys") or []:
            if not isinstance(key, dict) or not isinstance(key.get("id"), str) or not isinstance(key.get("hash"), str):
                raise ConfigError(f"tenant {entry['id']!r}: every key needs string 'id' and 'hash'")
            if not _is_scrypt_hash(key["hash"]):
                raise ConfigError(f"tenant {entry['id']!r}: key {key['id']!r} has a malformed hash")
            hashes[key["id"]] = key["hash"]
        out[entry["id"]] = Tenant(entry["id"], limits, hashes)
    return out


def dump_tenants(tenants: Mapping[str, Tenant]) -> dict[str, object]:
    return {
        "tenants": [
            {
                "id": t.id,
                "limits": {
                    "max_concurrent_streams": t.limits.max_concurrent_streams,
                    "audio_minutes_per_period": t.limits.audio_minutes_per_period,
                    "period": t.limits.period,
                },
                "keys": [{"id": k, "hash": h} for k, h in t.key_hashes.items()],
            }
            for t in tenants.values()
        ]
    }


def keys_file_path(path: str | Path | None = None) -> Path:
    """The argument, else $CAPTIONS_KEYS_FILE, else the production Secret mount."""
    return Path(path or os.environ.get(KEYS_FILE_ENV) or PRODUCTION_KEYS_FILE)


def load_tenants(path: str | Path | None = None) -> dict[str, Tenant]:
    """Read and validate the keys file (YAML; JSON is YAML too)."""
    path = keys_file_path(path)
    if not path.is_file():
        raise ConfigError(f"keys file {path} not found (set ${KEYS_FILE_ENV})")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"keys file {path} is not valid YAML/JSON: {exc}") from None
    tenants = parse_tenants(doc)
    log.info("loaded %d tenants (%d keys) from %s", len(tenants), sum(len(t.key_hashes) for t in tenants.values()),
             path)
    return tenants


# --------------------------------------------------------------- auth
def _file_version(path: Path | None) -> tuple[int, int, int] | None:
    """Changes whenever the file is replaced (new inode: Secret updates, add-key) or rewritten."""
    if path is None or not path.is_file():
        return None
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


class Authenticator:
    """Resolves an API key (Bearer header or ?key=) to its tenant.

    Built `from_file`, it re-reads the keys file when it changes (checked at most
    every `reload_s`), so keys added to the Kubernetes Secret work without a restart.
    """

    def __init__(self, tenants: Mapping[str, Tenant], source: Path | None = None, reload_s: float = 30.0) -> None:
        self.source = source
        self.reload_s = reload_s
        self._checked_at = time.monotonic()
        self._version = _file_version(source)
        self._use(tenants)

    def _use(self, tenants: Mapping[str, Tenant]) -> None:
        self.tenants = dict(tenants)
        self._by_key_id = {key_id: t for t in self.tenants.values() for key_id in t.key_hashes}
        # SHA-256 of keys scrypt already accepted -> their key id. scrypt protects the file;
        # keys carry 256 random bits, so a fast hash of one is as hard to invert, and a
        # connection costs microseconds instead of one scrypt (5% of the ingest's time at
        # 32 streams). Cleared with every reload, so a removed key stops working.
        self._verified: dict[bytes, str] = {}

    @classmethod
    def from_file(cls, path: str | Path | None = None, reload_s: float = 30.0) -> Authenticator:
        path = keys_file_path(path)
        return cls(load_tenants(path), source=path, reload_s=reload_s)

    def _reload_if_changed(self) -> None:
        if self.source is None or time.monotonic() - self._checked_at < self.reload_s:
            return
        self._checked_at = time.monotonic()
        version = _file_version(self.source)
        if version == self._version:
            return
        try:
            self._use(load_tenants(self.source))
        except ConfigError as exc:
            # A bad edit must not lock every tenant out: keep the last valid keys, loudly.
            log.error("keys file %s changed but is invalid, keeping the previous keys: %s", self.source, exc)
        self._version = version

    def tenant_for_key(self, key: str) -> Tenant:
        """The tenant owning `key`, or Unauthorized (the message never contains the key)."""
        self._reload_if_changed()
        parts = key.split("_", 2)
        if len(key) > MAX_KEY_CHARS or len(parts) != 3 or parts[0] != KEY_PREFIX:
            raise Unauthorized("malformed API key")
        tenant = self._by_key_id.get(parts[1])
        if tenant is None:
            raise Unauthorized("unknown API key")
        digest = hashlib.sha256(key.encode()).digest()
        if self._verified.get(digest) != parts[1]:
            if not verify_secret(key, tenant.key_hashes[parts[1]]):
                raise Unauthorized("unknown API key")
            if len(self._verified) >= MAX_VERIFIED_KEYS:
                self._verified.clear()
            self._verified[digest] = parts[1]
        return tenant

    def authenticate(self, headers: Mapping[str, str], query: Mapping[str, str]) -> Tenant:
        """From `Authorization: Bearer KEY` or, for browsers (no headers on WebSockets), `?key=KEY`."""
        header = headers.get("authorization")
        if header is not None:
            scheme, _, key = header.partition(" ")
            if scheme.lower() != "bearer" or not key.strip():
                raise Unauthorized("Authorization header must be 'Bearer KEY'")
            return self.tenant_for_key(key.strip())
        key = query.get("key")
        if not key:
            raise Unauthorized("missing API key: send 'Authorization: Bearer KEY' or ?key=KEY")
        return self.tenant_for_key(key)


# ---------------------------------------------------------------- CLI
def add_key(path: Path, tenant_id: str, limit_changes: Mapping[str, object] | None = None) -> str:
    """Add a key to a tenant (created if new), applying `limit_changes` to its limits; returns the key."""
    tenants = parse_tenants(yaml.safe_load(path.read_text())) if path.is_file() else {}
    current = tenants.get(tenant_id, Tenant(tenant_id))
    key_id, key = new_key()
    limits = replace(current.limits, **(limit_changes or {}))
    tenants[tenant_id] = Tenant(tenant_id, limits, {**current.key_hashes, key_id: hash_secret(key)})
    # Write-then-rename so a reader never sees a half-written file; the file holds hashes only.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(dump_tenants(tenants), sort_keys=False))
    tmp.chmod(0o600)
    tmp.replace(path)
    return key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m captions.tenants", description="Manage tenants and API keys.")
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add-key", help="add an API key to a tenant (creating it); prints the key once")
    add.add_argument("--file", type=Path, default=None, help=f"keys file (default ${KEYS_FILE_ENV})")
    add.add_argument("--tenant", required=True)
    add.add_argument("--max-concurrent-streams", type=int)
    add.add_argument("--audio-minutes-per-period", type=float)
    add.add_argument("--period", choices=PERIODS)
    args = parser.parse_args(argv)
    given = {
        k: v
        for k, v in {
            "max_concurrent_streams": args.max_concurrent_streams,
            "audio_minutes_per_period": args.audio_minutes_per_period,
            "period": args.period,
        }.items()
        if v is not None
    }
    try:
        key = add_key(keys_file_path(args.file), args.tenant, given)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(key)
    print(f"key added for tenant {args.tenant!r}; it is shown only now, store it safely", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
