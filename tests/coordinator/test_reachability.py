"""POST /api/v1/reachability through the in-process API against real hivemind peers on 127.0.0.1: a listening
DHT peer is reachable; a closed port, a silent port or another peer's port is not; malformed, oversized and
non-TCP requests are refused in the API's error shape and counted; checks are rate limited."""

import asyncio
import ipaddress
import json
import logging
import socket
import time
from contextlib import asynccontextmanager, closing

import pytest
from hivemind.dht import DHT

from coordinator.reachability import CheckRefused, ReachabilityProber, own_scopes, parse_address, scope_of
from tests.coordinator.helpers import api_client, make_ledger
from tests.coordinator.test_api import assert_error

URL = "/api/v1/reachability"
DIAL_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def peer():
    """A real hivemind DHT peer listening on loopback: (peer_id, [its multiaddrs])."""
    dht = DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    try:
        yield dht.peer_id.to_base58(), [str(maddr) for maddr in dht.get_visible_maddrs()]
    finally:
        dht.shutdown()


@asynccontextmanager
async def client_with(tmp_path, **prober_options):
    prober = ReachabilityProber(**{"allowed_scopes": {"public", "loopback"}, "dial_timeout": DIAL_TIMEOUT,
                                   "peer_interval": 0, "target_interval": 0, **prober_options})  # fmt: skip
    ledger = await make_ledger(tmp_path)
    try:
        async with api_client(ledger) as client:
            client.services.reachability = prober
            yield client
    finally:
        await prober.close()
        await ledger.engine.dispose()


def closed_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_listening_peer_is_reachable_and_dead_or_wrong_addresses_are_not(tmp_path, peer):
    peer_id, maddrs = peer
    port = int(maddrs[0].split("/")[4])

    async def scenario():
        async with client_with(tmp_path) as client:
            started = time.monotonic()
            answer = await client.post(URL, json={"peer_id": peer_id, "addrs": maddrs})
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"reachable": True, "addr": maddrs[0], "detail": f"dialed 127.0.0.1:{port}"}
            assert time.monotonic() - started < DIAL_TIMEOUT

            # The probe that just connected is gone: the next check dials only what it is told, from scratch.
            dead = f"/ip4/127.0.0.1/tcp/{closed_port()}"
            started = time.monotonic()
            answer = (await client.post(URL, json={"peer_id": peer_id, "addrs": [dead]})).json()
            assert time.monotonic() - started < DIAL_TIMEOUT
            assert answer["reachable"] is False and answer["addr"] is None
            assert "connection refused" in answer["detail"], answer

            # The right port, another peer ID: libp2p's handshake tells them apart.
            other = (await client.post(URL, json={"peer_id": "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",
                                                  "addrs": [maddrs[0].split("/p2p/")[0]]})).json()  # fmt: skip
            assert other["reachable"] is False and "peer id mismatch" in other["detail"], other

            # Something listens but never speaks libp2p: the dial gives up at the timeout.
            with closing(socket.socket()) as silent:
                silent.bind(("127.0.0.1", 0))
                silent.listen()
                started = time.monotonic()
                silent_addr = f"/ip4/127.0.0.1/tcp/{silent.getsockname()[1]}"
                answer = (await client.post(URL, json={"peer_id": peer_id, "addrs": [silent_addr]})).json()
                assert DIAL_TIMEOUT - 0.5 < time.monotonic() - started < DIAL_TIMEOUT + 3
            assert answer["reachable"] is False and "no answer within" in answer["detail"], answer

            # Several addresses: the one that answered is named.
            answer = (await client.post(URL, json={"peer_id": peer_id, "addrs": [dead, maddrs[0]]})).json()
            assert answer["reachable"] is True and answer["addr"] == maddrs[0], answer

            stats = (await client.get("/api/v1/stats")).json()["reachability"]
            assert stats == {"reachable": 2, "unreachable": 3}

    asyncio.run(scenario())


