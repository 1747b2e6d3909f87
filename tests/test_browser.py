"""A real browser (headless Chromium via Selenium) against a real dashboard process: fill the
new-experiment form, see an inline validation message, launch a small experiment (the real
``edgefed run``), watch the charts render live, and save screenshots under test-output/; and
the run page following a run's events as they are posted.

Without Chromium and its driver (``$EDGEFED_CHROMIUM``, ``$EDGEFED_CHROMEDRIVER``; Debian's
paths by default) these tests skip, except under ``EDGEFED_REQUIRE_BROWSER=1`` (``make test``,
which installs them), where they fail saying what to install."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from common.compression.registry import REGISTRY
from common.devices import load_catalogue
from tests.dashboard_support import REPO, DashboardProcess, wait_for

CHROMIUM = Path(os.environ.get("EDGEFED_CHROMIUM") or "/usr/bin/chromium")
CHROMEDRIVER = Path(os.environ.get("EDGEFED_CHROMEDRIVER") or "/usr/bin/chromedriver")
REQUIRE_ENV = "EDGEFED_REQUIRE_BROWSER"
OUTPUT = REPO / "test-output"
API_TIMEOUT_S = 60  # a shared, busy machine can answer slowly
RUN_TIMEOUT_S = 480  # the real run: Flower + Ray start-up dominates on 2 shared cores

pytestmark = pytest.mark.e2e


def require_browser() -> None:
    """Skip (fail under ``EDGEFED_REQUIRE_BROWSER=1``) when Chromium or its driver is missing."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if not missing:
        return
    why = (f"{' and '.join(missing)} not found: install Debian's chromium and chromium-driver "
           f"(`make test` does), or set EDGEFED_CHROMIUM / EDGEFED_CHROMEDRIVER")
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture
def browser(tmp_path):
    require_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--window-size=1400,1800",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "SEVERE"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def type_into(driver, element_id: str, value: object) -> None:
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(str(value))


def count(driver, selector: str) -> int:
    return len(driver.find_elements(By.CSS_SELECTOR, selector))


RED = {"#d92d20", "#e8706a", "#f2aca8"}  # the run page's over-budget shades


def memory_account(partition_id: int, budget: int, training: int) -> dict:
    """A client's memory fields, ``training`` split into its three stacked components."""
    activation, grads = training // 2, training // 4
    return {"partition_id": partition_id, "budget_bytes": budget, "training_bytes": training,
            "activation_bytes": activation, "grad_bytes": grads,
            "optimizer_bytes": training - activation - grads, "peak_step_bytes": 2 * training}


def over_budget(records: list[dict]) -> set[str]:
    """The chart's rule: a client is over budget iff its training bytes exceed its budget."""
    return {str(r["partition_id"]) for r in records
            if r.get("training_bytes") is not None and r.get("budget_bytes") is not None
            and r["training_bytes"] > r["budget_bytes"]}


def drawn_over_budget(driver) -> set[str]:
    """Clients the memory chart draws over budget; any red outside them fails."""
    drawn = set()
    for group in driver.find_elements(By.CSS_SELECTOR, "#chart-memory g.client"):
        fills = {rect.get_attribute("fill") for rect in
                 group.find_elements(By.CSS_SELECTOR, "rect.bar")}
        over = "over" in group.get_attribute("class").split()
        assert (fills <= RED) if over else not (fills & RED), (group.get_attribute("data-label"),
                                                               fills)
        if over:
            drawn.add(group.get_attribute("data-label"))
    return drawn


