"""The image builder writes a valid OCI image layout: every digest and size checks out."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from nri_zeropod.images.oci import CONFIG_MT, LAYER_MT, MANIFEST_MT, ImageConfig, build_layout


@pytest.fixture()
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "bin/app").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(root / "bin/app", 0o755)
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "bin/sh").symlink_to("app")
    (root / "tmp").mkdir(mode=0o1777)
    os.chmod(root / "tmp", 0o1777)
    return root


def _read_layout(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def _blob(files: dict[str, bytes], digest: str) -> bytes:
    algo, hexd = digest.split(":")
    assert algo == "sha256"
    data = files[f"blobs/sha256/{hexd}"]
    assert hashlib.sha256(data).hexdigest() == hexd, f"blob {digest} does not match its digest"
    return data


def test_layout_digests_and_sizes(rootfs: Path, tmp_path: Path) -> None:
    out = tmp_path / "img.tar"
    cfg = ImageConfig(cmd=["/bin/app"], exposed_ports=["8080/tcp"], stop_signal="SIGQUIT")
    built = build_layout(rootfs, out, name="nri-zeropod.local/test:v1", config=cfg)
    files = _read_layout(out)

    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files["index.json"])
    assert index["schemaVersion"] == 2
    [desc] = index["manifests"]
    assert desc["mediaType"] == MANIFEST_MT
    assert desc["annotations"]["io.containerd.image.name"] == "nri-zeropod.local/test:v1"
    assert desc["annotations"]["org.opencontainers.image.ref.name"] == "v1"

    manifest_raw = _blob(files, desc["digest"])
    assert len(manifest_raw) == desc["size"] == built.manifest.size
    manifest = json.loads(manifest_raw)
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == MANIFEST_MT

    cfg_desc = manifest["config"]
    assert cfg_desc["mediaType"] == CONFIG_MT
    cfg_raw = _blob(files, cfg_desc["digest"])
    assert len(cfg_raw) == cfg_desc["size"]
    config = json.loads(cfg_raw)
    assert config["os"] == "linux" and config["architecture"] == "amd64"
    assert config["config"]["Cmd"] == ["/bin/app"]
    assert config["config"]["StopSignal"] == "SIGQUIT"
    assert config["config"]["ExposedPorts"] == {"8080/tcp": {}}

    [layer_desc] = manifest["layers"]
    assert layer_desc["mediaType"] == LAYER_MT
    layer_gz = _blob(files, layer_desc["digest"])
    assert len(layer_gz) == layer_desc["size"]
    layer_raw = gzip.decompress(layer_gz)
    # The config's diff_id is the digest of the uncompressed layer.
    assert config["rootfs"] == {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_raw).hexdigest()]}

    with tarfile.open(fileobj=io.BytesIO(layer_raw)) as layer:
        members = {m.name: m for m in layer.getmembers()}
    assert members["bin/app"].mode == 0o755 and members["bin/app"].mtime == 0
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "app"
    assert members["tmp"].isdir() and members["tmp"].mode == 0o1777
    assert list(members) == sorted(members), "entries must be sorted for reproducible digests"


def test_same_input_same_digest(rootfs: Path, tmp_path: Path) -> None:
    a = build_layout(rootfs, tmp_path / "a.tar", name="x/y:1", config=ImageConfig())
    b = build_layout(rootfs, tmp_path / "b.tar", name="x/y:1", config=ImageConfig())
    assert a.manifest.digest == b.manifest.digest
    (rootfs / "etc/passwd").write_text("changed\n")
    c = build_layout(rootfs, tmp_path / "c.tar", name="x/y:1", config=ImageConfig())
    assert c.layer.digest != a.layer.digest
