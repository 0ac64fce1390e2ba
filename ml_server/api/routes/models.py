"""GET /v1/models: the models of the providers that have a key."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ml_server.api.deps import KeyDep, StateDep
from ml_server.router import ModelNotFound

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models")
async def list_models(state: StateDep, _key: KeyDep) -> dict[str, Any]:
    return {"object": "list", "data": state.router.list_models()}


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, state: StateDep, _key: KeyDep) -> dict[str, Any]:
    for entry in state.router.list_models():
        if entry["id"] == model_id:
            return entry
    state.router.resolve(model_id)  # raises 404 for unknown providers
    raise ModelNotFound(f"The model '{model_id}' is not in this server's list")
