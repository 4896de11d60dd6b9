"""UI-test fixtures: the system Chromium driven by Playwright, screenshots kept under test-artifacts/ui/."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "test-artifacts" / "ui"
CHROMIUM = Path("/usr/bin/chromium")
# Debian's Chromium, not a Playwright download (`playwright install` needs the internet). The flags keep
# it from reaching for Google services, which hang on a closed network, and let it run as root.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The UI is a React SPA whose first load compiles a large bundle: generous waits on what it renders.
WAIT_MS = 60_000


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    # Lets the `page` fixture know at teardown whether the test body failed.
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def shot() -> Callable[..., Path]:
    """``shot(page, name)`` saves a full-page PNG as test-artifacts/ui/<name>.png, replacing the
    previous session's, and prints its path."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in SHOTS.glob("*.png"):
        old.unlink()

    def save(page, name: str) -> Path:
        path = SHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        return path

    return save


@pytest.fixture
def page(request: pytest.FixtureRequest, shot):
    """A fresh headless Chromium page; on failure its last state is saved as FAILED-<test>.png."""
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} not found: the UI tests need Debian's Chromium. Run `make test` "
            "(it runs scripts/system-deps.sh) or `apt-get install chromium`.",
            pytrace=False,
        )
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1400})
            page.set_default_timeout(WAIT_MS)
            yield page
            report = getattr(request.node, "report_call", None)
            if report is not None and report.failed:
                shot(page, f"FAILED-{request.node.name}")
        finally:
            browser.close()


@pytest.fixture
def tiny_on_server(compose, data_root, tmp_path, mlflow_server):
    """The `tiny` experiment (as in tests/core) tracked on the session's real `mlflow server`."""

    def make(*overrides: str):
        return compose(
            "experiment=tiny",
            f"data.root={data_root}",
            f"train.out_dir={tmp_path / 'outputs'}",
            f"tracking.uri={mlflow_server}",
            f"model.teacher.cache_dir={tmp_path / 'teachers'}",
            *overrides,
        )

    return make
