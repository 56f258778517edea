"""The guard ahead of the routes (api/guard.py): keys and scopes before any body is read,
body limits as the body streams, the true Allow set, rate limits, bounded metric labels,
security headers; and key entries checked as they load."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
from fastapi import Body, Depends, FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from starlette.types import Message
from typer.testing import CliRunner

from schemas import MAX_MESSAGE_BYTES
from services.ledger.api.app import create_app
from services.ledger.api.auth import KeyStore, Principal, digest
from services.ledger.api.deps import get_principal
from services.ledger.api.guard import GuardSettings
from services.ledger.application.service import Ledger
from services.ledger.bootstrap import build_ledger
from services.ledger.cli import app as cli
from services.ledger.domain.clock import FixedClock
from services.notifier.bootstrap import build_notifier
from tests.integration.test_ledger_store import T0
from tests.unit.test_api import CHECKOUT, PROGRAM, READER, key_store

MiB = 1024 * 1024


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(tmp_path / "l.db")}
    built = build_ledger(program=PROGRAM, clock=FixedClock(T0), env=env)
    yield built
    built.close()


@pytest.fixture
def app(ledger: Ledger, tmp_path: Path) -> Iterator[FastAPI]:
    notifier = build_notifier(PROGRAM, f"sqlite:///{tmp_path / 'n.sqlite'}", [])
    yield create_app(ledger, key_store(), notifier=notifier, guard=GuardSettings())
    notifier.close()


class Reply:
    def __init__(self, messages: list[Message], reads: int) -> None:
        start = next(m for m in messages if m["type"] == "http.response.start")
        self.status: int = start["status"]
        self.headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
        self.body = b"".join(m.get("body", b"") for m in messages if m["type"].endswith("body"))
        self.reads = reads  # how many times the app asked for a piece of the body

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    app: FastAPI,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    chunks: int = 0,
    chunk: bytes = b"",
    client: str = "10.0.0.1",
) -> Reply:
    """One request straight through ASGI, its body sent as `chunks` pieces `chunk` (no
    Content-Length unless given), counting the pieces the app reads."""
    reads = 0
    left = chunks
    messages: list[Message] = []

    async def receive() -> Message:
        nonlocal reads, left
        if left == 0 and reads >= chunks:
            return {"type": "http.disconnect"}
        reads += 1
        left -= 1
        return {"type": "http.request", "body": chunk, "more_body": left > 0}

    async def send(message: Message) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": (client, 5000),
        "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))
    return Reply(messages, reads)


# Every route with a body, the scope it needs and a key that lacks it.
WRITES = [
    ("POST", "/v1/members/m-1/holds", READER),
    ("POST", "/v1/holds/h-1/capture", READER),
    ("POST", "/v1/holds/h-1/void", READER),
    ("POST", "/v1/members/m-1/adjustments", CHECKOUT),
    ("PUT", "/v1/members/m-1/notifications/contact", CHECKOUT),
    ("POST", "/v1/members/m-1/notifications/opt-outs", READER),
    ("POST", "/v1/ops/what-if", None),
    ("POST", "/v1/ops/replay", CHECKOUT),
    ("POST", "/v1/events", READER),
]
A_JSON_ARRAY_PIECE = b"[" + b"1," * (32 * 1024 - 1)  # 64 KiB of a JSON array


@pytest.mark.parametrize(("method", "path", "lacking"), WRITES)
def test_keys_and_scopes_are_checked_before_any_of_the_body_is_read(
    app: FastAPI, method: str, path: str, lacking: dict[str, str] | None
) -> None:
    """25 MiB with no key (or a key without the scope) is refused unread: the app never
    asks for a single piece of it."""
    r = call(app, method, path, chunks=400, chunk=A_JSON_ARRAY_PIECE)
    assert (r.status, r.json()["code"], r.reads) == (401, "unauthenticated", 0)
    r = call(app, method, path, {"X-API-Key": "not-a-key"}, chunks=400, chunk=A_JSON_ARRAY_PIECE)
    assert (r.status, r.json()["code"], r.reads) == (401, "unauthenticated", 0)
    if lacking is not None:
        r = call(app, method, path, lacking, chunks=400, chunk=A_JSON_ARRAY_PIECE)
        assert (r.status, r.json()["code"], r.reads) == (403, "forbidden", 0)
        assert "lacks scope" in r.json()["reason"]


def test_a_route_that_asks_for_the_caller_without_a_scope_needs_a_key_too(
    ledger: Ledger,
) -> None:
    app = create_app(ledger, key_store(), guard=GuardSettings())

    @app.post("/v1/whoami")
    def whoami(
        caller: Annotated[Principal, Depends(get_principal)], note: Annotated[str, Body()]
    ) -> str:
        return caller.name

    r = call(app, "POST", "/v1/whoami", chunks=10, chunk=A_JSON_ARRAY_PIECE)
    assert (r.status, r.json()["code"], r.reads) == (401, "unauthenticated", 0)
    with TestClient(app) as c:
        assert c.post("/v1/whoami", json="hi", headers=READER).json() == "reader"


def test_an_event_body_is_cut_off_at_its_limit_as_it_streams(app: FastAPI) -> None:
    """A holder of an events:write key streaming 1.6 MiB without a Content-Length gets 413
    once the body passes 64 KiB, not after the whole of it was buffered."""
    piece = b"x" * (16 * 1024)
    r = call(app, "POST", "/v1/events", CHECKOUT, chunks=100, chunk=piece)
    assert (r.status, r.json()["code"]) == (413, "oversized")
    assert str(MAX_MESSAGE_BYTES) in r.json()["reason"]
    assert r.reads <= MAX_MESSAGE_BYTES // len(piece) + 1


def test_a_content_length_over_the_limit_is_413_before_reading(app: FastAPI) -> None:
    announced = {**CHECKOUT, "Content-Length": str(25 * MiB)}
    r = call(app, "POST", "/v1/events", announced, chunks=400, chunk=A_JSON_ARRAY_PIECE)
    assert (r.status, r.json()["code"], r.reads) == (413, "oversized", 0)
    support = {"X-API-Key": "k-support", "Content-Length": str(25 * MiB)}
    r = call(app, "POST", "/v1/members/m-1/adjustments", support, chunks=400, chunk=b"x")
    assert (r.status, r.json()["code"], r.reads) == (413, "oversized", 0)


def test_every_route_has_a_body_limit_the_default_one_configurable(
    ledger: Ledger, app: FastAPI
) -> None:
    """A route with no limit of its own gets the default (1 MiB unless configured)."""
    support = {"X-API-Key": "k-support"}
    r = call(app, "POST", "/v1/members/m-1/adjustments", support, chunks=40, chunk=b"x" * 65536)
    assert (r.status, r.json()["code"]) == (413, "oversized")
    assert r.reads <= 17
    small = create_app(ledger, key_store(), guard=GuardSettings(max_body_bytes=1000))
    r = call(small, "POST", "/v1/members/m-1/adjustments", support, chunks=2, chunk=b"x" * 600)
    assert (r.status, r.json()["code"]) == (413, "oversized")
    assert "1000 bytes" in r.json()["reason"]
    with TestClient(small) as c:  # under the limit: served as before
        body = {"points": 5, "reason": "goodwill"}
        r2 = c.post("/v1/members/m-1/adjustments", json=body, headers=support)
        assert r2.status_code in {201, 404, 409}, r2.text


def test_the_openapi_document_lists_413_and_429_on_every_operation(app: FastAPI) -> None:
    with TestClient(app) as c:
        paths = c.get("/openapi.json").json()["paths"]
    operations = [op for item in paths.values() for op in item.values()]
    assert len(operations) >= 18
    assert all({"413", "429"} <= set(op["responses"]) for op in operations)


# ------------------------------------------------------------------- Allow


def test_options_and_a_wrong_method_answer_the_true_allow_set(app: FastAPI) -> None:
    with TestClient(app) as c:
        r = c.options("/v1/members/m-1/holds")
        assert r.status_code == 204
        assert set(r.headers["allow"].split(", ")) == {"GET", "POST", "OPTIONS"}
        r = c.delete("/v1/members/m-1/holds", headers=CHECKOUT)
        assert (r.status_code, r.json()["code"]) == (405, "method_not_allowed")
        assert set(r.headers["allow"].split(", ")) == {"GET", "POST", "OPTIONS"}
        r = c.options("/v1/holds/h-1/capture")
        assert set(r.headers["allow"].split(", ")) == {"POST", "OPTIONS"}
        assert c.options("/no/such/path").status_code == 404


# ------------------------------------------------------------------- metrics


def _series(text: str, family: str) -> set[str]:
    return {
        line.split(" ")[0]
        for line in text.splitlines()
        if line.startswith(family + "{") or line.startswith(family + " ")
    }


def test_hostile_requests_add_no_metric_series(app: FastAPI) -> None:
    """Random methods and paths from callers with no key end up in a handful of series."""
    with TestClient(app) as c:
        for _ in range(3):  # every series the ordinary requests make
            c.get("/healthz")
            c.get("/nope")
        before = c.get("/metrics").text
        for _ in range(300):
            token = secrets.token_hex(6).upper()
            c.request(token, "/healthz")
            c.request(token, f"/v1/members/{token}/balance")
            c.get(f"/x/{token}")
        after = c.get("/metrics").text
    new = _series(after, "loyalty_api_requests_total") - _series(
        before, "loyalty_api_requests_total"
    )
    assert len(new) <= 6, sorted(new)
    assert not [s for s in new if re.search(r"[0-9A-F]{12}", s)], sorted(new)


BOUNDED = re.compile(
    r"^(method|route|status|topic|outcome|reason|partition|cause|tier|kind|channel)$"
)


def test_no_metric_in_the_services_has_a_per_day_or_per_id_label() -> None:
    """Every loyalty_* metric's labels come from a bounded set of names (no day, no ids)."""
    import services.ledger.adapters.metrics
    import services.notifier.metrics
    import services.tiers.metrics  # noqa: F401

    labels: dict[str, set[str]] = {}
    for collector in list(REGISTRY._collector_to_names):
        names = getattr(collector, "_labelnames", ())
        metric = getattr(collector, "_name", "")
        if metric.startswith("loyalty_"):
            labels[metric] = set(names)
    assert "loyalty_tiers_changes" in labels
    assert "loyalty_api_requests" in labels
    unbounded = {m: sorted(n for n in ls if not BOUNDED.match(n)) for m, ls in labels.items()}
    assert {m: ls for m, ls in unbounded.items() if ls} == {}


