"""One scaling curve from several run folders measured separately: `pipeline report RUN_A RUN_B ... --combine`.

A user measures one node this week and two or four next week, each into its own run folder. Pooling their
configurations into one curve is only honest when every run trained the same model on the same data with the same
settings, so the runs' config.yaml and the fields every metrics.json records are compared first and any difference
refuses the combination, naming the key and both values. Machines, library and code versions may differ (that is
the point of measuring 1 node against 2), so they are not refused but said next to the numbers: which folder each
configuration came from, on which host, when and with which code commit.

A configuration measured in more than one folder is taken, with all its repeats, from the first folder given that
has it: mixing repeats of two machines into one mean would hide which one the figure describes. The note and
combined.json say which folders also had it. The report itself is the one of a single run (`report.render`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import load_config, to_dict
from pipeline.io import atomic_write_json
from pipeline.layout import RunLayout
from pipeline.preprocess.params import EXECUTION_ONLY
from pipeline.report.aggregate import configuration_of, one_per_configuration
from pipeline.report.curves import scaling_of
from pipeline.report.interconnect import largest_fit
from pipeline.report.projection import report_config
from pipeline.report.report import ReportInput, provenance_notes, render
from pipeline.report.table import backend_of, backend_order, collect
from pipeline.sweep import SWEEP_ONLY

SWEEP_KEYS = SWEEP_ONLY | {"world_sizes", "batch_sizes", "scaling", "synthetic_steps", "device"}
"""train keys that shape the sweep or its scheduling: runs of one experiment differ in them by design (1 node
measures ws1 and ws2, 2 nodes ws4), so they never refuse a combination."""
MEASURED = ("model", "input", "feature", "init", "precision", "train_samples", "epochs", "grad_accumulation",
            "labels", "lr")
"""TrainingMetrics fields that say what was trained: they must agree, whatever the config files say (a config
edited after training, or a run of another dataset whose config happens to match)."""
COMBINED = "combined.json"
"""What was combined and which configuration came from where, so that the combination can be reproduced."""


@dataclass
class Source:
    """One run folder of the combination, as the user named it."""

    path: Path
    shown: str
    """The folder relative to the current directory, as typed: what notes and files name (never a machine path)."""
    runs: list[dict]
    skipped: list[dict]
    settings: dict = field(default_factory=dict)
    """Dotted config keys (`data.root`, `train.lr`) that must agree between the runs (`settings_of`)."""


@dataclass
class Pooled:
    """The configurations taken into the combined report and those left out."""

    runs: list[dict] = field(default_factory=list)
    """Per-run rows (repeats unfolded) of every configuration taken, as `table.collect` gives them."""
    taken: dict[str, Source] = field(default_factory=dict)
    """configuration -> the folder it was taken from."""
    left_out: dict[str, list[Source]] = field(default_factory=dict)
    """configuration -> later folders that also measured it and were not used."""


def default_out(run_dirs: list[Path]) -> Path:
    """<last run>/combined: the newest measurement is usually listed last, and the combination belongs with it."""
    return Path(run_dirs[-1]) / "combined"


def write_combined(run_dirs: list[Path], out: Path | None = None) -> Path:
    """The scaling report of several run folders pooled into one, written into `out` (default `default_out`), and
    combined.json beside it; returns report.md. Refuses runs of different models, data or settings."""
    if len(run_dirs) < 2:
        raise ValueError("--combine needs two or more run folders to combine into one report; for one run folder's "
                         "report leave out --combine")
    sources = [load_source(Path(run)) for run in run_dirs]
    check_same_experiment(sources)
    out = Path(out) if out is not None else default_out([s.path for s in sources])
    pooled = pool(sources)
    path = render(ReportInput(
        out, pooled.runs, report_config(sources[0].path), combined_scaling(sources), pooled_skips(sources, pooled),
        [], notes(sources, pooled), None, allreduce_dir(sources),
        "Combined scaling report: " + " + ".join(s.shown for s in sources)))
    atomic_write_json(out / COMBINED, record(sources, pooled))
    return path


def shown(path: Path) -> str:
    """How notes name a run folder: as the user typed it, or relative to the current directory when typed as an
    absolute path, so that a report shared with others names no machine's directories."""
    return os.path.relpath(path) if path.is_absolute() else path.as_posix()


def load_source(path: Path) -> Source:
    """A run folder's measured and skipped runs and the settings its config.yaml was trained with."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such run folder")
    runs, skipped = collect(path)
    if not runs:
        raise FileNotFoundError(f"{path}: no configs/*/metrics.json to combine; run `pipeline train` on it first")
    return Source(path, shown(path), runs, skipped, settings_of(path))


def settings_of(run: Path) -> dict:
    """The run's config keys that decide what was trained, dotted: every `data` key, the `preprocess` keys that
    change the features (`preprocess.params.EXECUTION_ONLY` only decide where they were computed), and the `train`
    keys but the sweep's (`SWEEP_KEYS`)."""
    config = load_config(RunLayout(run).config)
    flat: dict = {}
    _flatten(flat, "data", to_dict(config.data))
    _flatten(flat, "preprocess", {k: v for k, v in to_dict(config.preprocess).items() if k not in EXECUTION_ONLY})
    _flatten(flat, "train", {k: v for k, v in to_dict(config.train).items() if k not in SWEEP_KEYS})
    return flat