def test_form_shows_every_wrong_field_beside_it(browser, tmp_path):
    """Several wrong fields at once: each message beside its input (the API's 422 names them
    all, as the CLI does) and nothing is created; once they are fixed the form's values pass."""
    wait = WebDriverWait(browser, 60)
    with DashboardProcess(tmp_path) as server:
        browser.get(f"{server.url}/experiments/new")
        wait.until(lambda d: d.find_elements(By.ID, "experiment-form"))
        Select(browser.find_element(By.ID, "f-model")).select_by_value("smallcnn")
        type_into(browser, "f-rounds", 0)
        type_into(browser, "f-compression-last_k", 30)
        type_into(browser, "f-lr", "fast")
        expected = {"err-f-rounds": "greater than or equal to 1",
                    "err-f-compression-last_k": "30 exceeds the 5 Conv2d/Linear layers",
                    "err-f-lr": "valid number"}
        wait.until(lambda d: all(text in d.find_element(By.ID, element).text
                                 for element, text in expected.items()))
        browser.find_element(By.ID, "create").click()
        wait.until(lambda d: d.find_element(By.ID, "err-f-rounds").text)
        assert "/experiments/new" in browser.current_url
        assert httpx.get(f"{server.url}/api/experiments").json() == []

        for element, value in (("f-rounds", 2), ("f-compression-last_k", 3), ("f-lr", 0.05)):
            type_into(browser, element, value)  # every value the form sends passes strict types
        wait.until(lambda d: not any(e.text for e in d.find_elements(By.CSS_SELECTOR, ".error")))
        browser.find_element(By.ID, "create").click()
        wait.until(lambda d: "/experiments/new" not in d.current_url)
        assert len(httpx.get(f"{server.url}/api/experiments").json()) == 1


@pytest.mark.slow
def test_form_launch_and_live_charts(browser, tmp_path):
    OUTPUT.mkdir(exist_ok=True)
    wait = WebDriverWait(browser, 30)
    with DashboardProcess(tmp_path) as server:
        browser.get(f"{server.url}/experiments/new")
        wait.until(lambda d: d.find_elements(By.ID, "experiment-form"))
        type_into(browser, "f-name", "browser-test")
        Select(browser.find_element(By.ID, "f-model")).select_by_value("smallcnn")
        Select(browser.find_element(By.ID, "f-partitioner")).select_by_value("iid")
        for field, value in {"image_size": 28, "rounds": 2, "min_train_clients": 2,
                             "pretrain_epochs": 0, "samples_per_client": 16,
                             "test_samples": 64, "local_steps": 1, "batch_size": 8}.items():
            type_into(browser, f"f-{field}", value)

        type_into(browser, "f-compression-eps", 1.5)  # the server's 422 shows beside the field
        wait.until(lambda d: "less than or equal to 1" in d.find_element(
            By.ID, "err-f-compression-eps").text)
        type_into(browser, "f-compression-eps", 0.8)
        wait.until(lambda d: not d.find_element(By.ID, "err-f-compression-eps").text)

        Select(browser.find_element(By.ID, "f-fleet-0-device")).select_by_value("rpi5")
        type_into(browser, "f-fleet-0-count", 2)
        browser.find_element(By.ID, "fleet-add").click()
        Select(browser.find_element(By.ID, "f-fleet-1-device")).select_by_value("mcu")
        type_into(browser, "f-fleet-1-count", 1)
        Select(browser.find_element(By.ID, "f-fleet-1-policy")).select_by_value("fixed")
        wait.until(lambda d: d.find_element(By.ID, "fleet-total").text == "3 clients")
        browser.save_screenshot(str(OUTPUT / "dashboard-form.png"))

        browser.find_element(By.ID, "create-launch").click()
        wait.until(lambda d: "/runs/" in d.current_url)
        run_id = browser.current_url.rsplit("/", 1)[1]

        WebDriverWait(browser, RUN_TIMEOUT_S, poll_frequency=2).until(
            lambda d: count(d, "#chart-accuracy circle.point") >= 2
            and count(d, "#chart-heatmap rect.cell.filled") >= 3
            and count(d, "#chart-memory rect.bar") >= 2
            and count(d, "#client-table tbody tr") == 3)
        assert "oom" in browser.find_element(By.ID, "client-table").text
        browser.save_screenshot(str(OUTPUT / "dashboard-run.png"))
        latest = httpx.get(f"{server.url}/api/runs/{run_id}/clients").json()
        last = max(c["round"] for c in latest)
        shown = [c for c in latest if c["phase"] == "train" and c["round"] == last]
        assert drawn_over_budget(browser) == over_budget(shown) == set()  # all fitted: none red

        detail = wait_for(lambda: (d := httpx.get(f"{server.url}/api/runs/{run_id}").json())
                          ["run"]["status"] not in ("queued", "running") and d, 120,
                          "the run to end")
        assert detail["run"]["status"] == "finished", detail["run"]["message"]
        assert [r["round"] for r in detail["rounds"]] == [0, 1, 2]
        statuses = {(c["device"], c["status"]) for c in detail["clients"]}
        assert statuses == {("rpi5", "ok"), ("mcu", "oom")}

        browser.get(f"{server.url}/compare?run={run_id}")
        wait.until(lambda d: count(d, "#chart-pareto circle.point") == 1)
        browser.save_screenshot(str(OUTPUT / "dashboard-compare.png"))
        expected = "status of 422"  # the inline validation above: the server said no
        errors = [e["message"] for e in browser.get_log("browser") if expected not in e["message"]]
        assert not errors, errors


