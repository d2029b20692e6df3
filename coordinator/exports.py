"""Public stats exports, like BOINC's daily dumps: gzip JSON and CSV of volunteers, teams and nodes, plus an
index.json (generated_at, row counts, sha256 of each file), served at /api/v1/exports/.

Privacy: only display names, teams, a short node fingerprint, the device type and aggregates leave the ledger;
never public keys, peer IDs, addresses, hostnames or hardware names. Rows are streamed from the database in
chunks and each file is written to a temporary file in the same directory, then renamed over the old one
(index.json last), so a reader never sees a half-written file.
"""

import asyncio
import csv
import gzip
import hashlib
import io
import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Optional

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from sqlalchemy import desc, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator import db
from coordinator.api import ApiError, services
from coordinator.queries import device_kind, iso

logger = logging.getLogger(__name__)

CHUNK_ROWS = 5000
FIRST_EXPORT_DELAY = 2.0
INDEX = "index.json"
COLUMNS = {
    "volunteers": ("name", "team", "total_credit", "total_samples", "reports", "nodes", "created_at", "last_seen"),
    "teams": ("team", "members", "total_credit"),
    "nodes": ("node", "volunteer", "device_type", "total_credit", "total_samples", "reports", "last_seen"),
}
FILES = tuple(f"{kind}.{fmt}.gz" for kind in COLUMNS for fmt in ("json", "csv"))


_device_type = device_kind  # 'cuda:0' → 'cuda': the kind of device only, never an index or a hardware name


def _volunteers_query():
    v, t, n = db.volunteers, db.volunteer_totals, db.nodes
    per_volunteer = (
        select(n.c.volunteer_id, func.count().label("nodes"), func.max(n.c.last_seen).label("node_last_seen"))
        .group_by(n.c.volunteer_id)
        .subquery()
    )
    credit = func.coalesce(t.c.credit, 0.0)
    return (
        select(v.c.name, v.c.team, credit.label("total_credit"), func.coalesce(t.c.samples, 0).label("total_samples"),
               func.coalesce(t.c.reports, 0).label("reports"), func.coalesce(per_volunteer.c.nodes, 0).label("nodes"),
               v.c.created_at, t.c.last_report_at, per_volunteer.c.node_last_seen)  # fmt: skip
        .select_from(v.outerjoin(t, t.c.volunteer_id == v.c.id).outerjoin(per_volunteer, per_volunteer.c.volunteer_id == v.c.id))
        .order_by(desc(credit), v.c.id)
    )


def _teams_query():
    v, t = db.volunteers, db.volunteer_totals
    total = func.coalesce(func.sum(t.c.credit), 0.0)
    return (
        select(v.c.team, func.count(v.c.id).label("members"), total.label("total_credit"))
        .select_from(v.outerjoin(t, t.c.volunteer_id == v.c.id))
        .where(v.c.team.is_not(None), v.c.team != "")
        .group_by(v.c.team)
        .order_by(desc(total), v.c.team)
    )


def _nodes_query():
    n, v, t = db.nodes, db.volunteers, db.node_totals  # totals maintained with each grant: no scan of reports
    return (
        select(n.c.node_id, v.c.name, n.c.device, func.coalesce(t.c.credit, 0.0).label("total_credit"),
               func.coalesce(t.c.samples, 0).label("total_samples"), func.coalesce(t.c.reports, 0).label("reports"),
               n.c.last_seen, t.c.last_report_at)  # fmt: skip
        .select_from(n.join(v, v.c.id == n.c.volunteer_id).outerjoin(t, t.c.node_id == n.c.node_id))
        .order_by(n.c.created_at, n.c.node_id)
    )


def _latest(*values: Optional[datetime]) -> Optional[str]:
    present = [x.replace(tzinfo=timezone.utc) if x.tzinfo is None else x for x in values if x is not None]
    return iso(max(present)) if present else None


ROWS: dict[str, tuple[Callable, Callable[[Any], tuple]]] = {
    "volunteers": (_volunteers_query, lambda r: (
        r.name, r.team, float(r.total_credit), int(r.total_samples), int(r.reports), int(r.nodes), iso(r.created_at),
        _latest(r.last_report_at, r.node_last_seen))),
    "teams": (_teams_query, lambda r: (r.team, int(r.members), float(r.total_credit))),
    "nodes": (_nodes_query, lambda r: (
        r.node_id[:8], r.name, _device_type(r.device), float(r.total_credit), int(r.total_samples), int(r.reports),
        _latest(r.last_seen, r.last_report_at))),
}  # fmt: skip


