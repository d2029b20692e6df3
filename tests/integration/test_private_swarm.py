"""Private swarms end to end: a real coordinator (short token lifetime, broker logins on), a real `hearth join` node,
and hivemind DHT peers in this process. A peer without a valid token cannot join; a node with one trains (logged in to
the broker with the password its registration gave it); a banned volunteer's peer falls out once its token expires."""

import asyncio
import time
import uuid
from typing import Optional

import aiomqtt
import pytest

from hearth.processes import wait_until
from node.access import AccessRefused, SwarmAccess, ensure_identity, peer_binding
from protocol.envelope import seal
from protocol.messages import SwarmManifest, VolunteerRegistration
from protocol.signing import SigningKey
from tests.conftest import CoordinatorProcess, run_hearth

pytestmark = pytest.mark.swarm

TOKEN_LIFETIME = 8.0
BOOTSTRAP_FAILED = "none of the initial_peers responded"


@pytest.fixture(scope="module")
def private(tmp_path_factory):
    """A coordinator with one private swarm: (coordinator, manifest)."""
    coordinator = CoordinatorProcess(tmp_path_factory.mktemp("private") / "data", "--token-lifetime", str(TOKEN_LIFETIME),
                                     "--broker-auth", "--checkpoint-every", "2")  # fmt: skip
    try:
        result = run_hearth("swarm", "create", "hidden", "--access", "token", "--task", "spirals",
                            "--target-batch-size", "4096", "--coordinator", coordinator.url,
                            "--token-file", str(coordinator.data_dir / "operator-token"), timeout=120)  # fmt: skip
        assert result.returncode == 0, result.stderr
        yield coordinator, SwarmManifest.model_validate(coordinator.get("/api/v1/swarms/hidden"))
    finally:
        coordinator.stop()


def _volunteer(coordinator, tmp_path, name: str, answer: Optional[dict] = None):
    """A registered volunteer with a proven libp2p identity: (node key, identity path); `answer` gets the reply."""
    key, identity = SigningKey.generate(), tmp_path / f"{name}.p2p.key"
    ensure_identity(identity)
    now = time.time()
    body = seal(VolunteerRegistration(name=name, public_key=key.public_key, time=now,
                                      **peer_binding(identity, key.public_key, now)), key)  # fmt: skip
    response = coordinator.api.post("/api/v1/volunteers", content=body)
    assert response.status_code == 201, response.text
    (answer if answer is not None else {}).update(response.json())
    return key, identity


def _dht(manifest: SwarmManifest, **kwargs):
    from hivemind.dht import DHT

    return DHT(initial_peers=manifest.initial_peers, start=True, **kwargs)


def test_peers_need_a_valid_token(private, tmp_path):
    coordinator, manifest = private
    assert manifest.access == "token" and manifest.coordinator_key
    assert manifest.initial_peers != coordinator.get("/api/v1/swarms/spirals")["initial_peers"]
    with pytest.raises(RuntimeError, match=BOOTSTRAP_FAILED):  # no authorizer: the private peer answers nothing
        _dht(manifest).shutdown()
    # A well-formed token for the same swarm, signed by another "coordinator": refused just the same.
    key, identity = _volunteer(coordinator, tmp_path, "forger")
    forged = SwarmAccess(coordinator.url, key, manifest.model_copy(update={"coordinator_key": SigningKey.generate().public_key}), identity)  # fmt: skip
    real = SwarmAccess(coordinator.url, key, manifest, identity).fetch()
    with pytest.raises(RuntimeError, match=BOOTSTRAP_FAILED):
        _dht(manifest, authorizer=forged.authorizer(real)).shutdown()  # it rejects the coordinator's own answers
    from coordinator.tokens import TokenIssuer

    rogue = TokenIssuer(SigningKey.generate()).issue(manifest.run_id, key.node_id, forged.der)
    with pytest.raises(RuntimeError, match=BOOTSTRAP_FAILED):
        _dht(manifest, authorizer=SwarmAccess(coordinator.url, key, manifest, identity).authorizer(rogue)).shutdown()


