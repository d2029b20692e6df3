"""Make differing local datasets for a `data: local` swarm of the `tabular` task (tests, demos): one generated
classification table (a Gaussian cluster per class) split non-IID by class over N nodes, plus a shared held-out
table from the same distribution.

Node i gets the classes c with c % N == i; `--mix` is the share of its rows drawn from the other classes
(0: each node sees only its own classes). Files: OUT/node-1.npz … OUT/node-N.npz and OUT/held_out.npz (or .csv
with --format csv), in the format hearth/tasks/tabular.py reads. The last stdout line is a JSON summary.

Usage: python scripts/make_local_data.py OUT [--nodes 2] [--rows 1000] [--features 16] [--classes 4] [--mix 0.05]
"""

import argparse
import json
from pathlib import Path

import numpy as np

LABEL_COLUMN = "label"  # the CSV column hearth/tasks/tabular.py reads the class from (no torch import here)


def class_centres(features: int, classes: int, separation: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(classes, features)) * separation


def sample(centres: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return (centres[labels] + rng.normal(size=(len(labels), centres.shape[1]))).astype(np.float32)


def node_labels(node: int, nodes: int, rows: int, classes: int, mix: float, rng: np.random.Generator) -> np.ndarray:
    own = [c for c in range(classes) if c % nodes == node]
    others = [c for c in range(classes) if c % nodes != node]
    if not own:
        raise ValueError(f"{nodes} nodes need at least {nodes} classes")
    mixed = rng.random(rows) < (mix if others else 0.0)
    labels = rng.choice(own, size=rows)
    if mixed.any():
        labels[mixed] = rng.choice(others, size=int(mixed.sum()))
    return labels.astype(np.int64)


def make_datasets(nodes: int = 2, rows: int = 1000, features: int = 16, classes: int = 4, mix: float = 0.05,
                  held_out: int = 2000, separation: float = 1.0, seed: int = 1):  # fmt: skip
    """([(features, labels) per node], (features, labels) held out): the tables, in memory."""
    if not 0 <= mix <= 1:
        raise ValueError("mix must be between 0 and 1")
    centres = class_centres(features, classes, separation, seed)
    rng = np.random.default_rng(seed + 1)
    tables = []
    for node in range(nodes):
        labels = node_labels(node, nodes, rows, classes, mix, rng)
        tables.append((sample(centres, labels, rng), labels))
    held_labels = rng.integers(0, classes, size=held_out)
    return tables, (sample(centres, held_labels, rng), held_labels)


def write_table(path: Path, features: np.ndarray, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        np.savez(path, features=features, labels=labels)
        return
    header = ",".join([f"x{i}" for i in range(features.shape[1])] + [LABEL_COLUMN])
    table = np.column_stack([features.astype(np.float64), labels])
    np.savetxt(path, table, delimiter=",", header=header, comments="", fmt=["%.6g"] * features.shape[1] + ["%d"])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory for the files")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--rows", type=int, default=1000, help="rows per node")
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--mix", type=float, default=0.05, help="share of each node's rows from other nodes' classes")
    parser.add_argument("--held-out", type=int, default=2000, help="rows of the shared held-out table")
    parser.add_argument("--separation", type=float, default=1.0, help="spread of the class centres (noise: 1)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--format", choices=["npz", "csv"], default="npz")
    args = parser.parse_args(argv)
    try:
        tables, held = make_datasets(args.nodes, args.rows, args.features, args.classes, args.mix, args.held_out,
                                     args.separation, args.seed)  # fmt: skip
    except ValueError as e:
        parser.error(str(e))
    files = []
    for node, (features, labels) in enumerate(tables, start=1):
        path = args.out / f"node-{node}.{args.format}"
        write_table(path, features, labels)
        files.append({"path": str(path), "rows": len(labels), "classes": sorted(set(labels.tolist()))})
    held_path = args.out / f"held_out.{args.format}"
    write_table(held_path, *held)
    print(json.dumps({"nodes": files, "held_out": str(held_path), "features": args.features, "classes": args.classes}))


if __name__ == "__main__":
    main()
