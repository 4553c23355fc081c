"""The DRE card's register map and command descriptor (docs/fpga.md), shared by driver and model."""

from __future__ import annotations

import struct
from dataclasses import astuple, dataclass
from enum import IntEnum

DRE_ID = 0x44524531  # "DRE1"
VERSION_MAJOR, VERSION_MINOR = 1, 0
USER_BAR_SIZE = 0x1000
DESC_ADDR = 0x0000  # where the driver writes the descriptor in card memory
DATA_BASE = 0x1000  # first buffer
ALIGN = 64  # buffer alignment in card memory (bytes)


class Reg(IntEnum):
    """32-bit little-endian registers in the user BAR (byte offsets)."""

    ID = 0x00  # RO: DRE_ID
    VERSION = 0x04  # RO: major << 16 | minor
    CAPS = 0x08  # RO: hash_lanes | cmp_lanes << 8 | mac_lanes << 16 | wic_lanes << 24
    MEM_SIZE = 0x0C  # RO: bytes of card memory reachable through h2c/c2h (from address 0)
    CLOCK_KHZ = 0x10  # RO: datapath clock
    CONTROL = 0x14  # WO: bit 0 RESET (self-clearing: aborts, clears STATUS/ERROR)
    STATUS = 0x18  # RO: bit 0 BUSY, bit 1 DONE, bit 2 ERROR
    ERROR = 0x1C  # RO: Err code of the last command
    DESC_LO = 0x20  # RW: descriptor address in card memory, low word
    DESC_HI = 0x24  # RW: high word
    DOORBELL = 0x28  # WO: write a new sequence number to start the command at DESC
    SEQ_DONE = 0x2C  # RO: sequence number of the last finished command (written last)
    RESULT = 0x30  # RO: op-specific count (LAYOUT: number of runs written)
    CYCLES_LO = 0x34  # RO: datapath cycles of the last command, low word
    CYCLES_HI = 0x38  # RO: high word
    SCRATCH = 0x3C  # RW: free for link tests


class Status(IntEnum):
    BUSY = 1
    DONE = 2
    ERROR = 4


class Op(IntEnum):
    HASH = 1  # in0 keys i16 [n, m, hd], in1 plane signs i8 [n, bits, hd] -> out0 codes u64 [n, m, words]
    ASSIGN = 2  # in0 codes u64 [m, W], in1 candidate codes [c, W], in2 counts u32 [c] -> out0 assign u32 [m]
    SCORE = 3  # in0 q i16 [n, m, hd], in1 reps i16 [n, c, hd], in2 counts u32 [n, c] -> out0 keep u8, out1 mass u64
    LAYOUT = 4  # in0 selected u32 [m], in1 start i64 [c], in2 length i64 [c] -> out0 runs i64 [RESULT, 2]


class Err(IntEnum):
    NONE = 0
    BAD_MAGIC = 1
    BAD_OPCODE = 2
    BAD_ADDRESS = 3
    BAD_DIMS = 4
    INTERNAL = 5


MAGIC = b"DREC"
_DESC = struct.Struct("<4sHHI13I")  # 64 bytes


@dataclass(frozen=True)
class Desc:
    """The 64-byte command descriptor. p0..p2: ASSIGN threshold/max_size/horizon; SCORE p0 = TAU_Q,
    p1 = the sum of the queries' and representatives' block exponents."""

    op: int
    seq: int
    n: int = 0  # batch (KV heads)
    m: int = 0  # rows: tokens, queries or selected clusters
    c: int = 0  # columns: candidates or clusters
    hd: int = 0
    bits: int = 0
    p0: int = 0
    p1: int = 0
    p2: int = 0
    in0: int = 0
    in1: int = 0
    in2: int = 0
    out0: int = 0
    out1: int = 0
    flags: int = 0

    def pack(self) -> bytes:
        t = astuple(self)
        return _DESC.pack(MAGIC, t[0], t[-1], *t[1:-1])

    @classmethod
    def unpack(cls, raw: bytes) -> tuple[bytes, Desc]:
        magic, op, flags, *rest = _DESC.unpack(raw)
        return magic, cls(op, *rest, flags=flags)


DESC_SIZE = _DESC.size
assert DESC_SIZE == 64
