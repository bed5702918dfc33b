"""Run the fake API server by hand: ``python -m tests.fakekube --port 8001 [--kubeconfig PATH]``."""

from __future__ import annotations

import argparse
import threading

from .server import FakeKube


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakekube", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (default: any free one)")
    parser.add_argument("--kubeconfig", help="write a kubeconfig pointing at the server to this path")
    parser.add_argument("--namespace", action="append", default=[], help="create this namespace (repeatable)")
    parser.add_argument("--no-resize", action="store_true", help="play a cluster without the pods/resize subresource")
    args = parser.parse_args()
    kube = FakeKube(port=args.port, resize_subresource=not args.no_resize).start()
    for ns in args.namespace:
        kube.create_namespace(ns)
    if args.kubeconfig:
        kube.write_kubeconfig(args.kubeconfig)
    print(f"fake Kubernetes API at {kube.url}" + (f", kubeconfig {args.kubeconfig}" if args.kubeconfig else ""), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        kube.stop()


if __name__ == "__main__":
    main()
