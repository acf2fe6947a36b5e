"""Choosing the video provider named by `VIDEO_PROVIDER`, importing only that one.

The import is lazy: the local renderer pulls in PyAV and the OpenAI provider the SDK, and the api
must start fast whichever is configured.
"""

from __future__ import annotations

from sora2.api.providers.base import VideoProvider
from sora2.settings import Settings


def create_provider(settings: Settings) -> VideoProvider:
    if settings.video_provider == "openai":
        from sora2.api.providers.openai import OpenAIProvider

        provider: VideoProvider = OpenAIProvider.from_settings(settings)
        return provider
    from sora2.api.providers.local import LocalProvider

    local: VideoProvider = LocalProvider.from_settings(settings)
    return local
