"""What our gateway adds to a request, next to the floor (a minimal aiohttp pass-through).

Starts, all on 127.0.0.1: the fake provider (ml_server/tests/fake_provider.py) as its own process,
the floor proxy (benchmarks/floor_proxy.py), a throwaway PostgreSQL and our gateway as
``python -m ml_server serve`` (uvicorn, uvloop + httptools, one worker) with API-key auth and
usage accounting on, as in production. The load generator is an aiohttp client in this process.

Phases:
  a) concurrency 1, 0 ms provider, requests interleaved direct / floor / ours: p50/p90/p99 each
     and the added p50/p99 versus direct;
  b) closed loop at concurrency 64 against a 20 ms provider: req/s and p99 for each path;
  c) streaming: time to the first ``data:`` event, added versus direct;
  d) our gateway's resident memory after the run, and its start to the first /health 200.

Prints a final ``RESULT ...`` line. Run: ``make bench`` or
``.venv/bin/python benchmarks/gateway_overhead.py [--requests 2000] [--seconds 5] ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import orjson
import uvloop

from ml_server.tests.pg import TempPostgres, free_port
from ml_server.tests.server_proc import ServerProcess, provider_env

HERE = Path(__file__).resolve().parent
FAKE_KEY = "sk-test-not-a-real-key-bench"
MESSAGES = [{"role": "user", "content": "hello benchmark, how are you today?"}]
# The fake provider on uvloop too, so that all three processes run the same event loop.
FAKE_CMD = (
    "import sys, uvloop; from aiohttp import web; "
    "from ml_server.tests.fake_provider import FakeProvider; "
    "p = int(sys.argv[1]); "
    "web.run_app(FakeProvider('127.0.0.1', p).make_app(), host='127.0.0.1', port=p, "
    "access_log=None, print=lambda *_: None, loop=uvloop.new_event_loop())"
)


@dataclass
class Target:
    name: str
    url: str  # .../chat/completions
    key: str
    prefix: str  # model prefix: "" direct/floor, "openai/" ours
    pid: int  # the process serving this path (the fake provider for "direct")

    def body(self, model: str, *, stream: bool = False) -> bytes:
        data: dict[str, object] = {"model": self.prefix + model, "messages": MESSAGES}
        if stream:
            data["stream"] = True
        return orjson.dumps(data)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))]


def session_for(t: Target, limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {t.key}", "Content-Type": "application/json"},
        connector=aiohttp.TCPConnector(limit=limit),
        cookie_jar=aiohttp.DummyCookieJar(),
    )


async def one(session: aiohttp.ClientSession, url: str, body: bytes) -> float:
    started = time.perf_counter()
    async with session.post(url, data=body) as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status}: {(await resp.read())[:300]!r}")
    return (time.perf_counter() - started) * 1000


async def first_chunk(session: aiohttp.ClientSession, url: str, body: bytes) -> float:
    """ms from sending a streamed request to its first ``data:`` line (then reads to the end)."""
    started = time.perf_counter()
    ttfc = 0.0
    async with session.post(url, data=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status}: {(await resp.read())[:300]!r}")
        async for line in resp.content:
            if line.startswith(b"data:"):
                ttfc = (time.perf_counter() - started) * 1000
                break
        await resp.read()
    return ttfc


async def interleaved(
    targets: list[Target],
    n: int,
    warmup: int,
    model: str,
    fn: Callable[[aiohttp.ClientSession, str, bytes], Awaitable[float]],
    stream: bool,
) -> dict[str, list[float]]:
    """``n`` sequential rounds, each sending one request to every target (order rotating)."""
    sessions = [session_for(t, 1) for t in targets]
    bodies = [t.body(model, stream=stream) for t in targets]
    out: dict[str, list[float]] = {t.name: [] for t in targets}
    try:
        for i in range(n + warmup):
            for k in range(len(targets)):
                j = (i + k) % len(targets)
                ms = await fn(sessions[j], targets[j].url, bodies[j])
                if i >= warmup:
                    out[targets[j].name].append(ms)
    finally:
        for s in sessions:
            await s.close()
    return out


async def closed_loop(
    t: Target, concurrency: int, seconds: float, model: str
) -> tuple[float, float, float]:
    """req/s, p99 ms, and the serving process's CPU µs per request, of ``concurrency`` workers
    sending back to back for ``seconds``."""
    body = t.body(model)
    latencies: list[float] = []
    async with session_for(t, concurrency) as session:
        # Warm the connection pool first.
        await asyncio.gather(*(one(session, t.url, body) for _ in range(concurrency)))
        end = time.perf_counter() + seconds
        started = time.perf_counter()
        cpu = cpu_seconds(t.pid)

        async def worker() -> None:
            while time.perf_counter() < end:
                latencies.append(await one(session, t.url, body))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        cpu_us = (cpu_seconds(t.pid) - cpu) / len(latencies) * 1e6
    return len(latencies) / elapsed, pct(latencies, 0.99), cpu_us


def cpu_seconds(pid: int) -> float:
    """CPU time a process and its children (uvicorn workers) have run so far, all threads
    (the scheduler's exact count)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            total += int((task / "schedstat").read_text().split()[0])
            children = (task / "children").read_text().split()
            total += int(sum(cpu_seconds(int(c)) for c in children) * 1e9)
    return total / 1e9


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class TimedServer(ServerProcess):
    """ServerProcess that measures start to the first /health 200 at 10 ms resolution.

    ``root``: the source tree to run (another checkout for ``--baseline``).
    """

    def __init__(self, env: dict[str, str], root: Path = HERE.parent) -> None:
        super().__init__({**env, "PYTHONPATH": str(root)})
        self.root = root

    def start_timed(self) -> float:
        with self.log_path.open("ab") as log:
            started = time.perf_counter()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ml_server", "serve"],
                env=self.env,
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        import urllib.request

        while time.perf_counter() - started < 30:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:  # noqa: S310
                    if r.status == 200:
                        return time.perf_counter() - started
            except OSError:
                time.sleep(0.01)
        raise RuntimeError(f"server not healthy in 30 s:\n{self.log()}")


async def run_phases(targets: list[Target], args: argparse.Namespace) -> dict[str, float]:
    r: dict[str, float] = {}
    names = [t.name for t in targets]

    print(f"(a) concurrency 1, 0 ms provider, {args.requests} requests each, interleaved")
    cpu = {t.name: cpu_seconds(t.pid) for t in targets}
    lat = await interleaved(targets, args.requests, args.warmup, "gpt-4o-mini", one, False)
    for t in targets:
        cpu[t.name] = (cpu_seconds(t.pid) - cpu[t.name]) / (args.requests + args.warmup) * 1e6
    for n in names:
        v = lat[n]
        print(
            f"    {n:<7} p50 {pct(v, 0.5):6.3f}  p90 {pct(v, 0.9):6.3f}  p99 {pct(v, 0.99):6.3f} ms"
        )
    d50, d99 = pct(lat["direct"], 0.5), pct(lat["direct"], 0.99)
    for n in names[1:]:
        print(
            f"    {n:<7} added p50 {pct(lat[n], 0.5) - d50:6.3f}"
            f"  p99 {pct(lat[n], 0.99) - d99:6.3f} ms"
        )
    for n in names:
        print(f"    {n:<7} CPU of its server process {cpu[n]:4.0f} µs/req")
    r["added_p50_ms"] = pct(lat["ours"], 0.5) - d50
    r["added_p99_ms"] = pct(lat["ours"], 0.99) - d99
    r["floor_added_p50_ms"] = pct(lat["floor"], 0.5) - d50
    r["floor_added_p99_ms"] = pct(lat["floor"], 0.99) - d99

    print(
        f"(b) closed loop, concurrency {args.concurrency}, 20 ms provider, "
        f"{args.rounds} x {args.seconds:g} s per path"
    )
    rps: dict[str, list[float]] = {n: [] for n in names}
    p99: dict[str, list[float]] = {n: [] for n in names}
    cpu_b: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for t in targets:
            x, y, z = await closed_loop(t, args.concurrency, args.seconds, "gpt-slow-20")
            rps[t.name].append(x)
            p99[t.name].append(y)
            cpu_b[t.name].append(z)
    for n in names:
        print(
            f"    {n:<7} {statistics.median(rps[n]):7.0f} req/s"
            f"  p99 {statistics.median(p99[n]):7.2f} ms"
            f"  CPU {statistics.median(cpu_b[n]):4.0f} µs/req"
            f"  (rounds: {', '.join(f'{x:.0f}' for x in rps[n])})"
        )
    r["c64_rps_direct"] = statistics.median(rps["direct"])
    r["c64_rps_floor"] = statistics.median(rps["floor"])
    r["c64_rps_ours"] = statistics.median(rps["ours"])
    r["c64_p99_ours_ms"] = statistics.median(p99["ours"])
    r["cpu_us_ours"] = cpu["ours"]
    r["cpu_us_floor"] = cpu["floor"]
    r["c64_cpu_us_ours"] = statistics.median(cpu_b["ours"])
    r["c64_cpu_us_floor"] = statistics.median(cpu_b["floor"])
    r["ratio"] = r["c64_rps_ours"] / r["c64_rps_floor"]

    print(f"(c) streaming, time to first chunk, {args.stream_requests} streams each, interleaved")
    ttfc = await interleaved(
        targets, args.stream_requests, args.warmup // 4, "gpt-4o-mini", first_chunk, True
    )
    d = pct(ttfc["direct"], 0.5)
    for n in names:
        print(f"    {n:<7} p50 {pct(ttfc[n], 0.5):6.3f} ms  added {pct(ttfc[n], 0.5) - d:6.3f} ms")
    r["ttfc_added_ms"] = pct(ttfc["ours"], 0.5) - d
    r["floor_ttfc_added_ms"] = pct(ttfc["floor"], 0.5) - d
    if "workers" in names:
        r["c64_rps_workers"] = statistics.median(rps["workers"])
        r["workers_ratio"] = r["c64_rps_workers"] / r["c64_rps_ours"]
        r["workers_added_p50_ms"] = pct(lat["workers"], 0.5) - d50
        print(
            f"(b') {args.workers} workers vs 1 process, concurrency {args.concurrency}: "
            f"{r['c64_rps_workers']:.0f} vs {r['c64_rps_ours']:.0f} req/s "
            f"= {r['workers_ratio']:.2f}x"
        )
    if "base" in names:
        r["base_added_p50_ms"] = pct(lat["base"], 0.5) - d50
        r["base_added_p99_ms"] = pct(lat["base"], 0.99) - d99
        r["c64_rps_base"] = statistics.median(rps["base"])
        r["base_ttfc_added_ms"] = pct(ttfc["base"], 0.5) - d
        r["cpu_us_base"] = cpu["base"]
        r["c64_cpu_us_base"] = statistics.median(cpu_b["base"])
    return r


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="phase a: requests per path")
    parser.add_argument("--warmup", type=int, default=200, help="phase a: warm-up rounds")
    parser.add_argument("--concurrency", type=int, default=64, help="phase b: concurrency")
    parser.add_argument("--seconds", type=float, default=2.5, help="phase b: seconds per round")
    parser.add_argument("--rounds", type=int, default=4, help="phase b: rounds per path")
    parser.add_argument(
        "--stream-requests", type=int, default=500, help="phase c: streams per path"
    )
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="also run the gateway from another source tree (e.g. an older commit unpacked with\n"
        "`git archive`) as path 'base', interleaved with the others: A/B on a noisy machine",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="also run the gateway with this many workers (WEB_CONCURRENCY) as path 'workers',\n"
        "interleaved with the one-process 'ours' (default: one per CPU; 1 = skip)",
    )
    parser.add_argument("--keep-log", action="store_true", help="print the gateway's log tail")
    args = parser.parse_args()

    fake_port, floor_port = free_port(), free_port()
    fake_url = f"http://127.0.0.1:{fake_port}"
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", FAKE_CMD, str(fake_port)], env=env, cwd=HERE.parent
        ),
        subprocess.Popen(
            [
                sys.executable,
                str(HERE / "floor_proxy.py"),
                "--port",
                str(floor_port),
                "--upstream",
                f"{fake_url}/openai/v1",
            ],
            env=env,
        ),
    ]
    try:
        with TempPostgres() as pg:
            server_env = {
                "ENVIRONMENT": "staging",
                "LOG_LEVEL": "INFO",
                # No separate metrics port: staging would bind 9101, which another server may hold.
                "METRICS_PORT": "0",
                **pg.env(),
                **provider_env(fake_url),
            }
            server = TimedServer(server_env)
            key = server.cli("keys", "create", "--name", "bench").stdout.strip()  # also migrates
            if not key:
                raise RuntimeError("could not create an API key")
            base = TimedServer(server_env, Path(args.baseline).resolve()) if args.baseline else None
            multi = (
                TimedServer({**server_env, "WEB_CONCURRENCY": str(args.workers)})
                if args.workers > 1
                else None
            )
            try:
                start_s = server.start_timed()
                server.wait("/ready")
                assert server.proc is not None
                spid = server.proc.pid
                bpid = 0
                if base is not None:
                    base.start_timed()
                    base.wait("/ready")
                    assert base.proc is not None
                    bpid = base.proc.pid
                mpid = 0
                if multi is not None:
                    multi.start_timed()
                    multi.wait("/ready")
                    assert multi.proc is not None
                    mpid = multi.proc.pid
                for port in (fake_port, floor_port):
                    _wait_port(port)
                targets = [
                    Target(
                        "direct",
                        f"{fake_url}/openai/v1/chat/completions",
                        FAKE_KEY,
                        "",
                        procs[0].pid,
                    ),
                    Target(
                        "floor",
                        f"http://127.0.0.1:{floor_port}/v1/chat/completions",
                        FAKE_KEY,
                        "",
                        procs[1].pid,
                    ),
                    Target("ours", f"{server.url}/v1/chat/completions", key, "openai/", spid),
                ]
                if base is not None:
                    targets.append(
                        Target("base", f"{base.url}/v1/chat/completions", key, "openai/", bpid)
                    )
                if multi is not None:
                    targets.append(
                        Target("workers", f"{multi.url}/v1/chat/completions", key, "openai/", mpid)
                    )
                results = uvloop.run(run_phases(targets, args))
                assert server.proc is not None
                results["rss_mib"] = rss_mib(server.proc.pid)
                results["start_s"] = start_s
                print(
                    f"(d) ours: {results['rss_mib']:.1f} MiB resident after the run, "
                    f"{start_s:.2f} s from start to /health 200"
                )
                if args.keep_log:
                    print(server.log()[-2000:])
            finally:
                server.stop()
                if base is not None:
                    base.stop()
                if multi is not None:
                    multi.stop()
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
    keys = [
        "added_p50_ms",
        "added_p99_ms",
        "c64_rps_ours",
        "c64_rps_floor",
        "ratio",
        "ttfc_added_ms",
        "rss_mib",
        "start_s",
        "floor_added_p50_ms",
        "floor_added_p99_ms",
        "floor_ttfc_added_ms",
        "c64_rps_direct",
        "c64_p99_ours_ms",
        "cpu_us_ours",
        "cpu_us_floor",
        "c64_cpu_us_ours",
        "c64_cpu_us_floor",
    ]
    keys += [k for k in results if "base" in k or "workers" in k]
    figures = (f"{k}={results[k]:.{0 if 'rps' in k or 'cpu' in k else 2}f}" for k in keys)
    print("RESULT " + " ".join(figures))


def _wait_port(port: int) -> None:
    import socket

    for _ in range(300):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port}")


if __name__ == "__main__":
    main()
