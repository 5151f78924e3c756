"""API keys mapped to tenants. Keys are random (256 bits), so a SHA-256 digest is a
safe way to store them: only the digest and a short prefix (for display) are kept;
the key itself is shown once, when it is made."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass

from sqlalchemy import select

from celeriac.clock import utcnow
from celeriac.errors import InvalidRequest
from celeriac.store import Database
from celeriac.store.schema import ApiKey

KEY_PREFIX = "clk_"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(db: Database, tenant: str) -> str:
    tenant = tenant.strip()
    if not tenant or len(tenant) > 64 or not tenant.replace("-", "").replace("_", "").isalnum():
        raise InvalidRequest("tenant must be 1-64 letters, digits, '-' or '_'", field="tenant")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    with db.session() as s:
        s.add(ApiKey(tenant=tenant, key_hash=_digest(key), prefix=key[:10],
                     created_at=utcnow()))
    return key


def revoke_key(db: Database, key: str) -> bool:
    with db.session() as s:
        row = s.scalar(select(ApiKey).where(ApiKey.key_hash == _digest(key.strip())))
        if row is None or row.revoked_at is not None:
            return False
        row.revoked_at = utcnow()
        return True


@dataclass(frozen=True)
class Principal:
    tenant: str
    key_id: int | None  # None in open mode (no key exists yet)


class Authenticator:
    """Checks bearer keys; remembers for a moment whether any key exists at all,
    since every request asks."""

    def __init__(self, db: Database, *, cache_s: float = 2.0):
        self.db = db
        self.cache_s = cache_s
        self._keys_exist: tuple[float, bool] = (0.0, False)
        self._lock = threading.Lock()

    def keys_exist(self) -> bool:
        now = time.monotonic()
        with self._lock:
            checked, exist = self._keys_exist
            if exist or now - checked < self.cache_s:
                return exist
        with self.db.reader() as s:
            exist = s.scalar(select(ApiKey.id).limit(1)) is not None
        with self._lock:
            self._keys_exist = (now, exist)
        return exist

    def authenticate(self, key: str) -> Principal | None:
        with self.db.reader() as s:
            row = s.scalar(select(ApiKey).where(ApiKey.key_hash == _digest(key)))
            if row is None or row.revoked_at is not None:
                return None
            return Principal(tenant=row.tenant, key_id=row.id)
