"""A software model of the DRE card behind the same files the xdma driver exposes.

What is modelled: the register file (as a 4 KiB file `<prefix>_user`), card memory (one sparse
file reached through both `<prefix>_h2c_0` and `<prefix>_c2h_0`, hard links to one inode, so
what h2c writes c2h reads, like DDR behind both engines), the doorbell/status handshake and the
datapath (the `dre-emu` units, with their cycle model feeding the CYCLES registers). A thread
polls the DOORBELL register. Not modelled: PCIe timing, interrupts, DMA descriptor rings inside
the xdma IP, multiple channels. Faults for tests: "timeout", "status", "short_dma", "bad_id".
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from vrex_edge.accel.dre_emu import CycleModel, DreEmuBackend
from vrex_edge.accel.fpga.driver import node_paths
from vrex_edge.accel.fpga.regs import (
    DESC_SIZE,
    DRE_ID,
    MAGIC,
    USER_BAR_SIZE,
    VERSION_MAJOR,
    VERSION_MINOR,
    Desc,
    Err,
    Op,
    Reg,
    Status,
)

FAULTS = ("timeout", "status", "short_dma", "bad_id")


class _DeviceError(Exception):
    def __init__(self, code: Err):
        self.code = code


class DreCardModel:
    """`with DreCardModel(tmp_path) as card: DreDriver(card.prefix)`: a card served from files."""

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        name: str = "xdma0",
        mem_size: int = 64 << 20,
        faults: Iterable[str] = (),
        cycle_model: CycleModel | None = None,
        poll_s: float = 20e-6,
    ):
        self.faults = set(faults)
        unknown = self.faults - set(FAULTS)
        assert not unknown, f"unknown faults {unknown}"
        self.prefix = str(Path(root) / name)
        self.paths = node_paths(self.prefix)
        self.mem_path = Path(root) / f"{name}_mem"
        self.mem_size, self.poll_s = mem_size, poll_s
        self.emu = DreEmuBackend(cycle_model)
        self.commands = 0
        with open(self.paths["user"], "wb") as f:
            f.write(bytes(USER_BAR_SIZE))
        with open(self.mem_path, "wb") as f:
            f.truncate(mem_size)
        for k in ("h2c", "c2h"):
            os.link(self.mem_path, self.paths[k])
        self.user = os.open(self.paths["user"], os.O_RDWR)
        self.mem = os.open(self.mem_path, os.O_RDWR)
        ml = self.emu.model
        self._w(Reg.ID, 0x10EE9038 if "bad_id" in self.faults else DRE_ID)
        self._w(Reg.VERSION, VERSION_MAJOR << 16 | VERSION_MINOR)
        self._w(Reg.CAPS, ml.hash_lanes | ml.cmp_lanes << 8 | ml.mac_lanes << 16 | ml.wic_lanes << 24)
        self._w(Reg.MEM_SIZE, mem_size)
        self._w(Reg.CLOCK_KHZ, int(ml.clock_hz / 1e3))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="dre-card-model", daemon=True)

    def _r(self, reg: int) -> int:
        return int.from_bytes(os.pread(self.user, 4, reg), "little")

    def _w(self, reg: int, value: int) -> None:
        os.pwrite(self.user, (value & 0xFFFFFFFF).to_bytes(4, "little"), reg)

    def __enter__(self) -> DreCardModel:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for fd in (self.user, self.mem):
            os.close(fd)
        for p in [*self.paths.values(), self.mem_path]:
            p.unlink(missing_ok=True)

    def _serve(self) -> None:
        last = 0  # the register file starts zeroed; a doorbell rung before this thread runs still counts
        while not self._stop.is_set():
            if self._r(Reg.CONTROL) & 1:  # reset: abort, clear status, self-clear
                self._w(Reg.STATUS, 0)
                self._w(Reg.ERROR, 0)
                self._w(Reg.CONTROL, 0)
                last = self._r(Reg.DOORBELL)
            bell = self._r(Reg.DOORBELL)
            if bell == last:
                self._stop.wait(self.poll_s)
                continue
            last = bell
            self._w(Reg.STATUS, Status.BUSY)
            if "timeout" in self.faults:
                continue  # hung: never finishes
            try:
                result, cycles = self._execute(self._r(Reg.DESC_LO) | self._r(Reg.DESC_HI) << 32)
                code = Err.INTERNAL if "status" in self.faults else Err.NONE
            except _DeviceError as e:
                result, cycles, code = 0, 0, e.code
            self.commands += 1
            self._w(Reg.RESULT, result)
            self._w(Reg.CYCLES_LO, cycles)
            self._w(Reg.CYCLES_HI, cycles >> 32)
            self._w(Reg.ERROR, code)
            self._w(Reg.STATUS, Status.ERROR if code else Status.DONE)
            self._w(Reg.SEQ_DONE, bell)  # last: the driver polls it

    # ---- card memory and the datapath ---------------------------------------------------------

    def _get(self, addr: int, dtype, count: int) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        if addr + size > self.mem_size:
            raise _DeviceError(Err.BAD_ADDRESS)
        return np.frombuffer(os.pread(self.mem, size, addr), dtype=dtype)

    def _put(self, addr: int, a: np.ndarray) -> None:
        b = np.ascontiguousarray(a).tobytes()
        if addr + len(b) > self.mem_size:
            raise _DeviceError(Err.BAD_ADDRESS)
        os.pwrite(self.mem, b, addr)
        if "short_dma" in self.faults and b:  # the engine stops short: the last bytes never arrive
            os.truncate(self.mem, addr + len(b) // 2)

    def _execute(self, at: int) -> tuple[int, int]:
        if at + DESC_SIZE > self.mem_size:
            raise _DeviceError(Err.BAD_ADDRESS)
        magic, d = Desc.unpack(os.pread(self.mem, DESC_SIZE, at))
        if magic != MAGIC:
            raise _DeviceError(Err.BAD_MAGIC)
        if d.op not in Op._value2member_map_:
            raise _DeviceError(Err.BAD_OPCODE)
        before = self.emu.stats()["total_cycles"]
        result = getattr(self, f"_op_{Op(d.op).name.lower()}")(d)
        return result, self.emu.stats()["total_cycles"] - before

    def _op_hash(self, d: Desc) -> int:
        if not (d.hd and d.bits):
            raise _DeviceError(Err.BAD_DIMS)
        keys = self._get(d.in0, np.int16, d.n * d.m * d.hd).reshape(d.n, d.m, d.hd)
        signs = self._get(d.in1, np.int8, d.n * d.bits * d.hd).reshape(d.n, d.bits, d.hd)
        self._put(d.out0, self.emu.hash_q(keys, signs))
        return 0

    def _op_assign(self, d: Desc) -> int:
        w = d.bits // 64
        if w == 0 or d.bits % 64:
            raise _DeviceError(Err.BAD_DIMS)
        codes = self._get(d.in0, np.uint64, d.m * w).reshape(d.m, w)
        cand = self._get(d.in1, np.uint64, d.c * w).reshape(d.c, w)
        counts = self._get(d.in2, np.uint32, d.c).astype(np.int64)
        a = self.emu.cluster_assign(codes, cand, counts, threshold=d.p0, max_size=d.p1, horizon=d.p2)
        self._put(d.out0, a.astype(np.uint32))
        return 0

    def _op_score(self, d: Desc) -> int:
        if d.m == 0 or d.hd == 0:
            raise _DeviceError(Err.BAD_DIMS)
        q = self._get(d.in0, np.int16, d.n * d.m * d.hd).reshape(d.n, d.m, d.hd)
        reps = self._get(d.in1, np.int16, d.n * d.c * d.hd).reshape(d.n, d.c, d.hd)
        counts = self._get(d.in2, np.uint32, d.n * d.c).reshape(d.n, d.c).astype(np.int64)
        keep, mass = self.emu.score_q(q, reps, counts, d.p0, d.p1)
        self._put(d.out0, keep.astype(np.uint8))
        self._put(d.out1, mass.astype(np.uint64))
        return 0

    def _op_layout(self, d: Desc) -> int:
        sel = self._get(d.in0, np.uint32, d.m).astype(np.int64)
        start = self._get(d.in1, np.int64, d.c)
        length = self._get(d.in2, np.int64, d.c)
        if sel.size and int(sel.max()) >= d.c:
            raise _DeviceError(Err.BAD_DIMS)
        runs = self.emu.layout(sel, start, length)
        self._put(d.out0, runs)
        return int(runs.shape[0])
