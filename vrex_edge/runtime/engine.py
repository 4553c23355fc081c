"""A loaded bundle: one onnxruntime session per stage, and the layer loop with host attention.

`Model` knows nothing about streams: it embeds, encodes frames, runs the decoder layers over a
chunk (pre graph -> cache.attend -> post graph) and applies the LM head. The stream session
owns the caches and the positions.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vrex_edge.bundle import Manifest, StageSpec, bundle_path, load_manifest
from vrex_edge.errors import BundleError, ConfigError
from vrex_edge.runtime.kvcache import CacheFactory, LayerCache, Phase
from vrex_edge.runtime.rope import Rope
from vrex_edge.runtime.threads import limit_blas_threads

DEFAULT_PROVIDERS: tuple[str, ...] = ("CPUExecutionProvider",)
ProviderArg = str | tuple[str, dict[str, Any]]
Lookahead = Callable[[int, np.ndarray, np.ndarray, Phase], None]


@dataclass
class StageTimer:
    """Seconds spent per stage since the last `reset` (cheap: two perf_counter calls per run)."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, dt: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + dt

    def reset(self) -> dict[str, float]:
        """Return the accumulated seconds and start over."""
        out, self.seconds = self.seconds, {}
        return out


def session_options(threads: int | None) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if threads is not None:
        if threads < 0:
            raise ConfigError(f"threads must be >= 0 (0 = onnxruntime's default), got {threads}")
        so.intra_op_num_threads = threads
    return so


# --provider short names -> onnxruntime's provider names (full names are accepted as they are)
PROVIDER_ALIASES: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
GPU_INSTALL_HINT = (
    "install onnxruntime-gpu on a PC (pip install 'vrex-edge[gpu]', after pip uninstall onnxruntime), "
    "or NVIDIA's onnxruntime-gpu wheel for your JetPack on a Jetson (README: Installing on a Jetson)"
)


def provider_name(p: str) -> str:
    """A --provider value (short name such as `cuda`, any case, or a full provider name) -> the provider name."""
    return PROVIDER_ALIASES.get(p.strip().lower(), p.strip())


def missing_provider_message(name: str, available: Sequence[str], version: str) -> str:
    """The one-line ConfigError text for a provider this onnxruntime build lacks, saying what to install."""
    listed = ", ".join(available)
    if name in GPU_PROVIDERS:
        return (
            f"execution provider '{name}' is not available in this onnxruntime {version} (it has: {listed}); "
            f"{GPU_INSTALL_HINT}"
        )
    short = ", ".join(sorted(PROVIDER_ALIASES))
    return (
        f"execution provider '{name}' is not available in this onnxruntime {version} (it has: {listed}; "
        f"short names: {short}); install the matching onnxruntime build or use cpu"
    )


