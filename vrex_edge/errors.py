"""User-facing errors. The CLI prints `error: <message>` and exits non-zero for each."""

from __future__ import annotations


class VrexError(Exception):
    """Base of every error a user can cause or fix. Messages say what to do."""

    exit_code = 1


class BundleError(VrexError):
    """A model bundle is missing, malformed, or fails validation."""


class ExportError(VrexError):
    """A model cannot be exported (unknown family, unreadable source, parity failure)."""


class SourceError(VrexError):
    """A video file, camera or stream cannot be opened or decoded."""


class IncompleteInputError(SourceError):
    """A video ended before the frames its container states (truncated or damaged); what decoded was processed."""

    exit_code = 3


class ConfigError(VrexError):
    """An option or a combination of options is invalid."""


class AccelError(VrexError):
    """A retrieval backend is unavailable or failed."""


class KVStoreError(VrexError):
    """The on-disk KV store failed (disk full, write error) or a kept store cannot be resumed."""


class OutputError(VrexError):
    """An output file cannot be created or written (permissions, read-only or full disk)."""
