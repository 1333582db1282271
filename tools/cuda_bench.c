/* cuda_bench: decode and prefill timing of the forward pass on a backend,
 * against the memory-bandwidth floor measured in the same run.
 *
 *   build/cuda_bench -m MODEL_DIR [--device cuda|cpu] [--batch 1,8,32,64,128]
 *       [--ctx 512,4096] [--steps 8] [--kernels fast,invariant]
 *       [--prefill 2048] [--kv-gib 40] [--tensor-parallel N] [--out FILE.md]
 *
 * Decode: for each kernels mode, context length and batch size, B sequences
 * whose KV cache holds `ctx` positions of random BF16 values decode `steps`
 * steps together (one row each, greedy argmax on the backend, the way
 * `generate` decodes); TPOT is the median step time after two warm-up
 * steps. Floor = (weight bytes + K/V bytes the step reads) / copy
 * bandwidth, the bandwidth measured here as a device-to-device copy
 * (bytes read + written). Prefill: one prompt of --prefill tokens in one
 * pass. Configurations whose KV cache does not fit in --kv-gib are skipped.
 * With --tensor-parallel N the model is split over N GPUs; the copy
 * bandwidth is then one GPU's (all copy at once) and the floor counts one
 * GPU's share of the bytes (weights / N + K/V / N). MG_TP_SKIP_COMM=1 (timing
 * only: wrong results) replaces the collectives by nothing, so that the
 * difference from a normal run is the communication time per step.
 * Prints one table (markdown) on stdout, and to --out if given. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/backend/tp/tp.h"
#include "../src/engine/forward.h"
#include "../src/util/timer.h"

#define MAX_LIST 16

static int parse_list(const char *s, int *out) {
    int n = 0;
    while (*s && n < MAX_LIST) {
        out[n++] = atoi(s);
        const char *c = strchr(s, ',');
        if (!c) break;
        s = c + 1;
    }
    return n;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t next_u32(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 32);
}

/* Device-to-device copy bandwidth (bytes read + written per second). */
static double copy_bandwidth(const mg_backend_ops *ops) {
    const size_t bytes = (size_t)1 << 30;
    void *a = NULL, *b = NULL;
    if (ops->alloc(&a, bytes) != MG_OK || ops->alloc(&b, bytes) != MG_OK) {
        ops->free(a);
        return 0;
    }
    /* Random contents: never time on zeros. */
    size_t chunk = (size_t)16 << 20;
    uint32_t *h = malloc(chunk);
    for (size_t i = 0; i < chunk / 4; i++) h[i] = next_u32();
    for (size_t o = 0; o < bytes; o += chunk) ops->upload((char *)a + o, h, chunk);
    free(h);
    ops->copy(b, a, bytes);
    ops->sync();
    double t[5];
    for (int r = 0; r < 5; r++) {
        double t0 = mg_now_s();
        ops->copy(b, a, bytes);
        ops->copy(a, b, bytes);
        ops->sync();
        t[r] = (mg_now_s() - t0) / 2;
    }
    qsort(t, 5, sizeof t[0], cmp_double);
    ops->free(a);
    ops->free(b);
    return 2.0 * (double)bytes / t[2];
}

/* Fills the pool's K and V storage with random BF16/F32 bit patterns of
 * moderate magnitude. */
static mg_status fill_pool(mg_kv_pool *pool) {
    const size_t es = mg_kv_elem_size(pool);
    size_t total = (size_t)pool->n_layers * pool->n_blocks * pool->block_size * pool->n_kv_heads * pool->head_dim * es;
    size_t chunk = (size_t)32 << 20;
    unsigned char *h = malloc(chunk);
    if (!h) return MG_ERR_OOM;
    for (size_t i = 0; i < chunk; i += es) {
        float v = ((float)(next_u32() >> 8) / 16777216.0f - 0.5f) * 2.0f;
        uint32_t u;
        memcpy(&u, &v, 4);
        if (es == 2) {
            uint16_t b = (uint16_t)(u >> 16);
            memcpy(h + i, &b, 2);
        } else {
            memcpy(h + i, &u, 4);
        }
    }
    mg_status st = MG_OK;
    for (int kv = 0; kv < 2 && st == MG_OK; kv++) {
        char *base = kv ? pool->v : pool->k;
        for (size_t o = 0; o < total && st == MG_OK; o += chunk)
            st = pool->ops->upload(base + o, h, o + chunk <= total ? chunk : total - o);
    }
    free(h);
    return st;
}

