"""Leaderboard benchmark: seed a ledger with N volunteers and M reports, then measure server-side latency of the
leaderboard API, the leaderboard page and volunteer pages through a real uvicorn.

    .venv/bin/python scripts/bench_leaderboard.py                      # 1,000,000 volunteers, 20,000,000 reports
    .venv/bin/python scripts/bench_leaderboard.py --volunteers 10000 --reports 200000

Seeding: the schema comes from the coordinator's own migrations; rows are generated inside SQLite (recursive
CTEs, journal off) and every derived table is filled from the reports exactly as the ledger would have it: one
grants row per granted report, node/volunteer/team/swarm totals as the sums, recent average credit as BOINC's
continuous-time average decayed to the end of the seeding. The seeded file is kept (under the user cache dir, or
--db) and reused by later runs of the same size.

Measuring: the coordinator's HTTP app (the same create_app as `hearth coordinator serve`, without broker or DHT)
runs under uvicorn in a child process; this process sends sequential keep-alive requests from one client and
takes the wall time of each, request sent to body read, and the server process's CPU time spent meanwhile (stderr,
per kind: on a loaded machine the figure to compare). The rankings snapshot is warmed first. Last stdout line:
{"p95_ms": API p95, "page_p95_ms": leaderboard page p95, "volunteer_page_p95_ms": …, "volunteers": N, "reports": M}
"""

import argparse
import asyncio
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FLOPS_PER_SAMPLE = 3_685_888  # the spirals task's, as measured by the coordinator
FLOPS_PER_CREDIT = 4.32e11
HALF_LIFE_DAYS = 7.0
SPAN_DAYS = 30.0  # reports are spread over the last 30 days
TEAMS = 1000  # every third volunteer is in one of these
REPORTS_PER_EPOCH = 200
SERVER_START_TIMEOUT = 600.0


def default_db(volunteers: int, reports: int) -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("hearth")) / "bench" / f"leaderboard-{volunteers}-{reports}.sqlite3"


def create_schema(path: Path) -> None:
    """The coordinator's own entry point: `alembic upgrade head` on a new or existing ledger."""
    from coordinator import db

    async def run() -> None:
        engine = db.create_engine(f"sqlite+aiosqlite:///{path}")
        try:
            await db.create_schema(engine)
        finally:
            await engine.dispose()

    asyncio.run(run())


