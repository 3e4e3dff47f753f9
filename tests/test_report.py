"""Colormaps, grids and the HTML report, the report checked in a real browser
(Debian's Chromium driven by Playwright; `make browser` installs it)."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from saliency_cli.render import COLORMAPS
from saliency_cli.report import write_report

from .conftest import SAMPLES
from .test_cli import records, saliency, toy_detector_config


def chromium() -> str:
    path = os.environ.get("SALIENCY_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("Chromium is needed for the report's browser test: run `make browser` "
                    "(Debian: apt-get install chromium) or set SALIENCY_CHROMIUM")
    return path


@pytest.mark.parametrize("name", ["viridis", "inferno"])
def test_lookup_tables_equal_matplotlib(name):
    matplotlib = pytest.importorskip("matplotlib")  # installed with captum, the test reference
    want = np.round(matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    assert np.array_equal(COLORMAPS[name], want)


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    folder = root / "in"
    shutil.copytree(SAMPLES, folder)
    (folder / "broken & <odd>.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = root / "out"
    proc = saliency("explain", str(folder), "-o", str(out), "-m", "gradient", "-m", "gradient-x-input",
                    "-m", "grad-cam", "--grid", "--report", "--colormap", "viridis")
    assert proc.returncode == 1, proc.stderr  # the broken file
    return out


def test_grid_shows_the_photo_and_every_method(classification_run):
    out = classification_run
    chelsea = next(r for r in records(out) if r["key"] == "chelsea")
    assert chelsea["grid"] == "chelsea/grid.png"
    with Image.open(out / "chelsea/grid.png") as grid:
        width, height = grid.size
    # four panels (photo + 3 methods) of 451x300 scaled to 256 high, a caption strip above
    panel = round(451 * 256 / 300)
    assert width == 4 * panel + 5 * 6 and height == 256 + 40 + 12
    # each panel is its own picture: the photo, then each method's PNG, in the record's order
    with Image.open(out / "chelsea/grid.png") as grid:
        cells = [np.asarray(grid.convert("RGB").crop((x, 46, x + panel, 46 + 256))).astype(int)
                 for x in range(6, width, panel + 6)]
    sources = [SAMPLES / "chelsea.png", *(out / files["png"] for files in chelsea["outputs"].values())]
    assert len(sources) == len(cells) == 4
    for cell, source in zip(cells, sources):
        with Image.open(source) as image:
            want = np.asarray(image.convert("RGB").resize((panel, 256), Image.BILINEAR)).astype(int)
        assert np.abs(cell - want).max() <= 1, source.name


def test_signed_maps_use_the_diverging_map_and_the_rest_the_chosen_one(classification_run):
    out = classification_run
    signed = np.asarray(Image.open(out / "chelsea/gradient-x-input.png")).reshape(-1, 3).astype(int)
    assert ((signed[:, 2] - signed[:, 1] > 60) & (signed[:, 0] < signed[:, 2])).any()  # blue: negative
    cam = np.asarray(Image.open(out / "chelsea/grad-cam.png")).reshape(-1, 3).astype(int)
    # viridis tops out in yellow (high red and green, low blue); jet would give red
    assert ((cam[:, 0] > 150) & (cam[:, 1] > 150) & (cam[:, 2] < 110)).any()
    assert not ((cam[:, 0] > 200) & (cam[:, 1] < 60) & (cam[:, 2] < 60)).any()


def test_bare_heatmaps_are_drawn_from_their_colormaps_alone(tmp_path):
    """--no-overlay: every pixel of a signed map is an entry of the
    blue-white-red map, both ends used; every pixel of Grad-CAM's is an
    entry of the chosen colormap (viridis), whose own ends are not those."""
    from saliency_cli.render import DIVERGING

    proc = saliency("explain", str(SAMPLES / "chelsea.png"), "-o", str(tmp_path), "-m", "gradient-x-input",
                    "-m", "grad-cam", "--no-overlay", "--colormap", "viridis", "-q")
    assert proc.returncode == 0, proc.stderr

    def colours(name: str) -> set[tuple[int, ...]]:
        return set(map(tuple, np.asarray(Image.open(tmp_path / "chelsea" / name)).reshape(-1, 3).tolist()))

    diverging, viridis = set(map(tuple, COLORMAPS[DIVERGING].tolist())), set(map(tuple, COLORMAPS["viridis"].tolist()))
    signed = colours("gradient-x-input.png")
    assert signed <= diverging and {tuple(COLORMAPS[DIVERGING][0]), tuple(COLORMAPS[DIVERGING][-1])} <= signed
    cam = colours("grad-cam.png")
    assert cam <= viridis and not cam <= diverging and len(cam) > 100


def test_no_overlay_writes_the_bare_heatmap(tmp_path):
    proc = saliency("explain", str(SAMPLES / "coffee.png"), "-o", str(tmp_path), "-m", "grad-cam",
                    "--no-overlay", "--colormap", "gray", "-q")
    assert proc.returncode == 0, proc.stderr
    png = np.asarray(Image.open(tmp_path / "coffee/grad-cam.png"))
    assert (png[..., 0] == png[..., 1]).all() and (png[..., 1] == png[..., 2]).all()  # grey only: no photo
    assert png.max() == 255


class Served:
    """OUT served over HTTP on localhost, as a user's browser would see it."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    def __init__(self, folder: Path):
        handler = functools.partial(self.Quiet, directory=str(folder))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()