def check_providers(providers: Sequence[ProviderArg]) -> list[ProviderArg]:
    """Validate an execution-provider list against what this onnxruntime build offers; short names
    (`cpu`, `cuda`, `tensorrt`) become provider names. Raises ConfigError with what to install."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if not providers:
        raise ConfigError("the execution provider list is empty (use cpu)")
    out: list[ProviderArg] = []
    for p in providers:
        name = provider_name(p if isinstance(p, str) else p[0])
        if name not in available:
            raise ConfigError(missing_provider_message(name, available, ort.__version__))
        out.append(name if isinstance(p, str) else (name, p[1]))
    return out


def uses_cuda(providers: Sequence[ProviderArg]) -> bool:
    """Whether a checked provider list puts the session on an NVIDIA GPU (CUDA, or TensorRT over CUDA)."""
    return any((p if isinstance(p, str) else p[0]) in GPU_PROVIDERS for p in providers)


class _Stage:
    """One ONNX graph with its input/output names and input dtypes from the manifest."""

    def __init__(self, root: Path, spec: StageSpec, providers: list[ProviderArg], so: Any):
        import onnxruntime as ort

        path = bundle_path(root, spec.file)
        try:
            self.sess = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types
            raise BundleError(f"cannot load stage graph {spec.file}: {str(e).splitlines()[0]}") from None
        self.inputs = [t.name for t in spec.inputs]
        self.dtypes = [np.dtype(t.dtype) for t in spec.inputs]
        self.outputs = [t.name for t in spec.outputs]

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        feed = {
            n: (a if a.dtype == dt else a.astype(dt)) for n, dt, a in zip(self.inputs, self.dtypes, arrays, strict=True)
        }
        outs = self.sess.run(self.outputs, feed)
        return [o if o.dtype != np.float16 else o.astype(np.float32) for o in outs]


class Model:
    """A bundle loaded into onnxruntime. Array methods are batch-free (one stream)."""

    def __init__(
        self,
        bundle: str | os.PathLike[str],
        *,
        providers: Sequence[ProviderArg] = DEFAULT_PROVIDERS,
        threads: int | None = None,
        blas_threads: int | None = 1,
        verify_hashes: bool = True,
    ):
        """threads: onnxruntime intra-op threads per session (None: its default, one per core).
        blas_threads: numpy's BLAS pool for host attention (process-wide; None leaves it alone)."""
        self.root = Path(bundle)
        self.manifest: Manifest = load_manifest(self.root, verify_hashes=verify_hashes)
        self.providers = check_providers(providers)
        so = session_options(threads)
        if blas_threads is not None:
            if blas_threads < 1:
                raise ConfigError(f"blas_threads must be >= 1, got {blas_threads}")
            limit_blas_threads(blas_threads)
        st = self.manifest.stages
        self._embed = _Stage(self.root, st.embed, self.providers, so)
        self._head = _Stage(self.root, st.head, self.providers, so)
        self._vision = _Stage(self.root, st.vision, self.providers, so) if st.vision is not None else None
        self._layers = [
            (_Stage(self.root, ls.pre, self.providers, so), _Stage(self.root, ls.post, self.providers, so))
            for ls in st.layers
        ]
        self.text = self.manifest.text
        self.vision_spec = self.manifest.vision
        self.rope = Rope(self.text.rope)
        self.timer = StageTimer()
        self._tokenizer: Any = None

    # ------------------------------------------------------------------ parts

    @property
    def tokenizer(self) -> Any:
        """The bundle's tokenizer (loaded on first use)."""
        if self._tokenizer is None:
            from vrex_edge.runtime.tokenizer import Tokenizer

            self._tokenizer = Tokenizer(bundle_path(self.root, self.manifest.tokenizer))
        return self._tokenizer

    @property
    def has_vision(self) -> bool:
        return self._vision is not None

    def make_caches(self, factory: CacheFactory | Any, storage: Any = None) -> list[LayerCache]:
        """One LayerCache per decoder layer from a policy (retrieval.make_policy), over `storage`
        (a retrieval.storage.KVStorage; None: resident)."""
        layers = range(self.text.num_layers)
        if storage is None:
            return [factory(i, self.text, self.rope) for i in layers]
        return [factory(i, self.text, self.rope, storage) for i in layers]

    # ------------------------------------------------------------------ stages

    def vision(self, pixels: np.ndarray) -> np.ndarray:
        """pixels [F, 3, H, W] normalised f32 -> frame embeddings [F, T_v, D]."""
        if self._vision is None:
            raise ConfigError(f"bundle '{self.manifest.name}' has no vision stage (a text-only model)")
        t0 = time.perf_counter()
        out = self._vision(pixels)[0]  # [F, T_v, D]
        self.timer.add("vision", time.perf_counter() - t0)
        return out

    def embed(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """ids [n] -> embeddings [n, D]."""
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)  # [n]
        if arr.size == 0:
            return np.zeros((0, self.text.hidden_size), dtype=np.float32)
        t0 = time.perf_counter()
        out = self._embed(arr)[0]  # [n, D]
        self.timer.add("embed", time.perf_counter() - t0)
        return out

    def forward(
        self,
        embeds: np.ndarray,
        positions: np.ndarray,
        caches: Sequence[LayerCache],
        phase: Phase,
        *,
        lookahead: Lookahead | None = None,
    ) -> np.ndarray:
        """Run every decoder layer over a chunk; each cache appends the chunk and attends.

        embeds [n, D], positions [n] (stream positions) -> final hidden [n, D] (before the norm).
        lookahead(layer, hidden, positions, phase) is called before each layer runs (the KV tiers'
        prefetcher starts on layer + 1's clusters there)."""
        h = np.ascontiguousarray(embeds, dtype=np.float32)  # [n, D]
        positions = np.asarray(positions, dtype=np.int64)  # [n]
        t_ort = t_attn = 0.0
        clock = time.perf_counter
        for i, ((pre, post), cache) in enumerate(zip(self._layers, caches, strict=True)):  # one cache per layer
            if lookahead is not None:
                lookahead(i, h, positions, phase)
            t0 = clock()
            q, k, v = pre(h)  # q [H, n, hd], k/v [KVH, n, hd] un-rotated
            t1 = clock()
            a = cache.attend(q, k, v, positions, phase=phase)  # [n, H*hd]
            t2 = clock()
            h = post(h, a)[0]  # [n, D]
            t_ort += (t1 - t0) + (clock() - t2)
            t_attn += t2 - t1
        self.timer.add("layers", t_ort)
        self.timer.add("attention", t_attn)
        return h

    def pre_attention(self, layer: int, hidden: np.ndarray) -> list[np.ndarray]:
        """Layer `layer`'s pre-attention graph alone: hidden [n, D] -> q, k, v (for prediction; thread-safe)."""
        return self._layers[layer][0](np.ascontiguousarray(hidden, dtype=np.float32))

    def head(self, hidden: np.ndarray) -> np.ndarray:
        """hidden [n', D] (only the rows whose logits are needed) -> logits [n', V]."""
        t0 = time.perf_counter()
        out = self._head(np.ascontiguousarray(hidden, dtype=np.float32))[0]  # [n', V]
        self.timer.add("head", time.perf_counter() - t0)
        return out


def load_model(
    bundle: str | os.PathLike[str],
    *,
    providers: Sequence[ProviderArg] = DEFAULT_PROVIDERS,
    threads: int | None = None,
    blas_threads: int | None = 1,
    verify_hashes: bool = True,
) -> Model:
    """Load a bundle folder into onnxruntime sessions (raises BundleError / ConfigError)."""
    return Model(bundle, providers=providers, threads=threads, blas_threads=blas_threads, verify_hashes=verify_hashes)
