"""Strict network records. Unknown fields are ignored, so old readers survive new writers."""

import re
import unicodedata
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator, model_validator

from protocol.errors import StaleMessage

from protocol.version import PROTOCOL_VERSION

NAME_MAX_CHARS = 40
ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"  # swarm ids: safe in URLs and MQTT topics
NODE_ID_PATTERN = r"^[0-9a-f]{32}$"
MAX_CLOCK_SKEW = 300.0  # seconds a signed action's `time` may differ from the receiver's clock
# Bounds on reported numbers, so any accepted report fits the ledger's columns and totals and reads back as JSON:
MAX_COUNT = 2**53 - 1  # sequence numbers, epochs, bytes: exact in every JSON reader, well inside 64-bit columns
MAX_SAMPLES = 10**12  # per report: totals of millions of reports still fit in 64 bits
MAX_SECONDS = 1e9  # compute seconds per report (~31 years)
MAX_LOSS = 1e30  # |loss|; sums and averages over many reports stay finite


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


_REFUSED_CHARACTERS = {"Cc": "control", "Cf": "invisible formatting", "Cs": "surrogate", "Zl": "line break",
                       "Zp": "paragraph break"}  # fmt: skip


def clean_display_name(value: str) -> str:
    """Display and team names: NFC-normalised and trimmed, 1 to NAME_MAX_CHARS characters, no control, invisible
    formatting or line-break characters. HTML characters are plain text: every page escapes them. The refusal
    (ValueError) never repeats the name, which may be huge."""
    value = unicodedata.normalize("NFC", value).strip()
    if not value:
        raise ValueError("must not be empty")
    if len(value) > NAME_MAX_CHARS:
        raise ValueError(f"must be at most {NAME_MAX_CHARS} characters, got {len(value)}")
    for position, ch in enumerate(value, start=1):
        kind = _REFUSED_CHARACTERS.get(unicodedata.category(ch))
        if kind is not None:
            raise ValueError(f"must not contain {kind} characters (U+{ord(ch):04X} at character {position})")
    return value


def check_name(value: str, what: str) -> str:
    """clean_display_name for command lines and settings: the refusal is one sentence naming `what`."""
    try:
        return clean_display_name(value)
    except ValueError as e:
        raise ValueError(f"{what} {e}") from None


class VolunteerRegistration(Message):
    """Signed by the node key it registers: proves the sender holds that key."""

    kind: Literal["registration"] = "registration"
    protocol_version: int = PROTOCOL_VERSION
    name: str
    team: Optional[str] = None
    public_key: str = Field(min_length=43, max_length=43)
    peer_id: Optional[str] = Field(default=None, max_length=128)
    # Proof that the sender holds peer_id's libp2p key (protocol/tokens.py peer_binding_statement): the key (DER,
    # base64) and its signature. A peer_id without a valid proof is refused.
    peer_public_key: Optional[str] = Field(default=None, max_length=1024)
    peer_signature: Optional[str] = Field(default=None, max_length=1024)
    time: float

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return clean_display_name(value)

    @field_validator("team")
    @classmethod
    def _check_team(cls, value: Optional[str]) -> Optional[str]:
        return None if value is None or not value.strip() else clean_display_name(value)


class NodeAttach(Message):
    """Attach this node's key to an existing account. Signed by the new node key (proof of possession); the
    account's attach key (or account key) travels beside it as `Authorization: Bearer …`, never in the body."""

    kind: Literal["attach"] = "attach"
    protocol_version: int = PROTOCOL_VERSION
    public_key: str = Field(min_length=43, max_length=43)
    peer_id: Optional[str] = Field(default=None, max_length=128)
    # Proof that the sender holds peer_id's libp2p key (protocol/tokens.py peer_binding_statement): the key (DER,
    # base64) and its signature. A peer_id without a valid proof is refused.
    peer_public_key: Optional[str] = Field(default=None, max_length=1024)
    peer_signature: Optional[str] = Field(default=None, max_length=1024)
    time: float


TeamActionKind = Literal["create", "join", "leave"]


