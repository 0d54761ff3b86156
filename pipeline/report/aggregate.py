"""The repeats of one configuration folded into one row: the mean of each measurement and its 95% confidence interval.

A configuration trained n times (train.repeats: repeat k in configs/<configuration>-r<k>, with seed `seed + k - 1`)
gives n samples of every metric, and the spread between them is the noise of the machine plus that of the
initialisation and data order. A row reports, for each numeric key K:

- `K`: the mean x over the repeats;
- `K_std`: the sample standard deviation s (n - 1 in the denominator);
- `K_ci95`: the half-width of the two-sided 95% Student-t confidence interval of the mean,
  t(0.975, n - 1) * s / sqrt(n), so that x ± K_ci95 covers the true mean in 95% of experiments if the repeats are
  independent draws from a normal distribution.

With few repeats t is large (12.7 for n = 2, 4.30 for n = 3): that is the honest price of few samples, which the
normal quantile 1.96 would hide. One repeat has no spread to estimate, so its `_std` and `_ci95` are None. An integer
that is the same in every repeat (ranks, batch size, epochs, parameters) is a setting rather than a measurement: it
keeps its value and type, with None for its spread.
"""

from __future__ import annotations

import math
import statistics

from scipy import stats

from pipeline.report.table import backend_of
from pipeline.sweep import TrainingRun

IDENTITY = ("repeat", "seed")
"""Per-repeat keys that say which run it was rather than what it measured: listed (`seeds`), never averaged."""


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per configuration from per-run rows (`table.collect`), in the order the configurations first appear.

    A configuration's row has the configuration's name (`configuration_of`), `repeats` (n), `repeat_names` (the runs'
    folders, by repeat) and `seeds`, the mean, `_std` and `_ci95` of every numeric key (see the module docstring), the
    non-numeric values of its first repeat, and `history` as the per-epoch mean over the repeats. A run of repeat 0
    (train.repeats 1) is a configuration of one.
    """
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(configuration_of(row), []).append(row)
    return [_configuration(name, sorted(group, key=lambda r: r["repeat"])) for name, group in groups.items()]


def configuration_of(row: dict) -> str:
    """The configuration a run is a repeat of, from what it recorded (ranks, device, batch per rank: fields of both
    metrics.json and skipped.json), not from its folder's name, which is only where it was written."""
    return TrainingRun(row["world_size"], row["device"], row["batch_size_per_rank"],
                       backend=backend_of(row)).configuration


def one_per_configuration(skipped: list[dict]) -> list[dict]:
    """The first skipped run of each configuration, named after the configuration: the report gives one note per
    skipped configuration, not one per repeat (skipped.json records no repeat, so the folders' order decides)."""
    firsts: dict[str, dict] = {}
    for row in skipped:
        firsts.setdefault(configuration_of(row), row)
    return [{**row, "name": name} for name, row in firsts.items()]


def interval(values: list[float]) -> tuple[float, float | None, float | None]:
    """(mean, sample standard deviation, half-width of the 95% Student-t interval of the mean); None for one value."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None, None
    std = statistics.stdev(values)
    return mean, std, float(stats.t.ppf(0.975, len(values) - 1)) * std / math.sqrt(len(values))


def _configuration(name: str, repeats: list[dict]) -> dict:
    row = _fold([{k: v for k, v in r.items() if k not in (*IDENTITY, "name", "history")} for r in repeats])
    if any("history" in r for r in repeats):
        row["history"] = _history([r.get("history", []) for r in repeats])
    return {"name": name, **row, "repeats": len(repeats), "repeat_names": [r["name"] for r in repeats],
            "seeds": [r.get("seed") for r in repeats]}


def _history(histories: list[list[dict]]) -> list[dict]:
    """Per epoch, the mean and interval of each numeric field over the repeats that reached it (early stopping can
    end repeats at different epochs; `repeats` says how many are in each epoch's mean)."""
    epochs: dict[int, list[dict]] = {}
    for history in histories:
        for entry in history:
            epochs.setdefault(entry["epoch"], []).append(entry)
    return [{**_fold(entries), "repeats": len(entries)} for _, entries in sorted(epochs.items())]


def _fold(samples: list[dict]) -> dict:
    """Mean, `_std` and `_ci95` of every numeric key; the first sample's value of every other key."""
    keys = list(dict.fromkeys(key for sample in samples for key in sample))
    out: dict = {}
    for key in keys:
        values = [sample.get(key) for sample in samples]
        if not all(_is_number(v) for v in values):
            out[key] = values[0]
        elif all(isinstance(v, int) for v in values) and len(set(values)) == 1:
            out[key], out[f"{key}_std"], out[f"{key}_ci95"] = values[0], None, None
        else:
            out[key], out[f"{key}_std"], out[f"{key}_ci95"] = interval([float(v) for v in values])
    return out


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
