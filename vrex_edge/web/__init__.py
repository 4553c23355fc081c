"""A web view of the live stream: `vrex-edge live ... --web [HOST:]PORT` (docs: README, "Web view").

The standard library serves it (http.server, MJPEG, server-sent events); the page is the static
files in static/, with no build step.
"""

from vrex_edge.web.config import TOKEN_ENV, WebConfig, WebLimits, parse_web
from vrex_edge.web.view import WebView

__all__ = ["TOKEN_ENV", "WebConfig", "WebLimits", "WebView", "parse_web"]
