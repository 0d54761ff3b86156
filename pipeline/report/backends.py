"""The "DDP and Horovod" section: both backends at the same device, ranks and batch per rank, side by side.

Each backend has its own curves in the studies (`curves.py`), each against its own fewest-rank baseline, and the
speedup figures draw them on one plot; what those cannot say is where the difference between the backends comes from.
That is in the step split, and the split means something different per backend: DDP waits for its gradient buckets
inside forward+backward, Horovod waits for its all-reduces in the optimizer step (`SPLIT_MEANING`). So the section
puts the two backends' samples/s with their intervals, their efficiency and their step split in one table, and says
per matching configuration how much faster or slower the second backend is and which phase of the step the
difference sits in, every figure taken from the rows. Configurations are only compared when device, ranks and batch
per rank match; the section is left out of a report of one backend.
"""

from __future__ import annotations

from pipeline.report.curves import Curve
from pipeline.report.document import Block, Bullets, Heading, Paragraph, Table
from pipeline.report.table import backend_name, backend_of, backend_order, cell, several_backends

HEADING = "DDP and Horovod"

SPLIT_MEANING = (
    "How the step split reads for each backend. data, forward+backward, optimizer and step are the mean wall time of "
    "each phase of a step on rank 0, as in every table. DDP all-reduces gradient buckets while backward runs, so the "
    "time a DDP step waits for communication sits inside forward+backward, and its all-reduce ms is the sum of the "
    "buckets' launch-to-completion spans, which overlap backward. Horovod's DistributedOptimizer launches each "
    "gradient's all-reduce from a backward hook and waits for them in optimizer.step() (synchronize), so its wait "
    "sits in the optimizer phase, and its all-reduce ms is the span from the step's first gradient launch to "
    "synchronize() having every reduced gradient. The two all-reduce columns are therefore not the same measure: "
    "compare the step and the phase where each backend waits (DDP's forward+backward, Horovod's optimizer).")

COLUMNS = [("name", "configuration"), ("backend", "backend"), ("device", "device"), ("world_size", "ranks"),
           ("batch_size_per_rank", "batch/rank"), ("samples_per_second", "samples/s"), ("efficiency", "efficiency"),
           ("data_ms", "data ms"), ("forward_backward_ms", "fwd+bwd ms"), ("optimizer_ms", "optimizer ms"),
           ("allreduce_ms", "all-reduce ms"), ("step_ms", "step ms")]
"""The table's columns (key of a configuration row, header); efficiency comes from the configuration's curve."""

PHASES = [("data_ms", "data wait"), ("forward_backward_ms", "forward+backward"), ("optimizer_ms", "optimizer")]
"""The phases a step is split into (they add up to the step, up to what falls between them)."""

WAITS_IN = {"ddp": ("forward_backward_ms", "its buckets"), "horovod": ("optimizer_ms", "its all-reduce")}
"""backend -> (the phase its step waits for communication in, what it waits for)."""

REFERENCE = "ddp"
"""The backend every other one is compared with."""


def backends_section(rows: list[dict], found: list[Curve]) -> list[Block]:
    """The section, from the configuration rows (repeats aggregated) and the curves (for each configuration's
    efficiency against its own backend's baseline); nothing when the rows hold one backend."""
    if not several_backends(rows):
        return []
    efficiency = efficiency_points(found)
    ordered = sorted(rows, key=_order)
    blocks: list[Block] = [
        Heading(HEADING),
        Paragraph("The same device, ranks and batch per rank trained with each backend. samples/s is ± the "
                  "half-width of its 95% confidence interval over the repeats (none for a single run); efficiency "
                  "is that of the configuration's weak curve (its strong curve where it is on no weak one), each "
                  "backend against its own fewest-rank configuration; the phases are in ms."),
        Paragraph(SPLIT_MEANING),
        Table([header for _, header in COLUMNS], [[_cell(row, key, efficiency) for key, _ in COLUMNS]
                                                  for row in ordered]),
    ]
    lines, alone = comparisons(rows, efficiency)
    if lines:
        blocks.append(Bullets(lines))
    if alone:
        blocks.append(Paragraph("Not compared (no configuration of the other backend on the same device with the "
                                f"same ranks and batch per rank): {', '.join(alone)}."))
    return blocks


def efficiency_points(found: list[Curve]) -> dict[str, dict]:
    """configuration name -> its point on a weak curve, else on a strong one: where its efficiency comes from."""
    points: dict[str, dict] = {}
    for study in ("weak", "strong"):
        for curve in found:
            if curve.scaling == study:
                for point in curve.points:
                    points.setdefault(point["name"], point)
    return points


def comparisons(rows: list[dict], efficiency: dict[str, dict]) -> tuple[list[str], list[str]]:
    """(one sentence per configuration of another backend that DDP also measured at its device, ranks and batch
    per rank; the names of the configurations without such a counterpart)."""
    groups: dict[tuple[str, int, int], dict[str, dict]] = {}
    for row in rows:
        groups.setdefault(_setting(row), {})[backend_of(row)] = row
    lines, alone = [], []
    for _, members in sorted(groups.items()):
        reference = members.get(REFERENCE)
        others = [members[b] for b in sorted(members, key=backend_order) if b != REFERENCE]
        if reference is None or not others:
            alone += [row["name"] for row in members.values()]
            continue
        lines += [compare(reference, other, efficiency) for other in others]
    return lines, alone


