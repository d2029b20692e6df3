"""Benchmark of the node daemon on this machine, in one run:

Everything is measured on one volunteer node, as on a volunteer's PC: the measured node and everything it starts
(DHT, p2pd, averagers) get one core to themselves, while the rest of the swarm (a peer that already trains, and
the coordinator) runs on the remaining cores, as it would run elsewhere.

- join_to_first_step_s: from starting `hearth join` next to the peer that already trains, to the volunteer's
  first optimizer step: DHT, reachability check, registration and the download of the swarm's state. The volunteer's
  node is already running (`hearth node start`, as its service would keep it), so `hearth join` hands it the swarm.
- cold_join_to_first_step_s: the same with no node running, so that `hearth join` starts one: Python's imports of
  torch, hivemind and torch._dynamo (imports_s, measured alone) come first.
- node_vs_plain: the volunteer's samples/s in the 2-peer swarm (reporting on) divided by samples/s of the task's
  plain torch loop (same model, batch and threads) on the same core, while a second plain loop keeps the other
  cores as busy. Like the node, whose optimizer steps once per epoch, the plain loop accumulates gradients and
  steps once per window: the ratio is Hearth's overhead, not the saving of fewer optimizer steps. This machine's
  single-core speed drifts by ~±10 % from minute to minute (measured), so the node is measured in --rounds windows
  with the plain loop before and after each (the node paused meanwhile): each window's ratio is to the mean of its
  two plain runs, and node_vs_plain is the median of the windows' ratios (one window disturbed by something else on
  the machine does not move it). The swarm's target batch is sized so an epoch lasts --epoch-seconds (real swarms run epochs
  of minutes).
- paused_cpu_core_fraction: CPU used by the paused volunteer's whole process tree, in cores.

The last stdout line is JSON. Usage: python scripts/bench_node.py [--epochs 3] [--epoch-seconds 30] [--keep DIR]
"""

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hearth.processes import (exit_on_sigterm, python_argv, spawn_group, stop_group,  # noqa: E402
                              tree_cpu_seconds, wait_until)
from node.control import request, socket_path  # noqa: E402


PLAIN_SECONDS = 20
DRIFT_WARNING = 0.10  # relative change of the plain loop's speed between before and after that makes a run suspect


def pinned_to(cores: set[int]):
    """A preexec_fn: the process and everything it starts run on these cores only."""
    return lambda: os.sched_setaffinity(0, cores)


def plain_loop(seconds: float, threads: int, cores: set[int], results) -> None:
    os.sched_setaffinity(0, cores)
    import torch

    from hearth.tasks import load_task

    torch.set_num_threads(threads)
    task = load_task("spirals")
    model, data = task.build_model(), task.data_stream(1, task.defaults.batch_size)
    optimizer = task.make_optimizer(model.parameters(), task.defaults.learning_rate)
    for _ in range(20):  # warm-up
        task.loss(model, next(data)).backward()
    samples, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:  # gradients accumulate, as over a swarm's epoch of tens of seconds
        inputs, targets = next(data)
        task.loss(model, (inputs, targets)).backward()
        samples += len(targets)
    optimizer.step()  # one step for the whole window, as the node steps once per epoch
    optimizer.zero_grad()
    results.put((frozenset(cores), samples / (time.perf_counter() - started)))


def plain_throughput(seconds: float, measured: set[int], others: set[int]) -> float:
    """samples/s of the plain loop on the `measured` cores while a second one keeps the `others` busy."""
    results = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=plain_loop, args=(seconds, 1, cores, results)) for cores in (measured, others)]
    for worker in workers:
        worker.start()
    rates = dict(results.get() for _ in workers)
    for worker in workers:
        worker.join()
    return rates[frozenset(measured)]


