"""`fpga`: the retrieval backend on a DRE card behind Xilinx XDMA (docs/fpga.md).

Quantisation happens on the host exactly as in `dre-emu` (fixed.py formats), so a card running
the documented datapath returns what the emulator returns. Constructing the backend opens the
device: with no device nodes it raises AccelError naming the paths it looked for.
"""

from __future__ import annotations

import os

import numpy as np

from vrex_edge.accel import fixed as fx
from vrex_edge.accel.fpga.driver import DreDriver, XdmaFiles, default_prefix, node_paths
from vrex_edge.accel.fpga.regs import Desc, Op
from vrex_edge.errors import AccelError

__all__ = ["DreDriver", "FpgaBackend", "XdmaFiles", "default_prefix", "node_paths", "probe"]

UNITS = ("hash", "assign", "score", "wicsum", "layout")


def probe(prefix: str | os.PathLike | None = None) -> dict[str, object]:
    """What `vrex-edge accel probe fpga` shows: the nodes looked for and, when present, the card's identity."""
    prefix = str(prefix if prefix is not None else default_prefix())
    nodes = {k: (str(p), p.exists()) for k, p in node_paths(prefix).items()}
    out: dict[str, object] = {"prefix": prefix, "nodes": nodes}
    if all(e for _, e in nodes.values()):
        try:
            drv = DreDriver(prefix)
            out["device"] = drv.info
            drv.close()
        except AccelError as e:
            out["error"] = str(e)
    return out


class FpgaBackend:
    """RetrievalBackend over a DreDriver; `stats()` reads the card's per-command cycle counters."""

    name = "fpga"

    def __init__(self, prefix: str | os.PathLike | None = None, *, timeout_s: float = 2.0):
        self.drv = DreDriver(prefix, timeout_s=timeout_s)
        self.reset_stats()

    def reset_stats(self) -> None:
        self._cyc = dict.fromkeys(UNITS, 0)
        self._calls = dict.fromkeys(UNITS, 0)

    def stats(self) -> dict:
        total = sum(self._cyc.values())
        return dict(
            cycles=dict(self._cyc), calls=dict(self._calls), total_cycles=total, seconds=total / self.drv.info.clock_hz
        )

    def _run(self, unit: str, desc: Desc, inputs: list[np.ndarray], out_sizes: list[int]):
        outs, result = self.drv.run(desc, [np.ascontiguousarray(a).tobytes() for a in inputs], out_sizes)
        self._cyc[unit] += self.drv.last_cycles
        self._calls[unit] += 1
        return outs, result

    def close(self) -> None:
        self.drv.close()

    def hash_codes(self, keys: np.ndarray, planes: np.ndarray) -> np.ndarray:
        kq, signs = fx.quantize_block(keys)[0], fx.plane_signs(planes)
        batch = np.broadcast_shapes(kq.shape[:-2], signs.shape[:-2])
        m, bits, hd = kq.shape[-2], signs.shape[-2], kq.shape[-1]
        kq = np.broadcast_to(kq, (*batch, m, hd)).reshape(-1, m, hd)  # [n, m, hd]
        signs = np.broadcast_to(signs, (*batch, bits, hd)).reshape(-1, bits, hd)
        n, words = kq.shape[0], -(-bits // 64)
        (out,), _ = self._run("hash", Desc(Op.HASH, 0, n=n, m=m, hd=hd, bits=bits), [kq, signs], [n * m * words * 8])
        return np.frombuffer(out, np.uint64).reshape(*batch, m, words).copy()

    def cluster_assign(
        self,
        codes: np.ndarray,
        cand_codes: np.ndarray,
        cand_counts: np.ndarray,
        *,
        threshold: int,
        max_size: int,
        horizon: int,
    ) -> np.ndarray:
        m, w = codes.shape
        c = cand_codes.shape[0]
        desc = Desc(
            Op.ASSIGN, 0, m=m, c=c, bits=64 * w, p0=threshold, p1=min(max_size, 0xFFFFFFFF), p2=min(horizon, 0xFFFFFFFF)
        )
        (out,), _ = self._run(
            "assign",
            desc,
            [codes.astype(np.uint64), cand_codes.astype(np.uint64), cand_counts.astype(np.uint32)],
            [4 * m],
        )
        return np.frombuffer(out, np.uint32).astype(np.int64)

    def score_select(
        self,
        q: np.ndarray,
        reps: np.ndarray,
        counts: np.ndarray,
        *,
        tau: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        kvh, c = counts.shape
        r, hd = q.shape[1], q.shape[2]
        if c == 0:
            return np.zeros((kvh, 0), bool), np.zeros((kvh, 0), np.float32)
        if r > 1 << 15:
            raise AccelError(f"fpga: {r} queries per KV head exceed the card's 32768")
        (qq, a), (rq, b) = fx.quantize_block(q), fx.quantize_block(reps)
        desc = Desc(Op.SCORE, 0, n=kvh, m=r, c=c, hd=hd, p0=fx.tau_q(tau), p1=a + b)
        (keep, mass), _ = self._run("score", desc, [qq, rq, counts.astype(np.uint32)], [kvh * c, 8 * kvh * c])
        mm = np.frombuffer(mass, np.uint64).reshape(kvh, c).astype(np.int64)
        return np.frombuffer(keep, np.uint8).reshape(kvh, c).astype(bool), fx.mass_float(mm, r)

    def layout(self, selected: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
        k, c = selected.size, start.size
        desc = Desc(Op.LAYOUT, 0, m=k, c=c)
        (runs,), n = self._run(
            "layout", desc, [selected.astype(np.uint32), start.astype(np.int64), length.astype(np.int64)], [16 * k]
        )
        return np.frombuffer(runs, np.int64)[: 2 * n].reshape(n, 2).copy()
