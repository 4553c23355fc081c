"""Train vrex-tiny on the synthetic world with the streaming objective.

    python -m vrex_edge.world.train --out out/vrex-tiny --seed 0 --minutes 8

Batches are generated on the fly by worker processes (seeds >= data.TRAIN_SEED_BASE). The
learning rate follows a cosine over the wall-clock budget, so a run ends on time whatever the
hardware. Writes a modeling.save_checkpoint folder (config.json, model.safetensors,
tokenizer.json) plus train_log.jsonl; `--shard-mb` also splits the weights for transfer.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vrex_edge.export.modeling import VideoLLM, load_checkpoint, save_checkpoint
from vrex_edge.world.data import AUX_CLASSES, Batch, make_batch
from vrex_edge.world.language import Vocab, build_tokenizer
from vrex_edge.world.model import tiny_config, widen_input

KIND_NAMES = {1: "decide", 2: "narrate", 3: "answer"}
ASST = Vocab()["<asst>"]


class _Batches(torch.utils.data.IterableDataset):
    def __init__(self, seed: int, tokens: int, min_s: float, max_s: float, name_noise: float = 0.0):
        self.seed, self.tokens, self.min_s, self.max_s = seed, tokens, min_s, max_s
        self.name_noise = name_noise

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid = info.id if info is not None else 0
        rng = np.random.default_rng([self.seed, wid])
        vocab = Vocab()
        while True:
            b = make_batch(
                rng, vocab, tokens=self.tokens, min_s=self.min_s, max_s=self.max_s, name_noise=self.name_noise
            )
            yield {k: torch.from_numpy(getattr(b, k)) for k in Batch.__dataclass_fields__}


class AuxHeads(torch.nn.Module):
    """Training-only probes on the frame tokens (not saved): object class and offset per pooled
    cell, object count from the CLS token. Dense targets that teach the tiny vision tower fast."""

    def __init__(self, d: int):
        super().__init__()
        self.cls = torch.nn.Linear(d, AUX_CLASSES)
        self.off = torch.nn.Linear(d, 2)
        self.count = torch.nn.Linear(d, 5)

    def forward(self, ft: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # ft: [F, 1 + 9, D] (CLS first, then the 3x3 cells row-major)
        dev = ft.device
        cells, cls_tok = ft[:, 1:].float(), ft[:, 0].float()
        tcls = batch["aux_cls"].to(dev)  # [F, 9]
        toff = batch["aux_off"].to(dev)  # [F, 9, 2]
        loss = F.cross_entropy(self.cls(cells).flatten(0, 1), tcls.flatten())
        occ = tcls > 0
        if occ.any():
            loss = loss + 4.0 * F.mse_loss(torch.tanh(self.off(cells))[occ], toff[occ])
        return loss + F.cross_entropy(self.count(cls_tok), batch["aux_count"].to(dev))


def loss_fn(
    model: VideoLLM,
    batch: dict[str, torch.Tensor],
    weights: dict[int, float],
    aux: AuxHeads | None = None,
    aux_w: float = 0.5,
) -> tuple[torch.Tensor, dict]:
    dev = next(model.parameters()).device
    frames = batch["frames"].to(dev, non_blocking=True)
    ids = batch["input_ids"].to(dev, non_blocking=True)
    labels = batch["labels"].to(dev, non_blocking=True)
    kinds = batch["kinds"].to(dev, non_blocking=True)
    pix = frames.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # [F, 3, S, S] = (x/255 - 0.5) / 0.5
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        ft = model.encode_frames(pix)  # [F, T_v, D]
        emb = model.embed(ids, ft.reshape(-1, ft.shape[-1]))  # [B, L, D]
        pos = torch.arange(ids.shape[1], device=dev)[None] + batch["offsets"].to(dev)[:, None]  # [B, L]
        hidden = model.language_model.model(inputs_embeds=emb, position_ids=pos).last_hidden_state
        sel = labels >= 0
        logits = model.language_model.lm_head(hidden[sel]).float()  # [N, V]
    tgt, k = labels[sel], kinds[sel].long()
    ce = F.cross_entropy(logits, tgt, reduction="none")  # [N]
    w = torch.zeros_like(ce)
    stats = {}
    for kind, wk in weights.items():
        m = k == kind
        w[m] = wk
        stats[f"loss_{KIND_NAMES[kind]}"] = ce[m].mean().item() if m.any() else float("nan")
    pred = logits.argmax(-1)
    dec = k == 1
    speak = dec & (tgt == ASST)
    silent = dec & (tgt != ASST)
    stats["silent_acc"] = (pred[silent] == tgt[silent]).float().mean().item() if silent.any() else float("nan")
    stats["speak_recall"] = (pred[speak] == tgt[speak]).float().mean().item() if speak.any() else float("nan")
    stats["answer_acc"] = (pred[k == 3] == tgt[k == 3]).float().mean().item() if (k == 3).any() else float("nan")
    loss = (ce * w).sum() / w.sum()
    if aux is not None and aux_w > 0:
        la = aux(ft, batch)
        stats["loss_aux"] = la.item()
        loss = loss + aux_w * la
    return loss, stats


def shard(ckpt: Path, max_mb: float) -> None:
    """Split model.safetensors into model-000N.safetensors of <= max_mb (for size-limited transfer)."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(ckpt / "model.safetensors"))
    parts: list[dict] = [{}]
    size = 0
    for name, t in state.items():
        nb = t.numel() * t.element_size()
        if parts[-1] and size + nb > max_mb * 1e6:
            parts.append({})
            size = 0
        parts[-1][name] = t
        size += nb
    for i, p in enumerate(parts):
        save_file(p, str(ckpt / f"model-{i:04d}.safetensors"))
    (ckpt / "model.safetensors").unlink()


