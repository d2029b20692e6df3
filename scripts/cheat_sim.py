"""Cheater simulation: a real swarm on loopback (a `hearth coordinator serve --verify-work` with its embedded broker
and DHT peer, and `hearth join` processes) with honest nodes and three cheaters, then what the ledger made of them.

The cheaters run the real node with one part replaced inside their own process (never in production code):
- inflator: every epoch's report claims twice the samples it trained (Accountant.close_epoch);
- garbage: its gradients are random noise instead of real ones (Trainer.compute_gradients: what averaging gets,
  and what its audit answers go through);
- replayer: trains honestly, and after each report re-sends an old report's exact bytes and a re-signed copy of
  its previous report under a new sequence number.

Figures (last stdout line, JSON):
- inflator_credit_ratio: the inflator's share of the credit ÷ its share of the real work (the samples it really
  trained in its reported epochs; shares among the honest nodes, the inflator and the replayer's own reports),
  so 1.0 = paid exactly its true share;
- garbage_caught_after_audits: audits of the garbage node up to and including its first failed one;
- replays_accepted: replayed reports that earned credit (re-signed copies granted, or an epoch granted twice);
- honest_share_error: the largest relative error of an honest node's share of the credit against its share of the
  real work (honest nodes, the inflator and the replayer's own reports; the garbage node did none), i.e.
  |credit share ÷ work share − 1|; stderr also shows each node's credit ÷ the credit of its real work;
- audit_cost_fraction: (validator + nodes' audit compute seconds) ÷ the compute seconds of all reports.

Usage: .venv/bin/python scripts/cheat_sim.py --seconds 180   (a run takes about --seconds + 90 s on 2 cores)
"""

import argparse
import dataclasses
import json
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hearth.processes import exit_on_sigterm, python_argv, spawn_group, stop_group, wait_until  # noqa: E402

ROLES = ("inflator", "garbage", "replayer")
GARBAGE_STD = 0.01  # the random gradients' scale: about that of the task's real ones
SWARM_ID = "cheat-sim"


# --- the cheaters (run inside their own node process) -----------------------------------------------------------
def _log(data_dir: Path, entry: dict) -> None:
    with (data_dir / "cheat.jsonl").open("a") as f:
        f.write(json.dumps(entry) + "\n")


def patch_inflator(data_dir: Path) -> None:
    from node.accounting import Accountant

    honest_close = Accountant.close_epoch

    def close_epoch(self, *args, **kwargs):
        contribution = honest_close(self, *args, **kwargs)
        _log(data_dir, {"epoch": contribution.epoch, "true": contribution.samples, "claimed": contribution.samples * 2})
        return dataclasses.replace(contribution, samples=contribution.samples * 2)

    Accountant.close_epoch = close_epoch


def patch_garbage(data_dir: Path) -> None:
    import torch

    from node.trainer import Trainer

    def compute_gradients(self, model, batch, amp: bool = False):
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = self.task.loss(model, batch)
        loss.backward()
        with torch.no_grad():
            for param in model.parameters():
                if param.grad is not None:
                    param.grad.normal_(0.0, GARBAGE_STD)
        return loss

    Trainer.compute_gradients = compute_gradients


def patch_replayer(data_dir: Path) -> None:
    from node.reporter import Reporter

    honest_submit, honest_flush = Reporter.submit, Reporter._flush_outbox
    state = {"previous": None, "old": [], "raw_to_send": []}

    def submit(self, contribution) -> None:
        honest_submit(self, contribution)
        seq, topic, payload = self.outbox.pending()[-1]
        state["old"].append((seq, topic, payload))
        if state["previous"] is not None:  # the previous epoch's report again, re-signed with a fresh seq
            honest_submit(self, state["previous"])
            _log(data_dir, {"resigned_seq": self.outbox.pending()[-1][0], "epoch": state["previous"].epoch})
        if len(state["old"]) > 1:
            state["raw_to_send"].append(state["old"][-2])  # an already-sent report, byte for byte
        state["previous"] = contribution

    async def flush(self, client) -> None:
        await honest_flush(self, client)
        while state["raw_to_send"]:
            seq, topic, payload = state["raw_to_send"].pop()
            await client.publish(topic, payload, qos=1)
            _log(data_dir, {"raw_replay_seq": seq})

    Reporter.submit, Reporter._flush_outbox = submit, flush


def run_cheater(role: str, data_dir: Path, hearth_args: list[str]) -> None:
    """`hearth join …`, whose supervised node process (node.worker) is this script's `worker` with the patch."""
    import hearth.processes
    from hearth.cli import main

    def worker_argv(module: str, *args: str) -> list[str]:
        if module != "node.worker":
            return python_argv(module, *args)
        return [sys.executable, __file__, "worker", role, str(data_dir), *args]

    hearth.processes.python_argv = worker_argv  # `hearth join` imports it when it starts the node process
    sys.argv = ["hearth", *hearth_args]
    main()


