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
from vrex_edge.accel.host_ort import OrtHostBackend

register_backend("host", OrtHostBackend)  # the default: HostBackend with its masses run by onnxruntime
register_backend("host-numpy", HostBackend)  # the NumPy reference
register_backend("dre-emu", DreEmuBackend)
register_backend("fpga", FpgaBackend)  # registered always; fails on instantiation without a device

__all__ = [
    "DreEmuBackend",
    "ENTRY_POINT_GROUP",
    "FpgaBackend",
    "HostBackend",
    "OrtHostBackend",
    "RetrievalBackend",
    "backend_names",
    "get_backend",
    "hyperplanes",
    "register_backend",
]
