"""Interpretable routing: each router's decisions distilled into a shallow decision tree (as SMOSE does).

`collect_decisions` routes windows of a store, as `vla inspect routing` does, and records for every
routing unit (sequence or token) of every MoE layer what the router chose (its top-1 expert and its
top-k set) next to inputs a person can read: the noise level (log sigma, MoDE) or flow time (t,
HiMoE), the token's position, the embodiment, the task, the frame's step in its episode and the
robot state at that frame (by store key and index). Episodes, not windows, are split into a
training and a held-out part, so the held-out windows come from episodes the tree never saw.

`fit_routing_trees` fits one `DecisionTreeClassifier` per layer on the training part and measures
its agreement with the router on the held-out part (a Wilson 95% interval, and the share a constant
guess of the most common expert would get); `write_tree_report` writes each tree as text and a PNG
and a trees.json summary.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vla.analysis.routing import RoutingError, route_windows
from vla.analysis.windows import policy_windows
from vla.datasets.sampler import MixtureDataset
from vla.errors import DataError
from vla.files import atomic_save_figure, atomic_write_text
from vla.keys import STATE_KEY
from vla.policies.policy import Policy
from vla.statistics import format_rate, wilson_interval

TARGETS = ("top1", "topk")
# the level feature's name by the policy's level name: MoDE's noise level on its log scale (the scale
# its noise embedding reads), HiMoE's flow time as it is
LEVEL_FEATURES = {"sigma": "log_sigma", "t": "t"}


def check_tree_options(depth: int, holdout: float, target: str = "top1") -> None:
    """Reject options that cannot give a tree (before any model is loaded)."""
    if depth < 1:
        raise RoutingError(f"--depth must be at least 1 (got {depth}): a tree of depth 0 is a constant guess")
    if not 0.0 < holdout < 1.0:
        raise RoutingError(f"--holdout is the share of episodes held out, between 0 and 1 exclusive (got {holdout})")
    if target not in TARGETS:
        raise RoutingError(f"--target must be one of {', '.join(TARGETS)} (got {target!r})")


@dataclass
class LayerDecisions:
    """One layer's routing units: which window, level step and token each is, and what the router chose."""

    kind: str
    n_experts: int
    window: list[np.ndarray] = field(default_factory=list)  # row of the window table
    step: list[np.ndarray] = field(default_factory=list)  # index of the level in the sampler's schedule
    token: list[np.ndarray] = field(default_factory=list)  # position of the unit in the routed sequence
    top1: list[np.ndarray] = field(default_factory=list)
    topk: list[np.ndarray] = field(default_factory=list)  # bit e set: expert e selected
    tokens: int = 1  # routing units per window and level (1: one decision per sequence)

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(getattr(self, k)) for k in ("window", "step", "token", "top1", "topk")}


@dataclass
class RoutingDecisions:
    """Every layer's decisions on a set of windows, and the readable inputs of each window."""

    level_name: str
    levels: list[float]
    window_features: np.ndarray  # (W, F)
    window_feature_names: list[str]
    heldout: np.ndarray  # (W,) bool: the window's episode is held out
    episodes: list[tuple[str, int]]  # (store, episode index) of each window
    legend: dict[str, str]  # feature name -> what it stands for (task texts, state dimension names)
    layers: dict[str, LayerDecisions] = field(default_factory=dict)

    def layer_data(self, name: str) -> tuple[np.ndarray, list[str], dict[str, np.ndarray]]:
        """(N, F) readable inputs of the layer's units, their names, and the unit arrays. Columns that do
        not vary are left out (a tree cannot split on them), except the level, which always stays."""
        ld = self.layers[name]
        a = ld.arrays()
        levels = np.asarray(self.levels, np.float64)
        level = np.log(levels) if self.level_name == "sigma" else levels
        cols = [level[a["step"]][:, None]]
        names = [LEVEL_FEATURES.get(self.level_name, self.level_name)]
        if ld.tokens > 1:
            cols.append(a["token"][:, None].astype(np.float64))
            names.append("token")
        cols.append(self.window_features[a["window"]])
        names += self.window_feature_names
        x = np.concatenate(cols, axis=1)
        keep = [0] + [j for j in range(1, x.shape[1]) if np.ptp(x[:, j]) > 0]
        return x[:, keep], [names[j] for j in keep], a


