"""The allocation estimate (pipeline/report/plan.py) from fixture rows: its arithmetic, intervals, where the target
comes from, the recommended scale, projected scales and node counts, and the paragraph's wording."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.config_types import PlanConfig, ReportConfig
from pipeline.report.curves import Curve
from pipeline.report.document import Heading, Paragraph, Table, to_markdown
from pipeline.report.plan import estimate, plan_section, request_text, significant, with_ci
from tests.report.fixtures import metrics


@dataclass(frozen=True)
class ModelPoint:
    """Stand-in for projection.ModelPoint: the attributes the estimate reads."""

    world_size: int
    efficiency: float
    samples_per_second: float


@dataclass(frozen=True)
class Projection:
    curve: str
    projected: list[ModelPoint] = field(default_factory=list)


def point(ranks: int, speed: float, ci: float | None = None, efficiency: float = 1.0, nodes: int = 1,
          device: str = "cpu", repeats: int = 1, **extra) -> dict:
    """A curve point as curves.curves makes it: a configuration row with its derived efficiency."""
    return {**metrics(ranks, speed, 0.1, device=device, nodes=nodes, **extra), "name": f"ws{ranks}-{device}-bs32",
            "samples_per_second_ci95": ci, "efficiency": efficiency,
            "efficiency_ci95": None if ci is None else 0.02, "repeats": repeats}


def curve(*points: dict, scaling: str = "weak", device: str = "cpu") -> Curve:
    return Curve(scaling, device, 32, list(points))


def plan(**keys) -> ReportConfig:
    return ReportConfig(plan=PlanConfig(**keys))


def test_the_arithmetic_of_a_known_row():
    # 3 epochs x 1000 samples at 100 samples/s = 30 s; 4 ranks = 120 rank-seconds; 2 nodes = 60 node-seconds
    c = curve(point(4, 100.0, nodes=2, epochs=3))
    (e,) = estimate([c], [], ReportConfig())
    assert e.target.samples == 3000
    assert e.wall_h * 3600 == pytest.approx(30)
    assert e.device_hours * 3600 == pytest.approx(120)
    assert e.node_hours * 3600 == pytest.approx(60)
    assert (e.ranks, e.nodes, e.source) == (4, 2, "measured")


def test_the_samples_per_second_interval_carries_to_every_figure_to_first_order():
    c = curve(point(2, 100.0, ci=10.0, repeats=3, epochs=3))
    (e,) = estimate([c], [], ReportConfig())
    assert e.wall_h_ci95 / e.wall_h == pytest.approx(0.1)
    assert e.device_hours_ci95 == pytest.approx(0.1 * e.device_hours)
    assert e.node_hours_ci95 == pytest.approx(0.1 * e.node_hours)
    text = request_text(c, [e], ReportConfig())
    assert "mean of 3 runs" in text and "95% confidence interval" in text
    assert f"{with_ci(e.wall_h, e.wall_h_ci95)} h of wall time" in text
    (single,) = estimate([curve(point(2, 100.0))], [], ReportConfig())
    assert single.wall_h_ci95 is single.device_hours_ci95 is single.node_hours_ci95 is None


def test_the_target_defaults_to_the_run_and_the_config_overrides_it_saying_which():
    c = curve(point(1, 100.0, epochs=3))
    (run,) = estimate([c], [], ReportConfig())
    assert (run.target.epochs, run.target.train_samples) == (3, 1000)
    run_text = request_text(c, [run], ReportConfig())
    assert "3 epochs (the run's train.epochs)" in run_text
    assert "1,000 training samples per epoch (the run's training split)" in run_text

    config = plan(epochs=90, train_samples=2_000_000)
    (target,) = estimate([c], [], config)
    assert target.wall_h == pytest.approx(90 * 2_000_000 / 100 / 3600)
    text = request_text(c, [target], config)
    assert "90 epochs (report.plan.epochs)" in text
    assert "2,000,000 training samples per epoch (report.plan.train_samples)" in text
    assert "180,000,000 samples in all" in text

    (half,) = estimate([c], [], plan(epochs=90))
    assert (half.target.epochs_from, half.target.train_samples_from) == ("report.plan.epochs",
                                                                         "the run's training split")


def test_the_recommended_scale_is_the_largest_measured_one_at_min_efficiency():
    c = curve(point(1, 100.0), point(2, 190.0, efficiency=0.95), point(4, 320.0, efficiency=0.8),
              point(8, 560.0, efficiency=0.7))
    strict, loose = ReportConfig(min_efficiency=0.9), ReportConfig(min_efficiency=0.75)
    assert "at 2 CPU ranks on 1 node (the largest measured scale with parallel efficiency >= 90%" in \
        request_text(c, estimate([c], [], strict), strict)
    assert "at 4 CPU ranks on 1 node (the largest measured scale with parallel efficiency >= 75%" in \
        request_text(c, estimate([c], [], loose), loose)


def test_projected_scales_are_labelled_a_model_and_skip_measured_ones():
    c = curve(point(1, 1000.0, device="cuda"), point(4, 3600.0, efficiency=0.9, nodes=1, device="cuda"),
              device="cuda")
    projection = Projection(c.label, [ModelPoint(4, 0.92, 3680.0), ModelPoint(16, 0.8, 12800.0),
                                       ModelPoint(8, 0.85, 6800.0), ModelPoint(32, 0.6, 19200.0)])
    other = Projection("weak, cuda, 64/rank", [ModelPoint(64, 0.5, 1.0)])
    found = estimate([c], [projection, other], ReportConfig())
    assert [(e.ranks, e.source) for e in found] == [(1, "measured"), (4, "measured"), (8, "model"), (16, "model"),
                                                    (32, "model")]
    assert all(e.wall_h_ci95 is None for e in found if e.source == "model")
    text = request_text(c, found, ReportConfig())
    assert "projection model" in text and "not a measurement" in text
    assert "at 16 GPUs on 4 nodes (4 per node, the most measured on cuda), the largest projected scale" in text
    table = next(b for b in plan_section([c], [projection], ReportConfig()) if isinstance(b, Table))
    assert [row[2] for row in table.rows] == ["measured", "measured", "model", "model", "model"]


def test_node_hours_use_the_measured_nodes_or_gpus_per_node():
    c = curve(point(1, 100.0, device="cuda"), point(8, 800.0, nodes=2, device="cuda"), device="cuda")
    projection = Projection(c.label, [ModelPoint(16, 1.0, 1600.0)])
    measured = estimate([c], [projection], ReportConfig())
    assert [e.nodes for e in measured] == [1, 2, 4]  # 16 ranks at 4 per node, as ws8 ran
    assert measured[1].node_hours == pytest.approx(2 * measured[1].wall_h)
    configured = estimate([c], [projection], plan(gpus_per_node=8))
    assert [e.nodes for e in configured] == [1, 1, 2]
    assert configured[1].node_hours == pytest.approx(configured[1].wall_h)
    assert "report.plan.gpus_per_node" in request_text(c, configured, plan(gpus_per_node=8))


def test_cpu_curves_write_rank_hours_gpu_curves_gpu_hours():
    cpu = curve(point(1, 100.0), point(2, 190.0, efficiency=0.95))
    cpu_md = to_markdown(plan_section([cpu], [], ReportConfig()))
    assert "rank-hours" in cpu_md and "GPU-hours" not in cpu_md.replace("not GPU-hours", "")
    gpu = curve(point(1, 100.0, device="cuda", gpu_model="NVIDIA H200"), device="cuda")
    gpu_md = to_markdown(plan_section([gpu], [], ReportConfig()))
    assert "GPU-hours" in gpu_md and "rank-hours" not in gpu_md and "NVIDIA H200" in gpu_md


def test_the_section_names_each_curve_and_says_what_is_not_counted():
    weak = curve(point(1, 100.0), point(2, 190.0, efficiency=0.95))
    strong = curve(point(1, 100.0), point(2, 150.0, efficiency=0.75), scaling="strong")
    blocks = plan_section([weak, strong], [], ReportConfig())
    assert blocks[0] == Heading("Allocation estimate")
    assert [b.text for b in blocks if isinstance(b, Heading) and b.level == 3] == [
        f"Allocation estimate: {weak.label}", f"Allocation estimate: {strong.label}"]
    paragraphs = [b.text for b in blocks if isinstance(b, Paragraph)][1:]
    assert paragraphs[0].startswith(f"Curve {weak.label} (weak scaling")
    assert paragraphs[1].startswith(f"Curve {strong.label} (strong scaling")
    for text in paragraphs:
        for phrase in ("job start-up", "first epoch's warm-up", "queue wait", "preprocessing",
                       "trains at the measured samples/s"):
            assert phrase in text
    assert plan_section([], [], ReportConfig()) == []


def test_numbers_keep_three_significant_digits_with_thousands_separators():
    assert [significant(v) for v in (0.008333, 4.4117, 35.29, 123.4, 12_345.6)] == [
        "0.00833", "4.41", "35.3", "123", "12,346"]
    assert with_ci(15.79, 0.33) == "15.8 ± 0.3"


@pytest.mark.parametrize("key", ["epochs", "train_samples", "gpus_per_node"])
def test_a_plan_value_under_one_is_a_config_error_naming_the_key(tmp_path: Path, key: str):
    path = tmp_path / "exp.yaml"
    path.write_text("name: x\n")
    assert load_config(path, [f"report.plan.{key}=90"]).report.plan == PlanConfig(**{key: 90})
    with pytest.raises(ConfigError, match=f"'report.plan.{key}' has an impossible value 0"):
        load_config(path, [f"report.plan.{key}=0"])
