"""The report's viewer (report/index.html): the page's data against the run folder, the heat maps against
their formula, escaping, and the page itself in a real headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium): no console errors, a zoom shows the same region in every column, sorting
reorders the images by their per-image numbers, filters and the difference view, the sortable table.

The browser tests skip, saying why, where Chromium, its driver or Selenium is missing (CI installs them).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from tests.test_runner import make_folder
from tokbench.report import write_report
from tokbench.runfolder import (
    IMAGES_DIR,
    REPORT_HTML,
    ROWS_FILE,
    VIEWER_DIR,
    read_rows,
    sample_image,
)
from tokbench.runner import run_suite
from tokbench.suite import parse_suite
from tokbench.viewer import DIFF_FULL_SCALE, _diff_lut, diff_map, table_html

EVIL_LABEL = "<script>window.__pwned = 1</script>"
EVIL_FILE = "<img src=x onerror=window.__pwned=2>.png"


def _page_data(page: Path) -> dict:
    text = page.read_text()
    start = text.index("<script type='application/json' id='viewer-data'>") + len(
        "<script type='application/json' id='viewer-data'>")
    return json.loads(text[start:text.index("</script>", start)])


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A run of two codecs (one with a two-point sweep, one labelled with markup) on 5 small images, one
    of them named with markup, and its report."""
    root = tmp_path_factory.mktemp("viewer")
    folder = make_folder(root / "imgs", n=4, corrupt=False)
    with Image.open(folder / "img01.png") as im:
        im.save(folder / EVIL_FILE)
    suite = parse_suite({"name": "viewer", "data": [f"folder:{folder}"], "resolution": 32, "batch_size": 2,
                         "metrics": ["psnr", "ssim", "bpp"], "download": False, "save_samples": 4,
                         "tokenizers": [{"name": "jpeg", "sweep": {"quality": [10, 90]}},
                                        {"name": "webp-q50", "label": EVIL_LABEL}]})
    run_suite(suite, root / "run", progress=False, log=lambda s: None)
    # Codecs rank these images alike; give one column its per-image PSNRs in reverse, so that sorting by
    # that column and by the worst of all columns differ (only the viewer reads these rows here)
    webp = next(p for p in (root / "run" / "jobs").iterdir() if json.loads((p / "job.json").read_text())["label"] == EVIL_LABEL)
    rows = read_rows(webp / ROWS_FILE)
    for row, value in zip(rows, sorted((r["psnr"] for r in rows), reverse=True)):
        row["psnr"] = value
    (webp / ROWS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = write_report(root / "run")
    return root / "run", out


def test_viewer_data_matches_the_run_folder(report):
    run_dir, out = report
    data = _page_data(out / REPORT_HTML)
    assert [c["label"] for c in data["columns"]] == ["jpeg (quality=10)", "jpeg (quality=90)", EVIL_LABEL]
    assert len(data["images"]) == 4  # save_samples: the first 4 of 5 images, each once
    assert sorted(i["position"] for i in data["images"]) == [0, 1, 2, 3]
    names = {i["position"]: i["id"] for i in data["images"]}
    assert names[0] == EVIL_FILE  # '<' sorts before 'i': the file named with markup is position 0
    summaries = {json.loads((p / "summary.json").read_text())["label"] + str(
        json.loads((p / "summary.json").read_text())["params"]): p for p in (run_dir / "jobs").iterdir()}
    jpeg10 = summaries["jpeg{'quality': 10}"]
    col = data["columns"][0]["id"]
    for image in data["images"]:
        cell = image["cells"][col]
        pos = image["position"]
        # the number under each image is that image's PSNR: recomputed here from the saved PNGs (a codec's
        # reconstruction is exact in 8 bits, so the PNG pair gives the metric's value)
        a = np.asarray(Image.open(sample_image(jpeg10 / IMAGES_DIR, pos, "original")).convert("RGB"))
        b = np.asarray(Image.open(sample_image(jpeg10 / IMAGES_DIR, pos, "recon")).convert("RGB"))
        assert cell["values"]["psnr"][0] == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), abs=1e-6)
        # links resolve from the page's folder to the run's own PNGs (not copied for a run's report)
        assert (out / unquote(cell["src"])).resolve() == sample_image(jpeg10 / IMAGES_DIR, pos, "recon").resolve()
        assert (out / unquote(cell["diff"])).is_file() and (out / unquote(image["originals"][0]["src"])).is_file()
    assert (out / VIEWER_DIR / "viewer.js").is_file() and (out / VIEWER_DIR / "viewer.css").is_file()
    page = (out / REPORT_HTML).read_text()
    assert EVIL_LABEL not in page and "<img src=x" not in page  # escaped in the table and in the JSON
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in page
    assert "http://" not in page and "https://" not in page  # nothing from the network