def _flatten(flat: dict, prefix: str, values: dict) -> None:
    for key, value in values.items():
        if isinstance(value, dict):
            _flatten(flat, f"{prefix}.{key}", value)
        else:
            flat[f"{prefix}.{key}"] = value


def check_same_experiment(sources: list[Source]) -> None:
    """Refuse, listing every difference, unless each run agrees with the first on its settings and on what its
    metrics recorded (`MEASURED`): a curve pooled from two experiments would show a speedup that no code has."""
    first, found = sources[0], []
    for other in sources[1:]:
        for key in sorted(first.settings.keys() | other.settings.keys()):
            a, b = first.settings.get(key), other.settings.get(key)
            if a != b:
                found.append(f"{key}: {a!r} in {first.shown} vs {b!r} in {other.shown}")
        for key in MEASURED:
            a, b = _values(first.runs, key), _values(other.runs, key)
            if a != b:
                found.append(f"{key}: {_show(a)} in {first.shown} vs {_show(b)} in {other.shown}")
    if found:
        names = ", ".join(s.shown for s in sources)
        raise ValueError(f"cannot combine {names}: their model, data or settings differ, so their configurations "
                         "are not points of one curve: " + "; ".join(found))


def _values(runs: list[dict], key: str) -> list:
    """The distinct values of `key` over a run's configurations, in order (lists such as `labels` included)."""
    values: list = []
    for row in runs:
        if row.get(key) not in values:
            values.append(row.get(key))
    return values


def _show(values: list) -> str:
    return " / ".join(repr(v) for v in values)


def pool(sources: list[Source]) -> Pooled:
    """Each configuration with all its repeats from the first folder that has it; the later ones are left out."""
    pooled = Pooled()
    for source in sources:
        for configuration in dict.fromkeys(configuration_of(r) for r in source.runs):
            if configuration in pooled.taken:
                pooled.left_out.setdefault(configuration, []).append(source)
            else:
                pooled.taken[configuration] = source
                pooled.runs += [r for r in source.runs if configuration_of(r) == configuration]
    pooled.runs.sort(key=lambda m: (m["device"], m["batch_size_per_rank"], m["world_size"],
                                    backend_order(backend_of(m))))
    return pooled


def pooled_skips(sources: list[Source], pooled: Pooled) -> list[dict]:
    """One skip per configuration that no folder measured: a configuration run at 2 nodes is no longer "not run"
    because the 1-node folder skipped it."""
    skips = one_per_configuration([skip for source in sources for skip in source.skipped])
    return [skip for skip in skips if skip["name"] not in pooled.taken]


def combined_scaling(sources: list[Source]) -> str:
    """The first run's train.scaling, or both studies when the runs asked for different ones."""
    studies = {scaling_of(source.path) for source in sources}
    return studies.pop() if len(studies) == 1 else "both"


def allreduce_dir(sources: list[Source]) -> Path | None:
    """The folder whose allreduce.json measured the most ranks: the largest scale's link is the one the projection
    beyond the measured ranks should assume. None when no folder has one (the report assumes a link)."""
    best, most = None, 0
    for source in sources:
        ranks = largest_fit(RunLayout(source.path).allreduce)
        if ranks > most:
            best, most = source.path, ranks
    return best


def notes(sources: list[Source], pooled: Pooled) -> list[str]:
    """Where every configuration came from, which duplicates were left out, then what differs in provenance."""
    parts = [f"{s.shown} ({_origin(s, pooled)})" for s in sources]
    found = [f"This report combines {len(sources)} run folders measured separately: " + "; ".join(parts) + "."]
    for configuration, others in pooled.left_out.items():
        taken, also = pooled.taken[configuration].shown, ", ".join(o.shown for o in others)
        found.append(f"{configuration} was measured in {taken} and also in {also}: it is taken from {taken} alone "
                     f"(repeats of different folders are never averaged together); the measurement in {also} is "
                     "left out.")
    return found + provenance_notes(pooled.runs)


def _origin(source: Source, pooled: Pooled) -> str:
    """`configurations ...; host h, measured 2026-11-22 to 2026-11-29, code commit c` of one folder."""
    mine = [c for c, s in pooled.taken.items() if s is source]
    what = f"configurations {', '.join(mine)}" if mine else "no configuration taken: an earlier folder had each"
    hosts = sorted({r["hostname"] for r in source.runs})
    days = sorted(r["measured_at"][:10] for r in source.runs)
    when = days[0] if days[0] == days[-1] else f"{days[0]} to {days[-1]}"
    commits = sorted({(r.get("code") or {}).get("commit") or "not recorded" for r in source.runs})
    return (f"{what}; host{'s' if len(hosts) > 1 else ''} {', '.join(hosts)}, measured {when}, "
            f"code commit {', '.join(commits)}")


def record(sources: list[Source], pooled: Pooled) -> dict:
    """combined.json: the folders in the order given (which decides duplicates), each configuration's folder and
    training folders, and the measurements left out."""
    def folders(configuration: str, source: Source) -> list[str]:
        return [r["name"] for r in source.runs if configuration_of(r) == configuration]

    return {
        "runs": [s.shown for s in sources],
        "configurations": [{"configuration": c, "run": s.shown, "folders": folders(c, s)}
                           for c, s in pooled.taken.items()],
        "left_out": [{"configuration": c, "run": o.shown, "folders": folders(c, o),
                      "taken_from": pooled.taken[c].shown} for c, others in pooled.left_out.items() for o in others],
    }
