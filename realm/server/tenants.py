"""API keys and tenants: who may call the server, and each tenant's limits and token quota.

Key file lines: `KEY TENANT [concurrency=N] [max_tokens=N] [quota=N]`; `#` starts a comment.
Keys are compared in constant time against every configured key (`hmac.compare_digest`), so a
response's timing does not tell how much of a guessed key was right.
"""

from __future__ import annotations

import hmac
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from realm.errors import RealmError, ServeError

MAX_KEY_FILE_BYTES = 1 << 20
MIN_KEY_CHARS = 8
_TENANT_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_LIMITS = ("concurrency", "max_tokens", "quota")


@dataclass
class Tenant:
    """One tenant: its limits (None: unlimited) and, guarded by a lock, what it is using."""

    name: str
    concurrency: int | None = None  # requests at once
    max_tokens: int | None = None  # per request
    quota: int | None = None  # total tokens (prompt + completion) over the server's life
    active: int = 0
    used_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def admit(self) -> None:
        """Count one more running request, or raise 429 when a limit is reached."""
        with self._lock:
            if self.quota is not None and self.used_tokens >= self.quota:
                raise ServeError(f"tenant {self.name!r} has used its token quota of {self.quota}", 429,
                                 type="insufficient_quota", code="insufficient_quota")
            if self.concurrency is not None and self.active >= self.concurrency:
                raise ServeError(f"tenant {self.name!r} already has {self.active} request(s) running, its limit",
                                 429, type="rate_limit_exceeded", code="rate_limit_exceeded",
                                 headers={"Retry-After": "1"})
            self.active += 1

    def finish(self, n_tokens: int) -> None:
        with self._lock:
            self.active = max(0, self.active - 1)
            self.used_tokens += max(0, int(n_tokens))

    def tokens_left(self) -> int | None:
        with self._lock:
            return None if self.quota is None else max(0, self.quota - self.used_tokens)


class KeyRing:
    """The configured keys (or none: every request is the local tenant)."""

    def __init__(self, entries: list[tuple[bytes, Tenant]] | None = None, local: Tenant | None = None):
        self.entries = entries or []
        self.local = local

    @classmethod
    def open_local(cls) -> "KeyRing":
        return cls([], Tenant("local"))

    @classmethod
    def from_file(cls, path: str | Path) -> "KeyRing":
        p = Path(path)
        try:
            if p.stat().st_size > MAX_KEY_FILE_BYTES:
                raise RealmError(f"API key file {p} is larger than {MAX_KEY_FILE_BYTES} bytes")
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise RealmError(f"cannot read the API key file {p}: {e}") from None
        tenants: dict[str, Tenant] = {}
        entries: list[tuple[bytes, Tenant]] = []
        for lineno, line in enumerate(text.splitlines(), 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            where = f"{p}:{lineno}"
            if len(words) < 2:
                raise RealmError(f"{where}: expected `KEY TENANT [limit=N ...]`")
            key, name, limits = words[0], words[1], words[2:]
            if len(key) < MIN_KEY_CHARS or not key.isprintable():
                raise RealmError(f"{where}: a key must be at least {MIN_KEY_CHARS} printable characters")
            if not _TENANT_NAME.match(name):
                raise RealmError(f"{where}: tenant name {name!r} must be 1-64 of A-Z a-z 0-9 _ . @ -")
            values: dict[str, int] = {}
            for item in limits:
                k, sep, v = item.partition("=")
                if not sep or k not in _LIMITS or not v.isdigit() or int(v) < 1:
                    raise RealmError(f"{where}: bad limit {item!r} (use {', '.join(k + '=N' for k in _LIMITS)}, N >= 1)")
                values[k] = int(v)
            if any(hmac.compare_digest(key.encode(), k) for k, _ in entries):
                raise RealmError(f"{where}: this key is listed twice")
            tenant = tenants.get(name)
            if tenant is None:
                tenant = tenants[name] = Tenant(name, **values)
            elif values:
                raise RealmError(f"{where}: tenant {name!r} already has limits (give them on its first key)")
            entries.append((key.encode(), tenant))
        if not entries:
            raise RealmError(f"API key file {p} lists no keys")
        return cls(entries)

    def authenticate(self, authorization: str | None) -> Tenant:
        """The tenant of an `Authorization: Bearer KEY` header, or 401."""
        if self.local is not None:
            return self.local
        key = b""
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer":
                key = value.strip().encode("utf-8", "replace")
        if not key:
            raise ServeError("missing API key: send `Authorization: Bearer KEY`", 401,
                             type="authentication_error", code="invalid_api_key")
        found = None
        for k, tenant in self.entries:  # every key compared, whichever matches
            if hmac.compare_digest(key, k):
                found = tenant
        if found is None:
            raise ServeError("invalid API key", 401, type="authentication_error", code="invalid_api_key")
        return found

    @property
    def tenants(self) -> list[Tenant]:
        seen = {id(t): t for _, t in self.entries}
        if self.local is not None:
            seen[id(self.local)] = self.local
        return list(seen.values())
