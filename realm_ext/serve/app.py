"""The OpenAI-compatible ASGI app: routes, authentication, the request lifecycle.

    GET  /v1/models             the models the caller's tenant may use
    GET  /v1/models/{model}
    POST /v1/completions        text completion (stream: SSE)
    POST /v1/chat/completions   chat completion (stream: SSE); KV ring reused across turns
    GET  /health                200 {"status": "ok"}; 503 while the server drains
    GET  /metrics               Prometheus text exposition

A request: its key names its tenant (401 otherwise), its body is checked (400), its
model must be granted to the tenant (404, the same answer as for a model that does
not exist), the tenant must be under its limits (429 with Retry-After), then a worker
thread runs it on a pooled guest (realm_ext.serve.generation) and the pieces stream
back. A guest's failure is a 500 with the guest's message; the guest is replaced and
the server goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from realm_ext import abi
from realm_ext.api import Host
from realm_ext.chat_template import ChatTemplate, ChatTemplateError
from realm_ext.engines.base import GuestLimitError
from realm_ext.model import Model
from realm_ext.serve.config import ServeConfig
from realm_ext.serve.generation import GuestUnsupported, Job, Result, is_guest_failure
from realm_ext.serve.generation import Request as GenRequest
from realm_ext.serve.metrics import CONTENT_TYPE, Metrics
from realm_ext.serve.pool import GuestPool
from realm_ext.serve.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    OpenAIError,
    _Common,
    error_body,
    invalid,
    model_not_found,
)
from realm_ext.serve.tenants import Authenticator, RateLimited, Tenant

log = logging.getLogger("realm_ext.serve")

DEFAULT_MAX_TOKENS = {"completion": 16, "chat": 256}  # OpenAI's 16 for completions
U64 = 2**64 - 1
POLL_S = 0.25  # a stream looks at the drain deadline at least this often


class ServerState:
    """One server's host, models, tenants, guest pools, metrics and worker threads."""

    def __init__(self, config: ServeConfig, host: Host | None = None, workers: int | None = None):
        """Load config's models into `host` (default: a Host of its own, on config's device
        and threads, closed with the state). workers: threads that run generations (default:
        the sum of the tenants' concurrency limits, so that no admitted request waits)."""
        self.config = config
        self._closed = False
        self._own_host = host is None
        self.host = host if host is not None else Host(device=config.device, n_threads=config.threads)
        self.models: dict[str, Model] = {}
        self.templates: dict[str, ChatTemplate | ChatTemplateError] = {}
        self._pools: dict[tuple[str, str], GuestPool] = {}
        self._pools_lock = threading.Lock()
        self.tenants = [Tenant(t) for t in config.tenants]
        self.auth = Authenticator(self.tenants)
        self.metrics = Metrics(self._pool_counts)
        n = workers or sum(t.config.max_concurrent for t in self.tenants)
        self.executor = ThreadPoolExecutor(max_workers=max(1, n), thread_name_prefix="realm-serve")
        self.created = int(time.time())
        self.draining = False
        self.drain_deadline: float | None = None
        try:
            self._wasm = {t.name: t.config.wasm.read_bytes() if t.config.wasm else None for t in self.tenants}
            for spec in config.models:
                model = self.models[spec.name] = self.host.load(spec.path)
                try:
                    self.templates[spec.name] = ChatTemplate.for_model(model)
                except ChatTemplateError as e:
                    self.templates[spec.name] = e
        except BaseException:
            self.close()
            raise

    def pool(self, tenant: Tenant, model_name: str) -> GuestPool:
        key = (tenant.name, model_name)
        with self._pools_lock:
            pool = self._pools.get(key)
            if pool is None:
                pool = self._pools[key] = GuestPool(
                    self.host, self.models[model_name], model_name, tenant.config, self._wasm[tenant.name]
                )
            return pool

    def pools(self) -> list[GuestPool]:
        with self._pools_lock:
            return list(self._pools.values())

    def _pool_counts(self) -> Iterable[tuple[str, str, int, int]]:
        for p in self.pools():
            idle, busy = p.counts()
            yield p.tenant.name, p.model_name, idle, busy

    def begin_drain(self, timeout: float | None = None) -> None:
        """Refuse new requests (503); streams still running after `timeout` seconds
        (default: the config's drain_timeout) stop their guest and end with a final
        error event."""
        self.draining = True
        self.drain_deadline = time.monotonic() + (self.config.drain_timeout if timeout is None else timeout)

    def close(self) -> None:
        """Close the pools (busy guests close as their request ends), wait for the worker
        threads, then unload the models (or close the Host, when it is the state's own)."""
        if self._closed:
            return
        self._closed = True
        for p in self.pools():
            p.close()
        self.executor.shutdown(wait=True, cancel_futures=True)
        if self._own_host:
            self.host.close()
        else:
            for model in self.models.values():
                with contextlib.suppress(KeyError):
                    self.host.unload(model)


