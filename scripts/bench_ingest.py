"""Ingestion benchmark: simulated volunteers publish signed reports to a real Mosquitto; a real coordinator process
(`--broker`; SQLite ledger, or PostgreSQL with --postgres) verifies and persists them. One run has two phases:

1. Flood: --reports reports (default 20,000) offered at once (or at --rate), to measure capacity.
   reports_per_s: flood reports persisted / wall time from its first publish to the receipt covering its last one.
2. Steady: an open-loop load of --latency-rate reports/s (default 5,000; 0 skips the phase) for --latency-seconds
   (default 10: 50,000 reports at the default rate), spread evenly over all volunteers (each one's seqs in order,
   continuing after the flood's), started once the flood has drained. A latency figure only means something at
   a stated load: under the flood, p99 is just the time to drain the backlog (reports ÷ throughput).
   p99_latency_s: per report of this phase, from just before its publish to the first retained receipt that
   covers its seq. offered_rate: the load the publishers actually offered in this phase (reports sent / seconds
   from its first publish to its last); the run warns if that fell short of --latency-rate.
   Ten seconds (or more) is many times every timer in the pipeline (batching, receipt coalescing, the
   sequencer's 2 s hold) and gives 500 reports in the top 1 %, so p99 is measured, not guessed from a handful.
- lost / doubled, over both phases: read from the ledger afterwards: (node, seq) pairs missing / granted twice.

Publishers are separate processes that sign everything before the timed phases, then write pre-encoded MQTT
PUBLISH packets (QoS 1) straight to a socket, --in-flight unacknowledged per connection, so that the load
generator costs little of the 2 cores; each volunteer's reports go out in seq order.
CPU seconds of each part (publishers, Mosquitto, coordinator) over each phase show where the time goes.

It measures ingestion, not work verification: the coordinator runs with --no-verify-work (reports are granted as
they are persisted), since the simulated volunteers have no DHT presence to check their work against.

The last stdout line is JSON: {"reports_per_s", "p99_latency_s", "offered_rate", "lost", "doubled"}.
Usage: python scripts/bench_ingest.py [--volunteers 200] [--reports 20000] [--latency-rate 5000]
    [--latency-seconds 10] [--publishers 2] [--in-flight 100] [--rate R] [--ingest-workers N]
    [--db URL | --postgres] [--keep DIR]
"""

import argparse
import asyncio
import contextlib
import itertools
import json
import multiprocessing
import os
import socket
import struct
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import NamedTuple

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hearth.processes import (exit_on_sigterm, python_argv, spawn_group, stop_group,  # noqa: E402
                              tree_cpu_seconds, wait_until)
from coordinator.mqtt_sink import packet_bounds  # noqa: E402
from scripts.mosquitto import Mosquitto, MosquittoMissing  # noqa: E402
from protocol.envelope import open_envelope  # noqa: E402

SWARM = "spirals"  # the coordinator's default swarm
RECEIPTS = f"hearth/v1/swarms/{SWARM}/nodes/+/receipts"


def publisher(index: int, url: str, port: int, volunteers: int, phases: list[tuple[int, int, float]], in_flight: int,
              ready, starts, results) -> None:  # fmt: skip
    """One publisher process: registers its volunteers, signs all their reports for every phase ((first seq,
    last seq, rate) each), then per phase waits for its start signal, publishes that phase's reports at QoS 1
    and sends back ({(node_id, seq): publish time}, CPU seconds)."""
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
    packet_ids = itertools.count()
    signed = []
    for first, last, rate in phases:
        # Round-robin over volunteers so every volunteer's seqs go out in order, interleaved with the others'.
        messages = [
            (key.node_id, seq, report_topic(SWARM, key.node_id),
             seal(ContributionReport(node_id=key.node_id, swarm_id=SWARM, seq=seq, epoch=seq, samples=256,
                                     compute_seconds=1.0, device="cpu", loss=0.5, time=time.time()), key))
            for seq in range(first, last + 1) for key in keys
        ]  # fmt: skip
        signed.append(([(node_id, seq, publish_packet(topic, payload, packet_id=next(packet_ids) % 65535 + 1))
                        for node_id, seq, topic, payload in messages], rate))  # fmt: skip
    ready.put(index)
    for number, (packets, rate) in enumerate(signed):
        starts[number].wait()
        cpu = time.process_time()
        sent = publish_all(port, packets, in_flight, client_id=f"bench-publisher-{index}-{number}", rate=rate)
        results.put((sent, time.process_time() - cpu))


