"""Quick overhead probe (not a test): added latency of the gateway at concurrency 1.

Starts a throwaway PostgreSQL, the fake provider as its own process and the server, then times the
same chat request sent directly to the fake provider and through the gateway. Prints figures only.

    .venv/bin/python -m ml_server.tests.overhead_probe [--requests 1500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from typing import Any

import aiohttp
import orjson

from ml_server.tests.pg import TempPostgres, free_port
from ml_server.tests.server_proc import ServerProcess, provider_env

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello benchmark"}]}
WARMUP = 200


async def measure(url: str, key: str, body: dict[str, Any], n: int) -> tuple[float, float]:
    """p50 and p99 in ms of ``n`` sequential POSTs (after a warm-up)."""
    latencies: list[float] = []
    data = orjson.dumps(body)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(headers=headers) as session:
        for i in range(n + WARMUP):
            started = time.perf_counter()
            async with session.post(url, data=data) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{url}: HTTP {resp.status}")
            if i >= WARMUP:
                latencies.append((time.perf_counter() - started) * 1000)
    latencies.sort()
    return statistics.median(latencies), latencies[int(len(latencies) * 0.99)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    port = free_port()
    fake = subprocess.Popen(
        [sys.executable, "-m", "ml_server.tests.fake_provider", "--port", str(port)]
    )
    fake_url = f"http://127.0.0.1:{port}"
    try:
        with TempPostgres() as pg:
            env = {"ENVIRONMENT": "staging", "ENABLE_FAKE_PROVIDER": "true"}
            server = ServerProcess({**env, **pg.env(), **provider_env(fake_url)}).start()
            try:
                key = server.cli("keys", "create", "--name", "probe").stdout.strip()
                direct_url = fake_url + "/openai/v1/chat/completions"
                gw_url = server.url + "/v1/chat/completions"
                for r in range(args.rounds):
                    d50, d99 = asyncio.run(
                        measure(direct_url, "sk-test-probe", BODY, args.requests)
                    )
                    via = {**BODY, "model": "openai/gpt-4o-mini"}
                    g50, g99 = asyncio.run(measure(gw_url, key, via, args.requests))
                    echo = {**BODY, "model": "fake/echo"}
                    e50, _ = asyncio.run(measure(gw_url, key, echo, args.requests))
                    print(
                        f"round {r}: direct p50 {d50:.3f} p99 {d99:.3f} ms | via gateway "
                        f"p50 {g50:.3f} p99 {g99:.3f} ms | added p50 {g50 - d50:.3f} ms, "
                        f"p99 {g99 - d99:.3f} ms | built-in fake/echo p50 {e50:.3f} ms"
                    )
            finally:
                server.stop()
    finally:
        fake.terminate()
        fake.wait()


if __name__ == "__main__":
    main()
