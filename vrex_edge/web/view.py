"""WebView: the publish API the live loop calls, in front of the hub and the HTTP server.

    web = WebView(parse_web("8080"), questions, title=reader.name).start()
    web.image(t, bgr)              # on_frame: the frame the model takes next
    web.frame(event, session.stats)  # FrameProcessed (+ stats, for the cache bytes and kept fraction)
    web.record(t, text, question)  # a caption (question None) or an answer
    web.status(live_status)        # LiveStatus: rates, dropped frames, lag, source state
    web.close()                    # viewers get "end", connections are cut, the thread joins

Every publish call returns at once; questions typed in the page arrive on `questions`.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from vrex_edge.web.config import TOKEN_ENV, WebConfig
from vrex_edge.web.hub import Hub
from vrex_edge.web.server import bind, public_name

if TYPE_CHECKING:
    from vrex_edge.runtime.events import FrameProcessed, Stats
    from vrex_edge.runtime.live import LiveStatus


class WebView:
    """One live stream served over HTTP. Binding happens here (ConfigError if it cannot); start() serves."""

    def __init__(self, config: WebConfig, questions: queue.Queue[str], *, title: str = ""):
        self.config = config
        self.hub = Hub(jpeg_quality=config.limits.jpeg_quality, max_side=config.limits.max_side)
        self.server = bind(config, hub=self.hub, questions=questions, title=public_name(title))
        self.port = self.server.server_port
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.2}, name="vrex-web", daemon=True
        )
        self._closed = False
        self._stats_due = 0.0

    def start(self) -> WebView:
        self._thread.start()
        return self

    def __enter__(self) -> WebView:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        """The page's address; with the token in it when one is needed."""
        host = self.config.host
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()  # a wildcard bind: the name other machines use
        host = f"[{host}]" if ":" in host else host
        token = f"?token={self.config.token}" if self.config.token else ""
        return f"http://{host}:{self.port}/{token}"

    @property
    def banner(self) -> str:
        """One line for the user: where to look, and what the token means."""
        if self.config.token is None:
            return f"web view: {self.url}"
        if self.config.token_from_env:
            return f"web view: {self.url.split('?')[0]}?token=${TOKEN_ENV}"
        return f"web view: {self.url}  (the token is the key: anyone with this link can watch and ask)"

    # ------------------------------------------------------------------ publish (live loop thread)

    def image(self, t: float, bgr: np.ndarray) -> None:
        """The frame at stream time t, BGR uint8 [h, w, 3]; kept by reference (do not modify it)."""
        self.hub.frame(t, bgr)

    def frame(self, event: FrameProcessed, stats: Callable[[], Stats] | None = None) -> None:
        """A processed frame; `stats` (e.g. session.stats, for the cache bytes and kept fraction) is
        called at most status_hz times a second, on the caller's thread."""
        fields: dict[str, object] = {"frame_ms": event.timings_ms.get("total", 0.0), "cache_tokens": event.cache_tokens}
        now = time.monotonic()
        if stats is not None and now >= self._stats_due:
            self._stats_due = now + 1.0 / self.config.limits.status_hz
            st = stats()
            fields["cache_bytes"] = st.cache_bytes
            fields["kept_prefill"] = st.retrieval.get("prefill_kept_fraction")
            fields["kept_decode"] = st.retrieval.get("decode_kept_fraction")
        self.hub.update(**fields)

    def record(self, t: float, text: str, question: str | None = None) -> None:
        self.hub.record(t, text, question)

    def status(self, status: LiveStatus) -> None:
        el, cap = max(status.elapsed, 1e-6), status.capture
        self.hub.update(
            captured=cap.captured,
            processed=status.processed,
            dropped=cap.dropped,
            captured_fps=cap.captured / el,
            processed_fps=status.processed / el,
            lag_ms=status.lag_ms,
            state=cap.state,
            message=cap.message,
            elapsed=status.elapsed,
        )

    # ------------------------------------------------------------------ stop

    def close(self, timeout: float = 2.0) -> None:
        """Tell viewers the stream ended, stop accepting, cut what is left; idempotent."""
        if self._closed:
            return
        self._closed = True
        self.hub.close()
        if self._thread.is_alive():
            self.server.shutdown()
            self._thread.join(timeout)
        with self.server.lock:  # viewers' threads leave on hub.closed; give them a moment to send "end"
            self.server.lock.wait_for(lambda: not self.server.connections, min(0.5, timeout))
        self.server.cut_all(timeout)
        self.server.server_close()

    @property
    def viewers(self) -> dict[str, int]:
        with self.server.lock:
            return dict(self.server.viewers)

    @property
    def dropped(self) -> int:
        """Viewers cut off so far (stalled past the timeout, or gone)."""
        with self.server.lock:
            return self.server.dropped