def unshard(ckpt: Path) -> None:
    """Join model-000N.safetensors back into model.safetensors."""
    from safetensors.torch import load_file, save_file

    files = sorted(ckpt.glob("model-0*.safetensors"))
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    save_file(state, str(ckpt / "model.safetensors"))
    for f in files:
        f.unlink()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=8.0, help="wall-clock training budget")
    ap.add_argument("--max-steps", type=int, default=10**9)
    ap.add_argument("--tokens", type=int, default=64_000, help="tokens per step")
    ap.add_argument("--min-s", type=float, default=30.0)
    ap.add_argument("--max-s", type=float, default=600.0)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--workers", type=int, default=14)
    ap.add_argument("--init", type=Path, default=None, help="continue from this checkpoint")
    ap.add_argument("--aux-weight", type=float, default=0.5, help="weight of the training-only frame probes")
    ap.add_argument("--shard-mb", type=float, default=0.0)
    ap.add_argument(
        "--name-noise",
        type=float,
        default=0.0,
        help="fraction of shape/size words of earlier narrations replaced in the input (data.corrupt_names)",
    )
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    vocab = Vocab()
    model = widen_input(load_checkpoint(args.init)).train() if args.init else VideoLLM(tiny_config(vocab)).train()
    aux = AuxHeads(model.language_model.config.hidden_size)
    model.to(dev)
    aux.to(dev)
    params = list(model.parameters()) + list(aux.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.05, fused=dev.type == "cuda")
    data = torch.utils.data.DataLoader(
        _Batches(args.seed, args.tokens, args.min_s, args.max_s, args.name_noise),
        batch_size=None,
        num_workers=args.workers,
        pin_memory=dev.type == "cuda",
        prefetch_factor=4 if args.workers else None,
        persistent_workers=bool(args.workers),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    log = open(args.out / "train_log.jsonl", "w")
    weights = {1: 1.0, 2: 1.0, 3: 1.0}
    budget = args.minutes * 60.0
    t0 = time.time()
    step, toks = 0, 0
    for batch in data:
        frac = (time.time() - t0) / budget
        if frac >= 1.0 or step >= args.max_steps:
            break
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        loss, stats = loss_fn(model, batch, weights, aux, args.aux_weight * (1.0 - 0.7 * frac))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        toks += batch["input_ids"].numel()
        if step % 25 == 0 or step == 1:
            rec = {
                "step": step,
                "time": round(time.time() - t0, 1),
                "lr": lr,
                "loss": loss.item(),
                "gnorm": gn.item(),
                "tok_per_s": round(toks / (time.time() - t0)),
                "shape": list(batch["input_ids"].shape),
                **stats,
            }
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(json.dumps(rec), flush=True)
    model.eval().cpu()
    tok = build_tokenizer(args.out / "tokenizer.json")
    save_checkpoint(model, args.out, tok)
    (args.out / "train_info.json").write_text(
        json.dumps(
            {
                "steps": step,
                "tokens": toks,
                "wall_s": round(time.time() - t0, 1),
                "seed": args.seed,
                "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
                "args": {k: str(v) for k, v in vars(args).items()},
            },
            indent=1,
        )
    )
    if args.shard_mb:
        shard(args.out, args.shard_mb)
    print(f"saved {args.out} after {step} steps, {toks} tokens, {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
