"""The report's sections: which exist for which runs, and that their tables and notes hold the rows' numbers."""

import pytest

from pipeline.report import plots, sections
from pipeline.report.curves import curves
from pipeline.report.document import Figure, Heading, Paragraph, Table
from tests.report.fixtures import metrics
from tests.report.test_figures import (
    GRADIENT_BYTES,
    configurations,
    data,
    runs,
    write_scaling_benchmark,
    write_summary,
)


def points(rows: list[dict]) -> list[dict]:
    """The rows as the points of their weak-scaling curves, as the report explains them."""
    return [p for curve in curves(rows, ["weak"]) for p in curve.points]


def only(blocks: list, kind: type) -> list:
    return [b for b in blocks if isinstance(b, kind)]


def text(blocks: list) -> str:
    return " ".join(b.text for b in only(blocks, Paragraph))


def test_gpu_vs_cpu_table_in_the_seed_layout(tmp_path):
    rows = configurations(runs("cpu", 32, repeats=3), runs("cuda", 32, speed=2000.0, gpu_count=2))
    plots.write_figures(data(tmp_path, rows))
    blocks = sections.gpu_vs_cpu_section(rows, tmp_path)
    assert blocks[0] == Heading("GPU vs CPU")
    (table,) = only(blocks, Table)
    assert table.headers == ["device", "ranks", "batch/rank", "step ms", "epoch s", "samples/s"]
    cpu1, cuda1 = (next(r for r in rows if (r["device"], r["world_size"]) == (device, 1)) for device in ("cpu", "cuda"))
    assert table.rows[0] == ["cpu", "1", "32", f"{cpu1['step_ms']:.1f} ± {cpu1['step_ms_ci95']:.1f}",
                             f"{cpu1['epoch_time_s']:.1f} ± {cpu1['epoch_time_s_ci95']:.1f}",
                             f"{cpu1['samples_per_second']:.1f} ± {cpu1['samples_per_second_ci95']:.1f}"]
    # One cuda run: no interval to show.
    assert table.rows[1] == ["cuda", "1", "32", f"{cuda1['step_ms']:.1f}", f"{cuda1['epoch_time_s']:.3f}",
                             f"{cuda1['samples_per_second']:.1f}"]
    assert [r[:2] for r in table.rows] == [["cpu", "1"], ["cuda", "1"], ["cpu", "2"], ["cuda", "2"]]
    ratio = cpu1["epoch_time_s"] / cuda1["epoch_time_s"]
    assert (f"1 rank, batch 32/rank: an epoch takes {cuda1['epoch_time_s']:.2f} s on the GPU against "
            f"{cpu1['epoch_time_s']:.2f} s on the CPU ({ratio:.1f}x)") in blocks[3].items[0]
    assert blocks[-1] == Figure("gpu_vs_cpu.png", "Step and epoch time on GPU and CPU")
    assert sections.gpu_vs_cpu_section(configurations(runs("cpu", 32)), tmp_path) == []


def test_batch_size_vs_accuracy_table(tmp_path):
    rows = configurations(runs("cpu", 32, repeats=3), runs("cpu", 128, repeats=3))
    blocks = sections.batch_accuracy_section(rows, tmp_path)
    (table,) = only(blocks, Table)
    assert table.headers == ["batch/rank", "global batch", "device", "ranks", "val acc", "test acc"]
    ci = next(r for r in rows if r["name"] == "ws1-cpu-bs32")["final_val_accuracy_ci95"]
    # runs(): final accuracy 0.8 + 0.01 k + batch / 1000 over repeats k = 1..3.
    assert table.rows[:2] == [["32", "32", "cpu", "1", f"0.852 ± {ci:.3f}", "0.880 ± 0.000"],
                              ["128", "128", "cpu", "1", f"0.948 ± {ci:.3f}", "0.880 ± 0.000"]]
    assert table.rows[3][:2] == ["128", "256"]
    assert not only(blocks, Figure)  # no figure file written in this folder
    assert sections.batch_accuracy_section(configurations(runs("cpu", 32)), tmp_path) == []


def test_preprocess_section_with_and_without_the_scaling_curve(tmp_path, monkeypatch):
    assert sections.preprocess_section(tmp_path) == []
    write_summary(tmp_path, workers=2, chunks_per_second=183.15)
    rows = configurations(runs("cpu", 32, gradient_bytes=GRADIENT_BYTES))
    plots.write_figures(data(tmp_path, rows))
    blocks = sections.preprocess_section(tmp_path)
    assert "in 42 tasks; 53 files rejected" in text(blocks)
    assert "run 1 of 2: 42 tasks, 3135 chunks in 17.1 s (183.1 chunks/s, 2 Dask workers)." in text(blocks)
    assert "1 later run(s) found every shard complete and did no work" in text(blocks)
    assert "Tasks per node: node-a 20, node-b 22." in text(blocks)
    assert "On disk" not in text(blocks)  # a summary of a version that did not measure it
    assert (f"--workers 1 2 4 8 --out {tmp_path}/preprocess_scaling.json" in blocks[-1].caption
            and blocks[-1].file == "preprocess_scaling.png")

    write_scaling_benchmark(tmp_path, monkeypatch)
    blocks = sections.preprocess_section(tmp_path)
    (table,) = only(blocks, Table)
    assert table.rows == [["1", "100.0", "96.0-104.0", "3", "100%"], ["2", "190.0", "186.0-194.0", "3", "95%"],
                          ["4", "315.0", "300.0-330.0", "3", "79%"]]
    assert "benchmarks/preprocess_scaling.py (2026-11-22T00:00:00+00:00, 120 files, 700 chunks" in text(blocks)


