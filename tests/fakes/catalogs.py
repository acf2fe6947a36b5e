"""Catalog files for tests, starting with DESIGN's example exactly as written there."""

from __future__ import annotations

from pathlib import Path

# ruff: noqa: E501 - DESIGN's example is kept verbatim, long comment lines included

# DESIGN.md, "Models are configuration", verbatim.
DESIGN_CATALOG = """\
[providers.gateway]            # any server on the /v1/videos contract: a LiteLLM proxy, vLLM-Omni, OpenAI itself
kind = "openai"
base_url = "http://127.0.0.1:4000/v1"
api_keys_env = "GATEWAY_KEYS"  # comma-separated keys, rotated as OPENAI_API_KEYS are

[[models]]
id = "veo-3.1"                 # what users pick and what the api stores
name = "Veo 3.1"
provider = "gateway"
upstream_model = "gemini/veo-3.1-generate-preview"   # sent upstream; defaults to id
seconds = [4, 6, 8]
sizes = ["1280x720", "720x1280"]
credits_per_second = 2
image_input = true             # accepts input_reference (image-to-video)
remix = false                  # offers POST /api/videos/{id}/remix
"""


def gateway_catalog(base_url: str, *, keys_env: str = "GATEWAY_KEYS") -> str:
    """DESIGN's catalog aimed at a gateway on loopback, plus a local model beside it."""
    return (
        DESIGN_CATALOG.replace("http://127.0.0.1:4000/v1", base_url).replace(
            '"GATEWAY_KEYS"', f'"{keys_env}"'
        )
        + LOCAL_MODEL
    )


LOCAL_MODEL = """
[[models]]
id = "local-draft"
name = "Local draft"
provider = "local"
seconds = [2, 4]
sizes = ["640x360", "360x640"]
credits_per_second = 1
image_input = true
remix = true
"""

# Models on the local provider only: needs no key, for api tests that bring their own provider.
LOCAL_ONLY_CATALOG = (
    """
[[models]]
id = "veo-3.1"
name = "Veo 3.1"
provider = "local"
seconds = [4, 6, 8]
sizes = ["1280x720", "720x1280"]
credits_per_second = 2
image_input = true
remix = false
"""
    + LOCAL_MODEL
)


def write_catalog(folder: Path, text: str, name: str = "models.toml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path
