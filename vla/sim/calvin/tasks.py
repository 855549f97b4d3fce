"""CALVIN's 34 subtasks: names (in the order the chain generator draws them), categories and the
symbolic rules that decide which chains are feasible from a symbolic scene state.

A symbolic state is a dict with the keys of `STATE_VALUES`, in that order (the order matters: the
seeded block layout hashes the text of the values). Each rule is a precondition -> effect on that
dict; a subtask may have several rules (one per block, or per slider side), and a chain step is
valid only when exactly one of them applies. Everything but placing a held block requires an empty
gripper (`grasped` 0).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import permutations, product
from typing import Any

from vla.sim.base import SimError

State = dict[str, Any]

BLOCKS = ("red", "blue", "pink")
SLIDER_SPOTS = ("slider_right", "slider_left")
# Key order and value order are the reference's: both feed the seeded generation.
STATE_VALUES: dict[str, tuple[Any, ...]] = {
    "led": (0, 1),
    "lightbulb": (0, 1),
    "slider": ("right", "left"),
    "drawer": ("closed", "open"),
    "red_block": ("table", "slider_right", "slider_left"),
    "blue_block": ("table", "slider_right", "slider_left"),
    "pink_block": ("table", "slider_right", "slider_left"),
    "grasped": (0,),
}
STATE_KEYS = tuple(STATE_VALUES)

SUBTASKS: tuple[str, ...] = (
    *(f"rotate_{b}_block_{side}" for b in BLOCKS for side in ("right", "left")),
    *(f"push_{b}_block_{side}" for b in BLOCKS for side in ("right", "left")),
    "move_slider_left",
    "move_slider_right",
    "open_drawer",
    "close_drawer",
    *(f"lift_{b}_block_{where}" for b in BLOCKS for where in ("table", "slider", "drawer")),
    "place_in_slider",
    "place_in_drawer",
    "stack_block",
    "unstack_block",
    "turn_on_lightbulb",
    "turn_off_lightbulb",
    "turn_on_led",
    "turn_off_led",
    "push_into_drawer",
)


def category(subtask: str) -> int:
    """The reference's category number; a chain holds at most one subtask of each."""
    if subtask.startswith(("rotate_", "push_")) and subtask != "push_into_drawer":
        return 1
    if subtask.startswith("move_slider"):
        return 2
    if subtask in ("open_drawer", "close_drawer"):
        return 3
    if subtask.startswith("lift_"):
        return {"table": 4, "slider": 5, "drawer": 6}[subtask.rsplit("_", 1)[1]]
    if subtask.startswith("place_in_"):
        return 7
    if subtask.startswith("turn_"):
        return 8
    return {"push_into_drawer": 9, "stack_block": 10, "unstack_block": 11}[subtask]


CATEGORIES: dict[str, int] = {name: category(name) for name in SUBTASKS}


# --- rules: each returns the next states of every rule of a subtask that applies -----------------------


def _key(block: str) -> str:
    return f"{block}_block"


def _with(state: Mapping[str, Any], **changes: Any) -> State:
    return {**state, **changes}


def _block_on_table(block: str) -> Callable[[State], list[State]]:
    def rule(s: State) -> list[State]:  # rotate/push: the block stays where it is
        return [dict(s)] if s["grasped"] == 0 and s[_key(block)] == "table" else []

    return rule


def _toggle(key: str, before: Any, after: Any) -> Callable[[State], list[State]]:
    def rule(s: State) -> list[State]:
        return [_with(s, **{key: after})] if s["grasped"] == 0 and s[key] == before else []

    return rule


def _lift(block: str, where: str) -> Callable[[State], list[State]]:
    def rule(s: State) -> list[State]:
        if s["grasped"] != 0:
            return []
        pos = s[_key(block)]
        if where == "table":
            ok = pos == "table"
        elif where == "drawer":
            ok = pos == "drawer" and s["drawer"] == "open"
        else:  # reachable only from the side the sliding door does not cover
            ok = (pos, s["slider"]) in (("slider_left", "right"), ("slider_right", "left"))
        return [_with(s, **{_key(block): "grasped", "grasped": 1})] if ok else []

    return rule


def _place_in_slider(s: State) -> list[State]:
    spot = "slider_right" if s["slider"] == "right" else "slider_left"
    return [_with(s, **{_key(b): spot, "grasped": 0}) for b in BLOCKS if s["grasped"] == 1 and s[_key(b)] == "grasped"]


