"""The model catalog: the built-in one is today's behaviour; a file is checked line by line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sora2.catalog import CatalogError, load_catalog, parse_catalog
from sora2.cli import main
from sora2.settings import load_settings
from tests.fakes.catalogs import DESIGN_CATALOG, write_catalog

GATEWAY_ENV = {"GATEWAY_KEYS": "sk-gateway-one-000000000001, sk-gateway-two-000000000002"}


def problems_of(text: str, environ: dict[str, str] | None = None) -> list[str]:
    import tomllib

    with pytest.raises(CatalogError) as caught:
        parse_catalog(tomllib.loads(text), GATEWAY_ENV if environ is None else environ)
    return caught.value.problems


def test_without_a_file_the_catalog_is_todays_two_models_on_the_local_renderer() -> None:
    catalog = load_catalog(load_settings(app_env="test"), {})

    assert catalog.public() == [
        {
            "id": "sora-2",
            "name": "Sora 2",
            "provider": "local",
            "seconds": [4, 8, 12],
            "sizes": ["1280x720", "720x1280", "1024x1792", "1792x1024"],
            "credits_per_second": 1,
            "image_input": True,
            "remix": True,
        },
        {
            "id": "sora-2-pro",
            "name": "Sora 2 Pro",
            "provider": "local",
            "seconds": [4, 8, 12],
            "sizes": ["1280x720", "720x1280", "1024x1792", "1792x1024"],
            "credits_per_second": 3,
            "image_input": True,
            "remix": True,
        },
    ]
    assert catalog.default.id == "sora-2"


def test_the_built_in_catalog_follows_video_provider_and_video_prices() -> None:
    settings = load_settings(
        app_env="test",
        video_provider="openai",
        openai_api_keys="sk-a-0000000000000001",
        openai_base_url="http://127.0.0.1:9/v1",
        video_prices="sora-2-pro=5",
    )

    catalog = load_catalog(settings, {})

    assert [model.provider for model in catalog.models.values()] == ["openai", "openai"]
    assert catalog.prices() == {"sora-2": 1, "sora-2-pro": 5}
    provider = catalog.providers["openai"]
    assert (provider.base_url, provider.keys) == (
        "http://127.0.0.1:9/v1",
        ("sk-a-0000000000000001",),
    )
    assert "sk-a" not in repr(provider)


def test_designs_example_file_loads_as_written(tmp_path: Path) -> None:
    settings = load_settings(app_env="test", models_file=write_catalog(tmp_path, DESIGN_CATALOG))

    catalog = load_catalog(settings, GATEWAY_ENV)

    model = catalog.models["veo-3.1"]
    assert (model.name, model.provider, model.upstream_model) == (
        "Veo 3.1",
        "gateway",
        "gemini/veo-3.1-generate-preview",
    )
    assert (model.seconds, model.sizes) == ((4, 6, 8), ("1280x720", "720x1280"))
    assert (model.credits_per_second, model.image_input, model.remix) == (2, True, False)
    gateway = catalog.providers["gateway"]
    assert gateway.base_url == "http://127.0.0.1:4000/v1"
    assert len(gateway.keys) == 2
    assert "local" in catalog.providers  # always there, declared or not
    assert model.seconds_refusal(5) == "veo-3.1 makes 4, 6 or 8 s videos"
    assert model.size_refusal("1024x1792") == "veo-3.1 makes videos of 1280x720 or 720x1280 pixels"


def test_upstream_model_and_name_default_to_the_id() -> None:
    catalog = parse_catalog(
        {
            "models": [
                {
                    "id": "wan-2.2",
                    "provider": "local",
                    "seconds": [4],
                    "sizes": ["832x480"],
                    "credits_per_second": 0,
                }
            ]
        },
        {},
    )
    model = catalog.models["wan-2.2"]
    assert (model.name, model.upstream_model, model.image_input, model.remix) == (
        "wan-2.2",
        "wan-2.2",
        False,
        False,
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ('provider = "gateway"', 'provider = "gatewya"'),
            "models[1] (veo-3.1).provider: 'gatewya' is not a provider; use one of 'local', "
            "'gateway' or declare it under [providers.NAME]",
        ),
        (
            ("seconds = [4, 6, 8]", "seconds = []"),
            "models[1] (veo-3.1).seconds: the list is empty; write e.g. [4, 6, 8]",
        ),
        (
            ("seconds = [4, 6, 8]", 'seconds = "4, 6, 8"'),
            "models[1] (veo-3.1).seconds: must be a non-empty list of whole seconds; "
            "write e.g. [4, 6, 8]",
        ),
        (
            ('sizes = ["1280x720", "720x1280"]', 'sizes = ["1280x720", "720\u00d71280"]'),
            "models[1] (veo-3.1).sizes: '720\u00d71280' is not WIDTHxHEIGHT in pixels "
            '(16 to 4096 each), e.g. "1280x720"',
        ),
        (
            ('sizes = ["1280x720", "720x1280"]', "sizes = []"),
            'models[1] (veo-3.1).sizes: the list is empty; write e.g. ["1280x720", "720x1280"]',
        ),
        (
            ("credits_per_second = 2", "credits_per_second = -2"),
            "models[1] (veo-3.1).credits_per_second: -2 is negative; a price is 0 or more",
        ),
        (
            ('kind = "openai"', 'kind = "litellm"'),
            "providers.gateway.kind: 'litellm' is not a provider kind; write kind = \"openai\" "
            "(any server on the /v1/videos contract)",
        ),
        (
            ("remix = false", "remix = false\nsecond = 4"),
            "models[1] (veo-3.1).second: unknown key; a model has credits_per_second, id, "
            "image_input, name, provider, remix, seconds, sizes, upstream_model",
        ),
    ],
)
def test_each_mistake_is_one_line_naming_where_it_is_and_the_fix(
    change: tuple[str, str], expected: str
) -> None:
    text = DESIGN_CATALOG.replace(*change)
    assert text != DESIGN_CATALOG

    problems = problems_of(text)

    # One line for one mistake: a broken provider's models do not call it unknown as well.
    assert problems == [expected]


def test_a_duplicate_id_is_named() -> None:
    problems = problems_of(DESIGN_CATALOG + DESIGN_CATALOG.split("\n\n", 1)[1])

    assert problems == ["models[2].id: 'veo-3.1' is declared twice; ids are unique"]


def test_an_unset_key_variable_is_named_without_showing_any_key() -> None:
    problems = problems_of(DESIGN_CATALOG, environ={})

    assert len(problems) == 1
    assert problems[0] == (
        "providers.gateway.api_keys_env: GATEWAY_KEYS is unset or empty; set it to the "
        "provider's key (or several, comma-separated)"
    )


def test_a_file_without_models_and_every_problem_at_once() -> None:
    assert problems_of('[providers.gateway]\nkind = "openai"\n', {}) == [
        "providers.gateway.base_url: None must be an http(s) URL such as "
        '"http://127.0.0.1:4000/v1"',
        "providers.gateway.api_keys_env: None must name the environment variable holding the "
        'keys, e.g. "GATEWAY_KEYS" (keys never go in the file)',
        "models: the file declares no model; add at least one [[models]] table",
    ]
    many = DESIGN_CATALOG.replace("credits_per_second = 2", "credits_per_second = -1").replace(
        "seconds = [4, 6, 8]", "seconds = [0, 6, 6]"
    )
    assert len(problems_of(many)) == 3


def test_a_missing_or_broken_file_says_so(tmp_path: Path) -> None:
    for text, expected in (
        (None, "MODELS_FILE: no file at"),
        ("[[models]\nid = 1", "not valid TOML: "),
    ):
        path = tmp_path / "models.toml"
        if text is not None:
            path.write_text(text)
        with pytest.raises(CatalogError) as caught:
            load_catalog(load_settings(app_env="test", models_file=path), {})
        assert caught.value.problems[0].startswith(expected)


def test_video_prices_apply_only_to_the_built_in_catalog(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"VIDEO_PRICES names veo-3\.1, not in the built-in"):
        load_catalog(load_settings(app_env="test", video_prices="veo-3.1=2"), {})
    path = write_catalog(tmp_path, DESIGN_CATALOG)
    with pytest.raises(CatalogError, match="VIDEO_PRICES only prices the built-in catalog"):
        load_catalog(load_settings(app_env="test", models_file=path, video_prices="sora-2=1"), {})


def test_a_service_refuses_to_start_on_a_broken_catalog_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_catalog(
        tmp_path, DESIGN_CATALOG.replace("credits_per_second = 2", "credits_per_second = -2")
    )
    monkeypatch.setenv("MODELS_FILE", str(path))
    monkeypatch.delenv("GATEWAY_KEYS", raising=False)
    monkeypatch.chdir(tmp_path)

    for service in ("api", "worker", "web"):
        assert main(["serve", service]) == 2
        error = capsys.readouterr().err
        assert f"Invalid model catalog ({path}):" in error
        assert "  models[1] (veo-3.1).credits_per_second: -2 is negative" in error
        # Only the api and the worker call providers: the web needs no key.
        unset_key = "  providers.gateway.api_keys_env: GATEWAY_KEYS is unset or empty" in error
        assert unset_key == (service != "web")


def test_doctor_reports_the_same_lines(tmp_path: Path) -> None:
    import json
    import os

    path = write_catalog(tmp_path, DESIGN_CATALOG.replace('"720x1280"', '"720x"'))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELS", "GATEWAY"))}
    result = subprocess.run(
        [sys.executable, "-m", "sora2", "doctor", "--json"],
        cwd=tmp_path,
        env=env | {"MODELS_FILE": str(path), "GATEWAY_KEYS": "sk-x", "API_PORT": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 1
    findings = [f for f in json.loads(result.stdout)["findings"] if f["check"] == "model catalog"]
    assert [(f["status"], f["detail"]) for f in findings] == [
        (
            "fail",
            "models[1] (veo-3.1).sizes: '720x' is not WIDTHxHEIGHT in pixels (16 to 4096 "
            'each), e.g. "1280x720"',
        )
    ]


def test_a_catalog_file_needs_no_openai_key_whatever_video_provider_says(tmp_path: Path) -> None:
    path = write_catalog(tmp_path, DESIGN_CATALOG)

    settings = load_settings(
        app_env="test", video_provider="openai", openai_api_keys="", models_file=path
    )

    assert [m.provider for m in load_catalog(settings, GATEWAY_ENV).models.values()] == ["gateway"]
