"""The floor: a minimal aiohttp pass-through proxy (no auth, no routing, no accounting, no logs).

Forwards method, path and body to ``--upstream`` over one shared keep-alive session and returns the
answer's bytes (streamed chunk by chunk for SSE). Whatever a Python gateway adds beyond this is the
cost of its own work. Runs on uvloop, as our gateway does.

    python benchmarks/floor_proxy.py --port 8200 --upstream http://127.0.0.1:8099/openai/v1
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web


def make_app(upstream: str) -> web.Application:
    app = web.Application()

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
        app["session"] = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
        )
        yield
        await app["session"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        session: aiohttp.ClientSession = request.app["session"]
        headers = {"Content-Type": "application/json"}
        if "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]
        body = await request.read()
        url = upstream + request.path.removeprefix("/v1")
        async with session.request(request.method, url, data=body, headers=headers) as up:
            ctype = up.headers.get("Content-Type", "application/json")
            if not ctype.startswith("text/event-stream"):
                return web.Response(
                    body=await up.read(),
                    status=up.status,
                    content_type=None,
                    headers={"Content-Type": ctype},
                )
            resp = web.StreamResponse(status=up.status, headers={"Content-Type": ctype})
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL that /v1 is replaced with")
    args = parser.parse_args()
    web.run_app(
        make_app(args.upstream.rstrip("/")),
        host=args.host,
        port=args.port,
        access_log=None,
        print=lambda *_: None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
