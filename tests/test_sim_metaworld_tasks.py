"""Task-spec parsing and the instruction table, checked against metaworld's own task lists."""

from __future__ import annotations

import pytest

from vlatrim.errors import VlatrimError
from vlatrim.sim.backends.metaworld.instructions import INSTRUCTIONS, instruction_for
from vlatrim.sim.backends.metaworld.tasks import ALL_TASKS, DIFFICULTY, MT10, difficulty_of, parse_tasks


def test_task_tables_match_metaworld():
    from metaworld import env_dict
    assert list(ALL_TASKS) == list(env_dict.ALL_V3_ENVIRONMENTS)
    assert list(MT10) == list(env_dict.MT10_V3)


def test_difficulty_groups_partition_the_50_tasks():
    sizes = {g: len(t) for g, t in DIFFICULTY.items()}
    assert sizes == {"easy": 28, "medium": 11, "hard": 6, "very_hard": 5}
    flat = [t for ts in DIFFICULTY.values() for t in ts]
    assert sorted(flat) == sorted(ALL_TASKS)
    assert difficulty_of("push") == "hard" and difficulty_of("shelf-place-v3") == "very_hard"


def test_instruction_for_every_metaworld_task():
    from metaworld import policies
    assert set(INSTRUCTIONS) == set(ALL_TASKS) == set(policies.ENV_POLICY_MAP)
    texts = list(INSTRUCTIONS.values())
    assert len(set(texts)) == 50, "two tasks share an instruction"
    assert all(t and t == t.strip() and "\n" not in t for t in texts)
    assert instruction_for("Drawer-Open") == "pull the drawer open"


def test_parse_names_groups_and_mixes():
    assert parse_tasks("reach-v3") == ["reach-v3"]
    assert parse_tasks(" drawer-open , reach ") == ["drawer-open-v3", "reach-v3"]
    assert parse_tasks("mt10") == list(MT10)
    assert parse_tasks("mt50") == list(ALL_TASKS)
    assert parse_tasks("very-hard") == list(DIFFICULTY["very_hard"])
    # Groups expand in place and duplicates keep their first position.
    mixed = parse_tasks("shelf-place-v3,hard,push-v3")
    assert mixed == ["shelf-place-v3", *DIFFICULTY["hard"]]
    assert len(parse_tasks("easy,medium,hard,very_hard")) == 50
    assert parse_tasks(["reach-v3", "push-v3,reach"]) == ["reach-v3", "push-v3"]


@pytest.mark.parametrize("bad", ["reech-v3", "mt11", "reach-v2", "reach,bogus"])
def test_unknown_task_lists_the_valid_ones(bad):
    with pytest.raises(VlatrimError) as e:
        parse_tasks(bad)
    msg = str(e.value)
    assert "unknown task" in msg and "reach-v3" in msg and "mt10" in msg and "very_hard" in msg
    assert "\n" not in msg


def test_empty_spec_raises():
    with pytest.raises(VlatrimError, match="empty task spec"):
        parse_tasks(" , ")
