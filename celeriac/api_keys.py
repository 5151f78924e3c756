"""API keys mapped to tenants. Keys are random (256 bits), so a SHA-256 digest is a
safe way to store them: only the digest and a short prefix (for display) are kept;
the key itself is shown once, when it is made."""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Collection
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
    """Checks bearer keys, and whether any key exists at all (open mode until then)."""

    def __init__(self, db: Database):
        self.db = db
        self._keys_exist = False
        self._lock = threading.Lock()

    def keys_exist(self) -> bool:
        # Once a key exists the answer never changes back (revoked keys still count),
        # so it is remembered. "No key yet" is asked again on every request: the first
        # key may be made by another process at any moment, and must close the API at
        # once, not after a cache expires.
        with self._lock:
            if self._keys_exist:
                return True
        with self.db.reader() as s:
            exist = s.scalar(select(ApiKey.id).limit(1)) is not None
        if exist:
            with self._lock:
                self._keys_exist = True
        return exist

    def revoked(self, key_ids: Collection[int]) -> set[int]:
        """Those of ``key_ids`` that are revoked (or gone): one query for every open
        event stream of a process, so a revoked key stops streaming within seconds."""
        if not key_ids:
            return set()
        with self.db.reader() as s:
            live = set(s.scalars(
                select(ApiKey.id).where(ApiKey.id.in_(list(key_ids)),
                                        ApiKey.revoked_at.is_(None))
            ))
        return set(key_ids) - live

    def authenticate(self, key: str) -> Principal | None:
        with self.db.reader() as s:
            row = s.scalar(select(ApiKey).where(ApiKey.key_hash == _digest(key)))
            if row is None or row.revoked_at is not None:
                return None
            return Principal(tenant=row.tenant, key_id=row.id)
