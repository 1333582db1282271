/* Internal state and helpers shared by the files of src/tokenizer/.
 * Nothing here is part of the public API; every symbol is prefixed mg_tok_.
 *
 * Pipeline of an HF tokenizer.json encode (mirrors HF tokenizers):
 *   text -> split out added tokens (tok_added.c) -> normalizer (tok_normalize.c)
 *   -> pre-tokenizer (tok_pretok.c) -> BPE model (tok_bpe.c) -> post-processor
 *   (tok_encode.c). Decoding runs the decoder chain (tok_decode.c). */
#ifndef MG_TOK_INTERNAL_H
#define MG_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

/* ---- growable buffers (tok_util.c) ---- */

typedef struct {
    char *p;    /* (cap) bytes, NUL-terminated after len when non-NULL */
    size_t len; /* bytes used */
    size_t cap; /* bytes allocated */
} mg_tok_buf;

/* Appends n bytes of s; returns MG_ERR_OOM on allocation failure. */
mg_status mg_tok_buf_put(mg_tok_buf *b, const void *s, size_t n);
/* Appends the UTF-8 encoding of code point cp. */
mg_status mg_tok_buf_put_cp(mg_tok_buf *b, uint32_t cp);
/* Frees the buffer and zeroes it. */
void mg_tok_buf_free(mg_tok_buf *b);

typedef struct {
    int32_t *v; /* (cap) ids */
    size_t n;   /* ids used */
    size_t cap; /* ids allocated */
} mg_tok_ids;

/* Appends one id; returns MG_ERR_OOM on allocation failure. */
mg_status mg_tok_ids_push(mg_tok_ids *a, int32_t id);

/* ---- UTF-8 (tok_util.c) ---- */

/* Decodes one well-formed UTF-8 sequence at s[0..n). Returns its length
 * (1..4) and stores the code point, or 0 if the bytes there are ill-formed
 * or truncated; then *bad (may be NULL) gets the length of the maximal
 * ill-formed subpart (Rust's Utf8Error::error_len, or the rest when the
 * input ends inside a sequence). */
size_t mg_tok_utf8_next(const unsigned char *s, size_t n, uint32_t *cp, size_t *bad);
/* Returns the offset of the first ill-formed byte, or n if s is valid. */
size_t mg_tok_utf8_check(const char *s, size_t n);
/* Appends s[0..n) to out with each maximal ill-formed subpart replaced by
 * U+FFFD (Rust String::from_utf8_lossy). */
mg_status mg_tok_utf8_lossy(mg_tok_buf *out, const char *s, size_t n);
/* Rust char::is_whitespace / Unicode White_Space. */
int mg_tok_is_white_space(uint32_t cp);

/* ---- hash maps (tok_map.c) ---- */

/* Maps byte strings (not copied: the caller keeps them alive) to int32. */
typedef struct {
    struct mg_tok_strmap_slot *slots; /* (cap) */
    size_t cap;                       /* power of two, 0 when empty */
    size_t n;                         /* entries */
} mg_tok_strmap;

/* Inserts or overwrites key -> val. Returns MG_ERR_OOM on failure. */
mg_status mg_tok_strmap_put(mg_tok_strmap *m, const char *key, size_t len, int32_t val);
/* Returns the value for key or -1. */
int32_t mg_tok_strmap_get(const mg_tok_strmap *m, const char *key, size_t len);
void mg_tok_strmap_free(mg_tok_strmap *m);

/* Maps a token-id pair to (merge rank, merged id). */
typedef struct {
    struct mg_tok_pairmap_slot *slots; /* (cap) */
    size_t cap;                        /* power of two */
    size_t n;
} mg_tok_pairmap;

/* Reserves room for n entries (call before the puts). */
mg_status mg_tok_pairmap_init(mg_tok_pairmap *m, size_t n);
/* Inserts (a, b) -> (rank, new_id), overwriting a duplicate pair as HF's
 * HashMap collect does. Returns MG_ERR_OOM if the reserved table is full. */
mg_status mg_tok_pairmap_put(mg_tok_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t new_id);
/* Returns 1 and sets *rank and *new_id if (a,b) is a merge, else 0. */
int mg_tok_pairmap_get(const mg_tok_pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *new_id);
void mg_tok_pairmap_free(mg_tok_pairmap *m);

/* ---- regex (tok_regex.c) ---- */

