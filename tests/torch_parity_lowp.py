#!/usr/bin/env python3
"""tessera's mixed precision (--dtype bf16/fp16) against PyTorch (TAP output).

usage: torch_parity_lowp.py GPT_DUMP DTYPE DEVICE [DEVICE...]

gpt_dump (tests/gpt_dump.c) runs the parity model's ten clipped AdamW steps
with the device's matrix products in DTYPE. Two references in PyTorch, from
the same initial weights:

  - the same arithmetic written out: every matrix product's inputs rounded
    to DTYPE, the MLP's hidden activations (the fc layer's output and
    GELU's) stored in DTYPE (the attention's qkv and output too, but only
    products read those), and under bf16 the logits; everything else
    float32. The eleven losses must agree within
    EMUL_TOL (relative): only the order of float32 sums differs, and a
    different sum can round to a neighbouring DTYPE value;
  - bf16 only: PyTorch's own autocast (torch.autocast("cpu", bfloat16)),
    which also keeps the products' outputs and the ops after them in bf16;
    the losses must agree within AUTOCAST_TOL.
A device without DTYPE products is skipped (gpt_dump exits with 3).
"""
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    print("1..0 # SKIP python3-torch is not installed")
    sys.exit(0)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_parity import Tap, adamw_trajectory, load_safetensors  # noqa: E402

EMUL_TOL = 2e-3
AUTOCAST_TOL = 3e-2


def forward(p, cfg, tok, tgt, matmul, act=lambda t: t, logits_act=lambda t: t):
    """The parity GPT (tests/torch_parity.py) with its matrix products
    done by matmul(a, b), and the activations tessera keeps in 16 bits
    under 16-bit products stored through act: the MLP's hidden ones (the
    fc layer's output and GELU's; the layernorms' outputs, qkv and the
    attention's output too, but only products read those, which round them
    anyway), and the head's logits through logits_act (bf16 only)."""
    B, T = tok.shape
    C, NH, L = cfg["n_embd"], cfg["n_head"], cfg["n_layer"]
    hs = C // NH
    mask = torch.ones(T, T, dtype=torch.bool).tril()

    mm = matmul

    x = p["wte.weight"][tok] + p["wpe.weight"][:T]
    for l in range(L):
        h = F.layer_norm(x, (C,), p[f"h.{l}.ln_1.weight"], p[f"h.{l}.ln_1.bias"], 1e-5)
        qkv = mm(h, p[f"h.{l}.attn.c_attn.weight"].T) + p[f"h.{l}.attn.c_attn.bias"]
        q, k, v = (t.view(B, T, NH, hs).transpose(1, 2) for t in qkv.split(C, dim=-1))
        att = mm(q, k.transpose(-2, -1)) / math.sqrt(hs)
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = mm(att, v).transpose(1, 2).reshape(B, T, C)
        x = x + mm(y, p[f"h.{l}.attn.c_proj.weight"].T) + p[f"h.{l}.attn.c_proj.bias"]
        h = F.layer_norm(x, (C,), p[f"h.{l}.ln_2.weight"], p[f"h.{l}.ln_2.bias"], 1e-5)
        h = act(F.gelu(act(mm(h, p[f"h.{l}.mlp.c_fc.weight"].T) + p[f"h.{l}.mlp.c_fc.bias"]), approximate="tanh"))
        x = x + mm(h, p[f"h.{l}.mlp.c_proj.weight"].T) + p[f"h.{l}.mlp.c_proj.bias"]
    x = F.layer_norm(x, (C,), p["ln_f.weight"], p["ln_f.bias"], 1e-5)
    logits = logits_act(mm(x, p["wte.weight"].T))
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tgt.reshape(-1), ignore_index=-1)


