"""The OpenAPI document: request bodies, the key schemes and every error answer.

The routes read their bodies as raw JSON (``BodyDep``: no pydantic on the hot path), so FastAPI
cannot see them. The pydantic models here exist for the document only: ``install`` adds their
JSON schemas, the bearer (and ``x-api-key``) security schemes and the error answers of each
operation to what FastAPI generates. They accept more than they list (``extra: allow``), as the
routes do: the provider decides on fields the gateway does not read.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(_Open):
    """OpenAI "Create chat completion"; for Anthropic models see docs/ml-server.md."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"examples": [
            {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}
        ]},
    )  # fmt: skip

    model: str = Field(min_length=1, description="provider/model or an alias")
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = None


class EmbeddingsRequest(_Open):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"examples": [{"model": "openai/text-embedding-3-small", "input": "a"}]},
    )
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]


class AnthropicMessage(_Open):
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class MessagesRequest(_Open):
    """Anthropic "Messages"."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"examples": [
            {"model": "anthropic/claude-haiku-4-5", "max_tokens": 64,
             "messages": [{"role": "user", "content": "Hello"}]}
        ]},
    )  # fmt: skip

    model: str = Field(min_length=1)
    messages: list[AnthropicMessage] = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    stream: bool | None = None


class CountTokensRequest(_Open):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"examples": [
            {"model": "anthropic/claude-haiku-4-5",
             "messages": [{"role": "user", "content": "Hello"}]}
        ]},
    )  # fmt: skip
    model: str = Field(min_length=1)
    messages: list[AnthropicMessage] = Field(min_length=1)


class ResponsesRequest(_Open):
    """OpenAI "Create a model response" (passed through to OpenAI)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"examples": [{"model": "openai/gpt-4o-mini", "input": "Hello"}]},
    )

    model: str = Field(min_length=1)
    input: str | list[dict[str, Any]] | None = None
    stream: bool | None = None


class StoredResponse(_Open):
    """OpenAI's Response object, as stored at OpenAI (retrieve, cancel)."""

    id: str
    object: Literal["response"]
    status: str | None = None
    output: list[dict[str, Any]] | None = None


class DeletedResponse(_Open):
    id: str
    object: str
    deleted: bool


class InputItemList(_Open):
    """The input items of a stored response (OpenAI's list shape)."""

    object: Literal["list"]
    data: list[dict[str, Any]]
    has_more: bool


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error shape, used by every route but /v1/messages."""

    error: ErrorDetail


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicErrorResponse(BaseModel):
    """Anthropic's error shape, used by /v1/messages."""

    type: Literal["error"]
    error: AnthropicErrorDetail


class MemoryMessage(BaseModel):
    role: str = Field(min_length=1)
    content: str | list[dict[str, Any]]


class MemoryAddRequest(BaseModel):
    """Mem0 "Add Memories" (docs/ml-server.md, Memory): at least one of the entity ids."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [
            {"messages": [{"role": "user", "content": "I am vegetarian."}], "user_id": "alice"}
        ]},
    )  # fmt: skip
    messages: str | list[MemoryMessage] = Field(min_length=1)
    user_id: str | None = Field(default=None, min_length=1, max_length=200)
    agent_id: str | None = Field(default=None, min_length=1, max_length=200)
    run_id: str | None = Field(default=None, min_length=1, max_length=200)
    metadata: dict[str, Any] | None = None
    infer: bool = True


class MemorySearchRequest(BaseModel):
    """Mem0 "Search Memories": ``filters`` takes equality on the entity ids (optionally AND)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"query": "food preferences", "user_id": "alice"}]},
    )
    query: str = Field(min_length=1)
    user_id: str | None = Field(default=None, min_length=1, max_length=200)
    agent_id: str | None = Field(default=None, min_length=1, max_length=200)
    run_id: str | None = Field(default=None, min_length=1, max_length=200)
    filters: dict[str, Any] | None = None
    top_k: int | None = Field(default=None, ge=1, le=100)
    limit: int | None = Field(default=None, ge=1, le=100)
    threshold: float | None = Field(default=None, ge=0, le=1)


