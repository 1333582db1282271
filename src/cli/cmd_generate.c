/* margingate generate: one prompt in, its continuation out. */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "../engine/generate.h"
#include "../engine/model_dir.h"
#include "../util/file.h"
#include "../util/utf8.h"
#include "cli.h"

#define PREFILL_CHUNK 256
#define KV_BLOCK 16

static void usage(FILE *f) {
    fprintf(f,
            "usage: margingate generate [-m MODEL] (-p PROMPT | -f FILE) [options]\n"
            "  -n, --max-tokens N   tokens to generate (default 64)\n"
            "  --temperature T      0 = greedy (default 0)\n"
            "  --top-k K            sample among the K most likely tokens (0 = all)\n"
            "  --top-p P            nucleus sampling (default 1)\n"
            "  --seed S             sampling seed (default 0)\n"
            "  --chat               wrap the prompt in the model's chat template as a user turn\n"
            "  --system TEXT        system message for --chat\n"
            "  --margins            also print each token's top-1/top-2 logit margin\n"
            "  --json               print a JSON record (ids, text, margins, timings)\n"
            "  --fp32               FP32 activations (default: BF16 at op boundaries;\n"
            "                       llama2.c checkpoints always run in FP32, as run.c does)\n"
            "  --kernels fast|invariant  reduction orders (default fast)\n"
            "  --ignore-eos         do not stop at the model's stop tokens\n"
            "  --device cpu|cuda|auto  where to compute (default auto: cuda when a GPU is\n"
            "                       present, else cpu)\n"
            "  --tensor-parallel N  split the model over N GPUs (NCCL; with --device cpu: N\n"
            "                       CPU ranks, for tests)\n"
            "  --dump-logits FILE   write each step's FP32 logits to FILE (raw, steps x vocab)\n"
            "  --threads N          OpenMP threads\n");
}

typedef struct {
    const mg_tokenizer *tok;
    int32_t prev;
    char *buf; /* pending bytes not yet printed (incomplete UTF-8) */
    size_t len, cap;
} stream_out;

/* Prints the longest complete-UTF-8 prefix of the pending bytes. */
static void stream_flush(stream_out *s, int final) {
    size_t n = final ? s->len : mg_utf8_emit_len(s->buf, s->len);
    if (n == 0) return;
    char *clean = malloc(3 * n + 1);
    if (!clean) return;
    mg_utf8_lossy(s->buf, n, clean);
    fputs(clean, stdout);
    fflush(stdout);
    free(clean);
    memmove(s->buf, s->buf + n, s->len - n);
    s->len -= n;
}

static int stream_token(void *user, int32_t token, float margin) {
    stream_out *s = user;
    size_t len = 0;
    const char *piece = mg_tokenizer_is_special(s->tok, token) ? "" : mg_tokenizer_piece(s->tok, token, s->prev, &len);
    s->prev = token;
    if (!piece || len == 0) return 0;
    if (s->len + len > s->cap) {
        size_t cap = (s->len + len) * 2;
        char *b = realloc(s->buf, cap);
        if (!b) return 1;
        s->buf = b;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, piece, len);
    s->len += len;
    stream_flush(s, 0);
    return 0;
}

static void print_json(const mg_tokenizer *tok, const char *prompt, const int32_t *ids, size_t n_ids,
                       const mg_generate_result *r, const char *model, const char *device) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model", model);
    cJSON_AddStringToObject(o, "device", device);
    cJSON_AddStringToObject(o, "prompt", prompt);
    cJSON *pids = cJSON_AddArrayToObject(o, "prompt_ids");
    for (size_t i = 0; i < n_ids; i++) cJSON_AddItemToArray(pids, cJSON_CreateNumber(ids[i]));
    cJSON *tids = cJSON_AddArrayToObject(o, "token_ids");
    cJSON *margins = cJSON_AddArrayToObject(o, "margins");
    for (int i = 0; i < r->n; i++) {
        cJSON_AddItemToArray(tids, cJSON_CreateNumber(r->tokens[i]));
        cJSON_AddItemToArray(margins, cJSON_CreateNumber(r->margins[i]));
    }
    char *text = NULL;
    if (mg_tokenizer_decode(tok, r->tokens, (size_t)r->n, 1, &text) == MG_OK) {
        cJSON_AddStringToObject(o, "text", text);
        free(text);
    }
    cJSON_AddStringToObject(o, "finish_reason", r->stopped_eos ? "stop" : "length");
    cJSON *t = cJSON_AddObjectToObject(o, "timings");
    cJSON_AddNumberToObject(t, "prefill_ms", r->prefill_s * 1e3);
    cJSON_AddNumberToObject(t, "decode_ms", r->decode_s * 1e3);
    cJSON_AddNumberToObject(t, "prefill_tokens_per_s", r->prefill_s > 0 ? (double)n_ids / r->prefill_s : 0);
    cJSON_AddNumberToObject(t, "decode_tokens_per_s",
                            r->decode_s > 0 && r->n > 1 ? (double)(r->n - 1) / r->decode_s : 0);
    char *s = cJSON_Print(o);
    printf("%s\n", s);
    free(s);
    cJSON_Delete(o);
}

