"""Two runs side by side (CPU vs GPU, two code versions): compare.md, compare.html, compare.csv and one figure.

A comparison is only worth quoting next to what each run was measured on, so the hardware, versions and dates of
both runs come first, and every configuration either run has gets a row, with "n/a" on the side that lacks it.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure as PlotFigure

from pipeline.io import atomic_write, atomic_write_csv, atomic_write_text
from pipeline.report.aggregate import aggregate
from pipeline.report.document import Block, Bullets, Figure, Heading, Paragraph, Table, to_html, to_markdown
from pipeline.report.plots import errorbar
from pipeline.report.table import (
    add_derived,
    backend_of,
    backend_order,
    cell,
    collect,
    relative_ci,
    scaling_groups,
    several_backends,
)

FIGURE = "compare"
"""compare.png and compare.svg: speedup and samples/s of both runs."""

# (key of a configuration row, header): each is shown for run A and run B, as `<key>_a` and `<key>_b` with their
# 95% confidence intervals `<key>_a_ci95` and `<key>_b_ci95` (None for a single run; see aggregate.py).
MEASURES = [
    ("samples_per_second", "samples/s"),
    ("efficiency", "efficiency"),
    ("step_ms", "step ms"),
    ("test_accuracy", "test acc"),
]


def default_out(run_a: Path, run_b: Path) -> Path:
    """RUN_B/compare-<name of RUN_A>: the comparison belongs to the newer run, named after the one it is held to."""
    return Path(run_b) / f"compare-{Path(run_a).resolve().name}"


def write_comparison(run_a: Path, run_b: Path, out: Path | None = None) -> Path:
    """Write the comparison of two run folders into `out` (default `default_out`); returns compare.md."""
    run_a, run_b = Path(run_a), Path(run_b)
    out = Path(out) if out is not None else default_out(run_a, run_b)
    rows_a, rows_b = measured_rows(run_a), measured_rows(run_b)
    table = compare_rows(rows_a, rows_b)
    atomic_write_csv(out / "compare.csv", table, csv_columns())
    for fmt in ("png", "svg"):
        atomic_write(out / f"{FIGURE}.{fmt}",
                     lambda tmp, fmt=fmt: draw(rows_a, rows_b, f"A: {_name(run_a)}", f"B: {_name(run_b)}", tmp, fmt))
    blocks = build(run_a, run_b, rows_a, rows_b, table)
    atomic_write_text(out / "compare.md", to_markdown(blocks))
    atomic_write_text(out / "compare.html", to_html(blocks, out, f"Comparison: {_name(run_a)} vs {_name(run_b)}"))
    return out / "compare.md"


def measured_rows(run_dir: Path) -> list[dict]:
    """The configuration rows of one run as its own report computes them (repeats folded into their mean), or an
    error naming the folder when it has none."""
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder")
    runs, _ = collect(run_dir)
    if not runs:
        raise FileNotFoundError(f"{run_dir}: no configs/*/metrics.json to compare; run `pipeline train` on it first")
    rows = aggregate(runs)
    add_derived(rows)
    return rows


def compare_rows(rows_a: list[dict], rows_b: list[dict]) -> list[dict]:
    """One row per configuration name in either run, in the runs' order (device, batch, backend, ranks); None where
    absent. A configuration's name holds its backend, so DDP and Horovod rows are never paired.

    B/A divides two independent means, so its interval combines their relative intervals to first order, as the
    report does for speedup; it has none when either side is a single run."""
    by_name_a = {r["name"]: r for r in rows_a}
    by_name_b = {r["name"]: r for r in rows_b}
    order = {r["name"]: (r["device"], r["batch_size_per_rank"], backend_order(backend_of(r)), r["world_size"])
             for r in rows_b + rows_a}
    table = []
    for name in sorted(order, key=lambda n: (order[n], n)):
        a, b = by_name_a.get(name), by_name_b.get(name)
        row: dict = {"configuration": name}
        for key, _ in MEASURES:
            for side, source in (("a", a), ("b", b)):
                row[f"{key}_{side}"] = source.get(key) if source else None
                row[f"{key}_{side}_ci95"] = source.get(f"{key}_ci95") if source else None
        row["ratio_b_over_a"] = row["ratio_b_over_a_ci95"] = None
        if a and b:
            row["ratio_b_over_a"] = b["samples_per_second"] / a["samples_per_second"]
            relative = relative_ci(b, a, "samples_per_second")
            row["ratio_b_over_a_ci95"] = None if relative is None else row["ratio_b_over_a"] * relative
        table.append(row)
    return table


def shown_columns() -> list[tuple[str, str]]:
    """(key of a compare row, header) of the Markdown/HTML table; each cell shows the key's ± interval if any."""
    first, *rest = MEASURES
    columns = [("configuration", "configuration"), (f"{first[0]}_a", f"{first[1]} A"),
               (f"{first[0]}_b", f"{first[1]} B"), ("ratio_b_over_a", "B/A")]
    return columns + [(f"{key}_{side}", f"{header} {side.upper()}") for key, header in rest for side in ("a", "b")]


