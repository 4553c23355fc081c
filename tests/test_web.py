"""The web view: --web parsing, the token on every route, escaping, limits, static files only,
stalled viewers, a clean stop; and the page in headless Chromium against `vrex-edge live`."""

from __future__ import annotations

import http.client
import json
import os
import queue
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.browser import CHROMIUM, Browser
from vrex_edge.cli import app
from vrex_edge.errors import ConfigError
from vrex_edge.runtime.events import FrameProcessed, Stats
from vrex_edge.runtime.live import CaptureStatus, LiveStatus
from vrex_edge.web import TOKEN_ENV, WebConfig, WebLimits, WebView, parse_web
from vrex_edge.web.server import clean_question, public_name

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "samples" / "world_demo.mp4"
TOKEN = "s3cret-token-0123456789"
ROUTES = [
    ("GET", "/"),
    ("GET", "/index.html"),
    ("GET", "/app.js"),
    ("GET", "/style.css"),
    ("GET", "/stream.mjpg"),
    ("GET", "/frame.jpg"),
    ("GET", "/events"),
    ("POST", "/ask"),
    ("GET", "/nothing-here"),
]


@pytest.fixture
def serve() -> Iterator:
    """serve(token=..., **limits) -> (WebView, its question queue); closed (and checked) at teardown."""
    views: list[WebView] = []

    def start(token: str | None = None, **limits: object) -> tuple[WebView, queue.Queue[str]]:
        questions: queue.Queue[str] = queue.Queue()
        view = WebView(
            WebConfig("127.0.0.1", 0, token, limits=WebLimits(**limits)),
            questions,
            title="rtsp://user:pw@cam.local:554/live?key=1",
        ).start()
        views.append(view)
        return view, questions

    yield start
    for view in views:
        t0 = time.monotonic()
        view.close()
        assert time.monotonic() - t0 < 3.0, "the server stops promptly"
        assert view.server.errors == 0, "no handler failed"


def request(
    view: WebView,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    read: bool = True,
) -> tuple[int, dict[str, str], bytes]:
    """A raw request (the path is sent exactly as given); streams are read only up to their headers."""
    conn = http.client.HTTPConnection("127.0.0.1", view.port, timeout=5)
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    streaming = r.getheader("Content-Type", "").startswith(("multipart/", "text/event-stream"))
    data = r.read() if read and not streaming else b""
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data


def ask(view: WebView, question: object, **headers: str) -> tuple[int, dict]:
    body = json.dumps({"question": question}).encode()
    status, _, data = request(view, "POST", "/ask", body=body, headers={"Content-Type": "application/json", **headers})
    return status, json.loads(data)


def sse_events(view: WebView, path: str = "/events", *, until: str, timeout: float = 5.0) -> list[tuple[str, dict]]:
    """(event, data) pairs from the event stream, up to and including the first `until` event."""
    sock = socket.create_connection(("127.0.0.1", view.port), timeout=timeout)
    sock.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{view.port}\r\n\r\n".encode())
    f = sock.makefile("rb")
    assert f.readline().startswith(b"HTTP/1.0 200")
    while f.readline() not in (b"\r\n", b""):
        pass
    out, event = [], None
    for line in f:
        line = line.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            out.append((event, json.loads(line[6:])))
            if event == until:
                break
    sock.close()
    return out


def sse_for(view: WebView, seconds: float) -> list[str]:
    """The event names a viewer receives in `seconds`."""
    sock = socket.create_connection(("127.0.0.1", view.port), timeout=seconds)
    sock.sendall(b"GET /events HTTP/1.0\r\n\r\n")
    data, deadline = b"", time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 16)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    sock.close()
    return re.findall(r"^event: (\w+)$", data.decode(), flags=re.M)


# ---------------------------------------------------------------------------- --web values


