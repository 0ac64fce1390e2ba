"""A tiny stdlib HTTP client for raw checks (the openai SDK is the client everywhere else)."""

from __future__ import annotations

import json as jsonlib
import urllib.error
import urllib.request
from email.message import Message
from typing import Any


class Reply:
    def __init__(self, status: int, headers: Message, body: bytes) -> None:
        self.status_code = status
        self.headers = headers
        self.content = body

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return jsonlib.loads(self.content)


def request(
    method: str,
    url: str,
    *,
    json: Any = None,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 20,
) -> Reply:
    hdrs = dict(headers or {})
    data = content
    if json is not None:
        data = jsonlib.dumps(json).encode()
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310
            return Reply(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        return Reply(e.code, e.headers, e.read())


def get(url: str, **kw: Any) -> Reply:
    return request("GET", url, **kw)


def post(url: str, **kw: Any) -> Reply:
    return request("POST", url, **kw)
