"""The report's projection section: the model of `pipeline.report.projection` per scaling curve, the link it used
(measured or assumed, `pipeline.report.interconnect`), and the model beside the measurement where both exist."""

from __future__ import annotations

from collections.abc import Mapping

from pipeline.config import ReportConfig
from pipeline.report.curves import Curve
from pipeline.report.document import Block, Heading, Paragraph, Table
from pipeline.report.interconnect import Link
from pipeline.report.projection import BACKWARD_SHARE, BUCKET_BYTES, FIRST_BUCKET_BYTES, Projection, project

HEADING = "Projection to more GPUs (a model, not a measurement)"

MODEL = (
    "Model: DDP all-reduces the gradients in buckets (the first {first} MiB, then {cap} MiB each, the last one the "
    "rest); a ring all-reduce of m bytes over N ranks takes t = a_N + m x 2(N-1)/N / B_N on a link of latency a_N "
    "and bus bandwidth B_N, and t_comm(N) is the sum over the buckets. Overlap with backward: every bucket but the "
    "last can run while backward still computes, backward taken as {share} of the measured forward+backward; the "
    "last bucket is ready only when backward ends, so the exposed all-reduce is max(t_comm(N) - backward, t_comm "
    "of the last bucket) (all of t_comm with a single bucket), and t_step(N) = t_compute(N) + exposed(N). "
    "t_compute is the measured mean step of the curve's fewest-rank configuration; weak scaling keeps it, strong "
    "scaling scales the per-sample parts of the step (forward+backward, data wait) by baseline ranks / N and keeps "
    "the rest (optimizer step), with the gradient bytes unchanged. Expected samples/s = the baseline's samples/s x "
    "the global batch ratio x t_step(baseline) / t_step(N), and efficiency = that over the baseline's samples/s x "
    "the ranks ratio. It assumes the all-reduce does not slow backward, and leaves out stragglers, contention and "
    "jitter (optimistic); it takes the gradient size training recorded (fp32 unless compressed). It is drawn "
    "dashed in the speedup figure.")


def projection_section(curves: list[Curve], report: ReportConfig,
                       link: Link | Mapping[str, Link]) -> list[Block]:
    """The model's efficiency at `report.projection_world_sizes` per curve, and at the measured world sizes beside
    the measured efficiency, so that a reader sees how far the model is off where it can be checked."""
    return projection_blocks(*project(curves, report, link))


def projection_blocks(projections: list[Projection], missing: list[str]) -> list[Block]:
    """The section from projections already made (`projection.project`, e.g. one device at a time, each with its
    own link) and the reasons for those that could not be."""
    heading = Heading(HEADING)
    if not projections:
        return [heading, Paragraph("No projection for " + "; ".join(missing) + ".")]
    model = MODEL.format(first=FIRST_BUCKET_BYTES // 2**20, cap=BUCKET_BYTES // 2**20,
                         share=f"{BACKWARD_SHARE * 3:.0f}/3")
    blocks: list[Block] = [heading, Paragraph(model)]
    blocks += [Paragraph(text) for text in dict.fromkeys(p.link.describe() for p in projections)]
    for projection in projections:
        blocks += _projection_table(projection)
    if missing:
        blocks.append(Paragraph("Not projected: " + "; ".join(missing) + "."))
    return blocks


def _intro(model: Projection) -> str:
    last = model.buckets[-1]
    text = (f"{model.curve}: t_compute {model.compute_s * 1000:.1f} ms (step of {model.baseline}), backward "
            f"{model.backward_s * 1000:.1f} ms, gradient {model.gradient_bytes / 1e6:.1f} MB per step in "
            f"{len(model.buckets)} bucket(s), the last {last / 1e6:.2f} MB; link {model.link.source}.")
    if model.device == "cpu" and model.link.source == "assumed":
        text += (" These are CPU ranks: the model supposes each on its own node with a link of this bandwidth, "
                 "whereas the measured ranks all-reduce through one host's shared memory.")
    elif model.device == "cpu":
        text += (" These are CPU ranks: their link was measured between processes of one host, which the model "
                 "supposes every further rank gets too.")
    return text


def _projection_table(model: Projection) -> list[Block]:
    rows = [[str(p.world_size), "measured", f"{p.efficiency:.1%}",
             f"{p.measured_efficiency:.1%}" + (f" ± {p.measured_efficiency_ci95:.1%}"
                                               if p.measured_efficiency_ci95 is not None else ""),
             f"{p.samples_per_second:.1f}", f"{p.measured_samples_per_second:.1f}", f"{p.comm_s * 1000:.2f}",
             f"{p.exposed_comm_s * 1000:.2f}"] for p in model.at_measured]
    rows += [[str(p.world_size), "projected", f"{p.efficiency:.1%}", "", f"{p.samples_per_second:.1f}", "",
              f"{p.comm_s * 1000:.2f}", f"{p.exposed_comm_s * 1000:.2f}"] for p in model.projected]
    gaps = [f"at {p.world_size} ranks the model gives {p.efficiency:.1%} against {p.measured_efficiency:.1%} "
            f"measured ({(p.efficiency - p.measured_efficiency) * 100:+.0f} points)"
            for p in model.at_measured if p.world_size != model.baseline_world_size]
    blocks: list[Block] = [Paragraph(_intro(model)), Table(
        ["ranks", "point", "model efficiency", "measured efficiency", "model samples/s", "measured samples/s",
         "model all-reduce ms", "model exposed ms"], rows)]
    if gaps:
        blocks.append(Paragraph(
            "Where it can be checked, " + "; ".join(gaps) + ". A model above the measurement misses costs that "
            "grow with the ranks besides the all-reduce (contention for shared cores and memory, stragglers, an "
            "all-reduce that slows backward); one below it hides more of the all-reduce, or has a slower link, than "
            "the run did."))
    return blocks
