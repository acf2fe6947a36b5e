"""The providers the catalog names, behind one `VideoProvider` that routes each call to its own.

A model's catalog entry names its provider; `start` goes there with the model's `upstream_model`,
and the job id it returns is kept as `<provider>/<upstream id>`, so `status`, `download` and
`cancel` (which get only the id) reach the same provider, whichever process asks later. An id
without a known prefix (stored before providers had names) belongs to the default model's provider.

The imports are lazy: the local renderer pulls in PyAV and the OpenAI provider the SDK, and the
api must start fast whichever is configured.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from sora2.api.providers.base import (
    ErrorKind,
    GenerationRequest,
    ProviderError,
    ProviderJob,
    RemixSource,
    VideoProvider,
)
from sora2.catalog import Catalog, Provider, load_catalog
from sora2.settings import Settings

_SEPARATOR = "/"
_STATUS_RANK = {"ok": 0, "rate_limited": 1, "no_usable_key": 2}


def create_provider(settings: Settings, catalog: Catalog | None = None) -> VideoProvider:
    """Every provider the catalog's models use, behind one router."""
    catalog = catalog or load_catalog(settings)
    providers = {
        provider.name: _provider_of_kind(provider, settings)
        for provider in catalog.used_providers()
    }
    return ProviderRouter(catalog, providers)


def _provider_of_kind(provider: Provider, settings: Settings) -> VideoProvider:
    if provider.kind == "openai":
        from sora2.api.providers.openai import OpenAIProvider

        assert provider.base_url is not None  # the catalog checked it
        made: VideoProvider = OpenAIProvider(
            api_keys=list(provider.keys),
            base_url=provider.base_url,
            timeout_seconds=settings.openai_timeout_ms / 1000,
            max_rest_seconds=settings.job_retry_after_max_seconds,
            name=provider.name,
            keys_variable=provider.api_keys_env or "OPENAI_API_KEYS",
        )
        return made
    from sora2.api.providers.local import LocalProvider

    local: VideoProvider = LocalProvider.from_settings(settings)
    return local


class ProviderRouter:
    """One `VideoProvider` over the catalog's providers, routing by model and by job id."""

    def __init__(self, catalog: Catalog, providers: Mapping[str, VideoProvider]) -> None:
        self.catalog = catalog
        self.providers = dict(providers)
        self._default = catalog.default.provider
        self.name = self._default if len(self.providers) == 1 else "catalog"

    async def start(self, request: GenerationRequest, *, idempotency_key: str | None = None) -> str:
        name, upstream = self._upstream_request(request)
        job_id = await self.providers[name].start(upstream, idempotency_key=idempotency_key)
        return f"{name}{_SEPARATOR}{job_id}"

    async def find_started(self, request: GenerationRequest, *, since: datetime) -> list[str]:
        """Jobs a create for `request` may have made, asked of the provider it would go to."""
        name, upstream = self._upstream_request(request)
        found = await self.providers[name].find_started(upstream, since=since)
        return [f"{name}{_SEPARATOR}{job_id}" for job_id in found]

    def _upstream_request(self, request: GenerationRequest) -> tuple[str, GenerationRequest]:
        """The provider a request goes to, and the request as that provider must see it."""
        model = self.catalog.get(request.model)
        if model is None or model.provider not in self.providers:
            raise ProviderError(
                ErrorKind.FINAL,
                "model_withdrawn",
                f"The model {request.model!r} is no longer in the catalog; the video cannot "
                "be made. Choose another model.",
            )
        upstream = dataclasses.replace(request, model=model.upstream_model)
        if request.remix is not None:
            upstream = dataclasses.replace(
                upstream, remix=self._remix_at(model.provider, request.remix)
            )
        return model.provider, upstream

    def _remix_at(self, provider_name: str, remix: RemixSource) -> RemixSource:
        """The source's id as its own provider knows it; a remix is made where its source was."""
        name, separator, upstream_id = remix.job_id.partition(_SEPARATOR)
        if not separator:
            name, upstream_id = self._default, remix.job_id
        if name != provider_name or not upstream_id:
            raise ProviderError(
                ErrorKind.FINAL,
                "remix_source_unavailable",
                "The video to remix was made elsewhere or is gone; remix another video.",
            )
        return dataclasses.replace(remix, job_id=upstream_id)

    async def status(self, job_id: str) -> ProviderJob:
        provider, upstream_id = self._route(job_id)
        job = await provider.status(upstream_id)
        return dataclasses.replace(job, id=job_id)

    async def download(self, job_id: str, video: Path, thumbnail: Path) -> None:
        provider, upstream_id = self._route(job_id)
        await provider.download(upstream_id, video, thumbnail)

    async def cancel(self, job_id: str) -> None:
        provider, upstream_id = self._route(job_id)
        await provider.cancel(upstream_id)

    def health(self) -> dict[str, Any]:
        """One provider's health as it is; several: each by name, with the worst state."""
        if len(self.providers) == 1:
            return next(iter(self.providers.values())).health()
        states = {name: _health_of(provider) for name, provider in self.providers.items()}
        worst = max(
            (str(state.get("status", "error")) for state in states.values()),
            key=lambda status: _STATUS_RANK.get(status, len(_STATUS_RANK)),
        )
        return {"provider": "catalog", "status": worst, "providers": states}

    async def close(self) -> None:
        for provider in self.providers.values():
            with contextlib.suppress(Exception):
                await provider.close()

    def _route(self, job_id: str) -> tuple[VideoProvider, str]:
        name, separator, upstream_id = job_id.partition(_SEPARATOR)
        if separator and name in self.providers:
            return self.providers[name], upstream_id
        if separator and name in self.catalog.providers:
            raise ProviderError(
                ErrorKind.FINAL,
                "provider_withdrawn",
                f"The provider {name!r} of this video is no longer used by any model.",
            )
        return self.providers[self._default], job_id


def _health_of(provider: VideoProvider) -> dict[str, Any]:
    try:
        return provider.health()
    except Exception as error:
        return {"status": "error", "error": type(error).__name__}
