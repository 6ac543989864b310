"""Every request and response body of `realm serve` as a pydantic model, in one place.

The shapes follow OpenAI's API reference for `/v1/models`, `/v1/completions` and
`/v1/chat/completions` (streaming chunks included: `data: {chunk}` lines, then `data: [DONE]`),
and llama.cpp's server for `/tokenize` and `/detokenize`. Unknown fields are ignored, as OpenAI's
clients send ones a server may not know; known fields are validated strictly (wrong type or range:
422). Limits that depend on the model or the tenant (context length, max_tokens) are checked by
the scheduler.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, field_validator, model_validator

MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_STOP_CHARS = 256
MAX_TOKENS_FIELD = 1 << 20  # a sanity bound on the field itself; the context bounds it further
MAX_MESSAGES = 1024


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data):
        """`"field": null` means the field's default, as in OpenAI's API (clients send nulls for
        parameters they leave unset); a required field stays required."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items()
                    if v is not None or k not in cls.model_fields or cls.model_fields[k].is_required()}
        return data


class StreamOptions(_Request):
    include_usage: StrictBool = False


class _SamplingFields(_Request):
    """Fields shared by completions and chat completions."""

    model: str = Field(min_length=1, max_length=256)
    max_tokens: StrictInt | None = Field(default=None, ge=0, le=MAX_TOKENS_FIELD)
    temperature: StrictFloat = Field(default=1.0, ge=0.0, le=100.0, allow_inf_nan=False)
    top_p: StrictFloat = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: StrictInt = Field(default=40, ge=0, le=1 << 20)
    min_p: StrictFloat = Field(default=0.05, ge=0.0, le=1.0, allow_inf_nan=False)
    repeat_penalty: StrictFloat = Field(default=1.0, gt=0.0, le=100.0, allow_inf_nan=False)
    seed: StrictInt | None = Field(default=None, ge=0, lt=1 << 64)
    stop: str | list[str] | None = None
    n: StrictInt = Field(default=1, ge=1, le=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, v):
        if v is None:
            return []
        items = [v] if isinstance(v, str) else v
        if len(items) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        if any(not s or len(s) > MAX_STOP_CHARS for s in items):
            raise ValueError(f"stop strings must be 1 to {MAX_STOP_CHARS} characters")
        return items

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options is not None and self.stream_options.include_usage)


class CompletionRequest(_SamplingFields):
    """POST /v1/completions. `prompt` is one string (or a list holding one string: n=1, one prompt)."""

    prompt: str | list[str]
    max_tokens: StrictInt | None = Field(default=16, ge=0, le=MAX_TOKENS_FIELD)  # OpenAI's default
    echo: StrictBool = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("give exactly one prompt (batches of prompts are not supported)")
            v = v[0]
        if not v:
            raise ValueError("the prompt is empty")
        return v


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(default=None, max_length=256)

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatCompletionRequest(_SamplingFields):
    """POST /v1/chat/completions (text content only)."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=0, le=MAX_TOKENS_FIELD)

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def plain_messages(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]


class TokenizeRequest(_Request):
    """POST /tokenize (llama.cpp's shape; `model` picks the model when several are served)."""

    content: str
    model: str | None = None
    add_special: StrictBool = True


class DetokenizeRequest(_Request):
    tokens: list[StrictInt] = Field(max_length=1 << 20)
    model: str | None = None


# -- responses ---------------------------------------------------------------------------------------


def _now() -> int:
    return int(time.time())


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=_now)
    owned_by: str = "realm"
    meta: dict[str, Any] = Field(default_factory=dict)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = None


class Completion(BaseModel):
    """A whole completion and, with stream=true, each chunk (`object` is the same for both)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class TokenizeResponse(BaseModel):
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    content: str


class Health(BaseModel):
    status: Literal["ok", "loading", "error"]
    models: dict[str, str] = Field(default_factory=dict)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`, also sent as an SSE
    chunk when a stream fails after it started (the openai client raises APIError on it)."""

    error: ErrorDetail
