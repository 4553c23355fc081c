"""Layer-pipelined prefetch (docs/resv-spec.md, section 4).

Model.forward calls the prefetcher before layer l runs, with layer l's input hidden state. A
background thread runs layer l+1's pre-attention graph on that state (the residual stream
changes little from one layer to the next), scores layer l+1's cluster representatives with
the resulting queries, and reads the predicted clusters that are only on disk into the hot
cache, while the main thread computes layer l. Layer l+1's exact selection then finds them
hot; whatever the prediction missed is read synchronously. When layer l+1 starts before its
prefetch is done, the prefetch stops at its next batch of reads (the exact path reads what it
still needs) instead of holding the main thread. Results never depend on it: the prediction only
decides what is read early. It scores on the host reference backend, so it never drives a device
backend while the main thread does; an error in the thread stops prefetching and is reported
(`failure`), the stream goes on reading on demand.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import numpy as np

from vrex_edge.accel.host import HostBackend
from vrex_edge.runtime.retrieval.clusters import fit_budget

BATCH = 64  # clusters per read between checks for "the layer has started"


class Prefetcher:
    def __init__(self, mgr: Any):
        self.mgr = mgr
        self.jobs: queue.Queue = queue.Queue()
        self.done = [threading.Event() for _ in range(mgr.layers)]
        self.late = [threading.Event() for _ in range(mgr.layers)]  # the layer started: stop reading
        for e in self.done:
            e.set()
        self.pred: list[list[np.ndarray | None]] = [[None] * mgr.kvh for _ in range(mgr.layers)]
        self.stats = dict.fromkeys(
            ("jobs", "skipped", "errors", "predicted", "selected", "hit", "fetched", "cut_short"), 0
        )
        self.seconds = dict.fromkeys(("busy", "read", "wait"), 0.0)
        self.fetched_bytes = 0
        self.host = HostBackend()  # the prediction's scoring (the session's backend belongs to the main thread)
        self.failure: str | None = None  # the first error of the thread; prefetching stopped there
        self.thread = threading.Thread(target=self._run, name="vrex-kv-prefetch", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------ main thread

    def __call__(self, layer: int, hidden: np.ndarray, positions: np.ndarray, phase: str) -> None:
        """Model.forward's lookahead hook: layer `layer` is about to run on hidden [n, D]."""
        nxt = layer + 1
        if nxt >= self.mgr.layers or self.failure is not None:
            return
        if not self.mgr.cold_only() or int(self.mgr.caches[nxt].store.nclu.max()) == 0:
            self.stats["skipped"] += 1
            self.pred[nxt] = [None] * self.mgr.kvh
            return
        self.late[nxt].clear()
        self.done[nxt].clear()
        self.jobs.put((nxt, hidden, positions, phase))

    def wait(self, layer: int) -> None:
        """Layer `layer` starts: stop its prefetch at the next batch, and block until it has stopped
        (the layer's cache is about to change)."""
        if not self.done[layer].is_set():
            self.late[layer].set()
            t0 = time.perf_counter()
            self.done[layer].wait()
            self.seconds["wait"] += time.perf_counter() - t0

    def drain(self) -> None:
        for i in range(self.mgr.layers):
            self.wait(i)

    def score(self, layer: int, h: int, sel: np.ndarray) -> None:
        """The exact selection of sealed clusters for (layer, h), against the prediction."""
        p = self.pred[layer][h]
        if p is None:
            return
        self.stats["selected"] += sel.size
        self.stats["predicted"] += p.size
        self.stats["hit"] += int(np.isin(sel, p, assume_unique=True).sum())
        self.pred[layer][h] = None

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=10)

    def report(self) -> dict[str, Any]:
        s, sec = self.stats, self.seconds
        return {
            **s,
            "failure": self.failure,
            "recall": s["hit"] / s["selected"] if s["selected"] else None,
            "precision": s["hit"] / s["predicted"] if s["predicted"] else None,
            "fetched_bytes": self.fetched_bytes,
            "seconds": dict(sec),
            "hidden_read_s": max(0.0, sec["read"] - sec["wait"]),
        }

    # ------------------------------------------------------------------ background thread

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            layer = job[0]
            try:
                self._predict_fetch(*job)
            except Exception as e:  # prefetching stops; the exact path reads what it needs on demand
                self.stats["errors"] += 1
                if self.failure is None:
                    self.failure = f"{type(e).__name__}: {e}"
            finally:
                self.done[layer].set()

    def _predict_fetch(self, layer: int, hidden: np.ndarray, positions: np.ndarray, phase: str) -> None:
        t0 = time.perf_counter()
        if self.late[layer].is_set():
            self.stats["cut_short"] += 1
            return
        mgr = self.mgr
        cache = mgr.caches[layer]
        st = cache.store
        budget = cache.retrieve_budget(len(positions))
        if cache.seen - cache.sink_n - cache.ring.n < cache.dense_below:
            sels = [np.arange(int(n)) for n in st.nclu]  # a short history is attended in full
        else:
            reused = cache.reused_selection(phase)
            if reused is not None:  # the call reuses its last selection: known, nothing to predict
                sels, mass = reused, cache.last_mass
            else:
                q = mgr.model.pre_attention(layer, hidden)[0]  # [H, n, hd] un-rotated
                if cache.score_post:
                    q = cache.rope.apply(q, positions)
                qs = q.reshape(cache.kvh, cache.g * q.shape[1], cache.hd)  # [KVH, G*n, hd]
                keep, mass = st.score(qs, tau=cache.tau, backend=self.host, budget=budget)
                sels = [np.flatnonzero(k) for k in keep]
            # the exact path's cut (fit_budget), so no more is read; in id order, as the reads go
            sels = [np.sort(x) for x in fit_budget(sels, mass, st.counts, budget)]
        self.stats["jobs"] += 1
        read = 0.0
        g = cache.gatherer  # incremental gather: what its buffer holds needs no fetch
        held = g.holds() if g is not None else None
        for h in range(cache.kvh):
            ids = sels[h][sels[h] < st.nclu[h]]
            ids = ids[(st.start[h, ids] >= 0) & (st.counts[h, ids] > 0)]  # sealed: the ones on disk
            if held is not None:
                inbuf = held[h][np.minimum(ids, held[h].size - 1)] & (ids < held[h].size) if held[h].size else None
                if inbuf is not None:
                    ids = ids[~inbuf]
            self.pred[layer][h] = ids
            with mgr.hot.lock:  # predicted clusters already hot are kept over the others
                mgr.hot.touch(layer, h, ids, tick=mgr.hot.now - 1)
                miss = mgr.hot.absent(layer, h, ids)
            for b in range(0, miss.size, BATCH):
                if self.late[layer].is_set():
                    self.stats["cut_short"] += 1
                    self.seconds["read"] += read
                    self.seconds["busy"] += time.perf_counter() - t0
                    return
                part = miss[b : b + BATCH]
                t1 = time.perf_counter()
                got = mgr.fetch(layer, h, part, st.start[h], st.counts[h], prefetch=True)
                read += time.perf_counter() - t1
                if got:
                    self.stats["fetched"] += part.size
                    self.fetched_bytes += got
        self.seconds["read"] += read
        self.seconds["busy"] += time.perf_counter() - t0
