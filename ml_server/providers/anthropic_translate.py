"""OpenAI chat <-> Anthropic Messages, both directions, without silent loss.

Every OpenAI chat parameter is either translated or refused with a 400 that names it and says
why (docs/ml-server.md, "Claude through the OpenAI API", has the table). References:
OpenAI "Create chat completion" (platform.openai.com/docs/api-reference/chat/create) and
Anthropic "Messages" (platform.claude.com/docs/en/api/messages), "Extended thinking",
"Structured outputs", "Prompt caching", "PDF support", "Streaming messages".

Conventions where OpenAI's format has no field of its own (the ones LiteLLM and others use):
- thinking comes back as ``message.reasoning_content`` (text) and ``message.thinking_blocks``
  (``[{"type": "thinking", "thinking", "signature"}]`` or ``{"type": "redacted_thinking",
  "data"}``); send ``thinking_blocks`` back on the assistant message of the next turn (needed
  for tool use with thinking). Streams carry ``delta.reasoning_content`` as it comes and one
  ``delta.thinking_blocks`` entry, with its signature, when a thinking block ends.
- usage: ``prompt_tokens`` counts all input (uncached + cache reads + cache writes);
  ``prompt_tokens_details.cached_tokens`` = cache reads, ``.cache_write_tokens`` = cache writes;
  ``completion_tokens_details.reasoning_tokens`` when Anthropic reports thinking tokens.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable
from typing import Any

import orjson

from ml_server.providers.base import ProviderError, Usage

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    # The turn is not finished (a long server-side step paused): like OpenAI's "length", the
    # client continues by sending the conversation back.
    "pause_turn": "length",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# reasoning_effort -> thinking budget_tokens (Anthropic: >= 1024 and < max_tokens).
EFFORT_BUDGETS = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 16384, "xhigh": 32768,
                  "max": 65536}  # fmt: skip
# reasoning_effort -> output_config.effort, for models with adaptive thinking only.
ADAPTIVE_EFFORT = {"minimal": "low", "low": "low", "medium": "medium", "high": "high",
                   "xhigh": "xhigh", "max": "max"}  # fmt: skip

# The forced tool that carries response_format json_object (Anthropic has no JSON mode).
JSON_TOOL = "json_object_response"

# Parameters refused unless they hold their no-effect value (value -> still accepted).
_NO_EQUIVALENT: dict[str, tuple[tuple[Any, ...], str]] = {
    "frequency_penalty": ((None, 0, 0.0), "Anthropic has no frequency penalty"),
    "presence_penalty": ((None, 0, 0.0), "Anthropic has no presence penalty"),
    "logit_bias": ((None, {}), "Anthropic has no token biasing"),
    "logprobs": ((None, False), "Anthropic returns no log probabilities"),
    "top_logprobs": ((None, 0), "Anthropic returns no log probabilities"),
    "seed": ((None,), "Anthropic has no sampling seed"),
    "store": ((None, False), "Anthropic does not store completions"),
    "metadata": ((None, {}), "OpenAI's metadata is for stored completions; use 'user'"),
    "audio": ((None,), "Anthropic models do not produce audio"),
    "prediction": ((None,), "Anthropic has no predicted outputs"),
    "web_search_options": ((None,), "web search is not offered through this translation"),
    "verbosity": ((None,), "Anthropic has no verbosity setting"),
    "prompt_cache_key": ((None,), "Anthropic caches by cache_control markers on content parts"),
    "prompt_cache_retention": ((None,), "use cache_control {'type': 'ephemeral', 'ttl': ...}"),
    "prompt_cache_options": ((None, {}), "use cache_control markers on content parts"),
    "moderation": ((None,), "Anthropic has no moderation option"),
    "functions": ((None,), "the legacy functions API is not translated; use 'tools'"),
    "function_call": ((None,), "the legacy functions API is not translated; use 'tool_choice'"),
}
# Translated (or consumed by the provider) here.
_TRANSLATED = frozenset({
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop",
    "stream", "stream_options", "user", "safety_identifier", "tools", "tool_choice",
    "parallel_tool_calls", "response_format", "reasoning_effort", "n", "service_tier",
    "modalities",
    # Anthropic-native extensions accepted as they are:
    "top_k", "thinking", "cache_control",
})  # fmt: skip


def bad(message: str, param: str | None = None) -> ProviderError:
    return ProviderError(
        400,
        message,
        type="invalid_request_error",
        code="unsupported_parameter" if param else "invalid_value",
        kind="http_4xx",
        param=param,
    )


def _refuse(param: str, why: str) -> ProviderError:
    return bad(f"'{param}' is not supported for Anthropic models: {why}", param)


# --- request: content ----------------------------------------------------------------------------
def _with_cache(block: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    cache = part.get("cache_control")
    if cache is not None:
        block["cache_control"] = cache
    return block


def _data_url(url: str, where: str) -> tuple[str, str]:
    header, sep, data = url.partition(",")
    if not sep or ";base64" not in header:
        raise bad(f"{where} must be a base64 data URL (data:<type>;base64,...)")
    return header[5:].split(";")[0], data


def _image_block(part: dict[str, Any], where: str) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise bad(f"{where}.image_url.url must be a string")
    if url.startswith("data:"):
        media_type, data = _data_url(url, f"{where}.image_url.url")
        block = {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type or "image/png", "data": data},
        }
    else:
        block = {"type": "image", "source": {"type": "url", "url": url}}
    return _with_cache(block, part)


def _file_block(part: dict[str, Any], where: str) -> dict[str, Any]:
    file = part.get("file")
    if not isinstance(file, dict):
        raise bad(f"{where}.file must be an object with file_data")
    if file.get("file_id") is not None:
        raise bad(
            f"{where}.file.file_id: OpenAI file ids do not exist at Anthropic; "
            "send the document inline as file.file_data (a base64 data URL)",
            f"{where}.file.file_id",
        )
    data_url = file.get("file_data")
    if not isinstance(data_url, str):
        raise bad(f"{where}.file.file_data must be a base64 data URL")
    if not data_url.startswith("data:"):  # OpenAI also takes bare base64 with a filename
        name = str(file.get("filename") or "")
        if not name.lower().endswith(".pdf"):
            raise bad(f"{where}.file.file_data must be a data URL (data:application/pdf;...)")
        data_url = "data:application/pdf;base64," + data_url
    media_type, data = _data_url(data_url, f"{where}.file.file_data")
    if media_type == "application/pdf":
        source: dict[str, Any] = {"type": "base64", "media_type": media_type, "data": data}
    elif media_type == "text/plain":
        try:
            text = base64.b64decode(data, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise bad(f"{where}.file.file_data is not base64 UTF-8 text") from exc
        source = {"type": "text", "media_type": "text/plain", "data": text}
    else:
        raise bad(
            f"{where}.file: documents of type {media_type!r} are not supported for Anthropic "
            "models (application/pdf and text/plain are)",
            f"{where}.file",
        )
    block: dict[str, Any] = {"type": "document", "source": source}
    if isinstance(file.get("filename"), str) and file["filename"]:
        block["title"] = file["filename"]
    return _with_cache(block, part)


def _content_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise bad(f"{where} must be a string or an array of content parts")
    blocks: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        at = f"{where}[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise bad(f"{at}.text must be a string")
            blocks.append(_with_cache({"type": "text", "text": part["text"]}, part))
        elif kind == "image_url":
            blocks.append(_image_block(part, at))
        elif kind == "file":
            blocks.append(_file_block(part, at))
        elif kind == "refusal":  # an assistant's earlier refusal, as text
            blocks.append({"type": "text", "text": str(part.get("refusal", ""))})
        else:
            raise bad(
                f"{at}: content part type {kind!r} is not supported for Anthropic models "
                "(text, image_url and file are)",
                f"{at}.type",
            )
    return blocks


def _system_text(content: Any, where: str) -> list[dict[str, Any]]:
    blocks = _content_blocks(content, where)
    for b in blocks:
        if b["type"] != "text":
            raise bad(f"{where}: system messages take text parts only")
    return blocks


def _thinking_blocks(msg: dict[str, Any], where: str) -> list[dict[str, Any]]:
    raw = msg.get("thinking_blocks")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise bad(f"{where}.thinking_blocks must be an array")
    out = []
    for i, b in enumerate(raw):
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "thinking" and isinstance(b.get("signature"), str):
            out.append(
                {"type": "thinking", "thinking": str(b.get("thinking", "")),
                 "signature": b["signature"]}
            )  # fmt: skip
        elif kind == "redacted_thinking" and isinstance(b.get("data"), str):
            out.append({"type": "redacted_thinking", "data": b["data"]})
        else:
            raise bad(
                f"{where}.thinking_blocks[{i}] must be {{type: thinking, thinking, signature}} "
                "or {type: redacted_thinking, data}, as returned by this server"
            )
    return out


def _tool_calls(msg: dict[str, Any], where: str) -> list[dict[str, Any]]:
    blocks = []
    for i, call in enumerate(msg.get("tool_calls") or []):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise bad(f"{where}.tool_calls[{i}] must be {{id, type: function, function: {{name}}}}")
        try:
            args = orjson.loads(fn.get("arguments") or "{}")
        except orjson.JSONDecodeError as exc:
            raise bad(f"{where}.tool_calls[{i}].function.arguments must be a JSON object") from exc
        if not isinstance(args, dict):
            raise bad(f"{where}.tool_calls[{i}].function.arguments must be a JSON object")
        blocks.append({"type": "tool_use", "id": call.get("id"), "name": fn["name"], "input": args})
    return blocks


def _messages(body: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, messages). System/developer messages before the first other message are
    the system prompt; later ones stay in place as user-turn text marked ``<system>``."""
    system: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})

    raw = body.get("messages")
    if not isinstance(raw, list):
        raise bad("'messages' must be an array", "messages")
    for i, msg in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise bad(f"{where} must be an object")
        role = msg.get("role")
        if msg.get("name") is not None:
            raise _refuse(f"{where}.name", "Anthropic messages carry no participant names")
        if role in ("system", "developer"):
            blocks = _system_text(msg.get("content"), f"{where}.content")
            if not messages:
                system.extend(blocks)
            else:
                for b in blocks:
                    b["text"] = f"<system>\n{b['text']}\n</system>"
                add("user", blocks)
        elif role == "user":
            add("user", _content_blocks(msg.get("content"), f"{where}.content"))
        elif role == "assistant":
            blocks = _thinking_blocks(msg, where)
            blocks += _content_blocks(msg.get("content"), f"{where}.content")
            if isinstance(msg.get("refusal"), str) and msg["refusal"] and not msg.get("content"):
                blocks.append({"type": "text", "text": msg["refusal"]})
            blocks += _tool_calls(msg, where)
            add("assistant", blocks)
        elif role == "tool":
            content = msg.get("content")
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": msg.get("tool_call_id")}
            if isinstance(content, str):
                result["content"] = content
            else:
                parts = _content_blocks(content, f"{where}.content")
                for b in parts:
                    if b["type"] not in ("text", "image", "document"):
                        raise bad(f"{where}.content: tool results take text, images, files")
                result["content"] = parts
            add("user", [result])
        elif role == "function":
            raise _refuse(f"{where}.role", "the legacy 'function' role is not translated; "
                          "use 'tool' messages")  # fmt: skip
        else:
            raise bad(f"{where}.role {role!r} is not supported", f"{where}.role")
    return system, messages


