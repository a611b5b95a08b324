#!/usr/bin/env python3
"""tessera against PyTorch on the same weights (TAP output).

usage: torch_parity.py GPT_DUMP DEVICE [DEVICE...]

For each device, gpt_dump (tests/gpt_dump.c) writes tessera's initial
weights, a batch, the gradients of the mean loss and ten clipped AdamW
steps. This script loads the same safetensors into the same GPT written in
PyTorch and checks, with the tolerances below:

  - the loss and every parameter's gradient against PyTorch in float64
    (tessera computes in float32; NMSE must be under 1e-9 per tensor),
  - the eleven losses of the ten AdamW steps against torch.optim.AdamW in
    float32 with the same clipping and decay groups (relative difference
    under 1e-4), and the final weights (NMSE under 1e-8; the attention key
    bias, whose gradient is zero up to rounding, is left out: see below).
"""
import json
import math
import os
import struct
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

LOSS_TOL = 1e-5      # relative, float64 reference
GRAD_NMSE = 1e-9     # per tensor, float64 reference
STEP_TOL = 1e-4      # relative, float32 AdamW trajectory
FINAL_NMSE = 1e-8


def load_safetensors(path):
    """safetensors with numpy alone: header length, JSON header, raw data."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    dtypes = {"F32": np.float32, "I32": np.int32}
    out = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + b:8 + n + end], dtype=dtypes[e["dtype"]]).reshape(e["shape"]).copy()
    return out, meta


def trunk(p, cfg, tok, mask, input_add=None):
    """The GPT of tessera/gpt.h up to the final layer norm: pre-norm blocks,
    tanh GELU; mask [.., T, T] says which keys each query sees; input_add
    [B, T, C] (a classifier's n-grams) joins the embedding."""
    B, T = tok.shape
    C, NH, L = cfg["n_embd"], cfg["n_head"], cfg["n_layer"]
    hs = C // NH
    x = p["wte.weight"][tok] + p["wpe.weight"][:T]
    if input_add is not None:
        x = x + input_add
    for l in range(L):
        h = F.layer_norm(x, (C,), p[f"h.{l}.ln_1.weight"], p[f"h.{l}.ln_1.bias"], 1e-5)
        qkv = h @ p[f"h.{l}.attn.c_attn.weight"].T + p[f"h.{l}.attn.c_attn.bias"]
        q, k, v = (t.view(B, T, NH, hs).transpose(1, 2) for t in qkv.split(C, dim=-1))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ p[f"h.{l}.attn.c_proj.weight"].T + p[f"h.{l}.attn.c_proj.bias"]
        h = F.layer_norm(x, (C,), p[f"h.{l}.ln_2.weight"], p[f"h.{l}.ln_2.bias"], 1e-5)
        h = F.gelu(h @ p[f"h.{l}.mlp.c_fc.weight"].T + p[f"h.{l}.mlp.c_fc.bias"], approximate="tanh")
        x = x + h @ p[f"h.{l}.mlp.c_proj.weight"].T + p[f"h.{l}.mlp.c_proj.bias"]
    return F.layer_norm(x, (C,), p["ln_f.weight"], p["ln_f.bias"], 1e-5)


def forward(p, cfg, tok, tgt):
    """The GPT of tessera/gpt.h: the trunk, causal, and the tied head."""
    T = tok.shape[1]
    x = trunk(p, cfg, tok, torch.ones(T, T, dtype=torch.bool).tril())
    logits = x @ p["wte.weight"].T
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-1)


def adamw_trajectory(init, res, loss_of):
    """gpt_dump's clipped AdamW steps from init in float32 (decay on
    matrices only): the losses before each step and after the last, and
    the final parameters. loss_of(params) is the model's loss."""
    p32 = {k: torch.tensor(v, dtype=torch.float32, requires_grad=True) for k, v in init.items()}
    decay = [v for k, v in p32.items() if v.dim() == 2]
    other = [v for k, v in p32.items() if v.dim() != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": res["weight_decay"]},
                             {"params": other, "weight_decay": 0.0}],
                            lr=res["lr"], betas=(res["beta1"], res["beta2"]), eps=res["eps"])
    losses = []
    for step in range(len(res["losses"])):
        opt.zero_grad()
        loss = loss_of(p32)
        losses.append(loss.item())
        if step == len(res["losses"]) - 1:
            break
        loss.backward()
        norm = torch.sqrt(sum((v.grad.double() ** 2).sum() for v in p32.values())).item()
        scale = min(1.0, res["grad_clip"] / norm) if norm > res["grad_clip"] else 1.0
        for v in p32.values():
            v.grad.mul_(scale)
        opt.step()
    return losses, p32


