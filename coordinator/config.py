"""CoordinatorConfig: every setting of `hearth coordinator serve`, built once from the CLI flags and passed down."""

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlsplit

import platformdirs

from coordinator.tls import check_pair as check_tls_pair

DEFAULT_BROKER_PORT = 1883
DEFAULT_HTTP_PORT = 8000
OPERATOR_TOKEN_FILE = "operator-token"


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("hearth")) / "coordinator"


def default_token_file() -> Path:
    return default_data_dir() / OPERATOR_TOKEN_FILE


def parse_mqtt_url(url: str) -> tuple[str, int]:
    """`mqtt://host[:port]` → (host, port); raises ValueError with a readable message otherwise."""
    parts = urlsplit(url)
    if parts.scheme != "mqtt" or not parts.hostname:
        raise ValueError(f"broker URL must look like mqtt://host:port, got {url!r}")
    try:
        port = parts.port or DEFAULT_BROKER_PORT
    except ValueError as e:
        raise ValueError(f"broker URL {url!r} has an invalid port") from e
    return parts.hostname, port


def _check_port(name: str, port: int) -> None:
    if not 0 <= port <= 65535:
        raise ValueError(f"{name} must be between 0 and 65535 (0 picks a free port), got {port}")


@dataclass
class CoordinatorConfig:
    data_dir: Path = field(default_factory=default_data_dir)
    """Where the SQLite ledger and the operator token live; created if missing."""
    db_url: Optional[str] = None
    """SQLAlchemy async URL of the ledger; default: a SQLite file (WAL) in data_dir."""
    host: str = "127.0.0.1"
    """Interface the website and JSON API listen on."""
    port: int = DEFAULT_HTTP_PORT
    """HTTP port; 0 picks a free one."""
    public_host: Optional[str] = None
    """Host name put into advertised URLs (broker, DHT peers); default: host (or 127.0.0.1 for 0.0.0.0)."""
    broker_url: Optional[str] = None
    """An external MQTT broker, mqtt://host:port; when unset the coordinator embeds its own broker."""
    broker_port: int = DEFAULT_BROKER_PORT
    """Port of the embedded broker on 127.0.0.1; 0 picks a free one."""
    broker_host: str = "127.0.0.1"
    """Interface the embedded broker listens on."""
    ingest_workers: int = 0
    """Ingest worker processes sharing the MQTT 5 subscriptions ($share/hearth-ingest/…); 0: ingest in-process."""
    dht_host: str = "127.0.0.1"
    """Interface the monitor's bootstrap DHT peer listens on."""
    dht_port: int = 0
    """TCP port of the bootstrap DHT peer; 0 picks a free one."""
    monitor_interval: float = 2.0
    """Seconds between reads of each swarm's progress records in the DHT."""
    enable_monitor: bool = True
    """Run the DHT monitor (tests of the ledger alone may turn it off)."""
    ready_file: Optional[Path] = None
    """Written atomically as JSON once everything listens."""
    shutdown_timeout: float = 10.0
    """Seconds graceful shutdown may take before the remaining parts are cancelled."""
    default_task: str = "spirals"
    """Task of the swarm created at first start when no swarm exists."""
    export_interval_seconds: float = 3600.0
    """Seconds between regenerations of the public stats exports in data_dir/exports (the first: shortly after start)."""
    checkpoint_every: float = 300.0
    """Seconds between checkpoints of each swarm's state (taken only while a peer is online and the epoch advanced)."""
    keep_checkpoints: int = 5
    """How many checkpoints per swarm stay in data_dir/checkpoints/<swarm_id> (the newest)."""
    rate_limit: float = 20.0
    """Requests per second each client IP may make to the website and API (bursts of 5 s worth); 0 disables."""
    account_rate_limit: float = 0.1
    """Account actions (registration, attach/detach, team actions, renames) per second each client IP may make; 0 disables."""
    account_burst: int = 20
    """Account actions a client IP may make at once before account_rate_limit applies."""
    tls_cert: Optional[Path] = None
    """PEM certificate (chain) for TLS on the HTTP API and the embedded broker's listener (coordinator/tls.py)."""
    tls_key: Optional[Path] = None
    """The certificate's private key (PEM, unencrypted)."""
    broker_public_url: Optional[str] = None
    """With --broker: the URL nodes are given for it when it differs, e.g. mqtts://broker.example.org:8883 (its TLS
    listener) while the coordinator uses the plain one on 127.0.0.1."""
    peer_id_retention_hours: float = 24.0
    """A node's libp2p peer id is cleared this long after it went offline (coordinator/privacy.py)."""
    max_body_bytes: int = 64 * 1024
    """Largest HTTP request body accepted; larger ones get 413."""
    verify_work: bool = True
    """Grant reports only once their epoch's DHT evidence is in, for what it makes plausible, and audit nodes
    (coordinator/work_check.py, plausibility.py, audits.py); needs the DHT monitor (without it, reports are granted
    as claimed). Off (--no-verify-work): every well-signed report is granted as claimed."""
    broker_auth: bool = True
    """The embedded broker admits only logged-in clients (nodes get their password at registration) and enforces
    coordinator/broker_acl.py's topic rules. An external broker is configured by its operator (broker-files)."""
    token_lifetime: float = 600.0
    """Seconds a private swarm's DHT access token lasts (nodes renew at half-life; a ban takes effect within one)."""

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser()
        if self.ready_file is not None:
            self.ready_file = Path(self.ready_file).expanduser()
        _check_port("--port", self.port)
        _check_port("--broker-port", self.broker_port)
        _check_port("--dht-port", self.dht_port)
        if self.broker_url is not None:
            parse_mqtt_url(self.broker_url)
        if self.ingest_workers < 0:
            raise ValueError("--ingest-workers must be 0 or more")
        if self.ingest_workers and self.broker_url is None:
            raise ValueError("--ingest-workers needs --broker: an MQTT 5 broker with shared subscriptions (Mosquitto)")
        if self.db_url is not None and "://" not in self.db_url:
            raise ValueError(f"--db must be a SQLAlchemy URL such as sqlite+aiosqlite:///path.db, got {self.db_url!r}")
        if self.monitor_interval <= 0:
            raise ValueError("monitor interval must be positive")
        if self.export_interval_seconds <= 0:
            raise ValueError("export interval must be positive")
        if self.rate_limit < 0:
            raise ValueError("--rate-limit must be 0 (off) or positive")
        if self.account_rate_limit < 0:
            raise ValueError("--account-rate-limit must be 0 (off) or positive")
        if self.account_burst < 1:
            raise ValueError("--account-burst must be at least 1")
        if self.token_lifetime < 2:
            raise ValueError("--token-lifetime must be at least 2 seconds")
        self.tls_cert = Path(self.tls_cert).expanduser() if self.tls_cert is not None else None
        self.tls_key = Path(self.tls_key).expanduser() if self.tls_key is not None else None
        check_tls_pair(self.tls_cert, self.tls_key)
        if self.broker_public_url is not None:
            if self.broker_url is None:
                raise ValueError("--broker-public-url goes with --broker (the embedded broker's URL is known)")
            parts = urlsplit(self.broker_public_url)
            if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
                raise ValueError(f"--broker-public-url must look like mqtts://host:port, got {self.broker_public_url!r}")
        if self.peer_id_retention_hours <= 0:
            raise ValueError("--peer-id-retention-hours must be positive")
        if self.max_body_bytes < 1:
            raise ValueError("the request body limit must be positive")
        if self.checkpoint_every <= 0:
            raise ValueError("--checkpoint-every must be positive")
        if self.keep_checkpoints < 1:
            raise ValueError("--keep-checkpoints must be at least 1")
        if self.shutdown_timeout <= 0:
            raise ValueError("shutdown timeout must be positive")
        for name, value in (("--host", self.host), ("--dht-host", self.dht_host)):
            if not value.strip():
                raise ValueError(f"{name} must not be empty")
        try:
            ipaddress.ip_address(self.dht_host)
        except ValueError as e:
            raise ValueError(f"--dht-host must be an IP address, got {self.dht_host!r}") from e

    @property
    def advertised_host(self) -> str:
        if self.public_host:
            return self.public_host
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host

    @property
    def database_url(self) -> str:
        if self.db_url:
            return self.db_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'ledger.sqlite3'}"

    @property
    def exports_dir(self) -> Path:
        return self.data_dir / "exports"

    @property
    def assets_dir(self) -> Path:
        return self.data_dir / "assets"  # task assets, by sha256 (coordinator/assets.py)

    @property
    def checkpoints_dir(self) -> Path:
        return self.data_dir / "checkpoints"

    @property
    def token_file(self) -> Path:
        return self.data_dir / OPERATOR_TOKEN_FILE

    def ensure_data_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            os.chmod(self.data_dir, 0o700)
        except OSError:
            pass


def read_or_create_private_file(path: Path, make: Callable[[], str]) -> str:
    """A secret kept in one file: read it, or write `make()` there once, readable by its owner only."""
    if path.exists():
        return path.read_text().strip()
    value = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value