def split_episodes(
    mixture: MixtureDataset, holdout: float, windows: int, seed: int
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int]]]:
    """Hold out a share `holdout` of the mixture's episodes (at least one, never all) and draw about
    `windows` windows: that share of them from held-out episodes, the rest from the others. Returns
    the training and held-out window indices (global) and the (store, episode) of every window."""
    per_store = [d.window_episodes() for d in mixture.datasets]
    store_of = np.concatenate([np.full(len(e), k) for k, e in enumerate(per_store)])
    episode_of = np.concatenate(per_store)
    keys = store_of.astype(np.int64) * (int(episode_of.max()) + 1) + episode_of  # one id per (store, episode)
    unique = np.unique(keys)
    if len(unique) < 2:
        paths = ", ".join(d.path for d in mixture.datasets)
        raise RoutingError(f"{paths}: one episode only; a held-out part needs at least 2 episodes in the stores")
    rng = np.random.default_rng(seed)
    n_hold = min(len(unique) - 1, max(1, round(holdout * len(unique))))
    held = rng.permutation(unique)[:n_hold]
    is_held = np.isin(keys, held)
    pool_hold, pool_train = np.flatnonzero(is_held), np.flatnonzero(~is_held)
    n_w_hold = max(1, round(windows * holdout))
    pick_hold = rng.choice(pool_hold, size=min(n_w_hold, len(pool_hold)), replace=False)
    pick_train = rng.choice(pool_train, size=min(max(1, windows - n_w_hold), len(pool_train)), replace=False)
    names = [d.path for d in mixture.datasets]
    episodes = [(names[int(store_of[i])], int(episode_of[i])) for i in range(len(keys))]
    return np.sort(pick_train), np.sort(pick_hold), episodes


def _state_source(mixture: MixtureDataset, state_dims: Sequence[int] | None) -> tuple[list[np.ndarray], list[int]]:
    """Each store's state array and the dimensions to read. None: every dimension all stores have (none
    when a store has no state); an explicit list must exist in every store."""
    arrays: list[np.ndarray] = []
    for d in mixture.datasets:
        if STATE_KEY not in d.keys:
            if state_dims:
                raise DataError(d.path, STATE_KEY, "no such key, so --state-dims cannot be read; drop --state-dims")
            return [], []
        arrays.append(np.asarray(d.store.array(STATE_KEY)[:], np.float32))
    if state_dims is None:
        return arrays, list(range(min(a.shape[1] for a in arrays)))
    for d, a in zip(mixture.datasets, arrays, strict=True):
        bad = [i for i in state_dims if not 0 <= i < a.shape[1]]
        if bad:
            raise DataError(d.path, STATE_KEY, f"has {a.shape[1]} dimensions; --state-dims asks for {bad}")
    return arrays, list(state_dims)


def _state_names(mixture: MixtureDataset, dims: Sequence[int]) -> dict[str, str]:
    """Feature name -> the stores' name for that state dimension (joined when stores name it differently)."""
    out = {}
    for i in dims:
        names = []
        for d in mixture.datasets:
            n = d.keys[STATE_KEY].names
            if n and i < len(n) and n[i] not in names:
                names.append(n[i])
        if names:
            out[f"{STATE_KEY}[{i}]"] = " / ".join(names)
    return out


def collect_decisions(
    policy: Policy,
    stores: Sequence[str | Path],
    windows: int = 256,
    holdout: float = 0.25,
    batch_size: int = 32,
    seed: int = 0,
    state_dims: Sequence[int] | None = None,
    progress: bool = False,
) -> RoutingDecisions:
    """Route about `windows` windows (a share `holdout` of them from held-out episodes) at every level the
    policy's sampler uses, and record each layer's decisions with the windows' readable inputs."""
    check_tree_options(1, holdout)
    levels, level_name = policy.routing_levels()
    mixture = policy_windows(policy, stores)
    train_idx, held_idx, episodes = split_episodes(mixture, holdout, windows, seed)
    picks = np.concatenate([train_idx, held_idx])
    state_arrays, dims = _state_source(mixture, state_dims)

    items_meta = []  # per picked window: embodiment, task, frame, source store, anchor frame
    embodiments = sorted(mixture.embodiments)
    decisions = RoutingDecisions(level_name, [float(v) for v in levels], np.zeros((0, 0)), [],
                                 np.zeros(len(picks), bool), [], {})  # fmt: skip
    row_of = {int(g): r for r, g in enumerate(picks)}
    for items, step, _, records in route_windows(policy, mixture, picks, batch_size, seed, progress):
        rows = np.array([row_of[int(it["window_index"]) + int(mixture.offsets[int(it["source_index"])])]
                         for it in items])  # fmt: skip
        if step == 0:
            items_meta += [(it["embodiment"], str(it.get("task", "")), int(it["frame_index"]),
                            int(it["source_index"]), int(it["index"])) for it in items]  # fmt: skip
        for rec in records:
            _record(decisions, rec, rows, step)

    tasks = sorted({m[1] for m in items_meta})
    cols: list[np.ndarray] = []
    names: list[str] = []
    for e in embodiments:
        cols.append(np.array([m[0] == e for m in items_meta], np.float64))
        names.append(f"embodiment={e}")
    for k, text in enumerate(tasks):
        cols.append(np.array([m[1] == text for m in items_meta], np.float64))
        names.append(f"task={k}")
        decisions.legend[f"task={k}"] = text or "(no task)"
    cols.append(np.array([m[2] for m in items_meta], np.float64))
    names.append("frame")
    for i in dims:
        cols.append(np.array([state_arrays[m[3]][m[4], i] for m in items_meta], np.float64))
        names.append(f"{STATE_KEY}[{i}]")
    decisions.legend.update(_state_names(mixture, dims))
    decisions.window_features = np.stack(cols, axis=1)
    decisions.window_feature_names = names
    decisions.heldout = np.arange(len(picks)) >= len(train_idx)
    decisions.episodes = [episodes[int(g)] for g in picks]
    return decisions