# --- request: parameters -----------------------------------------------------------------------
def _tools(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise bad("'tools' must be an array of {type: 'function', function: {...}}", "tools")
    out = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or t.get("type") != "function":
            kind = t.get("type") if isinstance(t, dict) else type(t).__name__
            raise bad(
                f"tools[{i}]: tool type {kind!r} is not supported for Anthropic models "
                "(only 'function' tools are)",
                f"tools[{i}].type",
            )
        fn = t.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise bad(f"tools[{i}].function.name is required", f"tools[{i}].function.name")
        tool: dict[str, Any] = {
            "name": fn["name"],
            "description": fn.get("description") or "",
            "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
        }
        if fn.get("strict"):
            tool["strict"] = True
        _with_cache(tool, t)
        out.append(tool)
    return out


def _tool_choice(body: dict[str, Any]) -> dict[str, Any] | None:
    choice = body.get("tool_choice")
    out: dict[str, Any] | None
    if choice is None:
        out = None
    elif choice == "auto":
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        out = {"type": "none"}
    elif (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(choice.get("function"), dict)
        and isinstance(choice["function"].get("name"), str)
    ):
        out = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise bad(
            "'tool_choice' must be 'auto', 'none', 'required' or {type: 'function', function: "
            "{name}} for Anthropic models (allowed_tools and custom tools are not translated)",
            "tool_choice",
        )
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise bad("'parallel_tool_calls' must be a boolean", "parallel_tool_calls")
    if parallel is False and body.get("tools"):
        out = out or {"type": "auto"}
        if out["type"] != "none":
            out["disable_parallel_tool_use"] = True
    return out


def _sampling(body: dict[str, Any], out: dict[str, Any]) -> None:
    temperature = body.get("temperature")
    top_p = body.get("top_p")
    if temperature is not None:
        if not isinstance(temperature, int | float) or not 0 <= temperature <= 1:
            raise bad(
                f"'temperature' {temperature!r} is outside Anthropic's range 0 to 1 (OpenAI's "
                "0 to 2 has no equivalent above 1)",
                "temperature",
            )
        out["temperature"] = temperature
    if top_p is not None:
        if not isinstance(top_p, int | float) or not 0 <= top_p <= 1:
            raise bad("'top_p' must be between 0 and 1", "top_p")
        if top_p == 1:
            pass  # nucleus over the whole distribution: the same as not sending it
        elif temperature is not None:
            raise bad(
                "'temperature' and 'top_p' together are not supported for Anthropic models "
                "(current Claude models accept one of them); send only one",
                "top_p",
            )
        else:
            out["top_p"] = top_p
    if body.get("top_k") is not None:
        out["top_k"] = body["top_k"]


def _max_tokens(body: dict[str, Any], limit: int, cap: int | None = None) -> int:
    """The client's max tokens (capped to the model's max output ``cap`` when known: an upper
    bound that the model cannot exceed anyway), else ``limit``."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad(f"'{key}' must be a positive integer", key)
            return min(value, cap) if cap is not None else value
    return limit


def _reasoning(body: dict[str, Any], out: dict[str, Any], adaptive: bool) -> None:
    effort = body.get("reasoning_effort")
    if body.get("thinking") is not None:
        if effort is not None:
            raise bad("send 'reasoning_effort' or 'thinking', not both", "thinking")
        out["thinking"] = body["thinking"]
        return
    if effort is None or effort == "none":
        return
    if effort not in EFFORT_BUDGETS:
        raise bad(
            f"'reasoning_effort' must be one of none, {', '.join(EFFORT_BUDGETS)}",
            "reasoning_effort",
        )
    if adaptive:
        out["thinking"] = {"type": "adaptive"}
        out.setdefault("output_config", {})["effort"] = ADAPTIVE_EFFORT[effort]
        return
    budget = min(EFFORT_BUDGETS[effort], out["max_tokens"] - 1)
    if budget < 1024:
        raise bad(
            "reasoning_effort needs max_completion_tokens above 1024 for Anthropic models "
            "(the thinking budget is at least 1024 tokens and counts toward it)",
            "reasoning_effort",
        )
    out["thinking"] = {"type": "enabled", "budget_tokens": budget}


def _response_format(body: dict[str, Any], out: dict[str, Any]) -> None:
    fmt = body.get("response_format")
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise bad("response_format.json_schema.schema must be an object", "response_format")
        out.setdefault("output_config", {})["format"] = {"type": "json_schema", "schema": schema}
        return
    if kind == "json_object":
        if out.get("tools"):
            raise bad(
                "response_format json_object cannot be combined with tools for Anthropic models "
                "(it is carried by a forced tool); use json_schema, which can",
                "response_format",
            )
        if out.get("thinking"):
            raise bad(
                "response_format json_object cannot be combined with thinking for Anthropic "
                "models (a forced tool is not allowed with thinking); use json_schema",
                "response_format",
            )
        out["tools"] = [
            {
                "name": JSON_TOOL,
                "description": "Give your whole answer as this tool's input: a JSON object.",
                "input_schema": {"type": "object", "additionalProperties": True},
            }
        ]
        out["tool_choice"] = {"type": "tool", "name": JSON_TOOL}
        return
    raise bad("response_format.type must be text, json_object or json_schema", "response_format")


def to_anthropic(
    model: str,
    body: dict[str, Any],
    max_output: int,
    *,
    adaptive_thinking: bool = False,
    cap: int | None = None,
) -> dict[str, Any]:
    """OpenAI chat request -> Anthropic Messages request.

    Args:
        max_output: max_tokens when the client sets none (OpenAI's "up to the model's limit":
            the model's max output from the catalogue).
        cap: the model's max output from the catalogue (None: unknown); a client's larger
            max_tokens is capped to it.
        adaptive_thinking: the model takes ``thinking: adaptive`` with an effort (catalogue).
    Raises:
        ProviderError: 400 naming the parameter that has no faithful translation.
    """
    for key, value in body.items():
        if key in _TRANSLATED or value is None:
            continue
        rule = _NO_EQUIVALENT.get(key)
        if rule is None:
            raise _refuse(key, "this parameter is not known to the Anthropic translation")
        allowed, why = rule
        if value not in allowed:
            raise _refuse(key, why)
    n = body.get("n")
    if n is not None and n != 1:
        raise _refuse("n", "Anthropic returns one choice per request; send n separate requests")
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise _refuse("modalities", "Anthropic models produce text only")
    opts = body.get("stream_options")
    if opts is not None and (
        not isinstance(opts, dict) or set(opts) - {"include_usage", "include_obfuscation"}
    ):
        raise _refuse("stream_options", "only include_usage is translated")

    system, messages = _messages(body)
    out: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": _max_tokens(body, max_output, cap),
    }
    if system:
        if any("cache_control" in b for b in system):
            out["system"] = system
        else:
            out["system"] = "\n\n".join(b["text"] for b in system if b["text"])
    _sampling(body, out)
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("stream"):
        out["stream"] = True
    user = body.get("safety_identifier") or body.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    tier = body.get("service_tier")
    if tier is not None:
        if tier not in ("auto", "default"):
            raise _refuse("service_tier", f"{tier!r} has no Anthropic equivalent (auto, default)")
        out["service_tier"] = "auto" if tier == "auto" else "standard_only"
    tools = _tools(body)
    if tools is not None:
        out["tools"] = tools
    choice = _tool_choice(body)
    if choice is not None:
        out["tool_choice"] = choice
    if body.get("cache_control") is not None:
        out["cache_control"] = body["cache_control"]
    _reasoning(body, out, adaptive_thinking)
    if out.get("thinking") and out["thinking"].get("type") != "disabled":
        if out.get("temperature") not in (None, 1) or "top_k" in out:
            raise bad(
                "thinking (reasoning_effort) is not compatible with temperature or top_k for "
                "Anthropic models",
                "temperature",
            )
        if choice is not None and choice["type"] in ("any", "tool"):
            raise bad(
                "with thinking (reasoning_effort), Anthropic models take tool_choice 'auto' or "
                "'none' only",
                "tool_choice",
            )
    _response_format(body, out)
    return out


# --- response ------------------------------------------------------------------------------------
def usage_of(u: Any) -> tuple[Usage, dict[str, Any]]:
    """Anthropic usage -> (our Usage, OpenAI's usage object)."""
    if not isinstance(u, dict):
        u = {}
    read = int(u.get("cache_read_input_tokens") or 0)
    write = int(u.get("cache_creation_input_tokens") or 0)
    prompt = int(u.get("input_tokens") or 0) + read + write
    completion = int(u.get("output_tokens") or 0)
    openai: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": read, "cache_write_tokens": write},
    }
    details = u.get("output_tokens_details")
    if isinstance(details, dict) and details.get("thinking_tokens") is not None:
        openai["completion_tokens_details"] = {"reasoning_tokens": int(details["thinking_tokens"])}
    usage = Usage(prompt, completion)
    _fill_usage_details(usage, read, write, details)
    return usage, openai


def _fill_usage_details(usage: Usage, read: int, write: int, details: Any) -> None:
    """Set the optional cache/reasoning fields where ``Usage`` has them (the accounting work)."""
    for attr, value in (("cached_tokens", read), ("cache_write_tokens", write)):
        if hasattr(usage, attr):
            setattr(usage, attr, value)
    if isinstance(details, dict) and hasattr(usage, "reasoning_tokens"):
        usage.reasoning_tokens = int(details.get("thinking_tokens") or 0)


def from_anthropic(data: dict[str, Any], model: str) -> tuple[dict[str, Any], Usage]:
    """Anthropic Messages response -> OpenAI chat.completion."""
    text: list[str] = []
    reasoning: list[str] = []
    thinking: list[dict[str, Any]] = []
    tool_calls: list[dict[str, Any]] = []
    json_answer = False
    for block in data.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            text.append(block.get("text", ""))
        elif kind == "thinking":
            reasoning.append(block.get("thinking", ""))
            thinking.append(
                {"type": "thinking", "thinking": block.get("thinking", ""),
                 "signature": block.get("signature", "")}
            )  # fmt: skip
        elif kind == "redacted_thinking":
            thinking.append({"type": "redacted_thinking", "data": block.get("data", "")})
        elif kind == "tool_use" and block.get("name") == JSON_TOOL:
            text.append(orjson.dumps(block.get("input") or {}).decode())
            json_answer = True
        elif kind == "tool_use":
            tool_calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": orjson.dumps(block.get("input") or {}).decode(),
                    },
                }
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text else None}
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if thinking:
        message["thinking_blocks"] = thinking
    if tool_calls:
        message["tool_calls"] = tool_calls
    reason = str(data.get("stop_reason"))
    finish = "stop" if json_answer and reason == "tool_use" else STOP_REASONS.get(reason, "stop")
    usage, openai_usage = usage_of(data.get("usage"))
    return (
        {
            "id": f"chatcmpl-{data.get('id', '')}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": data.get("model", model),
            "choices": [
                {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
            ],
            "usage": openai_usage,
        },
        usage,
    )


# --- stream errors -------------------------------------------------------------------------------
def stream_error(provider: str, err: Any) -> ProviderError:
    """An ``event: error`` inside a 200 stream -> the error its HTTP form would have been."""
    err = err if isinstance(err, dict) else {}
    kind = str(err.get("type") or "api_error")
    message = f"provider {provider} failed mid-stream ({kind}): {err.get('message', '')}"
    if kind == "overloaded_error":
        return ProviderError(503, message, code="provider_overloaded", kind="http_5xx")
    if kind == "rate_limit_error":
        return ProviderError(
            429, message, type="rate_limit_error", code="rate_limit_exceeded", kind="rate_limited"
        )
    if kind in ("invalid_request_error", "request_too_large"):
        return ProviderError(
            400, message, type="invalid_request_error", code="provider_bad_request",
            kind="http_4xx",
        )  # fmt: skip
    return ProviderError(502, message, code="provider_error", kind="http_5xx")


MaxOutput = Callable[[str], int | None]
