"""The allocation estimate: what a target training costs at the measured (or projected) throughput.

Allocation requests (ACCESS, NERSC, ARCHER2) ask users to justify a node count and the hours asked for; people
paste this section into them. For each scaling curve and each of its measured and projected scales:

    wall time   = epochs x training samples per epoch / samples per second
    GPU-hours   = wall time x ranks      (rank-hours on CPU ranks)
    node-hours  = wall time x nodes

The target (`report.plan`) defaults to what the run trained, and the text says for each figure whether it is the
config's or the run's. A measured interval carries over to first order: wall time is a constant over samples/s, so
it keeps the relative half-width of samples/s, and so do GPU- and node-hours (ranks and nodes are exact). A scale of
the projection model gets no interval: its error is the model's, which no repeat measures, and the text says so.

Strong and weak curves are priced alike (throughput is samples/s in both); each table and paragraph names its curve.
So are DDP and Horovod curves at their measured scales; projected scales exist for DDP curves only (the projection
model is DDP's bucket overlap, `projection.py`), and the text says so wherever a curve of another backend is priced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from pipeline.config import ReportConfig
from pipeline.report.curves import Curve
from pipeline.report.document import Block, Heading, Paragraph, Table
from pipeline.report.table import backend_name

NOT_COUNTED = ("Not counted: job start-up, the first epoch's warm-up (throughput is measured over the epochs after "
               "the first), queue wait, preprocessing, and evaluation beyond the per-epoch validation that the epoch "
               "time includes (the final test evaluation, for one).")


class ProjectedPoint(Protocol):
    """What the estimate reads of a projection model's point (`projection.ModelPoint`)."""

    @property
    def world_size(self) -> int: ...
    @property
    def efficiency(self) -> float: ...
    @property
    def samples_per_second(self) -> float: ...


class CurveProjection(Protocol):
    """What the estimate reads of a projection (`projection.Projection`): the curve it extends and its points."""

    @property
    def curve(self) -> str: ...
    @property
    def projected(self) -> Sequence[ProjectedPoint]: ...


@dataclass(frozen=True)
class Target:
    """The training priced: epochs x samples per epoch, and where each came from (the config key or the run)."""

    epochs: int
    epochs_from: str
    train_samples: int
    train_samples_from: str

    @property
    def samples(self) -> int:
        return self.epochs * self.train_samples


@dataclass(frozen=True)
class Estimate:
    """One scale of one curve priced for the target; hours are hours, `_ci95` the half-width of the 95% interval
    (None for one run, and for the projection model)."""

    curve: str
    scaling: str
    device: str
    model: str
    ranks: int
    nodes: int
    nodes_from: str
    source: Literal["measured", "model"]
    samples_per_second: float
    samples_per_second_ci95: float | None
    efficiency: float | None
    efficiency_ci95: float | None
    repeats: int | None
    """Runs whose mean the measured samples/s is; None for the model."""
    target: Target
    wall_h: float
    wall_h_ci95: float | None
    device_hours: float
    """GPU-hours on GPUs, rank-hours on CPU ranks."""
    device_hours_ci95: float | None
    node_hours: float
    node_hours_ci95: float | None

    @property
    def hours_name(self) -> str:
        return hours_name(self.device)


def hours_name(device: str) -> str:
    """A CPU rank is not a GPU: a CPU measurement's hours are rank-hours (one process of `train.threads_per_rank`
    cores each), so that no one pastes GPU-hours that no GPU measured."""
    return "GPU-hours" if device == "cuda" else "rank-hours"


def estimate(curves: list[Curve], projections: Sequence[CurveProjection], config: ReportConfig) -> list[Estimate]:
    """Per curve, its measured scales then the projected ones it did not measure, each priced for `config.plan`."""
    found: list[Estimate] = []
    for curve in curves:
        target = target_of(curve, config)
        found += [_measured(curve, point, target, config) for point in curve.points]
        measured = {p["world_size"] for p in curve.points}
        per_node = config.plan.gpus_per_node or _ranks_per_node(curves, curve.device)
        nodes_from = (f"{per_node} per node, report.plan.gpus_per_node" if config.plan.gpus_per_node else
                      f"{per_node} per node, the most measured on {curve.device}")
        for projection in projections:
            if projection.curve != curve.label:
                continue
            found += [_projected(curve, point, target, per_node, nodes_from) for point in
                      sorted(projection.projected, key=lambda p: p.world_size) if point.world_size not in measured]
    return found


