"""Identity binding, private swarms' access tokens, the operator's ban and signed receipts: in-process API on a real
SQLite ledger, real keys (Ed25519 node keys, hivemind's RSA libp2p identities)."""

import asyncio
import base64
import time

import pytest

from coordinator.tokens import TokenIssuer
from hearth.authorizer import AccessDenied, CoordinatorTokenAuthorizer, der_public_key, load_identity, token_from_grant
from node.access import ensure_identity, peer_binding
from node.outbox import Outbox
from node.reporter import Reporter
from protocol.encoding import canonical_bytes
from protocol.envelope import seal
from protocol.errors import BadSignature, ProtocolError, StaleMessage
from protocol.messages import NodeAttach, Receipt, SwarmManifest, VolunteerRegistration
from protocol.signing import SigningKey
from protocol.tokens import AccessTokenGrant, AccessTokenRequest, check_dht_token
from tests.coordinator.helpers import SWARM, api_client, make_ledger

PRIVATE = dict(SWARM, swarm_id="secret", run_id="hearth-secret-00000001", access="token")
OPERATOR = {"authorization": "Bearer operator-secret"}


def run(coro):
    return asyncio.run(coro)


def signed_registration(key: SigningKey, name: str, identity, *, peer_key_path=None, **override) -> bytes:
    now = time.time()
    binding = peer_binding(peer_key_path or identity, key.public_key, now)
    return seal(VolunteerRegistration(name=name, public_key=key.public_key, time=now, **{**binding, **override}), key)


@pytest.fixture
def identities(tmp_path):
    paths = [tmp_path / f"p2p-{i}.key" for i in range(2)]
    for path in paths:
        ensure_identity(path)
    return paths


async def _setup(tmp_path, lifetime=60.0):
    ledger = await make_ledger(tmp_path)
    await ledger.create_swarm(dict(PRIVATE))
    return ledger, TokenIssuer(SigningKey.generate(), lifetime)


def token_request(key: SigningKey, identity, swarm_id="secret", at=None) -> bytes:
    der = der_public_key(load_identity(identity))
    peer = base64.urlsafe_b64encode(der).rstrip(b"=").decode()
    return seal(AccessTokenRequest(swarm_id=swarm_id, public_key=key.public_key, peer_public_key=peer,
                                   time=at or time.time()), key)  # fmt: skip


def test_binding_proven_and_forgeries_refused(tmp_path, identities):
    async def scenario():
        ledger, issuer = await _setup(tmp_path)
        async with api_client(ledger) as client:
            client.services.issuer = issuer
            key, other = SigningKey.generate(), SigningKey.generate()
            mine, theirs = identities
            # A peer_id of someone else's libp2p key, with a signature by my own key: refused.
            theirs_binding = peer_binding(theirs, key.public_key, time.time())
            forged = signed_registration(key, "mallory", mine, peer_id=theirs_binding["peer_id"])
            r = await client.post("/api/v1/volunteers", content=forged)
            assert r.status_code == 400 and r.json()["error"]["code"] == "bad_signature"
            # Their key and peer_id, but their signature was for another node key: refused.
            stolen = peer_binding(theirs, other.public_key, time.time())
            r = await client.post("/api/v1/volunteers", content=seal(VolunteerRegistration(
                name="mallory", public_key=key.public_key, time=time.time(), **stolen), key))
            assert r.status_code == 400 and r.json()["error"]["code"] == "bad_signature"
            # A peer_id with no proof at all: refused.
            bare = seal(VolunteerRegistration(name="mallory", public_key=key.public_key, peer_id=stolen["peer_id"],
                                              time=time.time()), key)  # fmt: skip
            r = await client.post("/api/v1/volunteers", content=bare)
            assert r.status_code == 400 and r.json()["error"]["code"] == "malformed"
            # The genuine binding: stored.
            r = await client.post("/api/v1/volunteers", content=signed_registration(key, "alice", mine))
            assert r.status_code == 201
            node = await ledger.refresh_node(key.node_id)
            assert node is not None
            peer_id = peer_binding(mine, key.public_key, time.time())["peer_id"]
            async with ledger.engine.connect() as conn:
                stored = (await conn.exec_driver_sql("SELECT peer_id FROM nodes")).scalar_one()
            assert stored == peer_id
            # Re-registering with a new identity rebinds; attach of a second node with a forged binding is refused.
            r = await client.post("/api/v1/volunteers", content=signed_registration(key, "alice", theirs))
            assert r.status_code == 200
            async with ledger.engine.connect() as conn:
                stored = (await conn.exec_driver_sql("SELECT peer_id FROM nodes")).scalar_one()
            assert stored == peer_binding(theirs, key.public_key, time.time())["peer_id"]
            attach_key = (await client.post("/api/v1/volunteers", content=signed_registration(
                other, "bob", mine))).json()["attach_key"]  # fmt: skip
            third = SigningKey.generate()
            forged_attach = seal(NodeAttach(public_key=third.public_key, time=time.time(),
                                            **{**peer_binding(mine, third.public_key, time.time()),
                                               "peer_id": stolen["peer_id"]}), third)  # fmt: skip
            r = await client.post("/api/v1/accounts/nodes", content=forged_attach,
                                  headers={"authorization": f"Bearer {attach_key}"})  # fmt: skip
            assert r.status_code == 400
        await ledger.engine.dispose()

    run(scenario())