# A publisher that writes pre-encoded MQTT 3.1.1 packets straight to the socket: a Python MQTT client costs more
# CPU per message than the coordinator is allowed to, and on 2 cores the load generator shares the machine.
def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def publish_packet(topic: str, payload: bytes, packet_id: int) -> bytes:
    """PUBLISH, QoS 1."""
    body = _string(topic) + struct.pack("!H", packet_id) + payload
    return b"\x32" + _remaining_length(len(body)) + body


def publish_all(port: int, packets, in_flight: int, client_id: str, rate: float = 0.0) -> dict:
    """Send every packet at QoS 1 with up to `in_flight` unacknowledged, at most `rate` per second (0: as fast
    as the broker acknowledges); {(node_id, seq): time it was sent}."""
    began = time.monotonic()
    sent: dict[tuple[str, int], float] = {}
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connect = _string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 0) + _string(client_id)
        sock.sendall(b"\x10" + _remaining_length(len(connect)) + connect)
        if _read_exactly(sock, 4)[3] != 0:
            raise RuntimeError("the broker refused the publisher's connection")
        acked, buffered, next_index = 0, b"", 0
        while acked < len(packets):
            due = int((time.monotonic() - began) * rate) + 1 if rate else len(packets)  # the offered load
            window = min(len(packets), acked + in_flight, due)
            if next_index < window:
                now = time.time()
                for node_id, seq, packet in packets[next_index:window]:
                    sent[(node_id, seq)] = now
                sock.sendall(b"".join(packet for _, _, packet in packets[next_index:window]))
                next_index = window
            if next_index == acked:  # all acknowledged, the next one is not due yet
                time.sleep(max(0.0, next_index / rate - (time.monotonic() - began)))
                continue
            data = sock.recv(65536)
            if not data:
                raise RuntimeError("the broker closed the publisher's connection")
            buffered += data
            acked += len(buffered) // 4  # only PUBACKs (4 bytes each) come back to a publisher
            buffered = buffered[len(buffered) // 4 * 4 :]
        sock.sendall(b"\xe0\x00")  # DISCONNECT
    return sent


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise RuntimeError("the broker closed the connection")
        data += chunk
    return data


async def receipt_payloads(port: int, subscribed: asyncio.Event):
    """(payload, arrival time) of every receipt, read by a bare MQTT 3.1.1 subscriber at QoS 0: like the
    publishers, the collector must cost little of the 2 cores (a Python MQTT client took ~0.1 core at 1,000
    receipts/s). Arrival is the time of the read that brought the receipt in whole."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        connect = _string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 0) + _string("bench-receipts")  # no keepalive
        subscribe = struct.pack("!H", 1) + _string(RECEIPTS) + b"\x00"
        writer.write(b"\x10" + _remaining_length(len(connect)) + connect + b"\x82"
                     + _remaining_length(len(subscribe)) + subscribe)  # fmt: skip
        buffer = bytearray()
        while True:
            data = await reader.read(65536)
            if not data:
                raise RuntimeError("the broker closed the receipt collector's connection")
            arrived = time.time()
            buffer += data
            while (bounds := packet_bounds(buffer)) is not None:  # None: the next packet is not all here yet
                start, end = bounds
                kind, body = buffer[0] >> 4, bytes(buffer[start:end])
                del buffer[:end]
                if kind == 2 and body[1] != 0:
                    raise RuntimeError("the broker refused the receipt collector's connection")
                if kind == 9:  # SUBACK
                    subscribed.set()
                elif kind == 3:  # PUBLISH, QoS 0: topic, then the payload
                    yield body[2 + int.from_bytes(body[:2], "big") :], arrived
    finally:
        writer.close()


async def collect_receipts(port: int, targets: list[int], nodes: list[str], subscribed: asyncio.Event,
                           reached: list[asyncio.Event], timeout: float) -> dict[str, list[tuple[int, float]]]:  # fmt: skip
    """Every receipt (last_seq, arrival time) per node; reached[i] is set once every node's receipt covers seq
    targets[i] (the last one of phase i), and collecting ends at the last target (or the timeout)."""
    receipts: dict[str, list[tuple[int, float]]] = defaultdict(list)
    latest = dict.fromkeys(nodes, 0)
    behind = [set(nodes) for _ in targets]  # per phase: the nodes whose receipts do not cover it yet
    try:
        async with asyncio.timeout(timeout), contextlib.aclosing(receipt_payloads(port, subscribed)) as payloads:
            async for payload, arrived in payloads:
                receipt = json.loads(payload)
                if "body" in receipt:  # sealed by the coordinator's key
                    receipt = open_envelope(payload).fields
                node_id, last_seq = receipt["node_id"], receipt["last_seq"]
                receipts[node_id].append((last_seq, arrived))
                if node_id not in latest or last_seq <= latest[node_id]:
                    continue
                latest[node_id] = last_seq
                for phase, target in enumerate(targets):
                    if last_seq >= target and node_id in behind[phase]:
                        behind[phase].discard(node_id)
                        if not behind[phase]:
                            reached[phase].set()
                if reached[-1].is_set():
                    break
    except TimeoutError:
        pass
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


async def _query(db_url: str, sql: str) -> list:
    from sqlalchemy import text

    from coordinator import db

    engine = db.create_engine(db_url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text(sql))).all()
    finally:
        await engine.dispose()


async def ledger_counts(db_url: str, sent: dict) -> tuple[int, int, int]:
    """(persisted, lost, doubled) read from the ledger."""
    rows = await _query(db_url, "SELECT node_id, seq, COUNT(*) FROM reports WHERE status = 'granted' GROUP BY node_id, seq")
    counts = {(node_id, seq): n for node_id, seq, n in rows}
    lost = sum(1 for key in sent if key not in counts)
    doubled = sum(n - 1 for n in counts.values() if n > 1)
    return sum(counts.values()), lost, doubled


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(work: Path, volunteers: int, reports: int, publishers: int, in_flight: int, timeout: float,
        ingest_workers: int = 0, rate: float = 0.0, latency_rate: float = 0.0, latency_seconds: float = 10.0,
        db_url: str | None = None) -> dict:  # fmt: skip
    per_volunteer = max(1, reports // volunteers)
    # the steady phase: seqs after the flood's, the same number for every volunteer
    steady_per_volunteer = max(1, round(latency_rate * latency_seconds / volunteers)) if latency_rate else 0
    db_url = db_url or f"sqlite+aiosqlite:///{work / 'c' / 'ledger.sqlite3'}"
    with Mosquitto(work_dir=work / "mosquitto") as broker:
        ready_file, log = work / "ready.json", (work / "coordinator.log").open("w")
        coordinator = spawn_group(python_argv("hearth", "coordinator", "serve", "--data-dir", str(work / "c"),
                                              "--db", db_url, "--port", "0", "--broker", broker.url,
                                              "--ingest-workers", str(ingest_workers), "--ready-file", str(ready_file),
                                              "--no-verify-work",  # simulated volunteers have no DHT presence
                                              "--rate-limit", "0", "--account-rate-limit", "0"),  # every volunteer registers from 127.0.0.1
                                  stdout=log, stderr=log)  # fmt: skip
        workers = []
        try:
            info = wait_until(lambda: ready_file.exists() and json.loads(ready_file.read_text()), 180,
                              what="the coordinator")  # fmt: skip
            ctx = multiprocessing.get_context("spawn")
            shares = [volunteers // publishers + (i < volunteers % publishers) for i in range(publishers)]
            phases = [Phase("flood", 1, per_volunteer, rate)]
            if steady_per_volunteer:
                phases.append(Phase("steady", per_volunteer + 1, per_volunteer + steady_per_volunteer, latency_rate))
            ready, results = ctx.Queue(), ctx.Queue()
            starts = [ctx.Event() for _ in phases]
            workers = [ctx.Process(target=publisher, args=(i, info["url"], broker.port, share,
                                                           [(p.first, p.last, p.rate * share / volunteers) for p in phases],
                                                           in_flight, ready, starts, results))
                       for i, share in enumerate(shares)]  # fmt: skip
            for worker in workers:
                worker.start()
            for _ in workers:
                ready.get(timeout=600)
            return asyncio.run(_measure(broker, coordinator, workers, phases, starts, results, timeout, db_url,
                                        info["url"]))  # fmt: skip
        finally:
            for worker in workers:
                worker.join(5)
                if worker.is_alive():
                    worker.kill()
            stop_group(coordinator, grace=30)


def _cpu_seconds(broker, coordinator) -> dict[str, float]:
    """CPU seconds so far of Mosquitto, the coordinator's own process and its children (ingest workers and
    whatever else it started), of this process (the receipt collector), and of the whole machine (busy, and
    stolen by the hypervisor)."""
    main = psutil.Process(coordinator.pid).cpu_times()
    children = tree_cpu_seconds(coordinator.pid) - main.user - main.system
    own = psutil.Process().cpu_times()  # this process: the receipt collector (it shares the cores too)
    machine = psutil.cpu_times()
    return {"mosquitto": tree_cpu_seconds(broker.process.pid), "coordinator": main.user + main.system,
            "coordinator's children": children, "receipt collector": own.user + own.system,
            MACHINE: machine.user + machine.nice + machine.system + machine.irq + machine.softirq,
            "stolen": machine.steal}  # fmt: skip


MACHINE = "machine"  # busy CPU seconds of the whole machine (Linux counts guest time in user)


class Phase(NamedTuple):
    name: str
    first: int  # seqs first..last of every volunteer
    last: int
    rate: float  # offered reports/s, all publishers together (0: as fast as the broker takes them)


async def _measure(broker, coordinator, workers, phases, starts, results, timeout, db_url, url) -> dict:
    subscribed = asyncio.Event()
    reached = [asyncio.Event() for _ in phases]
    node_ids = [row[0] for row in await _query(db_url, "SELECT node_id FROM nodes")]
    collector = asyncio.create_task(collect_receipts(broker.port, [p.last for p in phases], node_ids, subscribed,
                                                     reached, timeout * len(phases)))  # fmt: skip
    await subscribed.wait()
    measured = []
    for number, phase in enumerate(phases):
        cpu_before = _cpu_seconds(broker, coordinator)
        wall = time.monotonic()
        starts[number].set()
        sent: dict = {}
        cpu_publishers = 0.0
        for _ in workers:
            part, cpu_seconds = await asyncio.to_thread(results.get, True, timeout)
            sent.update(part)
            cpu_publishers += cpu_seconds
        try:
            await asyncio.wait_for(reached[number].wait(), timeout)
        except TimeoutError:
            print(f"{phase.name}: not every report had a receipt after {timeout:.0f} s", file=sys.stderr)
        window = time.monotonic() - wall
        cpu = {name: seconds - cpu_before.get(name, 0.0) for name, seconds in _cpu_seconds(broker, coordinator).items()}
        cpu["publishers (publishing only)"] = cpu_publishers
        # the whole machine's busy time as well: beyond the parts above, PostgreSQL's server with --postgres, or
        # another load that spoils the run (the kernel counts it in ticks: ±1 s off the parts' sum over 10 s)
        cpu["whole machine"], cpu["stolen by the hypervisor"] = cpu.pop(MACHINE), cpu.pop("stolen")
        measured.append({"phase": phase, "sent": sent, "window": window, "cpu": cpu})
        if not reached[number].is_set():
            break
    receipts = await collector
    everything = {key: t for m in measured for key, t in m["sent"].items()}
    persisted, lost, doubled = await ledger_counts(db_url, everything)
    for m in measured:
        sent = m["sent"]
        m["latencies"] = latencies(sent, receipts)
        first_publish, last_publish = min(sent.values()), max(sent.values())
        covered = [arrived for node_id, acks in receipts.items() for last_seq, arrived in acks
                   if last_seq >= m["phase"].last]  # fmt: skip
        # per node, the first receipt covering the phase's last seq; the phase ends with the latest of those
        first_covering = {}
        for node_id, acks in receipts.items():
            times = [arrived for last_seq, arrived in acks if last_seq >= m["phase"].last]
            if times:
                first_covering[node_id] = min(times)
        m["elapsed"] = (max(first_covering.values()) if first_covering else max(covered, default=last_publish)) - first_publish
        m["publish_s"] = last_publish - first_publish
    stats = httpx.get(f"{url}/api/v1/stats", timeout=10).json()
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    return {"phases": measured, "sent": len(everything), "persisted": persisted, "lost": lost, "doubled": doubled,
            "ingest": stats.get("ingest", {}), "commit_latency": _histogram_summary(metrics)}  # fmt: skip


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
    parser.add_argument("--reports", type=int, default=20_000, help="flood phase: reports in all (split evenly over volunteers)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="flood phase: offered load in reports/s, all publishers together (0: as fast as the broker takes them)")
    parser.add_argument("--latency-rate", type=float, default=5000.0,
                        help="steady phase: offered load in reports/s, whose p99 latency is reported (0: no steady phase)")
    parser.add_argument("--latency-seconds", type=float, default=10.0, help="steady phase: how long it offers that load")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument("--in-flight", type=int, default=100, help="unacknowledged publishes per publisher")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the last receipt of a phase")
    parser.add_argument("--ingest-workers", type=int, default=0, help="the coordinator's --ingest-workers")
    parser.add_argument("--db", metavar="URL", help="the coordinator's --db (default: SQLite in the work dir)")
    parser.add_argument("--postgres", action="store_true", help="run the ledger on a throwaway PostgreSQL cluster")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep the ledger and logs here")
    args = parser.parse_args()
    if args.volunteers < 1 or args.publishers < 1 or args.publishers > args.volunteers:
        parser.error("need at least one volunteer and one publisher, and no more publishers than volunteers")
    if args.latency_rate < 0 or args.latency_seconds <= 0:
        parser.error("--latency-rate must be 0 or more and --latency-seconds above 0")
    exit_on_sigterm()
    options = (args.volunteers, args.reports, args.publishers, args.in_flight, args.timeout, args.ingest_workers,
               args.rate, args.latency_rate, args.latency_seconds)  # fmt: skip
    try:
        with contextlib.ExitStack() as stack:
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                work = args.keep
            else:
                work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hearth-bench-ingest-")))
            db_url = args.db
            if args.postgres:
                from scripts.postgres import PostgresCluster

                db_url = stack.enter_context(PostgresCluster()).url  # its own directory, readable by postgres
            r = run(work, *options, db_url=db_url)
    except MosquittoMissing as e:
        sys.exit(str(e))
    print(f"reports:     {r['sent']:,} published by {args.publishers} process(es), {r['persisted']:,} persisted, "
          f"{r['lost']} lost, {r['doubled']} doubled; load average {os.getloadavg()[0]:.1f} at the end")
    summary = {"reports_per_s": 0.0, "p99_latency_s": float("nan"), "offered_rate": 0.0}
    for m in r["phases"]:
        phase, sent = m["phase"], m["sent"]
        rate = len(sent) / m["elapsed"] if m["elapsed"] > 0 else 0.0
        offered = len(sent) / m["publish_s"] if m["publish_s"] > 0 else 0.0
        p50, p99 = percentile(m["latencies"], 0.50), percentile(m["latencies"], 0.99)
        coordinator_us = (m["cpu"]["coordinator"] + m["cpu"]["coordinator's children"]) / max(len(sent), 1) * 1e6
        print(f"{phase.name}:{' ' * (11 - len(phase.name))}{len(sent):,} reports offered at {offered:,.0f}/s"
              + (f" (target {phase.rate:,.0f}/s)" if phase.rate else "")
              + f", {rate:,.0f}/s persisted (first publish → last receipt {m['elapsed']:.1f} s); publish → receipt"
              f" p50 {p50:.3f} s, p99 {p99:.3f} s, max {max(m['latencies'], default=float('nan')):.3f} s")  # fmt: skip
        print(f"             CPU seconds over {m['window']:.1f} s: " + ", ".join(f"{k} {v:.1f}" for k, v in m["cpu"].items())
              + f" (of {psutil.cpu_count()} cores); coordinator {coordinator_us:.0f} us/report")
        if phase.name == "flood":
            summary["reports_per_s"] = round(rate, 1)
            if len(r["phases"]) == 1:  # no steady phase: the flood's latency, as before
                summary["p99_latency_s"] = round(p99, 3)
                summary["offered_rate"] = round(offered, 1)
        else:
            summary["p99_latency_s"], summary["offered_rate"] = round(p99, 3), round(offered, 1)
            if offered < 0.95 * phase.rate:
                print(f"WARNING: the publishers offered only {offered:,.0f} of the {phase.rate:,.0f} reports/s asked"
                      " (the machine is too busy?): p99 is at that load", file=sys.stderr)  # fmt: skip
    print(f"coordinator received → committed: {r['commit_latency']}; ingest counters: {dict(Counter(r['ingest']))}")
    print(json.dumps({**summary, "lost": r["lost"], "doubled": r["doubled"]}))


if __name__ == "__main__":
    main()
