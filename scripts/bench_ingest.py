"""Ingestion benchmark: simulated volunteers publish signed reports to a real Mosquitto; a real coordinator process
(`--broker`, SQLite ledger) verifies and persists them.

- reports_per_s: reports persisted / wall time from the first publish to the last receipt.
- p99_latency_s: per report, from just before its publish to the first retained receipt that covers its seq.
- lost / doubled: read from the ledger file (read-only) afterwards: (node, seq) pairs missing / granted twice.

Publishers are separate processes (the Python MQTT client tops out around 5,000 QoS-1 messages/s per process),
each one MQTT connection with --in-flight publishes outstanding; each volunteer's reports go out in seq order.
CPU seconds of each part (publishers, Mosquitto, coordinator) over the window show where the time goes.

The last stdout line is JSON. Usage: python scripts/bench_ingest.py [--volunteers 200] [--reports 20000]
    [--publishers 2] [--in-flight 100] [--keep DIR]
"""

import argparse
import asyncio
import json
import logging
import multiprocessing
import sqlite3
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hearth.processes import python_argv, spawn_group, stop_group, tree_cpu_seconds, wait_until  # noqa: E402
from scripts.mosquitto import Mosquitto, MosquittoMissing  # noqa: E402

SWARM = "spirals"  # the coordinator's default swarm
RECEIPTS = f"hearth/v1/swarms/{SWARM}/nodes/+/receipts"


def publisher(index: int, url: str, port: int, volunteers: int, per_volunteer: int, in_flight: int,
              ready, start, results) -> None:  # fmt: skip
    """One publisher process: registers its volunteers, signs all their reports, waits for the start signal,
    publishes them at QoS 1, and sends back {(node_id, seq): publish time}."""
    from protocol.envelope import seal
    from protocol.messages import ContributionReport, VolunteerRegistration
    from protocol.signing import SigningKey
    from protocol.topics import report_topic

    keys = [SigningKey.generate() for _ in range(volunteers)]
    with httpx.Client(base_url=url, timeout=30) as api:
        for number, key in enumerate(keys):
            registration = VolunteerRegistration(name=f"bench-{index}-{number}", public_key=key.public_key, time=time.time())
            response = api.post("/api/v1/volunteers", content=seal(registration, key),
                                headers={"content-type": "application/json"})  # fmt: skip
            response.raise_for_status()
    # Round-robin over volunteers so every volunteer's seqs go out in order, interleaved with the others'.
    messages = [
        (key.node_id, seq, report_topic(SWARM, key.node_id),
         seal(ContributionReport(node_id=key.node_id, swarm_id=SWARM, seq=seq, epoch=seq, samples=256,
                                 compute_seconds=1.0, device="cpu", loss=0.5, time=time.time()), key))
        for seq in range(1, per_volunteer + 1) for key in keys
    ]  # fmt: skip
    ready.put(index)
    start.wait()
    cpu = time.process_time()
    sent = asyncio.run(_publish(port, messages, in_flight))
    results.put((sent, time.process_time() - cpu))


async def _publish(port: int, messages, in_flight: int) -> dict:
    import aiomqtt

    sent: dict[tuple[str, int], float] = {}
    slots = asyncio.Semaphore(in_flight)
    quiet = logging.getLogger("bench_ingest.mqtt")
    quiet.setLevel(logging.ERROR)  # aiomqtt warns about every publish beyond 10 pending: that is the point here
    async with aiomqtt.Client("127.0.0.1", port, max_inflight_messages=in_flight, logger=quiet) as client:

        async def one(node_id, seq, topic, payload):
            try:
                sent[(node_id, seq)] = time.time()
                await client.publish(topic, payload, qos=1)
            finally:
                slots.release()

        tasks = []
        for message in messages:  # FIFO semaphore + tasks started in order: paho sends them in this order
            await slots.acquire()
            tasks.append(asyncio.create_task(one(*message)))
        await asyncio.gather(*tasks)
    return sent


