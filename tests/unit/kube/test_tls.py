"""HTTPS: CA data from a kubeconfig, insecure-skip-tls-verify, a wrong CA, client certificates."""

from __future__ import annotations

from pathlib import Path

import pytest

from nri_zeropod.kube import KubeClient, KubeConfig, TransportError, Unauthorized, load_config
from tests.fakekube import FakeKube

from .util import run


async def list_names(cfg: KubeConfig) -> list[str]:
    async with KubeClient(cfg) as client:
        return [n["metadata"]["name"] for n in (await client.list_namespaces())["items"]]


def test_ca_verification_and_insecure(certs: Path, tmp_path: Path) -> None:
    with FakeKube(certfile=certs / "server.crt", keyfile=certs / "server.key") as kube:
        kube.create_namespace("ns")
        assert kube.url.startswith("https://")
        good = load_config(kubeconfig=kube.write_kubeconfig(tmp_path / "good", ca_file=str(certs / "ca.crt")))
        assert good is not None and run(list_names(good)) == ["ns"]
        insecure = load_config(kubeconfig=kube.write_kubeconfig(tmp_path / "insecure", insecure=True))
        assert insecure is not None and run(list_names(insecure)) == ["ns"]
        wrong = load_config(kubeconfig=kube.write_kubeconfig(tmp_path / "wrong", ca_file=str(certs / "other-ca.crt")))
        assert wrong is not None
        with pytest.raises(TransportError, match="certificate verify failed"):
            run(list_names(wrong))


def test_client_certificate_authenticates(certs: Path) -> None:
    with FakeKube(certfile=certs / "server.crt", keyfile=certs / "server.key", client_ca=certs / "ca.crt", token="unused") as kube:
        kube.create_namespace("ns")
        ca = (certs / "ca.crt").read_bytes()
        with_cert = KubeConfig(server=kube.url, ca_pem=ca, client_cert_pem=(certs / "client.crt").read_bytes(),
                               client_key_pem=(certs / "client.key").read_bytes())
        assert run(list_names(with_cert)) == ["ns"]
        with pytest.raises(Unauthorized):
            run(list_names(KubeConfig(server=kube.url, ca_pem=ca)))
