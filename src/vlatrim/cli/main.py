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

from vlatrim.cli.output import close_progress_bars
from vlatrim.cli.registry import COMMANDS
from vlatrim.errors import VlatrimError

# Modules that register verbs; a verb whose module does not exist yet is simply absent from the CLI.
_VERB_MODULES = ("data", "eval", "train", "inspect", "analyze", "prune", "recover", "quantize", "bench", "study")


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


_TYPE_WORDS = {"INT": "an integer", "FLOAT": "a number", "STR": "a string", "BOOL": "True or False",
               "PATH": "a path"}


def _expected(metavar: object) -> str:
    """A flag's expected value in words, from tyro's metavar (``INT``, ``{a,b}``, ``INT [INT ...]``...)."""
    m = str(metavar or "").strip()
    if "|" in m and " " not in m:  # a union, e.g. {None}|INT
        return " or ".join(_expected(part) for part in m.split("|"))
    if m in _TYPE_WORDS:
        return f"{_TYPE_WORDS[m]} ({m})"
    if m.startswith("{") and m.endswith("}"):
        choices = m[1:-1].split(",")
        return choices[0] if len(choices) == 1 else "one of " + ", ".join(choices)
    return m or "a value"


def _given(argv: list[str], flags: Sequence[str]) -> list[str]:
    """The tokens the user gave after the last occurrence of one of ``flags`` (or in ``--flag=value``)."""
    for i in range(len(argv) - 1, -1, -1):
        tok = argv[i]
        if "=" in tok and tok.split("=", 1)[0] in flags:
            return [tok.split("=", 1)[1]]
        if tok in flags:
            vals = []
            for t in argv[i + 1:]:
                if t.startswith("--"):
                    break
                vals.append(t)
            return vals
    return []


def _one_line(event: object, prog: str, argv: list[str]) -> str | None:
    """One line for a tyro parse-error event (``tyro._errors``), or None for an event type not known here."""
    from tyro import _errors as ev

    def flag(arg: object) -> str:
        return arg.display_name()  # type: ignore[attr-defined]

    see = f"see '{prog} --help'"
    if isinstance(event, ev.InstantiationFailure) and event.argument is not None:
        arg = event.argument
        names = tuple(arg.lowered.name_or_flags)
        got = " ".join(_given(argv, names))
        got_s = f", got {got!r}" if got else ""
        return f"{flag(arg)} expects {_expected(arg.lowered.metavar)}{got_s}"
    if isinstance(event, ev.InstantiationFailure):
        return f"invalid value: {event.message}; {see}"
    if isinstance(event, ev.InvalidChoice):
        return f"{flag(event.argument)} {event.value!r} is not valid; valid: {', '.join(event.choices)}"
    if isinstance(event, ev.BadValue):
        if event.offending_value is not None:
            return f"{flag(event.argument)} takes no value, got {event.offending_value!r}"
        return f"{flag(event.argument)} expects {_expected(event.argument.lowered.metavar)}"
    if isinstance(event, ev.MissingArgs):
        missing = ", ".join(flag(a.arg) for a in event.missing_arguments)
        extra = f"; unrecognized: {' '.join(event.unrecognized_tokens)}" if event.unrecognized_tokens else ""
        return f"missing required {missing}{extra}; {see}"
    if isinstance(event, ev.UnrecognizedArgs):
        return f"unrecognized argument(s) {' '.join(event.tokens)}; {see}"
    return None


class _ParseError(Exception):
    """A tyro parse failure turned into one line (raised from tyro's parse-error hook)."""


def _parse(cls: object, rest: list[str], prog: str) -> object:
    """``tyro.cli`` whose input errors become one ``VlatrimError`` line instead of a box.

    Known failures go through tyro's parse-error hook (``tyro._errors``, tyro >= 1.0); anything else
    tyro rejects is caught as it exits and its box flattened into one line. ``--help`` is untouched.
    """
    import contextlib
    import io

    def hook(event: object) -> None:
        line = _one_line(event, prog, rest)
        if line is not None:
            raise _ParseError(line)

    try:
        from tyro import _errors
        on_error = _errors.on_parse_error(hook)
    except (ImportError, AttributeError):  # an older tyro: flatten its box below
        on_error = contextlib.nullcontext()
    box = io.StringIO()
    try:
        with on_error, contextlib.redirect_stderr(box):
            return tyro.cli(cls, args=rest, prog=prog, config=(tyro.conf.OmitArgPrefixes,))
    except _ParseError as e:
        raise VlatrimError(str(e)) from None
    except SystemExit as e:
        if e.code in (0, None):
            raise
        text = " ".join(ln.strip(" │╭╮╰╯─") for ln in box.getvalue().splitlines())
        text = " ".join(t for t in text.split() if t)
        raise VlatrimError(f"{text or 'invalid arguments'} (see '{prog} --help')") from None


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # vlatrim never downloads behind the user's back
    _load_verbs()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cls, prog, rest = _pick("vlatrim", {n: COMMANDS.get(n) for n in COMMANDS.names()}, args)
        cmd = _parse(cls, rest, prog)
        cmd.run()
    except VlatrimError as e:
        close_progress_bars()
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
