#!/usr/bin/env python3
"""Write a Hugging Face checkpoint directory with seeded random weights.

Needs only numpy (no torch, no safetensors package): the safetensors files
are written by hand, tensor by tensor, so checkpoints larger than memory
(e.g. --preset llama-3.1-8b) stream to disk in bounded memory.

Output: config.json, generation_config.json, model.safetensors (or
model-0000K-of-0000N.safetensors + model.safetensors.index.json with
--shards N), and tokenizer.json when --tokenizer is given.

Values: matrices ~ normal(0, 0.02), norm weights 1 + normal(0, 0.02), biases
normal(0, 0.02). Each tensor has its own generator seeded from (--seed, crc32
of its name), so a tensor's values do not depend on --shards, --dtype or the
other tensors. Stored as BF16 (float32 rounded to nearest even), F16 or F32.

Examples:
  tools/make_checkpoint.py --preset tiny --out /tmp/tiny
  tools/make_checkpoint.py --preset tiny --arch qwen2 --dtype f32 --shards 2 --out /tmp/q
  tools/make_checkpoint.py --preset llama-3.1-8b --shards 4 --out /data/llama8b-random
  tools/make_checkpoint.py --arch llama --hidden-size 256 --intermediate-size 688 \\
      --layers 4 --heads 8 --kv-heads 2 --vocab-size 8192 --out /tmp/custom
"""
import argparse
import json
import os
import shutil
import sys
import zlib

import numpy as np

# Real settings of the named models (config.json of the released checkpoints;
# eos ids of the instruct variants).
PRESETS = {
    "tiny": dict(arch="llama", hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                 max_position_embeddings=512, rope_theta=10000.0, rms_norm_eps=1e-5,
                 rope_scaling=None, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2),
    "llama-3.1-8b": dict(arch="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256,
                         max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
                         rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                         tie_word_embeddings=False, bos_token_id=128000,
                         eos_token_id=[128001, 128008, 128009]),
    "qwen2.5-7b": dict(arch="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                       max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                       rope_scaling=None, tie_word_embeddings=False, bos_token_id=151643,
                       eos_token_id=151645),
    "qwen2.5-14b": dict(arch="qwen2", hidden_size=5120, intermediate_size=13824, num_hidden_layers=48,
                        num_attention_heads=40, num_key_value_heads=8, vocab_size=152064,
                        max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-5,
                        rope_scaling=None, tie_word_embeddings=False, bos_token_id=151643,
                        eos_token_id=151645),
}

DTYPES = {"bf16": ("BF16", 2), "f16": ("F16", 2), "f32": ("F32", 4)}
CHUNK = 1 << 24  # elements generated at a time


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory (created; must be empty if it exists)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--arch", choices=["llama", "qwen2"], help="override the preset's architecture")
    p.add_argument("--hidden-size", type=int)
    p.add_argument("--intermediate-size", type=int)
    p.add_argument("--layers", type=int, dest="num_hidden_layers")
    p.add_argument("--heads", type=int, dest="num_attention_heads")
    p.add_argument("--kv-heads", type=int, dest="num_key_value_heads")
    p.add_argument("--head-dim", type=int)
    p.add_argument("--vocab-size", type=int)
    p.add_argument("--max-position-embeddings", type=int)
    p.add_argument("--rope-theta", type=float)
    p.add_argument("--rms-norm-eps", type=float)
    p.add_argument("--rope-llama3", metavar="FACTOR,LOW,HIGH,ORIG_MAX",
                   help="llama3 rope scaling, e.g. 8,1,4,8192 ('none' removes the preset's)")
    p.add_argument("--attention-bias", action="store_true", help="llama: q/k/v/o biases")
    tie = p.add_mutually_exclusive_group()
    tie.add_argument("--tie", dest="tie", action="store_true", default=None)
    tie.add_argument("--no-tie", dest="tie", action="store_false")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", help="tokenizer.json to copy into the checkpoint")
    return p.parse_args(argv)


def tokenizer_vocab_size(path):
    """Largest token id in a tokenizer.json, plus one."""
    with open(path, encoding="utf-8") as f:
        tok = json.load(f)
    ids = list(tok.get("model", {}).get("vocab", {}).values()) if isinstance(tok.get("model", {}).get("vocab"), dict) else []
    ids += [t["id"] for t in tok.get("added_tokens", [])]
    return max(ids) + 1 if ids else None


