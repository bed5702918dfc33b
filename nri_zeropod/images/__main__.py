"""Command line of the image builder (used by hack/setup.sh)."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from nri_zeropod import paths
from nri_zeropod.images import recipes
from nri_zeropod.images.oci import build_layout


def _deb(debs_dir: Path, pkg: str) -> Path:
    found = sorted(debs_dir.glob(f"{pkg}_*.deb"))
    if not found:
        raise SystemExit(f"images: {pkg}: no .deb in {debs_dir} (run hack/setup.sh)")
    return found[-1]


def _inputs_key(recipe: recipes.Recipe, debs: list[Path]) -> str:
    h = hashlib.sha256()
    h.update(Path(recipes.__file__).read_bytes())
    h.update(repr(recipe.config).encode())
    for name in ("usr/bin/busybox", "usr/bin/catatonit"):
        p = paths.host_root() / name
        h.update(f"{name}:{p.stat().st_size}:{int(p.stat().st_mtime)}".encode())
    for d in debs:
        h.update(d.name.encode())
    return h.hexdigest()


def build_one(recipe: recipes.Recipe, *, debs_dir: Path, out_dir: Path, force: bool) -> bool:
    debs = [_deb(debs_dir, p) for pkgs in recipe.debs.values() for p in pkgs]
    key = _inputs_key(recipe, debs)
    meta_path = out_dir / f"{recipe.name}.json"
    tar_path = out_dir / f"{recipe.name}.tar"
    if not force and tar_path.exists() and meta_path.exists():
        if json.loads(meta_path.read_text()).get("inputs") == key:
            return False
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"nzimg-{recipe.name}-") as tmp:
        root = Path(tmp) / "rootfs"
        root.mkdir()
        recipes.base_layout(root, with_busybox=recipe.busybox)
        recipes.unpack_debs(root, debs)
        if recipe.extra:
            recipe.extra(root)
        recipes.copy_host_libraries(root)
        built = build_layout(root, tar_path, name=recipe.reference, config=recipe.config)
    meta = {
        "name": recipe.reference,
        "short": recipe.name,
        "manifest": built.manifest.digest,
        "layer_size": built.layer.size,
        "inputs": key,
    }
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    print(
        f"images: built {recipe.reference} ({built.layer.size / 1e6:.1f} MB layer) in {time.monotonic() - start:.1f}s",
        file=sys.stderr,
    )
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nri_zeropod.images")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("debs", help="print the packages to download, one line per suite")
    b = sub.add_parser("build", help="build the image layouts")
    b.add_argument("--only", action="append", choices=sorted(recipes.RECIPES), help="build only these")
    b.add_argument("--debs", type=Path, default=paths.opt_dir() / "debs")
    b.add_argument("--out", type=Path, default=paths.images_dir())
    b.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    if args.cmd == "debs":
        by_suite: dict[str, list[str]] = {}
        for r in recipes.RECIPES.values():
            for suite, names in r.debs.items():
                listed = by_suite.setdefault(suite, [])
                listed.extend(n for n in names if n not in listed)
        for suite, listed in sorted(by_suite.items()):
            print(suite, *listed)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    if not shutil.which("dpkg"):
        raise SystemExit("images: dpkg not found")
    for name in args.only or sorted(recipes.RECIPES):
        try:
            build_one(recipes.RECIPES[name], debs_dir=args.debs, out_dir=args.out, force=args.force)
        except RuntimeError as e:
            print(f"images: {name}: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
