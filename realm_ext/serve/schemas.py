"""The OpenAI request bodies the server accepts and the error shape it answers with.

Every error is `{"error": {"message", "type", "param", "code"}}` with the status it
names (OpenAI's shape), from the request's validation (400, where FastAPI says 422)
to a guest's failure (500).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

U32_MAX = 2**32 - 1


class OpenAIError(Exception):
    """An error answered in OpenAI's shape with HTTP status `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",  # noqa: A002 - OpenAI's field name
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str,
    type: str = "invalid_request_error",  # noqa: A002
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def model_not_found(name: str) -> OpenAIError:
    """The one answer for a model that is not served and for one not granted."""
    return OpenAIError(
        404,
        f"The model '{name}' does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def invalid(message: str, param: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Common(BaseModel):
    """The fields both endpoints take. top_k, min_p and repeat_penalty are extensions
    (llama.cpp's server takes them too); OpenAI's defaults otherwise."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=0, le=U32_MAX)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    stop: str | list[str] | None = None
    n: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: Any = None
    logit_bias: Mapping[str, float] | None = None
    user: str | None = None
    top_k: int | None = Field(None, ge=-(2**31), le=2**31 - 1)
    min_p: float | None = Field(None, ge=0, le=1)
    repeat_penalty: float | None = Field(None, gt=0, le=100)

    def stops(self) -> list[str]:
        stop = self.stop
        if stop is None:
            return []
        stops = [stop] if isinstance(stop, str) else list(stop)
        if len(stops) > 4:
            raise invalid("stop: at most 4 stop sequences", "stop")
        return [s for s in stops if s]

    def check_supported(self) -> None:
        """400 for what the server does not do (rather than ignoring it silently)."""
        if self.n is not None and self.n != 1:
            raise invalid(f"n: only n=1 is supported, got {self.n}", "n")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise invalid(f"{name} is not supported (use repeat_penalty)", name)
        if self.logprobs:
            raise invalid("logprobs is not supported", "logprobs")
        if self.logit_bias:
            raise invalid("logit_bias is not supported", "logit_bias")


class CompletionRequest(_Common):
    prompt: str | list[str]
    echo: bool | None = False
    best_of: int | None = None
    suffix: str | None = None

    def prompt_text(self) -> str:
        p = self.prompt
        if isinstance(p, list):
            if len(p) != 1:
                raise invalid("prompt: one prompt per request (a list of one string at most)", "prompt")
            p = p[0]
        return p

    def check_supported(self) -> None:
        super().check_supported()
        if self.echo:
            raise invalid("echo is not supported", "echo")
        if self.best_of not in (None, 1):
            raise invalid("best_of: only 1 is supported", "best_of")
        if self.suffix:
            raise invalid("suffix is not supported", "suffix")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        c = self.content
        if c is None:
            return ""
        if isinstance(c, str):
            return c
        return "".join(p.text for p in c)


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0, le=U32_MAX)
    tools: Sequence[Any] | None = None
    response_format: Mapping[str, Any] | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.tools:
            raise invalid("tools are not supported", "tools")
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            raise invalid("response_format: only text is supported", "response_format")

    def history(self) -> tuple[tuple[str, str], ...]:
        return tuple((m.role, m.text()) for m in self.messages)