def browse(folder: Path, pages: list[str]) -> dict[str, dict]:
    """Open each page in headless Chromium, bring every image into view, and
    report what loaded and what the console said."""
    from playwright.sync_api import sync_playwright

    served = Served(folder)
    seen = {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium(), args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-quic"])
            for page_name in pages:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                problems = []
                page.on("console", lambda m: m.type in ("error", "warning") and problems.append(m.text))
                page.on("pageerror", lambda e: problems.append(str(e)))
                page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
                page.on("response", lambda r: r.status >= 400 and problems.append(f"{r.status}: {r.url}"))
                page.goto(f"{served.url}/{page_name}")
                images = page.evaluate("""async () => {
                    const out = [];
                    for (const img of document.images) {
                        img.scrollIntoView();
                        try { await img.decode(); } catch (e) {}
                        out.push({src: img.getAttribute('src'), width: img.naturalWidth, lazy: img.loading});
                    }
                    return out;
                }""")
                page.wait_for_load_state("networkidle")
                links = page.eval_on_selector_all("a", "els => els.map(e => e.getAttribute('href'))")
                seen[page_name] = {"images": images, "problems": problems, "text": page.inner_text("body"),
                                   "links": links}
                page.close()
            browser.close()
    finally:
        served.close()
    return seen


@pytest.mark.browser
def test_report_loads_every_image_without_console_errors(classification_run):
    out = classification_run
    (page,) = browse(out, ["report.html"]).values()
    assert page["problems"] == []
    assert len(page["images"]) == 4 * 3  # four photos, three methods
    assert all(img["width"] > 0 for img in page["images"]), page["images"]
    assert all(img["lazy"] == "lazy" for img in page["images"])
    text = page["text"]
    assert "Egyptian cat" in text and "espresso" in text
    assert "broken & <odd>" in text and "not an image" in text  # escaped, shown literally
    assert "5 image(s), 1 failed" in text
    assert "chelsea/grid.png" in page["links"]


@pytest.mark.browser
def test_detection_report_shows_boxes_and_every_detection(tmp_path):
    config = toy_detector_config(tmp_path, num_masks=16)
    out = tmp_path / "out"
    proc = saliency("explain", str(SAMPLES / "coffee.png"), str(SAMPLES / "rocket.jpg"), "-c", str(config),
                    "-o", str(out), "--report", "--grid")
    assert proc.returncode == 0, proc.stderr
    (page,) = browse(out, ["report.html"]).values()
    assert page["problems"] == []
    assert len(page["images"]) == 2 * 2 and all(img["width"] > 0 for img in page["images"])
    assert "cup" in page["text"] and "cat" in page["text"] and "2 detection(s) explained" in page["text"]
    with Image.open(out / "coffee/grid.png") as grid:
        assert grid.height == 256 + 40 + 12  # photo and two detections side by side


def paged_report(folder: Path) -> list[Path]:
    """The report of 250 images, written over a stale page of an earlier one."""
    rows = []
    for i in range(250):
        key = f"img{i:04d}"
        Image.new("RGB", (8, 6), (i % 256, 0, 0)).save(folder / f"{key}.png")
        rows.append({"input": f"/nowhere/{key}.jpg", "key": key, "status": "ok", "size": [8, 6],
                     "predictions": [{"class": 1, "label": "thing", "prob": 0.5}],
                     "target": {"class": 1, "label": "thing", "prob": 0.5},
                     "outputs": {"gradient": {"png": f"{key}.png"}}})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "report-9.html").write_text("stale page of an earlier report")
    return write_report(folder)


def test_thousands_of_images_are_paged(tmp_path):
    pages = paged_report(tmp_path)
    assert [p.name for p in pages] == ["report.html", "report-2.html", "report-3.html"]
    assert not (tmp_path / "report-9.html").exists()


@pytest.mark.browser
def test_every_page_shows_its_images_and_links_the_others(tmp_path):
    pages = paged_report(tmp_path)
    seen = browse(tmp_path, [p.name for p in pages])
    assert [len(seen[p.name]["images"]) for p in pages] == [100, 100, 50]
    names = {p.name for p in pages}
    for name, page in seen.items():
        assert page["problems"] == [] and all(img["width"] == 8 for img in page["images"])
        assert names - {name} <= set(page["links"]), (name, page["links"])  # every other page


def test_report_command(tmp_path):
    proc = saliency("report", str(tmp_path))
    assert proc.returncode == 2 and "no manifest" in proc.stderr
    assert saliency("explain", str(SAMPLES / "rocket.jpg"), "-o", str(tmp_path), "-m", "gradient", "-q").returncode == 0
    proc = saliency("report", str(tmp_path))
    assert proc.returncode == 0 and "rocket/gradient.png" in (tmp_path / "report.html").read_text()