def test_diff_map_is_the_mean_absolute_error_on_a_fixed_scale(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-90, 90, a.shape), 0, 255).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    assert diff_map(tmp_path / "a.png", tmp_path / "b.png", tmp_path / "d.png")
    heat = Image.open(tmp_path / "d.png")
    expected = np.clip(np.round(np.abs(a / 255.0 - b / 255.0).mean(2) / DIFF_FULL_SCALE * 255), 0, 255)
    assert heat.mode == "P"
    assert np.array_equal(np.asarray(heat), expected.astype(np.uint8))
    assert np.array_equal(np.asarray(heat.convert("RGB")), _diff_lut()[expected.astype(np.uint8)])
    assert np.asarray(heat).max() == 255 and np.asarray(heat).min() < 64  # the scale saturates, not normalises
    Image.fromarray(a[:6]).save(tmp_path / "c.png")
    assert not diff_map(tmp_path / "a.png", tmp_path / "c.png", tmp_path / "e.png")  # sizes differ: none


def test_table_html_escapes_marks_and_sort_keys():
    import pandas as pd

    t = pd.DataFrame({"tokenizer": ["<b>x</b>", "y & z"], "PSNR (dB)": ["**31.20** [30.1]", "29.00 ^{a}"],
                      "res": ["256->384", ""]})
    out = table_html(t, "results", {"PSNR (dB)": "dB; <per-image> PSNR"})
    assert "&lt;b&gt;x&lt;/b&gt;" in out and "y &amp; z" in out
    assert "<b class='best'>31.20</b> [30.1]" in out and "<sup class='note-mark'>a</sup>" in out
    assert "data-sort='31.2'" in out and "data-sort='29.0'" in out and "data-sort='256.0'" in out
    assert "title='dB; &lt;per-image&gt; PSNR'" in out
    assert "data-sort" not in out.split("<td")[1]  # the tokenizer column sorts as text


# ----------------------------------------------------------------------------------------------
# In the browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
try:
    import selenium  # noqa: F401

    HAVE_SELENIUM = True
except ImportError:
    HAVE_SELENIUM = False
NO_BROWSER = ("headless Chromium not installed (apt-get install chromium)" if CHROMIUM is None else
              "chromedriver not installed (apt-get install chromium-driver)" if DRIVER is None else
              "selenium not installed (pip install -e '.[test]')" if not HAVE_SELENIUM else None)


@pytest.fixture(scope="module")
def browser():
    if NO_BROWSER:
        pytest.skip(NO_BROWSER)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1300,900", "--disable-background-networking", "--no-first-run"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    yield driver
    driver.quit()


def _open(browser, page: Path):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(page.as_uri())
    WebDriverWait(browser, 10).until(lambda d: d.execute_script(
        "return document.getElementById('viewer').dataset.ready === '1' && "
        "[...document.images].every(i => i.complete)"))