@dataclass
class _Call:
    """One request's bookkeeping for its log line and metrics."""

    endpoint: str
    started: float
    tenant: str = "-"
    model: str = "-"
    stream: bool = False
    done: bool = False


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if not auth:
        return None
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _authenticate(state: ServerState, request: Request) -> Tenant:
    """The request's tenant (its bearer key), or 401. The key is never logged."""
    key = _bearer(request)
    tenant = state.auth.tenant(key)
    if tenant is None:
        if key is None:
            raise OpenAIError(
                401, "You didn't provide an API key (Authorization: Bearer KEY).", code="missing_api_key"
            )
        raise OpenAIError(401, "Incorrect API key provided.", code="invalid_api_key")
    return tenant


def _validation_message(e: ValidationError | RequestValidationError) -> tuple[str, str | None]:
    errors = e.errors()
    if not errors:
        return "Invalid request", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
    where = f"'{param}': " if param else ""
    return f"Invalid request: {where}{first.get('msg', 'invalid value')}{more}", param


def _sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


class _Handler:
    """The request lifecycle of the two generation endpoints."""

    def __init__(self, state: ServerState):
        self.state = state

    # -- bookkeeping ---------------------------------------------------------------------

    def _finish(self, call: _Call, status: int, result: Result | None = None) -> None:
        if call.done:
            return
        call.done = True
        m = self.state.metrics
        m.requests.labels(call.endpoint, call.tenant, str(status)).inc()
        now = time.monotonic()
        p = c = 0
        ttft = None
        if result is not None:
            p, c, ttft = result.prompt_tokens, result.completion_tokens, result.ttft
            m.prompt_tokens.labels(call.tenant, call.model).inc(p)
            m.completion_tokens.labels(call.tenant, call.model).inc(c)
            m.reused_tokens.labels(call.tenant, call.model).inc(result.reused_tokens)
            m.request_seconds.labels(call.endpoint).observe((result.ended or now) - call.started)
            if ttft is not None:
                m.ttft_seconds.labels(call.endpoint).observe(ttft)
        ttft_ms = f"{ttft * 1000:.1f}" if ttft is not None else "-"
        log.info(
            "tenant=%s model=%s endpoint=%s stream=%s status=%d prompt_tokens=%d completion_tokens=%d "
            "ttft_ms=%s total_ms=%.1f",
            call.tenant,
            call.model,
            call.endpoint,
            call.stream,
            status,
            p,
            c,
            ttft_ms,
            ((result.ended if result is not None and result.ended else now) - call.started) * 1000,
        )

    @staticmethod
    def _status(result: Result) -> int:
        if result.error is not None:
            return _error_of(result.error).status
        return 499 if result.stopped else 200  # 499: the client closed the request (nginx's)

    # -- the request ---------------------------------------------------------------------

    async def handle(self, request: Request, kind: str) -> Response:
        endpoint = "/v1/completions" if kind == "completion" else "/v1/chat/completions"
        call = _Call(endpoint, time.monotonic())
        try:
            return await self._handle(request, kind, call)
        except OpenAIError as e:
            self._finish(call, e.status)
            return JSONResponse(e.body(), e.status, headers=e.headers)
        except BaseException:
            self._finish(call, 500)
            raise

    def _params(self, body: _Common, kind: str, max_tokens: int | None, n_ctx: int) -> abi.GenerateParams:
        seed = body.seed if body.seed is not None else secrets.randbits(64)
        try:
            return abi.GenerateParams(
                max_tokens=DEFAULT_MAX_TOKENS[kind] if max_tokens is None else max_tokens,
                temperature=1.0 if body.temperature is None else body.temperature,
                top_p=1.0 if body.top_p is None else body.top_p,
                top_k=0 if body.top_k is None else body.top_k,
                min_p=0.0 if body.min_p is None else body.min_p,
                repeat_penalty=1.0 if body.repeat_penalty is None else body.repeat_penalty,
                seed=seed & U64,
                n_ctx=n_ctx,
            )
        except ValueError as e:
            raise invalid(str(e)) from None

    async def _handle(self, request: Request, kind: str, call: _Call) -> Response:
        state = self.state
        tenant = _authenticate(state, request)
        call.tenant = tenant.name
        if state.draining:
            raise _shutting_down()
        try:
            raw = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise invalid("The body is not valid JSON.") from None
        try:
            body: CompletionRequest | ChatCompletionRequest = (
                CompletionRequest.model_validate(raw)
                if kind == "completion"
                else ChatCompletionRequest.model_validate(raw)
            )
        except ValidationError as e:
            raise invalid(*_validation_message(e)) from None
        call.stream = bool(body.stream)
        if body.model not in state.models or not tenant.config.grants(body.model):
            raise model_not_found(body.model)
        call.model = body.model
        body.check_supported()
        stops = body.stops()
        model = state.models[body.model]
        n_ctx = min(tenant.config.n_ctx, model.config.n_ctx_train or tenant.config.n_ctx)
        if isinstance(body, ChatCompletionRequest):
            max_tokens = (
                body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
            )
            template = state.templates[body.model]
            if isinstance(template, ChatTemplateError):
                raise invalid(f"The model '{body.model}' has no chat template: {template}", "model")
            messages = [{"role": m.role, "content": m.text()} for m in body.messages]
            try:
                prompt = template.prompt(messages)
            except ChatTemplateError as e:
                raise invalid(str(e), "messages") from None
            gen = GenRequest(
                "chat",
                prompt,
                self._params(body, "chat", max_tokens, n_ctx),
                stops,
                body.history(),
                call.started,
            )
        else:
            gen = GenRequest(
                "completion",
                body.prompt_text(),
                self._params(body, "completion", body.max_tokens, n_ctx),
                stops,
                None,
                call.started,
            )
        try:
            slot = tenant.admit()
        except RateLimited as e:
            raise OpenAIError(
                429,
                str(e),
                type=e.kind,
                code="rate_limit_exceeded",
                headers={"Retry-After": str(e.retry_after)},
            ) from None
        return await self._run(request, call, tenant, slot, body, gen)

    async def _run(
        self,
        request: Request,
        call: _Call,
        tenant: Tenant,
        slot: Callable[[], None],
        body: _Common,
        gen: GenRequest,
    ) -> Response:
        state = self.state
        m = state.metrics
        m.in_flight.labels(tenant.name).inc()
        pool = state.pool(tenant, call.model)

        def on_done(result: Result) -> None:  # in the worker thread, once the guest is back
            try:
                tenant.tokens.add(result.prompt_tokens + result.completion_tokens)
                if result.error is not None and is_guest_failure(result.error):
                    m.guests_replaced.labels(tenant.name, call.model).inc()
                self._finish(call, self._status(result), result)
            finally:  # the slot last: whoever sees it free sees the request counted
                m.in_flight.labels(tenant.name).dec()
                slot()

        job = Job(asyncio.get_running_loop(), pool, gen, on_done)

        def work() -> None:
            m.queue_depth.dec()
            job.run()

        m.queue_depth.inc()
        try:
            state.executor.submit(work)
        except RuntimeError:  # the executor is shut down
            m.queue_depth.dec()
            slot()
            m.in_flight.labels(tenant.name).dec()
            raise _shutting_down() from None

        if body.stream:
            return await self._stream(request, call, job, body)
        while await self._next_or_stop(job, request) is not None:
            pass
        res = job.result
        if res.error is not None:
            raise _error_of(res.error)
        return JSONResponse(self._body(call, job, body))

    def _usage(self, res: Result) -> dict[str, int]:
        return {
            "prompt_tokens": res.prompt_tokens,
            "completion_tokens": res.completion_tokens,
            "total_tokens": res.prompt_tokens + res.completion_tokens,
        }

    def _body(self, call: _Call, job: Job, body: _Common) -> dict[str, Any]:
        res = job.result
        created = int(time.time())
        if job.request.kind == "completion":
            return {
                "id": f"cmpl-{uuid.uuid4().hex}",
                "object": "text_completion",
                "created": created,
                "model": call.model,
                "choices": [
                    {"text": res.text, "index": 0, "logprobs": None, "finish_reason": res.finish_reason}
                ],
                "usage": self._usage(res),
            }
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": created,
            "model": call.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": res.text},
                    "logprobs": None,
                    "finish_reason": res.finish_reason,
                }
            ],
            "usage": self._usage(res),
        }

    @staticmethod
    async def _stop_and_wait(job: Job) -> None:
        job.stop()
        while await job.next_piece() is not None:
            pass

    async def _next(self, job: Job, request: Request | None = None) -> str | None:
        """The next piece. Past the drain deadline: _DrainTimeout (the caller stops the
        job). With `request` (before a response has started: nothing else is reading
        its messages), a client gone meanwhile stops the job (looked at every POLL_S)."""
        while True:
            d = self.state.drain_deadline
            if d is not None and time.monotonic() >= d:
                raise _DrainTimeout
            if request is not None and time.monotonic() >= job.next_check:
                job.next_check = time.monotonic() + POLL_S
                if await request.is_disconnected():
                    job.stop()  # the job still ends, and next_piece then returns None
                    request = None
            try:
                return await job.next_piece(POLL_S)
            except asyncio.TimeoutError:
                continue

    async def _next_or_stop(self, job: Job, request: Request) -> str | None:
        """_next, the job stopped when it fails: past the drain deadline (then a
        shutting-down error) or for any other reason (the client gone, a cancel)."""
        try:
            return await self._next(job, request)
        except _DrainTimeout:
            await self._stop_and_wait(job)
            raise _shutting_down() from None
        except BaseException:
            job.stop()
            raise

    async def _stream(self, request: Request, call: _Call, job: Job, body: _Common) -> Response:
        first = await self._next_or_stop(job, request)
        res = job.result
        if first is None and res.error is not None:
            raise _error_of(res.error)  # nothing sent yet: a proper status
        chat = job.request.kind == "chat"
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(text: str | None, finish: str | None, role: bool = False) -> dict[str, Any]:
            if chat:
                delta: dict[str, Any] = {}
                if role:
                    delta["role"] = "assistant"
                if text is not None:
                    delta["content"] = text
                choice: dict[str, Any] = {
                    "index": 0,
                    "delta": delta,
                    "logprobs": None,
                    "finish_reason": finish,
                }
                obj = "chat.completion.chunk"
            else:
                choice = {"text": text or "", "index": 0, "logprobs": None, "finish_reason": finish}
                obj = "text_completion"
            out: dict[str, Any] = {
                "id": ident,
                "object": obj,
                "created": created,
                "model": call.model,
                "choices": [choice],
            }
            if include_usage:
                out["usage"] = None
            return out

        async def events() -> AsyncIterator[bytes]:
            try:
                if chat:
                    yield _sse(chunk("", None, role=True))
                piece = first
                try:
                    while piece is not None:
                        yield _sse(chunk(piece, None))
                        piece = await self._next(job)
                except _DrainTimeout:
                    await self._stop_and_wait(job)
                    yield _sse(
                        error_body(
                            "The server is shutting down; the generation was stopped.",
                            "server_error",
                            None,
                            "shutting_down",
                        )
                    )
                    yield _sse("[DONE]")
                    return
                if res.error is not None:
                    e = _error_of(res.error)
                    yield _sse(e.body())
                else:
                    yield _sse(chunk(None if chat else "", res.finish_reason))
                    if include_usage:
                        yield _sse(
                            {
                                "id": ident,
                                "object": chunk(None, None)["object"],
                                "created": created,
                                "model": call.model,
                                "choices": [],
                                "usage": self._usage(res),
                            }
                        )
                yield _sse("[DONE]")
            finally:
                job.stop()  # a client that left: the guest stops; a finished job: nothing

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


