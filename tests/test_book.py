"""The book builds offline with warnings as errors, and a headless browser sees title, math and a figure."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nsr.book import prepare_static

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    prepare_static(ROOT)
    out = tmp_path_factory.mktemp("book")
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("jupyter-book")), "build", str(ROOT), "-W", "--keep-going", "--path-output", str(out)],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out / "_build" / "html"


def test_book_pages_exist(built):
    for page in ("book/index.html", "book/method.html", "book/tutorial.html", "book/lemma.html", "book/complexity.html", "book/reproduction.html", "book/references.html"):
        assert (built / page).exists(), page
    assert (built / "_static" / "mathjax" / "tex-chtml.js").exists()
    assert "mathjax/tex-chtml.js" in (built / "book" / "method.html").read_text()


def _chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if IN_CI:
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("chromium not installed")
    return exe


def _render(exe, page: Path, screenshot: Path | None = None) -> str:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--allow-file-access-from-files", "--virtual-time-budget=15000"]
    if screenshot is not None:
        subprocess.run([exe, *flags, f"--screenshot={screenshot}", "--window-size=1280,2000", page.as_uri()],
                       capture_output=True, timeout=120)
    proc = subprocess.run([exe, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    return proc.stdout


def test_browser_renders_title_math_and_figure(built):
    exe = _chromium()
    artifacts = ROOT / "ci-artifacts"
    artifacts.mkdir(exist_ok=True)
    index = _render(exe, built / "book" / "index.html", artifacts / "index.png")
    assert "Neuron Steadiness Regularization" in index
    assert "<mjx-container" in index  # MathJax (served from the book itself) typeset the formula
    lemma = _render(exe, built / "book" / "lemma.html", artifacts / "lemma.png")
    assert "Lemma 3.1" in lemma and "<mjx-container" in lemma
    assert "<img" in lemma and ".png" in lemma  # a matplotlib figure
