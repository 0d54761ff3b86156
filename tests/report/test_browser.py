"""report.html as a reader sees it: opened in headless Chromium, with its embedded plots drawn.

A report is mailed or attached as one file, so its figures must render from the page alone. These tests open it
in a real browser and look at the pixels: the plots' colours must be on screen, and must vanish when the images are
removed from the page (so they came from the plots, not from text or table styling).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.report.report import write_report
from tests.report.fixtures import metrics, record

TIMEOUT_S = 90
WINDOW = (1200, 3000)
C0_BLUE = (0x1F, 0x77, 0xB4)
"""The first colour of matplotlib's default cycle: every figure's first curve or bar."""
C1_ORANGE = (0xFF, 0x7F, 0x0E)


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("chromium is not installed: run ./setup.sh (as root it installs Debian's chromium package)")


def run_chromium(page: Path, profile: Path, *args: str) -> str:
    """Run headless Chromium on a file with a fresh profile; return its stdout. Killed, with all the helper
    processes it forks, if it outlives TIMEOUT_S."""
    command = [chromium(), "--headless", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
               "--force-device-scale-factor=1", f"--user-data-dir={profile}", *args, page.resolve().as_uri()]
    if os.geteuid() == 0:
        command.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"chromium did not finish within {TIMEOUT_S} s on {page}")
    assert process.returncode == 0, f"chromium failed on {page}: {stderr[-2000:]}"
    return stdout


def screenshot(page: Path, tmp_path: Path, name: str) -> np.ndarray:
    """The top WINDOW of the page as an RGB array."""
    path = tmp_path / f"{name}.png"
    run_chromium(page, tmp_path / f"profile-{name}", f"--screenshot={path}",
                 f"--window-size={WINDOW[0]},{WINDOW[1]}")
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def pixels_near(image: np.ndarray, colour: tuple[int, int, int], tolerance: int = 12) -> int:
    return int((np.abs(image - np.array(colour)).max(axis=2) <= tolerance).sum())


@pytest.fixture
def report(tmp_path: Path) -> Path:
    """A report of three configurations from recorded metrics: three figures, as a real run has.

    gradient_bytes 0 leaves out the projection section (the report's answer to a run without a gradient size): its
    tables would move up into the window of the text-only screenshot, whose ink the plots' is measured against.
    """
    run = tmp_path / "run"
    no_projection = {"gradient_bytes": 0}
    record(run, "ws1-cpu-bs32", metrics(1, 100.0, 0.32, 0.01, **no_projection))
    record(run, "ws2-cpu-bs32", metrics(2, 150.0, 0.42, 0.12, **no_projection))
    record(run, "ws4-cpu-bs32", metrics(4, 160.0, 0.80, 0.3, **no_projection))
    write_report(run)
    return run / "report.html"


def test_the_report_shows_its_plots_in_a_browser(report, tmp_path):
    shown = screenshot(report, tmp_path, "report")
    assert shown.shape[:2] == (WINDOW[1], WINDOW[0])
    without_images = report.with_name("without_images.html")
    without_images.write_text(re.sub(r"<img\b[^>]*>", "", report.read_text()))
    text_only = screenshot(without_images, tmp_path, "text_only")

    colours = len(np.unique(shown.reshape(-1, 3), axis=0))
    assert colours > 500, f"only {colours} distinct colours: the page looks blank or text-only"
    ink = (shown.min(axis=2) < 240).mean()
    assert ink > 0.05, f"only {ink:.1%} of the page is not white"
    # Text and tables are grey; only the plots bring colour (a pixel whose channels differ).
    colour, text_colour = ((image.max(axis=2) - image.min(axis=2) > 60).mean() for image in (shown, text_only))
    assert colour > 0.005 > text_colour, f"the plots add no colour: {colour:.2%} with them, {text_colour:.2%} without"
    for name, colour in [("C0 blue", C0_BLUE), ("C1 orange", C1_ORANGE)]:
        assert pixels_near(shown, colour) > 500, f"no {name} on screen: the embedded plots did not render"
        assert pixels_near(text_only, colour) < 50, f"{name} is on screen without the plots too"


def test_every_image_of_the_report_decodes_at_its_figures_size(report, tmp_path):
    """A broken image still has a box on screen, so the decoded size of each image is read from the DOM: a script
    added to a copy of the page records it once the page (images included) has loaded."""
    page = report.read_text()
    sources = re.findall(r"<img\b[^>]*\bsrc='([^']*)'", page)
    figures = re.findall(r"\]\(([^)]+\.png)\)", report.with_name("report.md").read_text())
    assert len(sources) == page.count("<img") == len(figures) >= 3
    assert all(s.startswith("data:image/png;base64,") for s in sources), "an image is not embedded in the page"

    probe = report.with_name("probe.html")
    probe.write_text(page.replace("</body>", "<script>window.addEventListener('load', () => { for (const img of "
                                  "document.images) img.dataset.decoded = img.naturalWidth + 'x' + "
                                  "img.naturalHeight; });</script></body>"))
    dom = run_chromium(probe, tmp_path / "profile-dom", "--dump-dom")
    decoded = re.findall(r'data-decoded="(\d+)x(\d+)"', dom)
    expected = [Image.open(report.parent / f).size for f in figures]
    assert [(int(w), int(h)) for w, h in decoded] == expected, "an image did not load (0x0) or has the wrong size"
