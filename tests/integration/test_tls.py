"""TLS end to end: a real `hearth coordinator serve --tls-cert/--tls-key` (HTTPS API, MQTT over TLS on the embedded
broker) with a certificate from a throwaway CA made here; a node that trusts the CA (`--ca-cert`) registers,
trains and gets its reports credited through mqtts://; a node that does not trust it refuses with one clear
sentence. The same run checks that the coordinator's public answers carry none of the node's keys or peer id."""

import asyncio
import datetime
import ipaddress
import sqlite3

import aiomqtt
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from coordinator.broker_acl import load_or_create_secret, password_for
from hearth.processes import wait_until
from node.coordinator_client import CoordinatorClient, CoordinatorError
from node.tls import client_context, untrusted
from protocol.signing import SigningKey
from tests.conftest import CoordinatorProcess, run_hearth

pytestmark = pytest.mark.swarm


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(directory, label: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(f"Hearth test CA {label}")).issuer_name(_name(f"Hearth test CA {label}"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))  # fmt: skip
    path = directory / f"ca-{label}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def make_server_cert(directory, ca_key, ca_cert):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))  # fmt: skip
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_coordinator(tmp_path_factory):
    base = tmp_path_factory.mktemp("tls")
    ca_key, ca_cert, ca_path = make_ca(base, "right")
    _, _, wrong_ca = make_ca(base, "wrong")
    cert, key = make_server_cert(base, ca_key, ca_cert)
    process = CoordinatorProcess(base / "data", "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        process.api.close()
        process.api = httpx.Client(base_url=process.url, timeout=60, verify=client_context(ca_path))  # swarm creation measures FLOPs
        yield process, ca_path, wrong_ca
    finally:
        process.stop()


def test_node_trains_over_https_and_mqtts(tls_coordinator, nodes):
    coordinator, ca, _ = tls_coordinator
    assert coordinator.url.startswith("https://") and coordinator.info["broker_url"].startswith("mqtts://")
    with pytest.raises(httpx.ConnectError) as plain:  # Mozilla's and the system's CAs alone do not vouch for it
        httpx.get(coordinator.url + "/healthz", verify=client_context())
    assert untrusted(plain.value) is not None
    token = (coordinator.data_dir / "operator-token").read_text().strip()
    created = coordinator.api.post("/api/v1/swarms", json={"swarm_id": "tls", "target_batch_size": 16384},
                                   headers={"authorization": f"Bearer {token}"})  # fmt: skip
    assert created.status_code == 201, created.text
    assert created.json()["broker_url"] == coordinator.info["broker_url"]

    nodes.start(coordinator.url, "tls-node", "--swarm", "tls", "--ca-cert", str(ca), "--reachability", "public",
                "--max-epochs", "3")  # fmt: skip

    def credited():  # reports arrive pending, and are granted once the work check has the epoch's evidence
        answer = coordinator.api.get("/api/v1/volunteers/tls-node")
        return answer.status_code == 200 and answer.json()["credit"] > 0 and answer.json()
    detail = wait_until(credited, 240, what="a report of tls-node to be credited over mqtts")
    assert detail["nodes"][0]["device"] == "cpu"

    # The coordinator's public answers name the node by its pseudonym only: no key, no peer id, no address.
    with sqlite3.connect(coordinator.data_dir / "ledger.sqlite3") as db:
        public_key, peer_id = db.execute("SELECT public_key, peer_id FROM nodes").fetchone()
        hashes = db.execute("SELECT account_key_hash, attach_key_hash FROM volunteers").fetchone()
    secrets_ = {public_key, *[value for value in (peer_id, *hashes) if value]}
    pages = ["/", "/swarms", "/swarms/tls", "/volunteers/tls-node", "/join", "/api/v1/leaderboard", "/api/v1/swarms",
             "/api/v1/swarms/tls/progress", "/api/v1/volunteers/tls-node", "/api/v1/volunteers/tls-node/reports",
             "/api/v1/stats", "/api/v1/teams"]  # fmt: skip
    for page in pages:
        text = coordinator.api.get(page).text
        assert not [s for s in secrets_ if s in text], page


def test_untrusted_certificate_is_refused_clearly(tls_coordinator, tmp_path):
    coordinator, _, wrong_ca = tls_coordinator
    result = run_hearth("join", coordinator.url, "--name", "mistrust", "--data-dir", str(tmp_path / "node"),
                        "--view", "log", "--connect-timeout", "60", "--ca-cert", str(wrong_ca), timeout=120)  # fmt: skip
    assert result.returncode != 0
    assert "does not trust" in result.stderr and "--ca-cert" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "retrying" not in result.stderr
    assert coordinator.api.get("/api/v1/volunteers/mistrust").status_code == 404
    client = CoordinatorClient(coordinator.url, connect_timeout=60)  # no private CA: the system's and Mozilla's only
    try:
        with pytest.raises(CoordinatorError, match="does not trust .*HEARTH_CA_CERT"):
            client.swarm_ids()
    finally:
        client.close()

    node_id = SigningKey.generate().node_id  # any node's login: the broker admits only logins
    login = {"username": node_id, "password": password_for(load_or_create_secret(coordinator.data_dir), node_id)}

    async def mqtt_with(ca) -> BaseException:
        host_port = coordinator.info["broker_url"].split("://", 1)[1]
        host, port = host_port.rsplit(":", 1)
        try:
            async with aiomqtt.Client(host, int(port), tls_context=client_context(ca), timeout=10, **login):
                return None
        except aiomqtt.MqttError as e:
            return e

    refused = asyncio.run(mqtt_with(wrong_ca))
    assert refused is not None and untrusted(refused) is not None
    assert asyncio.run(mqtt_with(coordinator_ca(coordinator))) is None  # the right CA connects


def coordinator_ca(coordinator):
    return coordinator.data_dir.parent / "ca-right.pem"


def test_mosquitto_tls_listener(tmp_path):
    """scripts/mosquitto.py --tls-cert/--tls-key: an external broker's TLS listener, verified by the node's context."""
    from scripts.mosquitto import Mosquitto, mosquitto_binary

    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    ca_key, ca_cert, ca = make_ca(tmp_path, "right")
    _, _, wrong = make_ca(tmp_path, "wrong")
    cert, key = make_server_cert(tmp_path, ca_key, ca_cert)

    async def connect(port: int, context) -> BaseException | None:
        try:
            async with aiomqtt.Client("127.0.0.1", port, tls_context=context, timeout=10):
                return None
        except aiomqtt.MqttError as e:
            return e

    with Mosquitto(tls_files=(cert, key)) as broker:
        assert broker.tls_url.startswith("mqtts://127.0.0.1:") and broker.tls_port != broker.port
        assert asyncio.run(connect(broker.tls_port, client_context(ca))) is None
        refused = asyncio.run(connect(broker.tls_port, client_context(wrong)))
        assert refused is not None and untrusted(refused) is not None
