"""Reachability checks (POST /api/v1/reachability): can this coordinator dial a node back at the addresses
the node announces? A node that can be dialed listens for peers; one that cannot runs in client mode.

How a check dials. Every check starts a FRESH libp2p host (hivemind's `P2P.create()`: its own p2pd with no
listen address, no relay, no AutoNAT, no port mapping), dials the node once with a timeout and shuts the host
down. The libp2p security handshake proves the PeerID, so a connection is the answer; no RPC follows. A fresh
host per check, not one long-lived probe: measured here, a probe that had dialed a node once dials it again
through its peerstore's cached addresses even when the next check names only a dead address (a persistent
probe gives false "reachable" answers), and a cancelled dial could complete later. A fresh host costs
~0.2 s of start-up (p2pd), the dial ~15 ms on loopback, shutdown ~10 ms; checks run at most
MAX_CONCURRENT at a time, and the coordinator's own DHT peer (monitor.py), which every node bootstraps from
and so is already connected to, is never used for a check.

Address policy (the probe must not become an open port scanner):
- Only what the node announces, as `/ip4|ip6|dns|dns4|dns6/HOST/tcp/PORT[/p2p/PEER_ID]`, at most MAX_ADDRS of
  them, each at most MAX_ADDR_LENGTH characters; anything else is refused (400) before any dial.
- Public addresses are always dialable. Loopback and private (RFC 1918, ULA, CGNAT) addresses only when the
  coordinator's own DHT peer announces an address of that scope (a test or LAN deployment: nodes there are
  told to dial us at such an address) AND the request itself comes from that scope or a more inner one: a
  loopback address only for a request from this machine, a private one only for a request from a private
  or loopback address (a node on the internet has no business naming addresses inside our network).
  Link-local, multicast, unspecified and reserved addresses never.
  A DNS name is resolved here and each IP it resolves to must pass the same rule; the dial goes to that IP.
  Addresses outside the policy are not an error: the answer is "not reachable", with the reason.
- Rate limits: one check per PeerID per PEER_INTERVAL seconds, one dial per target ip:port per
  TARGET_INTERVAL seconds, CLIENT_LIMIT checks per requester IP per minute (429 beyond); at most MAX_WAITING
  checks wait for a slot (503 beyond).
Every refusal is counted in `counters` (shown by /api/v1/stats) and logged.
"""

import asyncio
import ipaddress
import logging
import re
import socket
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from typing import Iterable, Optional, Union

from pydantic import BaseModel, ValidationError

logger = logging.getLogger(__name__)

DIAL_TIMEOUT = 5.0
RESOLVE_TIMEOUT = 2.0
MAX_ADDRS = 4
MAX_ADDR_LENGTH = 200
MAX_BODY_BYTES = 4096
PEER_INTERVAL = 10.0
TARGET_INTERVAL = 10.0
CLIENT_LIMIT = 10  # checks per requester IP per CLIENT_WINDOW
CLIENT_WINDOW = 60.0
MAX_CONCURRENT = 2
MAX_WAITING = 16

PROBE_OPTIONS = dict(dht_mode="client", use_relay=False, auto_nat=False, nat_port_map=False, no_listen=True,
                     conn_manager=False)  # fmt: skip
_ADDRESS_SHAPE = "/ip4|ip6|dns|dns4|dns6/HOST/tcp/PORT, optionally ending in /p2p/PEER_ID"
_DNS_NAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z][A-Za-z0-9-]{0,62}$")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
IP = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


class ReachabilityRequest(BaseModel):
    peer_id: str
    addrs: list[str]


class ReachabilityAnswer(BaseModel):
    reachable: bool
    addr: Optional[str]
    """The announced address that answered (None when none did)."""
    detail: str