def run_worker(role: str, data_dir: Path, worker_args: list[str]) -> int:
    data_dir.mkdir(parents=True, exist_ok=True)
    {"inflator": patch_inflator, "garbage": patch_garbage, "replayer": patch_replayer}[role](data_dir)
    from node.worker import main

    return main(worker_args)


# --- the simulation ---------------------------------------------------------------------------------------------
def start_coordinator(work: Path, checkpoint_every: float):
    ready = work / "coordinator-ready.json"
    argv = python_argv("hearth", "-v", "coordinator", "serve", "--data-dir", str(work / "coordinator"), "--port", "0",
                       "--broker-port", "0", "--dht-port", "0", "--ready-file", str(ready), "--verify-work",
                       "--checkpoint-every", str(checkpoint_every), "--rate-limit", "0")  # fmt: skip
    process = spawn_group(argv, stdout=(work / "coordinator.log").open("w"), stderr=subprocess.STDOUT)

    def is_ready():
        if process.poll() is not None:
            raise RuntimeError(f"the coordinator exited; see {work / 'coordinator.log'}")
        return ready.exists() and json.loads(ready.read_text())

    return process, wait_until(is_ready, 180, what="the coordinator")


def start_node(work: Path, url: str, name: str, role: str | None, seconds: float, peers: int):
    data_dir = work / name
    join = ["-v", "join", url, "--name", name, "--data-dir", str(data_dir), "--threads", "1", "--view", "log",
            "--swarm", SWARM_ID, "--min-peers", str(peers), "--duration", str(seconds)]  # fmt: skip
    argv = python_argv("hearth", *join) if role is None else [sys.executable, __file__, "cheater", role, str(data_dir), *join]
    return spawn_group(argv, stdout=(work / f"{name}.log").open("w"), stderr=subprocess.STDOUT, cwd=Path(__file__).parents[1])


def pending_reports(database: Path) -> int:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30) as conn:
        return conn.execute("SELECT COUNT(*) FROM reports WHERE status = 'pending'").fetchone()[0]


