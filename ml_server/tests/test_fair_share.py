"""Breakers judge provider health, and one key cannot take a provider's whole concurrency
(issue 12).

Reproduction: five slow requests from one tenant (long generations that hit the request
deadline) opened the provider's shared breaker and locked every tenant out for the cool-down.
Now a timeout counts against a provider only before its first byte (a stream's response head;
a non-streamed answer's head comes with the whole answer, so its wait says nothing about the
provider), and a provider's concurrency slots (PROVIDER_MAX_CONCURRENCY) go first to the waiting
key that holds the fewest. A real server against the fault-injecting fake provider.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import anthropic
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from ml_server.tests.conftest import TEST_SETTINGS
from ml_server.tests.fake_provider import FakeProvider
from ml_server.tests.pg import TempPostgres
from ml_server.tests.server_proc import ServerProcess, provider_env

pytestmark = pytest.mark.slow

MSG: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def fserver(pg: TempPostgres, fake: FakeProvider) -> Iterator[ServerProcess]:
    env = {
        **TEST_SETTINGS,
        **pg.env(),
        **provider_env(fake.url),
        "PROVIDER_MAX_RETRIES": "0",
        "REQUEST_DEADLINE_SECONDS": "2",
        "BREAKER_FAILURE_THRESHOLD": "3",
        "BREAKER_COOLDOWN_SECONDS": "30",
        "PROVIDER_MAX_CONCURRENCY": "4",
    }
    proc = ServerProcess(env)
    try:
        yield proc.start()
    finally:
        proc.stop()


def _client(server: ServerProcess, name: str) -> openai.AsyncOpenAI:
    key = server.cli("keys", "create", "--name", name).stdout.strip()
    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=30)


async def _status(coro: object) -> int:
    try:
        await coro  # type: ignore[misc]
    except (openai.APIStatusError, anthropic.APIStatusError) as exc:
        return exc.status_code
    except openai.APIError as exc:  # an SSE error event (the stream had committed to 200)
        return 504 if "did not answer in time" in exc.message else 0
    return 200


async def test_one_tenants_long_generations_do_not_open_the_breaker(
    fserver: ServerProcess,
) -> None:
    a, b = _client(fserver, "tenant-a"), _client(fserver, "tenant-b")
    slow = [
        _status(a.chat.completions.create(model="openai/x-slow-3000", messages=MSG))
        for _ in range(5)
    ]
    assert await asyncio.gather(*slow) == [504] * 5  # each hit the 2 s deadline
    reply = await b.chat.completions.create(model="openai/m-ok", messages=MSG)
    assert reply.choices[0].message.content == "echo: hello there"


async def test_a_slow_first_byte_still_opens_the_breaker(fserver: ServerProcess) -> None:
    """A stream whose response head does not come in time: that is the provider's health."""
    a, b = _client(fserver, "tenant-c"), _client(fserver, "tenant-d")

    async def stream() -> None:
        s = await a.chat.completions.create(
            model="deepseek/x-slow-3000",
            messages=MSG,
            stream=True,
        )
        async for _ in s:
            pass

    assert await asyncio.gather(*(_status(stream()) for _ in range(3))) == [504] * 3
    with pytest.raises(openai.APIStatusError) as err:
        await b.chat.completions.create(model="deepseek/m-ok", messages=MSG)
    assert err.value.status_code == 503
    assert err.value.code == "provider_circuit_open"


async def test_a_waiting_key_gets_the_next_slot_before_the_busy_key(
    fserver: ServerProcess,
) -> None:
    """Key A fills the provider's 4 slots and queues 4 more; key B's request takes the first
    slot freed, ahead of A's queue (a FIFO would make it wait for A's second wave)."""
    a, b = _client(fserver, "tenant-e"), _client(fserver, "tenant-f")
    started = time.monotonic()
    # 1.2 s answers: inside the 2 s deadline for the first wave only.
    first = [
        asyncio.ensure_future(
            _status(a.chat.completions.create(model="xai/x-slow-1200", messages=MSG))
        )
        for _ in range(8)
    ]
    await asyncio.sleep(0.2)  # A holds all 4 slots, 4 more of A wait
    reply = await b.chat.completions.create(model="xai/m-ok", messages=MSG)
    b_took = time.monotonic() - started
    assert reply.choices[0].message.content == "echo: hello there"
    statuses = await asyncio.gather(*first)
    assert statuses.count(200) == 4  # the first wave
    # B went in as soon as the first slot was free (~1.2 s), not after A's queue (whose calls
    # hold the slots until their deadline, 2 s).
    assert b_took < 1.8, b_took


async def _wave(flood: object, fair: object) -> tuple[list[tuple[int, float]], float, int]:
    """Key A sends 8 slow requests (``flood``: a factory of coroutines) at once; 0.2 s later key
    B sends one fast request (``fair``). Returns A's (status, seconds to its end) per request,
    B's seconds to its end (all from the start) and B's status."""
    started = time.monotonic()

    async def timed(coro: object) -> tuple[int, float]:
        status = await _status(coro)
        return status, time.monotonic() - started

    first = [asyncio.ensure_future(timed(flood())) for _ in range(8)]  # type: ignore[operator]
    await asyncio.sleep(0.2)
    b_status = await _status(fair())  # type: ignore[operator]
    b_took = time.monotonic() - started
    return list(await asyncio.gather(*first)), b_took, b_status


def _check_fair(a: list[tuple[int, float]], b_took: float, b_status: int) -> None:
    statuses = [status for status, _ in a]
    assert b_status == 200
    assert statuses.count(200) == 4, statuses  # only 4 at once reached the provider
    assert statuses.count(504) == 4, statuses  # the other 4 waited past their 2 s deadline
    # B waited for a slot (A held all 4), then took the first one freed by A's first wave,
    # ahead of A's queue: A's queued calls keep waiting until their deadline ends them.
    assert b_took > 1.0, b_took
    assert b_took < min(t for status, t in a if status == 504), (b_took, a)


async def test_messages_share_the_providers_slots_with_chat(fserver: ServerProcess) -> None:
    """/v1/messages calls take the provider's own slots (the ones chat uses): key A's flood of
    8 slow Messages calls gets the 4 slots (4 wait, then hit the 2 s deadline), and key B's
    chat request to the same provider takes the first freed slot, ahead of A's queue."""
    a_key = fserver.cli("keys", "create", "--name", "tenant-g").stdout.strip()
    a = anthropic.AsyncAnthropic(base_url=fserver.url, api_key=a_key, max_retries=0, timeout=30)
    b = _client(fserver, "tenant-h")
    _check_fair(
        *await _wave(
            lambda: a.messages.create(
                model="gemini/x-slow-1200",
                max_tokens=16,
                messages=[{"role": "user", "content": "hello there"}],
            ),
            lambda: b.chat.completions.create(model="gemini/m-ok", messages=MSG),
        )
    )


async def test_responses_share_the_providers_slots_fairly(fserver: ServerProcess) -> None:
    """/v1/responses: the same for OpenAI's Responses API (both keys on /v1/responses)."""
    a, b = _client(fserver, "tenant-i"), _client(fserver, "tenant-j")
    _check_fair(
        *await _wave(
            lambda: a.responses.create(model="openai/x-slow-1200", input="hello there"),
            lambda: b.responses.create(model="openai/m-ok", input="hello there"),
        )
    )