class CheckRefused(Exception):
    """A request this coordinator will not act on; the API answers `status` with its error shape."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Announced:
    text: str  # as the node sent it
    kind: str  # ip4, ip6, dns, dns4 or dns6
    host: str
    port: int


def parse_address(text: object, peer_id: str) -> Announced:
    """One announced TCP multiaddr; CheckRefused(400) says what is wrong with it."""
    if not isinstance(text, str) or len(text) > MAX_ADDR_LENGTH:
        raise CheckRefused(400, "bad_address", f"an address must be text of at most {MAX_ADDR_LENGTH} characters")
    parts = text.split("/")
    if len(parts) < 5 or parts[0] != "":
        raise CheckRefused(400, "bad_address", f"{text!r} is not a multiaddr like {_ADDRESS_SHAPE}")
    kind, host, transport, port = parts[1:5]
    if kind not in ("ip4", "ip6", "dns", "dns4", "dns6") or transport != "tcp":
        raise CheckRefused(400, "unsupported_address", f"{text!r}: only {_ADDRESS_SHAPE} addresses are dialed")
    if len(parts) > 5 and (len(parts) != 7 or parts[5] != "p2p"):
        raise CheckRefused(400, "unsupported_address", f"{text!r}: only {_ADDRESS_SHAPE} addresses are dialed")
    if len(parts) == 7 and parts[6] != peer_id:
        raise CheckRefused(400, "bad_address", f"{text!r} names another peer than {peer_id}")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise CheckRefused(400, "bad_address", f"{text!r}: the port must be between 1 and 65535")
    if kind.startswith("dns"):
        if not _DNS_NAME.match(host):
            raise CheckRefused(400, "bad_address", f"{text!r}: {host!r} is not a host name")
    else:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is None or ip.version != int(kind[-1]):
            raise CheckRefused(400, "bad_address", f"{text!r}: {host!r} is not an IPv{kind[-1]} address")
        host = str(ip)
    return Announced(text, kind, host, int(port))


def scope_of(ip: IP) -> Optional[str]:
    """"public", "private" or "loopback"; None for addresses that are never dialed."""
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified or ip.is_multicast or ip.is_link_local:
        return None
    if ip.is_loopback:
        return "loopback"
    if ip.version == 4 and ip in _THIS_NETWORK:
        return None
    if ip.is_global:
        return "public"
    if ip.version == 4 and ip in _CGNAT:
        return "private"
    if ip.is_reserved:
        return None
    return "private" if ip.is_private else None


def own_scopes(maddrs: Iterable[str]) -> frozenset[str]:
    """The scopes a coordinator whose DHT peer announces `maddrs` dials: public, plus those of its addresses."""
    scopes = {"public"}
    for maddr in maddrs:
        parts = str(maddr).split("/")
        if len(parts) > 2 and parts[1] in ("ip4", "ip6"):
            try:
                scopes.add(scope_of(ipaddress.ip_address(parts[2])))
            except ValueError:
                continue
    scopes.discard(None)
    return frozenset(scopes)


def _scopes_open_to(client: str) -> frozenset[str]:
    """The scopes a requester at `client` may name: its own and the outer ones (an unknown requester: public)."""
    try:
        scope = scope_of(ipaddress.ip_address(client))
    except ValueError:
        scope = None
    inner = {"loopback": ("public", "private", "loopback"), "private": ("public", "private")}
    return frozenset(inner.get(scope, ("public",)))


class RateLimiter:
    """At most `limit` hits per key within `window` seconds."""

    def __init__(self, limit: int, window: float):
        self.limit, self.window = limit, window
        self._hits: dict[object, deque] = defaultdict(deque)

    def retry_after(self, key: object, now: float) -> float:
        """0 when `key` may be hit now, else the seconds until it may."""
        hits = self._hits.get(key)
        if not hits:
            return 0.0
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        return 0.0 if len(hits) < self.limit else hits[0] + self.window - now

    def hit(self, key: object, now: float) -> None:
        self._hits[key].append(now)
        if len(self._hits) > 10_000:
            self.forget_expired(now)

    def forget_expired(self, now: float) -> int:
        """Forget keys (requester and target addresses) whose hits all expired; how many."""
        stale = [k for k, hits in self._hits.items() if not hits or hits[-1] <= now - self.window]
        for key in stale:
            del self._hits[key]
        return len(stale)


class ReachabilityProber:
    def __init__(self, allowed_scopes: Iterable[str] = ("public",), dial_timeout: float = DIAL_TIMEOUT,
                 peer_interval: float = PEER_INTERVAL, target_interval: float = TARGET_INTERVAL,
                 client_limit: int = CLIENT_LIMIT):  # fmt: skip
        self.allowed_scopes = frozenset(allowed_scopes)
        self.dial_timeout = dial_timeout
        self.counters: Counter = Counter()
        self._peers = RateLimiter(1, peer_interval)
        self._targets = RateLimiter(1, target_interval)
        self._clients = RateLimiter(client_limit, CLIENT_WINDOW)
        self._slots = asyncio.Semaphore(MAX_CONCURRENT)
        self._waiting = 0
        self._probes: set = set()  # live probe hosts, ended by close()

    async def handle(self, body: bytes, client: str) -> ReachabilityAnswer:
        """Answer one API request (raw JSON body, requester IP); CheckRefused for anything not checked."""
        try:
            if len(body) > MAX_BODY_BYTES:
                raise CheckRefused(413, "too_large", f"the request body must be at most {MAX_BODY_BYTES} bytes")
            try:
                request = ReachabilityRequest.model_validate_json(body)
            except ValidationError as e:
                first = e.errors()[0]
                where = ".".join(str(part) for part in first.get("loc", ()))
                message = f"{where}: {first['msg']}" if where else first["msg"]
                raise CheckRefused(422, "invalid_request", message) from None
            return await self.check(request.peer_id, request.addrs, client)
        except CheckRefused as e:
            self.counters[f"refused_{e.code}"] += 1
            logger.info("Reachability check for %s refused (%s): %s", client, e.code, e.message)
            raise

    async def check(self, peer_id: str, addrs: list, client: str) -> ReachabilityAnswer:
        from hivemind.p2p import PeerID

        try:
            peer = PeerID.from_base58(peer_id)
        except Exception:
            raise CheckRefused(400, "bad_peer_id", "peer_id must be a base58 libp2p peer ID") from None
        if not 1 <= len(addrs) <= MAX_ADDRS:
            raise CheckRefused(400, "bad_addresses", f"send between 1 and {MAX_ADDRS} addresses, got {len(addrs)}")
        announced = [parse_address(text, peer_id) for text in addrs]
        self._rate_limit([("peer", peer_id), ("client", client)])
        targets, skipped = await self._targets_of(announced, self.allowed_scopes & _scopes_open_to(client))
        if targets:
            self._rate_limit([("target", ip, port) for _, ip, port in targets])
        if not targets:
            self.counters["not_dialable"] += 1
            detail = "no address this coordinator dials: " + "; ".join(skipped)
            return ReachabilityAnswer(reachable=False, addr=None, detail=detail)
        answer = await self._dial_in_slot(peer, targets)
        self.counters["reachable" if answer.reachable else "unreachable"] += 1
        logger.info("Reachability of %s: %s (%s)", peer_id, answer.reachable, answer.detail)
        return answer

    def _rate_limit(self, keys: list) -> None:
        now = time.monotonic()
        wait, key = max(((self._limiter(key).retry_after(key, now), key) for key in keys), key=lambda item: item[0])
        if wait > 0:
            what = {"peer": "this peer", "client": "your address", "target": "that address"}[key[0]]
            raise CheckRefused(429, "rate_limited", f"too many checks of {what}; try again in {wait:.0f} s")
        for key in keys:
            self._limiter(key).hit(key, now)

    def _limiter(self, key: tuple) -> RateLimiter:
        return {"peer": self._peers, "client": self._clients, "target": self._targets}[key[0]]

    async def _targets_of(self, announced: list[Announced], allowed: frozenset) -> tuple[list, list[str]]:
        """(announced address, IP to dial, port) for every address in an allowed scope; reasons for the others."""
        targets, skipped = [], []
        for address in announced:
            ips, reason = await self._resolve(address)
            for ip in ips:
                scope = scope_of(ip)
                if scope in allowed:
                    targets.append((address, str(ip), address.port))
                else:
                    reason = f"{ip} is {'not dialable' if scope is None else f'a {scope} address'}"
            if not any(target[0] is address for target in targets):
                skipped.append(f"{address.text}: {reason}")
        return targets[:MAX_ADDRS], skipped

    async def _resolve(self, address: Announced) -> tuple[list[IP], str]:
        if not address.kind.startswith("dns"):
            return [ipaddress.ip_address(address.host)], ""
        family = {"dns4": socket.AF_INET, "dns6": socket.AF_INET6}.get(address.kind, socket.AF_UNSPEC)
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(address.host, address.port, family=family, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT
            )
        except (OSError, asyncio.TimeoutError):
            return [], f"{address.host} does not resolve"
        ips = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
        return ips[:2], f"{address.host} resolves to no address"

    async def _dial_in_slot(self, peer, targets) -> ReachabilityAnswer:
        if self._waiting >= MAX_WAITING:
            raise CheckRefused(503, "busy", "too many reachability checks in progress; try again shortly")
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            return await self._dial(peer, targets)
        finally:
            self._slots.release()

    async def _dial(self, peer, targets) -> ReachabilityAnswer:
        from hivemind.p2p import P2P, P2PDaemonError
        from hivemind.utils.multiaddr import Multiaddr

        try:
            probe = await P2P.create(**PROBE_OPTIONS)
        except P2PDaemonError as e:
            logger.warning("Cannot start a reachability probe: %s", e)
            raise CheckRefused(503, "probe_failed", "this coordinator cannot run a reachability check now") from None
        self._probes.add(probe)
        dialed = {f"/{'ip6' if ':' in ip else 'ip4'}/{ip}/tcp/{port}": address for address, ip, port in targets}
        try:
            try:
                connect = probe._client.connect(peer, [Multiaddr(maddr) for maddr in dialed])
                await asyncio.wait_for(connect, self.dial_timeout)
            except asyncio.TimeoutError:
                detail = f"no answer within {self.dial_timeout:g} s from {', '.join(dialed)}"
                return ReachabilityAnswer(reachable=False, addr=None, detail=detail)
            except P2PDaemonError as e:
                return ReachabilityAnswer(reachable=False, addr=None, detail=_dial_failure(str(e)))
            connected = [str(addr) for info in await probe.list_peers() if info.peer_id == peer for addr in info.addrs]
            address = next((dialed[maddr] for maddr in connected if maddr in dialed), targets[0][0])
            host = f"[{address.host}]" if ":" in address.host else address.host
            return ReachabilityAnswer(reachable=True, addr=address.text, detail=f"dialed {host}:{address.port}")
        finally:
            self._probes.discard(probe)
            await probe.shutdown()

    def forget_idle(self, now: Optional[float] = None) -> int:
        """Forget the requester and target addresses that no longer limit a check (coordinator/privacy.py)."""
        now = time.monotonic() if now is None else now
        return sum(limiter.forget_expired(now) for limiter in (self._peers, self._targets, self._clients))

    async def close(self) -> None:
        """End the probe hosts of checks still running (at coordinator shutdown)."""
        for probe in list(self._probes):
            await probe.shutdown()
        self._probes.clear()


def _dial_failure(message: str) -> str:
    """libp2p's 'all dials failed' message, one line per address, as one short sentence."""
    lines = [line.strip(" *") for line in message.splitlines()[1:] if line.strip()]
    reasons = "; ".join(lines) if lines else message.split("msg=", 1)[-1]
    reasons = reasons.replace("failed to negotiate security protocol: ", "")
    return ("could not dial: " + reasons)[:400]
