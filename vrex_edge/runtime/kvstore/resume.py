"""Saving a kept store's session state and resuming it (`--keep-kv DIR`, then `--resume DIR`).

The cold logs are already on disk; what is saved beside them is everything else a stream needs
to go on exactly as if it had not stopped: the session's position, pending tokens and last
hidden state, and per layer the sink, recent window, open clusters, cluster tables and
selection-reuse state. The hot cache is not saved (it only changes what is read, not results).

Format (version 2, no pickle): `state.json` holds the metadata and the state as plain JSON in
which every array is a reference {"@a": name} into `state-<n>.npz` (read with
allow_pickle=False); the few runtime objects in the state (Ring, LayerStats, PhaseTotals) are
{"@o": kind, "v": fields}, rebuilt from a fixed list of classes. state.json is replaced last
and atomically, so a crash while saving leaves the previous state whole.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from vrex_edge.errors import KVStoreError
from vrex_edge.runtime.kvcache import LayerStats
from vrex_edge.runtime.retrieval.base import PhaseTotals, Ring

FORMAT = 2
STATE = "state.json"
SKIP_CACHE = {"rope", "table", "backend", "store", "buf_k", "buf_v", "buf_pos", "workspace", "gatherer", "engine"}
SKIP_STORE = {"backend", "tier", "planes", "sealed", "pending", "archive"}
SESSION = ("position", "_pending", "_last_hidden", "_prev_silent", "_started", "_counts", "_kept")
OBJECTS: dict[str, type] = {"Ring": Ring, "LayerStats": LayerStats, "PhaseTotals": PhaseTotals}


class _Encoder:
    """Plain values -> JSON-able values; arrays go to `arrays` under generated names."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def __call__(self, x: Any, where: str) -> Any:
        if x is None or isinstance(x, bool | int | float | str):
            return x
        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, np.ndarray):
            if x.dtype == object:
                raise KVStoreError(f"cannot keep the KV store: {where} holds Python objects")
            name = f"a{len(self.arrays)}"
            self.arrays[name] = x
            return {"@a": name}
        if isinstance(x, list | tuple):
            items = [self(v, f"{where}[{i}]") for i, v in enumerate(x)]
            return items if isinstance(x, list) else {"@t": items}
        if isinstance(x, dict):
            if not all(isinstance(k, str) for k in x):
                raise KVStoreError(f"cannot keep the KV store: {where} has non-text keys")
            return {"@d": {k: self(v, f"{where}.{k}") for k, v in x.items()}}
        kind = type(x).__name__
        if OBJECTS.get(kind) is type(x):
            fields = vars(x) if not dataclasses.is_dataclass(x) else {f.name: getattr(x, f.name) for f in dataclasses.fields(x)}
            return {"@o": kind, "v": self(dict(fields), f"{where}<{kind}>")}
        raise KVStoreError(f"cannot keep the KV store: {where} is a {kind}, which the state format does not hold")


def _decode(x: Any, arrays: Any) -> Any:
    if isinstance(x, list):
        return [_decode(v, arrays) for v in x]
    if not isinstance(x, dict):
        return x
    if "@a" in x:
        return arrays[x["@a"]]
    if "@t" in x:
        return tuple(_decode(v, arrays) for v in x["@t"])
    if "@d" in x:
        return {k: _decode(v, arrays) for k, v in x["@d"].items()}
    if "@o" in x:
        cls = OBJECTS[x["@o"]]  # KeyError: not one of ours -> malformed
        fields = _decode(x["v"], arrays)
        if dataclasses.is_dataclass(cls):
            return cls(**fields)
        obj = cls.__new__(cls)
        vars(obj).update(fields)
        return obj
    raise ValueError(f"unknown entry {sorted(x)[:3]}")


def _meta(mgr: Any, session: Any) -> dict[str, Any]:
    text = session.model.text
    return {"model": session.model.manifest.name, "layers": text.num_layers,
            "kv_heads": text.num_kv_heads, "head_dim": text.head_dim, "policy": session.policy,
            "options": {k: str(v) for k, v in sorted(mgr.policy_options.items())}}


def _write_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fields(obj: Any, skip: set[str]) -> dict[str, Any]:
    return {k: v for k, v in vars(obj).items() if k not in skip}


