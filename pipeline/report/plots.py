"""The report's figures, each written as PNG (for Markdown) and SVG (for print)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, fmt: str) -> None:
    fig.tight_layout()
    fig.savefig(path, format=fmt, dpi=110)
    _pyplot().close(fig)


def speedup(rows: list[dict], path: Path, fmt: str) -> None:
    """Speedup and efficiency against the ideal line, one curve per device and batch size."""
    plt = _pyplot()
    fig, (ax_speed, ax_eff) = plt.subplots(1, 2, figsize=(10, 4))
    for key in sorted({(r["device"], r["batch_size_per_rank"]) for r in rows}):
        group = [r for r in rows if (r["device"], r["batch_size_per_rank"]) == key]
        sizes = [r["world_size"] for r in group]
        label = f"measured ({key[0]}, batch {key[1]}/rank)"
        ax_speed.plot(sizes, [r["speedup"] for r in group], "o-", label=label)
        ax_eff.plot(sizes, [r["efficiency"] for r in group], "o-", label=label)
    sizes = sorted({r["world_size"] for r in rows})
    ax_speed.plot(sizes, [s / sizes[0] for s in sizes], "k--", label="ideal (linear)")
    ax_eff.axhline(1.0, color="k", linestyle="--", label="ideal")
    ax_speed.set(xlabel="ranks (GPUs or CPU processes)", ylabel="speedup (samples/s vs fewest ranks)",
                 title="Speedup", xticks=sizes)
    ax_eff.set(xlabel="ranks (GPUs or CPU processes)", ylabel="efficiency (speedup / ranks)", title="Efficiency",
               xticks=sizes, ylim=(0, 1.2))
    for ax in (ax_speed, ax_eff):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path, fmt)


def step_split(rows: list[dict], path: Path, fmt: str) -> None:
    """Stacked bars of the mean step per configuration; the overlapped all-reduce as a separate bar beside them."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(rows) + 2), 4))
    positions = list(range(len(rows)))
    bottom = [0.0] * len(rows)
    for key, label in [("data_ms", "data wait"), ("forward_backward_ms", "forward + backward"),
                       ("optimizer_ms", "optimizer step")]:
        values = [r[key] for r in rows]
        ax.bar([p - 0.18 for p in positions], values, 0.36, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.bar([p + 0.18 for p in positions], [r["allreduce_ms"] for r in rows], 0.36, color="grey", hatch="//",
           label="gradient all-reduce (overlaps backward)")
    ax.set(xticks=positions, xticklabels=[r["name"] for r in rows], ylabel="ms per step (mean)",
           title="Where a training step goes")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path, fmt)


def curves(rows: list[dict], path: Path, fmt: str) -> None:
    """Training loss and validation accuracy per epoch, one line per configuration."""
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for row in rows:
        epochs = [h["epoch"] for h in row["history"]]
        ax_loss.plot(epochs, [h["train_loss"] for h in row["history"]], "o-", label=row["name"])
        ax_acc.plot(epochs, [h["val_accuracy"] for h in row["history"]], "o-", label=row["name"])
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Training loss")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy", title="Validation accuracy", ylim=(0, 1.02))
    epochs = sorted({h["epoch"] for row in rows for h in row["history"]})
    for ax in (ax_loss, ax_acc):
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path, fmt)


FIGURES = {
    "speedup": (speedup, "Speedup and efficiency against the ideal line"),
    "step_split": (step_split, "Where a training step goes"),
    "curves": (curves, "Training loss and validation accuracy per epoch"),
}