static void dump_logits(void *user, int step, const float *logits, int vocab) {
    fwrite(logits, sizeof(float), (size_t)vocab, (FILE *)user);
}

int cmd_generate(int argc, char **argv) {
    enum { O_TEMP = 256, O_TOPK, O_TOPP, O_SEED, O_CHAT, O_SYSTEM, O_MARGINS, O_JSON, O_FP32, O_KERNELS, O_IGNORE_EOS,
           O_THREADS, O_DEVICE, O_TP, O_DUMP_LOGITS };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},     {"prompt", required_argument, 0, 'p'},
        {"file", required_argument, 0, 'f'},      {"max-tokens", required_argument, 0, 'n'},
        {"temperature", required_argument, 0, O_TEMP}, {"top-k", required_argument, 0, O_TOPK},
        {"top-p", required_argument, 0, O_TOPP},  {"seed", required_argument, 0, O_SEED},
        {"chat", no_argument, 0, O_CHAT},         {"system", required_argument, 0, O_SYSTEM},
        {"margins", no_argument, 0, O_MARGINS},   {"json", no_argument, 0, O_JSON},
        {"fp32", no_argument, 0, O_FP32},         {"kernels", required_argument, 0, O_KERNELS},
        {"ignore-eos", no_argument, 0, O_IGNORE_EOS}, {"threads", required_argument, 0, O_THREADS},
        {"device", required_argument, 0, O_DEVICE},
        {"tensor-parallel", required_argument, 0, O_TP}, {"dump-logits", required_argument, 0, O_DUMP_LOGITS},
        {"help", no_argument, 0, 'h'},            {0, 0, 0, 0}};
    const char *model_flag = NULL, *prompt_arg = NULL, *prompt_file = NULL, *system = NULL, *device = "auto";
    int tensor_parallel = 1;
    const char *dump_path = NULL;
    int chat = 0, show_margins = 0, json = 0, fp32 = 0, threads = 0, c;
    unsigned long long seed = 0;
    mg_generate_opts g = {.max_new_tokens = 64, .sampling = {.temperature = 0, .top_k = 0, .top_p = 1.0f}};
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:p:f:n:h", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case 'm': model_flag = optarg; break;
        case 'p': prompt_arg = optarg; break;
        case 'f': prompt_file = optarg; break;
        case 'n': bad = cli_parse_int(optarg, &g.max_new_tokens) || g.max_new_tokens < 1; break;
        case O_TEMP: bad = cli_parse_float(optarg, &g.sampling.temperature); break;
        case O_TOPK: bad = cli_parse_int(optarg, &g.sampling.top_k); break;
        case O_TOPP: bad = cli_parse_float(optarg, &g.sampling.top_p); break;
        case O_SEED: bad = cli_parse_u64(optarg, &seed); break;
        case O_CHAT: chat = 1; break;
        case O_SYSTEM: system = optarg; break;
        case O_MARGINS: show_margins = 1; break;
        case O_JSON: json = 1; break;
        case O_FP32: fp32 = 1; break;
        case O_KERNELS: bad = cli_parse_kernels(optarg, &g.kernels); break;
        case O_IGNORE_EOS: g.ignore_eos = 1; break;
        case O_THREADS: bad = cli_parse_int(optarg, &threads) || threads < 1; break;
        case O_DUMP_LOGITS: dump_path = optarg; break;
        case O_DEVICE: device = optarg; break;
        case O_TP:
            if (cli_parse_tensor_parallel("generate", optarg, &tensor_parallel)) return 2;
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
        if (bad) {
            fprintf(stderr, "margingate generate: invalid value '%s' for %s\n", optarg, argv[optind - 1]);
            return 2;
        }
    }
    if (optind != argc || (!prompt_arg) == (!prompt_file)) {
        fprintf(stderr, "margingate generate: give the prompt with exactly one of -p PROMPT or -f FILE\n");
        usage(stderr);
        return 2;
    }
    const mg_backend_ops *backend;
    int dev_rc = cli_backend("generate", device, tensor_parallel, &backend);
    if (dev_rc) return dev_rc;
    g.sampling.seed = seed;
    if (mg_sampling_validate(&g.sampling) != MG_OK) return cli_fail("generate", "bad sampling parameters");
    cli_set_threads(threads);

    char *file_text = NULL;
    size_t prompt_len;
    if (prompt_file) {
        if (mg_file_read(prompt_file, &file_text, &prompt_len) != MG_OK)
            return cli_fail("generate", "cannot read the prompt file");
        prompt_arg = file_text;
    } else {
        prompt_len = strlen(prompt_arg);
    }
    const char *model_path = cli_model_path(model_flag);
    int rc = 1;
    mg_model *model = NULL;
    mg_tokenizer *tok = NULL;
    mg_forward *fw = NULL;
    mg_kv_pool pool = {0};
    char *rendered = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    mg_generate_result res = {0};
    mg_model_format format;
    if (cli_open_model("generate", model_path, &model, &tok, &format)) goto done;
    const char *text = prompt_arg;
    size_t text_len = prompt_len;
    if (chat) {
        mg_chat_message msgs[2];
        size_t nm = 0;
        if (system) msgs[nm++] = (mg_chat_message){"system", system};
        msgs[nm++] = (mg_chat_message){"user", prompt_arg};
        if (mg_chat_render(tok, msgs, nm, 1, &rendered) != MG_OK) {
            cli_fail("generate", "cannot apply the chat template");
            goto done;
        }
        text = rendered;
        text_len = strlen(rendered);
    }
    if (mg_tokenizer_encode(tok, text, text_len, !chat, &ids, &n_ids) != MG_OK) {
        cli_fail("generate", "cannot tokenize the prompt");
        goto done;
    }
    if (n_ids == 0) {
        fprintf(stderr, "margingate generate: the prompt is empty and the tokenizer adds no BOS token\n");
        goto done;
    }
    const mg_config *cfg = &model->config;
    if ((long)n_ids + g.max_new_tokens > cfg->max_seq_len) {
        fprintf(stderr, "margingate generate: prompt of %zu tokens + %d new tokens exceeds the model's context of %d\n",
                n_ids, g.max_new_tokens, cfg->max_seq_len);
        goto done;
    }
    g.precision = fp32 || format == MG_FORMAT_LLAMA2C ? MG_ACT_FP32 : MG_ACT_BF16;
    int max_rows = (int)n_ids < PREFILL_CHUNK ? (int)n_ids : PREFILL_CHUNK;
    int blocks = ((int)n_ids + g.max_new_tokens + KV_BLOCK - 1) / KV_BLOCK;
    mg_dtype kv_dtype = !backend->host_memory && g.precision == MG_ACT_BF16 ? MG_DTYPE_BF16 : MG_DTYPE_F32;
    if (mg_forward_init(&fw, model, backend, max_rows) != MG_OK ||
        mg_kv_pool_init_on(&pool, backend, kv_dtype, cfg->n_layers, cfg->n_kv_heads, cfg->head_dim, KV_BLOCK,
                           blocks) != MG_OK) {
        cli_fail("generate", "cannot set up the engine");
        goto done;
    }
    FILE *dump = dump_path ? fopen(dump_path, "wb") : NULL;
    if (dump_path && !dump) {
        fprintf(stderr, "margingate generate: cannot write %s\n", dump_path);
        goto done;
    }
    if (dump) {
        g.on_logits = dump_logits;
        g.on_logits_user = dump;
    }
    stream_out so = {.tok = tok, .prev = ids[n_ids - 1]};
    mg_status st = mg_generate(fw, &pool, cfg, max_rows, ids, (int)n_ids, &g, json ? NULL : stream_token, &so, &res);
    if (!json) {
        stream_flush(&so, 1);
        printf("\n");
        fflush(stdout);
    }
    free(so.buf);
    if (dump) fclose(dump);
    if (st != MG_OK) {
        cli_fail("generate", "generation failed");
        goto done;
    }
    if (json) {
        print_json(tok, text, ids, n_ids, &res, model_path, backend->name);
    } else {
        if (show_margins) {
            printf("%-5s %-8s %-10s %s\n", "step", "token", "margin", "piece");
            for (int i = 0; i < res.n; i++) {
                const char *s = mg_tokenizer_token_str(tok, res.tokens[i]);
                printf("%-5d %-8d %-10.4f %s\n", i, res.tokens[i], res.margins[i], s ? s : "");
            }
        }
        fprintf(stderr,
                "margingate: device %s: prompt %zu tokens, %.1f ms prefill (%.1f tok/s); %d tokens, %.1f tok/s "
                "decode\n",
                backend->name, n_ids, res.prefill_s * 1e3, n_ids / (res.prefill_s > 0 ? res.prefill_s : 1), res.n,
                res.n > 1 && res.decode_s > 0 ? (res.n - 1) / res.decode_s : 0.0);
    }
    rc = 0;
done:
    mg_generate_result_free(&res);
    mg_forward_free(fw);
    mg_kv_pool_free(&pool);
    free(ids);
    free(rendered);
    free(file_text);
    mg_tokenizer_free(tok);
    mg_model_free(model);
    return rc;
}
