#!/usr/bin/env python3
"""Converts a sentencepiece tokenizer.model (Llama 2) into HF tokenizer.json
with transformers' own conversion (LlamaTokenizer, tokenizers backend; no
torch needed) and records goldens for the C tokenizer tests.

Writes into OUT_DIR (default tests/data/llama2-tokenizer):
  tokenizer.json            compact JSON as transformers converts it
                            (Metaspace pre-tokenizer, BPE + byte_fallback,
                            BOS <s> added by the post-processor)
  tokenizer_config.json     bos/eos/unk names
  tokenizer-golden.json     same format as shared/tokenizers/llama3.1's golden:
                            ids = encode(text, add_special_tokens=False),
                            with_special_tokens = encode(text),
                            decode_roundtrip = decode(ids) == text
  tokenizer-golden-legacy.json
                            the legacy (transformers 4, legacy=True) layout:
                            normalizer Prepend("▁") + Replace(" ", "▁"), no
                            pre-tokenizer, unk_token "<unk>". It holds the
                            `patch` to apply to tokenizer.json's top-level keys
                            (dotted key = nested) and goldens computed with
                            tokenizers on the patched file.

Usage: python3 tools/convert_sp_tokenizer.py [--model ../shared/tokenizers/llama2/tokenizer.model]
           [--strings ../shared/tokenizers/llama3.1/tokenizer-golden.json] [--out tests/data/llama2-tokenizer]
"""
import argparse
import datetime
import hashlib
import json
import os
import shutil
import tempfile

import tokenizers
import transformers
from transformers import LlamaTokenizer

# Strings that exercise sentencepiece-specific behaviour (special tokens in
# text, leading spaces, metaspace "first" prepending, byte fallback).
EXTRA = [
    "<s>x</s>y",
    "text<s>more",
    " lead",
    "  two spaces",
    "<unk>",
    "▁already metaspace ▁▁",
    "\U0001F600\U0001F600 \u00e9\u00e9",
    "tab\tand\u3000ideographic space",
]

LEGACY_PATCH = {
    "normalizer": {
        "type": "Sequence",
        "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
        ],
    },
    "pre_tokenizer": None,
    "model.unk_token": "<unk>",
}


def pick_strings(golden_path):
    """All 'tricky' strings of the llama3.1 golden plus the first few of each other category."""
    entries = json.load(open(golden_path, encoding="utf-8"))["entries"]
    out, per_cat = [], {}
    for e in entries:
        c = e["category"]
        if c == "tricky" or per_cat.get(c, 0) < 3:
            out.append((c, e["text"]))
            per_cat[c] = per_cat.get(c, 0) + 1
    out += [("llama2_extra", s) for s in EXTRA]
    return out


def golden_entries(encode, decode, strings):
    rows, fails = [], 0
    for cat, text in strings:
        ids = encode(text, False)
        rt = decode(ids) == text
        fails += not rt
        rows.append({"category": cat, "text": text, "ids": ids, "with_special_tokens": encode(text, True),
                     "decode_roundtrip": rt})
    return rows, fails


def apply_patch(tj, patch):
    for k, v in patch.items():
        node, parts = tj, k.split(".")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = v
    return tj


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="../shared/tokenizers/llama2/tokenizer.model")
    ap.add_argument("--strings", default="../shared/tokenizers/llama3.1/tokenizer-golden.json")
    ap.add_argument("--out", default="tests/data/llama2-tokenizer")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)

    with tempfile.TemporaryDirectory() as src, tempfile.TemporaryDirectory() as saved:
        shutil.copy(a.model, os.path.join(src, "tokenizer.model"))
        # transformers 5 converts tokenizer.model with its LlamaConverter on load;
        # add_bos_token=True gives Llama 2's "<s> $A" post-processor.
        tok = LlamaTokenizer.from_pretrained(src, add_bos_token=True, legacy=False)
        tok.save_pretrained(saved)
        cfg = json.load(open(os.path.join(saved, "tokenizer_config.json"), encoding="utf-8"))
    for k in ("is_local", "local_files_only"):
        cfg.pop(k, None)

    tj_str = tok.backend_tokenizer.to_str()  # compact
    tj_path = os.path.join(a.out, "tokenizer.json")
    with open(tj_path, "w", encoding="utf-8") as f:
        f.write(tj_str)
    with open(os.path.join(a.out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
        f.write("\n")
    sha = hashlib.sha256(open(tj_path, "rb").read()).hexdigest()
    strings = pick_strings(a.strings)
    versions = "transformers %s, tokenizers %s" % (transformers.__version__, tokenizers.__version__)
    today = datetime.date.today().isoformat()

    rows, fails = golden_entries(lambda t, s: tok.encode(t, add_special_tokens=s), lambda ids: tok.decode(ids), strings)
    golden = {
        "description": "Golden tokenization with HF transformers for the Llama 2 sentencepiece tokenizer.model converted "
                       "by tools/convert_sp_tokenizer.py (LlamaTokenizer, tokenizers backend): ids = encode(text, "
                       "add_special_tokens=False); with_special_tokens = encode(text); decode_roundtrip = "
                       "decode(ids) == text. Strings: the 'tricky' and a few other strings of "
                       "shared/tokenizers/llama3.1/tokenizer-golden.json plus llama2_extra cases.",
        "source_model_sha256": hashlib.sha256(open(a.model, "rb").read()).hexdigest(),
        "tokenizer_json_sha256": sha,
        "generated": "%s with %s" % (today, versions),
        "n": len(rows),
        "roundtrip_failures": fails,
        "entries": rows,
    }
    with open(os.path.join(a.out, "tokenizer-golden.json"), "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, indent=1)
        f.write("\n")

    legacy = tokenizers.Tokenizer.from_str(json.dumps(apply_patch(json.loads(tj_str), LEGACY_PATCH)))

    def enc(t, s):
        return legacy.encode(t, add_special_tokens=s).ids

    lrows, lfails = golden_entries(enc, lambda ids: legacy.decode(ids, skip_special_tokens=False), strings)
    lg = {
        "description": "Goldens for the legacy sentencepiece layout (transformers 4 LlamaTokenizerFast, legacy=True): "
                       "tokenizer.json of this folder with `patch` applied to its top-level keys (dotted keys are "
                       "nested), computed with tokenizers.Tokenizer on the patched JSON.",
        "patch": LEGACY_PATCH,
        "generated": "%s with %s" % (today, versions),
        "n": len(lrows),
        "roundtrip_failures": lfails,
        "entries": lrows,
    }
    with open(os.path.join(a.out, "tokenizer-golden-legacy.json"), "w", encoding="utf-8") as f:
        json.dump(lg, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote %s: %d strings, %d roundtrip failures (legacy: %d); tokenizer.json %d bytes, sha256 %s" %
          (a.out, len(rows), fails, lfails, len(tj_str.encode()), sha))


if __name__ == "__main__":
    main()