class TeamAction(Message):
    """Create, join or leave a team. Signed by the node key of a registered volunteer; `time` bounds its life
    (see `check_fresh`), and the receiver refuses a second copy of the same signed body."""

    kind: Literal["team_action"] = "team_action"
    protocol_version: int = PROTOCOL_VERSION
    action: TeamActionKind
    team: Optional[str] = None  # required to create or join; ignored to leave
    public_key: str = Field(min_length=43, max_length=43)
    time: float

    @field_validator("team")
    @classmethod
    def _check_team(cls, value: Optional[str]) -> Optional[str]:
        return None if value is None else clean_display_name(value)

    @model_validator(mode="after")
    def _team_given(self) -> "TeamAction":
        if self.action in ("create", "join") and self.team is None:
            raise ValueError(f"a team name is needed to {self.action} a team")
        return self


def check_fresh(sent_at: float, now: float, max_skew: float = MAX_CLOCK_SKEW) -> None:
    """Raise StaleMessage unless `sent_at` is within `max_skew` seconds of `now` (either side)."""
    if abs(sent_at - now) > max_skew:
        direction = "old" if sent_at < now else "in the future"
        raise StaleMessage(
            f"message time is {describe_seconds(abs(sent_at - now))} {direction} (at most {max_skew:.0f} s allowed); "
            "check this computer's clock"
        )


def describe_seconds(seconds: float) -> str:
    """A time difference for an error message, short whatever its size: "42 s", "3.5 days", "1.2e+292 years"."""
    if seconds < 100_000:
        return f"{seconds:.0f} s"
    days = seconds / 86400
    return f"{days:.1f} days" if days < 1000 else f"{days / 365.25:.3g} years"


class Hyperparameters(Message):
    target_batch_size: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    matchmaking_time: float = Field(gt=0)
    averaging_timeout: float = Field(gt=0)
    # Parameters and optimizer statistics are averaged every this many epochs (gradients every epoch).
    average_state_every: int = Field(default=1, ge=1, le=10**6)
    # What travels between peers: gradient and state tensors as fp32 ("none"), fp16 or 8-bit.
    compression: Literal["none", "fp16", "int8"] = "none"
    # DiLoCo-like: each peer steps its own optimizer every batch; only the state is averaged, every
    # average_state_every epochs (hivemind's use_local_updates), for slow home uplinks.
    local_updates: bool = False
    # Learning rate rises linearly from 0 over this many epochs, then follows the task's schedule.
    warmup_epochs: int = Field(default=0, ge=0, le=10**6)


TaskOptionValue = Union[StrictBool, StrictInt, float, str]


