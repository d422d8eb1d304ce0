"""The HTML report renders in a real browser: headless Chromium loads its tables and images."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.test_runner import make_folder
from tokbench.report import write_report
from tokbench.runner import run_suite
from tokbench.suite import parse_suite

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images].map(i => i.complete && i.naturalWidth > 0 ? i.naturalWidth : 0);
  const rows = document.querySelectorAll('#results tbody tr').length;
  const align = q => getComputedStyle(document.querySelector(q)).textAlign;
  const aligns = [align('#skipped tbody td:last-child'), align('#results tbody td:last-child'),
                  align('#results tbody td:first-child')].join(',');
  document.body.insertAdjacentHTML('beforeend',
    `<pre id="probe">images=${imgs.join(',')};rows=${rows};align=${aligns}</pre>`);
});
</script></body>"""


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_html_report_renders_tables_and_images(tmp_path):
    folder = make_folder(tmp_path / "imgs", n=4, corrupt=False)
    suite = parse_suite({"name": "html", "data": [f"folder:{folder}"], "resolution": 32, "batch_size": 2,
                         "metrics": ["psnr", "ssim", "bpp", "speed"], "download": False,
                         "tokenizers": [{"name": "jpeg", "sweep": {"quality": [30, 70]}}, "llamagen-vq16-c2i"]})
    run_suite(suite, tmp_path / "run", progress=False, log=lambda s: None)
    report = write_report(tmp_path / "run")
    page = report / "index.html"
    probe = report / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE))
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--allow-file-access-from-files", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    m = re.search(r"images=([\d,]*);rows=(\d+);align=([a-z,]+)", out.stdout)
    assert m, out.stdout[-2000:]
    widths = [int(w) for w in m.group(1).split(",") if w]
    assert len(widths) >= 3 and all(w > 0 for w in widths), widths  # every figure decoded
    assert int(m.group(2)) == 2  # one table row per job
    # a long skip reason reads left-aligned; numbers are right-aligned, names left
    assert m.group(3).split(",") == ["left", "right", "left"], m.group(3)
    assert "jpeg (quality=30)" in out.stdout and "PSNR (dB)" in out.stdout