# ------------------------------------------------------------------- rate limits


def test_a_key_over_its_rate_gets_429_with_retry_after(ledger: Ledger) -> None:
    limited = create_app(
        ledger,
        key_store(),
        guard=GuardSettings(rate_limit="3/minute", anonymous_rate_limit="2/minute"),
    )
    with TestClient(limited) as c:
        codes = [c.get("/v1/members", headers=READER).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = c.get("/v1/members", headers=READER)
        assert (r.status_code, r.json()["code"]) == (429, "rate_limited")
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert c.get("/v1/members", headers=CHECKOUT).status_code == 200  # its own count
        # No key (or an unknown one): counted per client address.
        assert [c.get("/healthz").status_code for _ in range(3)] == [200, 200, 429]
        assert c.get("/healthz", headers={"X-API-Key": "guess"}).status_code == 429
    r1 = call(limited, "GET", "/healthz", client="10.9.9.9")
    assert r1.status == 200  # another address


def test_a_key_entry_may_carry_its_own_rate(ledger: Ledger) -> None:
    entries = [
        {**_entry("batch", ["members:read"], "k-batch"), "rate_limit": "1/minute"},
        _entry("pos", ["members:read"], "k-pos"),
    ]
    keys = KeyStore.from_json(json.dumps(entries))
    limited = create_app(ledger, keys, guard=GuardSettings(rate_limit="3/minute"))
    with TestClient(limited) as c:
        batch, pos = {"X-API-Key": "k-batch"}, {"X-API-Key": "k-pos"}
        assert [c.get("/v1/members", headers=batch).status_code for _ in range(2)] == [200, 429]
        assert [c.get("/v1/members", headers=pos).status_code for _ in range(4)] == [
            200,
            200,
            200,
            429,
        ]
    with pytest.raises(ValueError, match="rate_limit"):
        KeyStore.from_json(json.dumps([{**entries[0], "rate_limit": "often"}]))


def test_limits_come_from_the_environment_and_bad_ones_fail_start_up() -> None:
    settings = GuardSettings.from_environment(
        {
            "LOYALTY_API_MAX_BODY_BYTES": "2048",
            "LOYALTY_API_RATE_LIMIT": "50/second;2000/minute",
            "LOYALTY_API_RATE_LIMIT_ANONYMOUS": "0",
        }
    )
    assert settings == GuardSettings(2048, "50/second;2000/minute", "0")
    with pytest.raises(ValueError, match="LOYALTY_API_RATE_LIMIT"):
        GuardSettings.from_environment({"LOYALTY_API_RATE_LIMIT": "lots"})
    with pytest.raises(ValueError, match="LOYALTY_API_MAX_BODY_BYTES"):
        GuardSettings.from_environment({"LOYALTY_API_MAX_BODY_BYTES": "1MB"})


# ------------------------------------------------------------------- key entries


def _entry(name: str, scopes: list[str], key: str) -> dict[str, Any]:
    return {"name": name, "scopes": scopes, "sha256": digest(key)}


def test_a_key_entry_with_an_unknown_scope_fails_to_load() -> None:
    text = json.dumps([_entry("pos", ["events:write", "member:read"], "k-1")])
    with pytest.raises(ValueError, match=r"unknown scopes \['member:read'\]"):
        KeyStore.from_json(text)


def test_two_entries_for_one_key_fail_to_load() -> None:
    text = json.dumps([_entry("pos", ["events:write"], "k-1"), _entry("ops", ["ops:write"], "k-1")])
    with pytest.raises(ValueError, match="'pos' and 'ops' have the same sha256"):
        KeyStore.from_json(text)


@pytest.mark.parametrize(
    ("entries", "says"),
    [
        ([_entry("pos", ["events:writ"], "k-1")], "unknown scopes ['events:writ']"),
        ([_entry("a", ["ops:write"], "k"), _entry("b", ["ops:write"], "k")], "same sha256"),
    ],
)
def test_loyalty_api_stops_with_the_reason_when_key_entries_are_wrong(
    entries: list[dict[str, Any]], says: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    started: list[object] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **_: started.append(app))
    env = {
        "LOYALTY_API_KEYS": json.dumps(entries),
        "LOYALTY_NOTIFIER_DB": f"sqlite:///{tmp_path / 'n.sqlite'}",
    }
    result = CliRunner().invoke(cli, ["api", "--db", str(tmp_path / "l.db")], env=env)
    assert started == []
    assert result.exit_code == 2
    assert says in result.output


def test_loyalty_api_stops_with_the_reason_when_a_limit_is_wrong(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    started: list[object] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **_: started.append(app))
    env = {
        "LOYALTY_API_KEYS": json.dumps([_entry("pos", ["events:write"], "k-1")]),
        "LOYALTY_NOTIFIER_DB": f"sqlite:///{tmp_path / 'n.sqlite'}",
        "LOYALTY_API_RATE_LIMIT": "fast",
    }
    db = ["--db", str(tmp_path / "l.db")]
    result = CliRunner().invoke(cli, ["api", *db], env=env)
    assert (started, result.exit_code) == ([], 2)
    assert "LOYALTY_API_RATE_LIMIT" in result.output
    env["LOYALTY_API_RATE_LIMIT"] = "20/second"
    assert CliRunner().invoke(cli, ["api", *db], env=env).exit_code == 0
    assert len(started) == 1  # good settings: the server starts


# ------------------------------------------------------------------- headers


def test_the_console_and_the_docs_send_security_headers_and_no_inline_script(
    app: FastAPI,
) -> None:
    with TestClient(app) as c:
        for path in ("/console", "/docs", "/docs/init.js", "/console/static/console.js"):
            r = c.get(path)
            assert r.status_code == 200, path
            csp = r.headers["content-security-policy"]
            directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
            assert directives["script-src"] == "'self'", csp
            assert directives["frame-ancestors"] == "'none'", csp
            assert r.headers["x-frame-options"] == "DENY"
            assert r.headers["referrer-policy"] == "no-referrer"
            assert r.headers["x-content-type-options"] == "nosniff"
        for page in ("/console", "/docs"):
            html = c.get(page).text
            scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
            assert scripts, page
            assert all("src=" in attrs and not body.strip() for attrs, body in scripts), page
            assert not re.search(r"\son[a-z]+=", html), page  # no inline event handlers
        assert c.get("/v1/members").headers["x-content-type-options"] == "nosniff"