def _place_in_drawer(s: State) -> list[State]:
    if s["grasped"] != 1 or s["drawer"] != "open":
        return []
    return [_with(s, **{_key(b): "drawer", "grasped": 0}) for b in BLOCKS if s[_key(b)] == "grasped"]


def _stack(s: State) -> list[State]:
    if s["grasped"] != 1:
        return []
    return [
        _with(s, **{_key(top): "stacked_top", _key(bottom): "stacked_bottom", "grasped": 0})
        for top, bottom in permutations(BLOCKS, 2)
        if s[_key(top)] == "grasped" and s[_key(bottom)] == "table"
    ]


def _unstack(s: State) -> list[State]:
    if s["grasped"] != 0:
        return []
    return [
        _with(s, **{_key(top): "table", _key(bottom): "table"})
        for top, bottom in permutations(BLOCKS, 2)
        if s[_key(top)] == "stacked_top" and s[_key(bottom)] == "stacked_bottom"
    ]


def _push_into_drawer(s: State) -> list[State]:
    if s["grasped"] != 0 or s["drawer"] != "open":
        return []
    out = []
    for b in BLOCKS:
        others = [o for o in BLOCKS if o != b]
        if s[_key(b)] == "table" and all(s[_key(o)] in SLIDER_SPOTS for o in others):
            out.append(_with(s, **{_key(b): "drawer"}))
    return out


def _rules() -> dict[str, Callable[[State], list[State]]]:
    rules: dict[str, Callable[[State], list[State]]] = {}
    for b in BLOCKS:
        for verb, side in product(("rotate", "push"), ("right", "left")):
            rules[f"{verb}_{b}_block_{side}"] = _block_on_table(b)
        for where in ("table", "slider", "drawer"):
            rules[f"lift_{b}_block_{where}"] = _lift(b, where)
    rules.update(
        move_slider_left=_toggle("slider", "right", "left"),
        move_slider_right=_toggle("slider", "left", "right"),
        open_drawer=_toggle("drawer", "closed", "open"),
        close_drawer=_toggle("drawer", "open", "closed"),
        turn_on_lightbulb=_toggle("lightbulb", 0, 1),
        turn_off_lightbulb=_toggle("lightbulb", 1, 0),
        turn_on_led=_toggle("led", 0, 1),
        turn_off_led=_toggle("led", 1, 0),
        place_in_slider=_place_in_slider,
        place_in_drawer=_place_in_drawer,
        stack_block=_stack,
        unstack_block=_unstack,
        push_into_drawer=_push_into_drawer,
    )
    return {name: rules[name] for name in SUBTASKS}


RULES = _rules()


def next_states(state: State, subtask: str) -> list[State]:
    """The states every applicable rule of `subtask` leads to (a valid step has exactly one)."""
    return RULES[subtask](state)


def feasible_chain(state: State, chain: Sequence[str]) -> bool:
    """Every step has exactly one applicable rule, and no two steps share a category."""
    for subtask in chain:
        nxt = RULES[subtask](state)
        if len(nxt) != 1:
            return False
        state = nxt[0]
    return len({CATEGORIES[t] for t in chain}) == len(chain)


def initial_states() -> list[State]:
    """The 192 start states: 1 or 2 blocks on the table, at most one block per slider side."""
    out = []
    for values in product(*STATE_VALUES.values()):
        if values.count("table") in (1, 2) and values.count("slider_right") < 2 and values.count("slider_left") < 2:
            out.append(dict(zip(STATE_KEYS, values, strict=True)))
    return out


def check_subtasks(names: Sequence[str], option: str = "--subtasks") -> tuple[str, ...]:
    """Subtask names as given (blanks and repeats dropped); one error naming every unknown one."""
    out = tuple(dict.fromkeys(n.strip() for n in names if n.strip()))
    if not out:
        raise SimError(f"{option} is empty; give CALVIN subtask names, e.g. open_drawer,turn_on_led")
    unknown = [n for n in out if n not in SUBTASKS]
    if unknown:
        raise SimError(f"unknown CALVIN subtask(s) {', '.join(unknown)} in {option}; known: {', '.join(SUBTASKS)}")
    return out
