"""Where the API server is and how to authenticate: in-cluster, a kubeconfig, or nothing.

:func:`load_config` tries, in order: an explicit kubeconfig path, the first
existing file of ``$KUBECONFIG``, then the in-cluster service account
(``KUBERNETES_SERVICE_HOST``/``_PORT`` and the token and CA under
``/var/run/secrets/kubernetes.io/serviceaccount``). With none of them it
returns ``None`` and the agent runs without the API (no namespace selection,
no status labels). ``~/.kube/config`` is deliberately not read: on a node it
is usually an admin's credential, not the agent's.

Tokens are read from their file again once a minute, because projected
service-account tokens rotate (about hourly) and a token read once at start
would expire under a long-running agent.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import yamlish
from .errors import ConfigError

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_REREAD_SECONDS = 60.0


@dataclass(frozen=True)
class KubeConfig:
    """A resolved connection: everything needed to reach and authenticate to one API server."""

    server: str  # "https://host:port" or "http://host:port"
    ca_pem: bytes | None = None  # trust these CAs instead of the system's
    insecure_skip_tls_verify: bool = False
    token: str | None = None
    token_file: Path | None = None  # re-read every minute (rotation)
    client_cert_pem: bytes | None = None
    client_key_pem: bytes | None = None
    username: str | None = None
    password: str | None = None
    tls_server_name: str | None = None
    source: str = ""  # where this came from, for log lines
    # [token, monotonic time read]: a cache inside the frozen value, because
    # the file's content changes (rotation) while the configuration does not.
    _token_cache: list[Any] = field(default_factory=lambda: [None, 0.0], repr=False, compare=False)

    @property
    def scheme(self) -> str:
        return urlsplit(self.server).scheme

    @property
    def host(self) -> str:
        return urlsplit(self.server).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.server)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def base_path(self) -> str:
        """A path prefix in the server URL (a proxy such as Rancher's serves the API below one)."""
        return urlsplit(self.server).path.rstrip("/")

    def authorization(self) -> str | None:
        """The Authorization header value, or None when authenticating by client certificate only."""
        token = self._current_token()
        if token:
            return f"Bearer {token}"
        if self.username is not None:
            raw = f"{self.username}:{self.password or ''}".encode()
            return "Basic " + base64.b64encode(raw).decode()
        return None

    def _current_token(self) -> str | None:
        if self.token_file is None:
            return self.token
        cached, read_at = self._token_cache
        now = time.monotonic()
        if cached is None or now - read_at > TOKEN_REREAD_SECONDS:
            try:
                cached = self.token_file.read_text().strip()
            except OSError:
                if cached is None:
                    return self.token
            self._token_cache[:] = [cached, now]
        return str(cached)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for an https server (None for http)."""
        if self.scheme != "https":
            return None
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if self.insecure_skip_tls_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.ca_pem:
            ctx.load_verify_locations(cadata=self.ca_pem.decode("ascii", "replace"))
        if self.client_cert_pem and self.client_key_pem:
            _load_client_cert(ctx, self.client_cert_pem, self.client_key_pem)
        return ctx


def _load_client_cert(ctx: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    # ssl only loads a certificate chain from files: write both to a private
    # directory for the duration of the call.
    with tempfile.TemporaryDirectory(prefix="nri-zeropod-kube-") as tmp:
        cert_path, key_path = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
        for path, data in ((cert_path, cert), (key_path, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        try:
            ctx.load_cert_chain(str(cert_path), str(key_path))
        except (ssl.SSLError, OSError) as e:
            raise ConfigError(f"client certificate or key not usable: {e}") from e


def load_config(
    *,
    kubeconfig: str | os.PathLike[str] | None = None,
    context: str | None = None,
    environ: Mapping[str, str] | None = None,
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
) -> KubeConfig | None:
    """The configuration to use, or None when there is none (run without the API)."""
    env = os.environ if environ is None else environ
    if kubeconfig is not None:
        return from_kubeconfig(Path(kubeconfig), context=context)
    for entry in env.get("KUBECONFIG", "").split(os.pathsep):
        if entry and Path(entry).is_file():
            return from_kubeconfig(Path(entry), context=context)
    return in_cluster(environ=env, service_account_dir=service_account_dir)


def in_cluster(*, environ: Mapping[str, str], service_account_dir: Path = SERVICE_ACCOUNT_DIR) -> KubeConfig | None:
    """The pod's service account, or None outside a pod."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    token_file = service_account_dir / "token"
    if not host or not port or not token_file.is_file():
        return None
    if ":" in host:  # an IPv6 service address needs brackets in a URL
        host = f"[{host}]"
    ca = service_account_dir / "ca.crt"
    return KubeConfig(
        server=f"https://{host}:{port}",
        ca_pem=ca.read_bytes() if ca.is_file() else None,
        token_file=token_file,
        source=f"in-cluster ({service_account_dir})",
    )


def from_kubeconfig(path: Path, *, context: str | None = None) -> KubeConfig:
    """The cluster and user of ``context`` (default: current-context) in the kubeconfig at ``path``."""
    try:
        doc = yamlish.load(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: {e}") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: not a kubeconfig")
    name = context or doc.get("current-context")
    ctx = _named(doc, "contexts", "context", name, path) if name else {}
    if not name:
        clusters = doc.get("clusters") or []
        if len(clusters) != 1:
            raise ConfigError(f"{path}: no current-context and not exactly one cluster")
    cluster = _named(doc, "clusters", "cluster", ctx.get("cluster"), path) if name else doc["clusters"][0]["cluster"]
    user = _named(doc, "users", "user", ctx.get("user"), path) if ctx.get("user") else {}
    base = path.parent
    if not cluster.get("server"):
        raise ConfigError(f"{path}: cluster has no server")
    for unsupported in ("exec", "auth-provider"):
        if user.get(unsupported):
            raise ConfigError(f"{path}: user credentials by {unsupported!r} are not supported; use a token or a client certificate")
    return KubeConfig(
        server=str(cluster["server"]).rstrip("/"),
        ca_pem=_data_or_file(cluster, "certificate-authority", base),
        insecure_skip_tls_verify=bool(cluster.get("insecure-skip-tls-verify", False)),
        token=user.get("token"),
        token_file=_path(user.get("tokenFile"), base),
        client_cert_pem=_data_or_file(user, "client-certificate", base),
        client_key_pem=_data_or_file(user, "client-key", base),
        username=user.get("username"),
        password=user.get("password"),
        tls_server_name=cluster.get("tls-server-name"),
        source=f"kubeconfig {path}" + (f" context {name}" if name else ""),
    )


def _named(doc: dict[str, Any], section: str, field_name: str, name: Any, path: Path) -> dict[str, Any]:
    for entry in doc.get(section) or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            value = entry.get(field_name) or {}
            if not isinstance(value, dict):
                break
            return value
    raise ConfigError(f"{path}: no {section[:-1]} named {name!r}")


def _path(value: Any, base: Path) -> Path | None:
    if not value:
        return None
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else base / p  # relative paths are relative to the kubeconfig, as in kubectl


def _data_or_file(section: dict[str, Any], key: str, base: Path) -> bytes | None:
    data = section.get(f"{key}-data")
    if data:
        try:
            return base64.b64decode(str(data), validate=True)
        except ValueError as e:
            raise ConfigError(f"{key}-data is not valid base64: {e}") from e
    p = _path(section.get(key), base)
    if p is None:
        return None
    try:
        return p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{key} {p}: {e}") from e