def save(mgr: Any, session: Any, folder: Path, *, stream_time: float | None) -> None:
    enc = _Encoder()
    layers = []
    for i, (c, log) in enumerate(zip(mgr.caches, mgr.logs, strict=True)):
        st = c.store
        layers.append({
            "cache": enc(_fields(c, SKIP_CACHE), f"layer {i}"),
            "store": enc(_fields(st, SKIP_STORE), f"layer {i} store"),
            "pending": enc([[r.k[: r.n], r.v[: r.n], r.pos[: r.n], r.owner[: r.n], r.dead] for r in st.pending],
                           f"layer {i} open area"),
            "log": log.state(),
        })
        log.sync()
    sess = enc({k: getattr(session, k) for k in SESSION}, "session")
    old = _read_json(folder / STATE) if (folder / STATE).is_file() else None
    serial = (int(old.get("serial", 0)) + 1) if isinstance(old, dict) else 1
    npz = f"state-{serial}.npz"
    _write_atomic(folder / npz, lambda f: np.savez(f, **enc.arrays))
    # the workspace's capacity too: BLAS may sum in another order for another row stride
    doc = {"format": "vrex-kv-state", "format_version": FORMAT, "serial": serial, "arrays": npz,
           "meta": _meta(mgr, session), "stream_time": stream_time, "workspace": int(mgr.workspace.k.shape[1]),
           "session": sess, "layers": layers}
    _write_atomic(folder / STATE, lambda f: f.write(json.dumps(doc, separators=(",", ":")).encode()))
    for p in folder.glob("state-*.npz"):  # earlier states
        if p.name != npz:
            p.unlink(missing_ok=True)
    (folder / "state.pkl").unlink(missing_ok=True)  # a format-1 state this one replaces


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise KVStoreError(f"cannot resume {path.parent}: {path.name} is unreadable or malformed ({e})") from None


def _check_arrays(name: str, new: dict[str, Any], old: dict[str, Any]) -> None:
    """Arrays restored over arrays must keep their dtype and rank (their capacity may differ)."""
    for k, v in new.items():
        cur = old.get(k)
        if isinstance(cur, np.ndarray) and (not isinstance(v, np.ndarray) or v.dtype != cur.dtype or v.ndim != cur.ndim):
            raise ValueError(f"{name}.{k} has the wrong type or shape")


def restore(mgr: Any, session: Any, folder: Path) -> None:
    path = folder / STATE
    if not path.is_file():
        hint = " (it was kept by an older vrex-edge: start a new stream)" if (folder / "state.pkl").is_file() else ""
        raise KVStoreError(f"nothing to resume in {folder}: no saved state (was it kept with --keep-kv "
                           f"and did that run end cleanly?){hint}")
    doc = _read_json(path)
    if not isinstance(doc, dict) or doc.get("format") != "vrex-kv-state":
        raise KVStoreError(f"cannot resume {folder}: {STATE} is not a vrex-edge KV state")
    if doc.get("format_version") != FORMAT:
        raise KVStoreError(f"cannot resume {folder}: it was written by another vrex-edge version "
                           f"(state format {doc.get('format_version')}, this one reads {FORMAT})")
    meta, want = doc.get("meta") or {}, _meta(mgr, session)
    diff = [k for k in want if meta.get(k) != want[k]]
    if diff:
        raise KVStoreError(f"cannot resume {folder}: it was recorded with a different {', '.join(diff)} "
                           f"({'; '.join(f'{k}={meta.get(k)} now {want[k]}' for k in diff)})")
    try:
        with np.load(folder / str(doc["arrays"]), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        state = {"session": _decode(doc["session"], arrays),
                 "layers": [{k: v if k == "log" else _decode(v, arrays) for k, v in layer.items()}
                            for layer in doc["layers"]]}
        if len(state["layers"]) != len(mgr.caches):
            raise ValueError("layer count")
        for i, (c, log, s) in enumerate(zip(mgr.caches, mgr.logs, state["layers"], strict=True)):
            cache, store = s["cache"], s["store"]
            _check_arrays(f"layer {i}", cache, vars(c))
            _check_arrays(f"layer {i} store", store, vars(c.store))
            vars(c).update(cache)
            vars(c.store).update(store)
            for r, (k, v, pos, owner, dead) in zip(c.store.pending, s["pending"], strict=True):
                r.append(k, v, pos, owner)
                r.dead = int(dead)
            log.restore(s["log"])
        for k, v in state["session"].items():
            if k in SESSION:
                setattr(session, k, v)
        mgr.resumed_time = None if doc.get("stream_time") is None else float(doc["stream_time"])
        ws = int(doc["workspace"])
    except KVStoreError:
        raise
    except (OSError, KeyError, IndexError, TypeError, ValueError, zipfile.BadZipFile) as e:
        raise KVStoreError(f"cannot resume {folder}: the saved state is malformed or incomplete "
                           f"({type(e).__name__}: {e})") from None
    mgr.workspace.grow(ws)
