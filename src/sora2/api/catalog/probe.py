"""`sora2 models`: the catalog as a table, and whether each of its providers answers.

An `openai`-kind provider is asked `GET {base_url}/models` with its first key: LiteLLM, vLLM and
OpenAI all serve it, and it costs nothing. Its answer says whether the server is there, whether it
takes the key, and (when it lists models) whether each `upstream_model` is among them.
"""

from __future__ import annotations

import importlib.util
import json
import urllib.error
import urllib.request
from dataclasses import dataclass

from sora2.catalog import Catalog, Provider

PROBE_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class ProviderAnswer:
    provider: str
    ok: bool
    detail: str
    listed: frozenset[str] | None = None  # model names the server listed, when it did


def probe(provider: Provider, *, timeout: float = PROBE_TIMEOUT_SECONDS) -> ProviderAnswer:
    if provider.kind == "local":
        if importlib.util.find_spec("av") is None:
            return ProviderAnswer(provider.name, False, "the local renderer needs PyAV: make venv")
        return ProviderAnswer(provider.name, True, "local renderer, offline")
    url = f"{provider.base_url}/models"
    headers = {"Authorization": f"Bearer {provider.keys[0]}"}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - http(s), checked
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            body = response.read(1_000_000)
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            return ProviderAnswer(
                provider.name,
                False,
                f"answers, but refuses the first key of {provider.api_keys_env} "
                f"(HTTP {error.code})",
            )
        return ProviderAnswer(provider.name, True, f"answers (HTTP {error.code} to GET /models)")
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        reason = getattr(error, "reason", error)
        return ProviderAnswer(provider.name, False, f"does not answer at {url} ({reason})")
    return ProviderAnswer(provider.name, True, "answers", _listed_models(body))


def _listed_models(body: bytes) -> frozenset[str] | None:
    try:
        document = json.loads(body)
        return frozenset(str(item["id"]) for item in document["data"])
    except (ValueError, KeyError, TypeError):
        return None


def describe(catalog: Catalog, answers: dict[str, ProviderAnswer]) -> list[str]:
    """The lines `sora2 models` prints: each model, then each provider's answer."""
    lines = [f"Models ({catalog.source}):"]
    for model in catalog.models.values():
        flags = [flag for flag, on in (("image", model.image_input), ("remix", model.remix)) if on]
        lines.append(
            f"  {model.id:<20} {model.name:<24} {model.provider:<12} "
            f"{'/'.join(map(str, model.seconds))} s  {', '.join(model.sizes)}  "
            f"{model.credits_per_second} credit(s)/s" + (f"  [{', '.join(flags)}]" if flags else "")
        )
    lines.append("Providers:")
    for name, answer in answers.items():
        lines.append(f"  {name:<12} {'ok' if answer.ok else 'FAIL':<5} {answer.detail}")
        if answer.listed is None:
            continue
        for model in catalog.models.values():
            if model.provider == name and model.upstream_model not in answer.listed:
                lines.append(
                    f"  {'':<12} {'WARN':<5} {model.id}: {model.upstream_model!r} is not among "
                    "the models it lists"
                )
    return lines
