"""One typed configuration for a stream session, built once (by the CLI) and passed down.

`SessionConfig` holds the bundle, the execution providers and threads, the retrieval policy with
its typed options (the retrieval backend is the policy's `accel` option), the KV tiers and the
frame rate. `open_session` loads the model and builds the `StreamSession` from it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vrex_edge.errors import ConfigError, KVStoreError
from vrex_edge.runtime.retrieval.options import Options, parse_pairs
from vrex_edge.runtime.retrieval.registry import get_spec

if TYPE_CHECKING:
    from vrex_edge.runtime.kvstore import TierConfig
    from vrex_edge.runtime.session import StreamSession


@dataclass(frozen=True)
class SessionConfig:
    """model: bundle folder; policy and its options (validated); providers: onnxruntime execution
    providers (empty: CPU); threads: intra-op threads (None: one per core); kv: the KV tiers (None:
    all resident); fps: frames per second fed to the model."""

    model: Path
    policy: str = "resv"
    options: Options | None = None
    providers: tuple[Any, ...] = ()
    threads: int | None = None
    kv: TierConfig | None = None
    fps: float = 2.0
    extra: dict[str, Any] = field(default_factory=dict)  # StreamSession keywords (speak_threshold, ...)

    def __post_init__(self) -> None:
        spec = get_spec(self.policy)
        if self.options is None:
            object.__setattr__(self, "options", spec.options.parse({}))
        elif not isinstance(self.options, spec.options):
            raise ConfigError(f"options of {type(self.options).__name__} given for policy '{self.policy}'")
        if not (isinstance(self.fps, int | float) and math.isfinite(self.fps) and self.fps > 0):
            raise ConfigError(f"--fps must be a positive number, got {self.fps}")
        if self.threads is not None and self.threads < 0:
            raise ConfigError(f"--threads must be >= 0 (0 = onnxruntime's default), got {self.threads}")
        if self.kv is not None and not spec.tiers:
            raise ConfigError(f"--kv-budget, --keep-kv and --resume need --policy resv (got '{self.policy}')")

    @classmethod
    def from_cli(
        cls,
        *,
        model: Path,
        policy: str = "resv",
        opts: Sequence[str] = (),
        accel: str | None = None,
        providers: Sequence[Any] = (),
        threads: int | None = None,
        kv: TierConfig | None = None,
        fps: float = 2.0,
    ) -> SessionConfig:
        """From the CLI's strings: --opt key=value pairs, --accel NAME (the resv/topk option accel)."""
        values: dict[str, Any] = parse_pairs(opts)
        if accel:
            values["accel"] = accel
        return cls(
            model=Path(model),
            policy=policy,
            options=get_spec(policy).options.parse(values),
            providers=tuple(providers),
            threads=threads,
            kv=kv,
            fps=fps,
        )


def open_session(config: SessionConfig, *, need_vision: bool = True) -> StreamSession:
    """Load the bundle and build the session (raises BundleError / ConfigError / KVStoreError)."""
    from vrex_edge.runtime.engine import DEFAULT_PROVIDERS, load_model, uses_cuda
    from vrex_edge.runtime.retrieval.policy import Policy
    from vrex_edge.runtime.session import StreamSession

    model = load_model(
        config.model, providers=list(config.providers) or list(DEFAULT_PROVIDERS), threads=config.threads
    )
    if need_vision and not model.has_vision:
        raise ConfigError(
            f"{config.model} is a text-only bundle ({model.manifest.family}); captioning needs a video model"
        )
    assert config.options is not None
    policy = Policy(get_spec(config.policy), config.options, device="cuda" if uses_cuda(model.providers) else "cpu")
    try:
        return StreamSession(model, policy=policy, kv=config.kv, **config.extra)
    except OSError as e:  # only the KV store's folder is created here (read-only file system, permissions)
        raise KVStoreError(
            f"cannot create the KV store at {e.filename or 'its folder'}: {e.strerror or e}; give --keep-kv "
            "a writable folder (temporary stores go to $XDG_CACHE_HOME/vrex-edge/kv)"
        ) from None
