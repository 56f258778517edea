"""The support console in a real headless Chromium (Debian's package, driven by Playwright)."""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from PIL import Image
from playwright.sync_api import Page, expect, sync_playwright

from services.ledger.api.app import create_app
from services.ledger.api.auth import KeyStore, digest
from services.ledger.application import what_if as what_if_module
from services.ledger.application.service import Ledger
from services.ledger.bootstrap import build_ledger
from services.ledger.domain.clock import FixedClock
from services.notifier.bootstrap import build_notifier
from services.notifier.channels.printer import PrintChannel
from services.notifier.embedded import as_records, ledger_entries
from tests.integration.test_api_service import _free_port
from tests.integration.test_ledger_store import PROGRAM, T0, _event, _file, _purchase

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium package"),
]
KEY = "k-support"


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    clock = FixedClock(T0)
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(tmp_path / "l.db")}
    built = build_ledger(program=PROGRAM, clock=clock, env=env)
    built.app.apply_batch(
        [
            _file(_purchase("e-1", "m-ana", "o-1", 5000)),
            _file(_event("e-2", "activity.completed", "m-ana", T0, activity="review")),
            _file(_purchase("e-3", "m-ben", "o-3", 2000)),
        ]
    )
    clock.advance(timedelta(days=3))
    built.tick()
    hold = built.place_hold(
        "m-ana", reference="c-1", points=20, ttl=timedelta(hours=1), actor="pos"
    )
    built.capture_hold(hold.result.hold_id, points=20, actor="pos")
    clock.advance(timedelta(days=1))
    built.app.apply_batch(
        [
            _file(_purchase("e-4", "m-ana", "o-4", 3000, clock.now())),
            _file(_purchase("e-5", "m-cy", "o-5", 1000, clock.now())),
        ]
    )
    # Recorded before control characters were refused (the domain takes any text).
    built.app.adjust("m-cy", 5, reason="ok\r\n#9 forged\x1b[2J", actor="ops", allow_negative=False)
    built.projection.run()
    yield built
    built.close()


@pytest.fixture
def console_url(ledger: Ledger, tmp_path: Path) -> Iterator[str]:
    keys = KeyStore.from_json(
        json.dumps(
            [{"name": "support-1", "scopes": ["members:read", "ops:write"], "sha256": digest(KEY)}]
        )
    )
    # The notifier has recorded what the ledger's entries call for (not sent yet), and
    # knows m-ana's email and one opt-out.
    url = f"sqlite:///{tmp_path / 'notifier.sqlite'}"
    notifier = build_notifier(PROGRAM, url, [PrintChannel(lambda _: None)])
    notifier.recorder.apply(as_records(ledger_entries(ledger)))
    notifier.contacts.set_contact("m-ana", "ana@example.com", "Ana")
    notifier.contacts.opt_out("m-ana", "email", "monthly_statement")
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(ledger, keys, notifier=notifier),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/console"
    server.should_exit = True
    thread.join(timeout=10)
    notifier.close()


@pytest.fixture
def page(console_url: str) -> Iterator[Page]:
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.goto(console_url)
            yield page
        finally:
            browser.close()


def _open(page: Page, member: str) -> None:
    page.fill("#key", KEY)
    page.dispatch_event("#key", "change")
    page.fill("#search", "m-")
    page.click("#search-form button")
    page.click(f"#results li[data-member='{member}']")
    page.wait_for_selector("#member:not([hidden])")


def test_support_finds_a_member_and_explains_the_balance(page: Page) -> None:
    _open(page, "m-ana")
    assert page.inner_text("#member-title") == "m-ana"
    assert page.inner_text(".card[data-field='available'] b") == "33"  # 50 + 3 - 20
    assert page.inner_text(".card[data-field='pending'] b") == "30"
    assert "add up to the balance" in page.inner_text("#explained")
    rows = page.locator("#statement tbody tr")
    assert rows.count() == 7  # enrolled, 2 earned, released, hold placed/captured, earned
    text = page.inner_text("#statement")
    assert "hold_captured" in text
    assert "event e-1; via file file=test line=1; rule base:USD" in text
    assert "actor=pos" in text
    assert page.locator("#lots tbody tr").count() == 3

    # What the member was told: the notifier's record, and the member's preferences.
    page.wait_for_selector("#notices tbody tr")
    notices = page.inner_text("#notices")
    assert "points_available" in notices
    assert "pending" in notices
    assert "pending_released" in notices  # the cause names the entry
    prefs = page.inner_text("#prefs")
    assert "ana@example.com" in prefs
    assert "monthly_statement on email" in prefs

    # The chart is drawn, and its screenshot is not blank.
    path = page.locator("#chart svg path.balance-line")
    assert path.get_attribute("d", timeout=5000)
    shot = Image.open(io.BytesIO(page.locator("#chart svg").screenshot())).convert("RGB")
    raw = shot.tobytes()
    pixels = zip(raw[0::3], raw[1::3], raw[2::3], strict=True)
    blue = sum(1 for r, g, b in pixels if b > 180 and r < 100 and g < 150)
    assert blue > 200, f"only {blue} line pixels in the chart"


