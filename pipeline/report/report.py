"""The scaling report of one run: every configuration's metrics -> scaling.csv, speedup.png and report.md."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from pipeline.io import atomic_write, atomic_write_text
from pipeline.train.timing import PHASES

COLUMNS = [
    ("name", "configuration"), ("world_size", "ranks"), ("device", "device"),
    ("batch_size_per_rank", "batch/rank"), ("global_batch_size", "global batch"),
    ("threads_per_rank", "threads/rank"), ("cpu_cores_available", "cores"), ("oversubscribed", "oversubscribed"),
    ("samples_per_second", "samples/s"), ("step_ms", "step ms"), ("data_ms", "data ms"),
    ("forward_backward_ms", "fwd+bwd ms"), ("optimizer_ms", "optimizer ms"), ("allreduce_ms", "all-reduce ms"),
    ("peak_memory_mb", "peak MB"), ("epoch_time_s", "epoch s"), ("speedup", "speedup"), ("efficiency", "efficiency"),
    ("final_val_accuracy", "val acc"), ("test_accuracy", "test acc"),
]


def collect(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(measured configurations sorted by device and world size, skipped configurations)."""
    measured, skipped = [], []
    for folder in sorted((Path(run_dir) / "configs").glob("*/")):
        if (folder / "metrics.json").exists():
            measured.append({"name": folder.name, **json.loads((folder / "metrics.json").read_text())})
        elif (folder / "skipped.json").exists():
            skipped.append({"name": folder.name, **json.loads((folder / "skipped.json").read_text())})
    measured.sort(key=lambda m: (m["device"], m["world_size"]))
    return measured, skipped


def add_scaling(rows: list[dict]) -> None:
    """Speedup and efficiency of each configuration against the smallest one on the same device and batch."""
    for row in rows:
        peers = [r for r in rows if r["device"] == row["device"]
                 and r["batch_size_per_rank"] == row["batch_size_per_rank"]]
        base = min(peers, key=lambda r: r["world_size"])
        row["speedup"] = row["samples_per_second"] / base["samples_per_second"]
        row["efficiency"] = row["speedup"] / (row["world_size"] / base["world_size"])
        row["baseline"] = base["name"]
        for phase in PHASES:
            row[phase.replace("_s", "_ms")] = row[f"mean_{phase}"] * 1000
        row["peak_memory_mb"] = row["peak_memory_bytes"] / 2**20


