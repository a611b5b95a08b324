#!/usr/bin/env python3
"""The same training step in PyTorch, for `tessera bench train --vs-pytorch`
(embedded in the tessera binary at build time).

A nanoGPT-style GPT (nn.Linear layers, tied head, tanh GELU, causal
attention: fused scaled_dot_product_attention where torch has it (>= 2.0),
written out otherwise), float32 or autocast bf16/fp16 (--dtype), AdamW
(fused where torch offers it for the device, else foreach)
with decay on matrices, gradients zeroed and clipped like tessera's step.
Prints one JSON object: median, min and max seconds per step.
usage: torch_step.py [--layers 12] [--heads 12] [--width 768] [--vocab 50257]
                     [--batch 4] [--seq-len 64] [--steps 5] [--warmup 2] [--threads 2]
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, C, NH):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)
        self.NH = NH

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.NH, C // self.NH).transpose(1, 2) for t in (q, k, v))
        if hasattr(F, "scaled_dot_product_attention"):
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(C // self.NH)
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            y = att.masked_fill(~mask, float("-inf")).softmax(dim=-1) @ v
        x = x + self.c_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, V, maxT, L, NH, C):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(maxT, C)
        self.h = nn.ModuleList(Block(C, NH) for _ in range(L))
        self.ln_f = nn.LayerNorm(C)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for b in self.h:
            x = b(x)
        logits = self.ln_f(x) @ self.wte.weight.T
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def main():
    a = argparse.ArgumentParser()
    for name, default in [("layers", 12), ("heads", 12), ("width", 768), ("vocab", 50257), ("batch", 4),
                          ("seq-len", 64), ("steps", 5), ("warmup", 2), ("threads", 2)]:
        a.add_argument("--" + name, type=int, default=default)
    a.add_argument("--device", default="cpu", help="cpu, or cuda (falls back to cpu without CUDA)")
    a.add_argument("--compile", action="store_true", help="torch.compile the model (torch >= 2)")
    a.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="bf16/fp16: autocast around forward and loss (fp32 master weights, as tessera's --dtype)")
    o = a.parse_args()
    dev = "cuda" if o.device == "cuda" and torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    torch.set_num_threads(o.threads)
    torch.manual_seed(0)
    m = GPT(o.vocab, 1024, o.layers, o.heads, o.width).to(dev)
    decay = [p for p in m.parameters() if p.dim() == 2]
    other = [p for p in m.parameters() if p.dim() != 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}]
    opt, adamw = None, "for-loop"
    for kind in ("fused", "foreach"):  # the fastest AdamW this torch has for the device
        try:  # torch refuses a kind it lacks for the device when the optimizer is made
            opt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, **{kind: True})
            adamw = kind
            break
        except (TypeError, RuntimeError, ValueError):
            pass
    if opt is None:
        opt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95), eps=1e-8)
    step_model = torch.compile(m) if o.compile else m
    idx = torch.randint(0, o.vocab, (o.batch, o.seq_len), device=dev)
    tgt = torch.randint(0, o.vocab, (o.batch, o.seq_len), device=dev)
    times, splits = [], []
    for s in range(o.warmup + o.steps):
        sync()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        if o.dtype == "fp32":
            loss = step_model(idx, tgt)
        else:
            with torch.autocast(device_type=dev, dtype=torch.bfloat16 if o.dtype == "bf16" else torch.float16):
                loss = step_model(idx, tgt)
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        sync()
        t3 = time.perf_counter()
        if s >= o.warmup:
            times.append(t3 - t0)
            splits.append((t1 - t0, t2 - t1, t3 - t2))
    med = statistics.median(times)
    f, b, p = min(splits, key=lambda x: abs(sum(x) - med))
    n = sum(p.numel() for p in m.parameters())
    print(json.dumps({"device": "pytorch-" + dev, "torch": torch.__version__, "params": n, "batch": o.batch,
                      "seq_len": o.seq_len, "threads": torch.get_num_threads(), "steps": o.steps, "dtype": o.dtype,
                      "attention": "sdpa" if hasattr(F, "scaled_dot_product_attention") else "written out",
                      "adamw": adamw, "compiled": o.compile,
                      "median_s": round(med, 4), "min_s": round(min(times), 4), "max_s": round(max(times), 4),
                      "fwd_bwd_s": round(f + b, 4), "optimizer_s": round(p, 4),
                      "tokens_per_s": round(o.batch * o.seq_len / med, 1)}))


if __name__ == "__main__":
    main()
