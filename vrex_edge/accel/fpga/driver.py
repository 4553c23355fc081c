"""The XDMA transport and the DRE command driver: the code that runs against a real card.

All device I/O is os.pread/os.pwrite on the xdma driver's character devices:
  <prefix>_user     the user BAR: 32-bit registers at their byte offsets (docs/fpga.md)
  <prefix>_h2c_<i>  host-to-card DMA: pwrite(buf, card_address)
  <prefix>_c2h_<i>  card-to-host DMA: pread(n, card_address)
The software device model (model.py) serves the same paths as files; this module does not know.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from vrex_edge.accel.fpga.regs import (
    ALIGN,
    DATA_BASE,
    DESC_ADDR,
    DRE_ID,
    VERSION_MAJOR,
    Desc,
    Err,
    Op,
    Reg,
    Status,
)
from vrex_edge.errors import AccelError

DEFAULT_PREFIX = "/dev/xdma0"
PREFIX_ENV = "VREX_XDMA_PREFIX"


def node_paths(prefix: str | os.PathLike, channel: int = 0) -> dict[str, Path]:
    p = str(prefix)
    return {"user": Path(f"{p}_user"), "h2c": Path(f"{p}_h2c_{channel}"), "c2h": Path(f"{p}_c2h_{channel}")}


def op_name(op: int) -> str:
    return Op(op).name if op in Op._value2member_map_ else f"opcode {op}"


def default_prefix() -> str:
    return os.environ.get(PREFIX_ENV, DEFAULT_PREFIX)


class XdmaFiles:
    """Registers and DMA through the xdma character devices; every short transfer is an AccelError."""

    def __init__(self, prefix: str | os.PathLike, channel: int = 0):
        self.paths = node_paths(prefix, channel)
        missing = [str(p) for p in self.paths.values() if not p.exists()]
        if missing:
            raise AccelError(
                f"no XDMA device: {', '.join(missing)} not found (load the xdma driver for the "
                f"DRE card, or point {PREFIX_ENV} at its device prefix)"
            )
        self.fds: dict[str, int] = {}
        try:
            for name, flags in (("user", os.O_RDWR), ("h2c", os.O_WRONLY), ("c2h", os.O_RDONLY)):
                self.fds[name] = os.open(self.paths[name], flags | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            self.close()
            raise AccelError(f"cannot open XDMA device {e.filename}: {e.strerror} (check permissions)") from e

    def read32(self, reg: int) -> int:
        b = os.pread(self.fds["user"], 4, reg)
        if len(b) != 4:
            raise AccelError(f"register read at 0x{reg:02x} of {self.paths['user']} returned {len(b)} of 4 bytes")
        return int.from_bytes(b, "little")

    def write32(self, reg: int, value: int) -> None:
        n = os.pwrite(self.fds["user"], (value & 0xFFFFFFFF).to_bytes(4, "little"), reg)
        if n != 4:
            raise AccelError(f"register write at 0x{reg:02x} of {self.paths['user']} wrote {n} of 4 bytes")

    def dma_write(self, addr: int, data: bytes | memoryview) -> None:
        view, done = memoryview(data).cast("B"), 0
        while done < len(view):
            n = os.pwrite(self.fds["h2c"], view[done:], addr + done)
            if n <= 0:
                raise AccelError(
                    f"short DMA write to card 0x{addr:x}: {done} of {len(view)} bytes through {self.paths['h2c']}"
                )
            done += n

    def dma_read(self, addr: int, size: int) -> bytes:
        b = os.pread(self.fds["c2h"], size, addr)
        if len(b) != size:
            raise AccelError(
                f"short DMA read from card 0x{addr:x}: got {len(b)} of {size} bytes through {self.paths['c2h']}"
            )
        return b

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}


@dataclass(frozen=True)
class DeviceInfo:
    prefix: str
    version: str
    caps: dict[str, int]
    mem_size: int
    clock_hz: float


class DreDriver:
    """Opens the card, checks its identity, and runs one command at a time by doorbell + polling."""

    def __init__(self, prefix: str | os.PathLike | None = None, *, timeout_s: float = 2.0, poll_s: float = 20e-6):
        self.prefix = str(prefix if prefix is not None else default_prefix())
        self.io = XdmaFiles(self.prefix)
        self.timeout_s, self.poll_s = timeout_s, poll_s
        try:
            self.info = self._identify()
            if self.io.read32(Reg.STATUS) & Status.BUSY:  # left busy by a crashed process: reset it
                self.io.write32(Reg.CONTROL, 1)
            self.seq = self.io.read32(Reg.SEQ_DONE)
        except BaseException:
            self.io.close()
            raise
        self.last_cycles = 0

    def _identify(self) -> DeviceInfo:
        ident = self.io.read32(Reg.ID)
        if ident != DRE_ID:
            raise AccelError(
                f"{self.io.paths['user']}: device ID 0x{ident:08x} is not a DRE (expected "
                f"0x{DRE_ID:08x} 'DRE1'): wrong card, wrong BAR or the bitstream is not loaded"
            )
        ver = self.io.read32(Reg.VERSION)
        if ver >> 16 != VERSION_MAJOR:
            raise AccelError(
                f"DRE bitstream version {ver >> 16}.{ver & 0xFFFF} is not supported by this driver "
                f"(needs {VERSION_MAJOR}.x)"
            )
        caps = self.io.read32(Reg.CAPS)
        lanes = {k: (caps >> s) & 0xFF for k, s in (("hash", 0), ("cmp", 8), ("mac", 16), ("wic", 24))}
        return DeviceInfo(
            self.prefix,
            f"{ver >> 16}.{ver & 0xFFFF}",
            lanes,
            self.io.read32(Reg.MEM_SIZE),
            self.io.read32(Reg.CLOCK_KHZ) * 1e3,
        )

    def run(self, desc: Desc, inputs: list[bytes], out_sizes: list[int]) -> tuple[list[bytes], int]:
        """Place inputs in card memory, fill the descriptor's addresses, ring, poll -> (outputs, RESULT)."""
        addr, addrs = DATA_BASE, []
        for size in [len(b) for b in inputs] + out_sizes:
            addrs.append(addr)
            addr += -(-max(size, 1) // ALIGN) * ALIGN
        if addr > self.info.mem_size:
            raise AccelError(
                f"DRE {op_name(desc.op)} needs {addr} bytes of card memory, the card has {self.info.mem_size}"
            )
        ins, outs = addrs[: len(inputs)], addrs[len(inputs) :]
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        fields = dict(zip(("in0", "in1", "in2")[: len(ins)], ins, strict=True)) | dict(
            zip(("out0", "out1")[: len(outs)], outs, strict=True)
        )
        desc = replace(desc, seq=self.seq, **fields)
        for a, b in zip(ins, inputs, strict=True):
            if b:
                self.io.dma_write(a, b)
        self.io.dma_write(DESC_ADDR, desc.pack())
        self.io.write32(Reg.DESC_LO, DESC_ADDR & 0xFFFFFFFF)
        self.io.write32(Reg.DESC_HI, DESC_ADDR >> 32)
        self.io.write32(Reg.DOORBELL, self.seq)
        status = self._wait(op_name(desc.op))
        if status & Status.ERROR:
            code = self.io.read32(Reg.ERROR)
            name = Err(code).name if code in Err._value2member_map_ else "UNKNOWN"
            raise AccelError(
                f"DRE reported error {code} ({name}) on {op_name(desc.op)} (seq {self.seq}, status 0x{status:x})"
            )
        self.last_cycles = self.io.read32(Reg.CYCLES_LO) | self.io.read32(Reg.CYCLES_HI) << 32
        result = self.io.read32(Reg.RESULT)
        return [self.io.dma_read(a, n) if n else b"" for a, n in zip(outs, out_sizes, strict=True)], result

    def _wait(self, op: str) -> int:
        deadline = time.monotonic() + self.timeout_s
        while True:
            if self.io.read32(Reg.SEQ_DONE) == self.seq:  # SEQ_DONE is written after STATUS
                status = self.io.read32(Reg.STATUS)
                if status & (Status.DONE | Status.ERROR):
                    return status
            if time.monotonic() > deadline:
                status = self.io.read32(Reg.STATUS)
                self.io.write32(Reg.CONTROL, 1)  # abort, so the next command starts clean
                raise AccelError(
                    f"DRE timed out after {self.timeout_s:g} s on {op} (seq {self.seq}, status "
                    f"0x{status:x}): the card did not finish; it was reset"
                )
            time.sleep(self.poll_s)

    def close(self) -> None:
        self.io.close()