def seed(path: Path, volunteers: int, reports: int) -> None:
    """Fill a freshly migrated ledger; each step is one INSERT … SELECT inside SQLite."""
    now = time.time()
    start = now - SPAN_DAYS * 86400
    epochs = max(1, reports // REPORTS_PER_EPOCH)
    per_volunteer = max(1, reports // volunteers)
    ln2 = 0.6931471805599453
    con = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-400000", "temp_store=MEMORY", "foreign_keys=OFF"):
        con.execute(f"PRAGMA {pragma}")

    def step(what: str, sql: str, *params) -> None:
        began = time.perf_counter()
        con.execute("BEGIN")
        con.execute(sql, params)
        con.execute("COMMIT")
        print(f"  {what}: {time.perf_counter() - began:.1f} s", file=sys.stderr, flush=True)

    count = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?)"
    at = "datetime(?, 'unixepoch')"
    step("swarm", f"INSERT INTO swarms (swarm_id, title, run_id, task, hyperparameters, flops_per_sample, created_at) "
                  f"VALUES ('spirals', 'Spirals', 'hearth-spirals-bench', 'spirals', ?, ?, {at})",
         json.dumps({"target_batch_size": 4096, "batch_size": 256, "learning_rate": 0.002, "matchmaking_time": 3.0,
                     "averaging_timeout": 30.0}), FLOPS_PER_SAMPLE, start)  # fmt: skip
    step("volunteers", f"{count} INSERT INTO volunteers (id, name, team, created_at) SELECT x, printf('volunteer-%07d', x), "
                       f"CASE WHEN x % 3 = 0 THEN printf('team-%04d', x % {TEAMS}) END, {at} FROM c", volunteers, start)
    step("teams", f"INSERT INTO teams (name, founder_id, created_at) SELECT team, MIN(id), MIN(created_at) "
                  f"FROM volunteers WHERE team IS NOT NULL GROUP BY team")  # fmt: skip
    step("nodes", f"INSERT INTO nodes (node_id, public_key, volunteer_id, device, online, swarm_id, last_seen, "
                  f"last_seq, created_at) SELECT printf('%032x', id), printf('%043d', id), id, 'cpu:8', id % 100 = 0, "
                  f"'spirals', created_at, ?, created_at FROM volunteers", per_volunteer)  # fmt: skip
    # reports x = 1…M in volunteer order (so the (node, seq) and (volunteer, id) indexes fill sequentially);
    # each volunteer's reports walk through consecutive epochs; the (swarm, epoch) index is built afterwards
    con.execute("DROP INDEX ix_reports_swarm_epoch")
    step("reports", f"{count} INSERT INTO reports (id, node_id, volunteer_id, swarm_id, seq, epoch, samples, compute_seconds, "
                    f"device, loss, group_size, status, reason, credit, received_at) "
                    f"SELECT x, printf('%032x', v), v, 'spirals', x - (v - 1) * ?, e, s, s / 800.0, 'cpu:8', "
                    f"2.0 / sqrt(e) + (abs(random()) % 1000) / 20000.0, 2 + x % 7, 'granted', NULL, s * ? / ?, "
                    f"datetime(? + e * ?, 'unixepoch') "
                    f"FROM (SELECT x, min((x - 1) / ? + 1, ?) AS v, (x - 1) % ? + 1 AS e, 100 + abs(random()) % 1900 AS s "
                    f"FROM c)",
         reports, per_volunteer, FLOPS_PER_SAMPLE, FLOPS_PER_CREDIT, start, SPAN_DAYS * 86400 / epochs, per_volunteer,
         volunteers, epochs)  # fmt: skip
    step("reports index by swarm and epoch", "CREATE INDEX ix_reports_swarm_epoch ON reports (swarm_id, epoch)")
    step("grants", "INSERT INTO grants (report_id, rule, credit, granted_at) SELECT id, 'flops-v1', credit, received_at "
                   "FROM reports")  # fmt: skip
    # BOINC's average in continuous time: Σ credit · ln2/T½ · 2^(−age/T½), per day, as of `now`
    rac = f"SUM(r.credit * {ln2} / {HALF_LIFE_DAYS} * exp(-(? - unixepoch(r.received_at)) / 86400.0 * {ln2} / {HALF_LIFE_DAYS}))"
    sums = f"SUM(r.credit), SUM(r.samples), COUNT(*), MAX(r.received_at), {rac}, {at}"
    columns = "credit, samples, reports, last_report_at, rac, rac_updated_at"
    step("volunteer_totals", f"INSERT INTO volunteer_totals (volunteer_id, {columns}, pending_credit, pending_reports) "
                             f"SELECT r.volunteer_id, {sums}, 0, 0 FROM reports r GROUP BY r.volunteer_id", now, now)
    step("node_totals", f"INSERT INTO node_totals (node_id, {columns}) SELECT r.node_id, {sums} FROM reports r "
                        f"GROUP BY r.node_id", now, now)  # fmt: skip
    step("team_totals", f"INSERT INTO team_totals (team, {columns}) SELECT v.team, {sums} FROM reports r "
                        f"JOIN volunteers v ON v.id = r.volunteer_id WHERE v.team IS NOT NULL GROUP BY v.team", now, now)
    step("swarm_totals", f"INSERT INTO swarm_totals (swarm_id, {columns}) SELECT r.swarm_id, {sums} FROM reports r "
                         f"GROUP BY r.swarm_id", now, now)  # fmt: skip
    began = time.perf_counter()
    con.execute("ANALYZE")
    con.execute("PRAGMA journal_mode=WAL")
    con.close()
    print(f"  analyze: {time.perf_counter() - began:.1f} s", file=sys.stderr, flush=True)


def prepare(path: Path, volunteers: int, reports: int) -> None:
    done = path.with_suffix(".complete")
    if path.exists() and done.exists():
        # a ledger seeded by an older checkout: bring it to the newest migration, as the coordinator does at start
        print(f"Reusing the seeded ledger {path}; migrating it to head", file=sys.stderr, flush=True)
        began = time.perf_counter()
        create_schema(path)
        print(f"  migrated in {time.perf_counter() - began:.1f} s", file=sys.stderr, flush=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"), done):
        stale.unlink(missing_ok=True)
    print(f"Seeding {volunteers:,} volunteers and {reports:,} reports into {path}", file=sys.stderr, flush=True)
    began = time.perf_counter()
    create_schema(path)
    seed(path, volunteers, reports)
    done.write_text(json.dumps({"volunteers": volunteers, "reports": reports}))
    print(f"Seeded in {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)


def serve(path: Path, port_file: Path) -> None:
    """Child process: the coordinator's HTTP app over the seeded ledger, on 127.0.0.1 at a free port."""
    import logging

    import uvicorn

    from coordinator import db
    from coordinator.api import Services
    from coordinator.app import _Server, create_app, listening_socket
    from coordinator.ledger import Ledger

    logging.basicConfig(level=logging.WARNING)

    async def run() -> None:
        engine = db.create_engine(f"sqlite+aiosqlite:///{path}")
        app = create_app(Services(Ledger(engine), "mqtt://127.0.0.1:1883", "bench"))
        sock = listening_socket("127.0.0.1", 0)  # the coordinator's own (TCP_NODELAY on accepted connections)
        server = _Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        port_file.write_text(str(sock.getsockname()[1]))
        await task

    asyncio.run(run())


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20, method="inclusive")[-1] if len(samples) >= 2 else samples[0]


def paths(volunteers: int, rng: random.Random) -> tuple[list[str], list[str]]:
    """The API requests and the leaderboard page requests, cycled through while measuring."""
    deep = max(0, volunteers - 100)
    api = [f"/api/v1/leaderboard?limit=100&offset={offset}" for offset in (0, 100, 1000, volunteers // 2, deep)]
    api += [f"/api/v1/leaderboard?limit=100&search=volunteer-{rng.randint(1, volunteers):07d}",
            "/api/v1/leaderboard?limit=100&search=volunteer-00"]  # fmt: skip
    last_page = max(1, (volunteers + 49) // 50)
    pages = ["/", "/?page=2", f"/?page={max(1, last_page // 2)}", f"/?page={last_page}", "/?sort=rac",
             f"/?sort=samples&page={max(1, last_page // 3)}", f"/?q=volunteer-{rng.randint(1, volunteers):07d}",
             "/?q=volunteer-00", "/?view=teams"]  # fmt: skip
    return api, pages


def warm_up(url: str, volunteers: int) -> None:
    """First requests build the rankings snapshot, compile templates and describe the task."""
    import httpx

    api, pages = paths(volunteers, random.Random(1))
    with httpx.Client(base_url=url, timeout=600) as client:
        for path in api + pages + ["/volunteers/volunteer-0000001", "/swarms/spirals"]:
            client.get(path).raise_for_status()


def measure(url: str, volunteers: int, requests: int, server_pid: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Wall milliseconds of every request by kind, and the server's CPU milliseconds per request by kind (what
    the server spent, whatever else the machine was doing: the figure to compare on a loaded machine)."""
    import httpx
    import psutil

    rng = random.Random(2)
    api, pages = paths(volunteers, rng)
    server = psutil.Process(server_pid)
    timings: dict[str, list[float]] = {"api": [], "page": [], "volunteer_page": [], "swarm_page": []}
    cpu: dict[str, float] = dict.fromkeys(timings, 0.0)
    with httpx.Client(base_url=url, timeout=60) as client:

        def timed(kind: str, path: str) -> None:
            before = server.cpu_times()
            began = time.perf_counter()
            response = client.get(path)
            elapsed = (time.perf_counter() - began) * 1000
            after = server.cpu_times()
            if response.status_code != 200:
                raise SystemExit(f"GET {path} answered {response.status_code}: {response.text[:300]}")
            timings[kind].append(elapsed)
            cpu[kind] += (after.user + after.system - before.user - before.system) * 1000

        for i in range(requests):
            timed("api", api[i % len(api)])
            timed("page", pages[i % len(pages)])
            timed("volunteer_page", f"/volunteers/volunteer-{rng.randint(1, volunteers):07d}")
            if i % 10 == 0:  # for information (stderr): the dashboard reads the latest 200 epochs of reports
                timed("swarm_page", "/swarms/spirals")
    return timings, {kind: cpu[kind] / len(timings[kind]) for kind in timings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volunteers", type=int, default=1_000_000)
    parser.add_argument("--reports", type=int, default=20_000_000)
    parser.add_argument("--requests", type=int, default=300, help="requests per kind (API, page, volunteer page)")
    parser.add_argument("--db", type=Path, help="seeded ledger file (default: in the user cache dir, per size)")
    parser.add_argument("--seed-only", action="store_true", help="seed (or find) the ledger file and stop")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.volunteers < 1 or args.reports < args.volunteers:
        parser.error("need at least 1 volunteer and at least one report per volunteer")
    path = args.db or default_db(args.volunteers, args.reports)
    if args.serve:
        serve(path, args.port_file)
        return
    prepare(path, args.volunteers, args.reports)
    if args.seed_only:
        return

    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        argv = [sys.executable, __file__, "--serve", "--db", str(path), "--port-file", str(port_file),
                "--volunteers", str(args.volunteers), "--reports", str(args.reports)]  # fmt: skip
        server = subprocess.Popen(argv, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            deadline = time.monotonic() + SERVER_START_TIMEOUT
            while not port_file.exists() or not port_file.read_text():
                if server.poll() is not None:
                    raise SystemExit(f"the benchmark server exited with {server.returncode}")
                if time.monotonic() > deadline:
                    raise SystemExit("the benchmark server did not start")
                time.sleep(0.05)
            url = f"http://127.0.0.1:{port_file.read_text()}"
            began = time.perf_counter()
            warm_up(url, args.volunteers)
            print(f"Warm-up (rankings of {args.volunteers:,} volunteers built) in {time.perf_counter() - began:.1f} s",
                  file=sys.stderr)  # fmt: skip
            began = time.perf_counter()
            timings, cpu = measure(url, args.volunteers, args.requests, server.pid)
            count = sum(len(values) for values in timings.values())
            print(f"{count} requests in {time.perf_counter() - began:.1f} s; load average {os.getloadavg()[0]:.1f}",
                  file=sys.stderr)  # fmt: skip
        finally:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    for kind, values in timings.items():
        print(f"{kind:15s} p50 {statistics.median(values):6.1f} ms  p95 {p95(values):6.1f} ms  max {max(values):6.1f} ms  "
              f"server CPU {cpu[kind]:5.1f} ms/request", file=sys.stderr)  # fmt: skip
    print(json.dumps({"p95_ms": round(p95(timings["api"]), 2), "page_p95_ms": round(p95(timings["page"]), 2),
                      "volunteer_page_p95_ms": round(p95(timings["volunteer_page"]), 2),
                      "volunteers": args.volunteers, "reports": args.reports}))  # fmt: skip


if __name__ == "__main__":
    main()
