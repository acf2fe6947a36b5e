"""The model catalog: which models users may pick, what each allows and costs, and who makes it.

One source for these facts. The api's validation and prices, the pages, `sora2 doctor`,
`sora2 models` and the test fakes all read them from here. `MODELS_FILE` names a TOML file of
providers and models (DESIGN, "Models are configuration"); without it the built-in catalog is
today's `sora-2` and `sora-2-pro` on `VIDEO_PROVIDER`. A file is checked whole: every problem is
one line naming where it is and what to write instead, so one start shows them all.

Keys never live in the file, only the name of the environment variable holding them
(`api_keys_env`); `public()` views carry neither keys nor base URLs.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from sora2.settings import Settings

ProviderKind = Literal["local", "openai"]

LOCAL = "local"
PROMPT_MAX_CHARS = 2000
# What the videos table can hold (model String(32), size String(16)) and what renders sensibly.
MODEL_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,31}$")
PROVIDER_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
ENV_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SIZE_PATTERN = re.compile(r"^([1-9][0-9]{1,3})x([1-9][0-9]{1,3})$")
MIN_SIDE, MAX_SIDE = 16, 4096
MAX_SECONDS = 600
LOCAL_MAX_SECONDS = 60  # the local renderer's own limit

_PROVIDER_KEYS = frozenset({"kind", "base_url", "api_keys_env"})
_MODEL_KEYS = frozenset(
    {
        "id",
        "name",
        "provider",
        "upstream_model",
        "seconds",
        "sizes",
        "credits_per_second",
        "image_input",
        "remix",
    }
)

# Today's behaviour, for when no MODELS_FILE is set: the sizes and lengths the OpenAI Videos API
# contract names, at the prices the project has always charged (VIDEO_PRICES may change them).
# Both take an image and offer remix, as the contract does and the local renderer can.
BUILT_IN_SECONDS = (4, 8, 12)
BUILT_IN_SIZES = ("1280x720", "720x1280", "1024x1792", "1792x1024")
BUILT_IN_MODELS: tuple[tuple[str, str, int], ...] = (
    ("sora-2", "Sora 2", 1),
    ("sora-2-pro", "Sora 2 Pro", 3),
)


class CatalogError(Exception):
    """A catalog that cannot work, with one line per problem."""

    def __init__(self, problems: Sequence[str], source: str) -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(
            f"Invalid model catalog ({source}):\n" + "\n".join(f"  {p}" for p in self.problems)
        )


@dataclass(frozen=True, slots=True)
class Provider:
    """Where videos of some models are made. `keys` are secrets: never shown, never logged."""

    name: str
    kind: ProviderKind
    base_url: str | None = None
    api_keys_env: str | None = None
    keys: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True, slots=True)
class Model:
    id: str
    name: str
    provider: str
    upstream_model: str
    seconds: tuple[int, ...]
    sizes: tuple[str, ...]
    credits_per_second: int
    image_input: bool = False
    remix: bool = False

    def cost(self, seconds: int) -> int:
        return self.credits_per_second * seconds

    @property
    def default_seconds(self) -> int:
        return self.seconds[0]

    @property
    def default_size(self) -> str:
        return self.sizes[0]

    def seconds_refusal(self, seconds: int) -> str | None:
        """None when this model makes videos of `seconds`; else what it does make."""
        if seconds in self.seconds:
            return None
        return f"{self.id} makes {_spoken(self.seconds)} s videos"

    def size_refusal(self, size: str) -> str | None:
        if size in self.sizes:
            return None
        return f"{self.id} makes videos of {_spoken(self.sizes)} pixels"

    def public(self) -> dict[str, Any]:
        """DESIGN's `GET /api/models` item: no keys, no base URL, no upstream name."""
        return {
            "id": self.id,
            "name": self.name,
            "provider": self.provider,
            "seconds": list(self.seconds),
            "sizes": list(self.sizes),
            "credits_per_second": self.credits_per_second,
            "image_input": self.image_input,
            "remix": self.remix,
        }


