"""Retrieval backends (host reference, later the DRE emulator and an FPGA driver) behind one Protocol."""

from vrex_edge.accel.backend import (
    ENTRY_POINT_GROUP,
    RetrievalBackend,
    backend_names,
    get_backend,
    hyperplanes,
    register_backend,
)
from vrex_edge.accel.dre_emu import DreEmuBackend
from vrex_edge.accel.fpga import FpgaBackend
from vrex_edge.accel.host import HostBackend

register_backend("host", HostBackend)
register_backend("dre-emu", DreEmuBackend)
register_backend("fpga", FpgaBackend)  # registered always; fails on instantiation without a device

__all__ = [
    "DreEmuBackend",
    "ENTRY_POINT_GROUP",
    "FpgaBackend",
    "HostBackend",
    "RetrievalBackend",
    "backend_names",
    "get_backend",
    "hyperplanes",
    "register_backend",
]
