"""What the measured step time and gradient size predict for more ranks than were measured: a stated, simple model.

The model, per scaling curve (`pipeline.report.curves`), with b the ranks of its baseline (points[0]):

    buckets       DDP's: the first 1 MiB, then 25 MiB each, the last one the rest (the first layers' gradients)
    t_comm(N)     = sum over buckets of link.seconds(bucket, N)       (ring all-reduce: a_N + m x 2(N-1)/N / B_N)
    t_bwd(N)      = 2/3 x forward+backward(N)                          (backward is about twice the forward)
    exposed(N)    = max(t_comm(N) - t_bwd(N), t_comm of the last bucket)
    t_step(N)     = t_compute(N) + exposed(N)
    samples/s(N)  = samples/s(b) x global batch(N) / global batch(b) x t_step(b) / t_step(N)
    efficiency(N) = samples/s(N) / (samples/s(b) x N / b)              (the curves' definition)

Overlap: DDP all-reduces a bucket as soon as backward has produced its gradients, so every bucket but the last can
run under the rest of backward; the last is ready only when backward ends and always adds to the step. With one
bucket (gradients up to 1 MiB) nothing overlaps. It assumes the all-reduce does not slow backward down (on CPU
ranks it competes for the same cores, on GPUs NCCL takes a few SMs).

Compute: t_compute(b) is the baseline's measured mean step (with b > 1 it already holds the baseline's exposed
all-reduce, counted again here; efficiency is a ratio of two modelled steps, so it mostly cancels).
- weak scaling keeps the batch per rank: t_compute(N) = t_compute(b) and forward+backward(N) = that of b;
- strong scaling keeps the global batch, so the batch per rank shrinks as b/N: the per-sample parts of the step
  (forward+backward and the data wait) scale by b/N, the rest (optimizer step, per-step overheads) stays, and the
  gradient bytes stay. A world size with under one sample per rank is not projected.

The link (`pipeline.report.interconnect.Link`) is measured (RUN_DIR/allreduce.json) or assumed
(`report.interconnect_gbit_s`, no latency); each projection records which. Gradients are all-reduced at the size
training recorded (`gradient_bytes`: fp32 unless compressed). Stragglers, contention and jitter are left out, so the
model is optimistic on those counts.

Backends: the model is DDP's, so only DDP curves are projected. Horovod's DistributedOptimizer launches each
gradient's all-reduce from a backward hook, fuses what is ready in a background cycle (its own fusion buffer and
cycle time, not DDP's 1 + 25 MiB buckets) and waits for them in the optimizer step; the bucket sizes and the overlap
above do not describe it, and no measured Horovod link feeds it. A Horovod curve gets a reason in `project`'s missing
list instead, which the projection section prints, and the allocation estimate prices its measured scales only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.config import ConfigError, ReportConfig, build, load_config
from pipeline.layout import RunLayout
from pipeline.report.curves import Curve, Scaling
from pipeline.report.interconnect import Link, assumed
from pipeline.report.table import backend_name

BACKWARD_SHARE = 2 / 3
"""Backward's share of forward+backward: twice the forward's arithmetic (gradients of inputs and of weights)."""
FIRST_BUCKET_BYTES = 2**20
"""DDP's first bucket (torch.distributed's _DEFAULT_FIRST_BUCKET_BYTES), kept small so communication starts early."""
BUCKET_BYTES = 25 * 2**20
"""DDP's bucket_cap_mb default (the trainer does not change it)."""


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


def buckets(gradient_bytes: float) -> list[float]:
    """DDP's gradient buckets in the order backward fills them: 1 MiB, then 25 MiB each, the last one the rest."""
    sizes = [min(gradient_bytes, FIRST_BUCKET_BYTES)]
    rest = gradient_bytes - sizes[0]
    while rest > 0:
        sizes.append(min(rest, BUCKET_BYTES))
        rest -= sizes[-1]
    return sizes


def comm_seconds(link: Link, bucket_sizes: list[float], world_size: int, backward_s: float) -> tuple[float, float]:
    """(all-reduce time of every bucket, the part of it not hidden under `backward_s` of backward)."""
    total = sum(link.seconds(size, world_size) for size in bucket_sizes)
    last = link.seconds(bucket_sizes[-1], world_size)
    return total, max(total - backward_s, last)


@dataclass(frozen=True)
class ModelPoint:
    world_size: int
    compute_s: float
    """t_compute(N): the step without its exposed all-reduce."""
    comm_s: float
    """t_comm(N): every bucket's all-reduce, hidden or not."""
    exposed_comm_s: float
    """The part of comm_s that adds to the step."""
    step_s: float
    efficiency: float
    samples_per_second: float
    """The baseline's measured samples/s x global batch ratio x modelled step ratio."""
    measured_efficiency: float | None = None
    """At a measured world size: what was measured, for comparison with the model."""
    measured_efficiency_ci95: float | None = None
    measured_samples_per_second: float | None = None


