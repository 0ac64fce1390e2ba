"""Smoke test of a deployed server with the official OpenAI SDK (release.yml, after staging).

Checks, against ``--url`` (or the ``ServiceUrl`` output of ``--env``'s Service stack):

1. ``GET /health`` answers 200;
2. a made-up API key is refused by the SDK with ``AuthenticationError`` (HTTP 401): the gateway,
   not the ALB's default answer, is what responds;
3. with ``HUMANSA_SMOKE_API_KEY`` set (a key made with ``ml_server keys create``): the SDK lists
   the models, and with ``--model`` one short chat completion returns text.

Usage:
    python -m humansa_ops.smoke (--url URL | --env NAME) [--model NAME]

Exit status 0 when every check passed, 1 otherwise (the failing check is named).
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request

#: Obviously not a key: the server must refuse it.
BOGUS_KEY = "hsk-smoke-test-not-a-real-key"


class SmokeError(Exception):
    """A failed check."""


def _health(url: str, timeout: float) -> None:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:  # noqa: S310
            if response.status != 200:
                raise SmokeError(f"GET {url}/health answered {response.status}")
    except urllib.error.URLError as exc:
        raise SmokeError(f"GET {url}/health failed: {exc}") from None


def smoke(url: str, *, api_key: str | None, model: str | None, timeout: float = 20) -> list[str]:
    """Run the checks; return one line per passed check (``SmokeError`` on the first failure)."""
    import openai

    url = url.rstrip("/")
    passed: list[str] = []
    _health(url, timeout)
    passed.append(f"GET {url}/health: 200")
    bogus = openai.OpenAI(base_url=f"{url}/v1", api_key=BOGUS_KEY, timeout=timeout, max_retries=0)
    try:
        bogus.models.list()
    except openai.AuthenticationError:
        passed.append("OpenAI SDK with a made-up key: AuthenticationError (401)")
    except openai.APIError as exc:
        raise SmokeError(f"a made-up key gave {type(exc).__name__}, not 401: {exc}") from None
    else:
        raise SmokeError("a made-up API key was accepted")
    if not api_key:
        passed.append("HUMANSA_SMOKE_API_KEY not set: models and completion not checked")
        return passed
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, timeout=timeout, max_retries=1)
    try:
        models = [m.id for m in client.models.list()]
        if not models:
            raise SmokeError("GET /v1/models listed no model")
        passed.append(f"OpenAI SDK models.list: {len(models)} model(s)")
        if model:
            reply = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "smoke test"}], max_tokens=16
            )
            text = reply.choices[0].message.content if reply.choices else None
            if not text:
                raise SmokeError(f"chat completion with {model} returned no text")
            passed.append(f"OpenAI SDK chat.completions with {model}: {len(text)} characters")
    except openai.APIError as exc:
        raise SmokeError(f"the SDK call failed: {type(exc).__name__}: {exc}") from None
    return passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="smoke test a deployed server")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="base URL, e.g. http://humansa-staging-...elb.amazonaws.com")
    where.add_argument("--env", help="read ServiceUrl from this environment's Service stack")
    parser.add_argument("--model", help="also run one chat completion with this model")
    args = parser.parse_args(argv)
    url = args.url
    try:
        if url is None:
            from config import ConfigError, load_environment, naming
            from humansa_ops.operate import Environment, OperateError

            try:
                url = Environment(load_environment(args.env)).output(naming.OUTPUT_SERVICE_URL)
            except (ConfigError, OperateError) as exc:
                raise SmokeError(str(exc)) from None
        for line in smoke(url, api_key=os.environ.get("HUMANSA_SMOKE_API_KEY"), model=args.model):
            print(f"smoke: ok: {line}")
    except SmokeError as exc:
        print(f"smoke: FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
