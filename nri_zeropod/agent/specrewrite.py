"""Make the keeper PID 1 on containerd < 2.2, where NRI cannot adjust process.args.

During PostCreateContainer, before the plugin replies, the stored OCI spec is
read with containerd's Containers/Get and written back with Containers/Update
(update mask ``spec``; without a mask Update replaces the whole record). CRI
CreateContainer does not return before every plugin answered, and
StartContainer reads the spec fresh, so the keeper is in place before the
task exists. The rewrite is idempotent: Update has no compare-and-swap.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import grpc
from google.protobuf import field_mask_pb2

from nri_zeropod.containerd.proto import containers_pb2 as pb

SERVICE = "/containerd.services.containers.v1.Containers"
NAMESPACE = "k8s.io"


class SpecRewriteError(Exception):
    pass


def rewrite_args(args: Sequence[str], prefix: Sequence[str]) -> list[str] | None:
    """``prefix + args``, or None when ``args`` already start with ``prefix[0]``."""
    if args and args[0] == prefix[0]:
        return None
    return [*prefix, *args]


class SpecRewriter:
    def __init__(self, socket_path: str, *, timeout: float = 1.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._channel: grpc.aio.Channel | None = None

    def _connect(self) -> grpc.aio.Channel:
        # Created on first use: an aio channel belongs to the event loop that creates it.
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(f"unix://{self.socket_path}")
            self._get = self._channel.unary_unary(
                f"{SERVICE}/Get",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=pb.GetContainerResponse.FromString,
            )
            self._update = self._channel.unary_unary(
                f"{SERVICE}/Update",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=pb.UpdateContainerResponse.FromString,
            )
        return self._channel

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def prepend_args(self, container_id: str, prefix: Sequence[str]) -> bool:
        """Prepend ``prefix`` to the stored spec's process.args; False if it was already there."""
        md = (("containerd-namespace", NAMESPACE),)
        self._connect()
        try:
            got = await self._get(pb.GetContainerRequest(id=container_id), timeout=self.timeout, metadata=md)
            container = got.container
            spec = json.loads(container.spec.value)
            new_args = rewrite_args(spec.get("process", {}).get("args", []), prefix)
            if new_args is None:
                return False
            spec["process"]["args"] = new_args
            container.spec.value = json.dumps(spec, separators=(",", ":")).encode()
            req = pb.UpdateContainerRequest(container=container, update_mask=field_mask_pb2.FieldMask(paths=["spec"]))
            await self._update(req, timeout=self.timeout, metadata=md)
            return True
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            details = e.details() if hasattr(e, "details") else str(e)
            raise SpecRewriteError(f"containerd Containers API for {container_id}: {code}: {details}") from None
        except (ValueError, KeyError) as e:
            raise SpecRewriteError(f"stored spec of {container_id} is not valid JSON: {e}") from None
