"""`vla compress`: merge, then compress the experts of a trained mixture-of-experts policy."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vla.cli.options import DEVICE_HELP

if TYPE_CHECKING:
    from rich.table import Table

    from vla.analysis.compress import CompressReport


def compress(
    run: Annotated[Path, typer.Argument(help="Checkpoint directory, or a `vla train --out` run folder.")],
    data: Annotated[list[str], typer.Option(help="Store(s) whose windows measure the routing (repeat for a mixture).")],
    merge: Annotated[int, typer.Option(help="K: experts kept per MoE layer (1..N); K = N merges nothing.")],
    out: Annotated[Path, typer.Option(help="Folder of the compressed checkpoint (must not exist).")],
    rank: Annotated[
        int | None, typer.Option(help="R: keep each merged expert projection as a rank-R product (default: dense).")
    ] = None,
    sparsity: Annotated[
        float, typer.Option(help="S: also keep this share of each projection's entries (the largest of U V's error).")
    ] = 0.0,
    windows: Annotated[int, typer.Option(help="Calibration windows drawn at random from the stores.")] = 256,
    batch_size: Annotated[int, typer.Option(help="Windows per forward pass.")] = 32,
    seed: Annotated[int, typer.Option(help="Seed of the window draw and of the noise.")] = 0,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
) -> None:
    """Merge experts the router treats alike, then compress the merged ones (MC-SMoE).

    Measures each MoE layer's routing on windows of the stores (as `vla inspect routing`), keeps the K
    most used experts per layer and folds every other expert into the one the router treats most alike
    (hidden units aligned first, weights averaged by routing frequency). With --rank / --sparsity each
    merged projection becomes a rank-R product plus its S largest residual entries. The router keeps
    its outputs, so the result is an ordinary checkpoint: `vla eval libero --policy OUT` runs it.
    HiMoE's action-space layers are left as trained (each expert serves other robots). compress.json in
    OUT records the settings and the measured routing.

        vla compress runs/mode --data libero.zarr --merge 2 --rank 64 --out runs/mode_k2_r64
    """
    from rich.console import Console

    from vla.analysis.compress import CompressSettings, compress_policy, write_compressed
    from vla.policies.policy import Policy
    from vla.policies.pretrained import resolve_checkpoint

    ckpt = resolve_checkpoint(run)
    policy = Policy.from_pretrained(ckpt, map_location=device)
    settings = CompressSettings(merge, rank, sparsity, windows, batch_size, seed)
    compressed, report = compress_policy(policy, data, settings, source=str(ckpt))
    path = write_compressed(compressed, report, ckpt, out)
    console = Console()
    console.print(summary_table(report, title=f"vla compress: {ckpt} -> {path}"))
    console.print(f"expert parameters: {report.params_before:,} -> {report.params_after:,} "
                  f"({100 * report.reduction:.1f}% fewer); report: {path / 'compress.json'}")  # fmt: skip


def summary_table(report: CompressReport, title: str = "") -> Table:
    """Per layer: experts and expert parameters before/after, the reduction and the merged groups."""
    from rich.table import Table

    table = Table("layer", "kind", "experts", "params before", "params after", "reduction", "groups", title=title)
    for p in report.layers:
        reduction = 1 - p.params_after / max(p.params_before, 1)
        if p.skipped:
            experts, groups = f"{p.n_experts} (kept)", f"skipped: {p.skipped}"
        else:
            experts = f"{p.n_experts} -> {len(p.groups)}"
            groups = " ".join("{" + ",".join(f"e{e}" for e in g) + "}" for g in p.groups)
        table.add_row(p.name, p.kind, experts, f"{p.params_before:,}", f"{p.params_after:,}",
                      f"{100 * reduction:.1f}%", groups)  # fmt: skip
    table.add_row("total", "", "", f"{report.params_before:,}", f"{report.params_after:,}",
                  f"{100 * report.reduction:.1f}%", "", style="bold")  # fmt: skip
    return table
