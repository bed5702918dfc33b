"""Finding the API server: kubeconfig files, in-cluster service accounts, or nothing."""

from __future__ import annotations

import base64
import textwrap
from pathlib import Path

import pytest

from nri_zeropod.kube import ConfigError, KubeClient, load_config
from nri_zeropod.kube.config import from_kubeconfig
from nri_zeropod.kube.yamlish import load
from tests.fakekube import FakeKube

from .util import run

KIND_STYLE = """\
apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: {ca}
    server: https://127.0.0.1:6443
  name: kind-kind
contexts:
- context:
    cluster: kind-kind
    user: kind-kind
  name: kind-kind
- context:
    cluster: kind-kind
    namespace: other # a comment
    user: token-user
  name: with-token
current-context: kind-kind
kind: Config
preferences: {{}}
users:
- name: kind-kind
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
- name: token-user
  user:
    token: "abc#not-a-comment"
"""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_no_configuration_gives_none(tmp_path: Path) -> None:
    assert load_config(environ={}, service_account_dir=tmp_path) is None
    assert load_config(environ={"KUBECONFIG": str(tmp_path / "missing")}, service_account_dir=tmp_path) is None


def test_in_cluster(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("tok-1\n")
    (tmp_path / "ca.crt").write_bytes(b"PEM")
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    cfg = load_config(environ=env, service_account_dir=tmp_path)
    assert cfg is not None
    assert (cfg.server, cfg.ca_pem, cfg.authorization()) == ("https://10.96.0.1:443", b"PEM", "Bearer tok-1")
    v6 = load_config(environ={**env, "KUBERNETES_SERVICE_HOST": "fd00::1"}, service_account_dir=tmp_path)
    assert v6 is not None and v6.server == "https://[fd00::1]:443" and v6.host == "fd00::1" and v6.port == 443
    assert load_config(environ={"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, service_account_dir=tmp_path) is None


def test_kubeconfig_in_kind_style(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text(KIND_STYLE.format(ca=b64(b"CA PEM"), cert=b64(b"CERT"), key=b64(b"KEY")))
    cfg = load_config(environ={"KUBECONFIG": f"{tmp_path / 'nope'}:{path}"})
    assert cfg is not None
    assert (cfg.server, cfg.ca_pem, cfg.client_cert_pem, cfg.client_key_pem) == ("https://127.0.0.1:6443", b"CA PEM", b"CERT", b"KEY")
    assert cfg.authorization() is None and not cfg.insecure_skip_tls_verify
    tok = from_kubeconfig(path, context="with-token")
    assert tok.authorization() == "Bearer abc#not-a-comment"


def test_kubeconfig_files_are_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_bytes(b"CA FROM FILE")
    (tmp_path / "token").write_text("from-file\n")
    path = tmp_path / "config"
    path.write_text(textwrap.dedent("""\
        clusters:
          - name: c
            cluster:
              server: "https://api.example:443/"
              certificate-authority: ca.pem
              insecure-skip-tls-verify: false
        users:
          - name: u
            user:
              tokenFile: token
        contexts:
          - name: x
            context: {cluster: c, user: u}
        current-context: x
    """).replace("{cluster: c, user: u}", "\n              cluster: c\n              user: u"))
    cfg = load_config(kubeconfig=path, environ={})
    assert cfg is not None
    assert (cfg.server, cfg.ca_pem, cfg.authorization()) == ("https://api.example:443", b"CA FROM FILE", "Bearer from-file")


def test_kubeconfig_errors_name_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text("current-context: x\ncontexts: []\nclusters: []\nusers: []\n")
    with pytest.raises(ConfigError, match="no context named 'x'"):
        load_config(kubeconfig=path)
    path.write_text(textwrap.dedent("""\
        clusters:
        - name: c
          cluster: {server: x}
    """).replace("{server: x}", "\n    server: https://h"))
    assert load_config(kubeconfig=path, environ={}) is not None  # one cluster and no context: use it
    exec_user = KIND_STYLE.format(ca=b64(b"x"), cert=b64(b"x"), key=b64(b"x")).replace(
        "    client-certificate-data", "    exec:\n      command: aws\n      args: [eks, get-token]\n    client-certificate-data"
    )
    path.write_text(exec_user)
    with pytest.raises(ConfigError, match="exec"):
        load_config(kubeconfig=path)
    path.write_text("clusters: |\n  x\n")
    with pytest.raises(ConfigError, match="line 1"):
        load_config(kubeconfig=path)


def test_yaml_subset() -> None:
    doc = load(textwrap.dedent("""\
        # leading comment
        ---
        a: 1
        b: 'it''s'
        c: "q\\"d"
        d: ~
        e: [x, 'y', 3]
        f:
        - - nested
        - k: v
          l:
            m: true
        g: {}
        h: http://host:80/path # trailing
    """))
    assert doc == {"a": 1, "b": "it's", "c": 'q"d', "d": None, "e": ["x", "y", 3],
                   "f": [["nested"], {"k": "v", "l": {"m": True}}], "g": {}, "h": "http://host:80/path"}
    assert load('{"json": [1]}') == {"json": [1]}


def test_written_kubeconfig_reaches_the_fake(tmp_path: Path) -> None:
    with FakeKube(token="t0k") as kube:
        kube.create_namespace("ns")
        cfg = load_config(kubeconfig=kube.write_kubeconfig(tmp_path / "kc"))
        assert cfg is not None and cfg.server == kube.url

        async def body() -> None:
            async with KubeClient(cfg) as client:
                names = [n["metadata"]["name"] for n in (await client.list_namespaces())["items"]]
                assert names == ["ns"]

        run(body())
        assert kube.log[-1].authorization == "Bearer t0k"
