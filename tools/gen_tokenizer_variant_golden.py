#!/usr/bin/env python3
"""Goldens for tokenizer.json features the shipped tokenizers do not use:
each variant patches a base tokenizer.json (mg-llama-27m's from ../shared, or
the converted Llama 2 one in tests/data/llama2-tokenizer) and records what HF
tokenizers (Python `tokenizers`) gives for a set of strings: ids without and
with special tokens, and decode with and without skip_special_tokens.

Patch keys are top-level tokenizer.json keys; a dotted key sets a nested
field ("model.unk_token"); "+added_tokens" appends to added_tokens;
"added_tokens[CONTENT].FIELD" sets a field of an existing added token.

Usage: python3 tools/gen_tokenizer_variant_golden.py [--shared ../shared] [--out tests/data/tokenizers/variants-golden.json]
"""
import argparse
import json

import tokenizers

BYTELEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
SPLIT_SPACE = {"type": "Split", "pattern": {"String": " "}, "invert": False}
BL_DECODER = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}


def split_then_bytelevel(behavior, invert=False, pattern=None):
    sp = dict(SPLIT_SPACE, behavior=behavior, invert=invert)
    if pattern:
        sp["pattern"] = pattern
    return {"type": "Sequence", "pretokenizers": [sp, BYTELEVEL]}


VARIANTS = [
    ("gpt2_bytelevel_prefix", "mg", {
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}}),
    ("gpt2_bytelevel_noprefix", "mg", {
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}}),
    ("split_removed", "mg", {"pre_tokenizer": split_then_bytelevel("Removed")}),
    ("split_merged_prev", "mg", {"pre_tokenizer": split_then_bytelevel("MergedWithPrevious")}),
    ("split_merged_next", "mg", {"pre_tokenizer": split_then_bytelevel("MergedWithNext")}),
    ("split_contiguous", "mg", {"pre_tokenizer": split_then_bytelevel("Contiguous", pattern={"Regex": "\\s"})}),
    ("split_invert", "mg", {"pre_tokenizer": split_then_bytelevel("Isolated", True, {"Regex": "\\p{L}+"})}),
    ("nfc_mg", "mg", {"normalizer": {"type": "NFC"}}),
    ("added_strip_flags", "mg", {
        "added_tokens[<|user|>].lstrip": True,
        "added_tokens[<|assistant|>].rstrip": True,
        "+added_tokens": [
            {"id": 8192, "content": "cat", "single_word": True, "lstrip": False, "rstrip": False,
             "normalized": False, "special": False},
            {"id": 8193, "content": "Dog", "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": True, "special": False},
            {"id": 8194, "content": "<|sp|>", "single_word": False, "lstrip": True, "rstrip": True,
             "normalized": False, "special": True},
        ],
        "normalizer": {"type": "Replace", "pattern": {"String": "dog"}, "content": "Dog"},
    }),
    ("metaspace_always_split", "llama2", {
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True},
        "decoder": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True},
    }),
    ("metaspace_never", "llama2", {
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "never", "split": False},
    }),
    ("regex_replace_unk", "llama2", {
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "},
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
        "pre_tokenizer": None,
        "model.byte_fallback": False,
        "model.unk_token": "<unk>",
    }),
    ("no_decoder", "mg", {"decoder": None}),
]

STRINGS = [
    "", " ", "  ", "Hello world", " Hello  world ", "hello   world\n\nnext", "a\tb\r\nc",
    "I'm sure they'll say we've done it", "IT'S DON'T", "x = {'a': [1, 2, 3]}", "3.14159 1,000,000 12345678",
    "caf\u00e9 cafe\u0301 \u212b A\u030a \uac00\u11a8 \u1100\u1161\u11a8", "\u00e9\u0323 e\u0323\u0301 \u1e69",
    "\u4f60\u597d\uff0c\u4e16\u754c", "\U0001F600 \U0001F44D\U0001F3FD", "text<|user|>more", " <|user|> x ",
    "a <|assistant|>  b", "<|assistant|>\n", "the cat sat", "concatenate cat_x cat", "my dog and Dog",
    "x<|sp|>y", " <|sp|> ", "\u2581already \u2581\u2581", "tab\tand\u3000ideographic", "   lead", "trail   ",
    "\u00a0nbsp\u2009thin\u2028ls", "a\u0085b",
]


def apply_patch(tj, patch):
    for k, v in patch.items():
        if k == "+added_tokens":
            tj["added_tokens"] = tj.get("added_tokens") or []
            tj["added_tokens"].extend(v)
        elif k.startswith("added_tokens["):
            content, field = k[len("added_tokens["):].split("].")
            for t in tj["added_tokens"]:
                if t["content"] == content:
                    t[field] = v
        else:
            node, parts = tj, k.split(".")
            for p in parts[:-1]:
                node = node[p]
            node[parts[-1]] = v
    return tj


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--out", default="tests/data/tokenizers/variants-golden.json")
    a = ap.parse_args()
    bases = {
        "mg": open(a.shared + "/models/mg-llama-27m/tokenizer.json", encoding="utf-8").read(),
        "llama2": open("tests/data/llama2-tokenizer/tokenizer.json", encoding="utf-8").read(),
    }
    out = []
    for name, base, patch in VARIANTS:
        tok = tokenizers.Tokenizer.from_str(json.dumps(apply_patch(json.loads(bases[base]), patch)))
        cases = []
        for s in STRINGS:
            ids = tok.encode(s, add_special_tokens=False).ids
            cases.append({"text": s, "ids": ids, "with_special_tokens": tok.encode(s).ids,
                          "decoded": tok.decode(ids, skip_special_tokens=False),
                          "decoded_skip_special": tok.decode(ids, skip_special_tokens=True)})
        out.append({"name": name, "base": base, "patch": patch, "cases": cases})
    doc = {
        "description": "Variants of mg-llama-27m's (base mg, from ../shared/models/mg-llama-27m) and the converted "
                       "Llama 2 (base llama2, tests/data/llama2-tokenizer) tokenizer.json with `patch` applied "
                       "(see tools/gen_tokenizer_variant_golden.py for the patch syntax), encoded/decoded by HF "
                       "tokenizers %s." % tokenizers.__version__,
        "variants": out,
    }
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote %s: %d variants x %d strings" % (a.out, len(out), len(STRINGS)))


if __name__ == "__main__":
    main()