def test_banned_volunteer_falls_out(private, tmp_path):
    coordinator, manifest = private
    banned_key, banned_identity = _volunteer(coordinator, tmp_path, "to-be-banned")
    good_key, good_identity = _volunteer(coordinator, tmp_path, "stays")
    banned_access = SwarmAccess(coordinator.url, banned_key, manifest, banned_identity)
    good_access = SwarmAccess(coordinator.url, good_key, manifest, good_identity)
    banned = _dht(manifest, authorizer=banned_access.authorizer(banned_access.fetch()), identity_path=str(banned_identity))
    good_grant = good_access.fetch()
    good = _dht(manifest, authorizer=good_access.authorizer(good_grant), identity_path=str(good_identity))
    try:
        def reaches(writer, reader) -> bool:
            """Does a value `writer` stores now reach `reader`?"""
            key = f"{manifest.run_id}_probe_{uuid.uuid4().hex}"
            writer.store(key, "hello", expiration_time=_dht_time() + 60)
            found = reader.get(key, latest=True)
            return found is not None and found.value == "hello"

        def heard() -> bool:
            return reaches(banned, good)

        wait_until(heard, 30, what="the two token holders to see each other's records")
        result = run_hearth("volunteer", "ban", "to-be-banned", "--coordinator", coordinator.url,
                            "--token-file", str(coordinator.data_dir / "operator-token"))  # fmt: skip
        assert result.returncode == 0, result.stderr
        with pytest.raises(AccessRefused, match="banned"):
            banned_access.fetch()
        wait_until(lambda: not heard(), TOKEN_LIFETIME * 3, what="the banned peer to fall out")
        fresh_key, fresh_identity = _volunteer(coordinator, tmp_path, "late-joiner")
        fresh = SwarmAccess(coordinator.url, fresh_key, manifest, fresh_identity)
        late = _dht(manifest, authorizer=fresh.authorizer(fresh.fetch()))  # the swarm still works for others
        try:  # and the good peer, once its first token has expired, goes on with a renewed one
            wait_until(lambda: time.time() > float(good_grant.expiration_time) and reaches(good, late),
                       TOKEN_LIFETIME * 3, what="the good peer to go on with a renewed token")  # fmt: skip
        finally:
            late.shutdown()
    finally:
        banned.shutdown()
        good.shutdown()


def _dht_time() -> float:
    from hivemind.utils.timed_storage import get_dht_time

    return get_dht_time()


def test_node_with_a_token_trains(private, nodes):
    coordinator, manifest = private
    nodes.start(coordinator.url, "insider", "--swarm", "hidden")
    wait_until(lambda: coordinator.get("/api/v1/volunteers/insider")["reports"] >= 1 if _exists(coordinator, "insider")
               else False, 180, what="the node in the private swarm to report an epoch")  # fmt: skip
    # the coordinator's own private peer reads the swarm's progress records and downloads its state
    wait_until(lambda: coordinator.get("/api/v1/swarms/hidden/progress")["peers_online"] >= 1, 60,
               what="the coordinator to read the private swarm's progress")  # fmt: skip
    wait_until(lambda: coordinator.get("/api/v1/swarms/hidden/checkpoints")["checkpoints"], 120,
               what="a checkpoint of the private swarm")  # fmt: skip


def _exists(coordinator, name: str) -> bool:
    return coordinator.api.get(f"/api/v1/volunteers/{name}").status_code == 200


def test_broker_admits_only_logged_in_nodes(private, tmp_path):
    coordinator, manifest = private
    answer: dict = {}
    key, _ = _volunteer(coordinator, tmp_path, "mqtt-user", answer)
    host, port = manifest.broker_url.removeprefix("mqtt://").split(":")

    async def scenario():
        for login in ({}, {"username": key.node_id, "password": "guess"}):
            with pytest.raises(aiomqtt.MqttError):
                async with aiomqtt.Client(host, int(port), **login):
                    pass
        async with aiomqtt.Client(host, int(port), username=answer["broker_username"], password=answer["broker_password"]):
            pass

    asyncio.run(scenario())