def test_support_posts_an_adjustment_and_sees_a_what_if(page: Page) -> None:
    _open(page, "m-ben")
    page.fill("#adjust-points", "15")
    page.fill("#adjust-reason", "missing stamp, ticket 881")
    page.click("#adjust-form button")
    page.wait_for_selector("#adjust-result.good")
    assert "by support-1" in page.inner_text("#adjust-result")
    expect(page.locator(".card[data-field='available'] b")).to_have_text("35")
    assert "missing stamp, ticket 881" in page.inner_text("#statement")

    page.fill("#whatif-program", _double_program())
    page.click("#whatif-form button")
    page.wait_for_selector("#whatif tbody tr")
    cells = page.locator("#whatif tbody tr td").all_inner_texts()
    assert cells == ["m-ben", "35", "55", "+20"]


def test_the_what_if_panel_shows_the_jobs_progress_until_its_report(
    page: Page, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What-if runs as a job: the panel shows how far the run has got (a progress bar and
    "N of M events replayed") while it runs, then the report."""
    release = threading.Event()
    real = what_if_module.what_if

    def slow(*args: Any, **kwargs: Any) -> Any:
        kwargs["progress"]("replay", 2, 7)
        assert release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(what_if_module, "what_if", slow)
    _open(page, "m-ben")
    page.fill("#whatif-program", _double_program())
    page.click("#whatif-form button")
    expect(page.locator("#whatif-note")).to_contain_text("2 of 7 events replayed")
    assert page.is_visible("#whatif-progress")
    assert page.eval_on_selector("#whatif-progress", "p => [p.value, p.max]") == [2, 7]
    release.set()
    page.wait_for_selector("#whatif tbody tr")
    assert page.locator("#whatif tbody tr td").all_inner_texts() == ["m-ben", "20", "40", "+20"]
    assert page.is_hidden("#whatif-progress")
    assert "events replayed" in page.inner_text("#whatif-note")


def test_the_console_shows_stored_control_characters_escaped(page: Page) -> None:
    _open(page, "m-cy")
    text = page.inner_text("#statement")
    assert "ok\\x0d\\x0a#9 forged\\x1b[2J" in text
    assert "\x1b" not in text


def _double_program() -> str:
    data = PROGRAM.model_dump(mode="json")
    data["currencies"]["USD"]["points_per_unit"] = "2"
    return json.dumps(data)  # JSON is YAML


def _csp_violations(page: Page) -> list[str]:
    """What Chromium refuses under the page's Content-Security-Policy, as it reports it."""
    refused: list[str] = []
    page.on(
        "console",
        lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None,
    )
    return refused


def test_the_console_works_under_its_content_security_policy(console_url: str) -> None:
    """The console's CSP allows no inline script; everything it does still works and the
    browser refuses nothing."""
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            refused = _csp_violations(page)
            response = page.goto(console_url)
            assert response is not None
            csp = response.headers["content-security-policy"]
            _open(page, "m-ana")
            assert page.inner_text(".card[data-field='available'] b") == "33"
            page.locator("#chart svg").wait_for(timeout=5_000)
        finally:
            browser.close()
    assert "script-src 'self';" in csp
    assert "frame-ancestors 'none'" in csp
    assert refused == []


def test_the_interactive_api_docs_render_without_internet(console_url: str) -> None:
    """/docs loads Swagger UI from the API itself: with every other host blocked, the
    operations of the OpenAPI document are listed; its CSP (no inline script) refuses
    nothing."""
    base = console_url.removesuffix("/console")
    outside: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page()

            def only_local(route: Any) -> None:
                if route.request.url.startswith(base):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            page.route("**/*", only_local)
            refused = _csp_violations(page)
            page.goto(f"{base}/docs")
            page.wait_for_selector(".opblock", timeout=15_000)
            operations = page.locator(".opblock").count()
            text = page.inner_text("body")
            # POST /v1/events shows a real event as its example body (was "string").
            page.click("#operations-events-post_event .opblock-summary")
            page.wait_for_selector("#operations-events-post_event .body-param__example")
            example = page.inner_text("#operations-events-post_event .body-param__example")
        finally:
            browser.close()
    assert outside == []
    assert refused == []
    assert operations >= 10, operations
    assert "/v1/events" in text
    assert '"event_id": "ord-1001-paid"' in example
