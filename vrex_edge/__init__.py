"""vrex-edge: a real-time streaming video LLM runtime for edge devices."""

__version__ = "0.1.0"