def compare(reference: dict, other: dict, efficiency: dict[str, dict] | None = None) -> str:
    """One sentence: how much faster `other` is than `reference` (same device, ranks and batch per rank), whether
    the 95% intervals settle it, and which phases of the step the difference sits in."""
    ours, theirs = backend_name(backend_of(other)), backend_name(backend_of(reference))
    n, device = other["world_size"], other["device"]
    where = f"{n} {'GPU' if device == 'cuda' else 'CPU rank'}{'s' * (n != 1)}, {other['batch_size_per_rank']}/rank"
    text = (f"At {where}, {ours} ({other['name']}) runs {_rate_phrase(reference, other, theirs)} "
            f"({cell(other, 'samples_per_second')} against {cell(reference, 'samples_per_second')} samples/s; "
            f"{_overlap(reference, other)}); its step is {_step_phrase(reference, other)}")
    text += ": " + ", ".join(_phase_changes(reference, other)) + "."
    text += _allreduce_sentence(reference, other, ours, theirs)
    return text + _efficiency_sentence(reference, other, efficiency or {}, theirs)


def _rate_phrase(reference: dict, other: dict, theirs: str) -> str:
    change = other["samples_per_second"] / reference["samples_per_second"] - 1
    if round(abs(change) * 100) == 0:
        return f"about as many samples/s as {theirs}"
    return f"{abs(change):.0%} {'more' if change > 0 else 'fewer'} samples/s than {theirs}"


def _overlap(reference: dict, other: dict) -> str:
    """Whether the two means' 95% intervals overlap (overlapping ones leave the difference unsettled)."""
    cis = [row.get("samples_per_second_ci95") for row in (reference, other)]
    if any(ci is None for ci in cis):
        return "single runs, no intervals: a few percent is within a shared machine's noise"
    gap = abs(other["samples_per_second"] - reference["samples_per_second"])
    if gap <= cis[0] + cis[1]:
        return "95% intervals overlap, so the repeats do not settle the difference"
    return "95% intervals do not overlap"


def _step_phrase(reference: dict, other: dict) -> str:
    ms = _Ms(reference, other)
    change = other["step_ms"] - reference["step_ms"]
    if ms.zero(change):
        return f"as long ({ms(other['step_ms'])} ms)"
    return (f"{ms(abs(change))} ms {'longer' if change > 0 else 'shorter'} ({ms(other['step_ms'])} against "
            f"{ms(reference['step_ms'])} ms)")


def _phase_changes(reference: dict, other: dict) -> list[str]:
    """Each phase's change, the largest first, the phase where a backend waits for communication said so; then
    what falls between the phases when it moved too. A change under the figures' last digit is left out."""
    ms = _Ms(reference, other)
    waits = other["world_size"] > 1  # one rank has nothing to all-reduce, so no phase waits for it
    notes = {phase: f"where {backend_name(backend)} waits for {what}" for backend, (phase, what) in WAITS_IN.items()
             if waits and backend in (backend_of(reference), backend_of(other))}
    changes = [(other[key] - reference[key], key, label) for key, label in PHASES]
    parts = [f"{label} {ms(change, signed=True)} ms" + (f" ({notes[key]})" if key in notes else "")
             for change, key, label in sorted(changes, key=lambda c: -abs(c[0])) if not ms.zero(change)]
    rest = (other["step_ms"] - reference["step_ms"]) - sum(change for change, _, _ in changes)
    if not ms.zero(rest):
        parts.append(f"outside these phases {ms(rest, signed=True)} ms")
    return parts or [f"no phase changed by {ms.unit} ms or more"]


def _allreduce_sentence(reference: dict, other: dict, ours: str, theirs: str) -> str:
    """The two all-reduce figures, each with how its backend measures it; nothing when neither has one (one rank)."""
    ms = _Ms(reference, other)
    if ms.zero(reference["allreduce_ms"]) and ms.zero(other["allreduce_ms"]):
        return ""
    return (f" Its all-reduce spans {ms(other['allreduce_ms'])} ms against {theirs}'s "
            f"{ms(reference['allreduce_ms'])} ms ({ours}: first launch to synchronize; {theirs}: the sum of its "
            "buckets' spans).")


class _Ms:
    """Milliseconds of one comparison, all with the same decimals: one, or two when a step is under 10 ms (GPU
    steps), so that a sentence never mixes 24.0 with 4.00."""

    def __init__(self, *rows: dict) -> None:
        self.decimals = 2 if min(row["step_ms"] for row in rows) < 10 else 1
        self.unit = f"{10 ** -self.decimals:.{self.decimals}f}"

    def __call__(self, value: float, signed: bool = False) -> str:
        return f"{value:{'+' if signed else ''}.{self.decimals}f}"

    def zero(self, value: float) -> bool:
        """Rounds to zero at these decimals."""
        return round(abs(value), self.decimals) == 0


def _efficiency_sentence(reference: dict, other: dict, efficiency: dict[str, dict], theirs: str) -> str:
    """Both efficiencies, each against its own backend's baseline, where neither configuration is that baseline."""
    a, b = efficiency.get(reference["name"]), efficiency.get(other["name"])
    if a is None or b is None or a["name"] == a["baseline"] or b["name"] == b["baseline"]:
        return ""
    return (f" Efficiency {cell(b, 'efficiency')} against {theirs}'s {cell(a, 'efficiency')} ({b['baseline']} and "
            f"{a['baseline']} as baselines).")


def _cell(row: dict, key: str, efficiency: dict[str, dict]) -> str:
    if key == "backend":
        return backend_of(row)
    if key == "efficiency":
        point = efficiency.get(row["name"])
        return "n/a" if point is None else cell(point, "efficiency")
    return cell(row, key)


def _setting(row: dict) -> tuple[str, int, int]:
    """What two configurations must share to be compared: device, batch per rank, ranks."""
    return row["device"], row["batch_size_per_rank"], row["world_size"]


def _order(row: dict) -> tuple:
    return (*_setting(row), backend_order(backend_of(row)))
