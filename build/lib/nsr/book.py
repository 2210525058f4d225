"""Build helpers for the Jupyter Book: offline math.

MathJax is served from the book itself: ``prepare_static`` copies the ``es5`` build of the npm ``mathjax``
package into ``_static/mathjax`` (fetched with ``npm pack`` from the npm registry the first time), and
``_config.yml`` points Sphinx's ``mathjax_path`` at it, so a built page renders formulas with no network.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

MATHJAX_VERSION = "3.2.2"


def prepare_static(root: Path) -> Path:
    """Make sure ``_static/mathjax/tex-chtml.js`` exists; return the MathJax folder."""
    target = root / "_static" / "mathjax"
    if (target / "tex-chtml.js").exists():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", f"mathjax@{MATHJAX_VERSION}", "--silent"], cwd=tmp, check=True, capture_output=True)
        archive = next(Path(tmp).glob("mathjax-*.tgz"))
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(Path(tmp) / "package" / "es5", target)
    return target
