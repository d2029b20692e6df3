"""Benchmark of a Hearth swarm against plain torch on this machine, in one run:

- swarm_efficiency: N = 2 independent plain torch processes (1 thread each, one per core: the same task, model
  and batch, gradients accumulated and one optimizer step per window) give the ceiling in samples/s; then a
  2-peer Hearth swarm (a real `hearth coordinator serve` and two `hearth join` processes, each node and
  everything it starts pinned to its own core, the coordinator on both) trains the same task with epochs of about
  --epoch-seconds. E = the swarm's samples/s over a window of whole epochs (averaging rounds included) / the
  ceiling.
- bytes_per_sample: averaging bytes the peers sent (node/bandwidth.py counts them; the peers received as many)
  per sample trained, over whole epochs, for compression none (fp32), fp16 and int8, and for local updates
  (fp32 state averaged every --local-average-every epochs). All four runs use the same target batch
  (epochs of about --bytes-epoch-seconds), so the figures compare at equal samples per epoch.

The last stdout line is JSON: {"swarm_efficiency": E, "bytes_per_sample": {"fp32": …, "fp16": …, "int8": …,
"local": …}, …}. A short run: --seconds 10 --epoch-seconds 10 --epochs 2 --local-average-every 10 --task spirals.
"""

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hearth.processes import exit_on_sigterm, python_argv, spawn_group, stop_group, wait_until  # noqa: E402
from node.control import ControlError, request, socket_path  # noqa: E402

START_TIMEOUT = 300  # a node's start, its state download and first epoch, on a loaded 2-core machine
WINDOW_TRIES = 3
NO_CHECKPOINTS = 10**7  # seconds between the coordinator's checkpoints


def pinned_to(cores: set[int]):
    return lambda: os.sched_setaffinity(0, cores)


def load_configured_task(name: str, options: dict):
    from hearth.tasks import load_task
    from hearth.tasks.base import TaskContext

    task = load_task(name)
    if options:
        task.configure(TaskContext(options=options, assets={}, local_data=None))
    return task


def plain_loop(task_name: str, options: dict, seconds: float, core: int, results) -> None:
    os.sched_setaffinity(0, {core})
    import torch

    torch.set_num_threads(1)
    task = load_configured_task(task_name, options)
    model, data = task.build_model(), task.data_stream(core + 1, task.defaults.batch_size)
    optimizer = task.make_optimizer(model.parameters(), task.defaults.learning_rate)
    for _ in range(3):  # warm-up
        task.loss(model, next(data)).backward()
    samples, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:  # gradients accumulate, as over one of the swarm's epochs
        inputs, targets = next(data)
        task.loss(model, (inputs, targets)).backward()
        samples += len(targets)
    optimizer.step()
    optimizer.zero_grad()
    results.put(samples / (time.perf_counter() - started))


def ceiling(task_name: str, options: dict, seconds: float, cores: list[int]) -> list[float]:
    """samples/s of one plain loop per core, all running at once."""
    results = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=plain_loop, args=(task_name, options, seconds, core, results))
               for core in cores]  # fmt: skip
    for worker in workers:
        worker.start()
    rates = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
    return rates


def hearth(*args: str) -> list[str]:
    return python_argv("hearth", *args)


def training(data_dir: Path) -> dict | None:
    try:
        return request(socket_path(data_dir), "status")["training"]
    except (ControlError, OSError, ValueError):
        return None