@dataclass(frozen=True)
class Projection:
    """The model for one scaling curve."""

    scaling: Scaling
    device: str
    batch: int
    """The curve's: batch per rank (weak) or global batch (strong)."""
    curve: str
    """The curve's label, e.g. `weak, cpu, 32/rank`."""
    link: Link
    baseline: str
    baseline_world_size: int
    compute_s: float
    """The baseline's measured mean step."""
    backward_s: float
    """BACKWARD_SHARE x the baseline's measured forward+backward."""
    gradient_bytes: float
    buckets: tuple[float, ...]
    projected: list[ModelPoint]
    """At `report.projection_world_sizes` (those a strong curve can split its global batch over)."""
    at_measured: list[ModelPoint]
    """At the world sizes that were measured, each with its measured efficiency."""


class _Model:
    """The module's model for one curve, its baseline and its link."""

    def __init__(self, curve: Curve, gradient_bytes: float, link: Link) -> None:
        base = curve.baseline
        self.curve, self.link, self.base = curve, link, base
        self.b = base["world_size"]
        self.step_s = base["step_ms"] / 1000
        self.forward_backward_s = base["forward_backward_ms"] / 1000
        self.per_sample_s = self.forward_backward_s + base["data_ms"] / 1000
        self.buckets = buckets(gradient_bytes)
        self.baseline_step = self.step_s + self._comm(self.b, self.forward_backward_s)[1]

    def _comm(self, n: int, forward_backward_s: float) -> tuple[float, float]:
        return comm_seconds(self.link, self.buckets, n, BACKWARD_SHARE * forward_backward_s)

    def point(self, n: int, measured: dict | None = None) -> ModelPoint:
        share = self.b / n if self.curve.scaling == "strong" else 1.0
        compute = self.step_s - self.per_sample_s * (1 - share)
        comm, exposed = self._comm(n, self.forward_backward_s * share)
        step = compute + exposed
        batch_ratio = n / self.b if self.curve.scaling == "weak" else 1.0
        samples = self.base["samples_per_second"] * batch_ratio * self.baseline_step / step
        efficiency = samples / (self.base["samples_per_second"] * n / self.b)
        return ModelPoint(n, compute, comm, exposed, step, efficiency, samples,
                          measured["efficiency"] if measured else None,
                          measured.get("efficiency_ci95") if measured else None,
                          measured["samples_per_second"] if measured else None)


def link_for(link: Link | Mapping[str, Link], device: str, report: ReportConfig) -> Link:
    """The link a curve on `device` uses: from a mapping by device, or `link` when measured on that device (or
    assumed); otherwise the assumed link, saying why."""
    if isinstance(link, Mapping):
        return link.get(device) or assumed(report)
    if link.applies_to(device):
        return link
    return assumed(report, f"{link.file} was measured on {link.device}, not {device}")


def project(curves: list[Curve], report: ReportConfig,
            link: Link | Mapping[str, Link]) -> tuple[list[Projection], list[str]]:
    """The model per curve, and for each curve (or world size) it cannot be made for, the reason.

    `link`: one Link (used for the curves of the device it was measured on, the assumed link for the others), or
    a Link per device (`interconnect.load_links`)."""
    projections, missing = [], []
    for curve in curves:
        if curve.backend != "ddp":
            missing.append(f"{curve.label}: the model follows DDP's gradient buckets and their overlap with "
                           f"backward, which {backend_name(curve.backend)} does not use (it fuses gradients in its "
                           "own cycle and waits for them in the optimizer step), so its curve is shown as measured "
                           "only")
            continue
        gradient_bytes = next((p["gradient_bytes"] for p in curve.points if p.get("gradient_bytes")), None)
        if gradient_bytes is None:
            missing.append(f"{curve.label}: its metrics.json files do not record gradient_bytes (written by "
                           "training since the projection model was added; train again to get it)")
            continue
        model = _Model(curve, gradient_bytes, link_for(link, curve.device, report))
        sizes = sorted(report.projection_world_sizes)
        split = [n for n in sizes if curve.scaling == "weak" or curve.batch >= n]
        if len(split) < len(sizes):
            missing.append(f"{curve.label} at {', '.join(str(n) for n in sizes if n not in split)} ranks: a global "
                           f"batch of {curve.batch} gives under one sample per rank")
        projections.append(Projection(
            curve.scaling, curve.device, curve.batch, curve.label, model.link, curve.baseline["name"], model.b,
            model.step_s, BACKWARD_SHARE * model.forward_backward_s, gradient_bytes, tuple(model.buckets),
            [model.point(n) for n in split], [model.point(p["world_size"], p) for p in curve.points]))
    return projections, missing
