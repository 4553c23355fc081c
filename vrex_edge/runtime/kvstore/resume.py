"""Saving a kept store's session state and resuming it (`--keep-kv DIR`, then `--resume DIR`).

The cold logs are already on disk; what is saved beside them is what the components declare as
their state: the session's (`StreamSession.state`), each layer cache's (`state()`: sink, recent
window, cluster tables, open clusters, selection reuse) and each cold log's. The hot cache and the
attention buffers are not saved (they change what is read, not results).

Format (version 3, no pickle): `state.json` holds the metadata (model dimensions, the policy and
its resolved options) and the states as plain JSON in which every array is a reference
{"@a": name} into `state-<n>.npz` (read with allow_pickle=False). state.json is replaced last and
atomically, so a crash while saving leaves the previous state whole. A resume refuses a store
whose options differ in one that changes results (Options.result_options), naming it.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from vrex_edge.errors import KVStoreError

FORMAT = 3
STATE = "state.json"


def encode(x: Any, arrays: dict[str, np.ndarray], where: str = "state") -> Any:
    """Plain values -> JSON-able values; arrays go to `arrays` under generated names."""
    if x is None or isinstance(x, bool | int | float | str):
        return x
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            raise KVStoreError(f"cannot keep the KV store: {where} holds Python objects")
        name = f"a{len(arrays)}"
        arrays[name] = x
        return {"@a": name}
    if isinstance(x, list | tuple):
        return [encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(x)]
    if isinstance(x, dict) and all(isinstance(k, str) for k in x):
        return {"@d": {k: encode(v, arrays, f"{where}.{k}") for k, v in x.items()}}
    raise KVStoreError(
        f"cannot keep the KV store: {where} is a {type(x).__name__}, which the state format does not hold"
    )


def decode(x: Any, arrays: Any) -> Any:
    if isinstance(x, list):
        return [decode(v, arrays) for v in x]
    if not isinstance(x, dict):
        return x
    if "@a" in x:
        return arrays[x["@a"]]
    if "@d" in x:
        return {k: decode(v, arrays) for k, v in x["@d"].items()}
    raise ValueError(f"unknown entry {sorted(x)[:3]}")


def _meta(session: Any) -> dict[str, Any]:
    text, policy = session.model.text, session.retrieval
    return {
        "model": session.model.manifest.name,
        "layers": text.num_layers,
        "kv_heads": text.num_kv_heads,
        "head_dim": text.head_dim,
        "policy": policy.name,
        "options": policy.options.resolved(),
    }


def _write_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save(mgr: Any, session: Any, folder: Path, *, stream_time: float | None) -> None:
    """Write the state of `session` (whose caches `mgr` holds) into the kept store `folder`."""
    arrays: dict[str, np.ndarray] = {}
    layers = []
    for i, c in enumerate(mgr.caches):
        layers.append({"cache": encode(c.state(), arrays, f"layer {i}"), "log": mgr.logs[i].state()})
    sess = encode(session.state(), arrays, "session")
    old = _read_json(folder / STATE) if (folder / STATE).is_file() else None
    serial = (int(old.get("serial", 0)) + 1) if isinstance(old, dict) else 1
    npz = f"state-{serial}.npz"
    # the workspace's capacity too: BLAS may sum in another order for another row stride
    doc = {
        "format": "vrex-kv-state",
        "format_version": FORMAT,
        "serial": serial,
        "arrays": npz,
        "meta": _meta(session),
        "stream_time": stream_time,
        "workspace": mgr.workspace.capacity,
        "session": sess,
        "layers": layers,
    }
    try:
        for log in mgr.logs:
            log.sync()
        _write_atomic(folder / npz, lambda f: np.savez(f, **arrays))
        _write_atomic(folder / STATE, lambda f: f.write(json.dumps(doc, separators=(",", ":")).encode()))
    except OSError as e:
        (folder / npz).unlink(missing_ok=True)
        raise KVStoreError(
            f"cannot save the KV store's state in {folder}: {e.strerror or e}; the previous state (if any) is unchanged"
        ) from None
    for p in folder.glob("state-*.npz"):  # earlier states
        if p.name != npz:
            p.unlink(missing_ok=True)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise KVStoreError(f"cannot resume {path.parent}: {path.name} is unreadable or malformed ({e})") from None


def _check_meta(
    folder: Path, meta: dict[str, Any], want: dict[str, Any], result_options: tuple[str, ...], absent: dict[str, Any]
) -> None:
    diff = [k for k in ("model", "layers", "kv_heads", "head_dim", "policy") if meta.get(k) != want[k]]
    if diff:
        raise KVStoreError(
            f"cannot resume {folder}: it was recorded with a different {', '.join(diff)} "
            f"({'; '.join(f'{k}={meta.get(k)} now {want[k]}' for k in diff)})"
        )
    kept, now = {**absent, **(meta.get("options") or {})}, want["options"]
    changed = [k for k in result_options if k in now and kept.get(k) != now[k]]
    if changed:
        k = changed[0]
        raise KVStoreError(
            f"cannot resume {folder}: it was recorded with different options ({want['policy']} option "
            f"{k}={kept.get(k)}, now {now[k]}, which changes results); resume with --opt {k}={kept.get(k)}"
        )


def restore(mgr: Any, session: Any, folder: Path) -> float | None:
    """Restore the stream kept in `folder` into `session` (built with the same model and options)
    -> the stream time it goes on from (None if the first run did not say)."""
    path = folder / STATE
    if not path.is_file():
        hint = " (it was kept by an older vrex-edge: start a new stream)" if (folder / "state.pkl").is_file() else ""
        raise KVStoreError(
            f"nothing to resume in {folder}: no saved state (was it kept with --keep-kv "
            f"and did that run end cleanly?){hint}"
        )
    doc = _read_json(path)
    if not isinstance(doc, dict) or doc.get("format") != "vrex-kv-state":
        raise KVStoreError(f"cannot resume {folder}: {STATE} is not a vrex-edge KV state")
    if doc.get("format_version") != FORMAT:
        raise KVStoreError(
            f"cannot resume {folder}: it was kept by another vrex-edge version "
            f"(state format {doc.get('format_version')}, this one reads {FORMAT}); start a new stream"
        )
    o = session.retrieval.options
    _check_meta(folder, doc.get("meta") or {}, _meta(session), o.result_options(), o.absent_values())
    try:
        with np.load(folder / str(doc["arrays"]), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if len(doc["layers"]) != len(mgr.caches):
            raise ValueError("layer count")
        for c, log, s in zip(mgr.caches, mgr.logs, doc["layers"], strict=True):
            c.restore(decode(s["cache"], arrays))
            log.restore(s["log"])
        session.restore(decode(doc["session"], arrays))
        resumed = None if doc.get("stream_time") is None else float(doc["stream_time"])
        ws = int(doc["workspace"])
    except KVStoreError:
        raise
    except (OSError, KeyError, IndexError, TypeError, ValueError, AttributeError, zipfile.BadZipFile) as e:
        raise KVStoreError(
            f"cannot resume {folder}: the saved state is malformed or incomplete ({type(e).__name__}: {e})"
        ) from None
    mgr.workspace.grow(ws)
    mgr.restored()
    return resumed
