"""What the measured step time and gradient size predict for more GPUs than were measured: a stated, simple model.

The model, per device and batch per rank:

    t_comm(N)   = 2 (N - 1) / N x gradient_bytes / bandwidth        (ring all-reduce)
    t_step(N)   = t_compute + t_comm(N)                               (no overlap with backward)
    efficiency  = t_step(b) / t_step(N)                               (= t_compute / t_step(N) when b = 1)

A ring all-reduce over N ranks sends and receives 2 (N - 1) / N times the gradient through each rank's link, so
the time approaches 2 x gradient / bandwidth and stops growing with N. Assumptions, each said in the report:

- t_compute is the measured mean step time of the fewest-rank configuration b of that device and batch (one rank
  in the usual sweep: pure compute; with more it already holds that configuration's all-reduce, counted again here);
- bandwidth is that of one link per GPU (`report.interconnect_gbit_s`), every rank gets all of it, latency and
  the all-reduce's own arithmetic are ignored;
- gradients are all-reduced at the size training recorded (`gradient_bytes` in metrics.json: fp32 unless the run
  compressed them);
- no overlap of the all-reduce with backward: DDP does overlap them, so real efficiency can be higher. The model is
  conservative on that count and optimistic on latency and contention.

Efficiency is taken against the same fewest-rank configuration as the measured efficiency, so the two can be put side
by side at the measured world sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.config import ConfigError, ReportConfig, build, load_config
from pipeline.layout import RunLayout
from pipeline.report.table import scaling_groups


def report_config(run_dir: Path) -> ReportConfig:
    """The run's `report` section, or the defaults when the run folder has no config.yaml.

    A config.yaml written by an older version may no longer load as a whole (a key renamed since); the report then
    reads its `report` section alone rather than refusing to report on measurements that are still valid.
    """
    path = RunLayout(run_dir).config
    if not path.is_file():
        return ReportConfig()
    try:
        return load_config(path).report
    except ConfigError:
        raw = yaml.safe_load(path.read_text()) or {}
        return build(ReportConfig, raw.get("report") or {}, source=str(path), prefix="report.")


def comm_seconds(world_size: int, gradient_bytes: float, gbit_s: float) -> float:
    """Time of one ring all-reduce of `gradient_bytes` over `world_size` ranks, each with a `gbit_s` link."""
    return 2 * (world_size - 1) / world_size * gradient_bytes / (gbit_s * 1e9 / 8)


def model_efficiency(world_size: int, compute_s: float, gradient_bytes: float, gbit_s: float,
                     baseline_world_size: int = 1) -> float:
    """Efficiency at `world_size` against `baseline_world_size` ranks (see the module's docstring)."""
    baseline_step = compute_s + comm_seconds(baseline_world_size, gradient_bytes, gbit_s)
    return baseline_step / (compute_s + comm_seconds(world_size, gradient_bytes, gbit_s))


@dataclass(frozen=True)
class ModelPoint:
    world_size: int
    comm_s: float
    step_s: float
    efficiency: float
    samples_per_second: float
    """The baseline's measured samples/s x ranks ratio x model efficiency."""
    measured_efficiency: float | None = None
    """At a measured world size: what was measured, for comparison with the model."""
    measured_efficiency_ci95: float | None = None
    measured_samples_per_second: float | None = None


@dataclass(frozen=True)
class Projection:
    """The model for one device and batch per rank."""

    device: str
    batch_size_per_rank: int
    baseline: str
    baseline_world_size: int
    compute_s: float
    gradient_bytes: float
    gbit_s: float
    projected: list[ModelPoint]
    """At `report.projection_world_sizes`."""
    at_measured: list[ModelPoint]
    """At the world sizes that were measured, each with its measured efficiency."""


def project(rows: list[dict], report: ReportConfig) -> tuple[list[Projection], list[str]]:
    """The model per device and batch, and for each group it cannot be made for, the reason.

    `rows` are configurations with `speedup`/`efficiency` derived (one per configuration, repeats aggregated).
    """
    projections, missing = [], []
    for (device, batch), group in scaling_groups(rows):
        base = group[0]
        gradient_bytes = next((r["gradient_bytes"] for r in group if r.get("gradient_bytes")), None)
        if gradient_bytes is None:
            missing.append(f"{device}, batch {batch}/rank: its metrics.json files do not record gradient_bytes "
                           "(written by training since the projection model was added; train again to get it)")
            continue
        compute_s = base["step_ms"] / 1000
        gbit_s = report.interconnect_gbit_s
        projections.append(Projection(
            device, batch, base["name"], base["world_size"], compute_s, gradient_bytes, gbit_s,
            [_point(n, base, compute_s, gradient_bytes, gbit_s) for n in sorted(report.projection_world_sizes)],
            [_point(r["world_size"], base, compute_s, gradient_bytes, gbit_s, r) for r in group]))
    return projections, missing


def _point(world_size: int, base: dict, compute_s: float, gradient_bytes: float, gbit_s: float,
           measured: dict | None = None) -> ModelPoint:
    comm = comm_seconds(world_size, gradient_bytes, gbit_s)
    efficiency = model_efficiency(world_size, compute_s, gradient_bytes, gbit_s, base["world_size"])
    return ModelPoint(world_size, comm, compute_s + comm, efficiency,
                      base["samples_per_second"] * world_size / base["world_size"] * efficiency,
                      measured["efficiency"] if measured else None,
                      measured.get("efficiency_ci95") if measured else None,
                      measured["samples_per_second"] if measured else None)