class Bench:
    def __init__(self, work: Path, args, cores: list[int]):
        self.work, self.args, self.cores = work, args, cores
        self.options = [f"--task-option={option}" for option in args.task_option]
        ready = work / "ready.json"
        log = open(work / "coordinator.log", "w")
        # No checkpoints: the peer serving the coordinator's state download would send a whole fp32 state
        # inside some measured epoch, and that is not the mode's averaging traffic.
        self.coordinator = spawn_group(hearth("coordinator", "serve", "--data-dir", str(work / "c"), "--port", "0",
                                              "--broker-port", "0", "--ready-file", str(ready),
                                              "--checkpoint-every", str(NO_CHECKPOINTS)),
                                       stdout=log, stderr=log)  # fmt: skip
        self.url = wait_until(lambda: ready.exists() and json.loads(ready.read_text())["url"], 120, what="coordinator")

    def close(self) -> None:
        stop_group(self.coordinator, grace=30)

    def run(self, mode: str, target_batch_size: int, epochs: int, *swarm_options: str) -> dict:
        """A 2-peer swarm in this mode: samples/s and averaging bytes over `epochs` whole epochs."""
        created = subprocess.run(hearth("swarm", "create", mode, "--coordinator", self.url, "--token-file",
                                        str(self.work / "c" / "operator-token"), "--task", self.args.task,
                                        "--target-batch-size", str(target_batch_size), *self.options, *swarm_options),
                                 capture_output=True, text=True, timeout=120)  # fmt: skip
        if created.returncode != 0:
            raise SystemExit(f"could not create swarm {mode}: {created.stderr}")
        env = {**os.environ, "HEARTH_CONFIG": str(self.work / "none.toml")}
        dirs = [self.work / f"{mode}-{i}" for i in range(len(self.cores))]
        nodes = []
        try:
            for data_dir, core in zip(dirs, self.cores):
                log = open(f"{data_dir}.log", "w")
                nodes.append(spawn_group(hearth("-v", "join", self.url, "--swarm", mode, "--name", data_dir.name,
                                                "--data-dir", str(data_dir), "--threads", "1", "--view", "log"),
                                         env=env, stdout=log, stderr=log, preexec_fn=pinned_to({core})))  # fmt: skip
            # Both peers past an epoch, then a window of whole epochs in which neither had to download the state
            # (a peer that fell behind, the coordinator's checkpoint): that is join-time traffic, not the mode's.
            start = wait_until(lambda: self._all_past(dirs, None, nodes), START_TIMEOUT,
                               what=f"{mode}: both peers' first epoch")  # fmt: skip
            epoch = max(stats["epoch"] for stats in start)
            first = wait_until(lambda: self._all_past(dirs, epoch, nodes), START_TIMEOUT, interval=0.05,
                               what=f"{mode}: epoch {epoch}")  # fmt: skip
            for _ in range(WINDOW_TRIES):
                since, epoch = time.monotonic(), min(stats["epoch"] for stats in first)
                last = wait_until(lambda: self._all_past(dirs, epoch + epochs - 1, nodes), START_TIMEOUT + epochs * 120,
                                  interval=0.05, what=f"{mode}: epoch {epoch + epochs}")  # fmt: skip
                elapsed = time.monotonic() - since
                if all(a["state_downloads"] == b["state_downloads"] for a, b in zip(first, last)):
                    break
                print(f"{mode}: a peer downloaded the state during the window; measuring the next one", file=sys.stderr)
                first = last
        finally:
            for process in nodes:
                stop_group(process, grace=30)
        samples = sum(b["samples_total"] - a["samples_total"] for a, b in zip(first, last))
        sent = sum(b["bytes_sent"] - a["bytes_sent"] for a, b in zip(first, last))
        received = sum(b["bytes_received"] - a["bytes_received"] for a, b in zip(first, last))
        result = {"samples_per_second": samples / elapsed, "samples": samples, "bytes_sent": sent,
                  "bytes_received": received, "bytes_per_sample": sent / samples if samples else None,
                  "bytes_per_epoch": sent / epochs, "epochs": epochs, "seconds": round(elapsed, 1)}  # fmt: skip
        print(f"{mode}: {json.dumps(result)}", file=sys.stderr)
        return result

    @staticmethod
    def _all_past(dirs: list[Path], epoch: int | None, nodes: list[subprocess.Popen]):
        """Every node's training stats once each has closed an epoch after `epoch` (None: any epoch)."""
        for data_dir, process in zip(dirs, nodes):
            if process.poll() is not None:  # a node that ended would otherwise be waited for until the timeout
                raise SystemExit(f"{data_dir.name} ended with exit code {process.returncode}; see {data_dir}.log")
        stats = [training(data_dir) for data_dir in dirs]
        if any(s is None or s["epochs_contributed"] < 1 for s in stats):
            return None
        if epoch is not None and any(s["epoch"] <= epoch for s in stats):
            return None
        return stats


