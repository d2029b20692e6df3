"""Which of a swarm's assets (task files) a node needs: the same answer on the node, which downloads them, and on
the coordinator, which can then rebuild the task exactly as that node runs it (e.g. to check its work)."""

import hashlib
from typing import Iterable


def asset_seed(node_id: str) -> int:
    """Which shards a node takes: fixed per node, so a restart reuses its cache."""
    return int.from_bytes(hashlib.sha256(f"{node_id}:assets".encode()).digest()[:8], "little")


def needed_names(task, names: Iterable[str], node_id: str) -> list[str]:
    """The names of the assets `node_id` needs; the task chooses (tiny-lm: a few text shards), by default all.
    `task` must be configured with the swarm's options first (they may say how many shards)."""
    names = list(names)
    choose = getattr(task, "assets_needed", None)
    return names if choose is None else list(choose(names, asset_seed(node_id)))