async def collect_receipts(port: int, expected: dict[str, int], subscribed: asyncio.Event, done: asyncio.Event,
                           timeout: float) -> dict[str, list[tuple[int, float]]]:  # fmt: skip
    """Every receipt (last_seq, arrival time) per node until each node's receipt covers its last report."""
    import aiomqtt

    receipts: dict[str, list[tuple[int, float]]] = defaultdict(list)
    complete = set()
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(RECEIPTS, qos=0)
        subscribed.set()
        try:
            async with asyncio.timeout(timeout):
                async for message in client.messages:
                    arrived = time.time()
                    receipt = json.loads(message.payload)
                    node_id, last_seq = receipt["node_id"], receipt["last_seq"]
                    receipts[node_id].append((last_seq, arrived))
                    if node_id in expected and last_seq >= expected[node_id]:
                        complete.add(node_id)
                        if len(complete) == len(expected):
                            break
        except TimeoutError:
            pass
    done.set()
    return receipts


def latencies(sent: dict[tuple[str, int], float], receipts: dict[str, list[tuple[int, float]]]) -> list[float]:
    """Per report: time of the first receipt whose last_seq covers it, minus its publish time."""
    result = []
    by_node = defaultdict(list)
    for (node_id, seq), published in sent.items():
        by_node[node_id].append((seq, published))
    for node_id, reports in by_node.items():
        acks = sorted(receipts.get(node_id, []), key=lambda r: r[1])
        reports.sort()
        i = 0
        for last_seq, arrived in acks:
            while i < len(reports) and reports[i][0] <= last_seq:
                result.append(max(0.0, arrived - reports[i][1]))
                i += 1
    return result


