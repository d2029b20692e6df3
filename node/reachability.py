"""Is this PC reachable from outside? The node asks its coordinator to dial it back (POST /api/v1/reachability)
at the addresses its listening DHT peer announces, as Petals' reachability check does. A reachable node keeps
listening; an unreachable one runs in client mode with relays: swarm.py calls ReachabilityCheck right after
its DHT peer starts listening, and restarts the peer in client mode when the answer is no."""

import ipaddress
import logging
import time
from dataclasses import dataclass
from typing import Iterable, Literal, Optional

import httpx

logger = logging.getLogger(__name__)

CHECK_TIMEOUT = 20.0  # the coordinator may queue the check, start a probe (~0.2 s) and dial for up to 5 s
MAX_ADDRS = 4  # the coordinator dials at most this many
# When the coordinator cannot answer (it refuses a second check of the same peer within 10 s, as when a running
# node is handed another swarm), this process's latest answer for the peer stands if it is at most this old.
REUSE_SECONDS = 600.0
_latest: dict[tuple[str, str], tuple["Answer", float]] = {}  # (coordinator URL, peer id) → answer, monotonic time


@dataclass(frozen=True)
class Answer:
    """The coordinator's answer: `addr` is the announced address that answered."""

    reachable: bool
    addr: Optional[str]
    detail: str


@dataclass(frozen=True)
class Reachability:
    """How this node takes part: `public` (listens for peers) or `client` (dials out only, through relays)."""

    mode: Literal["public", "client"]
    detail: str

    def __str__(self) -> str:
        return f"public {self.detail}" if self.mode == "public" else f"client mode ({self.detail})"


class ReachabilityCheck:
    """SwarmSettings.check_reachability for the node's `reachability` setting; `outcome` (shown by status and
    the run summary) is the latest verdict. auto asks the coordinator; public listens unasked; client never
    listens (the swarm starts in client mode and never calls this)."""

    def __init__(self, mode: Literal["auto", "public", "client"], coordinator_url: str):
        self.mode, self.coordinator_url = mode, coordinator_url
        self.outcome: Optional[Reachability] = None
        if mode == "client":
            self.outcome = Reachability("client", "chosen in the settings")

    def __call__(self, peer_id: str, maddrs: list[str]) -> bool:
        """True: keep listening; False: client mode."""
        addrs = dialable_addresses(maddrs)
        self.outcome = self._decide(peer_id, addrs)
        if self.outcome.mode == "public":
            logger.info("Reachability: %s", self.outcome)
            return True
        logger.warning("Peers cannot dial this PC (%s): running in client mode through relays. To accept peers, "
                       "forward a TCP port to it and run with --host 0.0.0.0 --port PORT --announce-host PUBLIC_IP",
                       self.outcome.detail)  # fmt: skip
        return False

    def _decide(self, peer_id: str, addrs: list[str]) -> Reachability:
        listening = ", ".join(host_port(addr) for addr in addrs)
        if self.mode != "auto":
            return Reachability("public", listening or "(no TCP address)")
        if not addrs:
            return Reachability("client", "not reachable: no TCP address to announce")
        answer, key = check_reachability(self.coordinator_url, peer_id, addrs), (self.coordinator_url, peer_id)
        if answer is not None:
            _latest[key] = (answer, time.monotonic())
        elif key in _latest and time.monotonic() - _latest[key][1] <= REUSE_SECONDS:
            answer, when = _latest[key]
            logger.info("Reachability: taking the coordinator's answer of %.0f s ago", time.monotonic() - when)
            answer = Answer(answer.reachable, None, answer.detail)  # its address may have been another port's
        else:
            return Reachability("public", f"{listening} (not checked)")
        if answer.reachable:
            return Reachability("public", host_port(answer.addr or addrs[0]))
        return Reachability("client", f"not reachable: {answer.detail}")

    def __str__(self) -> str:
        return str(self.outcome) if self.outcome else "not known yet"


def dialable_addresses(maddrs: Iterable[str]) -> list[str]:
    """The TCP multiaddrs worth asking about, public ones first, at most MAX_ADDRS."""
    candidates = []
    for maddr in map(str, maddrs):
        parts = maddr.split("/")
        if len(parts) >= 5 and parts[1] in ("ip4", "ip6", "dns", "dns4", "dns6") and parts[3] == "tcp":
            candidates.append((_rank(parts[1], parts[2]), maddr))
    return [maddr for _, maddr in sorted(candidates, key=lambda item: item[0])][:MAX_ADDRS]


def _rank(kind: str, host: str) -> int:
    if kind.startswith("dns"):
        return 0
    ip = ipaddress.ip_address(host)
    return 0 if ip.is_global else 2 if ip.is_loopback else 1


def host_port(maddr: str) -> str:
    """/ip4/1.2.3.4/tcp/31337/p2p/… → 1.2.3.4:31337."""
    parts = maddr.split("/")
    return f"{parts[2]}:{parts[4]}" if len(parts) >= 5 else maddr


def check_reachability(coordinator_url: str, peer_id: str, addrs: list[str],
                       timeout: float = CHECK_TIMEOUT) -> Optional[Answer]:  # fmt: skip
    """Ask the coordinator to dial `peer_id` at `addrs`. None when it could not answer (an older coordinator
    without the check, a refusal, a network error): the caller keeps its configured mode; the reason is logged."""
    url = coordinator_url.rstrip("/") + "/api/v1/reachability"
    try:
        response = httpx.post(url, json={"peer_id": peer_id, "addrs": addrs}, timeout=timeout)
    except httpx.HTTPError as e:
        logger.warning("Reachability not checked: the coordinator did not answer (%s)", type(e).__name__)
        return None
    if response.status_code != 200:
        logger.warning("Reachability not checked: the coordinator answered %s (%s)", response.status_code,
                       _error_message(response))  # fmt: skip
        return None
    try:
        body = response.json()
        return Answer(reachable=bool(body["reachable"]), addr=body.get("addr"), detail=str(body.get("detail", "")))
    except (ValueError, KeyError, TypeError):
        logger.warning("Reachability not checked: the coordinator's answer is not understood")
        return None


def _error_message(response: httpx.Response) -> str:
    try:
        return response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return "no check offered" if response.status_code in (404, 405) else f"HTTP {response.status_code}"
