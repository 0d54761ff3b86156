"""The flags column: what a reader must know about a row before quoting it, in a word or two each.

The report's legend (`LEGEND`) says what each flag means; "Read this before quoting the numbers" explains the ones
that fire, with their figures.
"""

from __future__ import annotations

from pipeline.config import ReportConfig
from pipeline.report.sections import shares_gpu

BUSY_MARGIN = 0.75
"""Load average above a configuration's own threads that counts as a busy machine."""

INPUT_BOUND_BELOW = 0.9
"""Real-data training steps slower than this fraction of synthetic-data ones..."""

DATA_WAIT_SHARE = 0.05
"""...with at least this share of the step spent waiting for the batch counts as input-bound. A gap without the wait
is not the loader's (fresh batches' memory traffic, caches), and the notes say so instead."""


def busy(row: dict) -> bool:
    """A CPU configuration whose machine had more load than its own threads (other jobs took cores from it)."""
    load = row.get("load_average_1m")
    return row["device"] == "cpu" and load is not None and load > row["world_size"] * row["threads_per_rank"] + \
        BUSY_MARGIN


def slower_than_synthetic(row: dict) -> bool:
    ratio = row.get("real_over_synthetic")
    return ratio is not None and ratio < INPUT_BOUND_BELOW


def input_bound(row: dict) -> bool:
    """The input pipeline limits the steps: slower than on synthetic data, and visibly waiting for batches."""
    return slower_than_synthetic(row) and (row.get("data_share") or 0.0) >= DATA_WAIT_SHARE


def flags_of(point: dict, report: ReportConfig) -> list[str]:
    """The flags of one curve point (a configuration row with its curve's efficiency)."""
    found = []
    if point.get("efficiency") is not None and point["efficiency"] < report.min_efficiency:
        found.append(f"<{report.min_efficiency:.0%}")
    checks = [("oversubscribed", point.get("oversubscribed")), ("GPU shared", shares_gpu(point)),
              ("busy machine", busy(point)), ("input-bound", input_bound(point)),
              ("restarted", point.get("restarts")), ("stopped early", point.get("stopped_early"))]
    return found + [flag for flag, fired in checks if fired]


def legend(report: ReportConfig) -> str:
    return (f"Flags: <{report.min_efficiency:.0%}: efficiency under `report.min_efficiency`; oversubscribed: ranks "
            "x threads exceed the cores; GPU shared: more ranks per node than visible GPUs; busy machine: the load "
            "average exceeded the configuration's own threads; input-bound: real-data steps under "
            f"{INPUT_BOUND_BELOW:.0%} of the synthetic-data steps' samples/s (`train.synthetic_steps`) with at least "
            f"{DATA_WAIT_SHARE:.0%} of the step waiting for the batch; restarted: the "
            "launcher or SLURM started it again; stopped early: early stopping ended it before train.epochs.")
