"""Run the real server (``python -m ml_server serve``, uvicorn) as a child process on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from ml_server.tests.pg import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]

# Obviously fake credentials, one per provider, so tests can see which one each provider got.
FAKE_KEYS = {
    "OPENAI_API_KEY": "sk-test-not-a-real-key-openai",
    "ANTHROPIC_API_KEY": "sk-test-not-a-real-key-anthropic",
    "DEEPSEEK_API_KEY": "sk-test-not-a-real-key-deepseek",
    "GOOGLE_API_KEY": "test-not-a-real-key-google",
    "XAI_API_KEY": "xai-test-not-a-real-key",
    "AZURE_INFERENCE_CREDENTIAL": "test-not-a-real-key-azure",
}


def provider_env(fake_url: str) -> dict[str, str]:
    """Every provider configured against the fake provider, each under its own path prefix."""
    return {
        **FAKE_KEYS,
        "OPENAI_BASE_URL": f"{fake_url}/openai/v1",
        "ANTHROPIC_BASE_URL": f"{fake_url}/anthropic/v1",
        "DEEPSEEK_BASE_URL": f"{fake_url}/deepseek/v1",
        "XAI_BASE_URL": f"{fake_url}/xai/v1",
        "GEMINI_BASE_URL": f"{fake_url}/v1beta/openai",
        "AZURE_INFERENCE_ENDPOINT": f"{fake_url}/azure/models",
    }


class ServerProcess:
    """Args:
    env: settings for the server (added to a clean copy of os.environ without provider keys).
    """

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        base = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_BASE_URL"))}
        self.env = {
            **base,
            "ML_SERVER_PORT": str(self.port),
            "ML_SERVER_HOST": "127.0.0.1",
            "SECRETS_DIR": "/nonexistent-secrets-dir",
            "PYTHONPATH": str(REPO_ROOT),
            # Each server its own usage spool (a restart of the same server replays it).
            "USAGE_SPOOL_DIR": tempfile.mkdtemp(prefix="ml-server-spool-"),
            **env,
        }
        fd, name = tempfile.mkstemp(prefix="ml-server-", suffix=".log")
        os.close(fd)
        self.log_path = Path(name)
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``python -m ml_server ARGS`` with the same settings."""
        return subprocess.run(
            [sys.executable, "-m", "ml_server", *args],
            env=self.env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    def start(self, wait_ready: bool = True) -> ServerProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ml_server", "serve"],
                env=self.env,
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait("/ready" if wait_ready else "/health")
        return self

    def wait(self, path: str, deadline_s: float = 30) -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=2) as r:  # noqa: S310
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not answering {path} within {deadline_s} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_path.unlink(missing_ok=True)
