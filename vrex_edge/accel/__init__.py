"""Retrieval backends (host reference, later the DRE emulator and an FPGA driver) behind one Protocol."""

from vrex_edge.accel.backend import (
    ENTRY_POINT_GROUP,
    RetrievalBackend,
    backend_names,
    get_backend,
    hyperplanes,
    register_backend,
)
from vrex_edge.accel.host import HostBackend

register_backend("host", HostBackend)

__all__ = [
    "ENTRY_POINT_GROUP", "HostBackend", "RetrievalBackend", "backend_names", "get_backend", "hyperplanes",
    "register_backend",
]
