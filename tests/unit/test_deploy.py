"""The Kubernetes deployment in deploy/nri: schemas, kustomize rendering, and the
conventions the agent depends on.

- Every manifest is validated against the official Kubernetes JSON schemas
  (the ones ``kubernetes-validate`` ships, offline), in strict mode so that a
  misspelt field fails too, for the oldest and the newest version we claim.
- ``kustomization.yaml`` is rendered by a small renderer here (resources,
  namespace, images, labels, commonLabels: what kustomize does with them) and
  the result must be exactly our objects with the namespace applied. Where a
  real ``kustomize`` or ``kubectl`` is on the PATH, the renderer's output is
  compared with it, so the renderer cannot drift from kustomize unnoticed.
- The DaemonSet's command line must parse with the agent's own argument
  parser, and every host path the agent hands to containerd must be mounted at
  the same path in its container.
- ``install-toolbox.sh`` (the init container) is run against temporary
  directories: install, no-op re-run, upgrade, and keeping a toolbox that a
  process still has mounted.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate as kv
import pytest

from tests.helpers import need
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "nri"
IMAGE = "ghcr.io/nri-zeropod/nri-zeropod"
NAMESPACE = "nri-zeropod"

# The oldest Kubernetes nri-zeropod supports (containerd 2.0 is supported with
# 1.29 and later) and the newest schema the validator ships.
K8S_VERSIONS = ("1.29.0", "1.37.0")


# --- loading ---------------------------------------------------------------------


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifest_files() -> list[Path]:
    return sorted(p for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")


def all_manifests() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{p.name}:{d['kind']}/{d['metadata']['name']}", d) for p in manifest_files() for d in load_docs(p)]


def key(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    md = obj["metadata"]
    return (obj["apiVersion"], obj["kind"], md.get("namespace", ""), md["name"])


def by_kind(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


# --- a small kustomize ---------------------------------------------------------------

# Kinds that are not namespaced (kustomize leaves them alone, except that it
# renames a Namespace object to the kustomization's namespace).
CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass", "CustomResourceDefinition",
    "RuntimeClass", "StorageClass", "PersistentVolume", "Node", "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration", "APIService",
}
WORKLOADS = {"Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job"}
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "namespace", "resources", "images", "labels", "commonLabels"}


class RenderError(Exception):
    pass


def split_image(ref: str) -> tuple[str, str | None, str | None]:
    """``name[:tag][@digest]`` → (name, tag, digest); a registry port is not a tag."""
    name, _, digest = ref.partition("@")
    tag = None
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    return name, tag, digest or None


def pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    if obj["kind"] == "Pod":
        return [obj["spec"]]
    if obj["kind"] in WORKLOADS:
        return [obj["spec"]["template"]["spec"]]
    if obj["kind"] == "CronJob":
        return [obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]]
    return []


def _add_labels(obj: dict[str, Any], pairs: dict[str, str], *, selectors: bool, templates: bool) -> None:
    obj["metadata"].setdefault("labels", {}).update(pairs)
    if obj["kind"] in WORKLOADS:
        spec = obj["spec"]
        if selectors:
            spec.setdefault("selector", {}).setdefault("matchLabels", {}).update(pairs)
        if selectors or templates:
            spec["template"].setdefault("metadata", {}).setdefault("labels", {}).update(pairs)


def render(kdir: Path) -> list[dict[str, Any]]:
    """What ``kustomize build kdir`` gives for the fields we use (others are refused)."""
    k = yaml.safe_load((kdir / "kustomization.yaml").read_text())
    if k.get("apiVersion") != "kustomize.config.k8s.io/v1beta1" or k.get("kind") != "Kustomization":
        raise RenderError("not a kustomize.config.k8s.io/v1beta1 Kustomization")
    unknown = set(k) - KUSTOMIZATION_KEYS
    if unknown:
        raise RenderError(f"kustomization fields this renderer does not know: {sorted(unknown)}")
    objs: list[dict[str, Any]] = []
    for res in k.get("resources") or []:
        path = kdir / res
        if "://" in res or not path.is_file():
            raise RenderError(f"resource {res!r} is not a file next to the kustomization")
        objs.extend(copy.deepcopy(load_docs(path)))
    seen: set[tuple[str, str, str, str]] = set()
    for o in objs:
        if key(o) in seen:
            raise RenderError(f"duplicate resource {key(o)}")
        seen.add(key(o))

    ns = k.get("namespace")
    if ns:
        # ServiceAccounts of this kustomization, by their namespace before the change:
        # role binding subjects that name them follow them to the new namespace.
        accounts = {(o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in objs if o["kind"] == "ServiceAccount"}
        for o in objs:
            if o["kind"] == "Namespace":
                o["metadata"]["name"] = ns
            elif o["kind"] not in CLUSTER_SCOPED:
                o["metadata"]["namespace"] = ns
            if o["kind"] in ("RoleBinding", "ClusterRoleBinding"):
                for s in o.get("subjects") or []:
                    if s.get("kind") == "ServiceAccount" and (s.get("namespace", ""), s["name"]) in accounts:
                        s["namespace"] = ns

    if k.get("commonLabels"):  # the older form: selectors and templates too
        for o in objs:
            _add_labels(o, k["commonLabels"], selectors=True, templates=True)
    for entry in k.get("labels") or []:
        extra = set(entry) - {"pairs", "includeSelectors", "includeTemplates"}
        if extra:
            raise RenderError(f"labels fields this renderer does not know: {sorted(extra)}")
        for o in objs:
            _add_labels(o, entry["pairs"], selectors=bool(entry.get("includeSelectors")),
                        templates=bool(entry.get("includeTemplates")))

    for img in k.get("images") or []:
        extra = set(img) - {"name", "newName", "newTag", "digest"}
        if extra:
            raise RenderError(f"images fields this renderer does not know: {sorted(extra)}")
        for o in objs:
            for spec in pod_specs(o):
                for c in [*spec.get("initContainers", []), *spec.get("containers", [])]:
                    name, tag, digest = split_image(c["image"])
                    if name != img["name"]:
                        continue
                    name = img.get("newName", name)
                    if "newTag" in img:
                        tag = str(img["newTag"])
                    if "digest" in img:
                        tag, digest = None, img["digest"]
                    c["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    return objs


def real_kustomize() -> list[str] | None:
    """A kustomize to compare with: ``kustomize build`` or ``kubectl kustomize``, if installed.

    Debian's ``kustomize`` package (trixie and later) runs on bookworm; unpacked
    under /opt/nri-zeropod/root like containerd, it is found there too.
    """
    from nri_zeropod import paths

    unpacked = paths.host_root() / "usr/bin/kustomize"
    if os.access(unpacked, os.X_OK):
        return [str(unpacked), "build"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


# --- schema validation -------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name,obj", all_manifests(), ids=[n for n, _ in all_manifests()])
def test_manifest_matches_the_kubernetes_schema(name: str, obj: dict[str, Any], version: str) -> None:
    kv.validate(obj, version, strict=True)


def daemonset() -> dict[str, Any]:
    return by_kind(load_docs(DEPLOY / "daemonset.yaml"), "DaemonSet")


def _agent(ds: dict[str, Any]) -> dict[str, Any]:
    return ds["spec"]["template"]["spec"]["containers"][0]


MUTATIONS = {
    "integer as a string": lambda ds: ds["spec"]["template"]["spec"].__setitem__("terminationGracePeriodSeconds", "30"),
    "port as a string": lambda ds: _agent(ds)["ports"][0].__setitem__("containerPort", "9133"),
    "misspelt field (strict)": lambda ds: ds["spec"]["template"]["spec"].__setitem__("hostPid", True),
    "list where an object goes": lambda ds: ds["spec"].__setitem__("selector", ["app"]),
    "object where a list goes": lambda ds: _agent(ds).__setitem__("args", {"nri-socket": "/var/run/nri/nri.sock"}),
    "missing required field": lambda ds: _agent(ds).pop("name"),
    "boolean as a string": lambda ds: ds["spec"]["template"]["spec"].__setitem__("hostNetwork", "yes"),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_a_broken_manifest_fails_validation(mutation: str) -> None:
    ds = daemonset()
    kv.validate(ds, K8S_VERSIONS[-1], strict=True)  # the original passes...
    MUTATIONS[mutation](ds)
    with pytest.raises(kv.ValidationError):  # ...and the mutated one does not
        kv.validate(ds, K8S_VERSIONS[-1], strict=True)


# --- kustomize ---------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    k = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert sorted(k["resources"]) == [p.name for p in manifest_files()]


def test_rendering_gives_exactly_our_objects_in_our_namespace() -> None:
    objs = render(DEPLOY)
    assert sorted(key(o) for o in objs) == sorted([
        ("v1", "Namespace", "", NAMESPACE),
        ("v1", "ServiceAccount", NAMESPACE, "nri-zeropod"),
        ("rbac.authorization.k8s.io/v1", "ClusterRole", "", "nri-zeropod"),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "", "nri-zeropod"),
        ("apps/v1", "DaemonSet", NAMESPACE, "nri-zeropod"),
    ])
    for o in objs:
        assert o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "nri-zeropod", key(o)
        kv.validate(o, K8S_VERSIONS[-1], strict=True)
    ds = by_kind(objs, "DaemonSet")
    # labels: are not added to the selector (immutable once applied).
    assert ds["spec"]["selector"]["matchLabels"] == daemonset()["spec"]["selector"]["matchLabels"]
    binding = by_kind(objs, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "nri-zeropod", "namespace": NAMESPACE}]


def _override(tmp_path: Path, *, namespace: str, image: dict[str, str], **more: Any) -> Path:
    kdir = tmp_path / "nri"
    shutil.copytree(DEPLOY, kdir)
    k = yaml.safe_load((kdir / "kustomization.yaml").read_text())
    k["namespace"] = namespace
    k["images"] = [{"name": IMAGE, **image}]
    k.update(more)
    (kdir / "kustomization.yaml").write_text(yaml.safe_dump(k))
    return kdir


OVERRIDES = {
    "registry and tag": {"newName": "registry.example:5000/team/nri-zeropod", "newTag": "0.1.0-rc1"},
    "digest": {"newName": "registry.example/nri-zeropod", "digest": "sha256:" + "ab" * 32},
}


@pytest.mark.parametrize("override", sorted(OVERRIDES))
def test_rendering_applies_a_namespace_and_an_image(tmp_path: Path, override: str) -> None:
    image = OVERRIDES[override]
    objs = render(_override(tmp_path, namespace="platform", image=image))
    assert by_kind(objs, "Namespace")["metadata"]["name"] == "platform"
    assert by_kind(objs, "ServiceAccount")["metadata"]["namespace"] == "platform"
    assert by_kind(objs, "DaemonSet")["metadata"]["namespace"] == "platform"
    assert "namespace" not in by_kind(objs, "ClusterRole")["metadata"]
    assert by_kind(objs, "ClusterRoleBinding")["subjects"][0]["namespace"] == "platform"
    spec = by_kind(objs, "DaemonSet")["spec"]["template"]["spec"]
    want = image["newName"] + (f":{image['newTag']}" if "newTag" in image else f"@{image['digest']}")
    assert [c["image"] for c in spec["initContainers"] + spec["containers"]] == [want, want]


def test_the_renderer_refuses_what_it_does_not_know(tmp_path: Path) -> None:
    kdir = tmp_path / "nri"
    shutil.copytree(DEPLOY, kdir)
    with (kdir / "kustomization.yaml").open("a") as f:
        f.write("patches:\n  - path: extra.yaml\n")
    with pytest.raises(RenderError, match="patches"):
        render(kdir)


@pytest.mark.parametrize("case", ["as shipped", "namespace and image overridden", "digest and labels"])
def test_the_renderer_agrees_with_kustomize(tmp_path: Path, case: str) -> None:
    tool = real_kustomize()
    need(tool is not None, "neither kustomize nor kubectl is installed (hack/setup.sh unpacks kustomize)")
    assert tool is not None
    if case == "as shipped":
        kdir = DEPLOY
    elif case == "namespace and image overridden":
        kdir = _override(tmp_path, namespace="platform", image=OVERRIDES["registry and tag"])
    else:
        kdir = _override(
            tmp_path, namespace="platform", image=OVERRIDES["digest"], commonLabels={"team": "infra"},
            labels=[{"pairs": {"tier": "node"}, "includeTemplates": True}],
        )
    out = subprocess.run([*tool, str(kdir)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    theirs = sorted((d for d in yaml.safe_load_all(out.stdout) if d), key=key)
    ours = sorted(render(kdir), key=key)
    assert ours == theirs


# --- what the agent needs -------------------------------------------------------------


def test_the_agent_command_line_parses_with_the_agent_parser() -> None:
    from nri_zeropod.agent import cli as agent_cli
    from nri_zeropod.cli import build_parser

    c = _agent(daemonset())
    assert c["command"][0] == "nri-zeropod"
    args = build_parser().parse_args([*c["command"][1:], *c["args"]])
    assert args.func is agent_cli.cmd_agent
    assert args.log_format == "json"
    assert str(args.toolbox) == "/opt/nri-zeropod/toolbox"
    assert str(args.state_dir) == "/var/lib/nri-zeropod"


def _mounts(ds: dict[str, Any], container: dict[str, Any]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """mountPath → (volumeMount, volume)."""
    vols = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    return {m["mountPath"]: (m, vols[m["name"]]) for m in container["volumeMounts"]}


def _host_mount_of(path: str, mounts: dict[str, tuple[dict[str, Any], dict[str, Any]]]) -> tuple[dict[str, Any], dict[str, Any]]:
    best = max((mp for mp in mounts if path == mp or path.startswith(mp.rstrip("/") + "/")), key=len, default=None)
    assert best is not None, f"{path} is on no volume"
    return mounts[best]


def test_host_paths_are_mounted_at_the_same_path() -> None:
    """The toolbox and state paths go to containerd as bind-mount sources: host path = agent path."""
    ds = daemonset()
    c = _agent(ds)
    mounts = _mounts(ds, c)
    flags = dict(a[2:].split("=", 1) for a in c["args"])
    for flag in ("nri-socket", "containerd-socket", "containerd-state", "state-dir", "toolbox", "bpf-pins"):
        mount, vol = _host_mount_of(flags[flag], mounts)
        assert "hostPath" in vol, f"--{flag}={flags[flag]} is not on a hostPath volume"
        assert vol["hostPath"]["path"] == mount["mountPath"], f"--{flag}: host {vol['hostPath']['path']} != {mount['mountPath']}"
    # The NRI socket's directory is mounted, never the socket itself (containerd recreates it).
    mount, vol = _host_mount_of(flags["nri-socket"], mounts)
    assert mount["mountPath"] == "/var/run/nri" and vol["hostPath"]["type"] in ("Directory", "DirectoryOrCreate")
    # The state directory is written by the agent; bpffs mounts must reach the host.
    assert not _host_mount_of(flags["state-dir"], mounts)[0].get("readOnly", False)
    assert mounts["/sys/fs/bpf"][0]["mountPropagation"] == "Bidirectional"
    assert "/sys/fs/cgroup" in mounts and not mounts["/sys/fs/cgroup"][0].get("readOnly", False)
    # The init container installs the toolbox where the agent looks for it.
    init = ds["spec"]["template"]["spec"]["initContainers"][0]
    env = {e["name"]: e["value"] for e in init["env"]}
    assert flags["toolbox"] == env["NRI_ZEROPOD_HOST_OPT"] + "/toolbox"
    init_mount, init_vol = _host_mount_of(env["NRI_ZEROPOD_HOST_OPT"], _mounts(ds, init))
    assert init_vol["hostPath"]["path"] == init_mount["mountPath"] == env["NRI_ZEROPOD_HOST_OPT"]
    assert not init_mount.get("readOnly", False)


def test_the_metrics_port_is_the_agents_default() -> None:
    from nri_zeropod.agent.settings import AgentSettings

    c = _agent(daemonset())
    flags = dict(a[2:].split("=", 1) for a in c["args"])
    addr = flags.get("metrics-addr", getattr(AgentSettings(), "metrics_addr", ":9133"))
    assert [p["containerPort"] for p in c["ports"] if p["name"] == "metrics"] == [int(addr.rpartition(":")[2])]


def test_the_paths_patched_by_index_in_install_md() -> None:
    """docs/install.md's patch for other containerd paths (k3s) addresses these by index."""
    doc = (REPO / "docs/install.md").read_text()
    spec = daemonset()["spec"]["template"]["spec"]
    c = spec["containers"][0]
    for path, check in {
        "/spec/template/spec/containers/0/args/1": c["args"][1].startswith("--containerd-socket="),
        "/spec/template/spec/containers/0/args/2": c["args"][2].startswith("--containerd-state="),
        "/spec/template/spec/volumes/1/hostPath/path": spec["volumes"][1]["hostPath"]["path"] == "/run/containerd",
        "/spec/template/spec/containers/0/volumeMounts/1/mountPath": c["volumeMounts"][1]["mountPath"] == "/run/containerd",
    }.items():
        assert path in doc
        assert check, f"{path} no longer points where docs/install.md says"


