"""Paced matchmaking reads (node/matchmaking.py) on a real hivemind DHT: the same averagers as hivemind's own key
manager returns, read at most once per interval however fast they are asked for."""

import asyncio
import time

from hivemind.averaging.key_manager import GroupKeyManager
from hivemind.utils import get_dht_time

from node.matchmaking import PacedGroupKeyManager


def test_matchmaking_reads_are_paced_and_find_the_same_averagers(dht):
    async def scenario():
        plain = GroupKeyManager(dht, "paced-test", initial_group_bits="", target_group_size=None)
        paced = PacedGroupKeyManager(plain, min_interval=0.2)
        assert paced.current_key == plain.current_key
        await plain.declare_averager(plain.current_key, dht.peer_id, expiration_time=get_dht_time() + 60)
        started, reads = time.monotonic(), 0
        while time.monotonic() - started < 1.0:  # as hivemind asks while unsure of its leader: back to back
            found = await paced.get_averagers(paced.current_key, only_active=True)
            reads += 1
        assert found == await plain.get_averagers(plain.current_key, only_active=True)
        assert [peer for peer, _ in found] == [dht.peer_id]
        assert reads <= 1 + 1.0 / 0.2 + 1  # unpaced, a loopback DHT answers hundreds in a second

    asyncio.run(scenario())
