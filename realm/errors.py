"""Typed errors of realm; library code raises only these (and lets the CLI turn them into exit codes)."""

from __future__ import annotations


class RealmError(Exception):
    """Base of every error realm raises on purpose."""


class GGUFError(RealmError):
    """A GGUF file is malformed; names the field and the byte offset where reading failed."""

    def __init__(self, message: str, *, field: str | None = None, offset: int | None = None):
        self.field = field
        self.offset = offset
        where = []
        if field is not None:
            where.append(f"field {field}")
        if offset is not None:
            where.append(f"offset {offset}")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)


class UnsupportedError(RealmError):
    """A valid input that realm does not handle (a quant type, an architecture, a tokenizer kind)."""


class ConfigError(RealmError):
    """Model metadata is missing or inconsistent; names the GGUF key."""


class TokenizerError(RealmError):
    """The tokenizer metadata is unusable or a token id is out of range."""


class ModelNotFoundError(RealmError):
    """The model file or the default model package is missing."""


class StoreError(RealmError):
    """A model store operation failed (unknown id, id conflict, model in use)."""


class GuestError(RealmError):
    """The WebAssembly guest failed: a trap, an exhausted limit, or an error code it returned."""


class KernelArgumentError(RealmError, ValueError):
    """An array passed to a kernel (dequantize, quantize, matvec) has the wrong dtype, shape,
    layout or length (also a ValueError)."""


class ServeError(RealmError):
    """A request to `realm serve` cannot be served: carries the HTTP status and OpenAI's error
    `type` and `code` (the server's one exception handler turns it into the error body)."""

    def __init__(self, message: str, status: int = 400, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.type, self.code, self.param = status, type, code, param
        self.headers = headers or {}


class ChatTemplateError(RealmError):
    """A chat template is missing, malformed, refused the conversation, or broke a sandbox bound
    (time, output size, an unsafe attribute); the message says which and how to pass another one."""


class ChatTemplateRaised(ChatTemplateError):
    """The chat template itself rejected the conversation through `raise_exception(...)`."""