def test_addresses_outside_the_policy_are_not_dialed(tmp_path, peer):
    peer_id, maddrs = peer

    async def scenario():
        async with client_with(tmp_path, allowed_scopes=own_scopes(["/ip4/93.184.216.34/tcp/31337"])) as client:
            assert client.services.reachability.allowed_scopes == {"public"}
            answer = (await client.post(URL, json={"peer_id": peer_id, "addrs": maddrs})).json()
            assert answer["reachable"] is False and answer["addr"] is None
            assert answer["detail"] == (f"no address this coordinator dials: {maddrs[0]}: "
                                        "127.0.0.1 is a loopback address")  # fmt: skip
            for addr in ("/ip4/169.254.169.254/tcp/80", "/ip4/0.0.0.0/tcp/80", "/ip6/ff02::1/tcp/80",
                         "/ip4/10.1.2.3/tcp/31337", "/dns4/localhost/tcp/31337"):  # fmt: skip
                answer = (await client.post(URL, json={"peer_id": peer_id, "addrs": [addr]})).json()
                assert answer["reachable"] is False and answer["detail"].startswith("no address"), (addr, answer)
            stats = (await client.get("/api/v1/stats")).json()["reachability"]
            assert stats == {"not_dialable": 6}

        # A test/LAN coordinator dials loopback and private addresses, but only for requests from as far inside.
        prober = ReachabilityProber(allowed_scopes={"public", "private", "loopback"}, peer_interval=0)
        for requester, addr in (("93.184.216.34", maddrs[0]), ("192.168.1.7", maddrs[0]),
                                ("93.184.216.34", "/ip4/192.168.1.7/tcp/31337"), ("unknown", "/ip4/10.0.0.3/tcp/31337")):
            answer = await prober.check(peer_id, [addr], requester)
            assert answer.reachable is False and answer.detail.startswith("no address"), (requester, addr, answer)
        assert (await prober.check(peer_id, maddrs, "127.0.0.1")).reachable is True
        await prober.close()

    asyncio.run(scenario())


def test_bad_requests_are_refused_in_the_api_error_shape_and_counted(tmp_path, peer, caplog):
    peer_id, maddrs = peer
    addr = maddrs[0].split("/p2p/")[0]
    stranger = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
    cases = [
        (b"{not json", 422, "invalid_request"),
        (json.dumps({"peer_id": peer_id}).encode(), 422, "invalid_request"),
        (json.dumps({"peer_id": peer_id, "addrs": [addr] * 5}).encode(), 400, "bad_addresses"),
        (json.dumps({"peer_id": peer_id, "addrs": []}).encode(), 400, "bad_addresses"),
        (json.dumps({"peer_id": "not-a-peer-id", "addrs": [addr]}).encode(), 400, "bad_peer_id"),
        (json.dumps({"peer_id": peer_id, "addrs": ["/ip4/127.0.0.1/udp/4001/quic"]}).encode(), 400,
         "unsupported_address"),
        (json.dumps({"peer_id": peer_id, "addrs": [f"{addr}/p2p-circuit"]}).encode(), 400, "unsupported_address"),
        (json.dumps({"peer_id": peer_id, "addrs": ["/unix/tmp/p2pd.sock/tcp/1"]}).encode(), 400, "unsupported_address"),
        (json.dumps({"peer_id": peer_id, "addrs": ["/ip4/127.0.0.1/tcp/" + "9" * 300]}).encode(), 400, "bad_address"),
        (json.dumps({"peer_id": peer_id, "addrs": ["/ip4/127.0.0.1/tcp/0"]}).encode(), 400, "bad_address"),
        (json.dumps({"peer_id": peer_id, "addrs": ["/ip4/1.2.3/tcp/80"]}).encode(), 400, "bad_address"),
        (json.dumps({"peer_id": peer_id, "addrs": [f"{addr}/p2p/{stranger}"]}).encode(), 400, "bad_address"),
        (json.dumps({"peer_id": peer_id, "addrs": [addr], "pad": "x" * 5000}).encode(), 413, "too_large"),
    ]  # fmt: skip

    async def scenario():
        async with client_with(tmp_path) as client:
            for body, status, code in cases:
                assert_error(await client.post(URL, content=body, headers={"content-type": "application/json"}),
                             status, code)  # fmt: skip
            stats = (await client.get("/api/v1/stats")).json()["reachability"]
            assert stats == {"refused_invalid_request": 2, "refused_bad_addresses": 2, "refused_bad_peer_id": 1,
                             "refused_unsupported_address": 3, "refused_bad_address": 4,
                             "refused_too_large": 1}  # fmt: skip
        (tmp_path / "bare").mkdir()
        ledger = await make_ledger(tmp_path / "bare")
        async with api_client(ledger) as client:  # no DHT peer, no checks
            assert_error(await client.post(URL, json={"peer_id": peer_id, "addrs": [addr]}), 503, "unavailable")
        await ledger.engine.dispose()

    with caplog.at_level(logging.INFO, logger="coordinator.reachability"):
        asyncio.run(scenario())
    assert sum("refused (unsupported_address)" in record.getMessage() for record in caplog.records) == 3


