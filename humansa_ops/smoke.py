"""Smoke test of a deployed server with the official OpenAI SDK (release.yml, after staging).

Checks, against ``--url`` (or the ``ServiceUrl`` output of ``--env``'s Service stack):

1. ``GET /health`` answers 200;
2. a made-up API key is refused by the SDK with ``AuthenticationError`` (HTTP 401): the gateway,
   not the ALB's default answer, is what responds;
3. with ``HUMANSA_SMOKE_API_KEY`` set (a key made with ``make keys``; in release.yml a secret of
   the GitHub environment ``staging``): the SDK lists the models, and one short chat completion
   with ``--model`` (else ``HUMANSA_SMOKE_MODEL``, else the first model listed) returns text.
   Without the key the output says ``skipped:`` for those two checks, and under GitHub Actions
   also raises a warning annotation, so a release never looks more tested than it was.

Usage:
    python -m humansa_ops.smoke (--url URL | --env NAME) [--model NAME]

Exit status 0 when every check that ran passed, 1 otherwise (the failing check is named).
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request

#: Obviously not a key: the server must refuse it.
BOGUS_KEY = "hsk-smoke-test-not-a-real-key"
KEY_VARIABLE = "HUMANSA_SMOKE_API_KEY"
MODEL_VARIABLE = "HUMANSA_SMOKE_MODEL"
SKIPPED = (
    f"skipped: OpenAI SDK models.list and chat.completions ({KEY_VARIABLE} is not set; in "
    "release.yml it is a secret of the GitHub environment 'staging')"
)


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
    """Run the checks; return one line per check, passed or ``skipped: ...`` (``SmokeError`` on
    the first failure)."""
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
        passed.append(SKIPPED)
        return passed
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, timeout=timeout, max_retries=1)
    try:
        models = [m.id for m in client.models.list()]
        if not models:
            raise SmokeError("GET /v1/models listed no model")
        passed.append(f"OpenAI SDK models.list: {len(models)} model(s)")
        model = model or models[0]
        if model not in models:
            raise SmokeError(f"model {model} is not listed by /v1/models: {', '.join(models)}")
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
    parser.add_argument(
        "--model", help=f"model of the chat completion (default: ${MODEL_VARIABLE}, else the first)"
    )
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
        model = args.model or os.environ.get(MODEL_VARIABLE) or None
        for line in smoke(url, api_key=os.environ.get(KEY_VARIABLE) or None, model=model):
            print(f"smoke: {line}" if line.startswith("skipped: ") else f"smoke: ok: {line}")
            if line.startswith("skipped: ") and os.environ.get("GITHUB_ACTIONS") == "true":
                print(f"::warning title=smoke test incomplete::{line}")
    except SmokeError as exc:
        print(f"smoke: FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