class _Writer:
    """One kind's JSON and CSV files, each gzip'd into a temporary file next to its final name."""

    def __init__(self, directory: Path, kind: str, generated_at: str):
        self.kind, self.rows, self.columns = kind, 0, COLUMNS[kind]
        self.paths = {fmt: directory / f"{kind}.{fmt}.gz" for fmt in ("json", "csv")}
        self.tmps = {fmt: path.with_name(f".{path.name}.{os.getpid()}.tmp") for fmt, path in self.paths.items()}
        # No file name and a fixed mtime in the gzip header: the bytes depend on the rows only.
        self.gz = {fmt: gzip.GzipFile(filename="", mode="wb", fileobj=open(tmp, "wb"), mtime=0) for fmt, tmp in self.tmps.items()}
        self.json = io.TextIOWrapper(self.gz["json"], encoding="utf-8", newline="\n")
        self.csv_text = io.TextIOWrapper(self.gz["csv"], encoding="utf-8", newline="")
        self.csv = csv.writer(self.csv_text)
        self.json.write(json.dumps({"generated_at": generated_at, "columns": self.columns})[:-1] + f', "{kind}": [')
        self.csv.writerow(self.columns)

    def write(self, chunk: list[tuple]) -> None:
        for values in chunk:
            self.json.write(("\n" if self.rows == 0 else ",\n") + json.dumps(dict(zip(self.columns, values))))
            self.csv.writerow(["" if value is None else value for value in values])
            self.rows += 1

    def commit(self) -> dict[str, str]:
        """Finish both files, rename them into place; their sha256 by file name."""
        self.json.write("\n]}\n")
        self.close()
        digests = {}
        for fmt, tmp in self.tmps.items():
            digests[self.paths[fmt].name] = _sha256(tmp)
            os.replace(tmp, self.paths[fmt])
        return digests

    def close(self) -> None:
        for text in (self.json, self.csv_text):
            if not text.closed:
                text.flush()
                raw = text.buffer.fileobj
                text.close()  # closes the GzipFile, not the file under it
                raw.close()

    def discard(self) -> None:
        self.close()
        for tmp in self.tmps.values():
            tmp.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


async def _chunks(engine: AsyncEngine, kind: str) -> AsyncIterator[list[tuple]]:
    query, shape = ROWS[kind]
    async with engine.connect() as conn:
        result = await conn.stream(query().execution_options(yield_per=CHUNK_ROWS))
        async for partition in result.partitions(CHUNK_ROWS):
            yield [shape(row) for row in partition]


async def write_exports(engine: AsyncEngine, directory: Path) -> dict:
    """Write every export into `directory` (created if missing) and then index.json; returns the index."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    generated_at = datetime.now(timezone.utc).isoformat()
    index: dict[str, Any] = {"generated_at": generated_at, "rows": {}, "files": {}}
    for kind in COLUMNS:
        writer = await asyncio.to_thread(_Writer, directory, kind, generated_at)
        try:
            async for chunk in _chunks(engine, kind):
                await asyncio.to_thread(writer.write, chunk)  # gzip off the event loop
            digests = await asyncio.to_thread(writer.commit)
        except BaseException:
            await asyncio.to_thread(writer.discard)
            raise
        index["rows"][kind] = writer.rows
        index["files"].update({name: {"sha256": sha, "bytes": (directory / name).stat().st_size} for name, sha in digests.items()})
    tmp = directory / f".{INDEX}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(index, indent=2) + "\n")
    os.replace(tmp, directory / INDEX)
    logger.info("Wrote stats exports to %s (%s)", directory, ", ".join(f"{n} {k}" for k, n in index["rows"].items()))
    return index


class ExportScheduler:
    """Regenerates the exports every `interval` seconds, the first time shortly after start; errors are logged."""

    def __init__(self, engine: AsyncEngine, directory: Path, interval: float, first_delay: float = FIRST_EXPORT_DELAY):
        self.engine, self.directory, self.interval, self.first_delay = engine, Path(directory), interval, first_delay
        self._task: Optional[asyncio.Task] = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="exports")

    async def _run(self) -> None:
        await asyncio.sleep(min(self.first_delay, self.interval))
        while True:
            try:
                await write_exports(self.engine, self.directory)
            except Exception:
                logger.exception("Writing the stats exports to %s failed; next try in %.0f s", self.directory, self.interval)
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


router = APIRouter(prefix="/api/v1/exports")


def _existing(request: Request, name: str) -> Path:
    directory = services(request).exports_dir
    if directory is None:
        raise ApiError(503, "exports_unavailable", "this coordinator publishes no stats exports")
    path = Path(directory) / name
    if not (Path(directory) / INDEX).is_file() or not path.is_file():
        raise ApiError(503, "exports_not_ready", "the stats exports have not been generated yet; try again in a minute")
    return path


@router.get("/")
async def export_index(request: Request) -> FileResponse:
    """index.json: generated_at, row counts, and the sha256 and size of each file."""
    return FileResponse(_existing(request, INDEX), media_type="application/json")


@router.get("/{name}")
async def export_file(request: Request, name: str) -> FileResponse:
    if name != INDEX and name not in FILES:
        raise ApiError(404, "unknown_export", f"no export named {name!r}; the files are {', '.join((INDEX, *FILES))}")
    media_type = "application/json" if name == INDEX else "application/gzip"
    return FileResponse(_existing(request, name), media_type=media_type, filename=name if name != INDEX else None)
