"""The dashboard: its page in a real headless Chromium (through selenium) and its HTTP API over
plain urllib, against `python queue.py dashboard` on a SQLite project.

Browser tests skip when chromium, chromedriver or selenium are missing, except under CI=true,
where that is a failure (Debian: `apt-get install chromium chromium-driver`).
QUEUE_SCREENSHOT=1 saves tests/dashboard.png (the README shows it).
"""
import json
import os
import shutil
import time
import urllib.error
import urllib.request

import pytest

import queue
import testjobs
from conftest import CI, TESTS
from helpers import free_port

TOKEN = "t0ken-for-tests"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ACTIONS = ("retry", "forget", "flush", "pause", "resume", "clear")
# urllib without the environment's proxies: the dashboard is on 127.0.0.1
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def request(url, method="GET", body=None, headers=None):
    """(status, headers, body bytes) of one HTTP request, error statuses included."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with _opener.open(req, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


class Dashboard:
    def __init__(self, project, spawned, port):
        self.project, self.spawned, self.port = project, spawned, port
        self.url = f"http://127.0.0.1:{port}/"

    def get(self, path):
        return request(self.url + path.lstrip("/"))

    def post(self, path, body=b"{}", token=TOKEN):
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["X-Queue-Token"] = token
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return request(self.url + path.lstrip("/"), "POST", data, headers)

    def state(self):
        status, _, body = self.get("/api/state")
        assert status == 200, body
        return json.loads(body)

    def queue(self, name):
        """The queue's entry of /api/state, or None."""
        return next((q for q in self.state()["queues"] if q["queue"] == name), None)


@pytest.fixture
def dashboard(sqlite_project, spawn):
    """`python queue.py dashboard` on a free port, answering GET /."""
    for _ in range(3):  # another program may take the free port first: then try another one
        port = free_port()
        spawned = spawn(sqlite_project, "dashboard", "--port", str(port), QUEUE_DASHBOARD_TOKEN=TOKEN)
        board = Dashboard(sqlite_project, spawned, port)
        deadline = time.monotonic() + 20
        while spawned.proc.poll() is None:
            try:
                if request(board.url)[0] == 200:
                    return board
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the dashboard did not answer on {board.url} within 20 s:\n{spawned.output}")
            time.sleep(0.05)
        spawned.wait(5)
        if "cannot serve" not in spawned.output:
            break
    pytest.fail(f"the dashboard exited with {spawned.proc.returncode}:\n{spawned.output}")


@pytest.fixture
def browser(tmp_path):
    """A headless Chromium, with a fresh profile, that makes no request of its own."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("the selenium package")
    if missing:
        message = f"no real browser for the dashboard tests: missing {', '.join(missing)}"
        if CI:
            pytest.fail(message + " (CI=true: a missing browser is a failure)")
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-dev-shm-usage", "--no-first-run", "--disable-component-update", "--disable-sync",
                     "--no-proxy-server", "--window-size=1280,1000", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def wait(browser, predicate, timeout=10, message=None):
    """Poll the page until predicate(browser) is true (elements may be missing or replaced meanwhile)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(browser, timeout, poll_frequency=0.05,
                         ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)).until(
        predicate, message or "")


def css(browser, selector):
    from selenium.webdriver.common.by import By
    return browser.find_element(By.CSS_SELECTOR, selector)


def all_css(browser, selector):
    from selenium.webdriver.common.by import By
    return browser.find_elements(By.CSS_SELECTOR, selector)


def text(browser, selector):
    return css(browser, selector).text


def type_token(browser, value):
    field = css(browser, "#token")
    field.clear()
    field.send_keys(value)


def clear_message(browser):
    browser.execute_script("document.getElementById('message').textContent = ''; "
                           "document.getElementById('message').className = ''")


def answer_confirm(browser, accept):
    from selenium.webdriver.support import expected_conditions
    alert = wait(browser, expected_conditions.alert_is_present(), 5, "no confirm() dialog")
    alert.accept() if accept else alert.dismiss()


