"""`sora2 doctor`: find what stops the stack from working on this machine, and say how to fix it.

Every check returns findings instead of raising, so one broken thing never hides the others; it
must run even when the settings are invalid (it then checks the rest with the defaults). The api
and the database are reached the way users reach them: over HTTP, and through the api's own CLI
(`sora2 db check --json`) in a subprocess.
"""

from __future__ import annotations

import dataclasses
import http.client
import importlib.metadata
import importlib.util
import ipaddress
import json
import re
import resource
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from sora2.devstack import ports
from sora2.devstack.report import Finding
from sora2.devstack.runs import RunFile
from sora2.settings import Settings, describe_validation_error

HTTP_TIMEOUT = 3.0
DB_CHECK_TIMEOUT = 30.0
SUPPORTED_PYTHON = (3, 11)
OPENAI_VIDEOS_SHUTDOWN = date(2026, 9, 24)
_LOOPBACKS = ("127.0.0.1", "::1")


def diagnose() -> list[Finding]:
    """Runs every check in order; later ones use the settings (or the defaults, if invalid)."""
    findings = [check_python(), *check_packages()]
    settings, settings_finding = load_for_diagnosis()
    findings.append(settings_finding)
    settings_valid = settings_finding.status == "ok"
    findings.extend(check_ports(settings))
    findings.extend(check_api(settings))
    findings.extend(check_database(settings, settings_valid=settings_valid))
    findings.extend(check_folders(settings))
    findings.extend(check_storage(settings, settings_valid=settings_valid))
    findings.append(check_open_files(settings))
    findings.extend(check_catalog(settings, settings_valid=settings_valid))
    findings.extend(check_provider(settings, settings_valid=settings_valid))
    findings.extend(check_mail(settings))
    return findings


# --- python and packages ---------------------------------------------------------------------


def check_python() -> Finding:
    version = ".".join(str(part) for part in sys.version_info[:3])
    where = f"{version} ({sys.executable})"
    if sys.version_info[:2] == SUPPORTED_PYTHON:
        return Finding("python", "ok", where)
    wanted = ".".join(str(part) for part in SUPPORTED_PYTHON)
    return Finding(
        "python",
        "fail",
        f"{where}; sora2 needs Python {wanted}",
        f"create the venv with Python {wanted}: make clean && make venv PYTHON=python{wanted}",
    )


def _requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    return match.group(0) if match else requirement


def _extra_of(requirement: str) -> str | None:
    match = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", requirement)
    return match.group(1) if match else None


def _installed(name: str) -> bool:
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def check_packages() -> list[Finding]:
    """The dependencies and each extra (`dev`: tests and linters): installed or not."""
    try:
        requirements = importlib.metadata.requires("sora2") or []
    except importlib.metadata.PackageNotFoundError:
        return [Finding("packages", "fail", "sora2 is not installed", "make venv")]
    groups: dict[str, list[str]] = {}
    for requirement in requirements:
        groups.setdefault(_extra_of(requirement) or "", []).append(_requirement_name(requirement))
    findings = []
    for extra, names in sorted(groups.items()):
        missing = [name for name in names if not _installed(name)]
        label = f"extra [{extra}]" if extra else "dependencies"
        if not missing:
            findings.append(Finding(label, "ok", f"all {len(names)} installed"))
            continue
        findings.append(
            Finding(
                label,
                "warn" if extra else "fail",
                f"missing: {', '.join(missing)}" + _EXTRA_PURPOSE.get(extra, ""),
                _INSTALL_COMMAND.get(extra, f"pip install -e '.[{extra}]'"),
            )
        )
    return findings


# Why an extra matters and how the Makefile installs it; an extra not listed gets the pip line.
_EXTRA_PURPOSE = {"dev": " (needed for the tests and linters)", "bench": " (needed for make bench)"}
_INSTALL_COMMAND = {
    "": "make venv (or pip install -e .)",
    "dev": "make venv (or pip install -e '.[dev]')",
    "bench": "make bench installs it (or pip install -e '.[bench]')",
}


# --- settings --------------------------------------------------------------------------------