def test_run_page_follows_events_live(browser, tmp_path):
    """Events posted while the page is open appear without a reload (the SSE stream)."""
    OUTPUT.mkdir(exist_ok=True)
    wait = WebDriverWait(browser, 30)
    with DashboardProcess(tmp_path, "--max-runs", "0") as server:
        config = {"name": "live", "fleet": [{"device": "rpi5", "count": 4}], "rounds": 3}
        experiment = server.create_experiment(config)
        attached = httpx.post(f"{server.url}/api/experiments/{experiment['id']}/attach").json()
        run_id = attached["run"]["id"]
        headers = {"Authorization": f"Bearer {attached['report_token']}"}

        def post(**part: object) -> None:
            response = httpx.post(attached["report_url"], json={"run_id": run_id, **part},
                                  headers=headers)
            assert response.status_code == 201, response.text

        post(round={"round": 0, "accuracy": 0.3, "loss": 2.0})
        browser.get(f"{server.url}/runs/{run_id}")
        wait.until(lambda d: count(d, "#chart-accuracy circle.point") == 1)
        records = [memory_account(p, budget=64 * 2**20, training=[20, 70, 64][p] * 2**20)
                   for p in range(3)]  # client 1 over its budget; client 2 exactly at it
        for record in records:
            post(client={"round": 1, "node_id": record["partition_id"], "device": "rpi5",
                         "status": "ok", "accuracy": 0.2, **record})
        post(client={"round": 1, "node_id": 3, "partition_id": 3, "device": "rpi5",
                     "status": "oom", "reason": "out of memory: needs 9 bytes, budget 8"})
        post(round={"round": 1, "accuracy": 0.5, "loss": 1.5})
        wait.until(lambda d: count(d, "#chart-accuracy circle.point") == 2
                   and count(d, "#chart-heatmap rect.cell.filled") == 4
                   and count(d, "#chart-memory g.client") == 4
                   and count(d, "#client-table tbody tr") == 4)
        assert drawn_over_budget(browser) == over_budget(records) == {"1"}
        assert count(browser, "#chart-memory g.client rect.bar") == 9  # 3 components each
        columns = {th.text for th in browser.find_elements(By.CSS_SELECTOR, "#client-table th")}
        assert {"budget", "training", "activations", "gradients", "optimizer", "compressed",
                "parameters", "transient", "forward peak", "step peak"} <= columns  # the account
        note = load_catalogue().profiles["rpi5"].budget_note  # what the budget stands for
        assert browser.find_element(By.ID, "budget-notes").text == f"rpi5: {note}"
        browser.save_screenshot(str(OUTPUT / "dashboard-run-budget.png"))
        post(state={"status": "finished"})
        wait.until(lambda d: d.find_element(By.ID, "run-status").text == "finished")
        assert "OOM" in browser.find_element(By.ID, "chart-memory").text
        assert not browser.find_element(By.ID, "cancel").is_displayed()

        browser.get(server.url)  # the experiment list shows the run and its state
        wait.until(lambda d: "finished" in d.find_element(
            By.CSS_SELECTOR, f"tr[data-experiment='{experiment['id']}']").text)
        browser.save_screenshot(str(OUTPUT / "dashboard-list.png"))
        errors = [e["message"] for e in browser.get_log("browser")]
        assert not errors, errors


