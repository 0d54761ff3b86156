"""The detail tables: every measured figure of a configuration that the compact tables leave out, by topic.

The compact tables (`studies.py`) keep to 12 columns so that they read in Markdown; these keep the rest, one table
per topic, and scaling.csv / scaling.json keep everything.
"""

from __future__ import annotations

from pipeline.report.document import Block, Heading, Paragraph, Table
from pipeline.report.table import cell, format_value

TIMING = [("name", "configuration"), ("step_ms", "step ms"), ("data_ms", "data ms"),
          ("forward_backward_ms", "fwd+bwd ms"), ("optimizer_ms", "optimizer ms"), ("allreduce_ms", "all-reduce ms"),
          ("epoch_time_s", "epoch s"), ("train_wall_s", "wall s"), ("samples_per_second", "samples/s"),
          ("step_samples_per_second", "step samples/s"), ("synthetic_samples_per_second", "synthetic samples/s"),
          ("real_over_synthetic", "real/synthetic")]
MEMORY = [("name", "configuration"), ("peak_memory_mb", "peak MB"), ("threads_per_rank", "threads/rank"),
          ("cpu_cores_available", "cores"), ("nodes", "nodes"), ("precision", "precision"),
          ("oversubscribed", "oversubscribed")]
ACCURACY = [("name", "configuration"), ("final_val_accuracy", "val acc"), ("test_accuracy", "test acc"),
            ("test_balanced_accuracy", "test bal. acc"), ("test_macro_f1", "test macro F1"), ("test_eer", "test EER"),
            ("epochs_run", "epochs"), ("lr_effective", "lr"), ("global_batch_size", "global batch")]
PROVENANCE = [("name", "configuration"), ("repeats", "repeats"), ("seeds", "seeds"), ("model", "model"),
              ("input", "input"), ("init", "init"), ("hostname", "host"), ("measured_at", "measured at"),
              ("launcher", "launcher"), ("restarts", "restarts"), ("code", "code")]

TOPICS = [
    ("Details: where a step goes", TIMING,
     "Means over the steady epochs (after the first) on rank 0; all-reduce ms runs launch to completion and overlaps "
     "backward. samples/s divides by the epoch's time, validation included; step samples/s is global batch / step "
     "ms, the steps alone, beside the same steps on data made on the device (synthetic samples/s, when "
     "train.synthetic_steps is on) and their ratio."),
    ("Details: memory and placement", MEMORY, "Peak resident memory per rank on CPU, peak reserved by the CUDA "
     "allocator on GPU; the largest over the ranks."),
    ("Details: accuracy", ACCURACY, "On chunks of held-out source files; lr is after train.lr_scaling."),
    ("Details: provenance", PROVENANCE, "Where and with what each configuration was trained."),
]


def detail_sections(rows: list[dict]) -> list[Block]:
    """One table per topic, one row per configuration (a configuration on two curves appears once here)."""
    blocks: list[Block] = []
    for heading, columns, text in TOPICS:
        shown = [(key, header) for key, header in columns if any(row.get(key) is not None for row in rows)]
        blocks += [Heading(heading, 3), Paragraph(text),
                   Table([header for _, header in shown], [[_cell(row, key) for key, _ in shown] for row in rows])]
    return blocks


def _cell(row: dict, key: str) -> str:
    value = row.get(key)
    if key == "code" and isinstance(value, dict):
        return value.get("commit") or value.get("source_sha256", "")[:12]
    if key == "seeds" and isinstance(value, list):
        return ", ".join(format_value(v) for v in value)
    return cell(row, key)