class RoundedMM(torch.autograd.Function):
    """a @ b with both inputs rounded to a low-precision type, and the
    backward products likewise on rounded inputs (the output gradient
    too), summed in float32: what tessera's GEMM op does in each pass."""

    @staticmethod
    def forward(ctx, a, b, dtype):
        r = lambda t: t.to(dtype).to(torch.float32)
        ctx.save_for_backward(r(a), r(b))
        ctx.dtype = dtype
        return r(a) @ r(b)

    @staticmethod
    def backward(ctx, g):
        ra, rb = ctx.saved_tensors
        rg = g.to(ctx.dtype).to(torch.float32)
        return rg @ rb.transpose(-2, -1), ra.transpose(-2, -1) @ rg, None


class RoundedAct(torch.autograd.Function):
    """An activation stored in a low-precision type: rounded going
    forward (what GELU's backward then reads too), its gradient passed
    through in float32, as tessera keeps gradients."""

    @staticmethod
    def forward(ctx, x, dtype):
        return x.to(dtype).to(torch.float32)

    @staticmethod
    def backward(ctx, g):
        return g, None


def trajectory(init, cfg, tok, tgt, res, matmul, act=None, logits_act=None, autocast=False):
    def loss_of(p):
        if not autocast:
            ident = lambda t: t
            return forward(p, cfg, tok, tgt, matmul, act or ident, logits_act or ident)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return forward(p, cfg, tok, tgt, torch.matmul)

    return adamw_trajectory(init, res, loss_of)[0]


def main():
    dump, dtype_name, devices = sys.argv[1], sys.argv[2], sys.argv[3:]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    checks = 2 if dtype_name == "bf16" else 1
    print("TAP version 13")
    print(f"1..{checks * len(devices)}")
    tap = Tap()
    for device in devices:
        with tempfile.TemporaryDirectory() as d:
            r = subprocess.run([dump, d, device, dtype_name], capture_output=True, text=True)
            if r.returncode == 3:
                for _ in range(checks):
                    tap.n += 1
                    print(f"ok {tap.n} - {dtype_name} on {device} # SKIP {r.stderr.strip()}")
                continue
            if r.returncode != 0:
                for _ in range(checks):
                    tap.check(False, f"gpt_dump {dtype_name} ran on {device}", r.stderr)
                continue
            init, meta = load_safetensors(os.path.join(d, "init.safetensors"))
            batch, _ = load_safetensors(os.path.join(d, "batch.safetensors"))
            with open(os.path.join(d, "results.json")) as f:
                res = json.load(f)
        cfg = json.loads(meta["config"])
        tok = torch.from_numpy(batch["tokens"].astype(np.int64))
        tgt = torch.from_numpy(batch["targets"].astype(np.int64))
        mine = res["losses"]
        # tessera stores some activations in DTYPE (forward's docstring)
        act = lambda t: RoundedAct.apply(t, dtype)
        emul = trajectory(init, cfg, tok, tgt, res, lambda a, b: RoundedMM.apply(a, b, dtype), act,
                          act if dtype_name == "bf16" else None)
        rels = [abs(a - b) / abs(b) for a, b in zip(mine, emul)]
        tap.check(max(rels) < EMUL_TOL,
                  f"{dtype_name}: losses of 10 AdamW steps match the same rounding written in PyTorch on {device}",
                  "tessera " + " ".join(f"{x:.6f}" for x in mine) + "\ntorch   " +
                  " ".join(f"{x:.6f}" for x in emul) + f"\nlargest relative difference {max(rels):.2e}")
        if dtype_name == "bf16":
            auto = trajectory(init, cfg, tok, tgt, res, None, autocast=True)
            rels = [abs(a - b) / abs(b) for a, b in zip(mine, auto)]
            tap.check(max(rels) < AUTOCAST_TOL,
                      f"bf16: losses of 10 AdamW steps within {AUTOCAST_TOL:g} of PyTorch autocast bf16 on {device}",
                      "tessera  " + " ".join(f"{x:.6f}" for x in mine) + "\nautocast " +
                      " ".join(f"{x:.6f}" for x in auto) + f"\nlargest relative difference {max(rels):.2e}")
    sys.exit(1 if tap.failed else 0)


if __name__ == "__main__":
    main()
