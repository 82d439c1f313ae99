"""The d8 dashboard in a real browser (Debian's chromium, driven by its
chromedriver through Selenium; nothing here downloads a browser).

Run by tests/it/dashboard.rs against a cluster of real processes:
  D8_URL        the orchestrator's HTTP URL
  D8_KEY        its API key
  D8_WORKERS    the two worker ids, comma-separated
  D8_KILL_PID   the process id of the first worker, killed during the test
  D8_SHOTS      where screenshots go
  D8_CHROMIUM, D8_CHROMEDRIVER   the browser and its driver (Debian's paths by default)

Checks, as a person would do them: log in with the key, see both workers
online, send a prompt and watch its words arrive one after another, see a
killed worker marked dead within 5 s, and no console error (a Content
Security Policy violation would be one) on a desktop or a phone-sized
screen. Prints one line per check; exits non-zero at the first failure.
"""

import os
import signal
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

URL = os.environ["D8_URL"].rstrip("/")
KEY = os.environ["D8_KEY"]
WORKERS = os.environ["D8_WORKERS"].split(",")
KILL_PID = int(os.environ["D8_KILL_PID"])
SHOTS = os.environ.get("D8_SHOTS", "target/browser-shots")
CHROMIUM = os.environ.get("D8_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("D8_CHROMEDRIVER", "/usr/bin/chromedriver")


def check(ok, what):
    if not ok:
        print(f"FAIL: {what}", flush=True)
        raise SystemExit(1)
    print(f"ok: {what}", flush=True)


def wait_for(what, pred, timeout=10.0):
    """Polls pred() until it returns something truthy; fails after timeout."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except StaleElementReferenceException as e:  # the page re-rendered
            last_error = e
        time.sleep(0.05)
    check(False, f"{what} (waited {timeout} s; last error: {last_error})")


def browser(width, height, phone=False):
    o = webdriver.ChromeOptions()
    if phone:
        # A desktop window cannot be this narrow; emulate the device.
        o.add_experimental_option(
            "mobileEmulation",
            {"deviceMetrics": {"width": width, "height": height, "pixelRatio": 2.0, "touch": True}},
        )
    o.binary_location = CHROMIUM
    for a in [
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--no-proxy-server",
        "--disable-gpu",
        f"--window-size={width},{height}",
    ]:
        o.add_argument(a)
    o.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=o)


def console_errors(d):
    return [e for e in d.get_log("browser") if e["level"] == "SEVERE"]


def worker_state(d, worker):
    rows = d.find_elements(By.CSS_SELECTOR, f'#workers tr[data-worker="{worker}"] .badge')
    return rows[0].text if rows else None


def shot(d, name):
    os.makedirs(SHOTS, exist_ok=True)
    path = os.path.join(SHOTS, name)
    d.save_screenshot(path)
    print(f"screenshot: {path}", flush=True)


def desktop():
    d = browser(1360, 1000)
    try:
        d.get(URL + "/")
        form = wait_for("the page asks for the key", lambda: d.find_element(By.ID, "login-form").is_displayed())
        check(form, "the page asks for the key first")
        check(not d.find_element(By.ID, "app").is_displayed(), "nothing is shown before the key")
        shot(d, "dashboard-login.png")
        d.find_element(By.ID, "key").send_keys("d8k_wrong")
        d.find_element(By.CSS_SELECTOR, "#login-form button").click()
        wait_for("a wrong key is refused", lambda: "refused" in d.find_element(By.ID, "login-error").text)
        check(True, "a wrong key is refused with a message")
        # The refused request is the one console error this test expects.
        errors = console_errors(d)
        check(all("401" in e["message"] for e in errors), f"only the refused key's 401 so far: {errors}")

        d.find_element(By.ID, "key").send_keys(KEY)
        d.find_element(By.CSS_SELECTOR, "#login-form button").click()
        wait_for("the dashboard opens", lambda: d.find_element(By.ID, "app").is_displayed())
        check(d.execute_script("return sessionStorage.getItem('d8.key')") == KEY, "the key is kept for this tab only")
        check(KEY not in d.current_url, "the key is not in the URL")
        for w in WORKERS:
            wait_for(f"worker {w} online", lambda w=w: worker_state(d, w) == "online")
        check(True, f"both workers are online: {', '.join(WORKERS)}")
        wait_for("the cluster name in the header", lambda: d.find_element(By.ID, "cluster-name").text not in ("", "cluster"))
        check(d.find_element(By.ID, "base-url").text == URL + "/v1", "the OpenAI base URL is shown")

        # A prompt, streamed: its words arrive one after another. The page
        # itself records every text the output box shows (polling from here
        # would miss some on a loaded machine).
        d.execute_script(
            """
            window.__seen = [];
            const out = document.getElementById('d-output');
            new MutationObserver(() => window.__seen.push(out.textContent))
              .observe(out, {childList: true, characterData: true, subtree: true});
            """
        )
        words = "alpha beta gamma delta epsilon zeta eta theta <b>iota</b>"
        d.find_element(By.ID, "try-prompt").send_keys(words)
        d.find_element(By.CSS_SELECTOR, "#try-form button").click()
        wait_for(
            "the answer complete and the task completed",
            lambda: d.find_element(By.ID, "d-status").text == "completed"
            and d.find_element(By.ID, "d-output").text.strip() == words,
            timeout=20,
        )
        out = d.find_element(By.ID, "d-output")
        seen = d.execute_script("return window.__seen")
        partial = {t.strip() for t in seen if t.strip() and t.strip() != words and words.startswith(t.strip())}
        check(out.text.strip() == words, f"the answer arrived whole: {out.text!r}")
        check(len(partial) >= 3, f"tokens arrived one after another ({len(partial)} growing partial texts seen)")
        check(
            not d.find_elements(By.CSS_SELECTOR, "#d-output b"),
            "text from the cluster is shown as text, not markup",
        )
        wait_for("the task listed as completed", lambda: "completed" in d.find_element(By.CSS_SELECTOR, "#tasks tbody tr .badge").text)
        check(True, "the task is listed as completed")

        # The join command, on request.
        d.find_element(By.ID, "show-join").click()
        cmd = wait_for("a join command", lambda: d.find_element(By.ID, "join-cmd").text)
        check(cmd.startswith("d8 join ") and "--token D8-" in cmd, f"a join command with a fresh token: {cmd[:40]}…")

        # Wait for a log line from a worker, forwarded over QUIC.
        wait_for("worker log lines", lambda: any(f"[{w}]" in d.find_element(By.ID, "log-lines").text for w in WORKERS))
        check(True, "worker log lines appear in the log panel")
        d.execute_script("window.scrollTo(0, 0)")
        shot(d, "dashboard.png")

        # Kill the first worker: marked dead within 5 s.
        victim = WORKERS[0]
        os.kill(KILL_PID, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(f"{victim} marked dead", lambda: worker_state(d, victim) == "dead", timeout=5.0)
        check(True, f"{victim} killed with SIGKILL is marked dead after {time.monotonic() - killed:.1f} s")
        # (A loaded CI machine may delay its heartbeats: `suspect` is not a failure.)
        other = worker_state(d, WORKERS[1])
        check(other in ("online", "busy", "suspect"), f"the other worker stays connected ({other})")
        errors = console_errors(d)
        check(errors == [], f"no console errors (CSP included): {errors}")
    finally:
        d.quit()


def phone():
    d = browser(390, 844, phone=True)
    try:
        d.get(URL + "/")
        wait_for("the login form", lambda: d.find_element(By.ID, "login-form").is_displayed())
        d.find_element(By.ID, "key").send_keys(KEY)
        d.find_element(By.CSS_SELECTOR, "#login-form button").click()
        wait_for("the dashboard opens on a phone", lambda: d.find_element(By.ID, "app").is_displayed())
        wait_for("workers listed", lambda: d.find_elements(By.CSS_SELECTOR, "#workers tbody tr"))
        width = d.execute_script("return document.documentElement.scrollWidth")
        check(width <= 390, f"nothing wider than a phone screen ({width} px; wide tables scroll inside their panel)")
        shot(d, "dashboard-phone.png")
        errors = console_errors(d)
        check(errors == [], f"no console errors on a phone: {errors}")
    finally:
        d.quit()


if __name__ == "__main__":
    desktop()
    phone()
    print("all checks passed", flush=True)