def build_config(a):
    """Returns the settings dict (preset + overrides) after sanity checks."""
    c = dict(PRESETS[a.preset])
    if a.arch:
        c["arch"] = a.arch
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings",
                "rope_theta", "rms_norm_eps"):
        v = getattr(a, key)
        if v is not None:
            c[key] = v
    if a.num_attention_heads is not None and a.num_key_value_heads is None:
        c["num_key_value_heads"] = min(c["num_key_value_heads"], c["num_attention_heads"])
    if a.tokenizer and a.vocab_size is None and a.preset == "tiny":
        n = tokenizer_vocab_size(a.tokenizer)
        if n:
            c["vocab_size"] = n
    if a.rope_llama3:
        if a.rope_llama3 == "none":
            c["rope_scaling"] = None
        else:
            f, lo, hi, orig = a.rope_llama3.split(",")
            c["rope_scaling"] = {"rope_type": "llama3", "factor": float(f), "low_freq_factor": float(lo),
                                 "high_freq_factor": float(hi), "original_max_position_embeddings": int(orig)}
    if a.tie is not None:
        c["tie_word_embeddings"] = a.tie
    c["attention_bias"] = bool(a.attention_bias)
    if c["arch"] == "qwen2" and a.attention_bias:
        sys.exit("--attention-bias is for llama (qwen2 always has q/k/v biases)")
    c.setdefault("head_dim", c["hidden_size"] // c["num_attention_heads"])
    if c["num_attention_heads"] % c["num_key_value_heads"]:
        sys.exit("heads must be a multiple of kv-heads")
    if "head_dim" not in PRESETS[a.preset] and a.head_dim is None and c["hidden_size"] % c["num_attention_heads"]:
        sys.exit("hidden-size must be a multiple of heads (or give --head-dim)")
    if c["head_dim"] % 2:
        sys.exit("head-dim must be even")
    for e in ([c["eos_token_id"]] if isinstance(c["eos_token_id"], int) else c["eos_token_id"]) + [c["bos_token_id"]]:
        if e >= c["vocab_size"]:
            c["bos_token_id"], c["eos_token_id"] = 1 % c["vocab_size"], 2 % c["vocab_size"]
            print(f"note: special token ids exceed vocab {c['vocab_size']}; using bos 1, eos 2", file=sys.stderr)
            break
    return c


def config_json(c):
    """config.json as transformers 4.x writes it (transformers 5 reads it too)."""
    qwen = c["arch"] == "qwen2"
    d = {
        "architectures": ["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"],
        "model_type": "qwen2" if qwen else "llama",
        "attention_dropout": 0.0,
        "bos_token_id": c["bos_token_id"],
        "eos_token_id": c["eos_token_id"],
        "hidden_act": "silu",
        "hidden_size": c["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": c["intermediate_size"],
        "max_position_embeddings": c["max_position_embeddings"],
        "num_attention_heads": c["num_attention_heads"],
        "num_hidden_layers": c["num_hidden_layers"],
        "num_key_value_heads": c["num_key_value_heads"],
        "rms_norm_eps": c["rms_norm_eps"],
        "rope_scaling": c["rope_scaling"],
        "rope_theta": c["rope_theta"],
        "tie_word_embeddings": c["tie_word_embeddings"],
        "torch_dtype": {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[c["dtype"]],
        "use_cache": True,
        "vocab_size": c["vocab_size"],
    }
    if qwen:
        d.update(use_sliding_window=False, sliding_window=c["max_position_embeddings"],
                 max_window_layers=c["num_hidden_layers"])
    else:
        d.update(attention_bias=c["attention_bias"], mlp_bias=False, pretraining_tp=1,
                 head_dim=c["head_dim"])
    if qwen and c["head_dim"] != c["hidden_size"] // c["num_attention_heads"]:
        d["head_dim"] = c["head_dim"]
    return d


def tensor_list(c):
    """[(name, shape, kind)] in HF's order; kind is 'matrix', 'norm' or 'bias'."""
    h, i, hd = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    bias = c["arch"] == "qwen2" or c["attention_bias"]
    t = [("model.embed_tokens.weight", (c["vocab_size"], h), "matrix")]
    for layer in range(c["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        t.append((p + "input_layernorm.weight", (h,), "norm"))
        t.append((p + "self_attn.q_proj.weight", (q, h), "matrix"))
        t.append((p + "self_attn.k_proj.weight", (kv, h), "matrix"))
        t.append((p + "self_attn.v_proj.weight", (kv, h), "matrix"))
        if bias:
            t.append((p + "self_attn.q_proj.bias", (q,), "bias"))
            t.append((p + "self_attn.k_proj.bias", (kv,), "bias"))
            t.append((p + "self_attn.v_proj.bias", (kv,), "bias"))
        t.append((p + "self_attn.o_proj.weight", (h, q), "matrix"))
        if c["arch"] == "llama" and c["attention_bias"]:
            t.append((p + "self_attn.o_proj.bias", (h,), "bias"))
        t.append((p + "post_attention_layernorm.weight", (h,), "norm"))
        t.append((p + "mlp.gate_proj.weight", (i, h), "matrix"))
        t.append((p + "mlp.up_proj.weight", (i, h), "matrix"))
        t.append((p + "mlp.down_proj.weight", (h, i), "matrix"))
    t.append(("model.norm.weight", (h,), "norm"))
    if not c["tie_word_embeddings"]:
        t.append(("lm_head.weight", (c["vocab_size"], h), "matrix"))
    return t


def numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def to_dtype(x, dtype):
    """float32 array -> bytes-ready array of the stored dtype."""
    if dtype == "f32":
        return x.astype("<f4", copy=False)
    if dtype == "f16":
        return x.astype("<f2")
    u = x.view(np.uint32)
    return ((u + (np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1)))) >> 16).astype("<u2")


def write_tensor_data(f, name, shape, kind, seed, dtype):
    """Generates the tensor chunk by chunk and appends its bytes to f."""
    rng = np.random.Generator(np.random.PCG64([seed, zlib.crc32(name.encode())]))
    left = numel(shape)
    while left:
        n = min(left, CHUNK)
        x = rng.standard_normal(n, dtype=np.float32) * np.float32(0.02)
        if kind == "norm":
            x += np.float32(1.0)
        f.write(to_dtype(x, dtype).tobytes())
        left -= n


def write_safetensors(path, tensors, seed, dtype):
    """Writes one safetensors file holding `tensors` ([(name, shape, kind)])."""
    st_dtype, esize = DTYPES[dtype]
    header = {"__metadata__": {"format": "pt"}}
    off = 0
    for name, shape, _ in tensors:
        nb = numel(shape) * esize
        header[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [off, off + nb]}
        off += nb
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for name, shape, kind in tensors:
            write_tensor_data(f, name, shape, kind, seed, dtype)
    return off


def split_shards(tensors, n, esize):
    """Splits the ordered list into n contiguous groups of similar byte size."""
    sizes = [numel(s) * esize for _, s, _ in tensors]
    total = sum(sizes)
    groups, cur, acc = [], [], 0
    for t, sz in zip(tensors, sizes):
        target = total * (len(groups) + 1) / n
        if cur and acc + sz / 2 > target and len(groups) < n - 1:
            groups.append(cur)
            cur = []
        cur.append(t)
        acc += sz
    groups.append(cur)
    if len(groups) < n:
        sys.exit(f"cannot split {len(tensors)} tensors into {n} non-empty shards")
    return groups


def main(argv=None):
    a = parse_args(argv)
    c = build_config(a)
    c["dtype"] = a.dtype
    if a.shards < 1:
        sys.exit("--shards must be >= 1")
    if os.path.exists(a.out) and os.listdir(a.out):
        sys.exit(f"{a.out} exists and is not empty")
    os.makedirs(a.out, exist_ok=True)

    cfg = config_json(c)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    with open(os.path.join(a.out, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": c["bos_token_id"], "eos_token_id": c["eos_token_id"], "do_sample": False},
                  f, indent=2)
        f.write("\n")
    if a.tokenizer:
        shutil.copyfile(a.tokenizer, os.path.join(a.out, "tokenizer.json"))

    tensors = tensor_list(c)
    esize = DTYPES[a.dtype][1]
    if a.shards == 1:
        total = write_safetensors(os.path.join(a.out, "model.safetensors"), tensors, a.seed, a.dtype)
    else:
        weight_map, total = {}, 0
        for k, group in enumerate(split_shards(tensors, a.shards, esize)):
            name = f"model-{k + 1:05d}-of-{a.shards:05d}.safetensors"
            total += write_safetensors(os.path.join(a.out, name), group, a.seed, a.dtype)
            weight_map.update({t[0]: name for t in group})
            print(f"wrote {name} ({len(group)} tensors)", file=sys.stderr)
        with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
            f.write("\n")
    params = sum(numel(s) for _, s, _ in tensors)
    print(f"{a.out}: {cfg['architectures'][0]}, {params:,} parameters, {total:,} bytes of {a.dtype}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