def _record(decisions: RoutingDecisions, rec: Any, rows: np.ndarray, step: int) -> None:
    w = rec.weights.detach().float().cpu().numpy()  # (B, T, E)
    b, t, e = w.shape
    ld = decisions.layers.setdefault(rec.layer, LayerDecisions(rec.kind, e, tokens=t))
    ld.window.append(np.repeat(rows, t).astype(np.int64))
    ld.step.append(np.full(b * t, step, np.int64))
    ld.token.append(np.tile(np.arange(t), b))
    ld.top1.append(w.argmax(-1).reshape(-1))
    bits = np.left_shift(np.uint64(1), np.arange(min(e, 64), dtype=np.uint64))
    ld.topk.append(((w[..., :64] > 0).astype(np.uint64) * bits).sum(-1).reshape(-1))


# --- trees ----------------------------------------------------------------------------------------------


@dataclass
class RoutingTree:
    """A layer's distilled tree and how well it stands in for the router on held-out episodes."""

    layer: str
    kind: str
    n_experts: int
    inputs: list[str]  # readable inputs offered to the tree
    used: list[str]  # the inputs its splits read
    depth: int
    leaves: int
    n_train: int
    n_heldout: int
    agreement: float
    interval: tuple[float, float]
    train_agreement: float
    majority: str  # the most common decision in the training part
    majority_rate: float  # its share of the held-out units: what a constant guess agrees
    text: str
    model: Any = field(repr=False, default=None)  # the fitted DecisionTreeClassifier

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "n_experts": self.n_experts,
            "inputs": self.inputs,
            "inputs_used": self.used,
            "depth": self.depth,
            "leaves": self.leaves,
            "units": {"train": self.n_train, "heldout": self.n_heldout},
            "agreement": round(self.agreement, 4),
            "interval95": [round(v, 4) for v in self.interval],
            "train_agreement": round(self.train_agreement, 4),
            "majority": {"decision": self.majority, "rate": round(self.majority_rate, 4)},
        }


def decision_labels(a: dict[str, np.ndarray], target: str, n_experts: int) -> np.ndarray:
    """Class labels of the units: 'e3' (top-1) or 'e1+e3' (the selected set)."""
    if target == "top1":
        return np.array([f"e{int(v)}" for v in a["top1"]])
    if n_experts > 64:
        raise RoutingError(f"--target topk reads at most 64 experts per layer (this layer has {n_experts})")
    labels = {}
    for m in np.unique(a["topk"]):
        labels[int(m)] = "+".join(f"e{i}" for i in range(n_experts) if int(m) >> i & 1)
    return np.array([labels[int(m)] for m in a["topk"]])


