"""Scaling curves: which configurations form a weak or a strong scaling study, and each point's speedup.

- **weak** scaling keeps the batch per rank, so the global batch grows with the ranks (data-parallel training's
  usual mode): one curve per device and batch per rank.
- **strong** scaling keeps the global batch and divides it among the ranks, so each rank does less work as the ranks
  grow: one curve per device and global batch, starting at the fewest ranks measured on that device (the smallest
  scale a reviewer's "speedup relative to the smallest feasible count" refers to).

Each backend (`TrainingRun.backend`: DDP, Horovod) has its own curves and its own baselines: a Horovod point divided
by a DDP baseline would mix the backends' costs into one speedup. A report of one backend names its curves as it
always did; one of several adds the backend to every label (`weak, cpu, 32/rank, horovod`).

A configuration (ranks, device, batch per rank) can sit on two curves: with world sizes 1, 2, 4 and batch 32 per
rank, ws2-bs16 is on the weak curve of 16 per rank and on the strong curve of global batch 32. Its speedup differs
between the two, so each curve holds its own copy of the configuration's row with the derived columns against that
curve's baseline (`Curve.points`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from pipeline.layout import RunLayout
from pipeline.report.aggregate import configuration_of
from pipeline.report.table import backend_of, backend_order, derive, several_backends

Scaling = Literal["weak", "strong"]
STUDIES: dict[str, list[Scaling]] = {"weak": ["weak"], "strong": ["strong"], "both": ["weak", "strong"]}
"""train.scaling -> the studies a report shows."""


@dataclass
class Curve:
    """One scaling curve of one study."""

    scaling: Scaling
    device: str
    batch: int
    """weak: the batch per rank every point shares; strong: the global batch every point shares."""
    points: list[dict] = field(default_factory=list)
    """Copies of the configuration rows, by ranks; each has `speedup`, `efficiency` (with `_ci95`), `baseline`
    (the first point's name), `scaling` and `curve` (this curve's label). points[0] is the baseline."""
    backend: str = "ddp"
    """What averaged the gradients of every point (`ddp`, `horovod`)."""
    show_backend: bool = False
    """Name the backend in the label: set when the report holds more than one backend."""

    @property
    def baseline(self) -> dict:
        return self.points[0]

    @property
    def label(self) -> str:
        """How the curve is named in tables, figures and notes, e.g. `weak, cpu, 32/rank` (`weak, cpu, 32/rank,
        horovod` in a report of several backends)."""
        batch = f"{self.batch}/rank" if self.scaling == "weak" else f"global batch {self.batch}"
        return f"{self.scaling}, {self.device}, {batch}" + (f", {self.backend}" if self.show_backend else "")


def curves(rows: list[dict], studies: list[Scaling]) -> list[Curve]:
    """The curves of `studies` among configuration rows (aggregated, one per configuration), weak ones first, each
    by device, batch, then backend (DDP first). Every configuration is on one weak curve; a strong curve needs its
    fewest-rank point to be at the fewest ranks measured on its device with its backend (a strong curve without that
    baseline would start mid-way)."""
    found: list[Curve] = []
    named = several_backends(rows)
    for scaling in studies:
        groups: dict[tuple[str, int, tuple[int, str]], list[dict]] = {}
        for row in rows:
            key = (row["device"], _batch_of(row, scaling), backend_order(backend_of(row)))
            groups.setdefault(key, []).append(row)
        for (device, batch, (_, backend)), members in sorted(groups.items()):
            members = sorted(members, key=lambda r: r["world_size"])
            fewest = min(r["world_size"] for r in rows if r["device"] == device and backend_of(r) == backend)
            if scaling == "strong" and members[0]["world_size"] != fewest:
                continue
            curve = Curve(scaling, device, batch, backend=backend, show_backend=named)
            curve.points = [_point(row, members[0], curve) for row in members]
            found.append(curve)
    return _without_stray_points(found)


def _without_stray_points(found: list[Curve]) -> list[Curve]:
    """Drop one-point curves whose configuration is on a longer curve: with `train.scaling: both`, ws2-bs16 of
    the strong curve would otherwise stand alone as the weak curve of 16 per rank. A one-point curve of a
    configuration on no other curve (a sweep of one world size) stays: it is that configuration's only row."""
    longer = {p["name"] for c in found if len(c.points) > 1 for p in c.points}
    return [c for c in found if len(c.points) > 1 or c.baseline["name"] not in longer]


def _batch_of(row: dict, scaling: Scaling) -> int:
    return row["batch_size_per_rank"] if scaling == "weak" else row["global_batch_size"]


def _point(row: dict, base: dict, curve: Curve) -> dict:
    point = {**row, "scaling": curve.scaling, "curve": curve.label}
    derive(point, base)
    return point


def repeat_points(repeats: list[dict], curves_: list[Curve]) -> list[dict]:
    """Each single repeat as a point of every curve its configuration is on, derived against the curve's baseline
    (the mean of the baseline's repeats, the scale of the aggregated point): the rows of scaling_repeats.csv."""
    points = []
    for curve in curves_:
        names = {p["name"] for p in curve.points}
        for run in repeats:
            if configuration_of(run) in names:
                point = {**run, "repeats": 1, "scaling": curve.scaling, "curve": curve.label}
                derive(point, curve.baseline)
                points.append(point)
    return points


def scaling_of(run_dir: Path) -> str:
    """train.scaling of the run's config.yaml (`weak` without one, or for runs of versions before the setting)."""
    path = RunLayout(run_dir).config
    raw = yaml.safe_load(path.read_text()) if path.is_file() else None
    value = ((raw or {}).get("train") or {}).get("scaling", "weak")
    if value not in STUDIES:
        raise ValueError(f"{path}: train.scaling is {value!r}; expected one of {', '.join(STUDIES)}")
    return value