def test_annotations_md_covers_every_key() -> None:
    from nri_zeropod.agent import podconfig

    doc = (REPO / "docs/annotations.md").read_text()
    for name in (podconfig.ENABLED, *podconfig.ALIASED):
        assert f"| `{name}` |" in doc, name
        if name != podconfig.ENABLED:
            assert f"`zeropod.ctrox.dev/{name}`" in doc, name
    for ignored in ("pre-dump", "disable-checkpointing", "probe-buffer-size", "connect-timeout", "proxy-timeout",
                    "migrate", "live-migrate", "disable-migrate-data"):
        assert f"`zeropod.ctrox.dev/{ignored}`" in doc, ignored


def test_daemonset_conventions() -> None:
    ds = daemonset()
    spec = ds["spec"]["template"]["spec"]
    c = _agent(ds)
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["hostNetwork"] is True and spec["hostPID"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["terminationGracePeriodSeconds"] == 30
    assert {"operator": "Exists"} in spec["tolerations"]
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
    assert spec["nodeSelector"]["kubernetes.io/arch"] == "amd64"
    assert c["securityContext"]["privileged"] is True  # Bidirectional propagation needs it
    assert "livenessProbe" not in c  # the agent exits by itself when NRI goes away
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in c["env"]
    assert c["resources"]["requests"] == {"cpu": "50m", "memory": "100Mi"}
    assert "cpu" not in c["resources"]["limits"]
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    k = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert k["images"] == [{"name": IMAGE, "newTag": version}]
    for container in [*spec["initContainers"], *spec["containers"]]:
        assert container["image"] == f"{IMAGE}:{version}"
        assert container["imagePullPolicy"] == "IfNotPresent"


def test_the_namespace_admits_privileged_pods() -> None:
    ns = by_kind(load_docs(DEPLOY / "namespace.yaml"), "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_rbac_is_least_privilege() -> None:
    role = by_kind(load_docs(DEPLOY / "rbac.yaml"), "ClusterRole")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    assert granted == {
        ("", "namespaces", "list"), ("", "namespaces", "watch"),
        ("", "pods", "get"), ("", "pods", "list"), ("", "pods", "watch"), ("", "pods", "patch"),
        ("", "pods/resize", "patch"),
        ("", "events", "create"),
    }
    assert not any("resourceNames" in rule or "nonResourceURLs" in rule for rule in role["rules"])


def test_the_dockerfile_agrees_with_the_daemonset() -> None:
    """The image cannot be built here; at least its paths and inputs must line up."""
    text = (DEPLOY / "Dockerfile").read_text()
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for part in src.split():
            assert (REPO / part).exists(), f"COPY source {part} does not exist"
    ds = daemonset()
    c = _agent(ds)
    init = ds["spec"]["template"]["spec"]["initContainers"][0]
    flags = dict(a[2:].split("=", 1) for a in c["args"])
    env = {e["name"]: e["value"] for e in init["env"]}
    assert f"steer.bpf.o {flags['bpf-object']}" in text
    assert f"/out/toolbox {env['NRI_ZEROPOD_TOOLBOX_SRC']}" in text
    assert f"install-toolbox.sh /usr/local/bin/{init['command'][0]}" in text
    assert "debian:bookworm-slim" in text and "make build" in text and "assemble-toolbox" in text


@pytest.mark.parametrize("script", ["install-toolbox.sh", "assemble-toolbox.sh"])
def test_scripts_are_valid_posix_shell(script: str) -> None:
    path = DEPLOY / script
    assert os.access(path, os.X_OK)
    sh = shutil.which("dash") or shutil.which("sh")
    assert sh
    out = subprocess.run([sh, "-n", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def _resolve_criu_packages(script: str) -> str:
    text = re.sub(r"\\\n\s*", " ", script)
    m = re.search(r"apt-cache depends .*?\| tr '\\n' ' '", text)
    assert m, "no apt-cache depends pipeline"
    return re.sub(r"\s+", " ", m.group(0))


def test_the_image_toolbox_is_assembled_like_setup_sh() -> None:
    """assemble-toolbox.sh resolves CRIU's packages with the very same command as hack/setup.sh."""
    ours = (DEPLOY / "assemble-toolbox.sh").read_text()
    theirs = (REPO / "hack/setup.sh").read_text()
    assert _resolve_criu_packages(ours) == _resolve_criu_packages(theirs)
    for step in ('"$OUT/lib/ld-linux-x86-64.so.2" --library-path "$OUT/lib" "$OUT/bin/criu" --version',
                 "x86_64-linux-gnu/*.so*", "zeropod-init", "zeropod-criu", "libzeropod-rlimits.so", "state"):
        assert step in ours


# --- install-toolbox.sh -----------------------------------------------------------------


def make_toolbox(path: Path, *, criu: bytes = b"criu 4.2.1\n", version: str = "4.2.1") -> Path:
    for d in ("bin", "lib", "state"):
        (path / d).mkdir(parents=True, exist_ok=True)
    (path / "bin/criu").write_bytes(criu)
    (path / "bin/zeropod-init").write_bytes(b"keeper\n")
    (path / "bin/zeropod-criu").write_bytes(b"helper\n")
    (path / "lib/ld-linux-x86-64.so.2").write_bytes(b"ld.so\n")
    if not (path / "lib/libc.so.6").is_symlink():
        (path / "lib/libc.so.6").symlink_to("ld-linux-x86-64.so.2")
    (path / "VERSION").write_text(f"Version: {version}\n")
    for f in (path / "bin").iterdir():
        f.chmod(0o755)
    return path


def install(src: Path, dest: Path, proc: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NRI_ZEROPOD_TOOLBOX_SRC": str(src), "NRI_ZEROPOD_HOST_OPT": str(dest), "NRI_ZEROPOD_PROC": str(proc)}
    out = subprocess.run([str(DEPLOY / "install-toolbox.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out


def fake_mountinfo(proc: Path, pid: int, root: str) -> None:
    (proc / str(pid)).mkdir(parents=True, exist_ok=True)
    (proc / str(pid) / "mountinfo").write_text(
        "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
        f"310 300 8:1 {root} /.zeropod ro,nosuid,nodev,relatime - ext4 /dev/sda1 rw\n"
    )


def installed(dest: Path) -> list[str]:
    return sorted(p.name for p in (dest / "toolboxes").iterdir())


def test_install_toolbox_installs_once_and_swaps_atomically(tmp_path: Path) -> None:
    src, dest, proc = make_toolbox(tmp_path / "image"), tmp_path / "opt", tmp_path / "proc"
    proc.mkdir()
    install(src, dest, proc)
    [first] = installed(dest)
    assert re.fullmatch(r"criu-4\.2\.1-[0-9a-f]{16}", first)
    assert os.readlink(dest / "toolbox") == f"toolboxes/{first}"
    assert (dest / "toolbox/bin/criu").read_bytes() == b"criu 4.2.1\n"
    assert (dest / "toolbox/state").is_dir() and os.readlink(dest / "toolbox/lib/libc.so.6") == "ld-linux-x86-64.so.2"
    inode = (dest / "toolboxes" / first / "bin/criu").stat().st_ino

    out = install(src, dest, proc)  # the same image again (a pod restart): nothing changes
    assert "already installed" in out.stderr
    assert installed(dest) == [first]
    assert (dest / "toolboxes" / first / "bin/criu").stat().st_ino == inode

    # A new image: new directory, the link moves, the unused old one goes.
    make_toolbox(src, criu=b"criu 4.2.2\n", version="4.2.2")
    install(src, dest, proc)
    [second] = installed(dest)
    assert second.startswith("criu-4.2.2-") and os.readlink(dest / "toolbox") == f"toolboxes/{second}"
    assert (dest / "toolbox/bin/criu").read_bytes() == b"criu 4.2.2\n"


def test_install_toolbox_keeps_a_toolbox_that_is_mounted(tmp_path: Path) -> None:
    src, dest, proc = make_toolbox(tmp_path / "image"), tmp_path / "opt", tmp_path / "proc"
    proc.mkdir()
    install(src, dest, proc)
    [old] = installed(dest)
    fake_mountinfo(proc, 4242, f"/opt/nri-zeropod/toolboxes/{old}")  # a running managed container
    (dest / "toolboxes/criu-9.9-interrupted.new").mkdir()  # an interrupted copy
    make_toolbox(src, criu=b"criu 4.2.2\n", version="4.2.2")
    out = install(src, dest, proc)
    assert "keeping toolbox " + old in out.stderr
    new = [n for n in installed(dest) if n != old]
    assert len(new) == 1 and os.readlink(dest / "toolbox") == f"toolboxes/{new[0]}"
    assert (dest / "toolboxes" / old / "bin/criu").read_bytes() == b"criu 4.2.1\n"  # untouched

    shutil.rmtree(proc / "4242")  # the container is gone: the next start removes it
    install(src, dest, proc)
    assert installed(dest) == new


def test_install_toolbox_adopts_a_toolbox_directory(tmp_path: Path) -> None:
    """hack/setup.sh's layout (toolbox as a directory) is moved aside, then removed when unused."""
    src, dest, proc = make_toolbox(tmp_path / "image"), tmp_path / "opt", tmp_path / "proc"
    proc.mkdir()
    make_toolbox(dest / "toolbox", criu=b"old criu\n")
    out = install(src, dest, proc)
    assert "moving the toolbox directory" in out.stderr
    assert (dest / "toolbox").is_symlink() and (dest / "toolbox/bin/criu").read_bytes() == b"criu 4.2.1\n"
    assert [n for n in installed(dest) if n.startswith("legacy-")] == []


def test_install_toolbox_refuses_an_incomplete_toolbox(tmp_path: Path) -> None:
    src = make_toolbox(tmp_path / "image")
    (src / "bin/zeropod-init").unlink()
    env = {**os.environ, "NRI_ZEROPOD_TOOLBOX_SRC": str(src), "NRI_ZEROPOD_HOST_OPT": str(tmp_path / "opt")}
    out = subprocess.run([str(DEPLOY / "install-toolbox.sh")], env=env, capture_output=True, text=True)
    assert out.returncode == 1 and "lacks bin/zeropod-init" in out.stderr
    assert not (tmp_path / "opt/toolbox").exists()


def hold_mount(source: Path, target: Path) -> subprocess.Popen[str]:
    """A process in its own mount namespace with ``source`` bind-mounted, like a managed container."""
    target.mkdir(exist_ok=True)
    script = f"mount --make-rprivate / && mount --bind {source} {target} && echo ready && exec sleep 60"
    holder = subprocess.Popen(["unshare", "-m", "sh", "-c", script], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
    return holder


@pytest.mark.root
@pytest.mark.parametrize("layout", ["versioned", "directory"])
def test_install_toolbox_sees_a_real_bind_mount(tmp_path: Path, layout: str) -> None:
    """With the real /proc: the kernel's mountinfo names the toolbox, also after it was renamed."""
    need(os.geteuid() == 0 and shutil.which("unshare") is not None, "needs root and unshare")
    src, dest = make_toolbox(tmp_path / "image"), tmp_path / "opt"
    if layout == "versioned":
        install(src, dest, Path("/proc"))
        make_toolbox(src, criu=b"criu 4.2.2\n", version="4.2.2")
    else:  # hack/setup.sh's directory, in use by a container started before the first install
        make_toolbox(dest / "toolbox", criu=b"old criu\n")
    holder = hold_mount((dest / "toolbox").resolve(), tmp_path / "container-root")
    try:
        before = set(installed(dest)) if layout == "versioned" else set()
        out = install(src, dest, Path("/proc"))
        [old] = (before or set(installed(dest))) - {os.readlink(dest / "toolbox").split("/")[-1]}
        assert f"keeping toolbox {old}" in out.stderr
        assert (dest / "toolboxes" / old / "bin/criu").exists()
    finally:
        holder.kill()
        holder.wait()
    install(src, dest, Path("/proc"))
    assert installed(dest) == [os.readlink(dest / "toolbox").split("/")[-1]]
