"""`make demo`: the main job, a drop-then-recovery study on the embedded ``demo`` preset.

Generates Meta-World demonstrations, trains the reference VLA (pretrained MiniLM-L6 backbone), scores
its blocks, prunes a third and two thirds of them, evaluates, recovers (where this build has recovery
fine-tuning), benchmarks, and writes ``<out>/report.html``. Sized for a 2-core CPU (see
``vlatrim.study.presets``); an interrupted run continues where it stopped when started again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlatrim.errors import VlatrimError
from vlatrim.study.presets import study_preset_help


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlatrim.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out", help="study directory (an unfinished one is resumed)")
    parser.add_argument("--preset", default="demo", help=study_preset_help())
    parser.add_argument("--data", default=None, help="use this LeRobot v3 dataset instead of generating demos")
    args = parser.parse_args(argv)
    from vlatrim.cli.study_cmd import summary_table
    from vlatrim.cli.threads import apply_threads
    from vlatrim.study.presets import resolve_study_config
    from vlatrim.study.run import CONFIG_FILE, run_study

    out = Path(args.out)
    resume = (out / CONFIG_FILE).is_file()  # a previous `make demo` in the same place: continue it
    try:
        apply_threads(None)  # the cores free now (a loaded machine trains faster with fewer threads)
        cfg = resolve_study_config(args.preset, {})
        print(f"vlatrim demo: study preset {args.preset!r} -> {out}" + (" (resuming)" if resume else ""), flush=True)
        study = run_study(cfg, out, data=args.data, resume=resume)
    except VlatrimError as e:
        print(f"vlatrim: {e}", file=sys.stderr)
        return 2
    print(summary_table(study))
    print(f"\nreport: {(out / 'report.html').resolve()}")
    print(f"results: {(out / 'study.json').resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