def write_report(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    rows, skipped = collect(run_dir)
    if not rows:
        raise FileNotFoundError(f"{run_dir}: no configs/*/metrics.json to report on; run `pipeline train` first")
    add_scaling(rows)
    atomic_write_text(run_dir / "scaling.csv", _csv(rows))
    for fmt in ("png", "svg"):
        atomic_write(run_dir / f"speedup.{fmt}", lambda tmp, fmt=fmt: plot_speedup(rows, tmp, fmt))
        atomic_write(run_dir / f"step_split.{fmt}", lambda tmp, fmt=fmt: plot_step_split(rows, tmp, fmt))
    atomic_write_text(run_dir / "report.md", render_markdown(run_dir, rows, skipped))
    return run_dir / "report.md"


def _csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([key for key, _ in COLUMNS])
    for row in rows:
        writer.writerow([_round(row.get(key)) for key, _ in COLUMNS])
    return out.getvalue()


def _round(value: object) -> object:
    return round(value, 4) if isinstance(value, float) else value


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_step_split(rows: list[dict], path: Path, fmt: str) -> None:
    """Stacked bars of the mean step per configuration; the overlapped all-reduce as a separate bar beside them."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(rows) + 2), 4))
    names = [r["name"] for r in rows]
    positions = list(range(len(rows)))
    bottom = [0.0] * len(rows)
    for key, label in [("data_ms", "data wait"), ("forward_backward_ms", "forward + backward"),
                       ("optimizer_ms", "optimizer step")]:
        values = [r[key] for r in rows]
        ax.bar([p - 0.18 for p in positions], values, 0.36, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.bar([p + 0.18 for p in positions], [r["allreduce_ms"] for r in rows], 0.36, color="grey", hatch="//",
           label="gradient all-reduce (overlaps backward)")
    ax.set(xticks=positions, xticklabels=names, ylabel="ms per step (mean)", title="Where a training step goes")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format=fmt, dpi=110)
    plt.close(fig)


def plot_speedup(rows: list[dict], path: Path, fmt: str) -> None:
    plt = _pyplot()
    fig, (ax_speed, ax_eff) = plt.subplots(1, 2, figsize=(10, 4))
    for device in sorted({r["device"] for r in rows}):
        group = [r for r in rows if r["device"] == device]
        sizes = [r["world_size"] for r in group]
        ax_speed.plot(sizes, [r["speedup"] for r in group], "o-", label=f"measured ({device})")
        ax_eff.plot(sizes, [r["efficiency"] for r in group], "o-", label=f"measured ({device})")
    sizes = sorted({r["world_size"] for r in rows})
    base = sizes[0]
    ax_speed.plot(sizes, [s / base for s in sizes], "k--", label="ideal (linear)")
    ax_eff.axhline(1.0, color="k", linestyle="--", label="ideal")
    ax_speed.set(xlabel="ranks (GPUs or CPU processes)", ylabel="speedup (samples/s vs smallest)",
                 title="Speedup", xticks=sizes)
    ax_eff.set(xlabel="ranks (GPUs or CPU processes)", ylabel="efficiency (speedup / ranks)", title="Efficiency",
               xticks=sizes, ylim=(0, 1.2))
    for ax in (ax_speed, ax_eff):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, format=fmt, dpi=110)
    plt.close(fig)


def render_markdown(run_dir: Path, rows: list[dict], skipped: list[dict]) -> str:
    first = rows[0]
    lines = [f"# Scaling report: {run_dir.name}", ""]
    lines += [f"Measured {first['measured_at']} on `{first['hostname']}`: {first['cpu_model']}, "
              f"{first['cpu_cores_available']} CPU cores available"
              + (f", GPU {first['gpu_model']}" if "gpu_model" in first else "") + ". "
              f"Versions: {', '.join(f'{k} {v}' for k, v in first['versions'].items())}. "
              f"Launcher: {first['launcher']}. Each figure is one training run per configuration (no repeats yet), "
              f"so differences of a few percent are within the noise of a shared machine.", ""]
    lines += ["## Configurations", "", "| " + " | ".join(h for _, h in COLUMNS) + " |",
              "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(key)) for key, _ in COLUMNS) + " |")
    lines += ["", "![speedup and efficiency](speedup.png)", "", "![step time split](step_split.png)", ""]
    lines += ["## How this was measured", "",
              "- samples/s: training samples of all ranks per second of epoch wall time, averaged over every epoch "
              "after the first (the first pays one-off warm-up costs). The batch per rank is fixed, so the global "
              "batch grows with the ranks (weak scaling of the batch, as in data-parallel GPU training).",
              "- speedup: samples/s over that of the configuration with the fewest ranks on the same device; "
              "efficiency: speedup divided by the ratio of ranks.",
              "- step ms: mean wall time of one training step on rank 0 over the same epochs, split into data ms "
              "(waiting for the batch), fwd+bwd ms (forward and backward, including the wait for the last gradient "
              "all-reduce) and optimizer ms. all-reduce ms: time from launching each gradient bucket's all-reduce "
              "to its completion, summed over buckets; it runs while backward computes, so only part of it adds "
              "to the step. Raw per-step timings: configs/<name>/steps.csv.",
              "- peak MB: peak resident memory of a rank's process on CPU (peak allocated tensor memory on a GPU), "
              "the largest over the ranks.",
              "- val/test acc: accuracy on chunks of held-out source files, after the last epoch.", ""]
    lines += ["## Read this before quoting the numbers", ""] + [f"- {note}" for note in honesty_notes(rows, skipped)]
    lines += _preprocess_section(run_dir)
    return "\n".join(lines) + "\n"


def honesty_notes(rows: list[dict], skipped: list[dict]) -> list[str]:
    notes = []
    cpu = [r for r in rows if r["device"] == "cpu"]
    if cpu:
        cores = cpu[0]["cpu_cores_available"]
        notes.append(
            f"The ranks here are CPU processes, not GPUs: {cores} cores in all, "
            f"{cpu[0]['threads_per_rank']} thread(s) per rank. The ranks share the memory bandwidth and caches "
            "of one socket and all-reduce through shared memory with gloo, so this curve shows the overhead of the "
            "DDP machinery on this host, not what GPUs with their own memory would reach.")
    for row in rows:
        if row.get("oversubscribed"):
            notes.append(f"{row['name']} oversubscribes the CPU: {row['world_size']} ranks x "
                         f"{row['threads_per_rank']} threads on {row['cpu_cores_available']} cores; its speedup "
                         "is bounded by the cores, not by the method.")
    for row in rows:
        if row["world_size"] > 1 and row["efficiency"] < 0.95:
            base = _baseline(rows, row)
            parts = ", ".join(f"{label} {row[key]:.1f} vs {base[key]:.1f} ms" for key, label in
                              [("forward_backward_ms", "forward+backward"), ("data_ms", "data wait"),
                               ("optimizer_ms", "optimizer")])
            notes.append(
                f"{row['name']} reaches {row['efficiency']:.0%} efficiency. Its step takes {row['step_ms']:.1f} ms "
                f"against {base['step_ms']:.1f} ms for {base['name']}: {parts}. The gradient all-reduce takes "
                f"{row['allreduce_ms']:.1f} ms ({row['allreduce_ms'] / row['step_ms']:.0%} of the step, partly "
                "hidden behind backward).")
    for skip in skipped:
        notes.append(f"{skip['name']} was not run: {skip['reason']}.")
    return notes


def _baseline(rows: list[dict], row: dict) -> dict:
    return next(r for r in rows if r["name"] == row["baseline"])


def _preprocess_section(run_dir: Path) -> list[str]:
    path = run_dir / "features" / "summary.json"
    if not path.exists():
        return []
    s = json.loads(path.read_text())
    return ["", "## Preprocessing", "",
            f"{s['files']} source files -> {s['chunks']} chunks (train/val/test "
            f"{s['chunks_per_split']['train']}/{s['chunks_per_split']['val']}/{s['chunks_per_split']['test']}, "
            f"split by source file) in {s['seconds']:.1f} s ({s['chunks_per_second']:.1f} chunks/s, "
            f"{s.get('workers', '?')} Dask workers); {s['rejected_files']} files rejected "
            "(listed in features/rejects.csv)."]


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)
