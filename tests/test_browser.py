"""The live view in a real browser: Debian's chromium, headless, driven by selenium, against
a live ``herd replay --http`` slow enough to watch. The page loads without console errors,
asks for the token once, shows elephants as they are detected and counters rising, and a
wrong token brings the login prompt back.

CI installs chromium and chromium-driver (scripts/setup.sh --testbed); where they are
missing this test fails saying so. With HERD_UPDATE_SCREENSHOTS=1 the screenshot of the page
goes to evaluation/live.png (the README shows it), else to the test's temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from herd.synth import write_synthetic_pcap

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PACKETS, PPS = 75_000, 3000  # a 25-second replay: watched for 12 s, then a wrong token


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: install Debian's chromium and "
                    "chromium-driver (bash scripts/setup.sh --testbed does)", pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # Never let selenium fetch a browser or driver: the paths are given, and offline.
    monkeypatch.setenv("SE_OFFLINE", "true")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1100", "--hide-scrollbars"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def replay(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, str, Path]]:
    """A ``herd replay --http`` run going on: (process, page URL, token, work dir). The token
    comes from $HERD_TOKEN, which replay honours before making its own."""
    trace = tmp_path / "t.pcap"
    write_synthetic_pcap(trace, PACKETS, seed=4)
    token = secrets.token_hex(24)
    workdir = tmp_path / "run"
    err_path = tmp_path / "replay.err"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "herd", "replay", "--trace", str(trace), "--k", "4",
             "--percentile", "95", "--pps", str(PPS), "--http", "127.0.0.1:0", "--workdir",
             str(workdir)],
            stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True,
            env={**os.environ, "HERD_TOKEN": token})
    try:
        deadline = time.monotonic() + 120
        url = ""
        while not url:
            text = err_path.read_text()
            for line in text.splitlines():
                if "live view on " in line:
                    url = line.split("live view on ")[1].split()[0]
            assert proc.poll() is None or url, f"herd replay exited: {text}"
            assert time.monotonic() < deadline, f"no live view URL after 120 s: {text}"
            time.sleep(0.1)
        assert "(token: $HERD_TOKEN)" in err_path.read_text()
        yield proc, url, token, workdir
    finally:
        # SIGTERM: the replay stops every process it started; whatever is left of its
        # session (a replay that did not get that far) is killed.
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def severe(entries: list[dict[str, Any]]) -> list[str]:
    return [e["message"] for e in entries if e["level"] == "SEVERE"]


# What the page shows, read in one go (the page rebuilds its rows and bars every second:
# element handles kept across reads would go stale).
SNAPSHOT = """
const num = (el) => parseInt(el.textContent.replace(/,/g, ''), 10) || 0;
return {
  reports: num(document.getElementById('reports')),
  elephants: num(document.getElementById('elephant-count')),
  times: [...document.querySelectorAll('#elephants tbody tr')].map(
    (r) => r.cells[0].textContent),
  bars: [...document.querySelectorAll('#switch-bars .bar')].map(
    (b) => [b.dataset.switch, num(b.querySelector('.num'))]),
};"""


def test_live_page_in_chromium(browser: Any, replay: tuple[subprocess.Popen[str], str, str,
                                                           Path], tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    proc, url, token, workdir = replay
    driver = browser
    wait = WebDriverWait(driver, 20)
    driver.get(url)
    # Asked for the token, before any data request (no 401 on the way).
    login = wait.until(ec.visibility_of_element_located((By.ID, "token")))
    assert not driver.find_element(By.ID, "live").is_displayed()
    assert severe(driver.get_log("browser")) == []
    login.send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()
    wait.until(ec.visibility_of_element_located((By.ID, "live")))
    wait.until(ec.text_to_be_present_in_element((By.ID, "conn"), "live"))
    assert driver.execute_script("return sessionStorage.getItem('herd-token')") == token

    # Watch: counters rise and elephants appear while the replay runs (no reload).
    samples: list[tuple[float, int, int, int]] = []
    page: dict[str, Any] = {}
    shot = (ROOT / "evaluation" / "live.png" if os.environ.get("HERD_UPDATE_SCREENSHOTS") == "1"
            else tmp_path / "live.png")
    shot_taken = False
    start = time.monotonic()
    while time.monotonic() - start < 12:
        assert proc.poll() is None, "the replay ended before the page was watched"
        page = driver.execute_script(SNAPSHOT)
        samples.append((time.monotonic() - start, page["reports"], page["elephants"],
                        len(page["times"])))
        if not shot_taken and samples[-1][2] >= 20 and samples[-1][0] > 8:
            driver.save_screenshot(str(shot))
            shot_taken = True
        time.sleep(0.5)
    reports = [s[1] for s in samples]
    elephants = [s[2] for s in samples]
    assert reports[-1] > reports[0] and len(set(reports)) >= 5, samples  # updated each second
    assert elephants[0] < elephants[-1] and len(set(elephants)) >= 3, samples  # as detected
    assert all(rows == min(count, 200) for _, _, count, rows in samples), samples
    assert shot_taken and shot.stat().st_size > 10_000
    # One bar per switch, with its reports; the reports/s line is drawn.
    assert [name for name, _ in page["bars"]] == ["s1", "s2", "s3", "s4"]
    assert sum(n for _, n in page["bars"]) == page["reports"]
    assert all(n > 0 for _, n in page["bars"])
    assert driver.execute_script("""
        const c = document.getElementById('rate-chart');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        for (let i = 0; i < d.length; i += 4)  // the line's blue
            if (d[i] === 0x2b && d[i + 1] === 0x6c && d[i + 2] === 0xb0) return true;
        return false;""")
    # Newest first: detection times never increase down the table.
    times = page["times"]
    assert times == sorted(times, reverse=True) and len(times) >= 20
    assert severe(driver.get_log("browser")) == []

    # A wrong token: the API refuses it and the page asks again.
    driver.find_element(By.ID, "logout").click()
    box = wait.until(ec.visibility_of_element_located((By.ID, "token")))
    box.send_keys("not-the-token-" + "0" * 24)
    driver.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "login-error"), "refused"))
    assert driver.find_element(By.ID, "token").is_displayed()
    assert not driver.find_element(By.ID, "live").is_displayed()
    assert driver.execute_script("return sessionStorage.getItem('herd-token')") is None
    # The only console errors: the refused requests themselves.
    errors = severe(driver.get_log("browser"))
    assert errors and all("401" in e and "/api/" in e for e in errors), errors
    assert proc.poll() is None, "the replay ended before the wrong token was tried"

    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "F1=" in out
    log = (workdir / "logs" / "coordinator.log").read_text()
    assert log.count("rejected http_token_wrong from 127.0.0.1") == 1