int main(int argc, char **argv) {
    const char *model_dir = NULL, *device = "cuda", *out_path = NULL;
    int batches[MAX_LIST] = {1, 8, 32, 64, 128}, n_batches = 5;
    int ctxs[MAX_LIST] = {512, 4096}, n_ctxs = 2;
    int steps = 8, prefill = 2048, modes[2] = {1, 1}, tp = 1;
    double kv_gib = 40;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-m") && v) model_dir = v, i++;
        else if (!strcmp(a, "--device") && v) device = v, i++;
        else if (!strcmp(a, "--batch") && v) n_batches = parse_list(v, batches), i++;
        else if (!strcmp(a, "--ctx") && v) n_ctxs = parse_list(v, ctxs), i++;
        else if (!strcmp(a, "--steps") && v) steps = atoi(v), i++;
        else if (!strcmp(a, "--prefill") && v) prefill = atoi(v), i++;
        else if (!strcmp(a, "--kv-gib") && v) kv_gib = atof(v), i++;
        else if (!strcmp(a, "--out") && v) out_path = v, i++;
        else if (!strcmp(a, "--tensor-parallel") && v) tp = atoi(v), i++;
        else if (!strcmp(a, "--kernels") && v) {
            modes[0] = strstr(v, "fast") != NULL;
            modes[1] = strstr(v, "invariant") != NULL;
            i++;
        } else {
            fprintf(stderr, "usage: %s -m MODEL_DIR [--device cuda|cpu] [--batch 1,8,...] [--ctx 512,...] "
                            "[--steps N] [--kernels fast,invariant] [--prefill N] [--kv-gib G] [--tensor-parallel N] "
                            "[--out FILE]\n",
                    argv[0]);
            return 2;
        }
    }
    if (!model_dir || steps < 1) {
        fprintf(stderr, "cuda_bench: -m MODEL_DIR is required\n");
        return 2;
    }
    if (tp < 1) {
        fprintf(stderr, "cuda_bench: --tensor-parallel must be at least 1\n");
        return 2;
    }
    const mg_backend_ops *ops = mg_backend_select(device, tp);
    if (!ops) {
        fprintf(stderr, "cuda_bench: %s\n", mg_error_last());
        return 1;
    }
    mg_model *model;
    double t_load = mg_now_s();
    if (mg_model_load_hf(model_dir, &model) != MG_OK) {
        fprintf(stderr, "cuda_bench: cannot load %s: %s\n", model_dir, mg_error_last());
        return 1;
    }
    const mg_config *c = &model->config;
    int max_b = 1;
    for (int i = 0; i < n_batches; i++) max_b = batches[i] > max_b ? batches[i] : max_b;
    int max_rows = prefill > max_b ? prefill : max_b;
    mg_forward *fw;
    if (mg_forward_init(&fw, model, ops, max_rows) != MG_OK) {
        fprintf(stderr, "cuda_bench: %s\n", mg_error_last());
        return 1;
    }
    ops->sync();
    fprintf(stderr, "cuda_bench: model loaded and uploaded in %.1f s\n", mg_now_s() - t_load);
    const double bw = copy_bandwidth(ops);
    const double wbytes = (double)mg_model_weight_bytes(model) / tp; /* one GPU's share */
    const mg_dtype kv_dtype = ops->host_memory ? MG_DTYPE_F32 : MG_DTYPE_BF16;
    const double kv_tok_bytes =
        2.0 * c->n_layers * c->n_kv_heads * c->head_dim * (kv_dtype == MG_DTYPE_BF16 ? 2 : 4) / tp;

    char *table = NULL;
    size_t table_len = 0;
    FILE *tf = open_memstream(&table, &table_len);
    fprintf(tf, "device %s; weights %.2f GB per GPU; copy bandwidth %.0f GB/s per GPU (read + write); weight-read "
                "floor %.2f ms%s\n\n",
            ops->name, wbytes / 1e9, bw / 1e9, bw > 0 ? wbytes / bw * 1e3 : 0,
            getenv("MG_TP_SKIP_COMM") ? " (MG_TP_SKIP_COMM: collectives skipped, timing only)" : "");
    /* vs fast: an invariant row's TPOT over the fast row's of the same batch
     * and context (issue 5's goal: within +5%). */
    fprintf(tf, "| kernels | batch | ctx | TPOT ms | tok/s | floor ms | TPOT/floor | vs fast |\n");
    fprintf(tf, "|---|---:|---:|---:|---:|---:|---:|---:|\n");

    int32_t *tok = malloc((size_t)max_rows * sizeof(int32_t));
    int32_t *pos = malloc((size_t)max_rows * sizeof(int32_t));
    mg_kv_seq *seqs = calloc((size_t)max_b, sizeof(mg_kv_seq));
    mg_kv_seq **seqp = malloc((size_t)max_rows * sizeof(mg_kv_seq *));
    mg_argmax *am = malloc((size_t)max_rows * sizeof(mg_argmax));
    double *times = malloc((size_t)steps * sizeof(double));
    for (int ci = 0; ci < n_ctxs; ci++) {
        const int ctx = ctxs[ci];
        for (int bi = 0; bi < n_batches; bi++) {
            const int B = batches[bi];
            const int per_seq = ctx + steps + 3;
            const int blocks = B * ((per_seq + 15) / 16);
            if ((double)blocks * 16 * kv_tok_bytes > kv_gib * (1u << 30)) {
                fprintf(tf, "| - | %d | %d | skipped: KV cache over %.0f GiB | | | | |\n", B, ctx, kv_gib);
                continue;
            }
            mg_kv_pool pool;
            if (mg_kv_pool_init_on(&pool, ops, kv_dtype, c->n_layers, c->n_kv_heads, c->head_dim, 16, blocks) !=
                    MG_OK ||
                fill_pool(&pool) != MG_OK) {
                fprintf(tf, "| - | %d | %d | skipped: %s | | | | |\n", B, ctx, mg_error_last());
                mg_kv_pool_free(&pool);
                continue;
            }
            for (int i = 0; i < B; i++) {
                seqs[i] = (mg_kv_seq){0};
                mg_kv_seq_reserve(&pool, &seqs[i], per_seq);
                seqp[i] = &seqs[i];
            }
            double fast_tpot = 0; /* this batch and context's fast TPOT, once measured */
            for (int mode = 0; mode < 2; mode++) {
                if (!modes[mode]) continue;
                double kv_read = 0;
                mg_status st = MG_OK;
                for (int s = -2; s < steps && st == MG_OK; s++) {
                    for (int i = 0; i < B; i++) {
                        tok[i] = (int32_t)(next_u32() % (uint32_t)c->vocab_size);
                        pos[i] = ctx + (s < 0 ? 0 : s);
                    }
                    mg_batch b = {.n_rows = B, .tokens = tok, .positions = pos, .seqs = seqp, .want_logits = NULL};
                    const mg_forward_out out = {.logits = NULL, .argmax = am};
                    double t0 = mg_now_s();
                    st = mg_forward_run_ex(fw, &pool, &b, (mg_kernels)mode, MG_ACT_BF16, &out);
                    if (s >= 0) {
                        times[s] = mg_now_s() - t0;
                        kv_read += (double)B * (ctx + s + 1) * kv_tok_bytes;
                    }
                }
                if (st != MG_OK) {
                    fprintf(tf, "| %s | %d | %d | error: %s | | | | |\n", mode ? "invariant" : "fast", B, ctx,
                            mg_error_last());
                    continue;
                }
                qsort(times, (size_t)steps, sizeof times[0], cmp_double);
                const double tpot = times[steps / 2];
                const double floor_s = bw > 0 ? (wbytes + kv_read / steps) / bw : 0;
                char vs_fast[32] = "";
                if (mode == 0)
                    fast_tpot = tpot;
                else if (fast_tpot > 0)
                    snprintf(vs_fast, sizeof vs_fast, "%+.1f%%", 100.0 * (tpot / fast_tpot - 1.0));
                fprintf(tf, "| %s | %d | %d | %.3f | %.0f | %.3f | %.2f | %s |\n", mode ? "invariant" : "fast", B,
                        ctx, tpot * 1e3, B / tpot, floor_s * 1e3, floor_s > 0 ? tpot / floor_s : 0, vs_fast);
                fflush(tf);
            }
            for (int i = 0; i < B; i++) mg_kv_seq_free(&pool, &seqs[i]);
            mg_kv_pool_free(&pool);
        }
    }
    /* Prefill: one sequence of `prefill` tokens in one pass (after a short
     * warm-up pass). */
    if (prefill > 0) {
        fprintf(tf, "\n| kernels | prefill tokens | ms | tokens/s |\n|---|---:|---:|---:|\n");
        mg_kv_pool pool;
        const int blocks = (prefill + 16) / 16 + 1;
        if (mg_kv_pool_init_on(&pool, ops, kv_dtype, c->n_layers, c->n_kv_heads, c->head_dim, 16, blocks) == MG_OK) {
            mg_kv_seq seq = {0};
            mg_kv_seq_reserve(&pool, &seq, prefill + 1);
            uint8_t *want = calloc((size_t)prefill, 1);
            want[prefill - 1] = 1;
            for (int i = 0; i < prefill; i++) {
                tok[i] = (int32_t)(next_u32() % (uint32_t)c->vocab_size);
                pos[i] = i;
                seqp[i] = &seq;
            }
            for (int mode = 0; mode < 2; mode++) {
                if (!modes[mode]) continue;
                const mg_forward_out out = {.logits = NULL, .argmax = am};
                mg_batch warm = {.n_rows = prefill < 128 ? prefill : 128, .tokens = tok, .positions = pos,
                                 .seqs = seqp, .want_logits = NULL};
                mg_status st = mg_forward_run_ex(fw, &pool, &warm, (mg_kernels)mode, MG_ACT_BF16, &out);
                double best = 1e30;
                for (int r = 0; r < 2 && st == MG_OK; r++) {
                    mg_batch b = {.n_rows = prefill, .tokens = tok, .positions = pos, .seqs = seqp,
                                  .want_logits = want};
                    double t0 = mg_now_s();
                    st = mg_forward_run_ex(fw, &pool, &b, (mg_kernels)mode, MG_ACT_BF16, &out);
                    double t = mg_now_s() - t0;
                    if (t < best) best = t;
                }
                if (st != MG_OK)
                    fprintf(tf, "| %s | %d | error: %s | |\n", mode ? "invariant" : "fast", prefill, mg_error_last());
                else
                    fprintf(tf, "| %s | %d | %.1f | %.0f |\n", mode ? "invariant" : "fast", prefill, best * 1e3,
                            prefill / best);
            }
            free(want);
            mg_kv_seq_free(&pool, &seq);
            mg_kv_pool_free(&pool);
        }
    }
    if (!ops->host_memory && tp == 1) {
        char gemm[2048];
        mg_cuda_invariant_gemm_describe(gemm, sizeof gemm);
        if (*gemm) fprintf(tf, "\ninvariant GEMMs: %s\n", gemm);
        mg_cuda_fast_gemm_describe(gemm, sizeof gemm);
        if (*gemm) fprintf(tf, "fast GEMMs: %s\n", gemm);
    }
    fclose(tf);
    fputs(table, stdout);
    if (out_path) {
        FILE *f = fopen(out_path, "w");
        if (f) {
            fputs(table, f);
            fclose(f);
        }
    }
    free(table);
    free(tok);
    free(pos);
    free(seqs);
    free(seqp);
    free(am);
    free(times);
    mg_forward_free(fw);
    mg_model_free(model);
    return 0;
}
