"""Which experts fire: routing statistics of a mixture-of-experts checkpoint on a store's windows.

`collect_routing` samples training windows from one or more stores (the same windows and slot
layout the trainer builds), runs the policy's `inspect_routing` at each of its inference noise/time
levels (`routing_levels`: MoDE's sampling sigmas, HiMoE's Euler times) and counts, per layer, how
often each expert is selected for each embodiment, task and level. `write_routing_report` turns the
counts into routing.json, a heatmap PNG per grouping and a markdown table; `routing_purity` says how
cleanly a layer separates embodiments (what HiMoE's action-space experts should do).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla.analysis.windows import collate, embodiment_remap, policy_windows
from vla.datasets.sampler import MixtureDataset
from vla.errors import VlaError
from vla.files import atomic_save_figure, atomic_write_text
from vla.policies.policy import Policy
from vla.policies.routing import LayerRouting
from vla.progress import progress_bar

GROUPINGS = ("embodiment", "task", "level")


class RoutingError(VlaError):
    """A checkpoint or store that cannot be inspected (dense policy, stores that do not fit)."""


@dataclass
class LayerCounts:
    kind: str
    n_experts: int
    # grouping -> group label -> (selections per expert, routing units seen)
    counts: dict[str, dict[str, np.ndarray]] = field(default_factory=lambda: defaultdict(dict))
    units: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    # over routing units, p the router's softmax (E,): sum of p p^T, sum of p and the unit count, all that the
    # correlation of two experts' probability columns over every unit seen needs
    prob_gram: np.ndarray | None = None
    prob_sum: np.ndarray | None = None
    prob_units: int = 0

    def add(self, grouping: str, label: str, selected: np.ndarray) -> None:
        """`selected` (N, E) bool: which experts each of N routing units used."""
        prev = self.counts[grouping].get(label)
        add = selected.sum(0).astype(np.int64)
        self.counts[grouping][label] = add if prev is None else prev + add
        self.units[grouping][label] = self.units[grouping].get(label, 0) + int(selected.shape[0])

    def add_probs(self, probs: np.ndarray) -> None:
        """`probs` (N, E): the router's softmax for N routing units."""
        p = probs.astype(np.float64)
        gram, total = p.T @ p, p.sum(0)
        if self.prob_gram is None or self.prob_sum is None:
            self.prob_gram, self.prob_sum = gram, total
        else:
            self.prob_gram, self.prob_sum = self.prob_gram + gram, self.prob_sum + total
        self.prob_units += p.shape[0]

    def overall_frequency(self) -> np.ndarray:
        """(E,) share of all routing units (every level, window and token) that selected each expert."""
        total = sum(self.counts["level"].values(), np.zeros(self.n_experts, np.int64))
        return total / max(sum(self.units["level"].values()), 1)

    def similarity(self) -> np.ndarray:
        """(E, E) correlation of the experts' router probabilities over all units seen: 1 when the router favours
        two experts on the same units (levels, tokens) alike, negative when it favours one where it avoids the
        other (MC-SMoE's routing similarity, centred: raw probabilities are all positive, so their cosine is
        near 1 for any two experts of a router that is not yet sharp). 0 for an expert whose probability never
        changes."""
        if self.prob_gram is None or self.prob_sum is None or not self.prob_units:
            raise RoutingError("this routing record has no router probabilities to compare experts by")
        mean = self.prob_sum / self.prob_units
        cov = self.prob_gram / self.prob_units - np.outer(mean, mean)
        std = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        varies = std > 1e-9 * max(float(std.max()), 1e-30)
        denom = np.outer(np.where(varies, std, 1.0), np.where(varies, std, 1.0))
        corr = np.where(np.outer(varies, varies), cov / denom, 0.0)
        np.fill_diagonal(corr, 1.0)
        return np.clip(corr, -1.0, 1.0)

    def frequency(self, grouping: str) -> tuple[list[str], np.ndarray]:
        """Group labels and (G, E) share of each group's routing units that selected each expert."""
        labels = sorted(self.counts[grouping], key=_label_order)
        freq = np.stack([self.counts[grouping][g] / max(self.units[grouping][g], 1) for g in labels])
        return labels, freq


@dataclass
class RoutingStats:
    layers: dict[str, LayerCounts]
    windows: int
    levels: list[float]
    level_name: str  # "sigma" (diffusion) or "t" (flow matching)
    # per layer and embodiment: top-1 expert counts, for purity
    top1: dict[str, dict[str, np.ndarray]] = field(default_factory=lambda: defaultdict(dict))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"windows": self.windows, "levels": self.levels, "level_name": self.level_name}
        layers = {}
        for name, lc in self.layers.items():
            entry: dict[str, Any] = {"kind": lc.kind, "n_experts": lc.n_experts}
            for grouping in GROUPINGS:
                labels, freq = lc.frequency(grouping)
                entry[grouping] = {g: [round(float(v), 4) for v in row] for g, row in zip(labels, freq, strict=True)}
            entry["purity"] = routing_purity(self.top1[name])
            layers[name] = entry
        out["layers"] = layers
        return out


