"""The dashboard without a browser: its security checks request by request, what it records of each call, how it
starts (start(), PARALLELIZE_DASHBOARD=1, the dashboard style, MPIRE's names) and processes that connect to a
shared one (the parallelize-dashboard command). The page itself is tested in a browser: test_dashboard_browser.py.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

import dashboard_tasks as dt
from parallelize import ConfigError, ForkAfterThreadsWarning, WorkerPool, _progress, _worker, dashboard
from parallelize.dashboard import _keys, _registry, _server

REPO = Path(__file__).resolve().parents[1]
DEADLINE = 15.0


@pytest.fixture(autouse=True)
def own_dashboard_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Key files in the test's own directory, no dashboard variable from outside, and no dashboard left on."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("PARALLELIZE_DASHBOARD", raising=False)
    monkeypatch.delenv("PARALLELIZE_DASHBOARD_KEY", raising=False)
    yield
    dashboard.stop()
    for func in (dt.checksum, dt.parse_record, dt.render_tile):
        func.close()


@pytest.fixture
def board() -> Iterator[dashboard.Dashboard]:
    with dashboard.start() as started:
        yield started


def token_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["token"][0]


def request(port: int, path: str, *, method: str = "GET", host: str | None = None, cookie: str | None = None,
            body: bytes | None = None, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    sent = {"Host": f"127.0.0.1:{port}" if host is None else host, **(headers or {})}
    if cookie is not None:
        sent["Cookie"] = cookie
    try:
        connection.request(method, path, body, sent)
        response = connection.getresponse()
        response.read()
        return response
    finally:
        connection.close()


def fetch(port: int, path: str, **kwargs: Any) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Host": f"127.0.0.1:{port}", **kwargs.pop("headers", {})}
        connection.request(kwargs.pop("method", "GET"), path, kwargs.pop("body", None), headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def cookie_of(board: dashboard.Dashboard) -> str:
    response = request(board.port, f"/?token={token_of(board.url)}")
    return response.getheader("Set-Cookie", "").split(";")[0]


def calls(port: int, cookie: str) -> list[dict[str, Any]]:
    status, body = fetch(port, "/api/calls", headers={"Cookie": cookie})
    assert status == 200
    return json.loads(body)["calls"]  # type: ignore[no-any-return]


def the_call(board: dashboard.Dashboard, name: str) -> dict[str, Any]:
    found = [call for call in board.registry.snapshot() if call["name"] == name]
    assert len(found) == 1, board.registry.snapshot()
    return found[0]


def done_count(board: dashboard.Dashboard, name: str) -> int | None:
    """The count of call *name*, None until it shows (a call started in another thread shows a moment later)."""
    found = [call["done"] for call in board.registry.snapshot() if call["name"] == name]
    return found[0] if found else None


def wait_for(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {DEADLINE} s: {what}")


# --- security: the page -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/api/calls", "/app.js"])
def test_a_request_without_the_token_is_refused(board: dashboard.Dashboard, path: str) -> None:
    status, body = fetch(board.port, path)
    assert status == 403
    assert b"token" in body


def test_a_wrong_token_or_cookie_is_refused(board: dashboard.Dashboard) -> None:
    token = token_of(board.url)
    wrong = request(board.port, "/?token=" + token[:-1] + ("A" if token[-1] != "A" else "B"))
    assert wrong.status == 403
    assert wrong.getheader("Set-Cookie") is None
    assert request(board.port, "/", cookie=f"parallelize_dashboard_{board.port}=nope").status == 403
    assert request(board.port, "/", cookie=f"parallelize_dashboard_1={token}").status == 403  # another port's name
    assert request(board.port, "/?token=%C3%A9").status == 403  # not ASCII: refused, not a crash


def test_the_token_is_compared_in_constant_time(board: dashboard.Dashboard, monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = _server.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(_server.hmac, "compare_digest", spy)
    assert request(board.port, f"/?token={token_of(board.url)}").status == 303
    assert compared == [(token_of(board.url).encode(), token_of(board.url).encode())]


def test_the_token_becomes_an_http_only_strict_cookie_and_leaves_the_address(board: dashboard.Dashboard) -> None:
    response = request(board.port, f"/?token={token_of(board.url)}")
    assert response.status == 303
    assert response.getheader("Location") == "/"
    attributes = [part.strip() for part in response.getheader("Set-Cookie", "").split(";")]
    assert attributes[0] == f"parallelize_dashboard_{board.port}={token_of(board.url)}"
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= set(attributes[1:])
    cookie = attributes[0]
    status, page = fetch(board.port, "/", headers={"Cookie": cookie})
    assert status == 200
    assert b"parallelize" in page
    assert calls(board.port, cookie) == []


def test_every_answer_carries_the_security_headers(board: dashboard.Dashboard) -> None:
    for response in (request(board.port, "/"), request(board.port, "/", cookie=cookie_of(board))):
        assert "default-src 'none'" in response.getheader("Content-Security-Policy", "")
        assert "frame-ancestors 'none'" in response.getheader("Content-Security-Policy", "")
        assert response.getheader("X-Content-Type-Options") == "nosniff"
        assert response.getheader("Referrer-Policy") == "no-referrer"
        assert response.getheader("Cache-Control") == "no-store"


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example", "", "[::2]:{port}"])
def test_a_foreign_host_header_is_refused_even_with_the_token(board: dashboard.Dashboard, host: str) -> None:
    host = host.format(port=board.port)
    assert request(board.port, "/", host=host, cookie=cookie_of(board)).status == 403
    response = request(board.port, f"/?token={token_of(board.url)}", host=host)
    assert response.status == 403
    assert response.getheader("Set-Cookie") is None


@pytest.mark.parametrize("host", ["localhost:{port}", "LOCALHOST", "127.0.0.1", "[::1]:{port}"])
def test_loopback_host_headers_are_taken(board: dashboard.Dashboard, host: str) -> None:
    assert request(board.port, "/", host=host.format(port=board.port), cookie=cookie_of(board)).status == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", ["/", "/api/calls"])
def test_the_page_is_read_only(board: dashboard.Dashboard, method: str, path: str) -> None:
    response = request(board.port, path, method=method, cookie=cookie_of(board), body=b"{}")
    assert response.status == 405
    assert response.getheader("Allow") == "GET"


def test_listening_on_another_host_warns() -> None:
    with pytest.warns(UserWarning, match="listens on 0.0.0.0: anyone who can reach it"):
        started = dashboard.start(host="0.0.0.0")
    started.stop()


def test_it_listens_on_loopback_on_a_free_port_by_default(board: dashboard.Dashboard) -> None:
    assert board.host == "127.0.0.1"
    assert board.url == f"http://127.0.0.1:{board.port}/?token={token_of(board.url)}"
    assert len(token_of(board.url)) >= 40
    assert token_of(board.url) not in repr(board)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"port": -1}, "port must be a port number"),
    ({"port": "8080"}, "port must be a port number"),
    ({"host": 127}, "host must be a host name"),
])
def test_bad_start_arguments_name_the_parameter(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        dashboard.start(**kwargs)


# --- security: processes that post their calls ----------------------------------------------------------------------


def post(board: dashboard.Dashboard, payload: Any, *, key: str | None = None,
         kind: str = "application/json") -> tuple[int, bytes]:
    headers = {"Content-Type": kind}
    if key is not None:
        headers[_server.KEY_HEADER] = key
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return fetch(board.port, "/api/publish", method="POST", body=body, headers=headers)


RECORD = {"name": "remote_job", "process": "pid 1 on there", "started": 1.0, "elapsed": 2.0, "site": "job.py:3",
          "code": "remote_job(items)", "state": "running", "done": 3, "total": 10, "failed": 0}


def test_a_post_needs_the_key(board: dashboard.Dashboard) -> None:
    payload = {"source": "there", "calls": {"1": RECORD}}
    assert post(board, payload)[0] == 403
    assert post(board, payload, key="wrong")[0] == 403
    assert post(board, payload, key=board.key)[0] == 204
    assert [call["name"] for call in board.registry.snapshot()] == ["remote_job"]


def test_the_browser_cookie_cannot_post(board: dashboard.Dashboard) -> None:
    response = request(board.port, "/api/publish", method="POST", cookie=cookie_of(board), body=b"{}",
                       headers={"Content-Type": "application/json"})
    assert response.status == 403


@pytest.mark.parametrize(("body", "kind", "status"), [
    (b"not json", "application/json", 400),
    (b'{"source": "x", "calls": {"1": {"name": "f", "password": "x"}}}', "application/json", 400),
    (b'{"source": "x", "calls": {"1": {"done": -1}}}', "application/json", 400),
    (b'{"source": "x", "calls": []}', "application/json", 400),
    (b"\x80\x04\x95", "application/python-pickle", 415),
], ids=["not json", "unknown field", "negative count", "calls not an object", "pickle"])
def test_a_bad_post_is_refused(board: dashboard.Dashboard, body: bytes, kind: str, status: int) -> None:
    assert post(board, body, key=board.key, kind=kind)[0] == status
    assert board.registry.snapshot() == []


def test_a_post_too_big_is_refused_before_it_is_read(board: dashboard.Dashboard) -> None:
    # (It says how big it is, and sends a little: the dashboard answers without reading a byte of it.)
    status, _ = fetch(board.port, "/api/publish", method="POST", body=b"{}", headers={
        "Content-Type": "application/json", _server.KEY_HEADER: board.key, "Content-Length": str(_server.MAX_BODY + 1)})
    assert status == 413


def test_the_publish_endpoint_takes_posts_only(board: dashboard.Dashboard) -> None:
    assert fetch(board.port, "/api/publish", headers={_server.KEY_HEADER: board.key})[0] == 405


# --- what the page is told of each call -----------------------------------------------------------------------------


def test_a_finished_call_shows_its_name_site_count_and_rate(board: dashboard.Dashboard) -> None:
    assert len(dt.checksum(range(40))) == 40; line = sys._getframe().f_lineno  # noqa: E702 (the call's line)
    call = the_call(board, "checksum")
    assert call["state"] == "done"
    assert (call["done"], call["total"], call["failed"]) == (40, 40, 0)
    assert call["site"] == f"{__file__}:{line}"
    assert call["code"].startswith("assert len(dt.checksum(range(40)))")
    assert call["process"] == f"pid {os.getpid()} on {os.uname().nodename}"
    assert call["rate"] > 0
    assert call["eta"] is None
    assert call["error"] is None


def test_a_failed_call_shows_its_error_the_tasks_argument_and_the_worker_traceback(board: dashboard.Dashboard) -> None:
    with pytest.raises(ValueError, match="malformed record 7"):
        dt.parse_record(range(10))
    call = the_call(board, "parse_record")
    assert call["state"] == "failed"
    error = call["error"]
    assert error["type"] == "ValueError"
    assert error["message"] == "malformed record 7: expected 3 fields, got 2"
    if sys.version_info >= (3, 11):  # (exception notes)
        assert error["notes"] == ["(raised by the task at input index 7, called with 7)"]
    assert "in parse_record" in error["traceback"]
    assert 'raise ValueError(f"malformed record {i}' in error["traceback"]
    assert error["traceback"].rstrip().endswith("ValueError: malformed record 7: expected 3 fields, got 2")


def test_items_that_failed_under_on_error_return_are_counted(board: dashboard.Dashboard) -> None:
    dt.parse_record(range(10), on_error="return")
    call = the_call(board, "parse_record")
    assert (call["state"], call["done"], call["failed"], call["error"]) == ("done", 10, 1, None)


def test_a_call_left_early_shows_as_cancelled(board: dashboard.Dashboard) -> None:
    results = dt.checksum.imap(range(10_000), chunk_size=1)
    next(iter(results))
    results.close()  # type: ignore[attr-defined]
    assert the_call(board, "checksum")["state"] == "cancelled"


def test_a_dashboard_that_cannot_take_a_record_never_fails_the_call(board: dashboard.Dashboard,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    def refuse(call_id: str, fields: dict[str, Any]) -> None:
        raise RuntimeError("full")

    monkeypatch.setattr(board.registry, "publish", refuse)
    assert dt.checksum(range(5)) == [dt.checksum.serial(i) for i in range(5)]
    assert "the dashboard stops showing checksum" in caplog.text


def test_a_running_call_shows_its_count_advancing_with_an_eta(board: dashboard.Dashboard) -> None:
    dt.close_gates()
    caller = dt.in_background(dt.render_tile, range(6))
    try:
        dt.open_gates(2)
        wait_for(lambda: done_count(board, "render_tile") == 2, "2 of 6 done")
        call = the_call(board, "render_tile")
        assert (call["state"], call["total"]) == ("running", 6)
        assert call["eta"] is not None and call["eta"] > 0
        before = call["elapsed"]
        wait_for(lambda: the_call(board, "render_tile")["elapsed"] > before, "the elapsed time goes on")
    finally:
        dt.open_gates(6)
        assert caller.result(timeout=DEADLINE) == list(range(6))
    assert the_call(board, "render_tile")["state"] == "done"


def test_worker_insights_are_shown_when_enabled(board: dashboard.Dashboard) -> None:
    dt.open_gates(6)
    dt.render_tile(range(6))
    dt.checksum(range(6))
    insights = the_call(board, "render_tile")["insights"]
    assert len(insights["workers"]) == 2
    assert sum(worker["tasks"] for worker in insights["workers"]) == 6
    assert insights["slowest"]
    assert the_call(board, "checksum")["insights"] is None  # not enabled


def test_every_call_shows_while_a_dashboard_is_on_and_none_without(capfd: pytest.CaptureFixture[str]) -> None:
    dt.checksum(range(3))
    with dashboard.start() as started:
        with WorkerPool(2, start_method="threading") as pool:
            pool.map(dt.triple, range(5))
        dt.checksum(range(4))
    assert [(c["name"], c["total"]) for c in started.registry.snapshot()] == [("checksum", 4), ("triple", 5)]
    assert _progress.make_bar(False, None, None, "f") is None


def test_the_dashboard_style_prints_nothing_to_the_terminal(board: dashboard.Dashboard,
                                                             capfd: pytest.CaptureFixture[str]) -> None:
    capfd.readouterr()
    with WorkerPool(2, start_method="threading") as pool:
        assert pool.map(dt.triple, range(5), progress_bar=True, progress_bar_style="dashboard") == [
            3 * i for i in range(5)]
    dt.checksum(range(5), progress_bar=True, progress_bar_style="dashboard")
    assert capfd.readouterr() == ("", "")
    assert [call["state"] for call in board.registry.snapshot()] == ["done", "done"]


def test_the_dashboard_style_starts_a_dashboard_when_none_runs(capfd: pytest.CaptureFixture[str]) -> None:
    dt.checksum(range(5), progress_bar=True, progress_bar_style="dashboard")
    dt.checksum(range(5), progress_bar=True, progress_bar_style="dashboard")
    out, err = capfd.readouterr()
    assert out == ""
    assert err.count("parallelize dashboard: http://127.0.0.1:") == 1
    assert err.count("token=") == 1


def test_the_variable_starts_a_dashboard_on_the_first_call(monkeypatch: pytest.MonkeyPatch,
                                                           capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PARALLELIZE_DASHBOARD", "1")
    dt.checksum(range(3))
    dt.checksum(range(4))
    assert capfd.readouterr().err.count("parallelize dashboard: http://127.0.0.1:") == 1
    started = dashboard.start()  # the one that runs
    assert [call["total"] for call in started.registry.snapshot()] == [4, 3]


def test_a_bad_variable_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_DASHBOARD", "sometimes")
    with pytest.raises(ConfigError, match="PARALLELIZE_DASHBOARD='sometimes' is not a boolean"):
        dt.checksum(range(3))


def test_the_dashboard_variables_are_known(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_DASHBOARD", "0")
    monkeypatch.setenv("PARALLELIZE_DASHBOARD_KEY", "k")
    assert dt.checksum(range(3)) == [dt.checksum.serial(i) for i in range(3)]  # (an unknown one would warn: error)


def test_workers_never_feed_the_dashboard(board: dashboard.Dashboard, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_worker, "in_worker_process", True)
    assert _progress.make_bar(True, "dashboard", None, "f") is None
    assert _progress.make_bar(False, None, None, "f") is None


def test_a_forked_child_does_not_use_its_parents_dashboard(board: dashboard.Dashboard) -> None:
    pid = os.fork()
    if pid == 0:  # the child: anything but a clean "no dashboard" exits 1
        code = 1
        try:
            code = 0 if _progress.make_bar(False, None, None, "f") is None else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_dashboard_serving_a_request_does_not_make_a_fork_pool_warn(board: dashboard.Dashboard) -> None:
    # A request whose headers never end keeps its handler thread waiting while the fork workers start.
    with socket.create_connection(("127.0.0.1", board.port), timeout=10) as slow:
        slow.sendall(b"GET / HTTP/1.0\r\n")
        wait_for(lambda: any(t.name == "parallelize-dashboard-request" for t in threading.enumerate()),
                 "the request's thread")
        with warnings.catch_warnings():
            warnings.simplefilter("error", ForkAfterThreadsWarning)
            assert dt.parse_record(range(4)) == [0, 1, 2, 3]


# --- MPIRE's names -----------------------------------------------------------------------------------------------


def test_start_dashboard_returns_mpires_details_and_refuses_a_second() -> None:
    details = dashboard.start_dashboard(range(18080, 18200))
    assert set(details) == {"dashboard_port_nr", "manager_host", "manager_port_nr", "url"}
    assert details["manager_host"] == "127.0.0.1"
    assert details["dashboard_port_nr"] == details["manager_port_nr"]
    assert 18080 <= details["dashboard_port_nr"] < 18200
    with pytest.raises(RuntimeError, match="You already have a running dashboard"):
        dashboard.start_dashboard(range(18080, 18200))
    with pytest.raises(RuntimeError, match="You're already connected to a running dashboard"):
        dashboard.connect_to_dashboard(details["manager_port_nr"])
    dashboard.shutdown_dashboard()
    assert _progress.make_bar(False, None, None, "f") is None


@pytest.mark.parametrize("bad", ["8080-8100", [], [0], [8080, 70000], 8080])
def test_a_bad_port_range_names_the_parameter(bad: Any) -> None:
    with pytest.raises(ConfigError, match="port_range must be port numbers"):
        dashboard.start_dashboard(bad)


# --- a shared dashboard: the parallelize-dashboard command ----------------------------------------------------------


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[tuple[int, str, subprocess.Popen[str]]]:
    """The command in a process of its own: its port, its URL, the process."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    process = subprocess.Popen([sys.executable, "-m", "parallelize.dashboard"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = process.stdout.readline() if process.stdout else ""  # printed once it listens
        assert first.startswith("parallelize dashboard: http://127.0.0.1:"), first + process.communicate()[1]
        url = first.split(": ", 1)[1].strip()
        yield urlsplit(url).port or 0, url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.communicate(timeout=10)


