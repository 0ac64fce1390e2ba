"""GET /v1/models: the models of the providers that have a key, as far as the key may use them."""

from __future__ import annotations

import contextlib
from typing import Any

from fastapi import APIRouter

from ml_server.api.deps import KeyDep, StateDep
from ml_server.db.keys import KeyInfo
from ml_server.router import ModelNotFound
from ml_server.state import AppState

router = APIRouter(prefix="/v1", tags=["models"])


def _allowed(state: AppState, key: KeyInfo, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries the key's allowed-model globs admit (an alias by its name or its target),
    the same test as a request's; applied to whatever the router lists."""
    policy = key.policy
    if policy is None or not policy.allowed_models:
        return entries
    out = []
    for entry in entries:
        label = ""
        with contextlib.suppress(Exception):
            label = state.router.resolve(entry["id"]).label
        if policy.allows(entry["id"], label):
            out.append(entry)
    return out


@router.get("/models")
async def list_models(state: StateDep, key: KeyDep) -> dict[str, Any]:
    return {"object": "list", "data": _allowed(state, key, state.router.list_models())}


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, state: StateDep, key: KeyDep) -> dict[str, Any]:
    for entry in state.router.list_models():
        if entry["id"] == model_id:
            if not _allowed(state, key, [entry]):
                break  # 404 like OpenAI's for a model the key cannot use
            return entry
    else:
        state.router.resolve(model_id)  # raises 404 for unknown providers
    raise ModelNotFound(f"The model '{model_id}' does not exist or you do not have access to it.")