def import_seconds(cores: set[int]) -> float:
    """The floor under any join: a fresh Python importing torch, hivemind and torch's compiler stack (which the
    first torch optimizer loads), on the joiner's cores."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import torch, hivemind, torch._dynamo"], check=True,
                   preexec_fn=pinned_to(cores))  # fmt: skip
    return time.monotonic() - started


def cpu_by_role(supervisor_pid: int) -> dict[str, float]:
    """CPU seconds used so far by the volunteer's processes (and the worker's threads), by role: a load-independent
    view of where its core goes besides training."""
    supervisor = psutil.Process(supervisor_pid)
    worker = supervisor.children()[0]
    roles = {"supervisor": _cpu(supervisor), "p2pd": 0.0, "hivemind helper processes": 0.0}
    threads = worker.threads()
    main = next(thread for thread in threads if thread.id == worker.pid)
    roles["worker main thread (training)"] = main.user_time + main.system_time
    roles["worker other threads"] = sum(t.user_time + t.system_time for t in threads) - roles["worker main thread (training)"]
    for helper in worker.children(recursive=True):
        try:
            roles["p2pd" if helper.name() == "p2pd" else "hivemind helper processes"] += _cpu(helper)
        except psutil.NoSuchProcess:
            continue
    return roles


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def hearth(*args: str) -> list[str]:
    return python_argv("hearth", *args)


def status(data_dir: Path) -> dict:
    return request(socket_path(data_dir), "status")


def node_benchmark(work: Path, epochs: int, rounds: int, target_batch_size: int, volunteer: set[int], others: set[int],
                   swarm_options: tuple[str, ...] = ()) -> dict:  # fmt: skip
    ready = work / "ready.json"
    log = open(work / "c.log", "w")
    coordinator = spawn_group(hearth("coordinator", "serve", "--data-dir", str(work / "c"), "--port", "0",
                                     "--broker-port", "0", "--ready-file", str(ready)), stdout=log, stderr=log,
                              preexec_fn=pinned_to(others))  # fmt: skip
    nodes = {}
    try:
        url = wait_until(lambda: ready.exists() and json.loads(ready.read_text())["url"], 120, what="coordinator")
        created = subprocess.run(hearth("swarm", "create", "bench", "--coordinator", url, "--token-file",
                                        str(work / "c" / "operator-token"), "--target-batch-size",
                                        str(target_batch_size), *swarm_options), capture_output=True, text=True,
                               timeout=60)  # fmt: skip
        assert created.returncode == 0, created.stderr
        env = {**os.environ, "HEARTH_CONFIG": str(work / "none.toml")}
        launched = {}

        def join_argv(name: str) -> list[str]:
            return hearth("-v", "join", url, "--swarm", "bench", "--name", name, "--data-dir", str(work / name),
                          "--threads", "1", "--view", "log")  # fmt: skip

        def join(name: str, cores: set[int], process: str = "node") -> None:
            launched[name] = time.time()
            node_log = open(work / f"{name}-{process}.log", "w")
            nodes[name] = spawn_group(join_argv(name), env=env, stdout=node_log, stderr=node_log,
                                      preexec_fn=pinned_to(cores))  # fmt: skip

        def seconds_to_first_step(name: str) -> float:
            return wait_until(lambda: _first_step(work / name), 180, what=f"the {name}'s first step") - launched[name]

        # "peer" is the rest of the swarm, on the other cores; "volunteer" joins it on its own core and is measured.
        join("peer", others)
        wait_until(lambda: _first_step(work / "peer"), 180, what="the peer's first step")
        imports_seconds = import_seconds(volunteer)
        join("volunteer", volunteer, "cold")  # no node running yet: `hearth join` starts one
        cold_join_seconds = seconds_to_first_step("volunteer")
        stop_group(nodes.pop("volunteer"), grace=30)
        # The volunteer's node kept running (`hearth node start`, as a service would), handed the swarm by `hearth join`
        node_log = open(work / "volunteer-node.log", "w")
        nodes["volunteer"] = spawn_group(hearth("-v", "node", "start"), stdout=node_log, stderr=node_log,
                                         env={**env, "HEARTH_DATA_DIR": str(work / "volunteer"), "HEARTH_THREADS": "1",
                                              "HEARTH_VIEW": "log"},
                                         preexec_fn=pinned_to(volunteer))  # fmt: skip
        wait_until(lambda: _waiting(work / "volunteer"), 180, what="the volunteer's node to wait for a join")
        launched["volunteer"] = time.time()
        subprocess.run(join_argv("volunteer"), env=env, check=True, capture_output=True, preexec_fn=pinned_to(volunteer))
        join_seconds = seconds_to_first_step("volunteer")
        # Contributed samples grow when an epoch closes: measure from one epoch's close to another's (the node's
        # own clock), so the window holds whole epochs, their averaging rounds included. Polled once a second:
        # every status request costs the volunteer's core too.
        def epoch_closed_after(epoch: int) -> dict:
            return wait_until(lambda: (t := status(work / "volunteer")["training"])["epoch"] > epoch and t, 600,
                              interval=1.0, what=f"the volunteer's epoch {epoch + 1}")  # fmt: skip

        wait_until(lambda: status(work / "volunteer")["training"]["epochs_contributed"] >= 1, 600,
                   what="the volunteer to train an epoch")  # fmt: skip
        windows, plain_after, paused_fraction = [], [], None
        for window in range(rounds):
            first = epoch_closed_after(status(work / "volunteer")["training"]["epoch"])
            since, cpu_before = time.monotonic(), cpu_by_role(nodes["volunteer"].pid)
            training = epoch_closed_after(first["epoch"] + epochs - 1)
            cpu_after = cpu_by_role(nodes["volunteer"].pid)
            cpu_shares = {role: (cpu_after[role] - cpu_before[role]) / (time.monotonic() - since) for role in cpu_after}
            elapsed = training["epoch_closed_at"] - first["epoch_closed_at"]
            windows.append({"node_rate": (training["samples_total"] - first["samples_total"]) / elapsed,
                            "epoch_reached": training["epoch"], "cpu_shares": cpu_shares})  # fmt: skip
            request(socket_path(work / "volunteer"), "pause")
            worker = psutil.Process(nodes["volunteer"].pid).children()[0]
            wait_until(lambda: len(worker.children()) <= 1, 30, what="the paused node to leave the swarm")
            if paused_fraction is None:
                cpu, wall = tree_cpu_seconds(worker.pid), time.monotonic()
                time.sleep(10)  # measurement window
                paused_fraction = (tree_cpu_seconds(worker.pid) - cpu) / (time.monotonic() - wall)
            plain_after.append(plain_throughput(PLAIN_SECONDS, volunteer, others))  # paused: its core is free
            if window + 1 < rounds:
                request(socket_path(work / "volunteer"), "resume")  # it rejoins and catches up with the swarm
        return {"windows": windows, "plain_after": plain_after, "join_to_first_step_s": join_seconds,
                "cold_join_seconds": cold_join_seconds, "imports_s": imports_seconds,
                "paused_cpu_core_fraction": paused_fraction}  # fmt: skip
    finally:
        for process in nodes.values():
            stop_group(process, grace=30)
        stop_group(coordinator, grace=30)


def _waiting(data_dir: Path) -> bool:
    try:
        return status(data_dir)["host"]["state"].startswith("waiting")
    except Exception:
        return False


def _first_step(data_dir: Path):
    try:
        return status(data_dir)["training"].get("first_step_at")
    except Exception:
        return None


def window_ratios(plains: list[float], windows: list[dict], epochs: int, core: int) -> list[float]:
    """Each window's node_vs_plain against the mean of the plain runs just before and after it, printed with them
    (and a warning where those two differ by more than DRIFT_WARNING)."""
    ratios = []
    for index, window in enumerate(windows):
        before, after = plains[index], plains[index + 1]
        baseline = (before + after) / 2
        drift = abs(before - after) / baseline
        ratios.append(window["node_rate"] / baseline)
        print(f"window {index + 1}: plain torch loop {before:,.0f} → {after:,.0f} samples/s (1 thread, core {core}, "
              f"before and after); hearth node {window['node_rate']:,.0f} samples/s (1 thread, core {core}, "
              f"2-peer swarm, {epochs} epochs to epoch {window['epoch_reached']}): {ratios[-1]:.3f}")
        if drift > DRIFT_WARNING:
            print(f"warning: in window {index + 1} the plain loop's speed moved by {drift:.0%} "
                  "(something else used this core?): its ratio is uncertain by about that much", file=sys.stderr)
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs in each of the node's measurement windows")
    parser.add_argument("--rounds", type=int, default=3,
                        help="measurement windows, each followed by the plain loop while the node is paused")
    parser.add_argument("--epoch-seconds", type=float, default=30.0,
                        help="size the swarm's target batch so that an epoch lasts about this long")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep the coordinator's and nodes' logs here")
    parser.add_argument("--average-state-every", type=int, metavar="N",
                        help="create the swarm with this average_state_every (default: the task's)")
    args = parser.parse_args()
    exit_on_sigterm()
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        sys.exit("bench_node needs at least 2 CPU cores: one for the measured node, one for its peer and the coordinator")
    volunteer, others = {cores[0]}, set(cores[1:])
    plain_before = plain_throughput(PLAIN_SECONDS, volunteer, others)
    target_batch_size = int(plain_before * 2 * args.epoch_seconds)
    swarm_options = ("--average-state-every", str(args.average_state_every)) if args.average_state_every else ()
    setup = (args.epochs, args.rounds, target_batch_size, volunteer, others, swarm_options)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        node = node_benchmark(args.keep, *setup)
    else:
        with tempfile.TemporaryDirectory(prefix="hearth-bench-node-") as work:
            node = node_benchmark(Path(work), *setup)
    ratios = window_ratios([plain_before, *node["plain_after"]], node["windows"], args.epochs, cores[0])
    print(f"swarm: target batch {target_batch_size:,} ≈ {args.epoch_seconds:.0f} s epochs; node_vs_plain is the median of "
          f"the {len(ratios)} windows' ratios (spread {max(ratios) - min(ratios):.3f})")
    shares = ", ".join(f"{role} {share:.3f}" for role, share in node["windows"][-1]["cpu_shares"].items())
    print(f"volunteer's CPU in the last window, in cores: {shares}")
    print(f"join:             {node['join_to_first_step_s']:.1f} s to the first step when `hearth join` hands the swarm to "
          f"the running node (`hearth node start`); {node['cold_join_seconds']:.1f} s when it starts the node, of which "
          f"Python needs {node['imports_s']:.1f} s just to import torch, hivemind and torch._dynamo on this core")
    result = {"node_vs_plain": round(statistics.median(ratios), 3),
              "join_to_first_step_s": round(node["join_to_first_step_s"], 2),
              "cold_join_to_first_step_s": round(node["cold_join_seconds"], 2),
              "paused_cpu_core_fraction": round(node["paused_cpu_core_fraction"], 4),
              "imports_s": round(node["imports_s"], 2)}  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