def assert_no_script_errors(browser):
    """No uncaught exception in the page (refused requests log a network error, which is fine)."""
    errors = [e["message"] for e in browser.get_log("browser")
              if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]
    assert not errors, errors


def work(project, queue_name):
    result = project.cli("work", "--queue", queue_name, "--stop-when-empty")
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def failed_ids(board, queue_name):
    return [f["id"] for f in board.state()["failed"] if f["queue"] == queue_name]


# (a) ############################################################################################
def test_the_page_shows_the_queue_counts_as_they_change(dashboard, browser, tmp_path):
    path = tmp_path / "a.txt"
    queue.push(testjobs.Record(path, "first"), queue="dash_a")
    browser.get(dashboard.url)
    assert browser.title == "queue.py dashboard"
    wait(browser, lambda b: text(b, '#queues tr[data-queue="dash_a"] .ready') == "1", message="ready is not 1")
    assert text(browser, '#queues tr[data-queue="dash_a"] .delayed') == "0"
    assert text(browser, '#queues tr[data-queue="dash_a"] .paused') == "active"

    queue.push(testjobs.Record(path, "second"), testjobs.Record(path, "third"), queue="dash_a")
    wait(browser, lambda b: text(b, '#queues tr[data-queue="dash_a"] .ready') == "3", 8,
         "the page did not refresh the ready count to 3 by itself")
    assert len(all_css(browser, "#chart rect")) >= 60  # the hour is drawn, even empty
    assert "No worker" in text(browser, "#workers tbody")
    assert "No failed job" in text(browser, "#failed tbody")
    assert_no_script_errors(browser)


# (b) ############################################################################################
def test_a_failed_job_shows_its_traceback_and_retries_from_the_page(dashboard, browser, tmp_path):
    path = tmp_path / "b.txt"
    queue.push(testjobs.FailTimes(path, 1, "flaky", tries=1), queue="dash_b")  # fails once, then succeeds
    work(dashboard.project, "dash_b")
    assert testjobs.values(path) == ["flaky"]
    [job_id] = failed_ids(dashboard, "dash_b")
    row = f'#failed tr[data-id="{job_id}"]'

    browser.get(dashboard.url)
    wait(browser, lambda b: css(b, row).is_displayed(), message="the failed job is not listed")
    assert text(browser, row + " .queue") == "dash_b"
    assert "FailTimes" in text(browser, row + " .name")
    assert "attempt 1 of flaky fails" in text(browser, row + " .error")
    assert not all_css(browser, "#failed pre.exception")

    css(browser, row + " .error").click()  # a click on the row shows the whole traceback
    detail = f'#failed tr[data-detail="{job_id}"] pre.exception'
    wait(browser, lambda b: "Traceback" in text(b, detail), message="no traceback after a click")
    assert "ValueError: attempt 1 of flaky fails" in text(browser, detail)
    shown = text(browser, "#status")
    wait(browser, lambda b: text(b, "#status") != shown, 5, "no refresh within 5 s")
    assert "Traceback" in text(browser, detail), "the traceback closed by itself at a refresh"

    type_token(browser, TOKEN)
    css(browser, row + " .retry").click()
    wait(browser, lambda b: not all_css(b, row), message="the retried job is still listed")
    assert "Retry" in text(browser, "#message") and "ok" in css(browser, "#message").get_attribute("class")
    assert not all_css(browser, f'#failed tr[data-detail="{job_id}"]')
    assert failed_ids(dashboard, "dash_b") == [] and dashboard.queue("dash_b")["ready"] == 1

    work(dashboard.project, "dash_b")
    assert testjobs.values(path) == ["flaky", "flaky"]  # it ran again, and succeeded this time
    assert failed_ids(dashboard, "dash_b") == []
    done = '#queues tr[data-queue="dash_b"]'
    wait(browser, lambda b: not all_css(b, done) or text(b, done + " .ready") == "0", 5)
    assert not all_css(browser, row)

    browser.refresh()  # the token stays for the session
    assert css(browser, "#token").get_attribute("value") == TOKEN
    assert_no_script_errors(browser)


