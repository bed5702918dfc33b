"""Every committed *_pb2.py / *_pb2.pyi under nri_zeropod/ is exactly what hack/gen-proto.sh makes now.

Generic: it regenerates all .proto files of the package into a temporary
mirror tree, so protos added later are covered without touching this test.
"""

from __future__ import annotations

import sys
from pathlib import Path

from nri_zeropod.proc import run

REPO = Path(__file__).resolve().parents[2]


def generated(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in (root / "nri_zeropod").rglob("*")
        if path.suffix in (".py", ".pyi") and path.stem.endswith("_pb2") and "__pycache__" not in path.parts
    }


def test_generated_proto_modules_are_up_to_date(tmp_path: Path) -> None:
    run(["bash", "hack/gen-proto.sh", str(tmp_path)], timeout=300, cwd=str(REPO), env={"PYTHON": sys.executable})
    fresh, committed = generated(tmp_path), generated(REPO)
    assert fresh, "hack/gen-proto.sh generated nothing"
    assert sorted(committed) == sorted(fresh), "stale or missing generated modules: run hack/gen-proto.sh"
    stale = [name for name in fresh if committed[name] != fresh[name]]
    assert not stale, f"out of date, run hack/gen-proto.sh: {stale}"


def test_every_proto_has_its_modules() -> None:
    protos = sorted((REPO / "nri_zeropod").rglob("*.proto"))
    for proto in protos:
        for suffix in ("_pb2.py", "_pb2.pyi"):
            module = proto.with_name(proto.stem + suffix)
            assert module.exists(), f"{module.relative_to(REPO)} missing: run hack/gen-proto.sh"
