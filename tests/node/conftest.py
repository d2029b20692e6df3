import pytest


@pytest.fixture(scope="module")
def dht():
    """A lone hivemind DHT peer on 127.0.0.1 (its own process and p2pd), stopped after the module's tests."""
    from hivemind.dht import DHT

    dht = DHT(host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
    try:
        yield dht
    finally:
        dht.shutdown()
