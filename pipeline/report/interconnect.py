"""The link the projection's all-reduce runs over: measured on this run's machines, or assumed from the config.

`pipeline bench --allreduce` (or the train stage after its sweep) writes RUN_DIR/allreduce.json: per world size N,
a latency a_N and a bus bandwidth B_N fitted to t = a_N + m x 2(N-1)/N / B_N (`pipeline.allreduce`). Without that
file, or when it was measured on another device type than the curve's, the link is assumed: `report.
interconnect_gbit_s` of bus bandwidth at every N and no latency.

Beyond the measured world sizes (`EXTRAPOLATION`): bus bandwidth stays that of the largest measured world size M,
which is the most pessimistic one measured (more ranks cross more, and slower, links: the ring runs at its slowest
hop); latency grows with the ring's 2(N-1) steps, each paying the per-step latency measured at M, a_M / (2(M-1)). A
world size between measured ones takes the fit of the next measured world size above it (again the slower side).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.config import ReportConfig
from pipeline.layout import RunLayout

EXTRAPOLATION = (
    "beyond the largest measured world size M the bus bandwidth stays B_M (the slowest measured: more ranks cross "
    "more and slower links) and the latency grows with the ring's 2(N-1) steps, a_N = a_M x (N-1)/(M-1); a world "
    "size between measured ones takes the fit of the next measured one above it")


@dataclass(frozen=True)
class LinkFit:
    """The fit at one measured world size."""

    world_size: int
    latency_s: float
    bus_bandwidth_bytes_s: float


@dataclass(frozen=True)
class Link:
    """Latency and bus bandwidth of one all-reduce per world size, and where they come from."""

    source: Literal["measured", "assumed"]
    fits: tuple[LinkFit, ...] = ()
    """measured: one per measured world size, by world size."""
    file: str | None = None
    """measured: the file, relative to the run folder."""
    backend: str | None = None
    device: str | None = None
    """measured: the device type the file was measured on; None for an assumed link (any device)."""
    gbit_s: float | None = None
    """assumed: `report.interconnect_gbit_s`."""
    note: str = ""
    """assumed although a file exists: why it was not used."""

    @property
    def world_sizes(self) -> list[int]:
        return [f.world_size for f in self.fits]

    def _fit(self, world_size: int) -> tuple[LinkFit, bool]:
        """(the measured fit that stands for `world_size`, whether it is extrapolated beyond it)."""
        above = [f for f in self.fits if f.world_size >= world_size]
        return (above[0], False) if above else (self.fits[-1], True)

    def latency_s(self, world_size: int) -> float:
        if self.source == "assumed" or world_size < 2:
            return 0.0
        fit, beyond = self._fit(world_size)
        if not beyond:
            return fit.latency_s
        return fit.latency_s * (world_size - 1) / (fit.world_size - 1)

    def bus_bandwidth(self, world_size: int) -> float:
        """Bytes/s through each rank's link."""
        if self.source == "assumed":
            return self.gbit_s * 1e9 / 8
        return self._fit(world_size)[0].bus_bandwidth_bytes_s

    def seconds(self, message_bytes: float, world_size: int) -> float:
        """One ring all-reduce of `message_bytes` over `world_size` ranks: a_N + m x 2(N-1)/N / B_N (0 for one)."""
        if world_size < 2:
            return 0.0
        factor = 2 * (world_size - 1) / world_size
        return self.latency_s(world_size) + message_bytes * factor / self.bus_bandwidth(world_size)

    def applies_to(self, device: str) -> bool:
        return self.device is None or self.device == device

    def describe(self) -> str:
        """One sentence for the report: which link, its numbers, and how to replace an assumed one."""
        if self.source == "assumed":
            return (f"Link: assumed, {self.gbit_s:g} Gbit/s = {self.gbit_s / 8:g} GB/s of bus bandwidth per rank "
                    "and no latency (`report.interconnect_gbit_s`)" + (f"; {self.note}" if self.note else "")
                    + ". `pipeline bench --allreduce --out RUN_DIR/allreduce.json`, run on the cluster's nodes, "
                    "measures the link and replaces this assumption.")
        fits = "; ".join(f"{f.world_size} ranks: latency {f.latency_s * 1e6:.1f} us, bus bandwidth "
                         f"{f.bus_bandwidth_bytes_s / 1e9:.3f} GB/s" for f in self.fits)
        return (f"Link: measured ({self.backend} on {self.device}, `{self.file}`, fitted t = a_N + bytes x "
                f"2(N-1)/N / B_N per world size): {fits}. Extrapolation: {EXTRAPOLATION}.")


def assumed(report: ReportConfig, note: str = "") -> Link:
    return Link("assumed", gbit_s=report.interconnect_gbit_s, note=note)


def load_link(run_dir: Path | None, report: ReportConfig, device: str) -> Link:
    """The measured link when RUN_DIR/allreduce.json exists and was measured on `device` (cpu or cuda), else the
    assumed one (also for no run folder, as a combined report has). A file that is there but cannot be read as a
    measurement is an error naming it: a projection never quietly falls back from a measurement it was given."""
    if run_dir is None or not RunLayout(run_dir).allreduce.is_file():
        return assumed(report)
    path = RunLayout(run_dir).allreduce
    record = _read(path)
    name = path.relative_to(run_dir).as_posix()  # the run folder's own name for it, wherever the folder is
    if record["device"] != device:
        return assumed(report, f"{name} was measured on {record['device']}, not {device}")
    fits = tuple(sorted((LinkFit(int(f["world_size"]), float(f["latency_s"]), float(f["bus_bandwidth_bytes_s"]))
                         for f in record["fits"]), key=lambda f: f.world_size))
    if not fits:
        return assumed(report, f"{name} measured no world size")
    return Link("measured", fits, name, record["backend"], record["device"])


def _read(path: Path) -> dict:
    """The parts of allreduce.json a Link needs, checked; ValueError naming the file otherwise."""
    try:
        record = json.loads(path.read_text())
        for key in ("device", "backend", "fits"):
            record[key]  # noqa: B018  # a KeyError names the missing key
        for fit in record["fits"]:
            if not (int(fit["world_size"]) >= 2 and float(fit["latency_s"]) >= 0
                    and float(fit["bus_bandwidth_bytes_s"]) > 0):
                raise ValueError(f"fit {fit}: needs world_size >= 2, latency_s >= 0, bus_bandwidth_bytes_s > 0")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not an all-reduce measurement of `pipeline bench --allreduce` "
                         f"({type(err).__name__}: {err})") from err
    return record


def largest_fit(path: Path) -> int:
    """The most ranks allreduce.json has a fit for: 0 without the file, ValueError naming it when malformed. Which
    link a rerun keeps (`stages`) and a combined report uses (`combine`) both go by it."""
    if not path.is_file():
        return 0
    return max((int(f["world_size"]) for f in _read(path)["fits"]), default=0)


def load_links(run_dir: Path | None, report: ReportConfig, devices: list[str]) -> dict[str, Link]:
    """`load_link` for each device of a report's curves."""
    return {device: load_link(run_dir, report, device) for device in sorted(set(devices))}
