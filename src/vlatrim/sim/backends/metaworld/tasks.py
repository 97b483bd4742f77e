"""Meta-World task specs: task names, benchmark suites and difficulty groups.

A task spec is a comma-separated list of items, each either a Meta-World v3 task name
(``reach-v3``; the ``-v3`` suffix may be left out), a benchmark suite (``mt10``, ``mt50``) or a
difficulty group (``easy``, ``medium``, ``hard``, ``very_hard``). Items expand in order and duplicates
are dropped, so ``"mt10,reach-v3,easy"`` is a valid spec.

The difficulty groups are the split of Seo et al. 2022 ("Masked World Models for Visual Control"),
which LeRobot's Meta-World support uses too (easy 28, medium 11, hard 6, very hard 5 tasks).
"""

from __future__ import annotations

from vlatrim.errors import VlatrimError

# All 50 Meta-World v3 tasks, in the order of metaworld.env_dict.ALL_V3_ENVIRONMENTS (the MT50 order).
# Kept as a literal so task parsing does not import MuJoCo; a test checks it against metaworld.
ALL_TASKS: tuple[str, ...] = (
    "assembly-v3", "basketball-v3", "bin-picking-v3", "box-close-v3", "button-press-topdown-v3",
    "button-press-topdown-wall-v3", "button-press-v3", "button-press-wall-v3", "coffee-button-v3",
    "coffee-pull-v3", "coffee-push-v3", "dial-turn-v3", "disassemble-v3", "door-close-v3",
    "door-lock-v3", "door-open-v3", "door-unlock-v3", "hand-insert-v3", "drawer-close-v3",
    "drawer-open-v3", "faucet-open-v3", "faucet-close-v3", "hammer-v3", "handle-press-side-v3",
    "handle-press-v3", "handle-pull-side-v3", "handle-pull-v3", "lever-pull-v3",
    "pick-place-wall-v3", "pick-out-of-hole-v3", "pick-place-v3", "plate-slide-v3",
    "plate-slide-side-v3", "plate-slide-back-v3", "plate-slide-back-side-v3", "peg-insert-side-v3",
    "peg-unplug-side-v3", "soccer-v3", "stick-push-v3", "stick-pull-v3", "push-v3", "push-wall-v3",
    "push-back-v3", "reach-v3", "reach-wall-v3", "shelf-place-v3", "sweep-into-v3", "sweep-v3",
    "window-open-v3", "window-close-v3",
)  # fmt: skip

# MT10, in metaworld.env_dict.MT10_V3 order.
MT10: tuple[str, ...] = (
    "reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
    "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3",
)  # fmt: skip

# Seo et al. 2022 difficulty split of the 50 tasks (also LeRobot's `--env.task=easy|medium|...`).
DIFFICULTY: dict[str, tuple[str, ...]] = {
    "easy": (
        "button-press-v3", "button-press-topdown-v3", "button-press-topdown-wall-v3",
        "button-press-wall-v3", "coffee-button-v3", "dial-turn-v3", "door-close-v3", "door-lock-v3",
        "door-open-v3", "door-unlock-v3", "drawer-close-v3", "drawer-open-v3", "faucet-close-v3",
        "faucet-open-v3", "handle-press-v3", "handle-press-side-v3", "handle-pull-v3",
        "handle-pull-side-v3", "lever-pull-v3", "plate-slide-v3", "plate-slide-back-v3",
        "plate-slide-back-side-v3", "plate-slide-side-v3", "reach-v3", "reach-wall-v3",
        "window-close-v3", "window-open-v3", "peg-unplug-side-v3",
    ),
    "medium": (
        "basketball-v3", "bin-picking-v3", "box-close-v3", "coffee-pull-v3", "coffee-push-v3",
        "hammer-v3", "peg-insert-side-v3", "push-wall-v3", "soccer-v3", "sweep-v3", "sweep-into-v3",
    ),
    "hard": (
        "assembly-v3", "hand-insert-v3", "pick-out-of-hole-v3", "pick-place-v3", "push-v3",
        "push-back-v3",
    ),
    "very_hard": (
        "shelf-place-v3", "disassemble-v3", "stick-pull-v3", "stick-push-v3", "pick-place-wall-v3",
    ),
}  # fmt: skip

# Named groups a spec item may use, besides single task names.
GROUPS: dict[str, tuple[str, ...]] = {"mt10": MT10, "mt50": ALL_TASKS, **DIFFICULTY}


def difficulty_of(task: str) -> str:
    """The difficulty group (``easy`` ... ``very_hard``) that ``task`` belongs to."""
    task = canonical_task(task)
    return next(group for group, tasks in DIFFICULTY.items() if task in tasks)


def canonical_task(name: str) -> str:
    """Normalise one task name (case, surrounding space, optional ``-v3``); unknown names raise."""
    key = name.strip().lower().replace("_", "-")
    if key in ALL_TASKS:
        return key
    if f"{key}-v3" in ALL_TASKS:
        return f"{key}-v3"
    raise VlatrimError(
        f"unknown task {name.strip()!r}; valid: {', '.join(ALL_TASKS)} (or the groups {', '.join(GROUPS)})"
    )


def parse_tasks(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Expand a task spec into an ordered list of distinct Meta-World v3 task names.

    Args:
        spec: ``"reach-v3,drawer-open"``, ``"mt10"``, ``"easy,hard"``, ... or a list of such items.

    Returns:
        Task names in the order they first appear in the expansion.

    Raises:
        VlatrimError: for an empty spec or an unknown item (the message lists the valid ones).
    """
    items = spec.split(",") if isinstance(spec, str) else [p for s in spec for p in str(s).split(",")]
    items = [i.strip() for i in items if i.strip()]
    if not items:
        raise VlatrimError(f"empty task spec {spec!r}; give task names or one of {', '.join(GROUPS)}")
    out: list[str] = []
    for item in items:
        group = GROUPS.get(item.lower().replace("-", "_"))
        for task in group if group is not None else (canonical_task(item),):
            if task not in out:
                out.append(task)
    return out
