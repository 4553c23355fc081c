"""Derive a stream's prompt layout (PromptSpec) and stop tokens from a tokenizer's chat template.

The template is rendered with marker strings and split around them, so any template that
formats turns as prefix + content + suffix works; a plain "User:/Assistant:" layout is the
fallback for tokenizers without one.
"""

from __future__ import annotations

from typing import Any

from vrex_edge.bundle import PromptSpec, TokenSpec

_U1, _U2, _A1 = "\x1fUSERMARK1\x1f", "\x1fUSERMARK2\x1f", "\x1fASSTMARK1\x1f"


def _render(tok: Any, messages: list[dict[str, str]], gen: bool) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)


def _ids(tok: Any, text: str) -> tuple[int, ...]:
    return tuple(tok.encode(text, add_special_tokens=False)) if text else ()


def template_layout(tok: Any) -> dict[str, str] | None:
    """The text pieces around user and assistant turns, or None if the template does not split cleanly."""
    if not getattr(tok, "chat_template", None):
        return None
    u1, a1, u2 = (
        {"role": "user", "content": _U1},
        {"role": "assistant", "content": _A1},
        {"role": "user", "content": _U2},
    )
    try:
        t_user = _render(tok, [u1], False)  # sys + up + U1 + us
        t_gen = _render(tok, [u1], True)  # sys + up + U1 + us + rp
        t_turn = _render(tok, [u1, a1], False)  # ... + rp + A1 + rs
        t_next = _render(tok, [u1, a1, u2], True)  # ... + rs + up + U2 + us + rp
    except Exception:  # templates may raise on any of these shapes
        return None
    if not (t_gen.startswith(t_user) and t_turn.startswith(t_gen) and t_next.startswith(t_turn)):
        return None
    user_prefix = t_next[len(t_turn) : t_next.index(_U2)]
    head = t_user[: t_user.index(_U1)]
    if not head.endswith(user_prefix):
        return None
    return {
        "system": head[: len(head) - len(user_prefix)],
        "user_prefix": user_prefix,
        "user_suffix": t_user[t_user.index(_U1) + len(_U1) :],
        "reply_prefix": t_gen[len(t_user) :],
        "reply_suffix": t_turn[t_turn.index(_A1) + len(_A1) :],
    }


def derive_prompt(tok: Any, *, speak_threshold: float = 0.5) -> tuple[PromptSpec, TokenSpec, dict[str, Any]]:
    """(PromptSpec, TokenSpec, notes) for a text LM's tokenizer."""
    eos, bos = tok.eos_token_id, tok.bos_token_id
    layout = template_layout(tok)
    notes: dict[str, Any] = {"prompt_source": "chat_template" if layout else "fallback"}
    if layout is None:
        layout = {
            "system": tok.bos_token or "",
            "user_prefix": "User: ",
            "user_suffix": "\n",
            "reply_prefix": "Assistant:",
            "reply_suffix": (tok.eos_token or "") + "\n",
        }
    ids = {k: _ids(tok, v) for k, v in layout.items()}
    # Stop at the token that closes an assistant turn, and at EOS.
    stops: list[int] = []
    if ids["reply_suffix"]:
        stops.append(ids["reply_suffix"][0])
    if eos is not None and eos not in stops:
        stops.append(int(eos))
    if not stops:
        stops = list(_ids(tok, "\n"))[:1]
    prompt = PromptSpec(
        system_ids=ids["system"],
        user_prefix_ids=ids["user_prefix"],
        user_suffix_ids=ids["user_suffix"],
        reply_prefix_ids=ids["reply_prefix"],
        reply_suffix_ids=ids["reply_suffix"],
        speak_threshold=speak_threshold,
        system_text=layout["system"],
    )
    pad = tok.pad_token_id
    tokens = TokenSpec(
        bos=None if bos is None else int(bos), end_of_turn=tuple(stops), pad=None if pad is None else int(pad)
    )
    return prompt, tokens, notes
