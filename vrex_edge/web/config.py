"""What `--web [HOST:]PORT` means: where to bind, whether a token is needed, and the limits.

Binding stays on 127.0.0.1 unless a host is given; a bind that is not loopback always needs a
token (from $VREX_EDGE_WEB_TOKEN, else generated here). Everything is checked before any socket
is opened, so a bad value is a one-line ConfigError.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from vrex_edge.errors import ConfigError

TOKEN_ENV = "VREX_EDGE_WEB_TOKEN"
DEFAULT_HOST = "127.0.0.1"
_TOKEN_RE = re.compile(r"[A-Za-z0-9._~-]{16,128}")  # URL-safe, so it travels in a query string as is
_HOST_RE = re.compile(r"[A-Za-z0-9.-]{1,253}")


@dataclass(frozen=True)
class WebLimits:
    """Bounds on what viewers can make the server do. Checked in __post_init__."""

    body_bytes: int = 4096  # largest request body (POST /ask)
    question_chars: int = 300  # longest question
    question_burst: int = 3  # questions accepted at once...
    question_every_s: float = 2.0  # ...then one per this many seconds (all viewers together)
    pending_questions: int = 4  # questions waiting for the model before /ask answers 429
    viewers: int = 32  # concurrent video streams, and separately concurrent event streams
    io_timeout_s: float = 5.0  # a viewer that neither reads nor sends for this long is dropped
    stream_fps: float = 15.0  # most JPEG frames per second sent to one viewer
    status_hz: float = 4.0  # most status updates per second sent to one viewer
    jpeg_quality: int = 80
    max_side: int = 960  # frames are downscaled to this many pixels on their longer side

    def __post_init__(self) -> None:
        for name in ("body_bytes", "question_chars", "question_burst", "pending_questions", "viewers", "max_side"):
            if getattr(self, name) < 1:
                raise ConfigError(f"web limit {name} must be >= 1, got {getattr(self, name)}")
        for name in ("question_every_s", "io_timeout_s", "stream_fps", "status_hz"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"web limit {name} must be > 0, got {getattr(self, name)}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"web limit jpeg_quality must be in 1..100, got {self.jpeg_quality}")


@dataclass(frozen=True)
class WebConfig:
    """A parsed --web value. token None: no token (loopback only); token_from_env: do not print it."""

    host: str
    port: int
    token: str | None
    token_from_env: bool = False
    limits: WebLimits = WebLimits()

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    """True for localhost and loopback IP literals; names are not resolved (a name is not loopback)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_web(value: str, *, env: Mapping[str, str] = os.environ, limits: WebLimits | None = None) -> WebConfig:
    """'PORT', 'HOST:PORT' or '[IPv6]:PORT' -> WebConfig. Port 0 picks a free port.

    A non-loopback host gets the token in env[TOKEN_ENV] or a new random one; a loopback host
    uses env[TOKEN_ENV] when set and no token otherwise.
    """
    usage = f"--web expects [HOST:]PORT, e.g. 8080 or 0.0.0.0:8080, got {value!r}"
    text = value.strip()
    if text.startswith("["):  # [::1]:8080
        host, sep, port_s = text[1:].partition("]:")
        if not sep:
            raise ConfigError(usage)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"--web: {host!r} is not an IPv6 address") from None
    elif ":" in text:
        host, _, port_s = text.rpartition(":")
        if not _HOST_RE.fullmatch(host):
            raise ConfigError(usage)
    else:
        host, port_s = DEFAULT_HOST, text
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ConfigError(usage)
    given = env.get(TOKEN_ENV)
    if given is not None and not _TOKEN_RE.fullmatch(given):
        raise ConfigError(f"${TOKEN_ENV} must be 16-128 characters from A-Z a-z 0-9 . _ ~ -")
    token = given if given is not None else (None if is_loopback(host) else secrets.token_urlsafe(24))
    return WebConfig(host, int(port_s), token, token_from_env=given is not None, limits=limits or WebLimits())
