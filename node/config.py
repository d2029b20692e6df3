"""NodeConfig: the one configuration object of the node daemon, built once and passed down.
node/settings.py builds it from defaults < config.toml < HEARTH_* environment < command-line flags."""

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Optional

from platformdirs import user_data_dir

DeviceChoice = Literal["auto", "cpu", "cuda"]
ReachabilityChoice = Literal["auto", "public", "client"]
AmpChoice = Literal["auto", "on", "off"]


def default_data_dir() -> Path:
    return Path(os.environ.get("HEARTH_NODE_DIR") or user_data_dir("hearth", appauthor=False)) / "node"


def default_threads() -> int:
    """At most half the CPU cores, so the PC stays usable."""
    return max(1, (os.cpu_count() or 2) // 2)


BATTERY_HYSTERESIS = 10
"""Percentage points above `battery_pause_below` at which work resumes when `battery_resume_above` is unset."""


@dataclass
class PolicyConfig:
    """When this PC computes. Every rule is optional (None/False: off) and they combine: all must allow."""

    idle_minutes: Optional[float] = None
    """Pause while the keyboard and mouse were used less than this many minutes ago."""
    max_other_cpu_percent: Optional[float] = None
    """Pause while other programs use more than this share (%) of all CPU cores."""
    pause_on_gpu_busy: bool = False
    """Stop using the GPU while another program runs compute work on it."""
    battery_pause_below: Optional[int] = None
    """On battery, pause below this charge (%); plugging in resumes."""
    battery_resume_above: Optional[int] = None
    """After a battery pause, resume at this charge (%); default: battery_pause_below + 10."""
    schedule: Optional[str] = None
    """Weekly windows when computing is allowed, e.g. "mon-fri 22:00-07:00, sat-sun *"."""

    def __post_init__(self) -> None:
        from node.schedule import Schedule

        if self.idle_minutes is not None and self.idle_minutes <= 0:
            raise ValueError(f"idle_minutes must be positive, got {self.idle_minutes}")
        if self.max_other_cpu_percent is not None and not 0 < self.max_other_cpu_percent <= 100:
            raise ValueError(f"max_other_cpu_percent must be between 0 and 100, got {self.max_other_cpu_percent}")
        if self.battery_pause_below is not None and not 1 <= self.battery_pause_below <= 99:
            raise ValueError(f"battery_pause_below must be between 1 and 99, got {self.battery_pause_below}")
        if self.battery_resume_above is not None:
            if self.battery_pause_below is None:
                raise ValueError("battery_resume_above needs battery_pause_below")
            if not self.battery_pause_below < self.battery_resume_above <= 100:
                raise ValueError(f"battery_resume_above must be above battery_pause_below "
                                 f"({self.battery_pause_below}) and at most 100, got {self.battery_resume_above}")
        elif self.battery_pause_below is not None:
            self.battery_resume_above = min(100, self.battery_pause_below + BATTERY_HYSTERESIS)
        if self.schedule is not None:
            self.schedule = Schedule.parse(self.schedule).text  # raises ValueError with the reason


@dataclass
class NodeConfig:
    coordinator_url: str
    """Base URL of the coordinator, e.g. http://127.0.0.1:8000."""
    name: Optional[str] = None
    """Display name on the leaderboard; a friendly random name when unset."""
    team: Optional[str] = None
    """Team to credit your work to."""
    swarm_id: Optional[str] = None
    """Swarm to join; the coordinator's first swarm when unset."""
    data_dir: Path = field(default_factory=default_data_dir)
    """Keys, libp2p identity, report outbox, checkpoints."""
    threads: int = field(default_factory=default_threads)
    """CPU threads for training; default: half the cores, so the PC stays usable."""
    device: DeviceChoice = "auto"
    """auto: a GPU when CUDA sees one with enough free memory, else the CPU; cpu; or cuda (fail when there is none)."""
    gpus: Optional[list[int]] = None
    """CUDA device indices the node may use, e.g. [0, 1] (None: all that CUDA sees). The node trains on ONE
    device: the first of these with enough free memory. Data parallel training over several GPUs within one
    node is not supported (run one node per GPU instead)."""
    gpu_memory_fraction: float = 0.8
    """Share of the GPU's memory this node may allocate (torch.cuda.set_per_process_memory_fraction)."""
    max_ram_gb: Optional[float] = None
    """RAM (GiB) the node may use, checked before the model is built (None: half of this PC's RAM)."""
    batch_size: Optional[int] = None
    """Samples per training step on this PC (None: the swarm's batch size, halved until it fits in memory)."""
    amp: AmpChoice = "auto"
    """bf16 autocast: auto (on CUDA GPUs that support bf16, off on the CPU), on, or off."""
    host: str = "127.0.0.1"
    """Address the hivemind peer listens on (0.0.0.0 to accept peers from other machines)."""
    port: int = 0
    """TCP port of the hivemind peer; 0 picks a free one."""
    announce_host: Optional[str] = None
    """Public address to announce to peers when it differs from `host`."""
    reachability: ReachabilityChoice = "auto"
    """auto: at start, ask the coordinator to dial this PC back; listen for peers if it can, else client mode.
    public: always listen (with host 0.0.0.0, a fixed port and announce_host when behind a forwarded port).
    client: always client mode (only dial out, through relays), e.g. behind NAT."""
    client_mode: bool = False
    """Older spelling of reachability = client (--client-mode); true sets it."""
    min_peers: int = 1
    """Before training past the first batch, wait (up to connect_timeout) until this many peers train.
    Small swarms use it so that nobody finishes an epoch alone while the others are still starting."""
    max_epochs: Optional[int] = None
    """Stop after the swarm reaches this epoch (None: run until stopped)."""
    duration: Optional[float] = None
    """Stop after this many seconds (None: run until stopped)."""
    view: Literal["live", "log", "quiet"] = "live"
    """Terminal output: a live table, a log line per epoch, or nothing."""
    connect_timeout: float = 120.0
    """How long to keep retrying an unreachable coordinator before giving up."""
    ca_cert: Optional[Path] = None
    """A private CA's certificate (PEM) to trust, besides the system's, for an https:// coordinator and an mqtts://
    broker; env HEARTH_CA_CERT."""
    local_data: Optional[Path] = None
    """Your own dataset, for a `data: local` swarm (in the format its task reads: README, local-data swarms).
    It never leaves this PC; only averaged model updates do (with differential privacy when the swarm requires it)."""
    metrics_port: Optional[int] = None
    """Serve Prometheus metrics at http://127.0.0.1:PORT/metrics (this PC only); 0 picks a free port, none: off."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """When to compute: idle time, other load, busy GPU, battery, schedule."""

    def __post_init__(self) -> None:
        if isinstance(self.policy, dict):
            self.policy = PolicyConfig(**self.policy)
        self.data_dir = Path(self.data_dir).expanduser()
        if self.local_data is not None:
            self.local_data = Path(self.local_data).expanduser().resolve()
            if not self.local_data.is_file():
                raise ValueError(f"local_data {self.local_data}: no such file")
        if self.ca_cert is not None:
            self.ca_cert = Path(self.ca_cert).expanduser()
            if not self.ca_cert.is_file():
                raise ValueError(f"ca_cert {self.ca_cert}: no such file")
        if not self.coordinator_url.startswith(("http://", "https://")):
            raise ValueError(f"coordinator URL must start with http:// or https://, got {self.coordinator_url!r}")
        self.coordinator_url = self.coordinator_url.rstrip("/")
        from protocol.messages import check_name

        if self.name is not None:  # refused here, before any network, with the coordinator's own rule
            self.name = check_name(self.name, "--name")
        if self.team is not None and self.team.strip():
            self.team = check_name(self.team, "--team")
        if self.threads < 1:
            raise ValueError("threads must be at least 1")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.gpus is not None:
            if not self.gpus or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in self.gpus):
                raise ValueError(f"gpus must list CUDA device indices such as 0,1, got {self.gpus!r}")
            if len(set(self.gpus)) != len(self.gpus):
                raise ValueError(f"gpus lists a device twice: {self.gpus!r}")
            self.gpus = list(self.gpus)
        if not 0 < self.gpu_memory_fraction <= 1:
            raise ValueError(f"gpu_memory_fraction must be above 0 and at most 1, got {self.gpu_memory_fraction}")
        if self.max_ram_gb is not None and not self.max_ram_gb > 0:
            raise ValueError(f"max_ram_gb must be positive, got {self.max_ram_gb}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.amp not in ("auto", "on", "off"):
            raise ValueError(f"amp must be auto, on or off, got {self.amp!r}")
        if self.reachability not in ("auto", "public", "client"):
            raise ValueError(f"reachability must be auto, public or client, got {self.reachability!r}")
        if self.client_mode:
            if self.reachability == "public":
                raise ValueError("client_mode contradicts reachability = public; set one of them")
            self.reachability = "client"
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {self.port}")
        if self.min_peers < 1:
            raise ValueError("min_peers must be at least 1")
        if self.max_epochs is not None and self.max_epochs < 1:
            raise ValueError("max_epochs must be at least 1")
        if self.duration is not None and self.duration <= 0:
            raise ValueError("duration must be positive")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be between 0 and 65535, got {self.metrics_port}")

    def to_json_dict(self) -> dict:
        values = asdict(self)
        values["data_dir"] = str(self.data_dir)
        values["local_data"] = str(self.local_data) if self.local_data is not None else None
        values["ca_cert"] = str(self.ca_cert) if self.ca_cert is not None else None
        return values

    @classmethod
    def from_json_dict(cls, values: dict) -> "NodeConfig":
        return cls(**values)