def test_tokens_for_bound_unbanned_nodes_of_private_swarms(tmp_path, identities):
    async def scenario():
        ledger, issuer = await _setup(tmp_path)
        async with api_client(ledger) as client:
            client.services.issuer = issuer
            key, mine, theirs = SigningKey.generate(), *identities
            assert (await client.post("/api/v1/volunteers", content=signed_registration(key, "alice", mine))).status_code == 201
            url = "/api/v1/swarms/secret/access-token"
            r = await client.post(url, content=token_request(key, mine))
            assert r.status_code == 200, r.text
            grant = AccessTokenGrant.model_validate(r.json())
            token = token_from_grant(grant)
            now = time.time()
            assert check_dht_token(issuer.key.public_key, {PRIVATE["run_id"]}, token.username, token.public_key,
                                   token.expiration_time, token.signature, now) == PRIVATE["run_id"]  # fmt: skip
            with pytest.raises(BadSignature):  # for another swarm
                check_dht_token(issuer.key.public_key, {"hearth-other"}, token.username, token.public_key,
                                token.expiration_time, token.signature, now)  # fmt: skip
            with pytest.raises(StaleMessage):  # expired
                check_dht_token(issuer.key.public_key, {PRIVATE["run_id"]}, token.username, token.public_key,
                                token.expiration_time, token.signature, now + 61)  # fmt: skip
            with pytest.raises(BadSignature):  # signed by another coordinator
                check_dht_token(SigningKey.generate().public_key, {PRIVATE["run_id"]}, token.username,
                                token.public_key, token.expiration_time, token.signature, now)  # fmt: skip
            with pytest.raises(BadSignature):  # someone else's RSA key in a copied token
                check_dht_token(issuer.key.public_key, {PRIVATE["run_id"]}, token.username,
                                der_public_key(load_identity(theirs)), token.expiration_time, token.signature, now)

            refusals = {
                "open_swarm": token_request(key, mine, swarm_id="spirals"),
                "unproven_peer": token_request(key, theirs),  # a libp2p key it never proved
                "unknown_node": token_request(SigningKey.generate(), mine),
                "stale": token_request(key, mine, at=time.time() - 3600),
            }
            for code, body in refusals.items():
                swarm = "spirals" if code == "open_swarm" else "secret"
                r = await client.post(f"/api/v1/swarms/{swarm}/access-token", content=body)
                assert r.json()["error"]["code"] == code, (code, r.text)

            assert (await client.post("/api/v1/volunteers/alice/ban")).status_code == 401
            r = await client.post("/api/v1/volunteers/alice/ban", headers=OPERATOR)
            assert r.status_code == 200 and r.json()["banned_at"]
            r = await client.post(url, content=token_request(key, mine))
            assert r.status_code == 403 and r.json()["error"]["code"] == "banned"
            assert (await client.delete("/api/v1/volunteers/alice/ban", headers=OPERATOR)).json()["banned_at"] is None
            assert (await client.post(url, content=token_request(key, mine))).status_code == 200
            assert (await client.post("/api/v1/volunteers/nobody/ban", headers=OPERATOR)).status_code == 404

            manifest = SwarmManifest.model_validate((await client.get("/api/v1/swarms/secret")).json())
            assert manifest.coordinator_key == issuer.key.public_key and manifest.access == "token"
        await ledger.engine.dispose()

    run(scenario())


