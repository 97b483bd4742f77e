"""``vlatrim`` console script: one verb per concern (see README).

Dispatch is two-level and explicit (``vlatrim VERB [SUBVERB] --flags``); each (sub)verb is a dataclass
parsed by tyro, so ``--help`` on it lists every flag with its type, default and documentation.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

import tyro

from vlatrim.cli.registry import COMMANDS
from vlatrim.errors import VlatrimError

# Modules that register verbs; a verb whose module does not exist yet is simply absent from the CLI.
_VERB_MODULES = ("data", "eval", "train", "inspect", "analyze", "prune", "recover", "bench", "study")


def _load_verbs() -> None:
    for name in _VERB_MODULES:
        try:
            importlib.import_module(f"vlatrim.cli.{name}_cmd")
        except ModuleNotFoundError as e:
            if e.name != f"vlatrim.cli.{name}_cmd":
                raise


def _summary(obj: object) -> str:
    if isinstance(obj, dict):
        return "sub-verbs: " + ", ".join(sorted(obj))
    return ((obj.__doc__ or "").strip().splitlines() or [""])[0]


def _usage(prog: str, entries: dict[str, object]) -> str:
    width = max(len(n) for n in entries) if entries else 0
    lines = [f"usage: {prog} {{{','.join(sorted(entries))}}} ...", ""]
    lines += [f"  {n.ljust(width)}  {_summary(e)}" for n, e in sorted(entries.items())]
    lines += ["", f"Run '{prog} VERB --help' for a verb's flags."]
    return "\n".join(lines)


def _pick(prog: str, entries: dict[str, object], argv: list[str]) -> tuple[object, str, list[str]]:
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(prog, entries))
        raise SystemExit(0 if argv else 2)
    name, rest = argv[0], argv[1:]
    if name not in entries:
        raise VlatrimError(f"unknown verb {name!r} for '{prog}'; valid: {', '.join(sorted(entries))}")
    entry, prog = entries[name], f"{prog} {name}"
    if isinstance(entry, dict):
        return _pick(prog, entry, rest)
    return entry, prog, rest


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # vlatrim never downloads behind the user's back
    _load_verbs()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cls, prog, rest = _pick("vlatrim", {n: COMMANDS.get(n) for n in COMMANDS.names()}, args)
        cmd = tyro.cli(cls, args=rest, prog=prog, config=(tyro.conf.OmitArgPrefixes,))
        cmd.run()
    except VlatrimError as e:
        print(f"vlatrim: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vlatrim: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