def test_checks_are_rate_limited_per_peer_target_and_requester(tmp_path, peer):
    peer_id, maddrs = peer

    async def scenario():
        async with client_with(tmp_path, peer_interval=60, target_interval=60, client_limit=2) as client:
            assert (await client.post(URL, json={"peer_id": peer_id, "addrs": maddrs})).json()["reachable"] is True
            again = await client.post(URL, json={"peer_id": peer_id, "addrs": maddrs})
            assert_error(again, 429, "rate_limited")
            assert "this peer" in again.json()["error"]["message"]
            # Another peer ID asking us to dial the same ip:port: that target had its dial.
            other = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
            target = await client.post(URL, json={"peer_id": other, "addrs": [maddrs[0].split("/p2p/")[0]]})
            assert_error(target, 429, "rate_limited")
            assert "that address" in target.json()["error"]["message"]
            # The requester's own budget (2 a minute here) is spent by now.
            third = "QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN"
            dead = f"/ip4/127.0.0.1/tcp/{closed_port()}"
            requester = await client.post(URL, json={"peer_id": third, "addrs": [dead]})
            assert_error(requester, 429, "rate_limited")
            assert "your address" in requester.json()["error"]["message"]
            stats = (await client.get("/api/v1/stats")).json()["reachability"]
            assert stats == {"reachable": 1, "refused_rate_limited": 3}

    asyncio.run(scenario())


def test_address_parsing_and_scopes():
    peer_id = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
    parsed = parse_address(f"/ip6/::1/tcp/31337/p2p/{peer_id}", peer_id)
    assert (parsed.kind, parsed.host, parsed.port) == ("ip6", "::1", 31337)
    assert parse_address("/dns4/node.example.org/tcp/443", peer_id).host == "node.example.org"
    for text in ("/dns/-bad-.example/tcp/1", "ip4/1.2.3.4/tcp/1", "/ip6/1.2.3.4/tcp/1", "/ip4/1.2.3.4/tcp/65536"):
        with pytest.raises(CheckRefused):
            parse_address(text, peer_id)
    scopes = {text: scope_of(ipaddress.ip_address(text)) for text in (
        "8.8.8.8", "2001:4860::8888", "10.0.0.1", "192.168.1.2", "100.64.1.1", "fd00::1", "127.0.0.1", "::1",
        "::ffff:127.0.0.1", "169.254.169.254", "fe80::1", "0.0.0.0", "0.1.2.3", "224.0.0.1", "240.0.0.1", "::",
    )}  # fmt: skip
    assert scopes == {"8.8.8.8": "public", "2001:4860::8888": "public", "10.0.0.1": "private", "192.168.1.2": "private",
                      "100.64.1.1": "private", "fd00::1": "private", "127.0.0.1": "loopback", "::1": "loopback",
                      "::ffff:127.0.0.1": "loopback", "169.254.169.254": None, "fe80::1": None, "0.0.0.0": None,
                      "0.1.2.3": None, "224.0.0.1": None, "240.0.0.1": None, "::": None}  # fmt: skip
    own = own_scopes(["/ip4/127.0.0.1/tcp/1/p2p/x", "/ip4/192.168.1.5/tcp/1/p2p/x"])
    assert own == {"public", "loopback", "private"}
    assert own_scopes(["/dns4/coordinator.example.org/tcp/1"]) == {"public"}
