"""`vrex-edge live` under a pseudo-terminal (pexpect), shared by the live and KV-tier tests."""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any


def _interactive_signals() -> None:
    """In the child, before exec: Ctrl-C and SIGHUP act as on a user's terminal. A suite started as a
    background job (`cmd &`) inherits SIGINT ignored, and the CLI rightly keeps an ignored signal ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def spawn_cli(args: list[str], *, timeout: float = 30) -> Any:
    import pexpect

    env = {**os.environ, "COLUMNS": "120", "LINES": "40", "TERM": "xterm"}
    gc.collect()  # a child forked with garbage pending could collect it before exec and hang there (seen in test_tiers)
    # codec_errors: a redraw cut by Ctrl-C can end inside a multi-byte box character (a flaky
    # UnicodeDecodeError in the reader, never in what the tests match, which is ASCII)
    child = pexpect.spawn(
        shutil.which("vrex-edge"),
        args,
        env=env,
        encoding="utf-8",
        codec_errors="replace",
        timeout=timeout,
        dimensions=(40, 120),
        preexec_fn=_interactive_signals,
    )
    child.logfile_read = sys.stdout if os.environ.get("VREX_TEST_VERBOSE") else None
    return child


def ask_until_done(child: Any, question: str) -> None:
    """Type `question` at the prompt, then let the stream end; the CLI must exit 0."""
    import pexpect

    child.expect("ask>")
    time.sleep(1.0)
    child.send(question + "\r")
    child.expect("Q: " + question)
    child.expect("live session summary")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def answers(out: Path, question: str) -> list[dict[str, Any]]:
    """The answer records to `question` in a JSON-lines session output."""
    records = [json.loads(line) for line in out.read_text().splitlines()]
    return [r for r in records if r["kind"] == "answer" and r["question"] == question]
