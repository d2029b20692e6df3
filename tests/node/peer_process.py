"""Peers in interpreters of their own, as on their own PCs, for tests/node: a test module runs itself as the peer
(`python -m` the module: its __main__ part, given the initial peers' addresses as arguments) and talks to it over
stdin/stdout."""

import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

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


@contextlib.contextmanager
def two_peers(module: str) -> Iterator[tuple[subprocess.Popen, subprocess.Popen]]:
    """The first peer (its first stdout line: its addresses, as JSON) and a second one bootstrapped from it; both
    stopped at the end, whatever happens."""
    first, second = start_peer(module), None
    try:
        second = start_peer(module, *json.loads(first.stdout.readline()))
        yield first, second
    finally:
        stop_peers(second, first)


def ask(peers: tuple[subprocess.Popen, ...], line: str) -> list:
    """Send `line` to every peer at once, then read each one's JSON answer (its next stdout line)."""
    for peer in peers:
        peer.stdin.write(line + "\n")
        peer.stdin.flush()
    return [json.loads(peer.stdout.readline()) for peer in peers]