def csv_columns() -> list[str]:
    """The table's columns, each value followed by its interval."""
    return ["configuration"] + [k for key, _ in shown_columns()[1:] for k in (key, f"{key}_ci95")]


def describe(rows: list[dict]) -> dict[str, str]:
    """Where and with what a run was measured. Its configurations may differ (e.g. trained on two days), so each
    field lists every distinct value."""

    def distinct(values: list) -> str:
        found = list(dict.fromkeys(str(v) for v in values if v is not None))
        return " / ".join(found) if found else "n/a"

    dates = sorted(str(r["measured_at"]) for r in rows if r.get("measured_at"))
    packages = list(dict.fromkeys(p for r in rows for p in r.get("versions", {})))
    return {
        "measured at": (dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}") if dates else "n/a",
        "host": distinct([r.get("hostname") for r in rows]),
        "CPU": distinct([r.get("cpu_model") for r in rows]),
        "CPU cores available": distinct([r.get("cpu_cores_available") for r in rows]),
        "GPU": distinct([r.get("gpu_model") for r in rows]) if any("gpu_model" in r for r in rows) else "none",
        **{p: distinct([r.get("versions", {}).get(p) for r in rows]) for p in packages},
        "launcher": distinct([r.get("launcher") for r in rows]),
        "runs per configuration": distinct(sorted({r.get("repeats", 1) for r in rows})),
    }


def build(run_a: Path, run_b: Path, rows_a: list[dict], rows_b: list[dict], table: list[dict]) -> list[Block]:
    about_a, about_b = describe(rows_a), describe(rows_b)
    fields = list(dict.fromkeys([*about_a, *about_b]))
    blocks: list[Block] = [
        Heading(f"Comparison: {_name(run_a)} (A) vs {_name(run_b)} (B)", 1),
        Paragraph(f"A is {run_a}, B is {run_b}. Every number comes from each run's own configs/*/metrics.json, "
                  "computed as in its scaling report; B/A above 1 means B trained faster."),
        Heading("Where each run was measured"),
        Table(["", f"A: {_name(run_a)}", f"B: {_name(run_b)}"],
              [[field, about_a.get(field, "n/a"), about_b.get(field, "n/a")] for field in fields]),
    ]
    differences = [f"{field}: {about_a.get(field, 'n/a')} (A) vs {about_b.get(field, 'n/a')} (B)"
                   for field in fields if field != "measured at" and about_a.get(field) != about_b.get(field)]
    blocks += [Heading("What differs between the runs"),
               Bullets(differences) if differences else Paragraph("Same host, hardware and versions.")]
    blocks += [Heading("Configurations"),
               Table([header for _, header in shown_columns()],
                     [[cell(row, key) for key, _ in shown_columns()] for row in table])]
    if all(row["ratio_b_over_a"] is None for row in table):
        blocks.append(Paragraph("The runs have no configuration in common (e.g. one ran on CPU, the other on GPU), "
                                "so there is no B/A per row: compare their curves in the figure."))
    blocks += [Figure(f"{FIGURE}.png", "Speedup and samples/s of both runs (A solid, B dashed)"),
               Paragraph("n/a: the run has no metrics for that configuration (compare.csv leaves the cell empty). "
                         "± is the half-width of the 95% confidence interval of a mean over repeated runs (none for "
                         "a single run). Each run's scaling report explains how every column is measured.")]
    return blocks


def draw(rows_a: list[dict], rows_b: list[dict], label_a: str, label_b: str, path: Path, fmt: str) -> None:
    """Speedup (with the ideal line) and samples/s against ranks: one curve per run, device, batch per rank and
    backend (named when the runs hold more than one), with 95% confidence bars where a run repeated its
    configurations."""
    fig = PlotFigure(figsize=(10, 4))
    ax_speed, ax_rate = fig.subplots(1, 2)
    named = several_backends(rows_a + rows_b)
    for rows, label, style in [(rows_a, label_a, "o-"), (rows_b, label_b, "s--")]:
        for (device, batch, backend), group in scaling_groups(rows):
            sizes = [r["world_size"] for r in group]
            name = f"{label} ({device}, batch {batch}/rank{f', {backend}' if named else ''})"
            for ax, column in ((ax_speed, "speedup"), (ax_rate, "samples_per_second")):
                errorbar(ax, sizes, [r[column] for r in group], [r.get(f"{column}_ci95") for r in group],
                         fmt=style, label=name)
    sizes = sorted({r["world_size"] for r in rows_a + rows_b})
    ax_speed.plot(sizes, [s / sizes[0] for s in sizes], "k:", label="ideal (linear)")
    ax_speed.set(xlabel="ranks (GPUs or CPU processes)", ylabel="speedup (samples/s vs fewest ranks)",
                 title="Speedup", xticks=sizes)
    ax_rate.set(xlabel="ranks (GPUs or CPU processes)", ylabel="training samples/s (all ranks)",
                title="Throughput", xticks=sizes, ylim=(0, None))
    for ax in (ax_speed, ax_rate):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format=fmt, dpi=110)


def _name(run_dir: Path) -> str:
    return Path(run_dir).resolve().name