def nmse(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    den = float((b * b).sum())
    return float(((a - b) ** 2).sum()) / (den if den > 0 else 1.0)


class Tap:
    def __init__(self):
        self.n = 0
        self.failed = 0

    def check(self, ok, name, detail=""):
        self.n += 1
        if not ok:
            self.failed += 1
        print(f"{'ok' if ok else 'not ok'} {self.n} - {name}")
        if detail:
            for line in detail.splitlines():
                print(f"# {line}")
        sys.stdout.flush()


def check_device(tap, dump, device):
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run([dump, d, device], capture_output=True, text=True)
        if r.returncode != 0:
            tap.check(False, f"gpt_dump ran on {device}", r.stderr)
            return
        init, meta = load_safetensors(os.path.join(d, "init.safetensors"))
        batch, _ = load_safetensors(os.path.join(d, "batch.safetensors"))
        grads, _ = load_safetensors(os.path.join(d, "grads.safetensors"))
        final, _ = load_safetensors(os.path.join(d, "final.safetensors"))
        with open(os.path.join(d, "results.json")) as f:
            res = json.load(f)
    cfg = json.loads(meta["config"])
    tok = torch.from_numpy(batch["tokens"].astype(np.int64))
    tgt = torch.from_numpy(batch["targets"].astype(np.int64))

    # loss and gradients in float64
    p64 = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in init.items()}
    loss = forward(p64, cfg, tok, tgt)
    loss.backward()
    rel = abs(res["losses"][0] - loss.item()) / abs(loss.item())
    tap.check(rel < LOSS_TOL, f"loss matches PyTorch (float64) on {device}",
              f"tessera {res['losses'][0]:.9g}, torch {loss.item():.9g}, relative {rel:.2e}")
    worst_name, worst = "", 0.0
    bad = []
    for name in sorted(grads):
        e = nmse(grads[name], p64[name].grad.numpy())
        if e > worst:
            worst_name, worst = name, e
        if not e < GRAD_NMSE:
            bad.append(f"{name}: nmse {e:.2e}")
    tap.check(not bad and len(grads) == len(p64), f"all {len(grads)} parameter gradients match PyTorch (float64) on {device}",
              "\n".join(bad) + f"\nlargest NMSE {worst:.2e} ({worst_name})")

    # ten clipped AdamW steps in float32, decay on matrices only
    losses, p32 = adamw_trajectory(init, res, lambda p: forward(p, cfg, tok, tgt))
    rels = [abs(a - b) / abs(b) for a, b in zip(res["losses"], losses)]
    tap.check(max(rels) < STEP_TOL, f"losses of 10 AdamW steps match PyTorch on {device}",
              "tessera " + " ".join(f"{x:.6f}" for x in res["losses"]) +
              "\ntorch   " + " ".join(f"{x:.6f}" for x in losses) + f"\nlargest relative difference {max(rels):.2e}")
    # The key slice of each attention input bias shifts all scores of a row
    # equally, which softmax ignores: its true gradient is zero, both sides
    # see only rounding noise there, and Adam turns noise into +-lr steps of
    # arbitrary sign. It has no effect on any output, so it is left out.
    C = cfg["n_embd"]

    def comparable(name, a):
        return np.concatenate([a[:C], a[2 * C:]]) if name.endswith("attn.c_attn.bias") else a

    errs = sorted(((nmse(comparable(k, final[k]), comparable(k, p32[k].detach().numpy())), k) for k in final),
                  reverse=True)
    e = errs[0][0]
    tap.check(e < FINAL_NMSE, f"weights after 10 AdamW steps match PyTorch on {device}",
              f"largest NMSE {e:.2e} ({errs[0][1]})")


def main():
    dump, devices = sys.argv[1], sys.argv[2:]
    print("TAP version 13")
    print(f"1..{4 * len(devices)}")
    tap = Tap()
    for dev in devices:
        check_device(tap, dump, dev)
    sys.exit(1 if tap.failed else 0)


if __name__ == "__main__":
    main()
