"""Drive the explorer in a real headless Chromium (Debian ``chromium`` + ``chromium-driver``,
Python ``selenium``): the browser test, the load-time benchmark and the README screenshot.

Screenshot of a run's explorer (the longest chains, and the card of a feature along them that
fires on the held-out text, or of ``--feature layer:index``)::

    python3 -m saematch.explore.browser results/explorer/width_1k --out explorer.png

Chromium starts with no network features (no background networking, component updates, sync
or first-run) and a fresh profile, so it never reaches for the network.
"""
from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import SAEMatchError

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--disable-dev-shm-usage")


def find_chromium() -> tuple[str, str]:
    """(browser, driver) executables, or one clear error naming the Debian packages."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        raise SAEMatchError("headless Chromium not found: apt-get install chromium "
                            "chromium-driver")
    return browser, driver


@contextlib.contextmanager
def chromium(width: int = 1500, height: int = 1400) -> Iterator:
    """A headless Chromium WebDriver with a fresh profile and the browser console recorded."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = find_chromium()
    with tempfile.TemporaryDirectory(prefix="saematch-chromium-") as profile:
        opts = webdriver.ChromeOptions()
        opts.binary_location = browser
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                     f"--window-size={width},{height}"):
            opts.add_argument(flag)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(driver_path), options=opts)
        try:
            yield driver
        finally:
            driver.quit()


def open_explorer(driver, folder: str | Path, timeout: float = 60) -> float:
    """Load ``folder/index.html`` from file:// and wait for the flow view; seconds it took."""
    from selenium.webdriver.support.ui import WebDriverWait

    index = Path(folder).resolve() / "index.html"
    if not index.exists():
        raise SAEMatchError(f"{index}: no explorer page there")
    start = time.perf_counter()
    driver.get(index.as_uri())
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script(
        "return window.SAEM && SAEM.ready === true && "
        "document.querySelectorAll('#flow .sankey-node').length > 0"))
    return time.perf_counter() - start


def search_feature(driver, layer: int, index: int, timeout: float = 60) -> float:
    """Type ``layer:index`` into the feature search and wait for its card; seconds it took."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    box = driver.find_element(By.ID, "feature-input")
    box.clear()
    box.send_keys(f"{layer}:{index}")
    start = time.perf_counter()
    driver.find_element(By.ID, "feature-go").click()
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script(
        "const c = document.getElementById('card');"
        f"return c.dataset.layer === '{layer}' && c.dataset.index === '{index}';"))
    return time.perf_counter() - start


def console_errors(driver) -> list[str]:
    """Messages the page logged at SEVERE level (errors, failed loads)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def open_card(driver, layer: int, index: int, timeout: float = 60) -> None:
    """Open a feature's card without redrawing the flow view (as clicking a node does)."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.execute_script("SAEM.openFeature(arguments[0], arguments[1], false);", layer, index)
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script(
        "const c = document.getElementById('card');"
        "return c.dataset.layer === String(arguments[0]) && "
        "c.dataset.index === String(arguments[1]);", layer, index))


def showcase_feature(driver) -> tuple[int, int]:
    """(layer, index) of a feature worth showing: along the longest chains (longest first, each
    from its start), the one with the most held-out contexts; else the longest chain's start
    (sources without text)."""
    candidates = driver.execute_script(
        "const m = SAEM.meta; const out = [];"
        "for (const [t, i, len] of m.flow) {"
        "  let j = i;"
        "  for (let s = t; s <= t + len && s < m.layers.length; s++) {"
        "    out.push([m.layers[s], j]);"
        "    if (s < m.pairs.length) j = SAEM.partner(s, j);"
        "  }"
        "}"
        "return m.has_contexts ? out : out.slice(0, 1);")
    best, most = (tuple(int(x) for x in candidates[0]) if candidates else (0, 0)), 0
    for layer, index in candidates[:60]:
        open_card(driver, layer, index)
        n = driver.execute_script("return document.querySelectorAll('#card .ctx').length")
        if n > most:
            best, most = (int(layer), int(index)), n
    return best


def screenshot(folder: str | Path, out: str | Path, feature: tuple[int, int] | None = None,
               path: bool = False, width: int = 1500, height: int = 1400) -> tuple[int, int]:
    """Open the explorer and a feature's card (default: :func:`showcase_feature`), with
    the flow view showing the longest chains or, with ``path``, the path through the feature;
    save a PNG of the window. Returns the feature shown."""
    with chromium(width, height) as driver:
        open_explorer(driver, folder)
        feature = feature or showcase_feature(driver)
        if path:
            search_feature(driver, *feature)
        else:
            open_card(driver, *feature)
        time.sleep(0.5)  # let Plotly finish its transitions
        errors = console_errors(driver)
        if errors:
            raise SAEMatchError(f"{folder}: the page logged errors: {errors}")
        driver.save_screenshot(str(out))
    return feature


def main() -> None:
    ap = argparse.ArgumentParser(description="Screenshot of an explorer page (headless Chromium)")
    ap.add_argument("folder", help="an explorer folder, e.g. results/explorer/width_1k")
    ap.add_argument("--out", default="explorer.png")
    ap.add_argument("--feature", help="layer:index whose card to open (default: a feature "
                    "along the longest chains that fires on the held-out text)")
    ap.add_argument("--path", action="store_true",
                    help="flow view: the path through the feature instead of the longest chains")
    ap.add_argument("--size", default="1500x1400", help="window WIDTHxHEIGHT")
    args = ap.parse_args()
    feature = tuple(int(x) for x in args.feature.split(":")) if args.feature else None
    w, h = (int(x) for x in args.size.split("x"))
    shown = screenshot(args.folder, args.out, feature, args.path, w, h)
    print(f"{args.out}: feature {shown[0]}:{shown[1]}")


if __name__ == "__main__":
    main()
