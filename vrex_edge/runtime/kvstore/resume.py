"""Saving a kept store's session state and resuming it (`--keep-kv DIR`, then `--resume DIR`).

The cold logs are already on disk; what is saved beside them is everything else a stream needs
to go on exactly as if it had not stopped: the session's position, pending tokens and last
hidden state, and per layer the sink, recent window, open clusters, cluster tables and
selection-reuse state. The hot cache is not saved (it only changes what is read, not results).
state.pkl is a pickle: resume only folders that this program wrote.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

from vrex_edge.errors import ConfigError
from vrex_edge.runtime.kvstore.config import KVStoreError

FORMAT = 1
STATE, META = "state.pkl", "meta.json"
SKIP_CACHE = {"rope", "table", "backend", "store", "buf_k", "buf_v", "buf_pos", "workspace"}
SKIP_STORE = {"backend", "tier", "planes", "sealed", "pending"}
SESSION = ("position", "_pending", "_last_hidden", "_prev_silent", "_started", "_counts", "_kept")


def _meta(mgr: Any, session: Any) -> dict[str, Any]:
    text = session.model.text
    return {"format": FORMAT, "model": session.model.manifest.name, "layers": text.num_layers,
            "kv_heads": text.num_kv_heads, "head_dim": text.head_dim, "policy": session.policy,
            "options": {k: str(v) for k, v in sorted(mgr.policy_options.items())}}


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(mgr: Any, session: Any, folder: Path, *, stream_time: float | None) -> None:
    layers = []
    for c, log in zip(mgr.caches, mgr.logs, strict=True):
        st = c.store
        layers.append({
            "cache": {k: v for k, v in vars(c).items() if k not in SKIP_CACHE},
            "store": {k: v for k, v in vars(st).items() if k not in SKIP_STORE},
            "pending": [(r.k[: r.n].copy(), r.v[: r.n].copy(), r.pos[: r.n].copy(), r.owner[: r.n].copy(), r.dead)
                        for r in st.pending],
            "log": log.state(),
        })
        log.sync()
    # the workspace's capacity too: BLAS may sum in another order for another row stride
    state = {"session": {k: getattr(session, k) for k in SESSION}, "layers": layers, "stream_time": stream_time,
             "workspace": mgr.workspace.k.shape[1]}
    _write_atomic(folder / STATE, pickle.dumps(state, protocol=5))
    _write_atomic(folder / META, json.dumps(_meta(mgr, session), indent=1).encode())


def restore(mgr: Any, session: Any, folder: Path) -> None:
    if not (folder / STATE).is_file() or not (folder / META).is_file():
        raise KVStoreError(f"nothing to resume in {folder}: no saved state (was it kept with --keep-kv "
                           "and did that run end cleanly?)")
    meta = json.loads((folder / META).read_text())
    want = _meta(mgr, session)
    if meta.get("format") != FORMAT:
        raise KVStoreError(f"{folder} was written by another vrex-edge version (format {meta.get('format')})")
    diff = [k for k in want if k != "format" and meta.get(k) != want[k]]
    if diff:
        raise ConfigError(f"cannot resume {folder}: it was recorded with a different {', '.join(diff)} "
                          f"({', '.join(f'{k}={meta.get(k)}' for k in diff)})")
    with open(folder / STATE, "rb") as f:
        state = pickle.load(f)
    for c, log, s in zip(mgr.caches, mgr.logs, state["layers"], strict=True):
        vars(c).update(s["cache"])
        vars(c.store).update(s["store"])
        for r, (k, v, pos, owner, dead) in zip(c.store.pending, s["pending"], strict=True):
            r.append(k, v, pos, owner)
            r.dead = dead
        log.restore(s["log"])
    for k, v in state["session"].items():
        setattr(session, k, v)
    mgr.resumed_time = state.get("stream_time")
    mgr.workspace.grow(int(state["workspace"]))