/* Compiles an HF (Oniguruma-flavoured) regex with PCRE2_UTF|PCRE2_UCP and
 * JIT; `literal` != 0 compiles the string as a literal. Fixes \s to match
 * White_Space (U+0085 included) like Oniguruma. */
mg_status mg_tok_regex_compile(const char *pat, size_t len, int literal, pcre2_code **out);

/* One match or gap of a regex over a string. */
typedef struct {
    size_t start, end; /* byte offsets, end exclusive */
    int is_match;      /* 1 for a regex match, 0 for the text between */
} mg_tok_range;

/* Splits s[0..n) into consecutive ranges (HF Pattern::find_matches): the
 * matches of re and the gaps between them. An empty string gives one empty
 * gap. On success *out is malloc'd (caller frees) with *n_out entries. */
mg_status mg_tok_regex_ranges(const pcre2_code *re, const char *s, size_t n, mg_tok_range **out,
                              size_t *n_out);

/* ---- NFC (tok_nfc.c) ---- */

/* Appends the NFC normalisation of the valid UTF-8 s[0..n) to out. */
mg_status mg_tok_nfc(const char *s, size_t n, mg_tok_buf *out);

/* ---- the tokenizer ---- */

enum { MG_TOK_KIND_HF = 1, MG_TOK_KIND_LLAMA2C = 2 };

enum { MG_NORM_NFC = 1, MG_NORM_PREPEND, MG_NORM_REPLACE };

typedef struct {
    int kind;          /* MG_NORM_* */
    char *arg;         /* PREPEND: the prefix; REPLACE: the content (malloc'd) */
    size_t arg_len;
    pcre2_code *re;    /* REPLACE: the pattern */
} mg_tok_norm_step;

enum { MG_PRE_SPLIT = 1, MG_PRE_BYTELEVEL, MG_PRE_METASPACE };
/* HF SplitDelimiterBehavior */
enum { MG_SPLIT_REMOVED = 1, MG_SPLIT_ISOLATED, MG_SPLIT_MERGED_PREV, MG_SPLIT_MERGED_NEXT, MG_SPLIT_CONTIGUOUS };
enum { MG_PREPEND_ALWAYS = 1, MG_PREPEND_FIRST, MG_PREPEND_NEVER };

typedef struct {
    int kind;             /* MG_PRE_* */
    pcre2_code *re;       /* SPLIT, or BYTELEVEL with use_regex (GPT-2 regex) */
    int behavior;         /* SPLIT: MG_SPLIT_* */
    int invert;           /* SPLIT */
    int add_prefix_space; /* BYTELEVEL */
    char repl[8];         /* METASPACE: replacement char, UTF-8 */
    size_t repl_len;
    int prepend_scheme;   /* METASPACE: MG_PREPEND_* */
    int split;            /* METASPACE */
} mg_tok_pre_step;

enum { MG_DEC_BYTELEVEL = 1, MG_DEC_REPLACE, MG_DEC_BYTEFALLBACK, MG_DEC_FUSE, MG_DEC_STRIP, MG_DEC_METASPACE };

typedef struct {
    int kind;         /* MG_DEC_* */
    char *pat;        /* REPLACE: literal pattern (malloc'd) */
    size_t pat_len;
    char *content;    /* REPLACE: replacement; STRIP: the char (malloc'd) */
    size_t content_len;
    int start, stop;  /* STRIP: chars to strip at the start / end */
    char repl[8];     /* METASPACE: replacement char */
    size_t repl_len;
    int prepend;      /* METASPACE: strip the first token's leading space */
} mg_tok_dec_step;

typedef struct {
    const char *content; /* points into the string arena */
    size_t len;
    int32_t id;
    uint8_t special, lstrip, rstrip, single_word, normalized;
} mg_tok_added;

struct mg_tokenizer {
    int kind;           /* MG_TOK_KIND_* */
    int n_vocab;        /* max id + 1 */
    char **tok_str;     /* (n_vocab) token strings, NUL-terminated; NULL for holes */
    uint32_t *tok_len;  /* (n_vocab) their lengths */
    char **piece;       /* (n_vocab) decoded bytes of each token, not NUL-terminated */
    uint32_t *piece_len;/* (n_vocab) */
    char *piece_arena;  /* backing store of piece[] */
    uint8_t *special;   /* (n_vocab) 1 for special tokens */

