"""The projection section: the model beside the measurement per curve, the link it used and how to replace an
assumed one, the overlap model stated, and why a curve has no projection."""

from pipeline.config import ReportConfig
from pipeline.report.curves import curves
from pipeline.report.document import Paragraph, Table
from pipeline.report.interconnect import Link, LinkFit, assumed
from pipeline.report.projection import project
from pipeline.report.projection_section import HEADING, projection_blocks, projection_section
from tests.report.fixtures import metrics
from tests.report.test_figures import configurations, runs


def only(blocks: list, kind: type) -> list:
    return [b for b in blocks if isinstance(b, kind)]


def text(blocks: list) -> str:
    return " ".join(b.text for b in only(blocks, Paragraph))


def cuda_curves(gradient_bytes: int = 1_000_000) -> list:
    rows = configurations([{"name": "ws1-cuda-bs32", **metrics(1, 100.0, 0.1, 0.0, device="cuda",
                                                               gradient_bytes=gradient_bytes)},
                           {"name": "ws2-cuda-bs32", **metrics(2, 150.0, 0.2, 0.05, device="cuda",
                                                               gradient_bytes=gradient_bytes)}])
    return curves(rows, ["weak"])


def test_model_beside_measurement_on_an_assumed_link():
    report = ReportConfig(interconnect_gbit_s=1.0)
    blocks = projection_section(cuda_curves(), report, assumed(report))
    assert blocks[0].text == HEADING and "(a model, not a measurement)" in HEADING
    assert "the exposed all-reduce is max(t_comm(N) - backward, t_comm of the last bucket)" in text(blocks)
    assert "backward taken as 2/3 of the measured forward+backward" in text(blocks)
    assert "strong scaling scales the per-sample parts of the step" in text(blocks)
    assert "Link: assumed, 1 Gbit/s = 0.125 GB/s of bus bandwidth per rank and no latency" in text(blocks)
    assert "`pipeline bench --allreduce --out RUN_DIR/allreduce.json`" in text(blocks)
    assert ("weak, cuda, 32/rank: t_compute 100.0 ms (step of ws1-cuda-bs32), backward 59.3 ms, gradient 1.0 MB "
            "per step in 1 bucket(s), the last 1.00 MB; link assumed.") in text(blocks)
    (table,) = only(blocks, Table)
    # One bucket hides nothing. 2 ranks: t_comm = 1 MB / 0.125 GB/s = 8 ms, model 0.1 / 0.108 = 92.6% against 75%
    # measured; 8 ranks: 2 x 7/8 x 8 ms = 14 ms, 0.1 / 0.114 = 87.7%.
    assert table.rows[1] == ["2", "measured", "92.6%", "75.0%", f"{200 * 0.1 / 0.108:.1f}", "150.0", "8.00", "8.00"]
    assert table.rows[2] == ["8", "projected", "87.7%", "", f"{800 * 0.1 / 0.114:.1f}", "", "14.00", "14.00"]
    assert [r[0] for r in table.rows] == ["1", "2", "8", "16", "32"]
    assert "at 2 ranks the model gives 92.6% against 75.0% measured (+18 points)" in text(blocks)
    assert "CPU ranks" not in text(blocks)
    # The same section from projections made elsewhere (the report makes them once, a link per device).
    assert projection_blocks(*project(cuda_curves(), report, assumed(report))) == blocks


def test_a_measured_link_is_named_with_its_fits_and_file():
    link = Link("measured", (LinkFit(2, 20e-6, 50e9), LinkFit(4, 30e-6, 40e9)), "allreduce.json", "nccl", "cuda")
    blocks = projection_section(cuda_curves(100_000_000), ReportConfig(), link)
    assert ("Link: measured (nccl on cuda, `allreduce.json`, fitted t = a_N + bytes x 2(N-1)/N / B_N per world "
            "size): 2 ranks: latency 20.0 us, bus bandwidth 50.000 GB/s; 4 ranks: latency 30.0 us, bus bandwidth "
            "40.000 GB/s") in text(blocks)
    assert "the latency grows with the ring's 2(N-1) steps" in text(blocks)
    assert "in 5 bucket(s)" in text(blocks) and "link measured." in text(blocks)
    (table,) = only(blocks, Table)
    # 2 ranks: 5 buckets x 20 us + 100 MB / 50 GB/s = 2.1 ms, under backward but the last bucket's 20.3 MB.
    assert table.rows[1][6:] == ["2.10", f"{(20e-6 + 20_308_224 / 50e9) * 1000:.2f}"]


def test_cpu_curves_say_what_their_link_is():
    rows = configurations(runs("cpu", 32, gradient_bytes=4_000_000))
    found = curves(rows, ["weak"])
    assumed_text = text(projection_section(found, ReportConfig(), assumed(ReportConfig())))
    assert "These are CPU ranks: the model supposes each on its own node" in assumed_text
    link = Link("measured", (LinkFit(2, 1e-3, 1e9),), "allreduce.json", "gloo", "cpu")
    assert "their link was measured between processes of one host" in text(projection_section(
        found, ReportConfig(), link))


def test_says_why_it_is_missing():
    report = ReportConfig()
    blocks = projection_section(curves(configurations(runs("cpu", 32)), ["weak"]), report, assumed(report))
    assert len(blocks) == 2 and not only(blocks, Table)
    assert text(blocks).startswith("No projection for weak, cpu, 32/rank: its metrics.json files do not record "
                                   "gradient_bytes")
