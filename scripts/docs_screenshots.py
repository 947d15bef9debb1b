"""Screenshots of the built documentation, as a new user would see it (headless Chromium).

Usage: ``python scripts/docs_screenshots.py [BUILD_DIR]`` after ``make docs``; writes PNGs of the
landing page, a user-guide page, an API page and the gallery to ``BUILD_DIR/../screenshots``
(``docs/_build/screenshots`` by default). The pages are opened from disk with the network off,
so what the screenshots show is what an offline reader gets (math included).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = {
    "landing": "index.html",
    "getting_started": "getting_started.html",
    "user_guide_scale_mixture": "user_guide/scale_mixture.html",
    "api_gpregressor": "api/generated/gpkern.estimators.GPRegressor.html",
    "gallery": "auto_examples/index.html",
}
WINDOW = "1400,1000"


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("no Chromium found: install it (e.g. apt-get install chromium)")


def main(argv: list[str]) -> int:
    html = Path(argv[1]) if len(argv) > 1 else ROOT / "docs" / "_build" / "html"
    if not (html / "index.html").exists():
        raise SystemExit(f"{html} has no index.html: run `make docs` first")
    out = html.resolve().parent / "screenshots"
    out.mkdir(exist_ok=True)
    browser = chromium()
    for name, page in PAGES.items():
        target = out / f"{name}.png"
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--proxy-server=127.0.0.1:9",  # offline: nothing may come from the network
                "--virtual-time-budget=8000",  # let MathJax typeset before the capture
                f"--window-size={WINDOW}",
                f"--screenshot={target}",
                (html / page).resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