# (c) ############################################################################################
def test_an_action_without_the_right_token_is_refused_and_shown(dashboard, browser, tmp_path):
    queue.push(testjobs.Record(tmp_path / "c.txt"), queue="dash_c")
    browser.get(dashboard.url)
    pause = '#queues tr[data-queue="dash_c"] button.pause'
    wait(browser, lambda b: css(b, pause).is_displayed())
    assert css(browser, "#token").get_attribute("value") == ""

    for token in ("", "not-the-token"):  # no token, then a wrong one
        type_token(browser, token)
        clear_message(browser)
        css(browser, pause).click()
        wait(browser, lambda b: "refused" in text(b, "#message"), 5, f"no refusal shown for token {token!r}")
        assert "403" in text(browser, "#message") and "error" in css(browser, "#message").get_attribute("class")
        assert dashboard.queue("dash_c")["paused"] is False
        assert text(browser, '#queues tr[data-queue="dash_c"] .paused') == "active"

    type_token(browser, TOKEN)  # the right token: the same click pauses, and Resume undoes it
    css(browser, pause).click()
    wait(browser, lambda b: text(b, '#queues tr[data-queue="dash_c"] .paused') == "paused", 5)
    assert dashboard.queue("dash_c")["paused"] is True
    assert not css(browser, pause).is_displayed()
    css(browser, '#queues tr[data-queue="dash_c"] button.resume').click()
    wait(browser, lambda b: text(b, '#queues tr[data-queue="dash_c"] .paused') == "active", 5)
    assert dashboard.queue("dash_c")["paused"] is False
    assert_no_script_errors(browser)


def test_clear_forget_retry_all_and_flush_from_the_page(dashboard, browser, tmp_path):
    path = tmp_path / "f.txt"
    queue.push(*[testjobs.Record(path, k) for k in range(3)], queue="dash_keep")
    queue.push(*[testjobs.Fail(path, f"bad{k}", tries=1) for k in range(3)], queue="dash_fail")
    work(dashboard.project, "dash_fail")
    first, *others = sorted(failed_ids(dashboard, "dash_fail"))
    browser.get(dashboard.url)
    type_token(browser, TOKEN)
    keep = '#queues tr[data-queue="dash_keep"]'
    wait(browser, lambda b: text(b, keep + " .ready") == "3")

    css(browser, keep + " button.clear").click()
    answer_confirm(browser, accept=False)  # Cancel: nothing happens
    time.sleep(0.3)
    assert dashboard.queue("dash_keep")["ready"] == 3
    css(browser, keep + " button.clear").click()
    answer_confirm(browser, accept=True)
    wait(browser, lambda b: not all_css(b, keep) or text(b, keep + " .ready") == "0", 5)
    assert (dashboard.queue("dash_keep") or {"ready": 0})["ready"] == 0

    css(browser, f'#failed tr[data-id="{first}"] button.forget').click()
    wait(browser, lambda b: not all_css(b, f'#failed tr[data-id="{first}"]'), 5)
    assert sorted(failed_ids(dashboard, "dash_fail")) == others

    css(browser, "#retry-all").click()
    wait(browser, lambda b: "No failed job" in text(b, "#failed tbody"), 5)
    assert dashboard.queue("dash_fail")["ready"] == 2
    work(dashboard.project, "dash_fail")  # they fail again
    wait(browser, lambda b: len(all_css(b, "#failed tr[data-id]")) == 2, 5)
    css(browser, "#flush").click()
    answer_confirm(browser, accept=True)
    wait(browser, lambda b: "No failed job" in text(b, "#failed tbody"), 5)
    assert dashboard.state()["failed"] == []
    assert_no_script_errors(browser)


