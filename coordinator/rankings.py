"""Volunteer rankings held in memory: the order of every volunteer by credit, recent average credit and samples,
rebuilt from volunteer_totals in the background when stale.

Why: OFFSET on a 1M-row index walks every skipped row (~45 ms at rank 1,000,000 on SQLite) and a rank needs a
COUNT over the same range. A snapshot answers any page and any volunteer's rank in microseconds (numpy arrays,
56 bytes per volunteer). Pages read the live values of the rows they show; only the *order* is as of the
snapshot. Every credit change writes a grants row and every volunteer a volunteers row, so (highest grant id,
highest volunteer id) tells in two index lookups whether the snapshot is still exact. When it is not: a small
ledger (up to 20,000 volunteers, a build of ~40 ms) is rebuilt before answering; a large one keeps serving the previous order while
the next builds in the background, at most every 20 build-times (≤ 2 minutes), keeping rebuilds under ~5 % of
one core. The first request waits for the first build.

Recent average credit decays on read, but its order does not change with time: rac·2^(−(now−t)/T½) orders
like log2(rac) + t/T½, which is what the snapshot sorts by.
"""

import asyncio
import logging
import math
import time
import weakref
from dataclasses import dataclass
from datetime import timezone
from typing import Optional

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator import db
from protocol.credit import RAC_HALF_LIFE_SECONDS

logger = logging.getLogger(__name__)

SORTS = ("credit", "rac", "samples")
MAX_AGE, AGE_PER_BUILD_SECOND = 120.0, 20.0
CHECK_EVERY = 1.0  # seconds between ledger_version queries once the ledger is large
EXACT_UP_TO = 20_000  # volunteers: up to here a request that finds the ranking stale waits for the rebuild (~40 ms)
CHUNK = 5000  # rows converted between yields to the event loop while building


@dataclass(frozen=True)
class Snapshot:
    ids: np.ndarray  # volunteer ids, ascending
    orders: dict[str, np.ndarray]  # sort → indexes into ids, best first (ties: lower id first)
    positions: dict[str, np.ndarray]  # sort → each id's 0-based place in that order
    built_at: float
    build_seconds: float
    version: tuple = ()  # ledger_version() when the build started

    @property
    def total(self) -> int:
        return len(self.ids)

    def page(self, sort: str, offset: int, limit: int) -> list[int]:
        return self.ids[self.orders[sort][offset : offset + limit]].tolist()

    def rank(self, volunteer_id: int, sort: str = "credit") -> Optional[int]:
        """1-based rank as of the snapshot; None for a volunteer newer than it."""
        i = int(np.searchsorted(self.ids, volunteer_id))
        if i >= len(self.ids) or self.ids[i] != volunteer_id:
            return None
        return int(self.positions[sort][i]) + 1


def _rac_key(rac: float, updated_at) -> float:
    if not rac or rac <= 0 or updated_at is None:
        return -math.inf
    at = (updated_at.replace(tzinfo=timezone.utc) if updated_at.tzinfo is None else updated_at).timestamp()
    return math.log2(rac) + at / RAC_HALF_LIFE_SECONDS


def _orders(ids: np.ndarray, keys: dict[str, np.ndarray]) -> tuple[dict, dict]:
    orders, positions = {}, {}
    for sort, values in keys.items():
        order = np.lexsort((ids, -values))  # highest value first, then lowest id
        place = np.empty_like(order)
        place[order] = np.arange(len(order))
        orders[sort], positions[sort] = order, place
    return orders, positions


# built once: a small ledger asks at every request
_VERSION = select(select(func.max(db.grants.c.id)).scalar_subquery(), select(func.max(db.volunteers.c.id)).scalar_subquery())


async def ledger_version(engine: AsyncEngine) -> tuple:
    """Changes whenever any volunteer's credit, samples or RAC can have changed, or a volunteer was added."""
    async with engine.connect() as conn:
        return tuple((await conn.execute(_VERSION)).one())


async def build(engine: AsyncEngine) -> Snapshot:
    started = time.perf_counter()
    version = await ledger_version(engine)
    t = db.volunteer_totals
    ids, credit, samples, rac = [], [], [], []
    query = select(t.c.volunteer_id, t.c.credit, t.c.samples, t.c.rac, t.c.rac_updated_at).order_by(t.c.volunteer_id)
    async with engine.connect() as conn:
        result = await conn.stream(query)
        async for chunk in result.partitions(CHUNK):
            for row in chunk:
                ids.append(row[0])
                credit.append(row[1])
                samples.append(row[2])
                rac.append(_rac_key(row[3], row[4]))
            await asyncio.sleep(0)  # let requests run between chunks
    id_array = np.array(ids, dtype=np.int64)
    keys = {"credit": np.array(credit, dtype=np.float64), "rac": np.array(rac, dtype=np.float64),
            "samples": np.array(samples, dtype=np.float64)}  # fmt: skip
    orders, positions = await asyncio.to_thread(_orders, id_array, keys)
    seconds = time.perf_counter() - started
    if seconds > 0.5:
        logger.info("Rankings of %d volunteers rebuilt in %.2f s", len(ids), seconds)
    return Snapshot(id_array, orders, positions, time.time(), seconds, version)


class Rankings:
    """The current snapshot for one engine, rebuilt (once at a time) when the ledger changed."""

    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        self.snapshot: Optional[Snapshot] = None
        self._building: Optional[asyncio.Task] = None
        self._checked_at = 0.0  # time.monotonic() of the last ledger_version query

    def max_age(self) -> float:
        return 0.0 if self.snapshot is None else min(MAX_AGE, self.snapshot.build_seconds * AGE_PER_BUILD_SECOND)

    async def current(self) -> Snapshot:
        snapshot = self.snapshot
        if snapshot is None:
            return await self._rebuild()
        large = snapshot.total > EXACT_UP_TO
        if large and time.monotonic() - self._checked_at < CHECK_EVERY:  # its order may lag anyway: skip the query
            return snapshot
        self._checked_at = time.monotonic()
        if await ledger_version(self.engine) == snapshot.version:
            return snapshot
        if not large:  # small ledger: answer with the order as of now
            if self._building is not None and not self._building.done():  # it may have started before the change
                await asyncio.shield(self._building)
            return await self._rebuild()
        if time.time() - snapshot.built_at > self.max_age():
            self._rebuild_soon()
        return snapshot

    def _rebuild_soon(self) -> asyncio.Task:
        if self._building is None or self._building.done():
            self._building = asyncio.create_task(self._build(), name="rankings")
        return self._building

    async def _rebuild(self) -> Snapshot:
        await asyncio.shield(self._rebuild_soon())
        if self.snapshot is None:  # the build failed: its exception was logged
            raise RuntimeError("the rankings could not be built")
        return self.snapshot

    async def _build(self) -> None:
        try:
            self.snapshot = await build(self.engine)
        except Exception:
            logger.exception("Rebuilding the rankings failed; serving the previous ones")


_by_engine: "weakref.WeakKeyDictionary[AsyncEngine, Rankings]" = weakref.WeakKeyDictionary()


def rankings_for(engine: AsyncEngine) -> Rankings:
    rankings = _by_engine.get(engine)
    if rankings is None:
        rankings = _by_engine[engine] = Rankings(engine)
    return rankings
