"""The CLI's credential store: one JSON file in the user's config directory, mode 0600.

It also keeps the TLS options given at ``gpufleet login`` (``ca_bundle``, ``tls_verify``,
``tls_insecure_remote``, ``client_cert``, ``client_key``); flags and ``GPUFLEET_*`` variables
still win over them.

Location: ``$GPUFLEET_CONFIG_DIR`` when set; on Windows ``%APPDATA%\\gpufleet``; elsewhere
``$XDG_CONFIG_HOME/gpufleet`` or ``~/.config/gpufleet``. File: ``credentials.json``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from gpufleet.tls import TlsOptions

__all__ = [
    "Credentials",
    "config_dir",
    "credentials_path",
    "load_credentials",
    "resolve",
    "save_credentials",
]

FILE_NAME = "credentials.json"


@dataclass
class Credentials:
    """What ``gpufleet login`` stores."""

    url: str
    api_key: str | None = None
    token: str | None = None
    ca_bundle: str | None = None
    tls_verify: bool | None = None
    tls_insecure_remote: bool | None = None
    client_cert: str | None = None
    client_key: str | None = None

    def tls(self) -> TlsOptions:
        """The TLS options saved with these credentials (unset ones: defaults)."""
        return TlsOptions(
            ca_bundle=Path(self.ca_bundle) if self.ca_bundle else None,
            verify=self.tls_verify is not False,
            insecure_remote=bool(self.tls_insecure_remote),
            client_cert=Path(self.client_cert) if self.client_cert else None,
            client_key=Path(self.client_key) if self.client_key else None,
        )


def config_dir() -> Path:
    """The platform's per-user config directory for gpufleet."""
    override = os.environ.get("GPUFLEET_CONFIG_DIR")
    if override:
        return Path(override)
    if sys.platform == "win32":
        appdata = os.environ.get("APPDATA")
        base = Path(appdata) if appdata else Path.home() / "AppData" / "Roaming"
        return base / "gpufleet"
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg else Path.home() / ".config"
    return base / "gpufleet"


def credentials_path() -> Path:
    return config_dir() / FILE_NAME


def save_credentials(creds: Credentials, path: Path | None = None) -> Path:
    """Write the credentials readable by the owner only (0600; on Windows the file lives in
    the user's own profile directory, which only they can read)."""
    target = path or credentials_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps({k: v for k, v in asdict(creds).items() if v is not None}, indent=2)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(data + "\n")
    os.chmod(target, 0o600)  # also when the file already existed with wider permissions
    return target


def load_credentials(path: Path | None = None) -> Credentials | None:
    """The stored credentials, or ``None`` when there are none (or the file is unreadable)."""
    target = path or credentials_path()
    try:
        data = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("url"), str):
        return None

    def text(key: str) -> str | None:
        value = data.get(key)
        return value if isinstance(value, str) and value else None

    def flag(key: str) -> bool | None:
        value = data.get(key)
        return value if isinstance(value, bool) else None

    return Credentials(
        url=data["url"],
        api_key=text("api_key"),
        token=text("token"),
        ca_bundle=text("ca_bundle"),
        tls_verify=flag("tls_verify"),
        tls_insecure_remote=flag("tls_insecure_remote"),
        client_cert=text("client_cert"),
        client_key=text("client_key"),
    )


def resolve(
    url: str | None = None,
    api_key: str | None = None,
    token: str | None = None,
    path: Path | None = None,
) -> Credentials:
    """URL and credentials from, in order: the arguments, ``GPUFLEET_URL`` /
    ``GPUFLEET_API_KEY`` / ``GPUFLEET_TOKEN``, what ``gpufleet login`` stored. Each part
    falls back on its own (a flag's URL with the stored key), but a stored key or token is
    sent only to the URL it was stored for. ValueError naming what is missing."""
    stored = load_credentials(path)
    url = url or os.environ.get("GPUFLEET_URL") or (stored.url if stored else None)
    if not url:
        raise ValueError(
            "no control plane URL: pass url (--url), set GPUFLEET_URL or run `gpufleet login`"
        )
    if api_key is None and token is None:
        api_key = os.environ.get("GPUFLEET_API_KEY") or None
        token = None if api_key else os.environ.get("GPUFLEET_TOKEN") or None
    same_plane = stored is not None and stored.url.rstrip("/") == url.rstrip("/")
    if api_key is None and token is None and stored is not None and same_plane:
        api_key, token = stored.api_key, stored.token
    if stored is not None and same_plane:  # the TLS settings saved for that control plane
        return replace(stored, url=url, api_key=api_key, token=token)
    return Credentials(url=url, api_key=api_key, token=token)


def region_setting(
    region: str | None = None, regions_allowed: Iterable[str] | None = None
) -> tuple[str | None, list[str] | None]:
    """The client's region setting (docs/regions.md): the arguments, else ``GPUFLEET_REGION``
    and ``GPUFLEET_REGIONS_ALLOWED`` (comma-separated), else none."""
    if region is None:
        region = os.environ.get("GPUFLEET_REGION") or None
    if regions_allowed is None:
        raw = os.environ.get("GPUFLEET_REGIONS_ALLOWED") or ""
        listed = [r.strip() for r in raw.split(",") if r.strip()]
        return region, listed or None
    return region, list(regions_allowed)
