"""A configured retrieval policy: its typed options, the layer caches it builds, the backend it owns.

A `PolicySpec` says what a policy is (name, options dataclass, how to build one layer's cache);
the registry (retrieval/registry.py) lists every spec. A `Policy` is one session's instance: it
builds the layer caches over a `KVStorage`, opens the retrieval backend once for all of them
(policies that use one), and closes it. `device` is where the session's graphs run ("cpu" or
"cuda"); on "cuda" a policy may keep its KV on the GPU (`full`, `resv` and `topk` do, through `device_engine`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vrex_edge.bundle import TextSpec
from vrex_edge.errors import ConfigError
from vrex_edge.runtime.retrieval.options import Options
from vrex_edge.runtime.retrieval.storage import RESIDENT, KVStorage
from vrex_edge.runtime.rope import Rope

if TYPE_CHECKING:
    from vrex_edge.accel.backend import RetrievalBackend
    from vrex_edge.runtime.kernels import AttentionEngine
    from vrex_edge.runtime.kernels.ort_cuda import OrtDeviceEngine
    from vrex_edge.runtime.kvcache import LayerCache
    from vrex_edge.runtime.retrieval.base import RopeTable

DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class PolicySpec:
    """name: what --policy takes; options: its Options dataclass; build(policy, layer, text, rope,
    storage) -> the layer's cache; tiers: its history can live on the KV tiers (--kv-budget)."""

    name: str
    options: type[Options]
    build: Callable[[Policy, int, TextSpec, Rope, KVStorage], LayerCache]
    summary: str
    tiers: bool = False


class Policy:
    """One session's policy: `policy(layer, text, rope, storage)` builds that layer's cache."""

    def __init__(
        self, spec: PolicySpec, options: Options, *, device: str = "cpu", device_engine: OrtDeviceEngine | None = None
    ):
        """device_engine: the engine of device-resident caches on "cuda" (default: ort-cuda, made on first
        use); an OrtDeviceEngine(device="cpu") runs that path on the CPU provider (tests, benchmarks)."""
        if device not in DEVICES:
            raise ConfigError(f"policy device must be one of {', '.join(DEVICES)}, got '{device}'")
        self.spec, self.options, self.device = spec, options, device
        self._backend: RetrievalBackend | None = None
        self._engine: AttentionEngine | None = None
        self._device_engine: Any = device_engine
        self._tables: dict[int, tuple[Rope, RopeTable]] = {}

    @property
    def name(self) -> str:
        return self.spec.name

    def __call__(self, layer: int, text: TextSpec, rope: Rope, storage: KVStorage = RESIDENT) -> LayerCache:
        return self.spec.build(self, layer, text, rope, storage)

    @property
    def engine(self) -> AttentionEngine:
        """The attention kernel engine (runtime/kernels), made once for every layer."""
        if self._engine is None:
            from vrex_edge.runtime import kernels

            self._engine = kernels.make_engine(kernels.DEFAULT_ENGINE)
        return self._engine

    @property
    def device_engine(self) -> OrtDeviceEngine:
        """The device attention engine (`ort-cuda`, over DeviceKV arenas), made once; device "cuda" only."""
        assert self.device == "cuda", "a device engine is for policies on the CUDA device"
        if self._device_engine is None:
            from vrex_edge.runtime import kernels

            self._device_engine = kernels.make_engine("ort-cuda")
        return self._device_engine

    @property
    def backend(self) -> RetrievalBackend:
        """The retrieval backend named by the `accel` option, opened once for every layer."""
        if self._backend is None:
            from vrex_edge.accel import get_backend

            self._backend = get_backend(str(getattr(self.options, "accel", "host")))
        return self._backend

    def rope_table(self, rope: Rope, text: TextSpec) -> RopeTable:
        """One compact-position cos/sin table per Rope, shared by the layers."""
        from vrex_edge.runtime.retrieval.base import RopeTable

        if id(rope) not in self._tables:
            self._tables[id(rope)] = (rope, RopeTable(rope, text.max_positions))
        return self._tables[id(rope)][1]

    def close(self) -> None:
        """Close the backend (a device driver's handles); the caches built stay readable."""
        close: Any = getattr(self._backend, "close", None)
        self._backend = None
        if close is not None:
            close()
