"""Write an OCI image layout from a root filesystem directory, without a registry.

The result is a tar of an OCI image layout (``oci-layout``, ``index.json`` and
``blobs/sha256/...``) holding one gzip-compressed layer, the image config and
the manifest; ``ctr images import`` loads it. The layer tar is deterministic
(sorted entries, fixed mtime, no user or group names), so the same root
filesystem always gives the same digests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST_MT = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MT = "application/vnd.oci.image.config.v1+json"
LAYER_MT = "application/vnd.oci.image.layer.v1.tar+gzip"
INDEX_MT = "application/vnd.oci.image.index.v1+json"


@dataclass(frozen=True)
class ImageConfig:
    """The runtime part of an OCI image config (``config`` in the JSON)."""

    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=lambda: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
    workdir: str = ""
    user: str = ""
    exposed_ports: list[str] = field(default_factory=list)
    stop_signal: str = ""

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"Env": list(self.env)}
        if self.entrypoint:
            out["Entrypoint"] = list(self.entrypoint)
        if self.cmd:
            out["Cmd"] = list(self.cmd)
        if self.workdir:
            out["WorkingDir"] = self.workdir
        if self.user:
            out["User"] = self.user
        if self.exposed_ports:
            out["ExposedPorts"] = {p: {} for p in self.exposed_ports}
        if self.stop_signal:
            out["StopSignal"] = self.stop_signal
        return out


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int

    def to_json(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class BuiltImage:
    name: str
    manifest: Descriptor
    config: Descriptor
    layer: Descriptor
    diff_id: str


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(rootfs: Path) -> bytes:
    """A deterministic, uncompressed tar of ``rootfs`` (paths relative, sorted)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in _walk(rootfs):
            full = rootfs / rel
            st = full.lstat()
            info = tarfile.TarInfo(rel)
            info.mtime = 0
            info.mode = stat.S_IMODE(st.st_mode)
            info.uid, info.gid = st.st_uid, st.st_gid
            info.uname = info.gname = ""
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(full)
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                info.size = st.st_size
                with open(full, "rb") as f:
                    tar.addfile(info, f)
            # device nodes, fifos and sockets are left out: the runtime creates /dev
    return buf.getvalue()


def _walk(rootfs: Path) -> list[str]:
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(rootfs):
        rel_dir = os.path.relpath(dirpath, rootfs)
        for name in dirnames + filenames:
            out.append(name if rel_dir == "." else f"{rel_dir}/{name}")
    out.sort()  # a reproducible layer: the same tree gives the same digest
    return out


def build_layout(rootfs: Path, out: Path, *, name: str, config: ImageConfig) -> BuiltImage:
    """Write the OCI layout tar for ``rootfs`` to ``out`` and return its descriptors.

    ``name`` is the full reference (``registry/repo:tag``) recorded in
    ``index.json`` for ``ctr images import``.
    """
    raw = layer_tar(rootfs)
    diff_id = _sha256(raw)
    gz = gzip.compress(raw, compresslevel=6, mtime=0)
    layer = Descriptor(LAYER_MT, _sha256(gz), len(gz))
    cfg_json = _canonical(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": config.to_json(),
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": "nri-zeropod image builder", "created": "1970-01-01T00:00:00Z"}],
            "created": "1970-01-01T00:00:00Z",
        }
    )
    cfg = Descriptor(CONFIG_MT, _sha256(cfg_json), len(cfg_json))
    manifest_json = _canonical(
        {"schemaVersion": 2, "mediaType": MANIFEST_MT, "config": cfg.to_json(), "layers": [layer.to_json()]}
    )
    manifest = Descriptor(MANIFEST_MT, _sha256(manifest_json), len(manifest_json))
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX_MT,
        "manifests": [
            {
                **manifest.to_json(),
                "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    blobs = {layer.digest: gz, cfg.digest: cfg_json, manifest.digest: manifest_json}
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "oci-layout", _canonical({"imageLayoutVersion": "1.0.0"}))
        _add_bytes(tar, "index.json", _canonical(index))
        for digest, data in sorted(blobs.items()):
            _add_bytes(tar, "blobs/sha256/" + digest.split(":", 1)[1], data)
    tmp.replace(out)
    return BuiltImage(name=name, manifest=manifest, config=cfg, layer=layer, diff_id=diff_id)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))
