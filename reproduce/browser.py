"""Browser check of the explorer: notebook 06 in JupyterLab, driven by headless Chromium.

    python -m reproduce.browser [--profile smoke] [--out DIR] [--timeout 900]

Starts JupyterLab on localhost (a random port and token) over a temporary folder holding notebook 06
with the profile's parameters filled in (papermill's parameter injection; results go to the
temporary folder, never to ``results/``), opens it in headless Chromium through selenium, runs
all cells from the Run menu, and then, as a user would: moves the alpha slider with the keyboard
and picks another style in the first drop-down. It passes when the first picture appears, each
change brings a new picture (the image's bytes change) with a status line that names the new
setting, and no "Error displaying widget" shows. Prints the seconds from "Run All" to the first
picture and for each change, writes screenshots and ``browser_check.json`` to ``--out``, and exits
1 on a failed check, 3 when Chromium, chromedriver or selenium is missing.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium chromium-driver``)
and ``pip install selenium``. ``tests/reproduce/test_browser.py`` runs it when they are installed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = "06_explore.ipynb"


def missing_tools() -> list[str]:
    """What the check needs and this machine lacks (empty: it can run)."""
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip)")
    return missing


def prepare(folder: Path, profile: str) -> Path:
    """Notebook 06 with ``profile``'s parameters injected, in ``folder/notebooks/``."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    from reproduce.runner import PROFILES_PATH, declared_parameters, load_profiles, notebook_parameters

    src = REPO / "notebooks" / NOTEBOOK
    config = load_profiles(PROFILES_PATH)[profile]
    params, _ = notebook_parameters(config, src.stem, declared_parameters(src), profile, folder / "results" / profile)
    nb = parameterize_notebook(load_notebook_node(str(src)), params)
    out = folder / "notebooks" / NOTEBOOK
    out.parent.mkdir(parents=True)
    nbformat.write(nb, out)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(root: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """JupyterLab over ``root`` on a free localhost port; returns the process and the base URL."""
    port, token = _free_port(), os.urandom(12).hex()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "lib"), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.open_browser=False",
         "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])],
        stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, cwd=root)
    base = f"http://127.0.0.1:{port}"
    for _ in range(120):
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with status {proc.returncode}; see {log}")
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            return proc, f"{base}/lab/tree/notebooks/{NOTEBOOK}?token={token}"
        except OSError:
            time.sleep(1)
    proc.terminate()
    raise RuntimeError(f"jupyter lab did not answer within 120 s; see {log}")


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def drive(url: str, out: Path, timeout: float) -> dict:
    """Run the notebook in the browser and try the controls; returns the measurements and checks."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = _browser()
    result: dict = {"checks": {}}
    try:
        driver.get(url)
        wait = WebDriverWait(driver, timeout)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell"))
        time.sleep(3)  # the kernel starts with the notebook
        driver.find_element(By.XPATH, "//div[contains(@class,'lm-MenuBar-itemLabel') and text()='Run']").click()
        driver.find_element(By.CSS_SELECTOR, "li[data-command='runmenu:run-all']").click()
        t0 = time.perf_counter()

        def picture():
            imgs = driver.find_elements(By.CSS_SELECTOR, ".widget-output img")
            return imgs[0].get_attribute("src") if imgs else None

        def status():
            found = driver.find_elements(By.CSS_SELECTOR, ".widget-html-content")
            return " | ".join(e.text for e in found if e.text)

        wait.until(lambda d: picture() and "shown:" in status())
        result["first_picture_s"] = round(time.perf_counter() - t0, 1)
        driver.save_screenshot(str(out / "browser_first.png"))

        def change(name: str, act, expect: str) -> None:
            before = picture()
            t1 = time.perf_counter()
            act()
            try:
                WebDriverWait(driver, 120).until(lambda d: picture() != before and expect in status())
                result["checks"][name] = True
            except Exception:  # noqa: BLE001 (a timeout is the failed check)
                result["checks"][name] = False
            result[f"{name}_s"] = round(time.perf_counter() - t1, 2)
            driver.save_screenshot(str(out / f"browser_{name}.png"))

        def alpha_left():
            slider = driver.find_element(By.XPATH, "//div[contains(@class,'widget-slider')]"
                                                   "[.//label[normalize-space()='alpha']]//div[contains(@class,'noUi-handle')]")
            slider.click()
            slider.send_keys(Keys.ARROW_LEFT)

        change("alpha_slider", alpha_left, "alpha 0.95")
        select = driver.find_element(By.XPATH, "//div[contains(@class,'widget-dropdown')]"
                                               "[.//label[normalize-space()='style 1']]//select")
        options = Select(select).options
        new = options[1].text if len(options) > 1 else options[0].text
        change("style_dropdown", lambda: Select(select).select_by_index(1), "shown:")
        result["style_picked"] = new
        outputs = driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output")  # not the notebook's own text
        result["checks"]["no_widget_error"] = not any("Error displaying widget" in e.text for e in outputs)
        result["checks"]["first_picture"] = True
    finally:
        driver.quit()
    result["passed"] = all(result["checks"].values())
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reproduce.browser", description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="smoke", help="parameters for notebook 06 (default smoke: seconds of training)")
    p.add_argument("--out", type=Path, default=None, help="folder for screenshots and browser_check.json (default: a temporary one)")
    p.add_argument("--timeout", type=float, default=900, help="seconds to wait for the first picture")
    args = p.parse_args(argv)
    missing = missing_tools()
    if missing:
        print(f"browser check not run: missing {', '.join(missing)} "
              "(apt-get install chromium chromium-driver; pip install selenium)", file=sys.stderr)
        return 3
    with tempfile.TemporaryDirectory(prefix="ctxstyle-browser-") as tmp:
        root = Path(tmp)
        out = Path(args.out or root / "out").resolve()
        out.mkdir(parents=True, exist_ok=True)
        prepare(root, args.profile)
        proc, url = start_lab(root, out / "jupyter_lab.log")
        try:
            result = drive(url, out, args.timeout)
        except Exception as exc:  # noqa: BLE001 (reported as a failed check, with the log)
            result = {"passed": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        result.update({"profile": args.profile, "chromium": subprocess.run(["chromium", "--version"], capture_output=True,
                                                                          text=True).stdout.strip()})
        (out / "browser_check.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
        if args.out is None and not result["passed"]:
            print(f"(screenshots and the JupyterLab log were in {out}; pass --out to keep them)", file=sys.stderr)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