    mg_tok_strmap vocab;   /* model vocab string -> id */
    mg_tok_strmap added_map; /* added token content -> id */
    mg_tok_pairmap merges; /* (id, id) -> (rank, merged id) */
    char *arena;           /* backing store of the strings above */

    /* model */
    int byte_level;        /* 1 when a ByteLevel pre-tokenizer maps bytes to chars */
    int byte_fallback, fuse_unk, ignore_merges;
    int32_t unk_id;        /* -1 if none */
    char *subword_prefix;  /* continuing_subword_prefix or NULL */
    char *word_suffix;     /* end_of_word_suffix or NULL */
    int32_t byte_fb_id[256]; /* id of "<0xXX>" or -1 */

    /* added tokens */
    mg_tok_added *added;   /* (n_added) sorted by first byte, then longest first */
    int n_added;
    int added_bucket[257]; /* added[added_bucket[b] .. added_bucket[b+1]) start with byte b */

    /* pipeline */
    mg_tok_norm_step *norm; int n_norm;
    mg_tok_pre_step *pre; int n_pre;
    mg_tok_dec_step *dec; int n_dec; int has_decoder;
    char strip_char[8];    /* leading text a first piece drops ("" for none) */
    size_t strip_char_len;
    int strip_first;       /* how many strip_char a first piece drops */
    int32_t *post_prefix; int n_post_prefix; /* ids before $A when add_special */
    int32_t *post_suffix; int n_post_suffix; /* ids after $A */

    /* tokenizer_config.json */
    int32_t bos_id, eos_id;
    char *bos_token;       /* string for chat templates, may be NULL */
    char *eos_token;
    char *chat_template;   /* may be NULL */

    /* llama2.c */
    float *scores;         /* (n_vocab) merge scores */
};

/* GPT-2 bytes_to_unicode: the code point standing for byte b. */
uint32_t mg_tok_byte_to_cp(uint8_t b);
/* Inverse: the byte for code point cp, or -1. */
int mg_tok_cp_to_byte(uint32_t cp);

/* Splits text into (added token | plain text) segments as HF's
 * AddedVocabulary does, using the added tokens whose `normalized` flag equals
 * `normalized`. Each segment is appended as a range: is_match=1 with *ids
 * receiving the token id, or is_match=0 for plain text. */
mg_status mg_tok_split_added(const mg_tokenizer *tok, int normalized, const char *s, size_t n,
                             mg_tok_range **out, int32_t **ids, size_t *n_out);

/* Runs the normalizer chain on s[0..n), appending to out. */
mg_status mg_tok_normalize(const mg_tokenizer *tok, const char *s, size_t n, mg_tok_buf *out);

/* Pre-tokenized pieces: spans into a text buffer. */
typedef struct {
    mg_tok_buf text;
    size_t *off;   /* (cap) piece start offsets into text */
    size_t *len;   /* (cap) piece lengths */
    uint8_t *first;/* (cap) 1 if the piece starts at original offset 0 */
    size_t n, cap;
} mg_tok_pieces;

/* Appends one piece copying s[0..n) into the pieces' text. */
mg_status mg_tok_pieces_add_copy(mg_tok_pieces *p, const char *s, size_t n, int first);
void mg_tok_pieces_free(mg_tok_pieces *p);

/* Runs the pre-tokenizer chain; *p is replaced by its split. */
mg_status mg_tok_pretokenize(const mg_tokenizer *tok, mg_tok_pieces *p);

/* BPE-encodes one pre-token (raw bytes; byte-level mapping is applied here
 * when tok->byte_level) and appends the ids. */
mg_status mg_tok_bpe_word(const mg_tokenizer *tok, const char *s, size_t n, mg_tok_ids *out);

/* llama2.c's score-ordered merge over ids (in place); n updated. */
mg_status mg_tok_llama2c_merge(const mg_tokenizer *tok, int32_t *ids, size_t *n);

/* Encodes with the llama2.c algorithm. */
mg_status mg_tok_llama2c_encode(const mg_tokenizer *tok, const char *text, size_t len, int add_special,
                                mg_tok_ids *out);

/* Computes tok->piece for every id from the decoder chain. */
mg_status mg_tok_build_pieces(mg_tokenizer *tok);

/* Parses tokenizer_config.json text (bos/eos tokens, chat template). */
mg_status mg_tok_load_config(mg_tokenizer *tok, const char *json, size_t len);

#endif