def attached_run(url: str, experiment_id: int, headers: dict | None = None) -> tuple[str, dict]:
    body = httpx.post(f"{url}/api/experiments/{experiment_id}/attach", headers=headers,
                      timeout=API_TIMEOUT_S).json()
    return body["run"]["id"], {"Authorization": f"Bearer {body['report_token']}"}


def report(url: str, run_id: str, run_headers: dict, **part: object) -> None:
    response = httpx.post(f"{url}/api/runs/{run_id}/events", json={"run_id": run_id, **part},
                          headers=run_headers, timeout=API_TIMEOUT_S)
    assert response.status_code == 201, response.text


def test_pages_show_api_errors_instead_of_loading_forever(browser, tmp_path):
    wait = WebDriverWait(browser, 30)
    with DashboardProcess(tmp_path, "--max-runs", "0") as server:
        for path, expected in [("/runs/no-such-run", "run no-such-run not found"),
                               ("/compare?run=missing", "run missing not found"),
                               ("/compare?memory=bogus", "memory")]:
            browser.get(f"{server.url}{path}")
            wait.until(lambda d, e=expected: e in d.find_element(By.ID, "page-error").text)
            assert "loading" not in browser.find_element(By.ID, "main").text


def test_a_refused_launch_or_delete_shows_why(browser, tmp_path):
    """A token-protected dashboard: 401 on launch and delete land in the same notice."""
    wait = WebDriverWait(browser, 30)
    admin = {"Authorization": "Bearer sesame"}
    env = {"EDGEFED_DASHBOARD_TOKEN": "sesame"}
    with DashboardProcess(tmp_path, "--max-runs", "0", env=env) as server:
        config = {"name": "guarded", "fleet": [{"device": "rpi5", "count": 2}]}
        experiment = server.create_experiment(config, admin)
        browser.get(server.url)
        row = f"tr[data-experiment='{experiment['id']}']"
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, row))
        browser.find_element(By.CSS_SELECTOR, f"{row} button.primary").click()
        notice = wait.until(lambda d: d.find_elements(By.ID, "notice"))[0]
        assert "valid bearer token" in notice.text and "enter the dashboard's token" in notice.text
        assert "/runs/" not in browser.current_url
        notice.find_element(By.CSS_SELECTOR, "button.close").click()
        browser.find_element(By.CSS_SELECTOR, f"{row} button.danger").click()
        browser.switch_to.alert.accept()
        notice = wait.until(lambda d: d.find_elements(By.ID, "notice"))[0]
        assert "enter the dashboard's token" in notice.text
        assert httpx.get(f"{server.url}/api/runs").json() == []  # nothing was launched


def test_compare_labels_every_run_apart_and_fronts_finished_runs(browser, tmp_path):
    wait = WebDriverWait(browser, 30)
    with DashboardProcess(tmp_path, "--max-runs", "0") as server:
        config = {"name": "same", "fleet": [{"device": "rpi5", "count": 2}], "rounds": 1}
        experiment = server.create_experiment(config)
        run_ids = []
        for end in ("finished", "finished", "finished", "interrupted"):
            run_id, headers = attached_run(server.url, experiment["id"])
            report(server.url, run_id, headers, client={
                "round": 1, "node_id": 0, "partition_id": 0, "device": "rpi5", "status": "ok",
                "activation_bytes": 2**20 if end == "finished" else 2**18})
            report(server.url, run_id, headers, round={"round": 1, "accuracy": 0.7, "loss": 1})
            report(server.url, run_id, headers, state={"status": end})
            run_ids.append(run_id)
        browser.get(f"{server.url}/compare")
        wait.until(lambda d: count(d, "#chart-pareto circle.point") == 3)  # finished only
        labels = [t.text for t in browser.find_elements(By.CSS_SELECTOR,
                                                        "#chart-pareto text.label")]
        assert len(set(labels)) == 3 and all(label.startswith("same · ") for label in labels)
        assert sorted(label.split(" · ")[1] for label in labels) == sorted(
            r[:8] for r in run_ids[:3])
        boxes = browser.execute_script(
            "return [...document.querySelectorAll('#chart-pareto text.label')].map((t) => {"
            "const b = t.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; })")
        for i, a in enumerate(boxes):  # same results, same point: the labels still do not overlap
            for b in boxes[i + 1:]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
        browser.find_element(By.ID, "include-unfinished").click()
        wait.until(lambda d: count(d, "#chart-pareto circle.point") == 4)
        errors = [e["message"] for e in browser.get_log("browser")]
        assert not errors, errors