def load_for_diagnosis() -> tuple[Settings, Finding]:
    """The settings, or when invalid, the same with each invalid variable at its default."""
    source = "environment and ./.env" if Path(".env").is_file() else "environment (no ./.env)"
    try:
        settings = Settings()
    except ValidationError as error:
        finding = Finding(
            "settings",
            "fail",
            "; ".join(line.strip() for line in describe_validation_error(error).splitlines()[1:]),
            "correct the variables named (in the environment or .env); docs/configuration.md "
            "lists each one. Checks below use the defaults for them.",
        )
        return _settings_without(error), finding
    return settings, Finding("settings", "ok", f"valid ({settings.app_env}), from {source}")


def _settings_without(error: ValidationError) -> Settings:
    defaults: dict[str, Any] = {}
    for item in error.errors():
        field = _field_named(str(item["loc"][0])) if item["loc"] else None
        if field is not None:
            defaults[field] = Settings.model_fields[field].get_default(call_default_factory=True)
    try:
        return Settings(**defaults)
    except ValidationError:
        pass
    # A rule across variables failed (production without JWT_SECRET, openai without keys):
    # check the rest as in development with the local provider.
    try:
        return Settings(**defaults, app_env="development", video_provider="local")
    except ValidationError:
        return Settings.model_construct()


def _field_named(variable: str) -> str | None:
    for name, field in Settings.model_fields.items():
        aliases = getattr(field.validation_alias, "choices", [])
        if variable.lower() == name or variable in aliases:
            return name
    return None


# --- ports -----------------------------------------------------------------------------------


def check_ports(settings: Settings) -> list[Finding]:
    run_file = RunFile(settings.data_dir)
    return [
        _check_port("api", settings.api_host, settings.api_port, run_file),
        _check_port("web", settings.web_host, settings.web_port, run_file),
    ]


def _check_port(service: str, host: str, port: int, run_file: RunFile) -> Finding:
    label = f"port {port} ({service})"
    variable = f"{service.upper()}_PORT"
    problem = ports.bind_problem(host)
    if problem is not None:
        return Finding(label, "fail", problem, f"set {service.upper()}_HOST=127.0.0.1")
    if ports.can_bind(host, port):
        return Finding(label, "ok", f"free on {host}")
    holder = ports.holder_of(port)
    if holder is None or holder.pid is None:
        return Finding(
            label,
            "warn",
            f"in use on {host} by a process this user cannot see",
            f"find it with `ss -ltnp 'sport = :{port}'`, or set {variable}",
        )
    if run_file.run_holding(holder.pid) is not None:
        return Finding(
            label, "ok", f"the {service} of this checkout's sora2 dev (PID {holder.pid})"
        )
    if _is_sora2_service(holder.pid, service):
        return Finding(label, "ok", f"a sora2 {service} (PID {holder.pid}, {holder.command})")
    return Finding(
        label,
        "fail",
        f"held by {holder.describe()}",
        f"stop it if it is yours (kill {holder.pid}); or set {variable} to a free port. "
        "sora2 dev leaves it alone and takes the next free port (--strict-ports: refuses).",
    )


def _is_sora2_service(pid: int, service: str) -> bool:
    command = ports.command_of(pid).split()
    return "sora2" in " ".join(command) and "serve" in command and service in command


# --- api reachability and health -------------------------------------------------------------


def _try_connect(address: tuple[Any, ...], family: int) -> str | None:
    """None when a TCP connection opens, else the reason (refused, timed out, ...)."""
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(HTTP_TIMEOUT)
        try:
            sock.connect(address)
        except OSError as error:
            return error.strerror or type(error).__name__
    return None


