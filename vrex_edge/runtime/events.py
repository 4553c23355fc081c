"""Typed events yielded by a stream session (the session's only output; UIs render them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FrameProcessed:
    """A frame went through vision + prefill. timings_ms: per stage (vision, embed, layers,
    attention, head, preprocess) and "total" (the frame's wall time, without any reply)."""

    index: int
    t: float  # stream time in seconds
    timings_ms: dict[str, float]
    cache_tokens: int  # tokens in the KV cache after this frame
    spoke: bool  # a Caption follows this event
    p_interval: float | None  # P(frame_interval) at the frame's last token; None if the bundle has no such token


@dataclass(frozen=True)
class Caption:
    """A reply the model chose to make after a frame."""

    t: float
    text: str
    tokens: int  # generated tokens (end of turn included when reached)
    latency_ms: float  # from the end of the frame's prefill to the last generated token


@dataclass(frozen=True)
class Answer:
    """The reply to a question inserted into the stream at time t."""

    t: float
    question: str
    text: str
    tokens: int
    latency_ms: float  # from receiving the question to the last generated token


@dataclass(frozen=True)
class Stats:
    """End-of-stream summary."""

    frames: int
    tokens: int  # tokens in the KV cache at the end
    frame_ms_mean: float
    frame_ms_median: float
    frame_ms_p95: float
    fps: float  # frames per second of wall time, replies included
    cache_bytes: int
    captions: int = 0
    answers: int = 0
    generated_tokens: int = 0
    wall_s: float = 0.0
    stage_ms: dict[str, float] = field(default_factory=dict)  # total per stage over the stream
    retrieval: dict[str, Any] = field(default_factory=dict)  # filled from LayerCache.stats()


Event = FrameProcessed | Caption | Answer | Stats