REGIONS = """
return [...document.querySelectorAll('.sample')].map(s => [...s.querySelectorAll('.vp')].map(vp => {
  const img = vp.querySelector('img'); if (!img) return null;
  const v = vp.getBoundingClientRect(), r = img.getBoundingClientRect();
  return [(v.left + vp.clientLeft - r.left) / r.width, (v.top + vp.clientTop - r.top) / r.height,
          vp.clientWidth / r.width, vp.clientHeight / r.height];
}));"""


def _same_region(regions: list) -> list[float]:
    shown = [r for r in regions if r is not None]
    for r in shown[1:]:
        assert r == pytest.approx(shown[0], abs=1e-3), regions
    return shown[0]


def test_viewer_in_chromium(report, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    run_dir, out = report
    _open(browser, out / REPORT_HTML)
    assert browser.get_log("browser") == []  # no console errors (nor anything else) on load
    assert browser.execute_script("return window.__pwned === undefined")  # markup in names stayed text
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".sample .name")]
    assert EVIL_FILE in names
    assert EVIL_LABEL in browser.find_element(By.ID, "results").text
    widths = browser.execute_script("return [...document.images].map(i => i.naturalWidth)")
    assert len(widths) >= 4 * 4 and all(w > 0 for w in widths)  # every image decoded

    # zoom: a click doubles the magnification at the click point in every column of that image only
    before = browser.execute_script(REGIONS)
    assert all(_same_region(s) == pytest.approx([0, 0, 1, 1], abs=1e-3) for s in before)
    vp = browser.find_elements(By.CSS_SELECTOR, ".sample")[1].find_elements(By.CSS_SELECTOR, ".vp")[2]
    # (offsets from the element's centre: the click lands at 3/8 across and 5/8 down the image)
    ActionChains(browser).move_to_element_with_offset(vp, -vp.size["width"] // 8, vp.size["height"] // 8).click().perform()
    after = browser.execute_script(REGIONS)
    x, y, w, h = _same_region(after[1])
    assert (w, h) == pytest.approx((0.5, 0.5), abs=1e-3)
    assert (x, y) == pytest.approx((0.375 - 0.25, 0.625 - 0.25), abs=0.01)  # centred on the click
    assert _same_region(after[0]) == pytest.approx([0, 0, 1, 1], abs=1e-3)  # other images untouched
    # the wheel zooms further about the pointer, again in every column
    ActionChains(browser).scroll_from_origin(ScrollOrigin.from_element(vp), 0, -200).perform()
    x2, y2, w2, h2 = _same_region(browser.execute_script(REGIONS)[1])
    assert w2 < w and h2 < h

    # sorting: by the PSNR of one column, worst first, against its per-image rows (a column whose order is
    # not the order of the worst of all columns, so that the column choice shows)
    jobs = {json.loads((p / "summary.json").read_text())["label"] + str(
        json.loads((p / "summary.json").read_text())["params"]): p for p in (run_dir / "jobs").iterdir()}
    rows = {k: {r["index"]: r["psnr"] for r in read_rows(p / ROWS_FILE) if r["index"] < 4} for k, p in jobs.items()}
    worst = {i: min(r[i] for r in rows.values()) for i in range(4)}
    key, psnr = next((k, r) for k, r in rows.items() if sorted(r, key=r.get) != sorted(worst, key=worst.get))
    label = {"jpeg{'quality': 10}": "jpeg (quality=10)", "jpeg{'quality': 90}": "jpeg (quality=90)"}.get(key, EVIL_LABEL)
    Select(browser.find_element(By.ID, "viewer-sort-column")).select_by_visible_text(label)
    Select(browser.find_element(By.ID, "viewer-sort")).select_by_value("psnr|asc")
    order = [int(e.get_attribute("data-position")) for e in browser.find_elements(By.CSS_SELECTOR, ".sample")]
    assert order == sorted(psnr, key=psnr.get) and order != sorted(order)
    Select(browser.find_element(By.ID, "viewer-sort")).select_by_value("psnr|desc")
    order = [int(e.get_attribute("data-position")) for e in browser.find_elements(By.CSS_SELECTOR, ".sample")]
    assert order == sorted(psnr, key=psnr.get, reverse=True)
    # worst of the shown columns: the lowest PSNR of any column
    Select(browser.find_element(By.ID, "viewer-sort-column")).select_by_index(0)
    Select(browser.find_element(By.ID, "viewer-sort")).select_by_value("psnr|asc")
    order = [int(e.get_attribute("data-position")) for e in browser.find_elements(By.CSS_SELECTOR, ".sample")]
    assert order == sorted(worst, key=worst.get)

    # filtering a sweep point hides its column in every image; the difference view swaps in the heat maps
    col = browser.execute_script("return JSON.parse(document.getElementById('viewer-data').textContent).columns[1].id")
    browser.find_element(By.CSS_SELECTOR, f"input[data-filter-column='{col}']").click()
    hidden = browser.execute_script(f"return [...document.querySelectorAll(\"figure[data-col='{col}']\")].map(f => f.hidden)")
    assert hidden == [True] * 4
    Select(browser.find_element(By.ID, "viewer-mode")).select_by_value("diff")
    srcs = browser.execute_script("return [...document.querySelectorAll('#viewer figure:not([data-col=original]) img')]"
                                  ".map(i => i.getAttribute('src'))")
    assert srcs and [s for s in srcs if f"{VIEWER_DIR}/diff/" not in s] == []

    # the results table sorts by a column's numbers (ascending, then descending)
    header = next(th for th in browser.find_elements(By.CSS_SELECTOR, "#results th") if th.text.startswith("PSNR"))
    assert "per-image PSNR" in header.get_attribute("title")  # the column's protocol on hover
    header.click()
    index = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#results th")].index(header.text)
    values = [float(tr.find_elements(By.TAG_NAME, "td")[index].text.split()[0])
              for tr in browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")]
    assert values == sorted(values) and len(values) == 3
    header.click()
    values = [float(tr.find_elements(By.TAG_NAME, "td")[index].text.split()[0])
              for tr in browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")]
    assert values == sorted(values, reverse=True)
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_text_and_face_crops_follow_the_protocol(tmp_path):
    """Word and face boxes become zoom targets in fractions of the tokenizer's input: a 64 x 32 image under
    resize-crop to 16 px is halved (32 x 16) and its centre 16 px kept (x offset 8)."""
    from tokbench.viewer import SampleJob, _add_crops

    folder = tmp_path / "annotated"
    folder.mkdir()
    Image.new("RGB", (64, 32), "white").save(folder / "a.png")
    (folder / "a.text.json").write_text(json.dumps([{"box": [20, 4, 40, 12], "text": "<hi>"}]))
    (folder / "a.faces.json").write_text(json.dumps([{"box": [18, 2, 46, 30]}]))
    job = {"data": {"source": f"folder:{folder}", "limit": None}, "resolution": 16, "protocol": "resize-crop"}
    entries = [{"position": 0, "id": "a.png"}]
    _add_crops(SampleJob(job, tmp_path, "g"), "text", entries)
    _add_crops(SampleJob(job, tmp_path, "g"), "faces", entries)
    crops = entries[0]["crops"]
    assert [c["text"] for c in crops] == ["<hi>", "face 1"]
    assert crops[0]["box"] == pytest.approx([(10 - 8) / 16, 2 / 16, (20 - 8) / 16, 6 / 16])
    assert crops[1]["box"] == pytest.approx([(9 - 8) / 16, 1 / 16, (23 - 8) / 16, 15 / 16])
    other = [{"position": 0, "id": "b.png"}]  # not the saved image any more: no boxes rather than wrong ones
    _add_crops(SampleJob(job, tmp_path, "g"), "text", other)
    assert "crops" not in other[0]