class TaskAsset(Message):
    """A file the operator gave the swarm's task (text shards, a pretrained checkpoint), served by the coordinator;
    a node downloads the ones it needs, checks the digest and caches them."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,100}$")
    url: str = Field(max_length=2000)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class DifferentialPrivacy(Message):
    """The guarantee of a `data: local` swarm, stated before anyone joins: each node clips every sample's gradient
    to `clip_norm`, adds Gaussian noise of `noise_multiplier` × clip_norm, and stops when its ε (at `delta`)
    reaches `epsilon_budget`."""

    clip_norm: float = Field(gt=0)
    noise_multiplier: float = Field(ge=0)
    delta: float = Field(gt=0, lt=1)
    epsilon_budget: float = Field(gt=0)


class SwarmManifest(Message):
    """Everything a node needs to join a swarm."""

    swarm_id: str = Field(pattern=ID_PATTERN)
    title: str
    run_id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    task: str
    hyperparameters: Hyperparameters
    flops_per_sample: int = Field(ge=1)
    initial_peers: list[str]
    broker_url: str
    protocol_version: int = PROTOCOL_VERSION
    access: Literal["open", "token"] = "open"
    task_options: dict[str, TaskOptionValue] = Field(default_factory=dict)
    assets: list[TaskAsset] = Field(default_factory=list)
    # "shared": the task's own data; "local": each node trains on its owner's dataset, which never leaves it.
    data: Literal["shared", "local"] = "shared"
    privacy: Optional[DifferentialPrivacy] = None
    # The coordinator's Ed25519 public key: it signs receipts and private swarms' access tokens.
    coordinator_key: Optional[str] = Field(default=None, min_length=43, max_length=43)


NodeState = Literal["online", "paused", "offline"]


class NodeStatus(Message):
    """Presence: retained on the broker, replaced by a pre-signed 'offline' last will."""

    kind: Literal["status"] = "status"
    protocol_version: int = PROTOCOL_VERSION
    node_id: str = Field(pattern=NODE_ID_PATTERN)
    swarm_id: str = Field(pattern=ID_PATTERN)
    state: NodeState
    time: float
    epoch: Optional[int] = Field(default=None, ge=0, le=MAX_COUNT)
    samples_per_second: float = Field(default=0.0, ge=0, le=MAX_SAMPLES)
    device: str = Field(default="", max_length=64)
    reason: Optional[str] = Field(default=None, max_length=200)
    epsilon_spent: Optional[float] = Field(default=None, ge=0)  # differential privacy spent so far (data: local)


class ContributionReport(Message):
    """What a node says it did in one epoch. Credit is computed by the coordinator, never claimed here."""

    kind: Literal["report"] = "report"
    protocol_version: int = PROTOCOL_VERSION
    node_id: str = Field(pattern=NODE_ID_PATTERN)
    swarm_id: str = Field(pattern=ID_PATTERN)
    seq: int = Field(ge=1, le=MAX_COUNT)
    epoch: int = Field(ge=0, le=MAX_COUNT)
    samples: int = Field(ge=0, le=MAX_SAMPLES)
    compute_seconds: float = Field(ge=0, le=MAX_SECONDS)
    device: str = Field(max_length=64)
    loss: Optional[float] = Field(default=None, ge=-MAX_LOSS, le=MAX_LOSS)
    group_size: int = Field(default=1, ge=0, le=10**6)
    peer_id: Optional[str] = Field(default=None, max_length=128)
    bytes_sent: int = Field(default=0, ge=0, le=MAX_COUNT)  # averaging traffic of this epoch, this node's side
    bytes_received: int = Field(default=0, ge=0, le=MAX_COUNT)
    time: float


def is_valid_swarm_id(value: str) -> bool:
    return re.fullmatch(ID_PATTERN, value) is not None


class Receipt(Message):
    """The coordinator's word that a node's reports up to `last_seq` are in the ledger (granted or rejected),
    so the node may drop them from its outbox."""

    kind: Literal["receipt"] = "receipt"
    protocol_version: int = PROTOCOL_VERSION
    node_id: str = Field(pattern=NODE_ID_PATTERN)
    swarm_id: str = Field(pattern=ID_PATTERN)
    last_seq: int = Field(ge=0)
    time: float


class AuditRequest(Message):
    """The coordinator's spot check (MQTT, the node's audits topic): compute the loss and gradient digest of the
    batch `seed` names (hearth/audit.py), from the swarm's checkpoint of `state_epoch` (0: the task's seeded
    initial model), and answer with a signed AuditAnswer."""

    kind: Literal["audit_request"] = "audit_request"
    protocol_version: int = PROTOCOL_VERSION
    audit_id: int = Field(ge=1)
    node_id: str = Field(pattern=NODE_ID_PATTERN)
    swarm_id: str = Field(pattern=ID_PATTERN)
    epoch: int = Field(ge=0)  # the audited report's epoch
    state_epoch: int = Field(ge=0)
    state_sha256: Optional[str] = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    seed: int = Field(ge=0, lt=2**63)
    batch_size: int = Field(ge=1, le=4096)
    digest_size: int = Field(ge=1, le=256)
    time: float


class AuditAnswer(Message):
    """A node's answer to an AuditRequest, signed by its node key (POST /api/v1/audits/answers)."""

    kind: Literal["audit_answer"] = "audit_answer"
    protocol_version: int = PROTOCOL_VERSION
    audit_id: int = Field(ge=1)
    node_id: str = Field(pattern=NODE_ID_PATTERN)
    swarm_id: str = Field(pattern=ID_PATTERN)
    loss: float
    digest: list[float] = Field(max_length=256)
    compute_seconds: float = Field(ge=0)
    time: float
