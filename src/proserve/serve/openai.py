"""OpenAI-compatible request schemas and error responses, shared by the emulator and the gateway.

Validation is pydantic's, so every malformed field gets a message naming it; errors use OpenAI's
JSON shape ``{"error": {"message", "type", "param", "code"}}`` with the right HTTP status.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, Literal

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_BODY_BYTES = 4 * 1024 * 1024  # larger bodies get 413 before any parsing


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class _Common(BaseModel):
    # Unknown fields are accepted and ignored, as vLLM and OpenAI do (clients send many).
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    priority: int = 0  # vLLM convention: lower = more urgent
    # vLLM's per-request extra arguments (SamplingParams.extra_args); we read SLO fields here
    vllm_xargs: dict[str, str | int | float | list[Any]] | None = None
    n: int = Field(default=1, ge=1, le=1)

    @property
    def output_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Common):
    prompt: str | list[int] | list[str]

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v):
        if isinstance(v, list):
            if not v:
                raise ValueError("prompt must not be empty")
            if len(v) > 1 and all(isinstance(x, str) for x in v):
                raise ValueError("batched string prompts are not supported; send one prompt")
        elif not v:
            raise ValueError("prompt must not be empty")
        return v


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)


def prompt_tokens(req: CompletionRequest | ChatRequest) -> int:
    """Token count of the prompt. Token-id prompts are exact; text is estimated at 4 characters
    per token (the emulator and gateway have no tokenizer; documented in docs/ARCHITECTURE.md)."""
    if isinstance(req, CompletionRequest):
        p = req.prompt
        if isinstance(p, list):
            return len(p) if isinstance(p[0], int) else max(1, len(p[0]) // 4)
        return max(1, len(p) // 4)
    total = 0
    for m in req.messages:
        c = m.content
        text = c if isinstance(c, str) else "".join(
            str(part.get("text", "")) for part in (c or []) if isinstance(part, dict))
        total += 4 + len(text) // 4  # per-message template overhead, as chat templates add
    return max(1, total)


# Prefix identity of a prompt the server cannot tokenize: text is cut into chunks of this many
# characters (~16 tokens at the 4 characters per token ``prompt_tokens`` assumes).
TEXT_CHUNK_CHARS = 64


def prompt_prefix(req: CompletionRequest | ChatRequest, block: int = 16):
    """The prompt's prefix identity (:class:`~proserve.core.request.Prefix`) for prefix caching,
    or None. Token-id prompts: hash-chained ids of ``block``-token chunks, exact, as vLLM hashes
    its blocks. Text (completion text or chat messages joined by role): hash-chained ids of
    :data:`TEXT_CHUNK_CHARS`-character chunks, one per ~``block`` estimated tokens (documented:
    an approximation, since there is no tokenizer here). Hashes are blake2b, stable across
    processes (Python's ``hash`` of text is salted per process)."""
    import hashlib

    from ..core.request import Prefix

    if isinstance(req, CompletionRequest):
        p = req.prompt
        if isinstance(p, list) and p and isinstance(p[0], int):
            chunks = [",".join(map(str, p[i:i + block])).encode()
                      for i in range(0, len(p) - len(p) % block, block)]
            size = block
        else:
            text = p if isinstance(p, str) else (p[0] if p else "")
            chunks, size = _text_chunks(text), block
    else:
        text = "".join(f"<{m.role}>" + (m.content if isinstance(m.content, str) else "".join(
            str(part.get("text", "")) for part in (m.content or []) if isinstance(part, dict)))
            for m in req.messages)
        chunks, size = _text_chunks(text), block
    if not chunks:
        return None
    ids, h = [], b""
    for c in chunks:
        h = hashlib.blake2b(h + c, digest_size=8).digest()
        ids.append(h)
    return Prefix(tuple(ids), size)


def _text_chunks(text: str) -> list[bytes]:
    n = len(text) - len(text) % TEXT_CHUNK_CHARS
    return [text[i:i + TEXT_CHUNK_CHARS].encode() for i in range(0, n, TEXT_CHUNK_CHARS)]


class IncompleteStream(Exception):
    """An SSE stream that closed without its final ``data: [DONE]``."""


async def sse_json(lines: AsyncIterable[bytes]) -> AsyncIterator[dict[str, Any]]:
    """The JSON chunks of an OpenAI-style SSE stream (client side: bench, profiler).

    Stops at ``data: [DONE]``; raises :class:`IncompleteStream` if the stream ends before it and
    ``ValueError`` on a chunk that is not JSON. Error chunks (``{"error": ...}``) are yielded for
    the caller to judge.
    """
    async for line in lines:
        if not line.startswith(b"data: "):
            continue
        payload = line[6:].strip()
        if payload == b"[DONE]":
            return
        yield json.loads(payload)
    raise IncompleteStream("stream ended before [DONE]")


def chunk_tokens(choice: dict[str, Any]) -> int:
    """Output tokens carried by one streamed choice: its ``token_ids`` where the engine sends
    them (vLLM with ``return_token_ids``, needed when it runs without a tokenizer), else one per
    non-empty text/content delta."""
    ids = choice.get("token_ids")
    if isinstance(ids, list) and ids:
        return len(ids)
    return 1 if choice.get("text") or (choice.get("delta") or {}).get("content") else 0


def error(status: int, message: str, *, type_: str | None = None, param: str | None = None,
          code: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    """An OpenAI-style JSON error response."""
    kind = type_ or {400: "invalid_request_error", 401: "authentication_error",
                     403: "permission_error", 404: "not_found_error", 413: "invalid_request_error",
                     429: "rate_limit_error"}.get(status, "server_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def models_response(model: str, max_model_len: int) -> web.Response:
    """``GET /v1/models`` for a server that serves one model."""
    return web.json_response({"object": "list", "data": [{
        "id": model, "object": "model", "created": 0, "owned_by": "proserve",
        "max_model_len": max_model_len}]})


def models_list_response(models: list[dict[str, Any]]) -> web.Response:
    """``GET /v1/models`` for a server that serves several: each entry's ``id`` and extra
    fields (``max_model_len``, ``aliases``)."""
    return web.json_response({"object": "list", "data": [
        {"object": "model", "created": 0, "owned_by": "proserve", **m} for m in models]})


def openai_app(server: Any) -> web.Application:
    """The routes every OpenAI-compatible server of ours exposes, bound to ``server``'s
    ``completions``, ``chat``, ``models``, ``health`` and ``metrics`` handlers."""
    app = web.Application(client_max_size=2 * MAX_BODY_BYTES)  # parse_body answers 413 itself
    app.router.add_post("/v1/completions", server.completions)
    app.router.add_post("/v1/chat/completions", server.chat)
    app.router.add_get("/v1/models", server.models)
    app.router.add_get("/health", server.health)
    app.router.add_get("/metrics", server.metrics)
    return app


async def parse_body(request: web.Request, schema: type[BaseModel]) -> BaseModel | web.Response:
    """Read and validate a JSON body; on failure the OpenAI-style error response to return."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return error(413, f"request body of {request.content_length} bytes exceeds the "
                          f"{MAX_BODY_BYTES}-byte limit")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return error(413, f"request body exceeds the {MAX_BODY_BYTES}-byte limit")
    except RequestPayloadError as e:  # e.g. a body that is not the gzip its header says
        why = getattr(e.__cause__, "message", None) or "it could not be read"
        resp = error(400, f"malformed request body: {why}")
        resp.force_close()  # the rest of the body is unreadable: do not keep the connection
        return resp
    if len(raw) > MAX_BODY_BYTES:
        return error(413, f"request body exceeds the {MAX_BODY_BYTES}-byte limit")
    try:
        return schema.model_validate_json(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        if first["type"] == "json_invalid":
            return error(400, f"malformed JSON body: {first['msg']}")
        more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        return error(400, f"{loc or 'body'}: {first['msg']}{more}", param=loc or None)
