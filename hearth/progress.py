"""Reading hivemind's per-peer training progress records, shared by the node and the coordinator's monitor.

hivemind.Optimizer's ProgressTracker stores `<run_id>_progress` in the DHT, one subkey per peer, each
signed with that peer's RSA key. Every DHT node that reads them must register the same validators first,
or its `get()` never resolves.
"""

from dataclasses import dataclass
from typing import Any

from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.schema import SchemaValidator
from hivemind.optim.progress_tracker import LocalTrainingProgress, TrainingProgressSchema
from hivemind.p2p import PeerID
from hivemind.utils.timed_storage import get_dht_time


def progress_key(run_id: str) -> str:
    return f"{run_id}_progress"


def progress_validators(run_id: str) -> list:
    return [SchemaValidator(TrainingProgressSchema, prefix=run_id), RSASignatureValidator()]


@dataclass(frozen=True)
class PeerProgress:
    peer_id: str
    epoch: int
    samples_accumulated: int
    samples_per_second: float
    time: float
    client_mode: bool


@dataclass(frozen=True)
class SwarmProgress:
    epoch: int
    peers: list[PeerProgress]

    @property
    def samples_per_second(self) -> float:
        return sum(peer.samples_per_second for peer in self.peers)


def parse_progress(record: Any) -> SwarmProgress:
    """Turn the result of `dht.get(progress_key(run_id), latest=True)` into live peers' progress."""
    peers = []
    entries = record.value if record is not None and isinstance(record.value, dict) else {}
    now = get_dht_time()
    for entry in entries.values():
        if entry.value is None or entry.expiration_time < now:
            continue
        progress = LocalTrainingProgress.parse_obj(entry.value)
        peers.append(
            PeerProgress(
                peer_id=PeerID(progress.peer_id).to_base58(),
                epoch=progress.epoch,
                samples_accumulated=progress.samples_accumulated,
                samples_per_second=progress.samples_per_second,
                time=progress.time,
                client_mode=progress.client_mode,
            )
        )
    peers.sort(key=lambda peer: peer.peer_id)
    return SwarmProgress(epoch=max((peer.epoch for peer in peers), default=0), peers=peers)
