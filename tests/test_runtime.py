"""The runtime against its references: chunking invariance, transformers greedy decoding, the torch
VideoLLM on the same frames and token layout, the session's event stream, and preprocessing."""

from __future__ import annotations

import numpy as np
import pytest

from vrex_edge.bundle import VisionSpec
from vrex_edge.errors import ConfigError
from vrex_edge.runtime.engine import Model, load_model
from vrex_edge.runtime.events import Answer, Caption, FrameProcessed, Stats
from vrex_edge.runtime.preprocess import Preprocessor
from vrex_edge.runtime.retrieval import make_policy
from vrex_edge.runtime.session import StreamSession


def _frames(n: int, seed: int = 0, size: tuple[int, int] = (60, 80)) -> list[tuple[float, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(0.5 * i, rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for i in range(n)]


@pytest.fixture(scope="module")
def video_model(tiny_videollm_bundle) -> Model:
    return load_model(tiny_videollm_bundle)


# ---------------------------------------------------------------------------- chunking


@pytest.mark.parametrize("bundle", ["tiny_llama_bundle", "tiny_videollm_bundle"])
def test_iterative_prefill_equals_one_shot(bundle, request):
    model = load_model(request.getfixturevalue(bundle))
    rng = np.random.default_rng(1)
    ids = rng.integers(8, model.text.vocab_size, 70)
    emb = model.embed(ids)  # [70, D]
    if model.has_vision:  # splice two frames' tokens into the stream
        px = rng.standard_normal((2, 3, *model.vision_spec.image_size)).astype(np.float32)
        fr = model.vision(px)  # [2, T_v, D]
        emb = np.concatenate([emb[:20], fr[0], emb[20:50], fr[1], emb[50:]])
    n = emb.shape[0]
    full = make_policy("full")
    one = model.make_caches(full)
    ref = model.head(model.forward(emb, np.arange(n), one, "prefill"))  # [n, V]
    caches = model.make_caches(full)
    rows, start = [], 0
    for size in [1, 7, 10, 3, 1, 1, 25, 16, 100]:
        end = min(n, start + size)
        phase = "decode" if end - start == 1 else "prefill"
        rows.append(model.head(model.forward(emb[start:end], np.arange(start, end), caches, phase)))
        start = end
        if start == n:
            break
    assert start == n
    np.testing.assert_allclose(np.concatenate(rows), ref, atol=2e-5, rtol=0)
    assert [c.length for c in caches] == [n] * model.text.num_layers


# ---------------------------------------------------------------------------- transformers parity


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_greedy_tokens_match_transformers(family, request):
    import torch
    from transformers import AutoModelForCausalLM

    hf_dir = request.getfixturevalue(f"tiny_{family}_hf")
    model = load_model(request.getfixturevalue(f"tiny_{family}_bundle"))
    hf = AutoModelForCausalLM.from_pretrained(str(hf_dir)).eval()
    eos = int(hf.generation_config.eos_token_id)
    prompt = np.random.default_rng(2).integers(6, model.text.vocab_size, 40).tolist()

    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)[0, len(prompt) :].tolist()
        session = StreamSession(model, prefill_chunk=16)  # several prefill chunks
        session.prefill_text(prompt)
        np.testing.assert_allclose(session.next_logits(), hf(torch.tensor([prompt])).logits[0, -1].numpy(), atol=2e-5)
        mine = session.generate(24, stop_ids=[eos])
        assert mine == out
        # the decode steps left the cache consistent: logits after the continuation agree too
        full = torch.tensor([prompt + mine])
        np.testing.assert_allclose(session.next_logits(), hf(full).logits[0, -1].numpy(), atol=2e-5)
        assert session.position == len(prompt) + len(mine)


# ---------------------------------------------------------------------------- torch VideoLLM parity


def _torch_stream(ref, pixels, prompt, tokens, threshold, max_reply, questions=()):
    """The session's layout, recomputed from scratch with the torch model at every step."""
    import torch

    ids: list[int] = list(prompt.system_ids)
    used = 0
    fi = tokens.frame_interval

    def logits():
        px = torch.from_numpy(np.stack(pixels[:used])) if used else None
        with torch.no_grad():
            return ref(torch.tensor([ids]), pixel_values=px).logits[0, -1].double().numpy()

    def reply():
        gen: list[int] = []
        while True:
            gen.append(int(np.argmax(logits())))
            if gen[-1] in tokens.end_of_turn or len(gen) == max_reply:
                break
            ids.append(gen[-1])
        close = list(prompt.reply_suffix_ids)
        ids.extend(close if gen[-1] == close[0] else [gen[-1], *close])
        return gen

    out, silent = [], False
    for i in range(len(pixels)):
        ids.extend(([fi] if silent else []) + [tokens.frame_placeholder] * 10)
        used += 1
        lg = logits()
        p = float(np.exp(lg[fi] - lg.max()) / np.exp(lg - lg.max()).sum())
        silent = p >= threshold
        out.append(("frame", p))
        if not silent:
            ids.extend(prompt.reply_prefix_ids)
            out.append(("caption", reply()))
        for q in questions.get(i, ()):
            ids.extend([*prompt.user_prefix_ids, *q, *prompt.user_suffix_ids, *prompt.reply_prefix_ids])
            out.append(("answer", reply()))
            silent = False
    return out, logits()


@pytest.mark.parametrize("threshold", [0.0, 1.01], ids=["silent", "speaks"])
def test_stream_matches_torch_videollm(threshold, video_model, tiny_videollm_checkpoint):
    from vrex_edge.export.modeling import load_checkpoint

    ref = load_checkpoint(tiny_videollm_checkpoint)
    frames = _frames(4, seed=3)
    question = "what is the man doing ?"
    session = StreamSession(video_model, speak_threshold=threshold, max_reply_tokens=3)
    events = list(session.run(frames, [(0.7, question)]))

    pre = Preprocessor(video_model.vision_spec)
    pixels = [pre(f) for _, f in frames]
    tok = video_model.tokenizer
    m = video_model.manifest
    expected, last = _torch_stream(ref, pixels, m.prompt, m.tokens, threshold, 3, {1: [tok.encode(question)]})
    got = [e for e in events if not isinstance(e, Stats)]
    assert len(got) == len(expected)
    for e, (kind, val) in zip(got, expected, strict=True):
        if kind == "frame":
            assert isinstance(e, FrameProcessed) and e.p_interval == pytest.approx(val, abs=1e-5)
        else:
            assert isinstance(e, Caption if kind == "caption" else Answer)
            assert e.tokens == len(val)
            assert e.text == tok.decode([t for t in val if t not in m.tokens.end_of_turn]).strip()
    np.testing.assert_allclose(session.next_logits(), last, atol=3e-5)


# ---------------------------------------------------------------------------- session events


def test_session_events_in_order(video_model):
    tv = video_model.vision_spec.tokens_per_frame
    session = StreamSession(video_model, speak_threshold=1.01, max_reply_tokens=4)
    events = list(session.run(_frames(5), [(1.0, "where is the cup ?"), (9.0, "what now ?")]))
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["FrameProcessed", "Caption"] * 3 + ["Answer"] + ["FrameProcessed", "Caption"] * 2 + [
        "Answer",
        "Stats",
    ]
    frames = [e for e in events if isinstance(e, FrameProcessed)]
    assert [f.index for f in frames] == list(range(5)) and [f.t for f in frames] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert all(f.spoke and 0 <= f.p_interval <= 1 for f in frames)
    assert all({"vision", "layers", "attention", "head", "total"} <= f.timings_ms.keys() for f in frames)
    assert all(f.timings_ms["total"] >= f.timings_ms["vision"] > 0 for f in frames)
    assert frames[0].cache_tokens == len(video_model.manifest.prompt.system_ids) + tv
    assert all(b.cache_tokens - a.cache_tokens > tv for a, b in zip(frames, frames[1:], strict=False))  # + reply tokens
    for i, e in enumerate(events):
        if isinstance(e, Caption):
            assert events[i - 1].t == e.t and 1 <= e.tokens <= 4 and e.latency_ms > 0
    answers = [e for e in events if isinstance(e, Answer)]
    assert [(a.t, a.question) for a in answers] == [(1.0, "where is the cup ?"), (9.0, "what now ?")]
    stats = events[-1]
    assert isinstance(stats, Stats)
    assert (stats.frames, stats.captions, stats.answers) == (5, 5, 2)
    assert stats.tokens == session.caches[0].length and stats.cache_bytes == session.cache_bytes > 0
    assert stats.frame_ms_p95 >= stats.frame_ms_median > 0 and stats.fps > 0
    assert stats.retrieval["prefill_kept_fraction"] == 1.0 and stats.retrieval["policy"] == "full"


def test_silent_stream_inserts_frame_interval(video_model):
    tv = video_model.vision_spec.tokens_per_frame
    session = StreamSession(video_model, speak_threshold=0.0)
    events = list(session.run(_frames(3)))
    frames = [e for e in events if isinstance(e, FrameProcessed)]
    assert not any(isinstance(e, Caption) for e in events) and not any(f.spoke for f in frames)
    assert np.diff([f.cache_tokens for f in frames]).tolist() == [tv + 1, tv + 1]


def test_session_errors(tiny_llama_bundle, video_model):
    text_model = load_model(tiny_llama_bundle)
    with pytest.raises(ConfigError, match="text-only"):
        list(StreamSession(text_model).push_frame(np.zeros((8, 8, 3), np.uint8), 0.0))
    with pytest.raises(ConfigError, match="unknown retrieval policy"):
        StreamSession(video_model, policy="nope")
    with pytest.raises(ConfigError, match="max reply tokens"):
        StreamSession(video_model, max_reply_tokens=0)
    with pytest.raises(ConfigError, match="nothing has been fed"):
        StreamSession(text_model).next_logits()
    with pytest.raises(ConfigError, match="not available"):
        load_model(tiny_llama_bundle, providers=["NoSuchExecutionProvider"])


# ---------------------------------------------------------------------------- preprocessing


def _spec(resize: str) -> VisionSpec:
    return VisionSpec(
        image_size=(48, 48), mean=(0.5, 0.4, 0.3), std=(0.5, 0.25, 0.2), tokens_per_frame=10, resize=resize
    )


def test_pad_keeps_aspect_ratio_and_pads_with_the_mean():
    frame = np.zeros((40, 80, 3), np.uint8)
    frame[..., 0] = 255  # blue in BGR
    out = Preprocessor(_spec("pad"))(frame)  # [3, 48, 48]
    assert out.shape == (3, 48, 48) and out.dtype == np.float32
    content = np.abs(out).sum(0) > 0  # rows 12..35 hold the 24 x 48 resized frame
    assert content[12:36].all() and not content[:12].any() and not content[36:].any()
    # RGB order, normalised: blue channel (index 2) = (1 - 0.3) / 0.2, red = (0 - 0.5) / 0.5
    np.testing.assert_allclose(out[:, 24, 24], [-1.0, -1.6, 3.5], atol=1e-5)


@pytest.mark.parametrize("pad_color", [None, [0, 0, 0], [255, 128, 7]], ids=["unset", "black", "rgb"])
def test_pad_fills_with_the_bundles_pad_color(tiny_videollm_bundle, pad_color):
    """A bundle's vision.pad_color is what surrounds a non-square frame, exactly a pixel of that colour;
    a bundle that does not set it pads with the mean (0 once normalised), as before the field existed."""
    import json

    from vrex_edge.bundle import MANIFEST, manifest_from_dict

    raw = json.loads((tiny_videollm_bundle / MANIFEST).read_text())
    if pad_color is not None:
        raw["vision"]["pad_color"] = pad_color
    spec = manifest_from_dict(raw).vision
    assert spec.resize == "pad" and spec.pad_color == ("mean" if pad_color is None else tuple(pad_color))
    pre = Preprocessor(spec)
    h, w = spec.image_size
    out = pre(np.full((h // 2, w, 3), 200, np.uint8))  # [3, H, W]: a band across the middle
    band = (h - h // 2) // 2
    want = np.zeros(3, np.float32) if pad_color is None else pre(np.full((h, w, 3), pad_color[::-1], np.uint8))[:, 0, 0]
    border = np.concatenate([out[:, :band], out[:, band + h // 2 :]], axis=1)  # [3, rows, W]
    assert border.shape[1] > 0 and (border == want[:, None, None]).all()
    assert (out[:, band : band + h // 2] == pre(np.full((h, w, 3), 200, np.uint8))[:, :1, :1]).all()


def test_stretch_fills_the_target():
    frame = np.full((30, 90, 3), 128, np.uint8)
    out = Preprocessor(_spec("stretch"))(frame)
    np.testing.assert_allclose(out[0], (128 / 255 - 0.5) / 0.5, atol=1e-5)
    assert out.shape == (3, 48, 48)