def target_of(curve: Curve, config: ReportConfig) -> Target:
    """`report.plan`'s epochs and samples, each falling back to what the curve's baseline run recorded (every
    configuration of a run trains the same epochs over the same split)."""
    plan, run = config.plan, curve.baseline
    return Target(plan.epochs or int(run["epochs"]),
                  "report.plan.epochs" if plan.epochs else "the run's train.epochs",
                  plan.train_samples or int(run["train_samples"]),
                  "report.plan.train_samples" if plan.train_samples else "the run's training split")


def _ranks_per_node(curves: list[Curve], device: str) -> int:
    """The most ranks one node held in any measured configuration on `device`: a projected scale fills nodes so."""
    return max(math.ceil(p["world_size"] / max(p["nodes"], 1)) for c in curves if c.device == device
               for p in c.points)


def _measured(curve: Curve, point: dict, target: Target, config: ReportConfig) -> Estimate:
    per_node = config.plan.gpus_per_node
    nodes = math.ceil(point["world_size"] / per_node) if per_node else int(point["nodes"])
    nodes_from = f"{per_node} per node, report.plan.gpus_per_node" if per_node else "the nodes the measured runs used"
    return _priced(curve, point["world_size"], nodes, nodes_from, "measured",
                   point["samples_per_second"], point.get("samples_per_second_ci95"),
                   point.get("efficiency"), point.get("efficiency_ci95"), int(point.get("repeats") or 1), target)


def _projected(curve: Curve, point: ProjectedPoint, target: Target, per_node: int, nodes_from: str) -> Estimate:
    return _priced(curve, point.world_size, math.ceil(point.world_size / per_node), nodes_from, "model",
                   point.samples_per_second, None, point.efficiency, None, None, target)


def _priced(curve: Curve, ranks: int, nodes: int, nodes_from: str, source: Literal["measured", "model"],
            speed: float, speed_ci: float | None, efficiency: float | None, efficiency_ci: float | None,
            repeats: int | None, target: Target) -> Estimate:
    """The hours of `target` at `speed` samples/s; every interval is the relative one of samples/s (first order)."""
    wall_h = target.samples / speed / 3600
    relative = None if speed_ci is None else speed_ci / speed

    def ci(value: float) -> float | None:
        return None if relative is None else value * relative

    return Estimate(curve.label, curve.scaling, curve.device, str(curve.baseline["model"]), ranks, nodes,
                    nodes_from, source, speed, speed_ci, efficiency, efficiency_ci, repeats, target,
                    wall_h, ci(wall_h), wall_h * ranks, ci(wall_h * ranks), wall_h * nodes, ci(wall_h * nodes))


def recommended(estimates: list[Estimate], min_efficiency: float,
                source: Literal["measured", "model"] = "measured") -> Estimate | None:
    """The largest scale of `source` whose efficiency is at least `min_efficiency` (a measured baseline's is 1):
    beyond it a request would pay for ranks that mostly wait."""
    good = [e for e in estimates if e.source == source and (e.efficiency or 0) >= min_efficiency - 1e-9]
    return max(good, key=lambda e: e.ranks, default=None)


# The section


SCALING_MEANS = {"weak": "batch per rank fixed, so the global batch grows with the ranks",
                 "strong": "global batch fixed and divided among the ranks"}


def plan_section(curves: list[Curve], projections: Sequence[CurveProjection], config: ReportConfig) -> list[Block]:
    """"Allocation estimate": per curve a table of every scale's hours and a paragraph to paste into a request."""
    estimates = estimate(curves, projections, config)
    if not estimates:
        return []
    blocks: list[Block] = [Heading("Allocation estimate"), Paragraph(_intro(estimates))]
    others = [c.label for c in curves if c.backend != "ddp"]
    if others:
        blocks.append(Paragraph(f"The projection model follows DDP's gradient buckets, so {', '.join(others)} "
                                f"{'is' if len(others) == 1 else 'are'} priced at the measured scales only, with no "
                                "projected rows."))
    for curve in curves:
        mine = [e for e in estimates if e.curve == curve.label]
        link = next((getattr(p, "link", None) for p in projections if p.curve == curve.label), None)
        blocks += [Heading(f"Allocation estimate: {curve.label}", 3), _table(mine),
                   Paragraph(request_text(curve, mine, config, link_phrase(link, config)))]
    return blocks


