"""The server's settings: one object, filled from CLI flags or `REALM_SERVE_*` environment variables."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields
from typing import Any

from realm.errors import RealmError

DEFAULT_BUDGET = 64 << 20
ENV_PREFIX = "REALM_SERVE_"
LOOPBACK_NAMES = ("localhost",)


@dataclass
class Settings:
    """Everything `create_app` needs.

    models : `PATH`, `NAME=PATH`, or empty for the default model; the served name is NAME or the
        file's stem, and requests pick a model by it (`model` field).
    parallel : requests generating at once (each in its own guest); max_queue : requests waiting
        beyond those; more get 503 with `Retry-After: retry_after`.
    memory_budget : bytes of linear memory per guest (wasm engine). threads : guest instances (wasm)
        or Numba threads per request.
    timeout : seconds a request may generate for (its deadline, from when it starts running).
    max_body_bytes : a larger request body gets 413. max_tokens : a request's cap when it names none
        (chat) and the default tenant limit.
    api_key_file : lines `KEY TENANT [concurrency=N] [max_tokens=N] [quota=N]`; without it the server
        only accepts clients on the loopback interface.
    chat_template, chat_template_file : a built-in template name or a Jinja file used for chat
        instead of each model's `tokenizer.chat_template` (needed for models that have none).
    """

    models: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8080
    parallel: int = 2
    max_queue: int = 8
    memory_budget: int = DEFAULT_BUDGET
    api_key_file: str | None = None
    engine: str = "wasm"
    threads: int = 1
    ctx: int | None = None
    timeout: float = 300.0
    max_body_bytes: int = 1 << 20
    max_tokens: int = 512
    retry_after: int = 2
    chat_template: str | None = None  # a built-in template name overriding the models' own
    chat_template_file: str | None = None  # a Jinja file overriding them

    def __post_init__(self):
        self.validate()

    def validate(self) -> "Settings":
        checks = [
            (self.parallel >= 1, "parallel must be >= 1"),
            (self.max_queue >= 0, "max-queue must be >= 0"),
            (self.memory_budget >= 1 << 20, "memory-budget must be at least 1 MiB"),
            (self.threads >= 1, "threads must be >= 1"),
            (self.ctx is None or self.ctx >= 1, "ctx must be >= 1"),
            (self.timeout > 0, "timeout must be > 0"),
            (self.max_body_bytes >= 1024, "max-body-bytes must be at least 1024"),
            (self.max_tokens >= 1, "max-tokens must be >= 1"),
            (self.retry_after >= 1, "retry-after must be >= 1"),
            (0 <= self.port < 65536, "port must be in [0, 65535]"),
            (self.engine in ("wasm", "numba", "reference"), f"unknown engine {self.engine!r}"),
            (self.chat_template is None or self.chat_template_file is None,
             "give a chat template name or a chat template file, not both"),
        ]
        for ok, message in checks:
            if not ok:
                raise RealmError(f"invalid server setting: {message}")
        return self

    @property
    def loopback_only(self) -> bool:
        return self.api_key_file is None

    @classmethod
    def from_env(cls, environ=None, **overrides: Any) -> "Settings":
        """Settings from `REALM_SERVE_<FIELD>` variables (models: comma-separated), then `overrides`."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is None:
                continue
            try:
                if f.name == "models":
                    values[f.name] = [m for m in raw.split(",") if m.strip()]
                elif f.type in ("int", "int | None"):
                    values[f.name] = int(raw)
                elif f.type == "float":
                    values[f.name] = float(raw)
                else:
                    values[f.name] = raw
            except ValueError:
                raise RealmError(f"{ENV_PREFIX}{f.name.upper()}={raw!r} is not a valid {f.type}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False
