"""Create and remove pods through CRI the way kubelet does.

A pod is a sandbox (the pause image) plus containers created and started in
it. The labels, annotations, log paths, cgroup parent and namespace options are
set as kubelet sets them, so that containerd, NRI and the agent see what they
would see in a cluster. Creation is all-or-nothing: a failure after the
sandbox exists removes the sandbox again.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from nri_zeropod.cri import CRIClient, CRIError, pb
from nri_zeropod.images import REGISTRY
from nri_zeropod.node.config import NodeConfig

POD_NAME = "io.kubernetes.pod.name"
POD_NAMESPACE = "io.kubernetes.pod.namespace"
POD_UID = "io.kubernetes.pod.uid"
CONTAINER_NAME = "io.kubernetes.container.name"

# RFC 1123 label, as Kubernetes requires for pod and container names.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class PodError(Exception):
    """A pod could not be created, found or removed; the message says why."""


@dataclass
class ContainerSpec:
    name: str
    image: str
    command: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    ports: list[int] = field(default_factory=list)
    mounts: list[tuple[str, str, bool]] = field(default_factory=list)  # host, container, readonly
    annotations: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    memory_limit: int = 0
    tty: bool = False


@dataclass
class PodSpec:
    name: str
    containers: list[ContainerSpec]
    namespace: str = "default"
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    termination_grace_period: int = 30
    uid: str = ""  # as the API server gave it; a new one when empty


@dataclass(frozen=True)
class Pod:
    id: str
    name: str
    namespace: str
    uid: str
    ip: str
    state: str
    containers: dict[str, str]  # name -> container id


def validate(spec: PodSpec) -> None:
    for kind, value in [("pod name", spec.name), ("namespace", spec.namespace)] + [
        ("container name", c.name) for c in spec.containers
    ]:
        if not _NAME.match(value):
            raise PodError(f"{kind} {value!r} is not a valid name (lower-case letters, digits and '-', at most 63)")
    if not spec.containers:
        raise PodError("a pod needs at least one container")
    for c in spec.containers:
        for port in c.ports:
            if not 1 <= port <= 65535:
                raise PodError(f"port {port} is out of range (1-65535)")


def resolve_image(cri: CRIClient, name: str) -> str:
    """The full reference of a local image given as ``busybox``, ``busybox:latest`` or a full reference."""
    tags = {t for img in cri.list_images() for t in img.repo_tags}
    candidates = [name]
    if "/" not in name:
        candidates.append(f"{REGISTRY}/{name}" + ("" if ":" in name else ":latest"))
    if ":" not in name.rsplit("/", 1)[-1]:
        candidates.append(f"{name}:latest")
    for c in candidates:
        if c in tags:
            return c
    short = sorted(t.split("/", 1)[1].split(":")[0] for t in tags if t.startswith(REGISTRY + "/") and "pause" not in t)
    raise PodError(f"image {name!r} not found on the node (local images: {', '.join(short) or 'none'})")


def find(cri: CRIClient, name: str, namespace: str = "default") -> list[pb.PodSandbox]:
    return cri.list_pod_sandbox(labels={POD_NAME: name, POD_NAMESPACE: namespace})


def sandbox_config(cfg: NodeConfig, spec: PodSpec, uid: str) -> pb.PodSandboxConfig:
    labels = {**spec.labels, POD_NAME: spec.name, POD_NAMESPACE: spec.namespace, POD_UID: uid}
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=spec.name, namespace=spec.namespace, uid=uid, attempt=0),
        hostname=spec.name,
        log_directory=str(cfg.pod_logs / f"{spec.namespace}_{spec.name}_{uid}"),
        labels=labels,
        annotations=dict(spec.annotations),
        linux=pb.LinuxPodSandboxConfig(
            cgroup_parent=f"{cfg.cgroup_parent}/pod{uid}",
            security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER, ipc=pb.POD),
                seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault),
            ),
        ),
    )


def container_config(spec: PodSpec, c: ContainerSpec, *, uid: str, image: str) -> pb.ContainerConfig:
    labels = {**c.labels, CONTAINER_NAME: c.name, POD_NAME: spec.name, POD_NAMESPACE: spec.namespace, POD_UID: uid}
    annotations = {
        **c.annotations,
        "io.kubernetes.container.restartCount": "0",
        "io.kubernetes.container.terminationMessagePath": "/dev/termination-log",
        "io.kubernetes.container.terminationMessagePolicy": "File",
        "io.kubernetes.pod.terminationGracePeriod": str(spec.termination_grace_period),
    }
    if c.ports:
        annotations["io.kubernetes.container.ports"] = json.dumps(
            [{"containerPort": p, "protocol": "TCP"} for p in c.ports]
        )
    resources = pb.LinuxContainerResources(cpu_shares=2, memory_limit_in_bytes=c.memory_limit)
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=c.name, attempt=0),
        image=pb.ImageSpec(image=image, user_specified_image=c.image),
        command=c.command,
        args=c.args,
        envs=[pb.KeyValue(key=k, value=v) for k, v in c.env.items()],
        mounts=[pb.Mount(host_path=h, container_path=p, readonly=ro) for h, p, ro in c.mounts],
        labels=labels,
        annotations=annotations,
        log_path=f"{c.name}/0.log",
        tty=c.tty,
        stdin=c.tty,
        linux=pb.LinuxContainerConfig(
            resources=resources,
            security_context=pb.LinuxContainerSecurityContext(
                namespace_options=pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER, ipc=pb.POD),
                seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault),
            ),
        ),
    )


def run_pod(cri: CRIClient, cfg: NodeConfig, spec: PodSpec, *, start: bool = True) -> Pod:
    """Create (and start) the pod; nothing is left behind when any step fails."""
    validate(spec)
    if find(cri, spec.name, spec.namespace):
        raise PodError(f"pod {spec.namespace}/{spec.name} already exists")
    images = {c.name: resolve_image(cri, c.image) for c in spec.containers}
    uid = spec.uid or str(uuid.uuid4())
    sandbox = sandbox_config(cfg, spec, uid)
    Path(sandbox.log_directory).mkdir(parents=True, exist_ok=True)
    pod_id = cri.run_pod_sandbox(sandbox)
    containers: dict[str, str] = {}
    try:
        for c in spec.containers:
            config = container_config(spec, c, uid=uid, image=images[c.name])
            containers[c.name] = cri.create_container(pod_id, config, sandbox)
            if start:
                cri.start_container(containers[c.name])
    except BaseException:
        remove_sandbox(cri, pod_id)
        raise
    return get(cri, pod_id)


def get(cri: CRIClient, pod_id: str) -> Pod:
    st = cri.pod_sandbox_status(pod_id).status
    containers = {c.metadata.name: c.id for c in cri.list_containers(pod_id=pod_id)}
    return Pod(
        id=pod_id,
        name=st.metadata.name,
        namespace=st.metadata.namespace,
        uid=st.metadata.uid,
        ip=st.network.ip,
        state=pb.PodSandboxState.Name(st.state),
        containers=containers,
    )


def remove_sandbox(cri: CRIClient, pod_id: str, *, grace: int = 10) -> None:
    """Stop the sandbox's running containers (SIGKILL after ``grace`` seconds), then it, and remove it."""
    for c in cri.list_containers(pod_id=pod_id):
        if c.state == pb.CONTAINER_RUNNING:
            cri.stop_container(c.id, timeout=grace)
    cri.stop_pod_sandbox(pod_id)
    cri.remove_pod_sandbox(pod_id)


def remove_pod(cri: CRIClient, cfg: NodeConfig, name: str, *, namespace: str = "default", grace: int = 10) -> int:
    """Remove every sandbox of pod ``namespace/name``; returns how many were removed."""
    found = find(cri, name, namespace)
    if not found:
        raise PodError(f"pod {namespace}/{name} not found")
    for sb in found:
        uid = sb.metadata.uid
        remove_sandbox(cri, sb.id, grace=grace)
        from nri_zeropod.node import cleanup

        cleanup.cgroups(f"{cfg.cgroup_parent}/pod{uid}")
    return len(found)


def list_pods(cri: CRIClient) -> list[Pod]:
    out = []
    for sb in cri.list_pod_sandbox():
        try:
            out.append(get(cri, sb.id))
        except CRIError:
            continue
    return sorted(out, key=lambda p: (p.namespace, p.name))