def _reachability(host: str, port: int) -> dict[str, str | None]:
    """Every address `host` resolves to, with None where a connection opens, else the reason."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    results: dict[str, str | None] = {}
    for family, _, _, _, address in infos:
        results.setdefault(str(address[0]), _try_connect(address, family))
    return results


def check_api(settings: Settings) -> list[Finding]:
    """Each api the web proxies to (every one of `API_URLS`), then the proxy path itself."""
    urls = settings.api_urls
    if len(urls) == 1:
        return [*_check_one_api(settings), _check_proxy(settings)]
    findings: list[Finding] = []
    for number, url in enumerate(urls, start=1):
        one = settings.model_copy(update={"api_url": url, "api_urls_list": []})
        findings.extend(
            dataclasses.replace(
                finding,
                check=f"{finding.check} (api{number})",
                detail=finding.detail.replace("API_URL ", "API_URLS entry "),
                fix=finding.fix.replace("API_URL=", "the API_URLS entry to ").replace(
                    "set API_URL to", "set its API_URLS entry to"
                ),
            )
            for finding in _check_one_api(one)
        )
    findings.append(_check_proxy(settings))
    return findings


def _check_one_api(settings: Settings) -> list[Finding]:
    url = urlsplit(settings.api_url)
    host = url.hostname or "127.0.0.1"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        reach = _reachability(host, port)
    except socket.gaierror as error:
        return [
            Finding(
                "api reachable",
                "fail",
                f"API_URL host {host!r} does not resolve ({error.strerror})",
                "set API_URL=http://127.0.0.1:3101 (or the api's real address)",
            )
        ]
    answering = [address for address, problem in reach.items() if problem is None]
    if not answering:
        return [_unreachable(settings, host, port, reach)]
    findings = []
    failing = {address: problem for address, problem in reach.items() if problem is not None}
    if failing:
        findings.append(_partly_reachable(host, port, answering, failing))
    findings.append(_check_health(settings))
    return findings


def _unreachable(settings: Settings, host: str, port: int, reach: dict[str, str | None]) -> Finding:
    tried = ", ".join(f"{ports.url_host(a)}:{port} {problem}" for a, problem in reach.items())
    # Only a loopback name can be the mismatch; a remote host that is down is simply down.
    local = all(ipaddress.ip_address(address.split("%")[0]).is_loopback for address in reach)
    elsewhere = [
        address
        for address in _LOOPBACKS
        if local and address not in reach and _try_connect_host(address, port) is None
    ]
    if elsewhere:
        other = elsewhere[0]
        return Finding(
            "api reachable",
            "fail",
            f"API_URL {settings.api_url} reaches {tried}, but the api answers on "
            f"{ports.url_host(other)}:{port}: {host} resolves to a different loopback address "
            "than the one the api listens on (the classic localhost → ::1 vs 127.0.0.1 mismatch)",
            f"set API_URL=http://{ports.url_host(other)}:{port}",
        )
    hint = ""
    if _url_port_differs(settings):
        hint = f"; note API_URL points at port {port} while API_PORT is {settings.api_port}"
    return Finding(
        "api reachable",
        "fail",
        f"nothing answers at API_URL {settings.api_url} ({tried}){hint}",
        "start the api: sora2 dev (everything) or sora2 dev api; "
        "if it runs elsewhere, set API_URL to its address",
    )


def _url_port_differs(settings: Settings) -> bool:
    return urlsplit(settings.api_url).port not in (None, settings.api_port)


def _try_connect_host(address: str, port: int) -> str | None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return _try_connect((address, port), family)


def _partly_reachable(
    host: str, port: int, answering: list[str], failing: Mapping[str, str | None]
) -> Finding:
    good = ports.url_host(answering[0])
    bad = ", ".join(f"{ports.url_host(a)} ({problem})" for a, problem in failing.items())
    return Finding(
        "api address",
        "warn",
        f"{host} resolves to several addresses; the api answers on {good} but not on {bad}. "
        "Clients that use only the first address (Node.js 17+, some tools) fail with "
        "ECONNREFUSED (the classic localhost → ::1 vs 127.0.0.1 mismatch)",
        f"use the address itself: API_URL=http://{good}:{port}",
    )


def _get(url: str) -> tuple[int, dict[str, Any] | None, str]:
    """Status, JSON body (if it is JSON) and a short text of `GET url`; raises OSError."""
    parts = urlsplit(url)
    connection_class = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    connection = connection_class(parts.netloc, timeout=HTTP_TIMEOUT)
    try:
        connection.request("GET", parts.path or "/")
        response = connection.getresponse()
        raw = response.read(64 * 1024).decode("utf-8", "replace")
    finally:
        connection.close()
    try:
        document = json.loads(raw)
    except ValueError:
        document = None
    return response.status, document if isinstance(document, dict) else None, raw[:200]


def _check_health(settings: Settings) -> Finding:
    url = settings.api_url + "/api/health"
    try:
        status, document, text = _get(url)
    except (OSError, http.client.HTTPException) as error:
        return Finding(
            "api health",
            "fail",
            f"{url} accepted the connection but did not answer ({error})",
            "look at the api's console (logs/dev/api.log); restart it: sora2 dev api",
        )
    if status == 200:
        checks = _describe_checks(document)
        if (document or {}).get("status") == "degraded":
            return Finding(
                "api health",
                "warn",
                f"{url} → 200 but degraded{checks}",
                "the check that is not ok says what; for the provider, see its keys and "
                "OPENAI_BASE_URL (the api's console: logs/dev/api.log)",
            )
        return Finding("api health", "ok", f"{url} → 200{checks}")
    if status == 503 and document is not None:
        failing = [
            f"{name}: {_verdict(value)}"
            for name, value in (document.get("checks") or {}).items()
            if _verdict(value) not in ("ok", "True")
        ]
        return Finding(
            "api health",
            "fail",
            f"{url} → 503; failing: {', '.join(failing) or _compact(document)}",
            "see the database line below, and the api's console (logs/dev/api.log)",
        )
    return Finding(
        "api health",
        "fail",
        f"{url} → HTTP {status} ({text!r}): what answers there is not a working sora2 api",
        "point API_URL at the sora2 api, or free the port for it",
    )


def _describe_checks(document: dict[str, Any] | None) -> str:
    checks = (document or {}).get("checks") or {}
    if not isinstance(checks, dict) or not checks:
        return ""
    return " (" + ", ".join(f"{name}: {_verdict(value)}" for name, value in checks.items()) + ")"


def _compact(document: dict[str, Any]) -> str:
    text = json.dumps(document, separators=(",", ":"))
    return text if len(text) <= 200 else text[:197] + "..."


def _verdict(value: object) -> str:
    """One word for a health check: its own text, or the `status` of a detailed check."""
    if isinstance(value, dict):
        return str(value.get("status") or value.get("name") or "reported")
    return str(value)


def _check_proxy(settings: Settings) -> Finding:
    web = f"http://{ports.url_host(ports.connect_host(settings.web_host))}:{settings.web_port}"
    url = web + "/api/proxy/health"
    try:
        status, document, text = _get(url)
    except (OSError, http.client.HTTPException):
        return Finding(
            "web proxy",
            "warn",
            f"the web is not running at {web}, so the proxy path was not checked",
            "start everything: sora2 dev",
        )
    if status == 200:
        return Finding("web proxy", "ok", f"{url} → 200: the pages reach the api")
    error = document or {}
    details = error.get("details") or {}
    return Finding(
        "web proxy",
        "fail",
        f"{url} → {status} {error.get('error', text)}: {error.get('message', '')}".strip(),
        str(details.get("suggestion"))
        if details.get("suggestion")
        else "the web's API_URL must point at the running api (sora2 dev wires both)",
    )


# --- database --------------------------------------------------------------------------------


def check_database(settings: Settings, *, settings_valid: bool) -> list[Finding]:
    """Asks the api's own CLI (`sora2 db check --json`) whether the database answers and is current.

    A subprocess, not an import: the devstack knows the api only as a program, and the check
    then uses exactly the database code and settings the api uses.
    """
    if not settings_valid:
        return [
            Finding(
                "database",
                "warn",
                "not checked: the api's CLI needs valid settings (see the settings line)",
                "correct the settings, then run sora2 doctor again",
            )
        ]
    command = [sys.executable, "-m", "sora2", "db", "check", "--json"]
    try:
        result = subprocess.run(  # noqa: S603 - our own CLI, fixed arguments
            command, capture_output=True, text=True, timeout=DB_CHECK_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        return [
            Finding(
                "database",
                "fail",
                f"sora2 db check did not finish within {DB_CHECK_TIMEOUT:g} s",
                "is the database server up and reachable? check DATABASE_URL",
            )
        ]
    if result.returncode == 2 and "invalid choice" in result.stderr:
        return [
            Finding(
                "database",
                "warn",
                "not checked: this installation's CLI has no `sora2 db check`",
                "reinstall from this checkout: make venv",
            )
        ]
    return _database_findings(settings, result)


def _database_findings(
    settings: Settings, result: subprocess.CompletedProcess[str]
) -> list[Finding]:
    where = _database_description(settings)
    try:
        document = json.loads(result.stdout)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        # No verdict on stdout: the CLI stopped with a message, e.g. an unreachable database.
        output = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        reason = output[-1].removeprefix("sora2: ")
        return [
            Finding(
                "database",
                "fail",
                f"{where}: {reason}",
                "start the database server or correct DATABASE_URL (unset, it is SQLite "
                "under DATA_DIR)",
            )
        ]
    findings = [Finding("database", "ok", f"{where} answers")]
    pending = [str(name) for name in document.get("pending") or []]
    if not pending:
        findings.append(Finding("migrations", "ok", "schema up to date"))
        return findings
    fix = str(document.get("fix") or "sora2 db upgrade")
    if settings.is_production:
        detail = f"{len(pending)} pending: {', '.join(pending)}; production refuses to start"
        findings.append(Finding("migrations", "fail", detail, fix))
    else:
        detail = (
            f"{len(pending)} pending: {', '.join(pending)}; the api applies them itself at "
            "start outside production"
        )
        findings.append(Finding("migrations", "warn", detail, f"{fix} (make dev runs it)"))
    return findings


def _database_description(settings: Settings) -> str:
    """Where the database is, without credentials."""
    url = settings.database_url
    if not url:
        return f"SQLite {(settings.data_dir / 'sora2.db').resolve()}"
    parts = urlsplit(url)
    if parts.scheme.startswith("sqlite"):
        return f"SQLite {parts.path}"
    name = parts.path.lstrip("/") or "(default)"
    return f"{parts.scheme.split('+')[0]} at {parts.hostname}:{parts.port or 5432}/{name}"


# --- open files ------------------------------------------------------------------------------


def check_open_files(settings: Settings, limits: tuple[int, int] | None = None) -> Finding:
    """The web raises its open-file soft limit to the hard limit at start, so the hard limit is
    what bounds how many viewers it can hold: two files per proxied connection."""
    soft, hard = limits or resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = settings.web_open_files_needed
    if hard == resource.RLIM_INFINITY or hard >= needed:
        return Finding(
            "open files",
            "ok",
            f"limit {soft} (hard {_limit_text(hard)}); the web raises it to the hard limit, "
            f"enough for PROXY_POOL_SIZE={settings.proxy_pool_size} ({needed} files)",
        )
    return Finding(
        "open files",
        "warn",
        f"hard open-file limit {hard} is below the {needed} files the web needs for "
        f"PROXY_POOL_SIZE={settings.proxy_pool_size} connections: beyond about "
        f"{max(0, (hard - 256) // 2)} open streams, new connections fail",
        f"raise the hard limit (ulimit -Hn {needed} in the shell that starts it, or "
        f"LimitNOFILE={needed} in a systemd unit), or lower PROXY_POOL_SIZE",
    )


def _limit_text(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)


# --- folders and provider ----------------------------------------------------------------------


def check_folders(settings: Settings) -> list[Finding]:
    return [
        _check_writable("DATA_DIR", settings.data_dir),
        _check_writable("LOG_DIR", settings.log_dir),
    ]


def _check_writable(variable: str, folder: Path) -> Finding:
    label = variable.lower().replace("_", " ")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".doctor-"):
            pass
    except OSError as error:
        return Finding(
            label,
            "fail",
            f"{folder.resolve()} is not writable ({error.strerror})",
            f"fix its permissions (chown/chmod), or set {variable} to a writable folder",
        )
    return Finding(label, "ok", f"{folder.resolve()} is writable")


def check_storage(settings: Settings, *, settings_valid: bool) -> list[Finding]:
    """Asks the api's CLI (`sora2 storage check --json`) to write, read back and delete a small
    object in the store `STORAGE_URL` names: a subprocess, as for the database."""
    if not settings_valid:
        return [Finding("storage", "warn", "not checked: the settings are invalid")]
    command = [sys.executable, "-m", "sora2", "storage", "check", "--json"]
    try:
        result = subprocess.run(  # noqa: S603 - our own CLI, fixed arguments
            command, capture_output=True, text=True, timeout=DB_CHECK_TIMEOUT, check=False
        )
        document = json.loads(result.stdout)
    except subprocess.TimeoutExpired:
        return [
            Finding(
                "storage",
                "fail",
                f"{settings.resolved_storage_url} did not answer within {DB_CHECK_TIMEOUT:g} s",
                "check AWS_ENDPOINT_URL and that the store is up",
            )
        ]
    except ValueError:
        reason = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        return [Finding("storage", "fail", reason[-1].removeprefix("sora2: "))]
    if document.get("writable"):
        return [Finding("storage", "ok", f"{document['url']} is reachable and writable")]
    return [Finding("storage", "fail", str(document["message"]), str(document.get("fix", "")))]


def check_provider(settings: Settings, *, settings_valid: bool) -> list[Finding]:
    if settings.models_file is not None and settings_valid:
        return []  # the catalog's providers were described with it
    if not settings_valid:
        # The settings may have been relaxed to the local provider just to check the rest.
        return [
            Finding(
                "video provider",
                "warn",
                "not checked: the settings are invalid (see the settings line)",
                "correct the settings, then run sora2 doctor again",
            )
        ]
    if settings.video_provider == "local":
        if importlib.util.find_spec("av") is None:
            return [
                Finding(
                    "video provider",
                    "fail",
                    "local renderer needs PyAV, which is not installed",
                    "make venv",
                )
            ]
        return [Finding("video provider", "ok", "local renderer (offline, no key needed)")]
    keys = len(settings.openai_api_keys)  # at least one: the settings insist on it
    findings = [
        Finding("video provider", "ok", f"openai at {settings.openai_base_url}, {keys} key(s)")
    ]
    if "api.openai.com" in settings.openai_base_url and _today() >= OPENAI_VIDEOS_SHUTDOWN:
        findings.append(
            Finding(
                "provider URL",
                "warn",
                "OPENAI_BASE_URL is api.openai.com, whose Videos API shut down on 24 September "
                "2026",
                "set OPENAI_BASE_URL to a service speaking the same /videos contract",
            )
        )
    return findings


def check_mail(settings: Settings) -> list[Finding]:
    """Password-reset mail needs SMTP_URL; without it only development has a way out (the log)."""
    if settings.smtp_url:
        parts = urlsplit(settings.smtp_url)
        where = f"{parts.scheme}://{parts.hostname}:{parts.port or 'default port'}"
        return [
            Finding("mail", "ok", f"password-reset mail through {where}, from {settings.mail_from}")
        ]
    if settings.is_production:
        return [
            Finding(
                "mail",
                "fail",
                "SMTP_URL is not set: nobody can reset a forgotten password (no mail is sent, "
                "and production never writes reset links to the log)",
                "set SMTP_URL (smtp+starttls://user:pass@host:587 or smtps://…:465) and MAIL_FROM",
            )
        ]
    return [
        Finding(
            "mail",
            "warn",
            "SMTP_URL is not set: password-reset links are written to the api's log instead"
            if settings.is_development
            else "SMTP_URL is not set: password-reset mail is not sent",
            "set SMTP_URL and MAIL_FROM to send real mail",
        )
    ]


def check_catalog(settings: Settings, *, settings_valid: bool) -> list[Finding]:
    """The model catalog, checked as the services check it at start: one line per problem."""
    if not settings_valid:
        return []
    from sora2.catalog import CatalogError, load_catalog

    try:
        catalog = load_catalog(settings)
    except CatalogError as error:
        fix = (
            "edit MODELS_FILE as docs/models.md shows"
            if settings.models_file
            else ("correct VIDEO_PRICES (docs/configuration.md)")
        )
        return [Finding("model catalog", "fail", problem, fix) for problem in error.problems]
    models = ", ".join(catalog.models)
    findings = [
        Finding(
            "model catalog", "ok", f"{len(catalog.models)} model(s) from {catalog.source}: {models}"
        )
    ]
    if settings.models_file is None:
        return findings
    for provider in catalog.used_providers():
        if provider.kind == "local":
            findings.append(Finding(f"provider {provider.name}", "ok", "local renderer"))
            continue
        detail = f"{provider.base_url}, {len(provider.keys)} key(s) from {provider.api_keys_env}"
        findings.append(Finding(f"provider {provider.name}", "ok", detail))
        if "api.openai.com" in (provider.base_url or "") and _today() >= OPENAI_VIDEOS_SHUTDOWN:
            findings.append(
                Finding(
                    f"provider {provider.name}",
                    "warn",
                    "api.openai.com's Videos API shut down on 24 September 2026",
                    "point base_url at a gateway speaking the same /videos contract",
                )
            )
    return findings


def _today() -> date:
    return datetime.now(UTC).date()