def test_parse_web_values() -> None:
    assert parse_web("8080", env={}) == WebConfig("127.0.0.1", 8080, None)
    assert parse_web("localhost:0", env={}).token is None
    assert parse_web("[::1]:8080", env={}).host == "::1"
    wide = parse_web("0.0.0.0:8080", env={})
    assert wide.host == "0.0.0.0" and not wide.loopback and len(wide.token) >= 32, "another host gets a token"
    assert parse_web("0.0.0.0:8080", env={}).token != wide.token
    given = parse_web("192.168.1.5:8080", env={TOKEN_ENV: TOKEN})
    assert given.token == TOKEN and given.token_from_env
    assert parse_web("8080", env={TOKEN_ENV: TOKEN}).token == TOKEN, "a given token is used on loopback too"
    for bad in (
        "",
        "web",
        "80808",
        "-1",
        "host:",
        ":8080",
        "1.2.3.4:80:81",
        "[::1]8080",
        "[nope]:80",
        "a b:80",
        "8080x",
    ):
        with pytest.raises(ConfigError, match="--web"):
            parse_web(bad, env={})
    with pytest.raises(ConfigError, match=TOKEN_ENV):
        parse_web("0.0.0.0:8080", env={TOKEN_ENV: "short"})
    with pytest.raises(ConfigError, match="question_chars"):
        WebLimits(question_chars=0)


def test_banner_prints_a_generated_token_but_not_a_given_one(serve) -> None:
    view, _ = serve(token=TOKEN)
    assert view.banner.startswith(f"web view: http://127.0.0.1:{view.port}/?token={TOKEN}")
    env_view = WebView(parse_web("127.0.0.1:0", env={TOKEN_ENV: TOKEN}), queue.Queue())
    try:
        assert TOKEN not in env_view.banner and f"?token=${TOKEN_ENV}" in env_view.banner
    finally:
        env_view.close()


def test_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"port {port} is in use"):
            WebView(parse_web(f"127.0.0.1:{port}", env={}), queue.Queue())
        result = CliRunner().invoke(
            app, ["live", "--source", str(DEMO), "--web", f"127.0.0.1:{port}", "-o", str(tmp_path / "s.jsonl")]
        )
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: --web 127.0.0.1:{port}: port {port} is in use (choose another, or 0 for any free port)"
    ]
    bad = CliRunner().invoke(app, ["live", "--source", str(DEMO), "--web", "localhost:99999"])
    assert bad.exit_code == 1 and bad.stderr.startswith("error: --web expects [HOST:]PORT")


# ---------------------------------------------------------------------------- token, host, static files


def test_every_route_needs_the_token(serve) -> None:
    view, questions = serve(token=TOKEN)
    for method, path in ROUTES:
        body = b'{"question": "q"}' if method == "POST" else None
        json_ct = {"Content-Type": "application/json"}
        assert request(view, method, path, body=body, headers=json_ct)[0] == 401, path
        assert request(view, method, path + "?token=wrong-token-0123456789", body=body, headers=json_ct)[0] == 403, path
        assert request(view, method, path, body=body, headers={**json_ct, "X-Vrex-Token": TOKEN[:-1] + "X"})[0] == 403
        assert request(view, method, path, body=body, headers={**json_ct, "Authorization": "Bearer nope"})[0] == 403
        ok_query = request(view, method, path + f"?token={TOKEN}", body=body, headers=json_ct)[0]
        ok_header = request(view, method, path, body=body, headers={**json_ct, "X-Vrex-Token": TOKEN})[0]
        expected = {"/nothing-here": 404, "/frame.jpg": 404, "/ask": 202}.get(path, 200)  # no frame published yet
        assert ok_query == expected and ok_header in (expected, 429), (path, ok_query, ok_header)
    assert questions.qsize() >= 1
    # the page links its assets with the token, so the browser sends it on every request
    page = request(view, "GET", f"/?token={TOKEN}")[2].decode()
    assert f'src="app.js?token={TOKEN}"' in page and f'href="style.css?token={TOKEN}"' in page


