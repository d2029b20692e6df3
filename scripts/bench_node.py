"""Benchmark of the node daemon on this machine, in one run:

- node_vs_plain: samples/s of a Hearth node training in a 2-peer swarm (reporting on), divided by samples/s of
  the task's plain torch loop (same model, batch and threads). Both run as two processes at once, so each
  side has the same share of the machine's cores.
- join_to_first_step_s: from starting `hearth join` to its first optimizer step (loopback coordinator).
- paused_cpu_core_fraction: CPU used by a paused node's whole process tree, in cores.

The last stdout line is JSON. Usage: python scripts/bench_node.py [--seconds 20]
"""

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hearth.processes import python_argv, spawn_group, stop_group, tree_cpu_seconds, wait_until  # noqa: E402
from node.control import request, socket_path  # noqa: E402


def plain_loop(seconds: float, threads: int, results) -> None:
    import torch

    from hearth.tasks import load_task

    torch.set_num_threads(threads)
    task = load_task("spirals")
    model, data = task.build_model(), task.data_stream(1, task.defaults.batch_size)
    optimizer = task.make_optimizer(model.parameters(), task.defaults.learning_rate)
    for _ in range(20):  # warm-up
        task.loss(model, next(data)).backward()
    samples, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        inputs, targets = next(data)
        task.loss(model, (inputs, targets)).backward()
        optimizer.step()
        optimizer.zero_grad()
        samples += len(targets)
    results.put(samples / (time.perf_counter() - started))


def plain_throughput(seconds: float, processes: int = 2) -> float:
    results = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=plain_loop, args=(seconds, 1, results)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    rates = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
    return sum(rates) / len(rates)


def hearth(*args: str) -> list[str]:
    return python_argv("hearth", *args)


def status(data_dir: Path) -> dict:
    return request(socket_path(data_dir), "status")


def node_benchmark(work: Path, seconds: float) -> dict:
    ready = work / "ready.json"
    coordinator = spawn_group(hearth("coordinator", "serve", "--data-dir", str(work / "c"), "--port", "0",
                                     "--broker-port", "0", "--ready-file", str(ready)),
                              stdout=open(work / "c.log", "w"), stderr=open(work / "c.log", "a"))  # fmt: skip
    nodes = {}
    try:
        url = wait_until(lambda: ready.exists() and json.loads(ready.read_text())["url"], 120, what="coordinator")
        env = {**os.environ, "HEARTH_CONFIG": str(work / "none.toml")}
        launched = {}
        for name in ("n1", "n2"):
            launched[name] = time.time()
            nodes[name] = spawn_group(hearth("join", url, "--name", name, "--data-dir", str(work / name), "--threads",
                                             "1", "--min-peers", "2", "--view", "quiet"),
                                      env=env, stdout=open(work / f"{name}.log", "w"), stderr=open(work / f"{name}.log", "a"))  # fmt: skip
        first_steps = [wait_until(lambda n=name: _first_step(work / n), 180, what="first step") - launched[name]
                       for name in nodes]  # fmt: skip
        wait_until(lambda: all(status(work / name)["training"]["epoch"] >= 1 for name in nodes), 180, what="epoch 1")
        before = {name: (status(work / name)["training"]["samples_total"], time.monotonic()) for name in nodes}
        wait_until(lambda: all(status(work / n)["training"]["samples_total"] > before[n][0] for n in nodes), 180)
        time.sleep(seconds)  # the measurement window itself, not a wait for a condition
        rates = []
        for name in nodes:
            wait_until(lambda n=name: status(work / n)["training"]["samples_total"] > before[n][0], 180)
            samples, since = before[name]
            rates.append((status(work / name)["training"]["samples_total"] - samples) / (time.monotonic() - since))
        request(socket_path(work / "n2"), "pause")
        worker = psutil.Process(nodes["n2"].pid).children()[0]
        wait_until(lambda: len(worker.children()) <= 1, 30, what="the paused node to leave the swarm")
        cpu, wall = tree_cpu_seconds(worker.pid), time.monotonic()
        time.sleep(10)  # measurement window
        paused_fraction = (tree_cpu_seconds(worker.pid) - cpu) / (time.monotonic() - wall)
        return {"node_rate": sum(rates) / len(rates), "join_to_first_step_s": max(first_steps),
                "paused_cpu_core_fraction": paused_fraction}  # fmt: skip
    finally:
        for process in nodes.values():
            stop_group(process, grace=30)
        stop_group(coordinator, grace=30)


def _first_step(data_dir: Path):
    try:
        return status(data_dir)["training"].get("first_step_at")
    except Exception:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    plain = plain_throughput(args.seconds)
    with tempfile.TemporaryDirectory(prefix="hearth-bench-node-") as work:
        node = node_benchmark(Path(work), args.seconds)
    print(f"plain torch loop: {plain:,.0f} samples/s per process (2 processes, 1 thread each)")
    print(f"hearth node:      {node['node_rate']:,.0f} samples/s per node (2-peer swarm, 1 thread each)")
    result = {"node_vs_plain": round(node["node_rate"] / plain, 3),
              "join_to_first_step_s": round(node["join_to_first_step_s"], 2),
              "paused_cpu_core_fraction": round(node["paused_cpu_core_fraction"], 4)}  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