def _intro(estimates: list[Estimate]) -> str:
    hours = " / ".join(dict.fromkeys(e.hours_name for e in estimates))
    return ("What the target training (report.plan: epochs, training samples per epoch, GPUs per node; a key left "
            "unset takes the run's own value) costs at each scale of each curve: wall time = epochs x samples per "
            f"epoch / samples/s, {hours} = wall time x ranks, node-hours = wall time x nodes, each ± the half-width "
            "of its 95% interval where samples/s has one. Rows of source 'model' come from the projection model, "
            "not a measurement. The paragraph under each table is written to be pasted into an allocation request.")


def _table(estimates: list[Estimate]) -> Table:
    rows = [[f"{e.ranks:,}", f"{e.nodes:,}", e.source, with_ci(e.samples_per_second, e.samples_per_second_ci95),
             with_ci(e.wall_h, e.wall_h_ci95), with_ci(e.device_hours, e.device_hours_ci95),
             with_ci(e.node_hours, e.node_hours_ci95), _percent(e.efficiency, e.efficiency_ci95)]
            for e in estimates]
    return Table(["ranks", "nodes", "source", "samples/s", "wall h", estimates[0].hours_name, "node-hours",
                  "efficiency"], rows)


def link_phrase(link: object | None, config: ReportConfig) -> str:
    """Which link the projection model used (`interconnect.Link`): the measured one, or the assumed bandwidth."""
    if link is not None and getattr(link, "source", "") == "measured":
        return (f"a ring all-reduce over the link `pipeline bench --allreduce` measured on the run's own hardware "
                f"({link.backend} on {link.device}, {link.file})")
    return f"a ring all-reduce over a {config.interconnect_gbit_s:g} Gbit/s link per rank, report.interconnect_gbit_s"


def request_text(curve: Curve, estimates: list[Estimate], config: ReportConfig, link: str | None = None) -> str:
    """The paragraph a user pastes into an allocation request: the recommended scale's hours, how they were
    computed, what the projection adds (over `link`, `link_phrase`'s words), what is not counted and what is
    assumed."""
    measured = [e for e in estimates if e.source == "measured"]
    best = recommended(measured, config.min_efficiency)
    shown = best or measured[0]
    sentences = [_lead(curve, shown, best is not None, config.min_efficiency), _method(shown)]
    sentences += _projection_sentence([e for e in estimates if e.source == "model"], config,
                                      link or link_phrase(None, config))
    if curve.backend != "ddp":
        sentences.append(f"The gradients are averaged with {backend_name(curve.backend)}, as measured; larger "
                         "scales are not estimated, because the projection model describes DDP's all-reduce, not "
                         "this backend's.")
    return " ".join([*sentences, NOT_COUNTED, _assumption(curve)])


def _hours_phrase(e: Estimate) -> str:
    return (f"{with_ci(e.wall_h, e.wall_h_ci95)} h of wall time, {with_ci(e.device_hours, e.device_hours_ci95)} "
            f"{e.hours_name} and {with_ci(e.node_hours, e.node_hours_ci95)} node-hours")


def _lead(curve: Curve, e: Estimate, qualifies: bool, min_efficiency: float) -> str:
    t = e.target
    why = (f"the largest measured scale with parallel efficiency >= {min_efficiency:.0%}, report.min_efficiency; "
           f"measured "
           f"{_percent(e.efficiency, e.efficiency_ci95)}" if qualifies else
           f"no measured scale reaches parallel efficiency >= {min_efficiency:.0%}, so the fewest ranks measured")
    return (f"Curve {curve.label} ({curve.scaling} scaling: {SCALING_MEANS[curve.scaling]}): training the {e.model} "
            f"model for {t.epochs:,} epochs ({t.epochs_from}) over {t.train_samples:,} training samples per epoch "
            f"({t.train_samples_from}), {t.samples:,} samples in all, at {_ranks(e.ranks, e.device)} on "
            f"{_nodes(e.nodes)} ({why}) takes {_hours_phrase(e)}.")


