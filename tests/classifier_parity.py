#!/usr/bin/env python3
"""tessera's sequence classifier against PyTorch on the same weights (TAP).

usage: classifier_parity.py CLASSIFIER_DUMP DEVICE [DEVICE...]

For each device and each of last/mean pooling with causal/bidirectional
attention, max pooling with each (and last pooling, causal, with half the mean language-model loss
of the sequences added: GPT-1's auxiliary objective, --lm-weight; and two
cases with a table of character n-grams, --char-ngrams), classifier_dump (tests/classifier_dump.c) writes the classifier's
weights, a right-padded batch of four sequences of different lengths with
labels and class weights, the class-weighted mean cross-entropy, the logits
and every parameter's gradient. This script rebuilds the classifier in
PyTorch float64 (the GPT trunk of torch_parity.py with attention over the
real keys only, pooling over the real tokens, a linear head) and checks the
loss and logits (relative difference under 1e-5) and each parameter's
gradient (NMSE under 1e-9).
"""
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# reports the skip (and exits) where torch is missing
from torch_parity import GRAD_NMSE, LOSS_TOL, Tap, load_safetensors, nmse, trunk  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# (pool, attention, LM loss weight, buckets of character n-grams)
CASES = [("last", "causal", 0, 0), ("mean", "causal", 0, 0), ("last", "bidirectional", 0, 0),
         ("mean", "bidirectional", 0, 0), ("max", "causal", 0, 0), ("max", "bidirectional", 0, 0),
         ("last", "causal", 0.5, 0), ("last", "causal", 0.5, 13), ("mean", "bidirectional", 0, 13)]


def classifier(p, cfg, cls, tok, lengths, labels, weights, lm_weight=0, ngram_off=None, ngrams=None):
    """Class-weighted mean cross-entropy (plus lm_weight times the mean
    next-token loss over the real tokens, through the tied head), the
    logits and that language-model loss. With n-grams, position i adds
    rows ngrams[ngram_off[i]:ngram_off[i+1]] of ngram.weight, each weighted
    1/sqrt(their count): PyTorch's embedding_bag, as fastText sums them."""
    B, T = tok.shape
    real = torch.arange(T)[None, :] < lengths[:, None]           # [B, T]: real tokens
    mask = real[:, None, None, :]                                 # keys: the real ones
    if cls["attention"] == "causal":
        mask = mask & torch.ones(T, T, dtype=torch.bool).tril()
    add = None
    if ngram_off is not None:
        counts = ngram_off[1:] - ngram_off[:-1]                   # [B*T]
        w = torch.repeat_interleave(1.0 / counts.clamp(min=1).to(torch.float64).sqrt(), counts)
        add = F.embedding_bag(ngrams, p["ngram.weight"], ngram_off[:-1], mode="sum",
                              per_sample_weights=w).view(B, T, -1)
    x = trunk(p, cfg, tok, mask, add)
    if cls["pool"] == "last":
        pooled = x[torch.arange(B), lengths - 1]
    elif cls["pool"] == "max":                                   # each channel's max over the real tokens
        pooled = x.masked_fill(~real[:, :, None], -math.inf).max(dim=1).values
    else:
        pooled = (x * real[:, :, None].to(x.dtype)).sum(dim=1) / lengths[:, None].to(x.dtype)
    logits = pooled @ p["score.weight"].T + p["score.bias"]
    losses = F.cross_entropy(logits, labels, reduction="none")
    loss = (weights * losses).sum() / weights.sum()
    lm = torch.zeros((), dtype=x.dtype)
    if lm_weight:
        predicts = torch.arange(T - 1)[None, :] < (lengths - 1)[:, None]  # [B, T-1]: a real next token
        lm = F.cross_entropy((x[:, :-1] @ p["wte.weight"].T)[predicts], tok[:, 1:][predicts])
        loss = loss + lm_weight * lm
    return loss, logits, lm


def check_case(tap, dump, device, pool, attention, lm_weight, ngrams):
    what = (f"{pool} pooling, {attention} attention{f', LM loss x {lm_weight}' if lm_weight else ''}"
            f"{f', character n-grams in {ngrams} buckets' if ngrams else ''}, on {device}")
    with tempfile.TemporaryDirectory() as d:
        args = [dump, d, device, pool, attention, str(lm_weight), str(ngrams)]
        r = subprocess.run(args, capture_output=True, text=True)
        if r.returncode != 0:
            tap.check(False, f"classifier_dump ran ({what})", r.stderr)
            tap.check(False, f"gradients ({what})", "no dump")
            return
        init, meta = load_safetensors(os.path.join(d, "init.safetensors"))
        batch, _ = load_safetensors(os.path.join(d, "batch.safetensors"))
        grads, _ = load_safetensors(os.path.join(d, "grads.safetensors"))
        with open(os.path.join(d, "results.json")) as f:
            res = json.load(f)
    cfg, cls = json.loads(meta["config"]), json.loads(meta["classifier"])
    assert cls["pool"] == pool and cls["attention"] == attention, cls
    tok = torch.from_numpy(batch["tokens"].astype(np.int64))
    lengths = torch.from_numpy(batch["lengths"].astype(np.int64))
    labels = torch.from_numpy(batch["labels"].astype(np.int64))
    weights = torch.from_numpy(batch["weights"].astype(np.float64))
    p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in init.items()}
    ng_off = torch.from_numpy(batch["ngram_off"].astype(np.int64)) if ngrams else None
    ng = torch.from_numpy(batch["ngrams"].astype(np.int64)) if ngrams else None
    assert cls.get("char_ngrams", 0) == ngrams, cls
    loss, logits, lm = classifier(p, cfg, cls, tok, lengths, labels, weights, lm_weight, ng_off, ng)
    loss.backward()
    rel = abs(res["loss"] - loss.item()) / abs(loss.item())
    if lm_weight:
        rel = max(rel, abs(res["lm_loss"] - lm.item()) / abs(lm.item()))
    ref = logits.detach().numpy().reshape(-1)
    lrel = float(np.max(np.abs(np.array(res["logits"]) - ref)) / np.max(np.abs(ref)))
    tap.check(rel < LOSS_TOL and lrel < LOSS_TOL, f"loss and logits match PyTorch (float64), {what}",
              f"loss: tessera {res['loss']:.9g}, torch {loss.item():.9g}, relative {rel:.2e}; "
              f"logits: largest difference {lrel:.2e} of the largest logit")
    bad, worst, worst_name = [], 0.0, ""
    for name in sorted(p):
        if name not in grads:
            bad.append(f"{name}: no gradient in the dump")
            continue
        e = nmse(grads[name], p[name].grad.numpy())
        if e > worst:
            worst, worst_name = e, name
        if not e < GRAD_NMSE:
            bad.append(f"{name}: nmse {e:.2e}")
    tap.check(not bad and len(grads) == len(p), f"all {len(p)} parameter gradients match PyTorch (float64), {what}",
              "\n".join(bad + [f"largest NMSE {worst:.2e} ({worst_name})"]))


def main():
    dump, devices = sys.argv[1], sys.argv[2:]
    print("TAP version 13")
    print(f"1..{2 * len(CASES) * len(devices)}")
    tap = Tap()
    for dev in devices:
        for pool, attention, lm_weight, ngrams in CASES:
            check_case(tap, dump, dev, pool, attention, lm_weight, ngrams)
    sys.exit(1 if tap.failed else 0)


if __name__ == "__main__":
    main()
