"""Fixtures of the Kubernetes client tests: a fake API server per test, and fast settings."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from nri_zeropod.kube import Backoff, HttpSettings, KubeClient, KubeConfig, WatchSettings, WriterSettings
from tests.fakekube import FakeKube
from tests.helpers import need_binary

FAST = Backoff(initial=0.01, maximum=0.05, jitter=0.0)
HTTP = HttpSettings(connect_timeout=2.0, request_timeout=0.5)
WATCH = WatchSettings(timeout_seconds=30, idle_margin=5.0, min_healthy_watch=0.05, backoff=FAST)
WRITER = WriterSettings(max_attempts=6, backoff=FAST)


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with FakeKube() as fake:
        yield fake


def client_for(fake: FakeKube, *, http: HttpSettings = HTTP) -> KubeClient:
    return KubeClient(KubeConfig(server=fake.url, token=fake.token), settings=http)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl."""
    openssl = need_binary("openssl")
    d = tmp_path_factory.mktemp("certs")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=d, check=True, capture_output=True, timeout=60)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        run("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-days", "2", "-subj", f"/CN={ca}")
    (d / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
        "extendedKeyUsage=serverAuth\nauthorityKeyIdentifier=keyid,issuer\n"
    )
    (d / "client.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\nauthorityKeyIdentifier=keyid,issuer\n"
    )
    for who, cn in (("server", "127.0.0.1"), ("client", "nri-zeropod")):
        run("req", *ec, "-keyout", f"{who}.key", "-out", f"{who}.csr", "-subj", f"/CN={cn}")
        run("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{who}.crt", "-days", "2", "-extfile", f"{who}.ext")
    return d