def test_the_page_shows_queue_names_and_errors_as_text(dashboard, browser, tmp_path):
    evil = '<img src=x onerror="window.pwned=1">"]'  # a valid queue name: printable, no surrounding space
    queue.push(testjobs.Fail(tmp_path / "x.txt", "<b>bold</b><script>window.pwned=2</script>", tries=1), queue=evil)
    work(dashboard.project, evil)
    queue.push(testjobs.Record(tmp_path / "x.txt"), queue=evil)
    [job_id] = failed_ids(dashboard, evil)
    browser.get(dashboard.url)
    row = f'#failed tr[data-id="{job_id}"]'
    wait(browser, lambda b: css(b, row + " .queue").text == evil)
    css(browser, row + " .error").click()
    wait(browser, lambda b: "<script>window.pwned=2</script>" in text(b, "#failed pre.exception"))
    assert text(browser, row + " .error") == "ValueError: boom <b>bold</b><script>window.pwned=2</script>"
    assert [r.get_attribute("data-queue") for r in all_css(browser, "#queues tr[data-queue]")] == [evil]
    assert browser.execute_script("return window.pwned === undefined && "
                                  "!document.querySelector('main img, main b, main script')")
    assert_no_script_errors(browser)


# (d) ############################################################################################
def snapshot(board):
    """What an action could change: counts, paused queues, failed jobs."""
    state = board.state()
    return ([{k: q[k] for k in ("queue", "ready", "delayed", "reserved", "failed", "paused")} for q in state["queues"]],
            [f["id"] for f in state["failed"]])


