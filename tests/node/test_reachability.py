"""The node's side of the reachability check, without a swarm: which addresses it asks about, what each
setting decides, and that a coordinator without the check leaves the node listening."""

import logging
import socket
from contextlib import closing

from node.reachability import ReachabilityCheck, check_reachability, dialable_addresses

PEER = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"


def test_only_tcp_addresses_are_asked_about_public_first_at_most_four():
    maddrs = [f"/ip4/127.0.0.1/tcp/1/p2p/{PEER}", "/ip4/192.168.1.5/tcp/1", "/ip4/1.2.3.4/udp/1/quic",
              "/ip6/2001:db8::1/tcp/1", "/ip4/8.8.8.8/tcp/1", "/dns4/me.example.org/tcp/1", "/ip4/10.0.0.2/tcp/1",
              "/p2p-circuit/p2p/x"]  # fmt: skip
    assert dialable_addresses(maddrs) == ["/ip4/8.8.8.8/tcp/1", "/dns4/me.example.org/tcp/1",
                                          "/ip4/192.168.1.5/tcp/1", "/ip6/2001:db8::1/tcp/1"]  # fmt: skip


def test_settings_public_and_client_never_ask():
    public = ReachabilityCheck("public", "http://127.0.0.1:9")
    assert public(PEER, ["/ip4/192.168.1.5/tcp/31337", "/ip4/93.184.216.34/tcp/31337"]) is True
    assert str(public) == "public 93.184.216.34:31337, 192.168.1.5:31337"
    assert str(ReachabilityCheck("client", "http://127.0.0.1:9")) == "client mode (chosen in the settings)"
    assert str(ReachabilityCheck("auto", "http://127.0.0.1:9")) == "not known yet"


def test_a_coordinator_that_does_not_answer_keeps_the_node_listening(caplog):
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with caplog.at_level(logging.WARNING, logger="node.reachability"):
        assert check_reachability(url, PEER, ["/ip4/127.0.0.1/tcp/1"], timeout=2) is None
        check = ReachabilityCheck("auto", url)
        assert check(PEER, ["/ip4/127.0.0.1/tcp/31337"]) is True
    assert str(check) == "public 127.0.0.1:31337 (not checked)"
    assert "Reachability not checked: the coordinator did not answer (ConnectError)" in caplog.text
    assert check(PEER, ["/ip4/1.2.3.4/udp/1/quic"]) is False  # nothing to announce: nobody can dial us
    assert str(check) == "client mode (not reachable: no TCP address to announce)"


def test_a_second_check_refused_within_the_coordinators_limit_keeps_the_first_answer(coordinator, caplog):
    # A running node handed another swarm checks again at once; the coordinator refuses a second check of the same
    # peer within 10 s (429), and the first answer stands instead of "public (not checked)".
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        nobody_listens = f"/ip4/127.0.0.1/tcp/{sock.getsockname()[1]}"
    first = ReachabilityCheck("auto", coordinator.url)
    assert first(PEER, [nobody_listens]) is False
    with caplog.at_level(logging.INFO, logger="node.reachability"):
        second = ReachabilityCheck("auto", coordinator.url)
        assert second(PEER, [nobody_listens]) is False
    assert "the coordinator answered 429" in caplog.text and "taking the coordinator's answer of" in caplog.text
    assert str(second) == str(first)
