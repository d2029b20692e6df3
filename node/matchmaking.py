"""Paced matchmaking for hivemind's averagers.

While an averager looks for its group, hivemind 1.1.12 re-reads the group's key from the DHT as soon as the previous
read returns whenever it is not yet sure of its leader: on loopback or a LAN, ~80 reads a second for the whole
matchmaking window before every round. Each read costs this peer's DHT process and p2pd, and every peer holding the
key, CPU that training needs (bench_node: ~0.45 of the volunteer's core for 3-4 s of every epoch). Pacing the reads
to one per MATCHMAKING_READ_SECONDS changes nothing over the internet, where a read takes about that long anyway."""

import asyncio
import time

from hivemind.averaging.key_manager import GroupKeyManager

MATCHMAKING_READ_SECONDS = 0.2


class PacedGroupKeyManager(GroupKeyManager):
    """hivemind's group key manager (the same key and bits), reading the averagers under the key at most once per
    `min_interval` seconds."""

    def __init__(self, manager: GroupKeyManager, min_interval: float = MATCHMAKING_READ_SECONDS):
        self.__dict__.update(manager.__dict__)  # its state: prefix, group bits, target size, DHT
        self.min_interval, self._last_read = min_interval, float("-inf")

    async def get_averagers(self, group_key, only_active: bool):
        wait = self._last_read + self.min_interval - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        self._last_read = time.monotonic()
        return await super().get_averagers(group_key, only_active)


class PacedMatchmaking:
    """Mixin for a DecentralizedAverager subclass: its process paces its matchmaking reads from its first round on
    (the matchmaking object only exists inside the averager's process)."""

    async def _step(self, **kwargs):
        matchmaking = self._matchmaking
        if not isinstance(matchmaking.group_key_manager, PacedGroupKeyManager):
            matchmaking.group_key_manager = PacedGroupKeyManager(matchmaking.group_key_manager)
        return await super()._step(**kwargs)
