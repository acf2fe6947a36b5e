"""The catalog through the api: `GET /api/models`, and each create checked against its model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sora2.settings import Settings
from tests.api.conftest import make_settings
from tests.api.fake_provider import ScriptedProvider
from tests.api.harness import RunningApi, running_api
from tests.fakes.catalogs import LOCAL_ONLY_CATALOG, gateway_catalog, write_catalog

PROMPT = "A heron lifts off a misty lake"
GATEWAY_KEY = "sk-gateway-secret-0000000000009f3a"


async def create(api: RunningApi, token: str, **fields: Any) -> tuple[int, dict[str, Any]]:
    status, body, _ = await api.request(
        "POST", "/api/videos", token=token, json={"prompt": PROMPT} | fields
    )
    return status, body


async def test_models_are_listed_in_designs_shape_to_anyone(catalog_api: RunningApi) -> None:
    status, body, _ = await catalog_api.request("GET", "/api/models")

    assert status == 200
    assert [item["id"] for item in body["items"]] == ["veo-3.1", "local-draft"]
    assert body["items"][0] == {
        "id": "veo-3.1",
        "name": "Veo 3.1",
        "provider": "local",
        "seconds": [4, 6, 8],
        "sizes": ["1280x720", "720x1280"],
        "credits_per_second": 2,
        "image_input": True,
        "remix": False,
    }


async def test_the_built_in_catalog_is_listed_without_a_file(api: RunningApi) -> None:
    _, body, _ = await api.request("GET", "/api/models")

    assert [(m["id"], m["credits_per_second"], m["seconds"]) for m in body["items"]] == [
        ("sora-2", 1, [4, 8, 12]),
        ("sora-2-pro", 3, [4, 8, 12]),
    ]


async def test_a_refusal_names_what_the_model_allows_and_charges_nothing(
    catalog_api: RunningApi,
) -> None:
    token, _ = await catalog_api.register()

    status, body = await create(catalog_api, token, model="veo-3.1", seconds=5)
    assert status == 422
    assert "veo-3.1 makes 4, 6 or 8 s videos" in body["message"]
    assert body["details"]["fields"] == [
        {"field": "seconds", "message": "veo-3.1 makes 4, 6 or 8 s videos"}
    ]
    assert body["details"]["allowed"] == [4, 6, 8]

    status, body = await create(catalog_api, token, model="veo-3.1", seconds=4, size="1024x1792")
    assert status == 422
    assert body["details"]["fields"][0]["field"] == "size"
    assert "veo-3.1 makes videos of 1280x720 or 720x1280 pixels" in body["message"]

    status, body = await create(catalog_api, token, model="sora-2")
    assert status == 422
    assert "'sora-2' is not offered; choose one of veo-3.1, local-draft" in body["message"]

    _, balance, _ = await catalog_api.request("GET", "/api/credits/balance", token=token)
    assert balance["balance"] == 100
    _, videos, _ = await catalog_api.request("GET", "/api/videos", token=token)
    assert videos["total"] == 0


async def test_a_create_is_charged_by_its_models_price_and_defaults_to_its_choices(
    catalog_api: RunningApi,
) -> None:
    token, _ = await catalog_api.register()

    status, video = await create(catalog_api, token, model="veo-3.1", seconds=6, size="720x1280")
    assert status == 202, video
    assert (video["model"], video["seconds"], video["size"], video["cost"]) == (
        "veo-3.1",
        6,
        "720x1280",
        12,
    )
    status, default = await create(catalog_api, token)
    assert (default["model"], default["seconds"], default["size"], default["cost"]) == (
        "veo-3.1",
        4,
        "1280x720",
        8,
    )
    status, draft = await create(catalog_api, token, model="local-draft")
    assert (draft["seconds"], draft["size"], draft["cost"]) == (2, "640x360", 2)
    _, balance, _ = await catalog_api.request("GET", "/api/credits/balance", token=token)
    assert balance == {"balance": 78, "prices": {"veo-3.1": 2, "local-draft": 1}}


async def test_regenerating_a_video_whose_model_left_the_catalog_says_so(
    settings: Settings, tmp_path: Path, provider: ScriptedProvider
) -> None:
    async with running_api(settings, provider) as before:
        token, _ = await before.register()
        _, video = await create(before, token, model="sora-2")
    path = write_catalog(tmp_path, LOCAL_ONLY_CATALOG)
    async with running_api(settings.model_copy(update={"models_file": path}), provider) as after:
        status, body, _ = await after.request(
            "POST", f"/api/videos/{video['id']}/regenerate", token=token
        )
    assert status == 422
    assert "'sora-2' is not offered" in body["message"]


async def test_no_key_or_base_url_reaches_the_models_list(
    database_url: str, tmp_path: Path, provider: ScriptedProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_KEYS", GATEWAY_KEY)
    path = write_catalog(tmp_path, gateway_catalog("http://127.0.0.1:4999/v1"))
    settings = make_settings(database_url, tmp_path, models_file=path)

    async with running_api(settings, provider) as api:
        _, body, _ = await api.request("GET", "/api/models")
        _, openapi, _ = await api.request("GET", "/openapi.json")

    text = json.dumps(body)
    assert [item["provider"] for item in body["items"]] == ["gateway", "local"]
    for secret in (GATEWAY_KEY, "4999", "base_url", "api_keys_env", "gemini/veo"):
        assert secret not in text
    assert "/api/models" in openapi["paths"]