def test_without_a_token_only_loopback_host_names_are_served(serve) -> None:
    view, _ = serve()
    assert request(view, "GET", "/")[0] == 200
    assert request(view, "GET", "/", headers={"Host": f"localhost:{view.port}"})[0] == 200
    assert request(view, "GET", "/", headers={"Host": f"evil.example:{view.port}"})[0] == 403  # DNS rebinding
    page = request(view, "GET", "/")[2].decode()
    assert 'src="app.js"' in page and "__QUERY__" not in page


def test_only_the_fixed_static_files_are_served(serve) -> None:
    view, _ = serve()
    status, headers, body = request(view, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in headers["content-security-policy"] and headers["x-content-type-options"] == "nosniff"
    assert b"<title>vrex-edge live</title>" in body
    assert request(view, "GET", "/app.js")[1]["content-type"].startswith("text/javascript")
    for path in (
        "/../pyproject.toml",
        "/static/app.js",
        "/%2e%2e/pyproject.toml",
        "/app.js/../server.py",
        "//etc/passwd",
        "/server.py",
        "/__init__.py",
        "/index.htm",
        "/App.js",
        "/..%2fserver.py",
    ):
        assert request(view, "GET", path)[0] == 404, path
    assert request(view, "POST", "/app.js", body=b"", headers={"Content-Type": "application/json"})[0] == 405
    assert request(view, "GET", "/ask")[0] == 405
    assert request(view, "DELETE", "/")[0] == 501


def test_static_files_set_data_as_text_only() -> None:
    js = (ROOT / "vrex_edge" / "web" / "static" / "app.js").read_text()
    assert "textContent" in js
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in js, sink


# ---------------------------------------------------------------------------- escaping and limits


def test_records_travel_as_json_and_cannot_inject_events(serve) -> None:
    view, _ = serve()
    nasty = '<img src=x onerror=alert(1)>\n\nevent: end\ndata: {}\n\n"quotes" & \u2028'
    view.record(1.5, nasty, None)
    view.record(2.0, "an answer", "<script>q</script>")
    view.hub.update(state="running")
    events = sse_events(view, until="status")
    assert [e for e, _ in events] == ["hello", "record", "record", "status"]
    assert events[0][1]["title"] == "rtsp://cam.local:554/live", "no credentials shown to viewers"
    assert events[1][1] == {"id": 1, "t": 1.5, "text": nasty, "question": None}
    assert events[2][1]["question"] == "<script>q</script>"
    assert sse_events(view, until="status")[1][1]["text"] == nasty, "a new viewer gets the history"


def test_status_reaches_a_viewer_at_most_status_hz(serve) -> None:
    view, _ = serve(status_hz=4)
    got: list[list[str]] = []
    reader = threading.Thread(target=lambda: got.append(sse_for(view, 1.5)))
    reader.start()
    time.sleep(0.2)
    for i in range(200):  # 200 updates/s for a second, a caption every 0.1 s
        view.hub.update(frame_ms=float(i))
        if i % 20 == 0:
            view.record(i / 200, f"caption {i}", None)
        time.sleep(0.005)
    reader.join()
    events = got[0]
    assert events[0] == "hello" and events.count("record") == 10, "records are sent as they come"
    assert 2 <= events.count("status") <= 7, events.count("status")


def test_question_limits(serve) -> None:
    view, questions = serve(
        question_chars=30, body_bytes=256, question_burst=2, question_every_s=60, pending_questions=3
    )
    assert ask(view, "  where is\tthe\nred\x00square ?\u202e ") == (202, {"question": "where is the red square ?"})
    assert ask(view, "x" * 31)[0] == 400 and ask(view, " \n ")[0] == 400 and ask(view, 42)[0] == 400
    status, _, body = request(
        view,
        "POST",
        "/ask",
        body=json.dumps({"question": "y" * 300}).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert status == 413 and b"256 bytes" in body
    assert request(view, "POST", "/ask", body=b"question=x", headers={"Content-Type": "text/plain"})[0] == 415
    assert request(view, "POST", "/ask", body=b"{not json", headers={"Content-Type": "application/json"})[0] == 400
    assert ask(view, "cross", Origin="http://evil.example")[0] == 403
    assert ask(view, "second")[0] == 202
    status, headers, body = request(
        view, "POST", "/ask", body=b'{"question": "third"}', headers={"Content-Type": "application/json"}
    )
    assert status == 429 and int(headers["retry-after"]) >= 1, "the burst is spent: one question per minute now"
    assert [questions.get_nowait() for _ in range(questions.qsize())] == ["where is the red square ?", "second"]


def test_waiting_questions_are_bounded(serve) -> None:
    view, questions = serve(question_burst=10, pending_questions=2)
    assert [ask(view, f"q{i}")[0] for i in range(4)] == [202, 202, 429, 429]
    questions.get_nowait()
    assert ask(view, "q4")[0] == 202


def test_clean_question_and_public_name() -> None:
    assert clean_question("a\r\nb\u200bc\x1b[31m") == "a b c [31m"
    assert public_name("rtsp://admin:hunter2@10.0.0.2:554/h264?auth=x") == "rtsp://10.0.0.2:554/h264"
    assert public_name("samples/world_demo.mp4") == "samples/world_demo.mp4"


def test_publish_calls_fill_the_status_and_read_stats_sparingly(serve) -> None:
    view, _ = serve(status_hz=4)
    calls = []

    def stats() -> Stats:
        calls.append(1)
        return Stats(
            frames=1,
            tokens=20,
            frame_ms_mean=1,
            frame_ms_median=1,
            frame_ms_p95=1,
            fps=1,
            cache_bytes=2048,
            retrieval={"prefill_kept_fraction": 0.25, "decode_kept_fraction": 0.5},
        )

    for i in range(50):
        view.frame(FrameProcessed(i, i / 2, {"total": 12.5}, 10 * i, False, None), stats)
    view.status(
        LiveStatus(
            CaptureStatus(captured=40, sampled=40, dropped=3, state="stalled", message="retrying"),
            processed=20,
            elapsed=10.0,
            lag_ms=250.0,
        )
    )
    assert len(calls) == 1, "session.stats runs at most status_hz times a second, not per frame"
    _, status = view.hub.status()
    assert status["frame_ms"] == 12.5 and status["cache_tokens"] == 490 and status["cache_bytes"] == 2048
    assert status["kept_prefill"] == 0.25 and status["frame_t"] is None
    assert (status["captured_fps"], status["processed_fps"], status["dropped"], status["lag_ms"]) == (
        4.0,
        2.0,
        3,
        250.0,
    )
    assert (status["state"], status["message"]) == ("stalled", "retrying")


# ---------------------------------------------------------------------------- viewers that stall


def noise(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, (480, 640, 3), dtype=np.uint8)  # ~200 KB as JPEG


def test_stalled_viewers_are_dropped_without_slowing_publish(serve) -> None:
    view, _ = serve(io_timeout_s=0.5, stream_fps=100, viewers=8)
    stalled = []
    for _ in range(3):  # connect, ask for the video, never read
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", view.port))
        s.sendall(b"GET /stream.mjpg HTTP/1.0\r\n\r\n")
        stalled.append(s)
    got = []

    def healthy() -> None:
        conn = socket.create_connection(("127.0.0.1", view.port), timeout=5)
        conn.sendall(b"GET /stream.mjpg HTTP/1.0\r\n\r\n")
        data = b""
        while (chunk := conn.recv(1 << 16)) and len(got) < 20:
            data += chunk
            got.extend([1] * data.count(b"Content-Type: image/jpeg"))
            data = data[-64:]
        conn.close()

    reader = threading.Thread(target=healthy, daemon=True)
    reader.start()
    frames = [noise(i) for i in range(8)]
    worst, start = 0.0, time.monotonic()
    i = 0
    while time.monotonic() - start < 2.5:
        t0 = time.perf_counter()
        view.image(i * 0.1, frames[i % len(frames)])
        view.record(i * 0.1, f"caption {i}", None)
        worst = max(worst, time.perf_counter() - t0)
        i += 1
        time.sleep(0.01)
    reader.join(5)
    assert worst < 0.25, f"a publish call took {worst * 1000:.0f} ms"
    assert len(got) >= 5, "a viewer that reads kept getting frames beside the stalled ones"
    deadline = time.monotonic() + 3
    while view.dropped < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert view.dropped >= 3 and view.viewers["stream"] <= 1, (view.dropped, view.viewers)
    for s in stalled:
        s.close()


def test_viewers_are_capped_and_told_when_the_stream_ends(serve) -> None:
    view, _ = serve(viewers=2)
    held = [socket.create_connection(("127.0.0.1", view.port)) for _ in range(2)]
    for s in held:
        s.sendall(b"GET /stream.mjpg HTTP/1.0\r\n\r\n")
        assert s.recv(64).startswith(b"HTTP/1.0 200")
    assert request(view, "GET", "/stream.mjpg")[0] == 503
    view.image(0.5, np.zeros((48, 64, 3), np.uint8))
    status, headers, data = request(view, "GET", "/frame.jpg")
    assert status == 200 and data[:2] == b"\xff\xd8" and headers["x-stream-time"] == "0.500"
    ended: list[list[tuple[str, dict]]] = []
    listener = threading.Thread(target=lambda: ended.append(sse_events(view, until="end")), daemon=True)
    listener.start()
    time.sleep(0.3)
    view.close()
    listener.join(3)
    assert ended and ended[0][-1] == ("end", {})
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", view.port), timeout=1)
    for s in held:
        s.close()


# ---------------------------------------------------------------------------- the page in a real browser

FRAME_HASH = """(() => { const i = document.getElementById('frame'); if (!i.naturalWidth) return null;
  const c = document.createElement('canvas'); c.width = i.naturalWidth; c.height = i.naturalHeight;
  const g = c.getContext('2d'); g.drawImage(i, 0, 0); const d = g.getImageData(0, 0, c.width, c.height).data;
  let h = 0; for (let k = 0; k < d.length; k += 3) h = (h * 31 + d[k]) >>> 0; return h; })()"""


def read_banner(proc: subprocess.Popen, timeout: float = 60.0) -> str:
    deadline, seen = time.monotonic() + timeout, ""
    while time.monotonic() < deadline and proc.poll() is None:
        if select.select([proc.stderr], [], [], 0.2)[0]:
            line = proc.stderr.readline()
            seen += line
            if line.startswith("web view: "):
                return line
    raise AssertionError(f"no web view line from the CLI: {seen!r}")


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"headless Chromium not installed at {CHROMIUM} (apt-get install chromium)"
)
def test_page_in_headless_chromium(tmp_path: Path) -> None:
    """`vrex-edge live --source samples/world_demo.mp4 --web 127.0.0.1:0`: the page shows frames that
    advance, the narration, and answers a question typed into it; Ctrl-C stops the server.
    VREX_WEB_SCREENSHOT=docs/web.png saves the page."""
    out = tmp_path / "session.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vrex_edge.cli",
            "live",
            "--source",
            str(DEMO.relative_to(ROOT)),
            "--web",
            "127.0.0.1:0",
            "--threads",
            "1",
            "-o",
            str(out),
        ],
        cwd=ROOT,
        text=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = re.search(r"http://\S+", read_banner(proc)).group(0)
        port = int(url.rsplit(":", 1)[1].strip("/"))
        with Browser() as b:
            b.open(url)
            assert b.eval("document.title") == "vrex-edge live"
            b.wait_for("document.getElementById('conn').textContent === 'live'")
            first = b.wait_for(FRAME_HASH)
            t_first = b.eval("document.getElementById('frame-time').textContent")
            b.wait_for(f"(h => h !== null && h !== {first})({FRAME_HASH})", timeout=5)  # frames advance
            b.wait_for(f"document.getElementById('frame-time').textContent > '{t_first}'", timeout=5)
            caption = b.wait_for(
                "document.querySelector('#records li:not(.answer):not(.empty) .text')?.textContent", timeout=30
            )
            assert "enters" in caption
            assert b.eval("document.getElementById('s-processed').textContent").endswith("fps")
            b.eval("document.getElementById('question').focus()")
            b.type("how many objects are there ?")
            b.wait_for("document.querySelector('#records li.answer .a')?.textContent", timeout=15)
            b.eval("document.getElementById('question').focus()")
            b.type("<b>bold</b> & co")
            shown = b.wait_for(
                "[...document.querySelectorAll('#records li.answer .q')].map(e => e.textContent)"
                ".find(t => t.includes('bold'))",
                timeout=15,
            )
            assert shown == "<b>bold</b> & co" and b.eval("document.querySelector('#records b')") is None
            if os.environ.get("VREX_WEB_SCREENSHOT"):  # with a few more captions in it
                b.wait_for("document.querySelectorAll('#records li:not(.answer)').length >= 6", timeout=60)
                b.eval("document.getElementById('ask-status').textContent = ''")
                time.sleep(0.5)
                b.screenshot(Path(os.environ["VREX_WEB_SCREENSHOT"]))
            proc.send_signal(signal.SIGINT)  # the first Ctrl-C ends the stream cleanly
            assert proc.wait(timeout=20) == 0
            b.wait_for("document.getElementById('conn').textContent === 'stream ended'", timeout=5)
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert any(r["kind"] == "answer" and r["question"] == "how many objects are there ?" for r in records)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"headless Chromium not installed at {CHROMIUM} (apt-get install chromium)"
)
def test_page_with_a_token_shows_markup_as_text(serve) -> None:
    """A token-protected server fed by the test: the page carries the token on every request (the
    assets, the video, the events, the question) and shows model output with markup as text."""
    view, questions = serve(token=TOKEN)
    with Browser() as b:
        b.open(f"http://127.0.0.1:{view.port}/?token={TOKEN}")
        b.wait_for("document.getElementById('conn').textContent === 'live'")
        assert b.eval("getComputedStyle(document.body).backgroundColor") == "rgb(17, 20, 24)", "style.css loaded"
        for i in range(3):
            view.image(0.5 * i, np.full((32, 32, 3), 80 * i, np.uint8))
            time.sleep(0.2)
        b.wait_for("document.getElementById('frame').naturalWidth === 32")
        view.record(1.0, '<img src=x onerror="document.title=1">caption', None)
        view.status(LiveStatus(CaptureStatus(captured=4, sampled=4, dropped=1, state="running"), 2, 2.0, 12.0))
        text = b.wait_for("document.querySelector('#records li .text')?.textContent")
        assert text == '<img src=x onerror="document.title=1">caption'
        assert b.eval("document.querySelectorAll('#records img').length") == 0 and b.eval("document.title") != "1"
        b.wait_for("document.getElementById('s-dropped').textContent === '1'")
        assert b.eval("document.getElementById('frame-time').textContent") == "00:00:01.000"
        b.eval("document.getElementById('question').focus()")
        b.type("where is the red square ?")
        assert questions.get(timeout=5) == "where is the red square ?"
        b.wait_for("document.getElementById('ask-status').textContent.startsWith('asked')")
        view.record(1.2, "top left", "where is the red square ?")
        assert b.wait_for("document.querySelector('#records li.answer .a')?.textContent") == "top left"