def ledger_counts(db_path: Path, sent: dict) -> tuple[int, int, int]:
    """(persisted, lost, doubled) from the ledger file, opened read-only."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT node_id, seq, COUNT(*) FROM reports WHERE status = 'granted' GROUP BY node_id, seq")
        counts = {(node_id, seq): n for node_id, seq, n in rows}
    lost = sum(1 for key in sent if key not in counts)
    doubled = sum(n - 1 for n in counts.values() if n > 1)
    return sum(counts.values()), lost, doubled


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(work: Path, volunteers: int, reports: int, publishers: int, in_flight: int, timeout: float) -> dict:
    per_volunteer = max(1, reports // volunteers)
    with Mosquitto(work_dir=work / "mosquitto") as broker:
        ready_file, log = work / "ready.json", (work / "coordinator.log").open("w")
        coordinator = spawn_group(python_argv("hearth", "coordinator", "serve", "--data-dir", str(work / "c"),
                                              "--port", "0", "--broker", broker.url, "--ready-file", str(ready_file),
                                              "--rate-limit", "0"),  # every volunteer registers from 127.0.0.1
                                  stdout=log, stderr=log)  # fmt: skip
        workers = []
        try:
            info = wait_until(lambda: ready_file.exists() and json.loads(ready_file.read_text()), 180,
                              what="the coordinator")  # fmt: skip
            ctx = multiprocessing.get_context("spawn")
            ready, start, results = ctx.Queue(), ctx.Event(), ctx.Queue()
            shares = [volunteers // publishers + (i < volunteers % publishers) for i in range(publishers)]
            workers = [ctx.Process(target=publisher, args=(i, info["url"], broker.port, share, per_volunteer,
                                                           in_flight, ready, start, results))
                       for i, share in enumerate(shares)]  # fmt: skip
            for worker in workers:
                worker.start()
            for _ in workers:
                ready.get(timeout=300)
            return asyncio.run(_measure(broker, coordinator, workers, start, results, per_volunteer, timeout,
                                        work / "c" / "ledger.sqlite3", info["url"]))  # fmt: skip
        finally:
            for worker in workers:
                worker.join(5)
                if worker.is_alive():
                    worker.kill()
            stop_group(coordinator, grace=30)


async def _measure(broker, coordinator, workers, start, results, per_volunteer, timeout, db_path, url) -> dict:
    subscribed, done = asyncio.Event(), asyncio.Event()
    node_ids = _registered_nodes(db_path)
    expected = {node_id: per_volunteer for node_id in node_ids}
    collector = asyncio.create_task(collect_receipts(broker.port, expected, subscribed, done, timeout))
    await subscribed.wait()
    parts = {"mosquitto": [broker.process.pid], "coordinator": [coordinator.pid]}
    cpu_before = {name: sum(tree_cpu_seconds(pid) for pid in pids) for name, pids in parts.items()}
    wall = time.monotonic()
    start.set()
    sent: dict = {}
    cpu_publishers = 0.0
    for _ in workers:
        part, cpu_seconds = await asyncio.to_thread(results.get, True, timeout)
        sent.update(part)
        cpu_publishers += cpu_seconds
    publish_end = time.time()
    receipts = await collector
    window = time.monotonic() - wall
    cpu = {name: sum(tree_cpu_seconds(pid) for pid in pids) - cpu_before[name] for name, pids in parts.items()}
    cpu["publishers (publishing only)"] = cpu_publishers
    persisted, lost, doubled = ledger_counts(db_path, sent)
    delays = latencies(sent, receipts)
    first_publish = min(sent.values())
    last_receipt = max(t for acks in receipts.values() for _, t in acks)
    stats = httpx.get(f"{url}/api/v1/stats", timeout=10).json()
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    return {"sent": len(sent), "persisted": persisted, "lost": lost, "doubled": doubled,
            "elapsed": last_receipt - first_publish, "publish_s": publish_end - first_publish, "window": window,
            "latencies": delays, "cpu": cpu, "ingest": stats.get("ingest", {}),
            "commit_latency": _histogram_summary(metrics)}  # fmt: skip


def _registered_nodes(db_path: Path) -> list[str]:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
        return [row[0] for row in conn.execute("SELECT node_id FROM nodes")]


def _histogram_summary(metrics: str) -> str:
    """The coordinator's own received → committed latency histogram (count, sum) from /metrics, if exported."""
    values = {}
    for line in metrics.splitlines():
        if line.startswith("#") or "latency" not in line:
            continue
        name, _, value = line.rpartition(" ")
        if name.endswith("_sum") or name.endswith("_count"):
            values[name] = float(value)
    sums = [v for k, v in values.items() if k.endswith("_sum")]
    counts = [v for k, v in values.items() if k.endswith("_count")]
    if not sums or not counts or not counts[0]:
        return "n/a"
    return f"mean {sums[0] / counts[0] * 1000:.0f} ms over {counts[0]:.0f} reports"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volunteers", type=int, default=200)
    parser.add_argument("--reports", type=int, default=20_000, help="reports in all (split evenly over volunteers)")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument("--in-flight", type=int, default=100, help="unacknowledged publishes per publisher")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the last receipt")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep the ledger and logs here")
    args = parser.parse_args()
    try:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            r = run(args.keep, args.volunteers, args.reports, args.publishers, args.in_flight, args.timeout)
        else:
            with tempfile.TemporaryDirectory(prefix="hearth-bench-ingest-") as work:
                r = run(Path(work), args.volunteers, args.reports, args.publishers, args.in_flight, args.timeout)
    except MosquittoMissing as e:
        sys.exit(str(e))
    rate = r["persisted"] / r["elapsed"] if r["elapsed"] > 0 else 0.0
    p50, p99 = percentile(r["latencies"], 0.50), percentile(r["latencies"], 0.99)
    cpu = r["cpu"]
    print(f"reports:     {r['sent']:,} published by {args.publishers} process(es), {r['persisted']:,} persisted, "
          f"{r['lost']} lost, {r['doubled']} doubled")
    print(f"throughput:  {rate:,.0f} reports/s persisted (first publish → last receipt {r['elapsed']:.1f} s); "
          f"publishing alone took {r['publish_s']:.1f} s ({r['sent'] / max(r['publish_s'], 1e-9):,.0f}/s)")
    print(f"latency:     publish → receipt p50 {p50:.2f} s, p99 {p99:.2f} s; coordinator received → committed: "
          f"{r['commit_latency']}")
    print(f"CPU seconds over {r['window']:.1f} s: " + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items())
          + f" (of {psutil.cpu_count()} cores)")
    print(f"ingest counters: {dict(Counter(r['ingest']))}")
    print(json.dumps({"reports_per_s": round(rate, 1), "p99_latency_s": round(p99, 3), "lost": r["lost"],
                      "doubled": r["doubled"]}))  # fmt: skip


if __name__ == "__main__":
    main()