def test_the_api_refuses_what_it_must_and_gets_change_nothing(dashboard, tmp_path):
    [line] = [line for line in dashboard.spawned.lines if f"http://127.0.0.1:{dashboard.port}" in line]
    assert TOKEN in line  # one line with the URL and the token
    path = tmp_path / "d.txt"
    queue.push(testjobs.Record(path), testjobs.Record(path), queue="dash_d")
    queue.push(testjobs.Fail(path, "x", tries=1), queue="dash_dfail")
    work(dashboard.project, "dash_dfail")
    [job_id] = failed_ids(dashboard, "dash_dfail")
    before = snapshot(dashboard)

    status, headers, body = dashboard.get("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'id="chart"' in body and TOKEN.encode() not in body  # the page never carries the token
    for path_ in ["/", "/?retry=all", "/api/state", "/metrics"] + [f"/api/{a}" for a in ACTIONS]:
        dashboard.get(path_)
    assert snapshot(dashboard) == before

    for action in ACTIONS:
        assert dashboard.get(f"/api/{action}")[0] == 405, action
    bodies = {"retry": {"ids": "all"}, "forget": {"ids": [job_id]}, "flush": {}, "pause": {"queue": "dash_d"},
              "resume": {"queue": "dash_d"}, "clear": {"queue": "dash_d"}}
    for action, body_ in bodies.items():
        for token in (None, "", "wrong-token", TOKEN + "x", TOKEN[:-1]):
            status, _, answer = dashboard.post(f"/api/{action}", body_, token=token)
            assert status == 403, (action, token, status, answer)
            assert "error" in json.loads(answer)
    assert snapshot(dashboard) == before

    for bad in (b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe"):
        status, _, answer = dashboard.post("/api/pause", bad)
        assert status == 400, (bad, status, answer)
        assert "error" in json.loads(answer)
    for action, body_ in (("pause", {}), ("pause", {"queue": 5}), ("retry", {"ids": ["1"]}), ("forget", {"ids": "x"})):
        status, _, answer = dashboard.post(f"/api/{action}", body_)
        assert status == 400, (action, body_, status, answer)
    assert snapshot(dashboard) == before

    assert dashboard.get("/nope")[0] == 404
    assert dashboard.post("/api/nope", {})[0] == 404
    status, headers, body = dashboard.get("/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert b'queue_ready_jobs{queue="dash_d"} 2' in body

    status, _, answer = dashboard.post("/api/pause", {"queue": "dash_d"})  # the right token works
    assert status == 200 and json.loads(answer)["ok"] is True
    assert dashboard.queue("dash_d")["paused"] is True


# (e) ############################################################################################
def test_a_busy_dashboard_and_its_screenshot(dashboard, browser, spawn, tmp_path):
    """Queues, a running worker, done and failed jobs, on one page; QUEUE_SCREENSHOT=1 saves it
    as tests/dashboard.png."""
    project, path, gate = dashboard.project, tmp_path / "e.txt", tmp_path / "gate"
    screenshot = os.environ.get("QUEUE_SCREENSHOT") == "1"
    if screenshot:
        earlier_hour(project)
    queue.push(*[testjobs.Record(path, k) for k in range(12)], queue="default")
    queue.push(*[testjobs.Record(path, k) for k in range(4)], queue="mail")
    queue.push(testjobs.Record(path, "later"), queue="mail", delay=600)
    queue.push(*[testjobs.Record(path, k) for k in range(3)], queue="reports")
    queue.push(*[testjobs.Record(path, k) for k in range(5)], queue="welcome")
    queue.push(testjobs.Fail(path, "card declined", tries=1), testjobs.Fail(path, "no such user", tries=1),
               queue="billing")
    work(project, "welcome,billing")
    queue.pause("reports")
    queue.push(testjobs.Gate(path, gate, "export"), queue="exports")
    worker = spawn(project, "work", "--queue", "exports,reports")
    try:
        testjobs.wait_for(lambda: "export" in testjobs.values(path), 15, message="the worker did not start the job")
        browser.get(dashboard.url)
        wait(browser, lambda b: "Gate for" in text(b, "#workers tbody"), 10, "the running worker is not shown")
        assert "exports, reports" in text(browser, "#workers tbody")
        wait(browser, lambda b: len(all_css(b, "#failed tr[data-id]")) == 2)
        assert text(browser, '#queues tr[data-queue="reports"] .paused') == "paused"
        assert text(browser, '#queues tr[data-queue="mail"] .delayed') == "1"
        assert text(browser, '#queues tr[data-queue="exports"] .reserved') == "1"
        wait(browser, lambda b: all_css(b, "#chart rect.done") and all_css(b, "#chart rect.failed"))
        first = all_css(browser, "#failed tr[data-id]")[0]
        first.find_element("css selector", ".error").click()
        wait(browser, lambda b: "Traceback" in text(b, "#failed pre.exception"))
        type_token(browser, TOKEN)
        assert_no_script_errors(browser)
        if screenshot:
            height, chrome = browser.execute_script("return [document.documentElement.scrollHeight, "
                                                    "window.outerHeight - window.innerHeight]")
            browser.set_window_size(1280, min(height, 2400) + chrome)
            time.sleep(0.3)
            browser.save_screenshot(os.path.join(TESTS, "dashboard.png"))
    finally:
        open(gate, "w").close()
        worker.proc.terminate()
        worker.wait(15)


def earlier_hour(project):
    """For the screenshot only: minutes of the last hour, written the way a worker writes them
    (queue._Tally), so that the chart is not a single bar at its right end."""
    import math
    import random
    rng, tally, now = random.Random(7), queue._Tally(), time.time()
    for back in range(59, 0, -1):
        at = now - back * 60
        done = max(0, int(30 + 18 * math.sin(back / 7) + rng.randint(-6, 6)))
        for k in range(done + (rng.random() < 0.25) * rng.randint(1, 3)):
            status = "done" if k < done else "failed"
            wait = rng.uniform(0.05, 2.5) * (2 if back < 20 else 1)
            tally.record("jobs.SendInvoice", status, rng.uniform(0.01, 0.4), wait, at)
    queue._state().put_entries([], tally.take())