@dataclass(frozen=True, slots=True)
class Catalog:
    providers: Mapping[str, Provider]
    models: Mapping[str, Model]  # in the file's order: the first is the default
    source: str = "built-in"

    def get(self, model_id: str) -> Model | None:
        return self.models.get(model_id)

    @property
    def default(self) -> Model:
        return next(iter(self.models.values()))

    def provider_of(self, model: Model) -> Provider:
        return self.providers[model.provider]

    def public(self) -> list[dict[str, Any]]:
        return [model.public() for model in self.models.values()]

    def prices(self) -> dict[str, int]:
        return {model.id: model.credits_per_second for model in self.models.values()}

    def used_providers(self) -> list[Provider]:
        """Providers at least one model uses, in the order models name them."""
        names = dict.fromkeys(model.provider for model in self.models.values())
        return [self.providers[name] for name in names]


def _spoken(items: Sequence[object]) -> str:
    """`4, 6 or 8`: a list as a person says it."""
    words = [str(item) for item in items]
    if len(words) == 1:
        return words[0]
    return f"{', '.join(words[:-1])} or {words[-1]}"


def load_catalog(
    settings: Settings, environ: Mapping[str, str] | None = None, *, need_keys: bool = True
) -> Catalog:
    """The catalog `settings` describe, or `CatalogError` listing every problem.

    `need_keys=False` is for the web, which shows the catalog but never calls a provider: it
    may run without the providers' keys in its environment."""
    environ = _environment() if environ is None else environ
    if settings.models_file is None:
        return _built_in(settings)
    source = str(settings.models_file)
    if settings.video_prices:
        raise CatalogError(
            [
                "VIDEO_PRICES only prices the built-in catalog: with MODELS_FILE, set "
                "credits_per_second on each model in the file and unset VIDEO_PRICES"
            ],
            source,
        )
    try:
        document = tomllib.loads(Path(settings.models_file).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogError(
            [f"MODELS_FILE: no file at {source}; fix the path or unset MODELS_FILE"], source
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise CatalogError([f"MODELS_FILE: cannot read {source} ({error})"], source) from None
    except tomllib.TOMLDecodeError as error:
        raise CatalogError([f"not valid TOML: {error}"], source) from None
    return parse_catalog(document, environ, source=source, need_keys=need_keys)


def catalog_problems(settings: Settings, environ: Mapping[str, str] | None = None) -> list[str]:
    """Every problem of the configured catalog (empty when it loads): for `sora2 doctor`."""
    try:
        load_catalog(settings, environ)
    except CatalogError as error:
        return error.problems
    return []


def _environment() -> dict[str, str]:
    """The process environment over the `.env` file, as `Settings` sees variables."""
    from dotenv import dotenv_values

    merged = {k: v for k, v in dotenv_values(".env").items() if v is not None}
    merged.update(os.environ)
    return merged


def _built_in(settings: Settings) -> Catalog:
    unknown = sorted(set(settings.video_prices) - {model_id for model_id, _, _ in BUILT_IN_MODELS})
    if unknown:
        raise CatalogError(
            [
                f"VIDEO_PRICES names {', '.join(unknown)}, not in the built-in catalog "
                f"({', '.join(m for m, _, _ in BUILT_IN_MODELS)}); declare new models in "
                "MODELS_FILE instead"
            ],
            "built-in",
        )
    if settings.video_provider == "openai":
        provider = Provider(
            name="openai",
            kind="openai",
            base_url=settings.openai_base_url,
            api_keys_env="OPENAI_API_KEYS",
            keys=tuple(settings.openai_api_keys),
        )
    else:
        provider = Provider(name=LOCAL, kind="local")
    models = {
        model_id: Model(
            id=model_id,
            name=name,
            provider=provider.name,
            upstream_model=model_id,
            seconds=BUILT_IN_SECONDS,
            sizes=BUILT_IN_SIZES,
            credits_per_second=settings.video_prices.get(model_id, price),
            image_input=True,
            remix=True,
        )
        for model_id, name, price in BUILT_IN_MODELS
    }
    providers = {LOCAL: Provider(name=LOCAL, kind="local"), provider.name: provider}
    return Catalog(providers=providers, models=models)


def parse_catalog(
    document: Mapping[str, Any],
    environ: Mapping[str, str],
    *,
    source: str = "MODELS_FILE",
    need_keys: bool = True,
) -> Catalog:
    """A catalog from a parsed TOML document; `CatalogError` with every problem found."""
    problems: list[str] = []
    for key in document:
        if key not in ("providers", "models"):
            problems.append(
                f"{key}: not a catalog key; the file has [providers.NAME] and [[models]]"
            )
    providers = _parse_providers(document.get("providers", {}), environ, problems, need_keys)
    table = document.get("providers")
    # A provider that failed its own check is still declared: its models are not told it is
    # unknown on top of the lines that say what is wrong with it.
    declared = set(table) if isinstance(table, dict) else set()
    models = _parse_models(document.get("models"), providers, declared, problems)
    if problems:
        raise CatalogError(problems, source)
    return Catalog(providers=providers, models=models, source=source)


def _parse_providers(
    table: object, environ: Mapping[str, str], problems: list[str], need_keys: bool
) -> dict[str, Provider]:
    providers = {LOCAL: Provider(name=LOCAL, kind="local")}
    if not isinstance(table, dict):
        problems.append("providers: must be tables, written [providers.NAME]")
        return providers
    for name, entry in table.items():
        where = f"providers.{name}"
        if not isinstance(entry, dict):
            problems.append(f"{where}: must be a table, written [{where}]")
            continue
        if name == LOCAL:
            problems.append(f"{where}: 'local' is built in (the local renderer); pick another name")
            continue
        if not PROVIDER_NAME_PATTERN.match(name):
            problems.append(f"{where}: a name is 1 to 32 letters, digits, '-' or '_'")
            continue
        provider = _parse_provider(name, entry, environ, problems, need_keys)
        if provider is not None:
            providers[name] = provider
    return providers


def _parse_provider(
    name: str,
    entry: dict[str, Any],
    environ: Mapping[str, str],
    problems: list[str],
    need_keys: bool,
) -> Provider | None:
    where = f"providers.{name}"
    before = len(problems)
    for key in entry:
        if key not in _PROVIDER_KEYS:
            problems.append(f"{where}.{key}: unknown key; a provider has {_keys(_PROVIDER_KEYS)}")
    kind = entry.get("kind")
    if kind != "openai":
        problems.append(
            f'{where}.kind: {kind!r} is not a provider kind; write kind = "openai" '
            "(any server on the /v1/videos contract)"
        )
    base_url = entry.get("base_url")
    if not isinstance(base_url, str) or not _is_http_url(base_url):
        problems.append(
            f"{where}.base_url: {base_url!r} must be an http(s) URL such as "
            '"http://127.0.0.1:4000/v1"'
        )
    keys: tuple[str, ...] = ()
    env_name = entry.get("api_keys_env")
    if not isinstance(env_name, str) or not ENV_NAME_PATTERN.match(env_name):
        problems.append(
            f"{where}.api_keys_env: {env_name!r} must name the environment variable holding the "
            'keys, e.g. "GATEWAY_KEYS" (keys never go in the file)'
        )
    else:
        keys = tuple(key.strip() for key in environ.get(env_name, "").split(",") if key.strip())
        if not keys and need_keys:
            problems.append(
                f"{where}.api_keys_env: {env_name} is unset or empty; set it to the provider's "
                "key (or several, comma-separated)"
            )
    if len(problems) > before:
        return None
    return Provider(
        name=name,
        kind="openai",
        base_url=str(base_url).rstrip("/"),
        api_keys_env=str(env_name),
        keys=keys,
    )


def _parse_models(
    entries: object,
    providers: Mapping[str, Provider],
    declared: set[str],
    problems: list[str],
) -> dict[str, Model]:
    if entries is None:
        problems.append("models: the file declares no model; add at least one [[models]] table")
        return {}
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        problems.append("models: must be an array of tables, each written [[models]]")
        return {}
    if not entries:
        problems.append("models: the list is empty; add at least one [[models]] table")
    models: dict[str, Model] = {}
    for number, entry in enumerate(entries, start=1):
        model = _parse_model(number, entry, providers, declared, problems)
        if model is None:
            continue
        if model.id in models:
            problems.append(f"models[{number}].id: {model.id!r} is declared twice; ids are unique")
            continue
        models[model.id] = model
    return models


def _parse_model(
    number: int,
    entry: dict[str, Any],
    providers: Mapping[str, Provider],
    declared: set[str],
    problems: list[str],
) -> Model | None:
    model_id = entry.get("id")
    where = f"models[{number}]" + (f" ({model_id})" if isinstance(model_id, str) else "")
    before = len(problems)
    for key in entry:
        if key not in _MODEL_KEYS:
            problems.append(f"{where}.{key}: unknown key; a model has {_keys(_MODEL_KEYS)}")
    if not isinstance(model_id, str) or not MODEL_ID_PATTERN.match(model_id):
        problems.append(
            f"{where}.id: {model_id!r} must be 1 to 32 letters, digits, '.', '_', ':' or '-', "
            'e.g. "veo-3.1"'
        )
    name = entry.get("name", model_id)
    if not isinstance(name, str) or not name.strip() or len(name) > 80:
        problems.append(f"{where}.name: must be a short text (1 to 80 characters)")
    provider_name = entry.get("provider")
    provider = providers.get(provider_name) if isinstance(provider_name, str) else None
    broken_provider = provider is None and provider_name in declared
    if provider is None and not broken_provider:
        usable = ", ".join(repr(p) for p in providers)
        problems.append(
            f"{where}.provider: {provider_name!r} is not a provider; use one of {usable} "
            "or declare it under [providers.NAME]"
        )
    upstream = entry.get("upstream_model", model_id)
    if not isinstance(upstream, str) or not upstream.strip():
        problems.append(f"{where}.upstream_model: must be the model name the provider expects")
    seconds = _parse_seconds(where, entry.get("seconds"), provider, problems)
    sizes = _parse_sizes(where, entry.get("sizes"), provider, problems)
    price = entry.get("credits_per_second")
    if isinstance(price, bool) or not isinstance(price, int):
        problems.append(f"{where}.credits_per_second: {price!r} must be a whole number, e.g. 2")
    elif price < 0:
        problems.append(f"{where}.credits_per_second: {price} is negative; a price is 0 or more")
    flags: dict[str, bool] = {}
    for flag in ("image_input", "remix"):
        value = entry.get(flag, False)
        if not isinstance(value, bool):
            problems.append(f"{where}.{flag}: {value!r} must be true or false")
        flags[flag] = bool(value)
    if len(problems) > before or broken_provider:
        return None
    return Model(
        id=str(model_id),
        name=str(name).strip(),
        provider=str(provider_name),
        upstream_model=str(upstream),
        seconds=seconds,
        sizes=sizes,
        credits_per_second=int(price),  # type: ignore[arg-type]  # checked above
        **flags,
    )


def _parse_seconds(
    where: str, value: object, provider: Provider | None, problems: list[str]
) -> tuple[int, ...]:
    limit = LOCAL_MAX_SECONDS if provider is not None and provider.kind == "local" else MAX_SECONDS
    if not isinstance(value, list) or not value:
        state = "the list is empty" if value == [] else "must be a non-empty list of whole seconds"
        problems.append(f"{where}.seconds: {state}; write e.g. [4, 6, 8]")
        return ()
    good: list[int] = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int):
            problems.append(f"{where}.seconds: {item!r} is not a whole number of seconds")
        elif not 1 <= item <= limit:
            problems.append(f"{where}.seconds: {item} is outside 1 to {limit}")
        elif item in good:
            problems.append(f"{where}.seconds: {item} is listed twice")
        else:
            good.append(item)
    return tuple(good)


def _parse_sizes(
    where: str, value: object, provider: Provider | None, problems: list[str]
) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        state = "the list is empty" if value == [] else "must be a non-empty list"
        problems.append(f'{where}.sizes: {state}; write e.g. ["1280x720", "720x1280"]')
        return ()
    local = provider is not None and provider.kind == "local"
    good: list[str] = []
    for item in value:
        match = SIZE_PATTERN.match(item) if isinstance(item, str) else None
        sides = (int(match.group(1)), int(match.group(2))) if match else ()
        if not sides or not all(MIN_SIDE <= side <= MAX_SIDE for side in sides):
            problems.append(
                f"{where}.sizes: {item!r} is not WIDTHxHEIGHT in pixels "
                f'({MIN_SIDE} to {MAX_SIDE} each), e.g. "1280x720"'
            )
        elif local and any(side % 2 for side in sides):
            problems.append(f"{where}.sizes: {item!r}: the local renderer needs even sides")
        elif item in good:
            problems.append(f"{where}.sizes: {item!r} is listed twice")
        else:
            good.append(str(item))
    return tuple(good)


def _keys(allowed: frozenset[str]) -> str:
    return ", ".join(sorted(allowed))


def _is_http_url(value: str) -> bool:
    parts = urlsplit(value.strip())
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)
