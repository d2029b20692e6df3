"""The node's identities, created on first run: an Ed25519 key that signs reports (mode 0600) and a libp2p
key that keeps the hivemind PeerID across restarts. Plus the display name the volunteer registered."""

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from protocol.signing import SigningKey

ADJECTIVES = ["amber", "brave", "calm", "deft", "eager", "fuzzy", "gentle", "humble", "jolly", "keen", "lucid",
              "mellow", "nimble", "plucky", "quiet", "rustic", "sunny", "tidy", "vivid", "witty"]  # fmt: skip
ANIMALS = ["badger", "crane", "dingo", "egret", "ferret", "gecko", "heron", "ibis", "koala", "lemur", "marten",
           "newt", "otter", "puffin", "quokka", "robin", "stoat", "tapir", "vole", "wombat"]  # fmt: skip


def friendly_name(rng: Optional[random.Random] = None) -> str:
    rng = rng or random.SystemRandom()
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(ANIMALS)}-{rng.randint(10, 99)}"


@dataclass
class NodeIdentity:
    key: SigningKey
    p2p_identity_path: Path
    profile_path: Path

    @classmethod
    def load_or_create(cls, data_dir: Path) -> "NodeIdentity":
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return cls(
            key=SigningKey.load_or_create(data_dir / "node.key"),
            p2p_identity_path=data_dir / "p2p.key",  # hivemind creates it (mode 0400) on first start
            profile_path=data_dir / "profile.json",
        )

    @property
    def node_id(self) -> str:
        return self.key.node_id

    def registered_name(self) -> Optional[str]:
        if not self.profile_path.exists():
            return None
        return json.loads(self.profile_path.read_text()).get("name")

    def remember(self, name: str, team: Optional[str]) -> None:
        self.profile_path.write_text(json.dumps({"name": name, "team": team}))
