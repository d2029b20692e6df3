"""Make a pretrained tiny-lm for the `lm-finetune` task (demo, tests): train one from scratch on generated text
in this process and save it where `hearth swarm create --task lm-finetune --asset checkpoint=FILE` can take it.

A tiny-lm swarm's checkpoint (GET /api/v1/swarms/ID/checkpoints/latest) is a pretrained model as well.

Usage: python scripts/pretrain_lm.py OUT.pt [--steps 300] [--layers 6 --d-model 384 --heads 6 --seq-len 128]
The last stdout line is JSON: {"path", "steps", "loss", "held_out_bits_per_byte", "seconds", "parameters"}.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from hearth.tasks import TaskContext, load_task  # noqa: E402
from hearth.tasks.finetune import pretrain  # noqa: E402
from hearth.tasks.tiny_lm import LMConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--lexicon", choices=["general", "kitchen"], default="general")
    parser.add_argument("--threads", type=int, default=1)
    defaults = LMConfig()
    for name in ("layers", "d_model", "heads", "seq_len"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        config = LMConfig(layers=args.layers, d_model=args.d_model, heads=args.heads, seq_len=args.seq_len)
    except ValueError as e:
        parser.error(str(e))
    started = time.monotonic()
    checkpoint = pretrain(args.steps, config, args.batch_size, args.learning_rate, args.lexicon)
    seconds = time.monotonic() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, args.out)
    task = load_task("tiny-lm")
    task.configure(TaskContext(options={**vars(config).copy(), "lexicon": args.lexicon}))
    model = task.build_model()
    model.load_state_dict(checkpoint["model"])
    print(json.dumps({
        "path": str(args.out), "steps": args.steps, "loss": round(checkpoint["loss"], 4),
        "held_out_bits_per_byte": round(task.evaluate(model)["bits_per_byte"], 4), "seconds": round(seconds, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