def default_task() -> str:
    from hearth.tasks import load_task

    try:
        load_task("tiny-lm")
        return "tiny-lm"
    except Exception:  # helper tasks not installed: the always-present one
        return "spirals"


def parse_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default=None, help="task to train (default: tiny-lm, else spirals)")
    parser.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE", help="repeatable")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the plain loops' measurement")
    parser.add_argument("--epoch-seconds", type=float, default=60.0, help="epoch length of the efficiency run")
    parser.add_argument("--epochs", type=int, default=3, help="whole epochs in the efficiency run's window")
    parser.add_argument("--average-state-every", type=int, help="efficiency run's average_state_every (default: the swarm's)")
    parser.add_argument("--bytes-epoch-seconds", type=float, default=5.0, help="epoch length of the traffic runs")
    parser.add_argument("--bytes-epochs", type=int, default=3, help="whole epochs per traffic run (fp32, fp16, int8)")
    parser.add_argument("--local-average-every", type=int, default=100, help="local updates: average state every N epochs")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep logs and data here")
    args = parser.parse_args()
    exit_on_sigterm()
    args.task = args.task or default_task()
    cores = sorted(os.sched_getaffinity(0))[:2]
    if len(cores) < 2:
        sys.exit("bench_swarm needs 2 CPU cores: one per peer")
    options = parse_options(args.task_option)

    rates = ceiling(args.task, options, args.seconds, cores)
    plain = sum(rates)
    print(f"ceiling: {plain:,.1f} samples/s ({' + '.join(f'{r:,.1f}' for r in rates)}; {args.task}, 1 thread per core)",
          file=sys.stderr)  # fmt: skip
    work_dir = args.keep or Path(tempfile.mkdtemp(prefix="hearth-bench-swarm-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    bench = Bench(work_dir, args, cores)
    try:
        efficiency_options = ("--average-state-every", str(args.average_state_every)) if args.average_state_every else ()
        swarm = bench.run("efficiency", max(1, int(plain * args.epoch_seconds)), args.epochs, *efficiency_options)
        small = max(1, int(plain * args.bytes_epoch_seconds))
        traffic = {name: bench.run(name, small, args.bytes_epochs, "--compression", compression)
                   for name, compression in (("fp32", "none"), ("fp16", "fp16"), ("int8", "int8"))}  # fmt: skip
        traffic["local"] = bench.run("local", small, args.local_average_every, "--local-updates",
                                     "--average-state-every", str(args.local_average_every))  # fmt: skip
    finally:
        bench.close()
    efficiency = swarm["samples_per_second"] / plain
    per_sample = {name: run["bytes_per_sample"] for name, run in traffic.items()}
    per_epoch = {name: run["bytes_per_epoch"] for name, run in traffic.items()}
    fp32 = per_sample["fp32"]
    print(f"swarm: {swarm['samples_per_second']:,.1f} samples/s over {swarm['epochs']} epochs of "
          f"{int(plain * args.epoch_seconds):,} samples: efficiency {efficiency:.3f}", file=sys.stderr)  # fmt: skip
    for name, value in per_sample.items():
        print(f"{name}: {value:,.1f} bytes sent per sample ({value / fp32:.4f} of fp32)", file=sys.stderr)
    result = {"swarm_efficiency": round(efficiency, 3),
              "bytes_per_sample": {name: round(value, 1) for name, value in per_sample.items()},
              "ratio_to_fp32": {name: round(value / fp32, 5) for name, value in per_sample.items()},
              # per epoch the factors are exact; per sample they move with how far each epoch overshot its target
              "bytes_per_epoch": {name: round(value) for name, value in per_epoch.items()},
              "task": args.task, "ceiling_samples_per_second": round(plain, 2),
              "swarm_samples_per_second": round(swarm["samples_per_second"], 2)}  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