_BODIES: dict[str, type[BaseModel]] = {
    "/v1/memories/": MemoryAddRequest,
    "/v1/memories/search/": MemorySearchRequest,
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/embeddings": EmbeddingsRequest,
    "/v1/messages": MessagesRequest,
    "/v1/messages/count_tokens": CountTokensRequest,
    "/v1/responses": ResponsesRequest,
}
_STREAMING = frozenset({"/v1/chat/completions", "/v1/messages", "/v1/responses"})
_STORED = "/v1/responses/{response_id}"
# 200 answers of the stored-response operations (documentation only, like the bodies).
_OK: dict[tuple[str, str], type[BaseModel]] = {
    (_STORED, "get"): StoredResponse,
    (_STORED, "delete"): DeletedResponse,
    (_STORED + "/input_items", "get"): InputItemList,
    (_STORED + "/cancel", "post"): StoredResponse,
}
# Query parameters the stored-response operations pass on to OpenAI.
_QUERY: dict[tuple[str, str], list[dict[str, Any]]] = {
    (_STORED, "get"): [
        {"name": "include[]", "in": "query", "required": False,
         "schema": {"type": "array", "items": {"type": "string"}},
         "description": "extra output to include (OpenAI's include[])"},
        {"name": "stream", "in": "query", "required": False, "schema": {"type": "boolean"},
         "description": "not offered: true gives 400"},
    ],
    (_STORED + "/input_items", "get"): [
        {"name": "after", "in": "query", "required": False, "schema": {"type": "string"}},
        {"name": "limit", "in": "query", "required": False,
         "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
        {"name": "order", "in": "query", "required": False,
         "schema": {"type": "string", "enum": ["asc", "desc"]}},
    ],
}  # fmt: skip
_PUBLIC = frozenset({"/health", "/ready", "/metrics"})
_ERRORS = {
    "400": "Invalid request: malformed JSON, or a parameter the model's provider cannot honour "
    "(param names it)",
    "401": "Missing or wrong API key",
    "403": "This key may not use the model (or the admin API)",
    "404": "Unknown model, or its provider is not configured; a retired model (code "
    "model_retired: the message names the date and the successor); a response id this key did "
    "not create (code response_not_found)",
    "405": "Method not allowed",
    "409": "The provider refused the request (conflict)",
    "413": "Body over MAX_BODY_BYTES",
    "422": "Schema violation",
    "429": "Rate limited (this key's limit or the provider's); see Retry-After",
    "500": "Unexpected server error (request id in the message)",
    "502": "The provider failed or rejected the server's credentials",
    "503": "Overloaded provider, open circuit, or the key store is unavailable",
    "504": "The provider or the request deadline timed out",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def build(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    models: list[type[BaseModel]] = [
        *_BODIES.values(), *dict.fromkeys(_OK.values()), ErrorResponse, AnthropicErrorResponse
    ]  # fmt: skip
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    doc["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "an API key of this server"},
        "x-api-key": {"type": "apiKey", "in": "header", "name": "x-api-key",
                      "description": "the same key, as the anthropic SDK sends it"},
    }  # fmt: skip
    for path, ops in doc["paths"].items():
        anthropic = path.startswith("/v1/messages")
        error_schema = _ref("AnthropicErrorResponse" if anthropic else "ErrorResponse")
        for method, op in ops.items():
            body = _BODIES.get(path)
            if body is not None and method == "post":
                op["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": _ref(body.__name__)}},
                }
            responses = op.setdefault("responses", {})
            ok = responses.setdefault("200", {"description": "OK"})
            if (path, method) in _QUERY:
                op["parameters"] = [*op.get("parameters", []), *_QUERY[(path, method)]]
            if (path, method) in _OK:
                ok["content"] = {"application/json": {"schema": _ref(_OK[(path, method)].__name__)}}
            elif path == "/metrics":
                ok["content"] = {"text/plain": {"schema": {"type": "string"}}}
            elif path in _STREAMING:
                ok["content"] = {
                    "application/json": {"schema": {"type": "object"}},
                    # Each event's data is a JSON chunk (or ``[DONE]``): any value.
                    "text/event-stream": {"schema": {}},
                }
            if path == "/ready":
                responses["503"] = {
                    "description": "Not ready (reason given)",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
                continue
            if path in _PUBLIC:
                continue
            op["security"] = [{"bearer": []}, {"x-api-key": []}] if anthropic else [{"bearer": []}]
            for status, text in _ERRORS.items():
                responses[status] = {
                    "description": text,
                    "content": {"application/json": {"schema": error_schema}},
                }
    app.openapi_schema = doc
    return doc


def install(app: FastAPI) -> None:
    app.openapi = lambda: build(app)  # type: ignore[method-assign]
