#!/usr/bin/env python3
"""Interchange (TAP): `tessera convert` to and from Hugging Face GPT-2 and
llm.c model files. Round trips are bit-exact; Hugging Face's
GPT2LMHeadModel (transformers, from PyPI; the cases skip without it) gives
tessera's logits within 1e-4 for a converted tessera model, and tessera
gives transformers' logits for a converted GPT-2; a converted model
fine-tunes with `train --init`.
usage: test_convert.py TESSERA LOGITS_DUMP"""
import json
import os
import struct
import subprocess
import sys
import tempfile

tessera, dump = sys.argv[1], sys.argv[2]
work = tempfile.mkdtemp(prefix="tessera-convert-")
results = []


def check(name, ok, *diag):
    results.append((name, ok, diag))


def skip(name, why):
    results.append((name, None, (why,)))


def run(*args):
    p = subprocess.run([tessera, *args], capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


def tensors(path):
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    return {k: body[v["data_offsets"][0]:v["data_offsets"][1]] for k, v in header.items() if k != "__metadata__"}


def logits(ckpt, tokens):
    out = subprocess.run([dump, ckpt, *map(str, tokens)], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


j = os.path.join
rc, out = run("train", "--device", "cpu", "--layers", "2", "--heads", "2", "--width", "32", "--seq-len", "24",
              "--batch", "4", "--steps", "5", "--out", j(work, "run"), "--quiet")
ckpt = j(work, "run", "step_00000005")
steps = [run("convert", "--to", "hf", j(work, "run"), j(work, "hf")),
         run("convert", "--to", "tessera", j(work, "hf"), j(work, "back")),
         run("convert", "--to", "llmc", j(work, "run"), j(work, "m.bin")),
         run("convert", "--to", "tessera", j(work, "m.bin"), j(work, "back2"))]
bad = [o for r, o in steps if r != 0]
ok = rc == 0 and not bad
same = ok and all(tensors(j(ckpt, "model.safetensors")) == tensors(j(work, d, "model.safetensors"))
                  for d in ("back", "back2"))
check("tessera -> Hugging Face -> tessera and tessera -> llm.c -> tessera are bit-exact", same, out, *bad)

# llm.c's file as llm.c reads it: header, then wte padded to 128 rows
if ok:
    data = open(j(work, "m.bin"), "rb").read()
    h = struct.unpack("<256i", data[:1024])
    V, L, C, T, Vp = h[3], h[4], h[6], h[2], h[7]
    nparams = Vp * C + T * C + L * (12 * C * C + 13 * C) + 2 * C
    wte = tensors(j(ckpt, "model.safetensors"))["wte.weight"]
    good = h[0] == 20240326 and h[1] == 3 and Vp % 128 == 0 and len(data) == 1024 + 4 * nparams and \
        data[1024:1024 + len(wte)] == wte
    check("the llm.c file has llm.c's header, order and padded vocabulary", good, str(h[:8]), len(data))
else:
    check("the llm.c file has llm.c's header, order and padded vocabulary", False, "conversion failed")

try:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
except Exception as e:  # noqa: BLE001
    why = f"transformers is not installed ({type(e).__name__})"
    skip("Hugging Face's GPT2LMHeadModel gives tessera's logits for a converted tessera model", why)
    skip("a Hugging Face GPT-2 converted to tessera gives transformers' logits", why)
else:
    tokens = [72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100, 33]
    mine = torch.tensor(logits(ckpt, tokens))
    hf = GPT2LMHeadModel.from_pretrained(j(work, "hf")).eval()
    with torch.no_grad():
        theirs = hf(torch.tensor([tokens])).logits[0]
    d = (mine - theirs).abs().max().item()
    check(f"Hugging Face's GPT2LMHeadModel gives tessera's logits for a converted tessera model (max |diff| {d:.2e})",
          d < 1e-4 and mine.argmax(-1).tolist() == theirs.argmax(-1).tolist(), d)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=300, n_positions=32, n_embd=48, n_layer=2, n_head=4, activation_function="gelu_new")
    model = GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(j(work, "hf2"), safe_serialization=True)
    rc2, out2 = run("convert", "--to", "tessera", j(work, "hf2"), j(work, "from_hf"))
    if rc2 == 0:
        tokens = [5, 17, 299, 0, 42, 42, 7]
        mine = torch.tensor(logits(j(work, "from_hf"), tokens))
        with torch.no_grad():
            theirs = model(torch.tensor([tokens])).logits[0]
        d = (mine - theirs).abs().max().item()
        check(f"a Hugging Face GPT-2 converted to tessera gives transformers' logits (max |diff| {d:.2e})", d < 1e-4, d)
    else:
        check("a Hugging Face GPT-2 converted to tessera gives transformers' logits", False, out2)

# fine-tuning a converted model on new data with --init
text = j(work, "text.txt")
with open(text, "w") as f:
    f.write("new data for fine-tuning, with its own schedule.\n" * 40)
rc, out = run("train", "--device", "cpu", "--init", j(work, "back"), "--data", text, "--seq-len", "24", "--batch", "4",
              "--steps", "3", "--lr", "1e-3", "--out", j(work, "ft"), "--quiet")
ok = rc == 0 and os.path.exists(j(work, "ft", "step_00000003", "model.safetensors"))
check("train --init starts from a converted model's weights and tokenizer with new data", ok, out)

print("TAP version 13")
print(f"1..{len(results)}")
for i, (name, ok, diag) in enumerate(results, 1):
    if ok is None:
        print(f"ok {i} - {name} # SKIP {diag[0]}")
        continue
    print(f"{'ok' if ok else 'not ok'} {i} - {name}")
    if not ok:
        for d in diag:
            for line in str(d).splitlines()[:20]:
                print(f"# {line}")
sys.exit(0 if all(ok is not False for _, ok, _ in results) else 1)