def test_a_process_shows_its_calls_on_a_shared_dashboard(shared: tuple[int, str, subprocess.Popen[str]]) -> None:
    port, url, _ = shared
    dashboard.connect_to_dashboard(port)  # the key comes from the file the command wrote
    dt.checksum(range(30))
    dashboard.shutdown_dashboard()  # sends what is pending
    cookie = request(port, f"/?token={token_of(url)}").getheader("Set-Cookie", "").split(";")[0]
    shown = wait_for(lambda: [c for c in calls(port, cookie) if c["state"] == "done"], "the call on the page")
    assert [(c["name"], c["done"], c["total"]) for c in shown] == [("checksum", 30, 30)]
    assert shown[0]["process"] == f"pid {os.getpid()} on {os.uname().nodename}"


def test_a_process_with_a_wrong_key_is_refused(shared: tuple[int, str, subprocess.Popen[str]]) -> None:
    port, _, _ = shared
    with pytest.raises(PermissionError, match="refused this process: parallelize dashboard: wrong or missing key"):
        dashboard.connect_to_dashboard(port, key="not the key")
    assert _progress.make_bar(False, None, None, "f") is None  # not connected


def test_the_key_variable_is_used_before_the_key_file(shared: tuple[int, str, subprocess.Popen[str]],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    port, _, _ = shared
    monkeypatch.setenv("PARALLELIZE_DASHBOARD_KEY", "not the key")
    with pytest.raises(PermissionError, match="wrong or missing key"):
        dashboard.connect_to_dashboard(port)


def test_connecting_to_nothing_is_refused_clearly() -> None:
    with pytest.raises(PermissionError, match=r"no key for the dashboard at 127\.0\.0\.1:1"):
        dashboard.connect_to_dashboard(1)
    with pytest.raises(ConnectionRefusedError, match=r"could not connect to the dashboard at 127\.0\.0\.1:1"):
        dashboard.connect_to_dashboard(1, key="k")
    with pytest.raises(ConfigError, match="manager_port_nr must be a port number"):
        dashboard.connect_to_dashboard("8080")  # type: ignore[arg-type]


def test_the_command_stops_on_sigterm_and_removes_its_key(shared: tuple[int, str, subprocess.Popen[str]]) -> None:
    port, _, process = shared
    assert _keys.read(port) is not None
    assert (_keys.key_dir().stat().st_mode & 0o777, _keys.key_file(port).stat().st_mode & 0o777) == (0o700, 0o600)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    assert _keys.read(port) is None


# --- the registry ---------------------------------------------------------------------------------------------------


def test_texts_are_capped_and_a_traceback_keeps_its_end() -> None:
    registry = _registry.Registry()
    long_trace = "x" * 50_000 + "ValueError: the end"
    registry.publish("1", {"name": "n" * 5000, "state": "failed",
                           "error": {"type": "ValueError", "message": "m", "notes": [], "traceback": long_trace}})
    (call,) = registry.snapshot()
    assert len(call["name"]) <= 1001
    assert call["error"]["traceback"].endswith("ValueError: the end")
    assert len(call["error"]["traceback"]) <= 20_001


def test_old_finished_calls_are_dropped_first() -> None:
    registry = _registry.Registry()
    registry.publish("running", {"name": "still going"})
    for i in range(_registry.MAX_FINISHED + 5):
        registry.publish(str(i), {"name": f"call {i}", "state": "done"})
    names = [call["name"] for call in registry.snapshot()]
    assert len(names) == _registry.MAX_FINISHED + 1
    assert names[:2] == ["still going", f"call {_registry.MAX_FINISHED + 4}"]
    assert "call 4" not in names


def test_a_connected_process_that_goes_quiet_shows_as_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = _registry.Registry()
    registry.heard_from("there")
    registry.publish("there/1", {"name": "f"}, source="there")
    registry.publish("here", {"name": "g"})
    assert {c["name"]: c["state"] for c in registry.snapshot()} == {"f": "running", "g": "running"}
    monkeypatch.setattr(_registry, "SILENT_AFTER", -1.0)
    assert {c["name"]: c["state"] for c in registry.snapshot()} == {"f": "silent", "g": "running"}
