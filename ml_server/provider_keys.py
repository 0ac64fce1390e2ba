"""Provider keys re-read when their files in SECRETS_DIR change (rotation without a restart).

On the instances the boot writes each provider secret to a file in the secrets folder and a
timer rewrites the files when a secret changes in Secrets Manager. The server notices a changed
file (inode, size or modification time) every PROVIDER_KEY_RELOAD_SECONDS, and at once when a
provider answers 401/403 (then the request is tried again with the new key). An empty
file, or one the server cannot read, leaves the current key in place.

A provider without a key at start (no file, or an empty one) is added when its file gets a key:
built as at start (``router.build_providers``) and served by the router from then on
(``Router.add_provider``), then watched like the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from pydantic import SecretStr

from ml_server.catalog import Catalog
from ml_server.config import Settings
from ml_server.providers.base import Provider
from ml_server.router import Router, build_providers
from ml_server.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# Provider -> the setting (and file name) holding its key.
KEY_FILES: Mapping[str, str] = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "deepseek": "DEEPSEEK_API_KEY",
    "gemini": "GOOGLE_API_KEY",
    "xai": "XAI_API_KEY",
    "azure": "AZURE_INFERENCE_CREDENTIAL",
}
# After a 401, the file is looked at again at most this often per provider.
AUTH_RECHECK_SECONDS = 1.0

Signature = tuple[int, int, int]  # inode, size, mtime in ns
# Called with a provider's name and the key its file now holds; True once the provider is served.
AddProvider = Callable[[str, str], Awaitable[bool]]


def provider_adder(settings: Settings, catalog: Catalog, router: Router) -> AddProvider:
    """Build a provider from its new key as at start and have ``router`` serve it."""

    async def add(name: str, key: str) -> bool:
        keyed = settings.model_copy(update={KEY_FILES[name].lower(): SecretStr(key)})
        provider = build_providers(keyed, catalog, only=name).get(name)
        if provider is None:  # e.g. Azure without AZURE_INFERENCE_ENDPOINT
            return False
        await router.add_provider(name, provider)
        return True

    return add


def _signature(path: Path) -> Signature | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class ProviderKeyFiles:
    """Args:
    secrets_dir: the folder of secret files (file names matched case-insensitively, as the
        settings read them).
    providers: the configured providers; those with a key file are watched.
    interval: seconds between two looks at the files.
    add: adds a provider that has no key yet once its file holds one (``provider_adder``);
        None: only configured providers are watched.
    """

    def __init__(
        self,
        secrets_dir: str | Path,
        providers: Mapping[str, Provider],
        interval: float,
        *,
        add: AddProvider | None = None,
    ) -> None:
        self.interval = interval
        self.reloads = 0
        self.added = 0
        self._folder = Path(secrets_dir)
        self._providers = providers
        self._add = add
        self._files: dict[str, Path] = {}
        self._seen: dict[str, Signature | None] = {}
        self._last_check: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        names = self._names()
        for provider, setting in KEY_FILES.items():
            path = names.get(setting.lower())
            if provider in providers and path is not None:
                self._files[provider] = path
                self._seen[provider] = _signature(path)
        # Providers without a key: looked for at each interval (an empty file is not a key).
        self._missing = [p for p in KEY_FILES if p not in providers] if add is not None else []

    def _names(self) -> dict[str, Path]:
        """The folder's files by lower-cased name (as the settings match them)."""
        try:
            return {p.name.lower(): p for p in self._folder.iterdir() if p.is_file()}
        except OSError:  # no folder (yet)
            return {}

    @property
    def watched(self) -> list[str]:
        return sorted(self._files)

    def check(self, provider: str) -> bool:
        """Re-read ``provider``'s key file if it changed; True when a new key is in use."""
        path = self._files.get(provider)
        if path is None:
            return False
        self._last_check[provider] = time.monotonic()
        sig = _signature(path)
        if sig is None or sig == self._seen.get(provider):
            return False
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError:
            return False  # being replaced: the next look reads it
        self._seen[provider] = sig
        if not value:
            log.warning(
                "provider key file is empty; the current key stays in use",
                extra={"fields": {"provider": provider, "file": path.name}},
            )
            return False
        if not self._providers[provider].set_credential(value):
            return False
        self.reloads += 1
        log.info(
            "provider key reloaded from its file",
            extra={"fields": {"provider": provider, "file": path.name}},
        )
        return True

    def check_after_auth_failure(self, provider: str) -> bool:
        """On a provider's 401/403: look at its file now (at most once per
        AUTH_RECHECK_SECONDS); True when the request should be tried again with a new key."""
        if time.monotonic() - self._last_check.get(provider, 0.0) < AUTH_RECHECK_SECONDS:
            return False
        return self.check(provider)

    def check_all(self) -> list[str]:
        return [p for p in list(self._files) if self.check(p)]

    async def add_missing(self) -> list[str]:
        """Add each provider without a key whose file now holds one; the names added."""
        if not self._missing:
            return []
        names = self._names()
        added = []
        for provider in list(self._missing):
            path = names.get(KEY_FILES[provider].lower())
            sig = _signature(path) if path is not None else None
            if path is None or sig is None or sig == self._seen.get(provider):
                continue
            try:
                value = path.read_text(encoding="utf-8").strip()
            except OSError:
                continue  # being replaced: the next look reads it
            self._seen[provider] = sig
            fields = {"provider": provider, "file": path.name}
            if not value:
                continue  # still not configured
            assert self._add is not None  # _missing is empty without it
            if not await self._add(provider, value):
                log.warning(
                    "provider key file has a key but the provider cannot be built (see its "
                    "other settings); it stays unconfigured",
                    extra={"fields": fields},
                )
                continue
            self._missing.remove(provider)
            self._files[provider] = path
            self.added += 1
            added.append(provider)
            log.info("provider added from its key file", extra={"fields": fields})
        return added

    def start(self) -> None:
        if self._files or self._missing:
            self._task = asyncio.create_task(self._run(), name="provider-key-files")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.check_all()
                await self.add_missing()
            except Exception as exc:  # never let the watch die
                log.warning(
                    "provider key files check failed",
                    extra={"fields": {"error": f"{type(exc).__name__}: {exc}"[:200]}},
                )
