"""Peers in interpreters of their own, as on their own PCs, for tests/node: a test module runs itself as the peer
(`python -m` the module: its __main__ part, given the initial peers' addresses as arguments) and talks to it over
stdin/stdout."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def start_peer(module: str, *initial_peers: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, *initial_peers], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=REPO)  # fmt: skip


def stop_peers(*processes: subprocess.Popen | None) -> None:
    """Close each peer's stdin (its cue to shut down) and wait for it; kill one that does not end within 60 s."""
    for process in processes:
        if process is None:
            continue
        process.stdin.close()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