def test_preprocess_section_says_what_the_file_system_holds(tmp_path):
    from pipeline.layout import RunLayout
    from pipeline.records import PreprocessSummary

    write_summary(tmp_path)
    path = RunLayout(tmp_path).features.summary
    summary = PreprocessSummary.read(path)
    summary.files_written, summary.files_per_1000_chunks, summary.image_layout = 310, 98.9, "shards"
    summary.feature_shard_bytes = {"mean": 1_250_000, "max": 2_000_000}
    summary.image_shard_bytes = {"mean": 480_000, "max": 910_000}
    summary.write(path)
    assert ("On disk: 310 files (98.9 per 1,000 chunks, images as shards); feature shards 1.25 MB mean / 2.00 MB "
            "max, image tars 0.48 MB mean / 0.91 MB max.") in text(sections.preprocess_section(tmp_path))
    summary.image_shard_bytes, summary.image_layout = None, "files"
    summary.write(path)
    assert "images as files); feature shards 1.25 MB mean / 2.00 MB max." in text(sections.preprocess_section(tmp_path))


def test_gpu_sharing_notes():
    rows = configurations(runs("cuda", 32, sizes=(1, 2, 4), gpu_count=2), runs("cpu", 32, sizes=(1, 4)),
                          runs("cuda", 64, sizes=(1, 8), gpu_count=4, nodes=2),
                          runs("cuda", 128, sizes=(1, 4)))  # an older run without gpu_count: nothing to say
    assert sections.gpu_sharing_notes(rows) == [
        "ws4-cuda-bs32 shares GPUs: 4 ranks per node on 2 visible GPU(s), so ranks take turns on a GPU; its "
        "speedup is bounded by the GPUs, not by the method."]


def test_explain_efficiency_names_the_allreduce_share_and_what_grew():
    rows = configurations([{"name": "ws1-cpu-bs32", **metrics(1, 100.0, 0.32, 0.01)},
                           {"name": "ws2-cpu-bs32", **metrics(2, 150.0, 0.42, 0.12)},
                           # the step as fast as one rank's, yet 60% efficiency: the loss is outside the steps
                           {"name": "ws4-cpu-bs32", **metrics(4, 240.0, 0.32, 0.01)}])
    two, four = sections.explain_efficiency(points(rows))
    assert two == ("ws2-cpu-bs32 (weak, cpu, 32/rank) reaches 75% efficiency. The all-reduce is 29% of the step at "
                   "2 CPU ranks (120.0 of 420.0 ms, launch to completion; it overlaps backward, so not all of it is "
                   "lost). The step grew from 320.0 ms at 1 CPU rank to 420.0 ms, mostly in forward+backward "
                   "(+100.0 ms).")
    assert four.startswith("ws4-cpu-bs32 (weak, cpu, 32/rank) reaches 60% efficiency. The all-reduce is 3% of the "
                           "step at 4 CPU ranks")
    assert "grew" not in four
    assert four.endswith("The step times alone would give 100%; the rest is lost outside the timed steps (between "
                         "steps and at the start and end of each epoch).")
    repeated = configurations(runs("cuda", 32, repeats=3))
    (note,) = sections.explain_efficiency(points(repeated))
    ci = repeated[1]["efficiency_ci95"]
    assert note.startswith(f"ws2-cuda-bs32 (weak, cuda, 32/rank) reaches {repeated[1]['efficiency']:.0%} ± "
                           f"{ci:.0%} efficiency")
    assert "at 2 GPUs" in note and "at 1 GPU to" in note
    assert sections.explain_efficiency(points(configurations(runs("cpu", 32, sizes=(1,))))) == []


@pytest.mark.parametrize("rate", [150.0, 190.0])
def test_no_explanation_at_95_percent_or_more(rate):
    rows = configurations([{"name": "ws1-cpu-bs32", **metrics(1, 100.0, 0.32, 0.01)},
                           {"name": "ws2-cpu-bs32", **metrics(2, rate, 0.33, 0.01)}])
    assert len(sections.explain_efficiency(points(rows))) == (rate / 200 < 0.95)


def test_section_figures_are_plots_figures():
    assert set(plots.FIGURES) >= sections.SECTION_FIGURES