def figures(work: Path, honest: list[str]) -> dict:
    conn = sqlite3.connect(work / "coordinator" / "ledger.sqlite3")
    node_of = dict(conn.execute("SELECT v.name, n.node_id FROM volunteers v JOIN nodes n ON n.volunteer_id = v.id"))

    def reports(name: str) -> list[tuple]:
        return conn.execute("SELECT seq, epoch, samples, status, credit, reason, compute_seconds FROM reports "
                            "WHERE node_id = ? ORDER BY seq", (node_of[name],)).fetchall()  # fmt: skip

    flops = conn.execute("SELECT flops_per_sample FROM swarms WHERE swarm_id = ?", (SWARM_ID,)).fetchone()[0]
    per_sample = flops / 4.32e11

    true_work, credit = {}, {}  # credit units, over decided reports: what each really did and what it was granted
    for name in honest:
        rows = [r for r in reports(name) if r[3] != "pending"]
        true_work[name] = sum(r[2] for r in rows) * per_sample  # honest claims are true
        credit[name] = sum(r[4] for r in rows if r[3] == "granted")

    inflator_log = [json.loads(line) for line in (work / "inflator" / "cheat.jsonl").read_text().splitlines()]
    true_by_epoch = {entry["epoch"]: entry["true"] for entry in inflator_log}
    decided = [r for r in reports("inflator") if r[3] != "pending" and r[1] in true_by_epoch]
    inflator_true = sum(true_by_epoch[r[1]] for r in decided) * per_sample
    inflator_credit = sum(r[4] for r in decided if r[3] == "granted")
    true_work["inflator"], credit["inflator"] = inflator_true, inflator_credit

    audits = conn.execute("SELECT status FROM audits WHERE node_id = ? AND status != 'open' ORDER BY id",
                          (node_of["garbage"],)).fetchall()  # fmt: skip
    statuses = [s for (s,) in audits]
    caught = statuses.index("failed") + 1 if "failed" in statuses else None

    replay_log = [json.loads(line) for line in (work / "replayer" / "cheat.jsonl").read_text().splitlines()]
    resigned = {entry["resigned_seq"] for entry in replay_log if "resigned_seq" in entry}
    replayer = reports("replayer")
    granted_epochs = [r[1] for r in replayer if r[3] == "granted"]
    accepted = sum(1 for r in replayer if r[0] in resigned and r[3] == "granted")
    accepted += len(granted_epochs) - len(set(granted_epochs))
    own = [r for r in replayer if r[3] != "pending" and r[0] not in resigned and not (r[5] or "").startswith("duplicate")]
    true_work["replayer"], credit["replayer"] = sum(r[2] for r in own) * per_sample, sum(r[4] for r in own if r[3] == "granted")
    total_true, total_credit = sum(true_work.values()), sum(credit.values())
    errors = {name: abs((credit[name] / total_credit) / (true_work[name] / total_true) - 1) if true_work[name] else 1.0
              for name in honest}  # fmt: skip

    audit_seconds = conn.execute("SELECT COALESCE(SUM(validator_seconds + node_seconds), 0) FROM audits").fetchone()[0]
    compute_seconds = conn.execute("SELECT COALESCE(SUM(compute_seconds), 0) FROM reports").fetchone()[0]
    banned = conn.execute("SELECT name FROM volunteers WHERE banned_at IS NOT NULL").fetchall()
    detail = {
        "honest_share_errors": {k: round(v, 4) for k, v in errors.items()},
        "credit_per_true_work": {k: round(credit[k] / true_work[k], 4) for k in true_work if true_work[k]},
        "garbage_audits": statuses, "banned": [b for (b,) in banned],
        "replays_sent": {"raw": sum("raw_replay_seq" in e for e in replay_log), "resigned": len(resigned)},
        "reports": dict(conn.execute("SELECT status, COUNT(*) FROM reports GROUP BY status")),
        "reasons": dict(conn.execute("SELECT reason, COUNT(*) FROM reports WHERE reason IS NOT NULL GROUP BY reason "
                                     "ORDER BY COUNT(*) DESC LIMIT 12")),  # fmt: skip
        "replays_refused_at_receipt": conn.execute("SELECT COUNT(*) FROM rejected_messages WHERE reason = 'replayed' "
                                                   "AND node_id = ?", (node_of["replayer"],)).fetchone()[0],  # fmt: skip
        "audits": dict(conn.execute("SELECT status, COUNT(*) FROM audits GROUP BY status")),
        "audit_seconds": round(audit_seconds, 3), "compute_seconds": round(compute_seconds, 1),
        "epochs": conn.execute("SELECT MAX(epoch) FROM reports").fetchone()[0],
    }  # fmt: skip
    print(json.dumps(detail), file=sys.stderr)
    return {
        "inflator_credit_ratio": round((inflator_credit / total_credit) / (inflator_true / total_true), 4)
        if inflator_true and total_credit else None,
        "garbage_caught_after_audits": caught,
        "replays_accepted": accepted,
        "honest_share_error": round(max(errors.values()), 4),
        "audit_cost_fraction": round(audit_seconds / compute_seconds, 5) if compute_seconds else None,
    }


def simulate(args) -> dict:
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="hearth-cheat-sim-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"logs in {work}", file=sys.stderr)
    coordinator, info = start_coordinator(work, args.checkpoint_every)
    nodes = []
    try:
        token = work / "coordinator" / "operator-token"
        created = subprocess.run(python_argv("hearth", "swarm", "create", SWARM_ID, "--task", "spirals",
                                             "--target-batch-size", str(args.target_batch_size), "--coordinator",
                                             info["url"], "--token-file", str(token)),
                                 capture_output=True, text=True, timeout=120)  # fmt: skip
        if created.returncode != 0:
            raise RuntimeError(f"could not create the swarm: {created.stderr}")
        honest = [f"honest-{i}" for i in range(1, args.honest + 1)]
        members = [(name, None) for name in honest] + [(role, role) for role in ROLES]
        nodes = [start_node(work, info["url"], name, role, args.seconds, peers=3) for name, role in members]
        wait_until(lambda: all(node.poll() is not None for node in nodes), args.seconds + 240, interval=1.0,
                   what="the nodes to finish")  # fmt: skip
        database = work / "coordinator" / "ledger.sqlite3"
        wait_until(lambda: pending_reports(database) == 0, 150, interval=1.0, what="pending reports to be decided")
    finally:
        for node in nodes:
            stop_group(node, grace=20)
        stop_group(coordinator, grace=30)
    return figures(work, honest)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "cheater":
        run_cheater(sys.argv[2], Path(sys.argv[3]), sys.argv[4:])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        sys.exit(run_worker(sys.argv[2], Path(sys.argv[3]), sys.argv[4:]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="how long the nodes train")
    parser.add_argument("--honest", type=int, default=2, help="honest nodes besides the three cheaters")
    parser.add_argument("--target-batch-size", type=int, default=16384)
    parser.add_argument("--checkpoint-every", type=float, default=60.0)
    parser.add_argument("--work-dir", help="keep logs and the ledger here (default: a new temporary directory)")
    args = parser.parse_args()
    exit_on_sigterm()
    print(json.dumps(simulate(args)))


if __name__ == "__main__":
    main()