def fit_tree(
    x: np.ndarray,
    y: np.ndarray,
    heldout: np.ndarray,
    names: list[str],
    depth: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit a tree of at most `depth` levels on the rows not `heldout` and score it on the held-out rows."""
    from sklearn.tree import DecisionTreeClassifier, export_text

    if depth < 1:
        raise RoutingError(f"--depth must be at least 1 (got {depth}): a tree of depth 0 is a constant guess")
    train, hold = ~heldout, heldout
    if not train.any() or not hold.any():
        raise RoutingError("the training and the held-out part both need routing units; use more windows")
    model = DecisionTreeClassifier(max_depth=depth, random_state=seed).fit(x[train], y[train])
    hits = int((model.predict(x[hold]) == y[hold]).sum())
    labels, counts = np.unique(y[train], return_counts=True)
    majority = str(labels[counts.argmax()])
    feats = model.tree_.feature
    used = [names[j] for j in sorted({int(f) for f in feats if f >= 0})]
    classes = [str(c) for c in model.classes_]
    if len(classes) == 1:  # the router always chose the same: one leaf (export_text would print no name)
        text = f"|--- class: {classes[0]}\n"
    else:
        text = export_text(model, feature_names=names, class_names=classes, decimals=3)
    return {
        "model": model,
        "used": used,
        "depth": int(model.get_depth()),
        "leaves": int(model.get_n_leaves()),
        "n_train": int(train.sum()),
        "n_heldout": int(hold.sum()),
        "agreement": hits / int(hold.sum()),
        "interval": wilson_interval(hits, int(hold.sum())),
        "train_agreement": float((model.predict(x[train]) == y[train]).mean()),
        "majority": majority,
        "majority_rate": float((y[hold] == majority).mean()),
        "text": text,
    }


def fit_routing_trees(
    decisions: RoutingDecisions, depth: int = 3, target: str = "top1", seed: int = 0
) -> list[RoutingTree]:
    """One tree per layer, fitted on the training episodes' units, scored on the held-out ones."""
    check_tree_options(depth, 0.5, target)
    trees = []
    for name, ld in decisions.layers.items():
        x, names, a = decisions.layer_data(name)
        y = decision_labels(a, target, ld.n_experts)
        fit = fit_tree(x, y, decisions.heldout[a["window"]], names, depth, seed)
        trees.append(RoutingTree(name, ld.kind, ld.n_experts, names, **fit))
    return trees


# --- report ---------------------------------------------------------------------------------------------


def _file_stem(layer: str) -> str:
    return "tree_" + re.sub(r"[^A-Za-z0-9._-]", "_", layer)


def tree_text(tree: RoutingTree, decisions: RoutingDecisions, target: str) -> str:
    """The tree as indented rules, under a header that says what it stands for and how well."""
    legend = {k: v for k, v in decisions.legend.items() if k in tree.inputs}
    lines = [
        f"# layer {tree.layer} ({tree.kind} router, {tree.n_experts} experts); decision: {target}",
        f"# agreement with the router on held-out episodes: {format_rate(tree.agreement, tree.interval)}"
        f" of {tree.n_heldout} units; constant guess {tree.majority}: {tree.majority_rate:.1%}",
        f"# inputs offered: {', '.join(tree.inputs)}",
        f"# inputs used: {', '.join(tree.used) or '(none: one leaf)'}",
    ]
    if decisions.level_name == "sigma":
        lines.append("# log_sigma: natural log of the noise level; the sampler's steps: "
                     + ", ".join(f"{i}: {math.log(v):.3f}" for i, v in enumerate(decisions.levels)))  # fmt: skip
    else:
        lines.append("# t: flow time; the sampler's steps: "
                     + ", ".join(f"{i}: {v:.3f}" for i, v in enumerate(decisions.levels)))  # fmt: skip
    lines += [f"# {k}: {v}" for k, v in legend.items()]
    return "\n".join(lines) + "\n\n" + tree.text


def plot_tree_png(tree: RoutingTree, path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.tree import plot_tree

    width = min(4.0 + 2.2 * tree.leaves, 40.0)
    fig, ax = plt.subplots(figsize=(width, 2.0 + 1.6 * max(tree.depth, 1)))
    plot_tree(tree.model, feature_names=tree.inputs, class_names=[str(c) for c in tree.model.classes_],
              filled=True, impurity=False, proportion=True, rounded=True, fontsize=7, ax=ax)  # fmt: skip
    head = f"{tree.layer} ({tree.kind}): agreement {format_rate(tree.agreement, tree.interval)}, "
    ax.set_title(f"{head}constant guess {tree.majority}: {tree.majority_rate:.1%}{' - ' + title if title else ''}",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    return atomic_save_figure(fig, path, dpi=110)


def write_tree_report(
    trees: Sequence[RoutingTree],
    decisions: RoutingDecisions,
    out_dir: str | Path,
    target: str = "top1",
    title: str = "",
) -> dict[str, Path]:
    """tree_<layer>.txt and .png per layer and trees.json into `out_dir`; the paths by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    layers = {}
    for tree in trees:
        stem = _file_stem(tree.layer)
        files[f"{tree.layer}.txt"] = atomic_write_text(out / f"{stem}.txt", tree_text(tree, decisions, target))
        files[f"{tree.layer}.png"] = plot_tree_png(tree, out / f"{stem}.png", title)
        layers[tree.layer] = {**tree.to_json(), "text": f"{stem}.txt", "png": f"{stem}.png"}
    held = sorted({ep for ep, h in zip(decisions.episodes, decisions.heldout, strict=True) if h})
    train = sorted({ep for ep, h in zip(decisions.episodes, decisions.heldout, strict=True) if not h})
    summary = {
        "target": target,
        "level_name": decisions.level_name,
        "levels": decisions.levels,
        "windows": {"train": int((~decisions.heldout).sum()), "heldout": int(decisions.heldout.sum())},
        "episodes": {"train": [list(e) for e in train], "heldout": [list(e) for e in held]},
        "legend": decisions.legend,
        "layers": layers,
    }
    files["json"] = atomic_write_text(out / "trees.json", json.dumps(summary, indent=2))
    return files