@pytest.mark.parametrize("clients", [20, 100])
def test_memory_chart_client_marks_stay_apart(browser, tmp_path, clients):
    wait = WebDriverWait(browser, 30)
    with DashboardProcess(tmp_path, "--max-runs", "0") as server:
        config = {"name": "many", "fleet": [{"device": "rpi5", "count": clients}],
                  "rounds": 1, "min_train_clients": 2}
        experiment = server.create_experiment(config)
        assert "id" in experiment, experiment
        run_id, headers = attached_run(server.url, experiment["id"])
        for p in range(clients):
            status = ("ok", "oom", "dropped")[p % 3]
            report(server.url, run_id, headers, client={
                "round": 1, "node_id": p, "partition_id": p, "device": "rpi5", "status": status,
                "activation_bytes": 2**20 if status == "ok" else None,
                "training_bytes": 2**20 if status == "ok" else None, "budget_bytes": 2**21})
        browser.get(f"{server.url}/runs/{run_id}")
        wait.until(lambda d: count(d, "#chart-memory rect.bar") == (clients + 2) // 3)
        marks = browser.execute_script(
            "return [...document.querySelectorAll('#chart-memory .missing, "
            "#chart-memory svg > text:not(.missing)')].filter((t) => !t.closest('.axis'))"
            ".map((t) => { const b = t.getBoundingClientRect();"
            " return [b.left, b.top, b.right, b.bottom, t.classList.contains('missing')]; })")
        missing = [m for m in marks if m[4]]
        assert len(missing) == clients - (clients + 2) // 3
        for i, a in enumerate(marks):
            for b in marks[i + 1:]:
                apart = a[2] <= b[0] + 0.5 or b[2] <= a[0] + 0.5 or a[3] <= b[1] or b[3] <= a[1]
                assert apart, (a, b)


def test_method_lists_come_from_the_registry(browser, tmp_path):
    """The form's method choice, its help line and the comparison chart's legend are the
    registry's, read through the API."""
    wait = WebDriverWait(browser, 30)
    with DashboardProcess(tmp_path, "--max-runs", "0") as server:
        browser.get(f"{server.url}/experiments/new")
        wait.until(lambda d: d.find_elements(By.ID, "method-help"))
        select = Select(browser.find_element(By.ID, "f-compression-method"))
        assert [o.get_attribute("value") for o in select.options] == list(REGISTRY)
        for name, spec in REGISTRY.items():
            select.select_by_value(name)
            help_text = browser.find_element(By.ID, "method-help").text
            assert help_text.startswith(spec.summary), (name, help_text)
            assert all(p in help_text for p in spec.param_names), (name, help_text)
        browser.get(f"{server.url}/compare")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".legend span"))
        legend = [s.text for s in browser.find_elements(By.CSS_SELECTOR, ".legend span")]
        assert legend[:len(REGISTRY)] == list(REGISTRY)
        colours = {s.find_element(By.TAG_NAME, "i").get_attribute("style")
                   for s in browser.find_elements(By.CSS_SELECTOR, ".legend span")[:len(REGISTRY)]}
        assert len(colours) == len(REGISTRY)  # one colour per method
        errors = [e["message"] for e in browser.get_log("browser")]
        assert not errors, errors