class _DrainTimeout(Exception):
    pass


def _shutting_down() -> OpenAIError:
    return OpenAIError(503, "The server is shutting down.", type="server_error", code="shutting_down")


def _error_of(e: BaseException) -> OpenAIError:
    """The answer for an error that ended a generation."""
    if isinstance(e, OpenAIError):
        return e
    if isinstance(e, GuestUnsupported):
        return OpenAIError(400, str(e), code="unsupported_by_guest")
    if isinstance(e, GuestLimitError):
        return OpenAIError(500, f"The guest ran past its limit: {e}", type="server_error", code="guest_limit")
    if is_guest_failure(e):
        return OpenAIError(500, f"The guest failed: {e}", type="server_error", code="guest_error")
    return OpenAIError(500, f"Internal server error: {type(e).__name__}", type="server_error", code=None)


def create_app(state: ServerState | None = None, own_state: bool = False) -> FastAPI:
    """The FastAPI app serving `state` (set app.state.realm later when None, as the Ray
    Serve deployment does). own_state: close the state when the app shuts down."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        s = getattr(app.state, "realm", None)
        if own_state and s is not None:
            await asyncio.get_running_loop().run_in_executor(None, s.close)

    app = FastAPI(title="realm-ext", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.realm = state

    def st(request: Request) -> ServerState:
        s: ServerState | None = request.app.state.realm
        if s is None:
            raise OpenAIError(503, "The server is starting.", type="server_error")
        return s

    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, e: OpenAIError) -> JSONResponse:
        return JSONResponse(e.body(), e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(e)
        return JSONResponse(error_body(message, param=param), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if e.status_code < 500 else "server_error"
        return JSONResponse(
            error_body(str(e.detail), kind), e.status_code, headers=getattr(e, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, e: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return JSONResponse(error_body(f"Internal server error: {type(e).__name__}", "server_error"), 500)

    def tenant_of(request: Request) -> Tenant:
        return _authenticate(st(request), request)

    def model_card(s: ServerState, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": s.created, "owned_by": "realm-ext"}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        tenant, s = tenant_of(request), st(request)
        return {"object": "list", "data": [model_card(s, n) for n in s.models if tenant.config.grants(n)]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str, request: Request) -> dict[str, Any]:
        tenant, s = tenant_of(request), st(request)
        if name not in s.models or not tenant.config.grants(name):
            raise model_not_found(name)
        return model_card(s, name)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _Handler(st(request)).handle(request, "completion")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _Handler(st(request)).handle(request, "chat")

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        s = st(request)
        if s.draining:
            return JSONResponse({"status": "draining"}, 503)
        return JSONResponse({"status": "ok", "models": len(s.models)})

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(st(request).metrics.exposition(), media_type=CONTENT_TYPE)

    return app
