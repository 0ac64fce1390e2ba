"""The memory layer's figures, on PostgreSQL+pgvector (pgserver's PostgreSQL 16, HNSW) and on
SQLite (exact search in Python), through the real server and its HTTP API:

- recall@1/3/5 on the labelled set (ml_server/tests/memory_labelled.py: 40 facts, 14 questions);
- add and search latency (p50/p95, one client, sequential) with --memories (10,000) memories
  of one user in the store; the bulk load's rate; whether PostgreSQL's plan uses the HNSW index.

Embeddings: the built-in fake provider's ``fake/embed`` (bag-of-words hash vectors, through the
router like a real model, at --dims dimensions), so the latencies are the server's and the
store's, without a model's time; recall is what bag-of-words finds (no synonyms), a floor for a
real embeddings model, not its figure.

    .venv/bin/python benchmarks/memory.py [--memories 10000] [--dims 256]
        [--backends pgvector,sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ml_server.memory.store import search_sql
from ml_server.tests.memory_labelled import FACTS, QUERIES, recall_at
from ml_server.tests.pgvector import PgvectorPostgres
from ml_server.tests.server_proc import ServerProcess

_VOCAB_TEXT = (
    "account address airport allergy apartment appointment bakery bank battery bicycle birthday "
    "book brother budget bus cafe camera car cat city class client clinic coffee colleague "
    "concert contract course dentist diet doctor dog email exam family ferry festival film "
    "flight football friend garden gym harbour holiday hospital hotel insurance interview "
    "invoice island jacket journey kitchen language laptop lesson library loan market meeting "
    "menu mother museum neighbour office park passport payment phone piano plan pool project "
    "rent report restaurant salary school season shop sister sport station subway swim tax "
    "teacher team temple ticket train trip tutor uncle vacation village visa walk weekend work"
)
VOCAB = _VOCAB_TEXT.split()
_VERB_TEXT = "likes prefers booked visits needs avoids pays plans remembers moved chose"
VERBS = _VERB_TEXT.split()


def _texts(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = rng.sample(VOCAB, 5)
        out.append(
            f"The user {rng.choice(VERBS)} the {words[0]} near the {words[1]} "
            f"with {words[2]}, {words[3]} and {words[4]} (note {i})."
        )
    return out


def _ms(samples: list[float]) -> str:
    s = sorted(samples)
    p95 = s[min(len(s) - 1, int(len(s) * 0.95))]
    return f"p50 {statistics.median(s) * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms"


def _timed(n: int, call: Callable[[int], httpx.Response]) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        r = call(i)
        out.append(time.perf_counter() - t)
        r.raise_for_status()
    return out


def run(kind: str, url_env: dict[str, str], args: argparse.Namespace, dsn: str | None) -> None:
    env = {
        "ENVIRONMENT": "development",
        "ENABLE_FAKE_PROVIDER": "true",
        "MEMORY_EMBEDDINGS_MODEL": "fake/embed",
        "MEMORY_EMBEDDING_DIMENSIONS": str(args.dims),
        "METRICS_PORT": "0",
        "LOG_LEVEL": "WARNING",
        **url_env,
    }
    server = ServerProcess(env).start()
    try:
        made = server.cli("keys", "create", "--name", "bench-memory")
        if made.returncode != 0:
            raise RuntimeError(made.stderr)
        key = made.stdout.strip()
        c = httpx.Client(
            base_url=server.url + "/v1", headers={"Authorization": f"Bearer {key}"}, timeout=120
        )
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"\n== {kind} ({args.dims} dimensions; load average {load} on {os.cpu_count()} CPUs)")

        r = c.post(
            "/memories/",
            json={"messages": [{"role": "user", "content": f} for f in FACTS], "user_id": "lab"},
        )
        r.raise_for_status()
        index = {a["memory"]: i for i, a in enumerate(r.json()["results"])}
        ranked = []
        for question, _ in QUERIES:
            r = c.post("/memories/search/", json={"query": question, "user_id": "lab", "top_k": 5})
            r.raise_for_status()
            ranked.append([index[h["memory"]] for h in r.json()["results"]])
        print(
            f"labelled set ({len(FACTS)} facts, {len(QUERIES)} questions): "
            + "  ".join(f"recall@{k} {recall_at(k, ranked):.2f}" for k in (1, 3, 5))
        )

        bulk = _texts(args.memories - args.adds)
        started = time.perf_counter()
        for at in range(0, len(bulk), args.batch):
            batch = bulk[at : at + args.batch]
            r = c.post(
                "/memories/",
                json={"messages": [{"role": "user", "content": t} for t in batch], "user_id": "b"},
            )
            r.raise_for_status()
        took = time.perf_counter() - started
        print(
            f"bulk load: {len(bulk)} memories in {took:.1f} s ({len(bulk) / took:.0f}/s, "
            f"{args.batch} a request)"
        )
        extra = _texts(args.adds, seed=11)
        adds = _timed(
            args.adds,
            lambda i: c.post("/memories/", json={"messages": extra[i], "user_id": "b"}),
        )
        total = c.get("/memories/", params={"user_id": "b", "page_size": 1}).json()["count"]
        print(f"add, one message, at {total - args.adds}..{total} memories:   {_ms(adds)}")
        queries = [
            f"what {w1} does the user have near the {w2}"
            for w1, w2 in zip(
                random.Random(3).choices(VOCAB, k=args.searches),
                random.Random(5).choices(VOCAB, k=args.searches),
                strict=True,
            )
        ]
        searches = _timed(
            args.searches,
            lambda i: c.post(
                "/memories/search/", json={"query": queries[i], "user_id": "b", "top_k": 5}
            ),
        )
        print(f"search, top 5 of {total} memories of one user:  {_ms(searches)}")
        if dsn is not None:
            print("PostgreSQL plan: " + asyncio.run(_plan(dsn, args.dims)))
        c.close()
    finally:
        server.stop()


async def _plan(dsn: str, dims: int) -> str:
    """The store's query as the server runs it: prepared, planned generically."""
    conn = await asyncpg.connect(dsn)
    try:
        tenant = await conn.fetchval("SELECT id FROM api_keys WHERE name = 'bench-memory'")
        sql = search_sql(dims, "tenant_id = :tenant AND user_id = :user_id", 5)
        sql = sql.replace(":q", "$1").replace(":tenant", "$2").replace(":user_id", "$3")
        q = "[" + ",".join(["0.05"] * dims) + "]"
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE memory_search(text, int, text) AS {sql}")
        rows: list[Any] = await conn.fetch(f"EXPLAIN EXECUTE memory_search('{q}', {tenant}, 'b')")
        lines = [r[0].strip() for r in rows]
        return " | ".join(line for line in lines if "Scan" in line or "Sort" in line)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--memories", type=int, default=10_000)
    parser.add_argument("--dims", type=int, default=256)
    parser.add_argument("--adds", type=int, default=100, help="timed single-message adds")
    parser.add_argument("--searches", type=int, default=100, help="timed searches")
    parser.add_argument("--batch", type=int, default=50, help="messages per bulk-load request")
    parser.add_argument("--backends", default="pgvector,sqlite")
    args = parser.parse_args()
    for kind in args.backends.split(","):
        if kind == "pgvector":
            cluster = PgvectorPostgres()
            try:
                cluster.init()
                run(kind, {"DATABASE_URL": cluster.url}, args, cluster.dsn)
            finally:
                cluster.cleanup()
        elif kind == "sqlite":
            folder = Path(tempfile.mkdtemp(prefix="ml-memory-bench-"))
            url = f"sqlite+aiosqlite:///{folder / 'ml_server.db'}"
            run(kind, {"DATABASE_URL": url}, args, None)
        else:
            raise SystemExit(f"--backends: unknown {kind!r} (pgvector, sqlite)")


if __name__ == "__main__":
    main()