def test_authorizer_renews_and_falls_out_when_refused(tmp_path, identities):
    """The node's authorizer renews at half-life; a refused renewal keeps the old token until it expires, then every
    request fails (AccessDenied). Fake clock; the fetch is a plain function."""
    issuer = TokenIssuer(SigningKey.generate(), lifetime=10.0)
    rsa_key = load_identity(identities[0])
    der, now, refuse = der_public_key(rsa_key), [1000.0], [False]
    fetched = []

    async def fetch():
        if refuse[0]:
            raise RuntimeError("banned")
        fetched.append(now[0])
        return token_from_grant(issuer.issue(PRIVATE["run_id"], "n", der, now=now[0]))

    authorizer = CoordinatorTokenAuthorizer(issuer.key.public_key, {PRIVATE["run_id"]}, fetch, rsa_key,
                                            clock=lambda: now[0])  # fmt: skip

    async def scenario():
        await authorizer.refresh_token_if_needed()
        now[0] += 4
        await authorizer.refresh_token_if_needed()
        assert fetched == [1000.0]
        now[0] += 2  # past half-life
        await authorizer.refresh_token_if_needed()
        assert fetched == [1000.0, 1006.0]
        refuse[0] = True
        now[0] += 6
        await authorizer.refresh_token_if_needed()  # refused, old token still valid
        now[0] += 5
        with pytest.raises(AccessDenied):
            await authorizer.refresh_token_if_needed()

    run(scenario())


def test_receipts_must_be_signed_by_the_coordinator(tmp_path):
    coordinator, node = SigningKey.generate(), SigningKey.generate()
    outbox = Outbox(tmp_path / "outbox.sqlite")
    try:
        reporter = Reporter("mqtt://127.0.0.1:1", node, "spirals", "cpu", outbox, coordinator_key=coordinator.public_key)
        receipt = Receipt(node_id=node.node_id, swarm_id="spirals", last_seq=5, time=time.time())
        assert reporter._open_receipt(seal(receipt, coordinator)).last_seq == 5
        for forged in (canonical_bytes(receipt.model_dump(mode="json")), seal(receipt, SigningKey.generate())):
            with pytest.raises(ProtocolError):
                reporter._open_receipt(forged)
    finally:
        outbox.close()


def test_a_corrupt_identity_is_one_clear_error(tmp_path):
    path = tmp_path / "p2p.key"
    path.write_bytes(b"not a protobuf")
    with pytest.raises(ValueError, match="does not hold an RSA libp2p key"):
        load_identity(path)


def test_reporter_ignores_and_counts_forged_receipts_on_a_real_broker(tmp_path):
    """Through the embedded broker (anonymous, so anyone may publish there): receipts that are unsigned or signed by
    another key leave the outbox alone and are counted; the coordinator's own receipt empties it."""
    import aiomqtt

    from coordinator.broker import EmbeddedBroker
    from node.accounting import EpochContribution
    from protocol.topics import receipt_topic, status_topic

    coordinator, node = SigningKey.generate(), SigningKey.generate()
    outbox = Outbox(tmp_path / "outbox.sqlite")

    async def until(condition, what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.02)  # polls a condition set by the reporter task in this loop

    async def scenario():
        broker = EmbeddedBroker("127.0.0.1", 0)
        await broker.start()
        reporter = Reporter(broker.url, node, "spirals", "cpu", outbox, coordinator_key=coordinator.public_key)
        reporter.submit(EpochContribution(epoch=0, samples=10, compute_seconds=1.0, loss=None, group_size=1))
        running = asyncio.create_task(reporter.run())
        try:
            async with aiomqtt.Client("127.0.0.1", broker.port) as other:
                await other.subscribe(status_topic("spirals", node.node_id), qos=1)
                async with asyncio.timeout(20):
                    await anext(aiter(other.messages))  # presence: published once it listens for receipts
                receipt = Receipt(node_id=node.node_id, swarm_id="spirals", last_seq=1, time=time.time())
                topic = receipt_topic("spirals", node.node_id)
                await other.publish(topic, seal(receipt, SigningKey.generate()), qos=1)
                await other.publish(topic, canonical_bytes(receipt.model_dump(mode="json")), qos=1)
                await until(lambda: reporter.stats.control_rejected == 2, "the forgeries to be counted")
                assert len(outbox) == 1 and reporter.stats.reports_acknowledged == 0
                await other.publish(topic, seal(receipt, coordinator), qos=1)
                await until(lambda: len(outbox) == 0, "the genuine receipt to empty the outbox")
                assert reporter.stats.control_rejected == 2
        finally:
            reporter.stop()
            await asyncio.wait_for(running, 20)
            await broker.stop()

    try:
        asyncio.run(scenario())
    finally:
        outbox.close()