def _method(e: Estimate) -> str:
    if e.repeats and e.repeats > 1 and e.samples_per_second_ci95 is not None:
        runs = (f"mean of {e.repeats} runs, ± the half-width of its 95% confidence interval, carried to the hours "
                "to first order")
    else:
        runs = "one run, so no confidence interval" if not e.repeats or e.repeats == 1 else f"mean of {e.repeats} runs"
    units = "GPUs" if e.device == "cuda" else "CPU ranks"
    return (f"These figures follow from the measured throughput of "
            f"{with_ci(e.samples_per_second, e.samples_per_second_ci95)} samples/s at that scale ({runs}), as wall "
            f"time = epochs x samples per epoch / throughput, {e.hours_name} = wall time x {units} and node-hours = "
            f"wall time x nodes ({e.nodes_from}).")


def _projection_sentence(modelled: list[Estimate], config: ReportConfig, link: str) -> list[str]:
    """At scales beyond the measured ones: the largest the model keeps at or above `min_efficiency`, flagged as a
    model so no one quotes it as a measurement."""
    if not modelled:
        return []
    head = (f"At scales not measured the figures come from the projection model ({link}), not a measurement, "
            "and carry no interval: ")
    good = recommended(modelled, config.min_efficiency, source="model")
    if good is None:
        return [head + f"it predicts parallel efficiency under {config.min_efficiency:.0%} at every projected scale "
                f"({', '.join(f'{e.ranks:,}' for e in modelled)} ranks)."]
    return [head + f"at {_ranks(good.ranks, good.device)} on {_nodes(good.nodes)} ({good.nodes_from}), the largest "
            f"projected scale it keeps at >= {config.min_efficiency:.0%}, it predicts {_percent(good.efficiency)} "
            f"efficiency and {_hours_phrase(good)}."]


def _assumption(curve: Curve) -> str:
    base = curve.baseline
    batch = f"{curve.batch:,} samples per rank" if curve.scaling == "weak" else f"a global batch of {curve.batch:,}"
    if curve.device == "cuda":
        where = f"GPUs ({base['gpu_model']})" if base.get("gpu_model") else "GPUs"
        hours = ""
    else:
        threads = _count(base.get("threads_per_rank", 1), "thread")
        where = f"CPU ranks ({base.get('cpu_model', 'CPU')}, {threads} per rank)"
        hours = " On CPU ranks the hours are rank-hours (rank processes x hours), not GPU-hours."
    shape = f"{base.get('input', 'features')} of {base.get('feature', 'the same feature')}"
    return (f"The estimate assumes the target data trains at the measured samples/s: the same model, input shape "
            f"({shape}, as preprocessed for the run) and batch ({batch}) on the same {where}.{hours}")


# Formatting


def significant(value: float, digits: int = 3) -> str:
    """`value` to `digits` significant digits with thousands separators (12,345 keeps its integer digits)."""
    return f"{value:,.{_decimals(value, digits)}f}"


def _decimals(value: float, digits: int) -> int:
    if value == 0 or not math.isfinite(value):
        return 0
    return max(0, digits - 1 - math.floor(math.log10(abs(value))))


def with_ci(value: float, ci: float | None, digits: int = 3) -> str:
    """`value ± ci`, both with the value's decimals, or the value alone without an interval."""
    if ci is None:
        return significant(value, digits)
    decimals = _decimals(value, digits)
    return f"{value:,.{decimals}f} ± {ci:,.{decimals}f}"


def _percent(value: float | None, ci: float | None = None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0%}" if ci is None else f"{value * 100:.0f} ± {ci * 100:.0f}%"


def _count(n: int, unit: str) -> str:
    return f"{n:,} {unit}{'s' * (n != 1)}"


def _ranks(n: int, device: str) -> str:
    return _count(n, "GPU" if device == "cuda" else "CPU rank")


def _nodes(n: int) -> str:
    return _count(n, "node")