def routing_purity(top1: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per embodiment the share of its units whose top-1 expert is its majority expert, the mean of
    those, and whether the embodiments' majority experts all differ (a clean separation)."""
    per = {e: float(c.max() / max(c.sum(), 1)) for e, c in top1.items()}
    majors = [int(c.argmax()) for c in top1.values()]
    return {
        "per_embodiment": per,
        "mean": float(np.mean(list(per.values()))) if per else 0.0,
        "distinct_majority": len(set(majors)) == len(majors),
        "majority_expert": {e: int(c.argmax()) for e, c in top1.items()},
    }


def collect_routing(
    policy: Policy,
    stores: Sequence[str | Path],
    windows: int = 256,
    batch_size: int = 32,
    seed: int = 0,
) -> RoutingStats:
    levels, level_name = policy.routing_levels()
    mixture = policy_windows(policy, stores)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(mixture), size=min(windows, len(mixture)), replace=False)
    stats = RoutingStats({}, len(picks), [float(v) for v in levels], level_name)
    for items, _, level, records in route_windows(policy, mixture, picks, batch_size, seed):
        names = [it["embodiment"] for it in items]
        tasks = [str(it.get("task", "")) for it in items]
        for rec in records:
            _count(stats, rec, names, tasks, f"{level_name}={level:.3g}")
    return stats


def route_windows(
    policy: Policy,
    mixture: MixtureDataset,
    picks: np.ndarray,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = False,
) -> Iterator[tuple[list[dict[str, Any]], int, float, list[LayerRouting]]]:
    """For each batch of the windows `picks` and each of the policy's routing levels: the windows, the
    level's step number and value, and every MoE layer's routing (the one forward loop of all routing
    inspection, so its noise draws are the same whatever is computed from them)."""
    levels, _ = policy.routing_levels()
    remap = embodiment_remap(policy, mixture.embodiments)
    gen = torch.Generator().manual_seed(seed)
    policy.eval()
    with progress_bar(len(picks), "routing", unit="window", disable=not progress) as bar:
        for start in range(0, len(picks), batch_size):
            items = [mixture[int(i)] for i in picks[start : start + batch_size]]
            batch = collate(items, remap)
            for step, level in enumerate(levels):
                torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
                level_vec = torch.full((len(items),), float(level))
                yield items, step, float(level), policy.inspect_routing(batch, level_vec)
            bar.update(len(items))


def _count(stats: RoutingStats, rec: Any, names: list[str], tasks: list[str], level_label: str) -> None:
    w = rec.weights.detach().float().cpu().numpy()  # (B, T, E)
    b, _, e = w.shape
    lc = stats.layers.setdefault(rec.layer, LayerCounts(rec.kind, e))
    if rec.probs is not None:
        lc.add_probs(rec.probs.detach().float().cpu().numpy().reshape(-1, e))
    selected = w > 0
    for row in range(b):
        sel = selected[row]
        lc.add("embodiment", names[row], sel)
        lc.add("task", tasks[row] or "(no task)", sel)
        lc.add("level", level_label, sel)
        top = np.bincount(w[row].argmax(-1), minlength=e)
        prev = stats.top1[rec.layer].get(names[row])
        stats.top1[rec.layer][names[row]] = top if prev is None else prev + top


def _label_order(label: str) -> tuple[int, float | str]:
    if "=" in label:  # level labels sort by value, high noise first
        try:
            return (0, -float(label.split("=", 1)[1]))
        except ValueError:
            pass
    return (1, label)


# --- report --------------------------------------------------------------------------------------------


def write_routing_report(stats: RoutingStats, out_dir: str | Path, title: str = "") -> dict[str, Path]:
    """routing.json, routing_<grouping>.png heatmaps and routing.md into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "routing.json", "markdown": out / "routing.md"}
    atomic_write_text(files["json"], json.dumps(stats.to_json(), indent=2))
    for grouping in GROUPINGS:
        files[grouping] = plot_heatmap(stats, grouping, out / f"routing_{grouping}.png", title)
    atomic_write_text(files["markdown"], markdown_report(stats, title))
    return files


def markdown_report(stats: RoutingStats, title: str = "") -> str:
    lines = [f"# Expert routing{': ' + title if title else ''}", ""]
    lines.append(f"{stats.windows} windows x {len(stats.levels)} {stats.level_name} levels.")
    lines += ["", "| layer | kind | embodiment | top experts (share of units) | purity |", "|---|---|---|---|---|"]
    for name, lc in stats.layers.items():
        labels, freq = lc.frequency("embodiment")
        purity = routing_purity(stats.top1[name])
        for g, row in zip(labels, freq, strict=True):
            lines.append(f"| {name} | {lc.kind} | {g} | {top_experts(row)} | {purity['per_embodiment'][g]:.2f} |")
    lines += ["", "![by embodiment](routing_embodiment.png)", "", "![by task](routing_task.png)", ""]
    lines += ["![by level](routing_level.png)", ""]
    return "\n".join(lines)


def top_experts(freq: np.ndarray, n: int = 3) -> str:
    order = np.argsort(-freq)[:n]
    return ", ".join(f"e{int(i)} {freq[i]:.2f}" for i in order if freq[i] > 0)


def plot_heatmap(stats: RoutingStats, grouping: str, path: Path, title: str = "") -> Path:
    """One panel per layer: groups (rows) x experts (columns), share of units selecting the expert."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(stats.layers)
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 0.4 * rows * 8 + 1), squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names, strict=False):
        labels, freq = stats.layers[name].frequency(grouping)
        ax.imshow(freq, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_title(f"{name} ({stats.layers[name].kind})", fontsize=8)
        ax.set_xlabel("expert", fontsize=7)
        ax.set_yticks(range(len(labels)), [lb[:24] for lb in labels], fontsize=6)
        ax.tick_params(axis="x", labelsize=6)
    fig.suptitle(f"expert selection by {grouping}{' - ' + title if title else ''}", fontsize=9)
    fig.tight_layout()
    return atomic_save_figure(fig, path, dpi=110)
