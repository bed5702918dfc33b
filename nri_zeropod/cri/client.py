"""A small synchronous CRI (runtime.v1) client over gRPC.

Only the calls kubelet makes for running pods are here. Each method takes and
returns the generated protobuf messages (``nri_zeropod.cri.proto.cri_pb2``);
errors become :class:`CRIError`, which names the call and carries the gRPC
status code and the runtime's message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from nri_zeropod.cri.proto import cri_pb2 as pb

RUNTIME = "runtime.v1.RuntimeService"
IMAGES = "runtime.v1.ImageService"


class CRIError(Exception):
    def __init__(self, *, method: str, code: grpc.StatusCode, details: str) -> None:
        self.method = method
        self.code = code
        self.details = details
        super().__init__(f"CRI {method}: {details or code.name}")


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes


class CRIClient:
    """CRI client for the containerd socket at ``socket_path``."""

    def __init__(self, socket_path: str, *, timeout: float = 60.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            f"unix://{socket_path}",
            options=[("grpc.max_receive_message_length", 64 << 20)],
        )

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CRIClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, service: str, method: str, req: Any, resp_type: Any, timeout: float | None = None) -> Any:
        fn = self._channel.unary_unary(
            f"/{service}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=resp_type.FromString,
        )
        try:
            return fn(req, timeout=timeout if timeout is not None else self.timeout)
        except grpc.RpcError as e:
            raise CRIError(method=method, code=e.code(), details=e.details() or "") from None

    # ---- runtime

    def version(self) -> pb.VersionResponse:
        return self._call(RUNTIME, "Version", pb.VersionRequest(version="v1"), pb.VersionResponse, timeout=5)

    def run_pod_sandbox(self, config: pb.PodSandboxConfig, *, runtime_handler: str = "") -> str:
        req = pb.RunPodSandboxRequest(config=config, runtime_handler=runtime_handler)
        return self._call(RUNTIME, "RunPodSandbox", req, pb.RunPodSandboxResponse).pod_sandbox_id

    def stop_pod_sandbox(self, pod_id: str) -> None:
        self._call(RUNTIME, "StopPodSandbox", pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), pb.StopPodSandboxResponse)

    def remove_pod_sandbox(self, pod_id: str) -> None:
        req = pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id)
        self._call(RUNTIME, "RemovePodSandbox", req, pb.RemovePodSandboxResponse)

    def pod_sandbox_status(self, pod_id: str, *, verbose: bool = False) -> pb.PodSandboxStatusResponse:
        req = pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=verbose)
        return self._call(RUNTIME, "PodSandboxStatus", req, pb.PodSandboxStatusResponse)

    def list_pod_sandbox(self, *, labels: Mapping[str, str] | None = None) -> list[pb.PodSandbox]:
        flt = pb.PodSandboxFilter(label_selector=dict(labels or {}))
        return list(self._call(RUNTIME, "ListPodSandbox", pb.ListPodSandboxRequest(filter=flt), pb.ListPodSandboxResponse).items)

    def create_container(
        self, pod_id: str, config: pb.ContainerConfig, sandbox_config: pb.PodSandboxConfig
    ) -> str:
        req = pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=sandbox_config)
        return self._call(RUNTIME, "CreateContainer", req, pb.CreateContainerResponse).container_id

    def start_container(self, container_id: str) -> None:
        self._call(RUNTIME, "StartContainer", pb.StartContainerRequest(container_id=container_id), pb.StartContainerResponse)

    def stop_container(self, container_id: str, *, timeout: int = 10) -> None:
        req = pb.StopContainerRequest(container_id=container_id, timeout=timeout)
        self._call(RUNTIME, "StopContainer", req, pb.StopContainerResponse, timeout=timeout + 30)

    def remove_container(self, container_id: str) -> None:
        self._call(RUNTIME, "RemoveContainer", pb.RemoveContainerRequest(container_id=container_id), pb.RemoveContainerResponse)

    def list_containers(self, *, pod_id: str = "", labels: Mapping[str, str] | None = None) -> list[pb.Container]:
        flt = pb.ContainerFilter(pod_sandbox_id=pod_id, label_selector=dict(labels or {}))
        resp = self._call(RUNTIME, "ListContainers", pb.ListContainersRequest(filter=flt), pb.ListContainersResponse)
        return list(resp.containers)

    def container_status(self, container_id: str, *, verbose: bool = False) -> pb.ContainerStatusResponse:
        req = pb.ContainerStatusRequest(container_id=container_id, verbose=verbose)
        return self._call(RUNTIME, "ContainerStatus", req, pb.ContainerStatusResponse)

    def container_info(self, container_id: str) -> dict[str, Any]:
        """The verbose ``info`` JSON of a container (pid, runtimeSpec, ...)."""
        raw = self.container_status(container_id, verbose=True).info.get("info", "{}")
        return json.loads(raw)

    def exec_sync(self, container_id: str, cmd: Sequence[str], *, timeout: int = 30) -> ExecResult:
        req = pb.ExecSyncRequest(container_id=container_id, cmd=list(cmd), timeout=timeout)
        resp = self._call(RUNTIME, "ExecSync", req, pb.ExecSyncResponse, timeout=timeout + 30)
        return ExecResult(exit_code=resp.exit_code, stdout=resp.stdout, stderr=resp.stderr)

    # ---- images

    def list_images(self) -> list[pb.Image]:
        return list(self._call(IMAGES, "ListImages", pb.ListImagesRequest(), pb.ListImagesResponse).images)
