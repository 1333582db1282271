#!/usr/bin/env python3
"""Compare margingate's logits with HF transformers on the same checkpoint.

Runs on the GPU machine (python3 there has torch and transformers):

  tools/hf_oracle.py --bin build-gpu/margingate --model DIR [--device cuda]
                     [--prompts 4] [--new 64] [--synthetic] [--json OUT.json]

For each prompt, `margingate generate --json --ignore-eos --dump-logits F`
gives our greedy tokens and the FP32 logits that chose each of them, in BF16
numerics (the default) and with --fp32. HF then runs one teacher-forced
forward pass over prompt + our tokens in float32 (weights upcast from the
checkpoint, eager attention, TF32 off: the settings of golden.json), and at
every generated position we compare:
  - top-1 agreement: HF's argmax is our token;
  - logit error: max |ours - HF| over the vocabulary / max |HF|, per position
    (median and max reported), and the relative Frobenius error overall.
Prompts: golden.json's prompts when the model has one, else fixed English
sentences (--synthetic forces those), tokenized by the model's tokenizer.

Pass: our FP32 run agrees on top-1 at >= 98% of positions with median logit
error <= 1e-3; the BF16 run's figures are reported (checked against a loose
floor, since BF16 legitimately flips near-ties). Exit 0 on pass.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

SYNTHETIC = [
    "The history of the printing press begins with",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Question: A farmer has 12 cows and buys 7 more. How many cows does he have?\nAnswer:",
    "In the beginning the Universe was created. This has made a lot of people very angry and",
]


def run_ours(args, prompt, fp32):
    with tempfile.NamedTemporaryFile(suffix=".bin", delete=False) as f:
        path = f.name
    cmd = [args.bin, "generate", "-m", args.model, "--json", "--ignore-eos", "-n", str(args.new),
           "--device", args.device, "--dump-logits", path, "-p", prompt]
    if fp32:
        cmd.append("--fp32")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        os.unlink(path)
        raise SystemExit(f"margingate failed: {' '.join(cmd[:8])}...: {r.stderr.strip()[-400:]}")
    out = json.loads(r.stdout)
    logits = np.fromfile(path, dtype=np.float32)
    os.unlink(path)
    n = len(out["token_ids"])
    return out["prompt_ids"], out["token_ids"], logits.reshape(n, -1)


def compare(ours_logits, tokens, hf_logits):
    hf_top = hf_logits.argmax(axis=1)
    top1 = float(np.mean(hf_top == np.array(tokens)))
    scale = np.abs(hf_logits).max(axis=1)
    err = np.abs(ours_logits - hf_logits).max(axis=1) / np.maximum(scale, 1e-30)
    fro = float(np.linalg.norm(ours_logits - hf_logits) / max(np.linalg.norm(hf_logits), 1e-30))
    return top1, err, fro


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--synthetic", action="store_true")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--bench", action="store_true",
                    help="then time HF's own BF16 decode (eager, KV cache) at batch 1 and 8, context 512")
    ap.add_argument("--bench-compile", action="store_true",
                    help="with --bench: also with a static KV cache and torch.compile (reduce-overhead)")
    args = ap.parse_args()

    golden = os.path.join(args.model, "golden.json")
    if os.path.exists(golden) and not args.synthetic:
        ps = json.load(open(golden))["prompts"]
        step = max(1, len(ps) // args.prompts)
        prompts = [p["prompt_text"] for p in ps[::step]][: args.prompts]
    else:
        prompts = SYNTHETIC[: args.prompts]

    # Ours first (the GPU is free again before HF loads the model).
    runs = []
    for p in prompts:
        ids, toks16, l16 = run_ours(args, p, fp32=False)
        ids32, toks32, l32 = run_ours(args, p, fp32=True)
        assert ids == ids32
        runs.append((ids, toks16, l16, toks32, l32))
    print(f"ours: {len(prompts)} prompts x {args.new} tokens done", flush=True)

    import torch
    from transformers import AutoModelForCausalLM

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="eager",
                                                 device_map="cuda")
    model.eval()

    def hf_logits(ids, toks):
        x = torch.tensor([ids + toks[:-1]], device="cuda")
        with torch.no_grad():
            out = model(x).logits[0, len(ids) - 1:].float().cpu().numpy()
        return out

    res = {"model": os.path.basename(os.path.normpath(args.model)), "positions": 0, "bf16": {}, "fp32": {}}
    agg = {"bf16": [[], [], []], "fp32": [[], [], []]}
    for i, (ids, t16, l16, t32, l32) in enumerate(runs):
        for name, toks, ours in (("bf16", t16, l16), ("fp32", t32, l32)):
            h = hf_logits(ids, toks)
            top1, err, fro = compare(ours, toks, h)
            agg[name][0].append(top1 * len(toks))
            agg[name][1].extend(err.tolist())
            agg[name][2].append(fro)
            print(f"  prompt {i} {name}: top-1 {top1:.3f} over {len(toks)}, logit err median {np.median(err):.2e} "
                  f"max {err.max():.2e}, rel fro {fro:.2e}")
        res["positions"] += len(t16)
    n = res["positions"]
    for name in ("bf16", "fp32"):
        e = np.array(agg[name][1])
        res[name] = {"top1": sum(agg[name][0]) / n, "err_median": float(np.median(e)), "err_max": float(e.max()),
                     "rel_fro_max": max(agg[name][2])}
    ok = res["fp32"]["top1"] >= 0.98 and res["fp32"]["err_median"] <= 1e-3 and res["bf16"]["top1"] >= 0.5
    print(f"oracle {res['model']}: {n} positions; ours fp32 top-1 {res['fp32']['top1']:.3f} err median "
          f"{res['fp32']['err_median']:.1e}; ours bf16 top-1 {res['bf16']['top1']:.3f} err median "
          f"{res['bf16']['err_median']:.1e} max {res['bf16']['err_max']:.1e}")
    if args.bench:
        res["hf_tpot_ms"] = hf_decode_bench(model, torch, device=args.device)
        if args.bench_compile:
            res["hf_compiled_tpot_ms"] = hf_decode_bench(model, torch, compiled=True, device=args.device)
    if args.json:
        json.dump(res, open(args.json, "w"), indent=1)
    sys.exit(0 if ok else 1)


def hf_decode_bench(model, torch, compiled=False, device="cuda"):
    """HF transformers' BF16 decode time per step (greedy) after a 512-token
    prompt: the difference between generating 40 and 8 tokens, over 32
    steps, so the prefill cancels. Eager attention with the dynamic KV
    cache; compiled: a static KV cache, with which generate compiles the
    decode forward itself (transformers' auto-compile: torch.compile, mode
    reduce-overhead, i.e. CUDA graphs; wrapping model.forward in
    torch.compile by hand failed on the H100 with "accessing tensor output
    of CUDAGraphs that has been overwritten", run 5 of 2026-11-23), each
    length run once first so that compilation is not timed. A failure is
    reported, not raised."""
    import time
    model.to(torch.bfloat16)
    vocab = model.config.vocab_size
    name = "static cache + torch.compile" if compiled else "eager"
    kw = {}
    if compiled:
        kw["cache_implementation"] = "static"
        try:
            from transformers import CompileConfig
            kw["compile_config"] = CompileConfig(fullgraph=True, mode="reduce-overhead")
        except ImportError:  # older transformers: auto-compile with its defaults
            pass
    out = {}
    try:
        for batch in (1, 8):
            g = torch.Generator().manual_seed(batch)
            ids = torch.randint(3, vocab, (batch, 512), generator=g).to(device)
            def sync():
                if device == "cuda":
                    torch.cuda.synchronize()
            def gen(n):
                sync()
                t0 = time.perf_counter()
                with torch.no_grad():
                    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                   do_sample=False, pad_token_id=0, **kw)
                sync()
                return time.perf_counter() - t0
            for n in ((8, 40) if compiled else (4,)):  # warm-up (and compilation)
                gen(n)
            if compiled and not hasattr(model, "_compiled_call"):
                raise RuntimeError("generate did not compile the forward (transformers' auto-compile criteria)")
            t = (gen(40) - gen(8)) / 32
            out[batch] = t * 1e3
            print(f"hf-bench {name} bf16 batch {batch} ctx 512: TPOT {t * 1e3:.2f} ms ({batch / t:.0f} tok/s)",
                  flush=True)
    except Exception as e:  # torch.compile may not work on this machine's stack
        print(f"hf-bench {name}: failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
    return out


if __name__ == "__main__":
    main()
