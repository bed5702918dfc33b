"""Per-container state on the host, so that a restarted agent can pick up where it was.

Layout under the agent's state directory (``/var/lib/nri-zeropod`` by default)::

    <container id>/            0700
        container.json         the Record below, written atomically
        state/state            one word for the keeper (running, checkpointing, scaled-down,
                               restoring); state/ is bind-mounted read-only at /.zeropod/state
        images/                0700: CRIU images, dump.log and restore.log (process memory!)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nri_zeropod.agent.lifecycle import KEEPER_WORD, State


# Container and pod ids become directory names: nothing that could climb out of a directory.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")


def safe_id(value: str) -> bool:
    return bool(_ID.fullmatch(value)) and ".." not in value


@dataclass
class Record:
    id: str
    name: str
    pod_id: str
    pod_name: str
    pod_namespace: str
    pod_uid: str = ""
    state: State = State.RUNNING
    since: float = field(default_factory=time.time)
    scaledown_seconds: float = 60.0
    ports: list[int] | None = None  # from ports-map; None = discover
    probe_detection: bool = True
    keeper_pid: int = 0
    keeper_start: str = ""
    activator_index: int = -1
    checkpoints: int = 0
    restores: int = 0
    checkpoint_errors: int = 0
    restore_errors: int = 0
    last_checkpoint_at: float = 0.0
    last_checkpoint_seconds: float = 0.0
    last_restore_at: float = 0.0
    last_restore_seconds: float = 0.0
    rss_at_checkpoint: int = 0
    image_bytes: int = 0
    last_error: str = ""
    last_criu_log: str = ""  # the CRIU log of the last failure

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        d["state"] = self.state.value
        return d

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Record:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        rec = cls(**known)  # type: ignore[arg-type]
        rec.state = State(str(data.get("state", "RUNNING")))
        return rec


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)

    def dir(self, cid: str) -> Path:
        if not safe_id(cid):
            raise ValueError(f"invalid container id {cid[:80]!r}")
        return self.root / cid

    def state_dir(self, cid: str) -> Path:
        return self.dir(cid) / "state"

    def images_dir(self, cid: str) -> Path:
        return self.dir(cid) / "images"

    def prepare(self, cid: str) -> None:
        """Create the container's directories; the state file starts as ``running``."""
        d = self.dir(cid)
        d.mkdir(mode=0o700, exist_ok=True)
        os.chmod(d, 0o711)  # the state/ bind mount is read by the container's (maybe non-root) keeper
        self.state_dir(cid).mkdir(mode=0o755, exist_ok=True)
        self.images_dir(cid).mkdir(mode=0o700, exist_ok=True)
        if not (self.state_dir(cid) / "state").exists():
            self.write_keeper_state(cid, State.RUNNING)

    def write_keeper_state(self, cid: str, state: State) -> None:
        _atomic_write(self.state_dir(cid) / "state", KEEPER_WORD[state] + "\n", mode=0o644)

    def save(self, rec: Record) -> None:
        _atomic_write(self.dir(rec.id) / "container.json", json.dumps(rec.to_json(), indent=1) + "\n", mode=0o600)

    def load(self, cid: str) -> Record | None:
        try:
            return Record.from_json(json.loads((self.dir(cid) / "container.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def clear_images(self, cid: str) -> None:
        """Delete the image files; CRIU's logs stay for inspection until the next run overwrites them."""
        d = self.images_dir(cid)
        if not d.is_dir():
            d.mkdir(mode=0o700, exist_ok=True)
            return
        for p in d.iterdir():
            if p.suffix == ".log" and p.is_file():
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)

    def image_bytes(self, cid: str) -> int:
        total = 0
        for p in self.images_dir(cid).glob("*.img"):
            try:
                total += p.stat().st_size
            except OSError:
                pass
        return total

    def remove(self, cid: str) -> None:
        shutil.rmtree(self.dir(cid), ignore_errors=True)


def _atomic_write(path: Path, text: str, *, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        # No fsync: rename makes the write atomic against an agent crash, and
        # nothing here needs to survive the node losing power.
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
