"""`GET /api/models`: what users may ask for, from the one catalog (no keys, no base URLs)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from sora2.api.deps import Context
from sora2.api.errors import ERROR_RESPONSES
from sora2.catalog import Catalog

router = APIRouter(prefix="/api/models", tags=["models"], responses=ERROR_RESPONSES)


class ModelOut(BaseModel):
    """One model, in DESIGN's snake_case shape."""

    id: str
    name: str
    provider: str
    seconds: list[int]
    sizes: list[str]
    credits_per_second: int
    image_input: bool
    remix: bool


class ModelList(BaseModel):
    items: list[ModelOut]


@router.get("", response_model=ModelList)
async def list_models(context: Context) -> ModelList:
    """Every model you may pick: its lengths, sizes, price per second and what it accepts.
    Open to anyone (the pricing page shows it before sign-in)."""
    return model_list(context.catalog)


def model_list(catalog: Catalog) -> ModelList:
    return ModelList(items=[ModelOut(**item) for item in catalog.public()])
