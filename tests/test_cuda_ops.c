/* Every CUDA op against the CPU reference (src/backend/cpu, the
 * specification) on random inputs over many shapes and batch sizes, with
 * guard regions around every output buffer to catch out-of-bounds writes,
 * and bitwise batch-invariance checks of the INVARIANT kernels (row i alone
 * vs row i inside batches of many sizes, across the skinny and tiled
 * tensor-core matmul paths and across prefill and decode attention).
 *
 * Tolerances: BF16 activations are compared element-wise with a few BF16
 * ulps of slack (both backends round the same FP32 formulas, but their
 * reductions add in different orders, so a value near a rounding boundary
 * may round the other way); matmuls by relative Frobenius error; FP32
 * activations tightly. Without a usable GPU (or in a build without CUDA)
 * every test skips with the reason. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../src/backend/backend.h"
#include "../src/engine/forward.h"
#include "../src/util/bf16.h"
#include "st_writer.h"

#define GUARD 256 /* bytes of sentinel before and after each device buffer */
#define SENTINEL 0xA5

static const mg_backend_ops *cpu_b(void) { return mg_backend_cpu(); }

/* MG_TEST_QUICK=1 (compute-sanitizer runs): fewer shapes, same coverage of
 * code paths. */
static int quick(void) { return getenv("MG_TEST_QUICK") != NULL; }

static const mg_backend_ops *gpu_or_skip(void) {
    const mg_backend_ops *g = mg_backend_cuda();
    if (!g) cr_skip_test("CUDA backend not usable here: %s", mg_error_last());
    return g;
}

/* The backend with the invariant GEMMs on the own tensor-core kernels
 * (MG_CUDA_INVARIANT_GEMM=tc) instead of pinned cuBLASLt: set before the
 * backend starts in this test's process (Criterion forks one per test). */
static const mg_backend_ops *gpu_tc_or_skip(void) {
    setenv("MG_CUDA_INVARIANT_GEMM", "tc", 1);
    return gpu_or_skip();
}

static int invariant_gemm_tc(void) {
    const char *s = getenv("MG_CUDA_INVARIANT_GEMM");
    return s && !strcmp(s, "tc");
}

/* Skips are silent in Criterion's default output: say so once, with the
 * reason, after every test has run (in the runner process). */
ReportHook(POST_ALL)(struct criterion_global_stats *stats) {
    if (stats->tests_skipped == 0) return;
    const char *why = mg_backend_cuda() ? "see --verbose for the reasons" : mg_error_last();
    printf("%s: %zu of %zu tests SKIPPED: %s\n", "test_cuda_ops", stats->tests_skipped, stats->nb_tests, why);
}

/* ---- random data ------------------------------------------------------------ */

static uint64_t rng_state = 88172645463325252ull;
static void rng_seed(uint64_t s) { rng_state = s * 0x9E3779B97F4A7C15ull + 1; }
static float frand(void) { /* uniform [-1, 1) */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}
static int irand(int n) { return (int)(((frand() + 1.0f) * 0.5f) * (float)n) % n; }

/* n values in [-scale, scale), rounded to BF16 when rb (the forward pass
 * only ever feeds BF16 values to ops in BF16 numerics). */
static float *rand_vec(size_t n, float scale, int rb) {
    float *v = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) v[i] = rb ? mg_round_bf16(scale * frand()) : scale * frand();
    return v;
}

/* ---- guarded device buffers ----------------------------------------------------- */

typedef struct {
    char *base;
    size_t bytes; /* payload bytes */
} guarded;

#define MAX_GUARDED 64
static guarded live[MAX_GUARDED];
static int n_live;

/* A device buffer of `bytes` with sentinel guards on both sides. */
static void *gbuf(const mg_backend_ops *g, size_t bytes) {
    cr_assert_lt(n_live, MAX_GUARDED);
    void *base;
    cr_assert_eq(g->alloc(&base, bytes + 2 * GUARD), MG_OK, "%s", mg_error_last());
    unsigned char *pat = malloc(bytes + 2 * GUARD);
    memset(pat, SENTINEL, bytes + 2 * GUARD);
    cr_assert_eq(g->upload(base, pat, bytes + 2 * GUARD), MG_OK, "%s", mg_error_last());
    free(pat);
    live[n_live++] = (guarded){base, bytes};
    return (char *)base + GUARD;
}

/* Checks every guard still holds the sentinel, then frees the buffers. */
static void check_guards_and_free(const mg_backend_ops *g) {
    unsigned char buf[GUARD];
    for (int i = 0; i < n_live; i++) {
        cr_assert_eq(g->download(buf, live[i].base, GUARD), MG_OK, "%s", mg_error_last());
        for (int j = 0; j < GUARD; j++)
            cr_assert_eq(buf[j], SENTINEL, "buffer %d: write before its start (byte %d)", i, j - GUARD);
        cr_assert_eq(g->download(buf, live[i].base + GUARD + live[i].bytes, GUARD), MG_OK, "%s", mg_error_last());
        for (int j = 0; j < GUARD; j++)
            cr_assert_eq(buf[j], SENTINEL, "buffer %d: write past its end (byte %d)", i, j);
        g->free(live[i].base);
    }
    n_live = 0;
}

/* An activation buffer of n values holding `host` (NULL: sentinel only). */
static void *act_in(const mg_backend_ops *g, const float *host, size_t n, int rb) {
    void *p = gbuf(g, n * g->act_size(rb));
    if (host) cr_assert_eq(g->act_upload(p, host, n, rb), MG_OK, "%s", mg_error_last());
    return p;
}

static float *act_out(const mg_backend_ops *g, const void *p, size_t n, int rb) {
    float *h = malloc((n ? n : 1) * sizeof(float));
    cr_assert_eq(g->act_download(h, p, n, rb), MG_OK, "%s", mg_error_last());
    return h;
}

static void *dev_copy(const mg_backend_ops *g, const void *host, size_t bytes) {
    void *p = gbuf(g, bytes);
    cr_assert_eq(g->upload(p, host, bytes), MG_OK, "%s", mg_error_last());
    return p;
}

/* ---- comparisons ------------------------------------------------------------------ */

static double rel_fro(const float *a, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i])) return INFINITY;
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Element-wise: |a - ref| <= ulps BF16 ulps of |ref| (+ atol) with rb,
 * relative rtol without. Reports the first offender. */
static void expect_close(const char *what, const float *a, const float *ref, size_t n, int rb, double ulps,
                         double rtol, double atol) {
    size_t bad = 0, first = 0;
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double tol = rb ? ulps * ldexp(fabs(ref[i]), -8) + atol : rtol * fabs(ref[i]) + atol;
        double d = fabs((double)a[i] - ref[i]);
        if (!(d <= tol)) {
            if (!bad) first = i;
            bad++;
        }
        if (d > worst) worst = d;
    }
    cr_expect_eq(bad, 0, "%s: %zu of %zu values off (first at %zu: %.8g vs reference %.8g; worst |diff| %.3g)", what,
                 bad, n, first, bad ? a[first] : 0, bad ? ref[first] : 0, worst);
}

static void expect_bitwise(const char *what, const float *a, const float *b, size_t n) {
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof(float))) {
            if (!bad) first = i;
            bad++;
        }
    cr_expect_eq(bad, 0, "%s: %zu of %zu values differ bitwise (first at %zu: %.9g vs %.9g)", what, bad, n, first,
                 bad ? a[first] : 0, bad ? b[first] : 0);
}

/* ---- weights ------------------------------------------------------------------------ */

typedef struct {
    mg_matrix host, dev;
    void *data;
} test_matrix;

/* Random (rows, cols) weights in BF16 (or F32), on the host and the device. */
static test_matrix make_matrix(const mg_backend_ops *g, int rows, int cols, mg_dtype dt, float scale) {
    test_matrix m;
    size_t n = (size_t)rows * cols, es = dt == MG_DTYPE_BF16 ? 2 : 4;
    m.data = malloc(n * es);
    for (size_t i = 0; i < n; i++) {
        float v = scale * frand();
        if (dt == MG_DTYPE_BF16)
            ((uint16_t *)m.data)[i] = mg_f32_to_bf16(v);
        else
            ((float *)m.data)[i] = v;
    }
    m.host = (mg_matrix){.dtype = dt, .data = m.data, .rows = rows, .cols = cols};
    m.dev = m.host;
    m.dev.data = dev_copy(g, m.data, n * es);
    return m;
}

/* One-block dummy sequence for ops that need rows but no cache. */
static int32_t dummy_block[1] = {0};
static mg_kv_seq dummy_seq = {.blocks = dummy_block, .n_blocks = 1, .capacity = 1};

static mg_attn_rows plain_rows(int n, int32_t *tokens, int32_t *pos, mg_kv_seq **seqs) {
    for (int i = 0; i < n; i++) {
        pos[i] = 0;
        seqs[i] = &dummy_seq;
    }
    return (mg_attn_rows){.n_rows = n, .tokens = tokens, .positions = pos, .seqs = seqs};
}

/* ---- embedding, norms, elementwise ------------------------------------------------------- */

Test(cuda_ops, embed) {
    const mg_backend_ops *g = gpu_or_skip();
    rng_seed(1);
    for (int dt = 0; dt < 2; dt++)
        for (int rb = 0; rb < 2; rb++) {
            const int vocab = 1000, dim = 96, n = 9;
            test_matrix t = make_matrix(g, vocab, dim, dt ? MG_DTYPE_F32 : MG_DTYPE_BF16, 1.0f);
            int32_t tok[9], pos[9];
            mg_kv_seq *seqs[9];
            for (int i = 0; i < n; i++) tok[i] = irand(vocab);
            tok[0] = vocab - 1;
            mg_attn_rows rows = plain_rows(n, tok, pos, seqs);
            float *ref = malloc((size_t)n * dim * sizeof(float));
            cr_assert_eq(cpu_b()->embed(ref, &t.host, &rows, rb), MG_OK);
            if (rb && dt) /* the GPU stores BF16 activations; the CPU keeps F32 table values */
                for (int i = 0; i < n * dim; i++) ref[i] = mg_round_bf16(ref[i]);
            void *out = act_in(g, NULL, (size_t)n * dim, rb);
            cr_assert_eq(g->rows_prepare(&rows), MG_OK, "%s", mg_error_last());
            cr_assert_eq(g->embed(out, &t.dev, &rows, rb), MG_OK, "%s", mg_error_last());
            float *got = act_out(g, out, (size_t)n * dim, rb);
            expect_bitwise("embed", got, ref, (size_t)n * dim);
            free(ref);
            free(got);
            free(t.data);
            check_guards_and_free(g);
        }
}

Test(cuda_ops, rmsnorm_and_add_rmsnorm) {
    const mg_backend_ops *g = gpu_or_skip();
    rng_seed(2);
    /* 64..4096: the vector kernel (1, 1, 1 and 2 vectors per thread in
     * BF16); 1001: not a multiple of the vector, and 20480: more than 8
     * vectors per thread, both the general kernel. */
    const int dims[] = {64, 512, 1000, 1001, 4096, 20480}, ns[] = {1, 5, 33};
    for (int di = 0; di < 6; di++)
        for (int ni = 0; ni < 3; ni++)
            for (int rb = 0; rb < 2; rb++) {
                const int dim = dims[di], n = ns[ni];
                const size_t len = (size_t)n * dim;
                float *x = rand_vec(len, 2.0f, rb), *y = rand_vec(len, 1.0f, rb);
                float *w = rand_vec((size_t)dim, 1.0f, 1);
                for (int c = 0; c < dim; c++) w[c] += 1.0f;
                float *wd = dev_copy(g, w, (size_t)dim * sizeof(float));
                char what[96];
                /* rmsnorm. The GPU sums the squares in another order than the
                 * CPU; in BF16 the normalised value is rounded and then the
                 * product with the weight (up to 2 here), so one ULP of
                 * difference in the first rounding can become two ULPs of the
                 * output: allow 2 ULPs (4 x |ref| x 2^-8 >= 2 ULPs). */
                const double norm_ulps = 4;
                /* FP32: the CPU sums the squares in one chain, the GPU in 256
                 * chains and a tree; over 20480 columns their difference
                 * reaches a few 1e-6 of the result. */
                const double norm_rtol = dim > 4096 ? 1e-5 : 2e-6;
                float *ref = malloc(len * sizeof(float));
                cr_assert_eq(cpu_b()->rmsnorm(ref, x, w, n, dim, 1e-5f, rb), MG_OK);
                void *xin = act_in(g, x, len, rb), *out = act_in(g, NULL, len, rb);
                cr_assert_eq(g->rmsnorm(out, xin, wd, n, dim, 1e-5f, rb), MG_OK, "%s", mg_error_last());
                float *got = act_out(g, out, len, rb);
                snprintf(what, sizeof what, "rmsnorm dim %d n %d rb %d", dim, n, rb);
                expect_close(what, got, ref, len, rb, norm_ulps, norm_rtol, 1e-30);
                free(got);
                /* in place */
                cr_assert_eq(g->rmsnorm(xin, xin, wd, n, dim, 1e-5f, rb), MG_OK, "%s", mg_error_last());
                got = act_out(g, xin, len, rb);
                snprintf(what, sizeof what, "rmsnorm in place dim %d n %d rb %d", dim, n, rb);
                expect_close(what, got, ref, len, rb, norm_ulps, norm_rtol, 1e-30);
                free(got);
                /* add_rmsnorm */
                float *xr = malloc(len * sizeof(float));
                memcpy(xr, x, len * sizeof(float));
                cr_assert_eq(cpu_b()->add_rmsnorm(xr, y, ref, w, n, dim, 1e-5f, rb), MG_OK);
                void *xd = act_in(g, x, len, rb), *yd = act_in(g, y, len, rb), *od = act_in(g, NULL, len, rb);
                cr_assert_eq(g->add_rmsnorm(xd, yd, od, wd, n, dim, 1e-5f, rb), MG_OK, "%s", mg_error_last());
                float *gx = act_out(g, xd, len, rb), *go = act_out(g, od, len, rb);
                snprintf(what, sizeof what, "add_rmsnorm residual dim %d n %d rb %d", dim, n, rb);
                expect_bitwise(what, gx, xr, len);
                snprintf(what, sizeof what, "add_rmsnorm dim %d n %d rb %d", dim, n, rb);
                expect_close(what, go, ref, len, rb, norm_ulps, norm_rtol, 1e-30);
                free(gx);
                free(go);
                free(xr);
                free(ref);
                free(x);
                free(y);
                free(w);
                check_guards_and_free(g);
            }
}

Test(cuda_ops, add_and_swiglu) {
    const mg_backend_ops *g = gpu_or_skip();
    rng_seed(3);
    const size_t lens[] = {1, 77, 4096, 100003};
    for (int li = 0; li < 4; li++)
        for (int rb = 0; rb < 2; rb++) {
            const size_t n = lens[li];
            float *a = rand_vec(n, 4.0f, rb), *b = rand_vec(n, 4.0f, rb);
            float *ref = malloc(n * sizeof(float));
            memcpy(ref, a, n * sizeof(float));
            cr_assert_eq(cpu_b()->add(ref, b, n, rb), MG_OK);
            void *ad = act_in(g, a, n, rb), *bd = act_in(g, b, n, rb);
            cr_assert_eq(g->add(ad, bd, n, rb), MG_OK, "%s", mg_error_last());
            float *got = act_out(g, ad, n, rb);
            expect_bitwise("add", got, ref, n);
            free(got);
            cr_assert_eq(cpu_b()->swiglu(ref, a, b, n, rb), MG_OK);
            void *a2 = act_in(g, a, n, rb), *od = act_in(g, NULL, n, rb);
            cr_assert_eq(g->swiglu(od, a2, bd, n, rb), MG_OK, "%s", mg_error_last());
            got = act_out(g, od, n, rb);
            expect_close("swiglu", got, ref, n, rb, 2, 1e-5, 1e-30);
            free(got);
            /* out aliasing gate */
            cr_assert_eq(g->swiglu(a2, a2, bd, n, rb), MG_OK, "%s", mg_error_last());
            got = act_out(g, a2, n, rb);
            expect_close("swiglu in place", got, ref, n, rb, 2, 1e-5, 1e-30);
            free(got);
            free(ref);
            free(a);
            free(b);
            check_guards_and_free(g);
        }
}

/* ---- matmul ------------------------------------------------------------------------ */

typedef struct {
    int n, k;
} nk_shape;

/* GPU vs CPU matmul (and logits) for one shape, numerics and kernels. */
static void check_matmul(const mg_backend_ops *g, int M, int N, int K, mg_dtype wdt, int rb, mg_kernels kernels,
                         int with_bias, int logits) {
    test_matrix w = make_matrix(g, N, K, wdt, 1.0f / sqrtf((float)K));
    float *x = rand_vec((size_t)M * K, 1.0f, rb);
    float *bias = with_bias ? rand_vec((size_t)N, 0.5f, 0) : NULL;
    float *bias_d = bias ? dev_copy(g, bias, (size_t)N * sizeof(float)) : NULL;
    float *ref = malloc((size_t)M * N * sizeof(float)), *got;
    void *xd = act_in(g, x, (size_t)M * K, rb);
    if (logits) {
        cr_assert_eq(cpu_b()->logits(ref, x, &w.host, M, kernels, rb), MG_OK);
        float *od = gbuf(g, (size_t)M * N * sizeof(float));
        cr_assert_eq(g->logits(od, xd, &w.dev, M, kernels, rb), MG_OK, "%s", mg_error_last());
        got = malloc((size_t)M * N * sizeof(float));
        cr_assert_eq(g->download(got, od, (size_t)M * N * sizeof(float)), MG_OK);
    } else {
        cr_assert_eq(cpu_b()->matmul(ref, x, &w.host, bias, M, kernels, rb), MG_OK);
        void *od = act_in(g, NULL, (size_t)M * N, rb);
        cr_assert_eq(g->matmul(od, xd, &w.dev, bias_d, M, kernels, rb), MG_OK, "%s", mg_error_last());
        got = act_out(g, od, (size_t)M * N, rb);
    }
    double err = rel_fro(got, ref, (size_t)M * N);
    /* BF16 outputs: rounding alone gives ~2e-3; FP32 activations: order only. */
    double tol = (rb && !logits) ? 6e-3 : 1e-5;
    cr_expect_leq(err, tol, "matmul M %d N %d K %d w %s rb %d %s bias %d logits %d: relative error %.3g > %.3g", M,
                  N, K, wdt == MG_DTYPE_BF16 ? "bf16" : "f32", rb, kernels ? "invariant" : "fast", with_bias, logits,
                  err, tol);
    free(got);
    free(ref);
    free(x);
    free(bias);
    free(w.data);
    check_guards_and_free(g);
}

Test(cuda_ops, matmul_vs_cpu) {
    const mg_backend_ops *g = gpu_or_skip();
    rng_seed(4);
    const int Ms[] = {1, 9, 33, 130, 3, 8, 16, 17, 32, 64, 65, 300};
    /* K = 4384: 5 groups of 4 splits (matmul_tc.cuh), the last one a full
     * split and a 32-column one; K = 14336: 14 groups (Llama-3.1-8B's
     * w_down), where small batches split K over blocks. */
    const nk_shape shapes[] = {{200, 96}, {48, 100}, {96, 4384}, {64, 64}, {1024, 512}, {128, 1408}, {40, 72},
                               {40, 14336}};
    const int n_shapes = quick() ? 3 : 8, n_ms = quick() ? 4 : 12;
    for (int si = 0; si < n_shapes; si++)
        for (int mi = 0; mi < n_ms; mi++)
            for (int kern = 0; kern < 2; kern++)
                for (int rb = 0; rb < 2; rb++)
                    check_matmul(g, Ms[mi], shapes[si].n, shapes[si].k, MG_DTYPE_BF16, rb, (mg_kernels)kern,
                                 (mi + si) % 3 == 0, 0);
}

Test(cuda_ops, matmul_f32_weights_bias_and_logits) {
    const mg_backend_ops *g = gpu_or_skip();
    rng_seed(5);
    const int Ms[] = {1, 7, 40};
    for (int mi = 0; mi < 3; mi++)
        for (int kern = 0; kern < 2; kern++)
            for (int rb = 0; rb < 2; rb++) {
                check_matmul(g, Ms[mi], 96, 64, MG_DTYPE_F32, rb, (mg_kernels)kern, 1, 0);
                check_matmul(g, Ms[mi], 96, 172, MG_DTYPE_F32, rb, (mg_kernels)kern, 0, 0);
                check_matmul(g, Ms[mi], 1000, 256, MG_DTYPE_BF16, rb, (mg_kernels)kern, 1, 0);
                check_matmul(g, Ms[mi], 5000, 256, MG_DTYPE_BF16, rb, (mg_kernels)kern, 0, 1);
            }
}

/* The FAST path's few-row kernel (gemv.cu) at every row count it takes
 * (1..8): K with a partial last step (K / 8 not a multiple of 128), parts
 * of an odd row count (a warp's second row past the end), one row, a
 * w_down-sized K; logits (FP32 out) and three parts in one launch. */
static void check_multi_stacked(const mg_backend_ops *g, int M, int K, int n_parts, const int *Ns, int bias_mask);

Test(cuda_ops, matmul_gemv_vs_cpu) {
    setenv("MG_CUDA_GEMV_MAX", "8", 1);
    const mg_backend_ops *g = gpu_or_skip();
    rng_seed(13);
    const nk_shape shapes[] = {{1, 8}, {3, 264}, {200, 4104}, {4097, 520}, {33, 14336}};
    for (int si = 0; si < 5; si++)
        for (int M = 1; M <= 8; M++)
            check_matmul(g, M, shapes[si].n, shapes[si].k, MG_DTYPE_BF16, 1, MG_KERNELS_FAST, (M + si) % 2, 0);
    for (int M = 1; M <= 8; M += 7) check_matmul(g, M, 5000, 256, MG_DTYPE_BF16, 1, MG_KERNELS_FAST, 0, 1);
    const int odd[3] = {201, 41, 39};
    for (int M = 1; M <= 8; M += 3) check_multi_stacked(g, M, 264, 3, odd, 5);
}

/* matmul_multi gives exactly what separate matmul calls give. (The weights
 * here are separate buffers, so FAST takes the per-part path; stacked
 * weights in FAST, one wider GEMM, are checked against the CPU below.) */
Test(cuda_ops, matmul_multi_equals_separate) {
    const mg_backend_ops *g = gpu_or_skip();
    rng_seed(6);
    const int Ms[] = {1, 13, 70};
    /* K = 2080: 3 groups; whether and how K is split over blocks depends on
     * the tile count, which differs between the fused and separate launches. */
    for (int mk = 0; mk < 6; mk++)
        for (int kern = 0; kern < 2; kern++) {
            const int M = Ms[mk % 3], K = mk < 3 ? 256 : 2080, Ns[3] = {96, 32, 40};
            test_matrix w[3];
            float *bias[3];
            mg_matmul_part parts[3];
            void *sep[3];
            float *x = rand_vec((size_t)M * K, 1.0f, 1);
            void *xd = act_in(g, x, (size_t)M * K, 1);
            for (int p = 0; p < 3; p++) {
                w[p] = make_matrix(g, Ns[p], K, MG_DTYPE_BF16, 0.06f);
                float *b = rand_vec((size_t)Ns[p], 0.5f, 0);
                bias[p] = p == 1 ? NULL : dev_copy(g, b, (size_t)Ns[p] * sizeof(float));
                free(b);
                parts[p] = (mg_matmul_part){act_in(g, NULL, (size_t)M * Ns[p], 1), &w[p].dev, bias[p]};
                sep[p] = act_in(g, NULL, (size_t)M * Ns[p], 1);
                cr_assert_eq(g->matmul(sep[p], xd, &w[p].dev, bias[p], M, (mg_kernels)kern, 1), MG_OK, "%s",
                             mg_error_last());
            }
            cr_assert_eq(g->matmul_multi(parts, 3, xd, M, (mg_kernels)kern, 1), MG_OK, "%s", mg_error_last());
            for (int p = 0; p < 3; p++) {
                float *a = act_out(g, parts[p].out, (size_t)M * Ns[p], 1);
                float *b = act_out(g, sep[p], (size_t)M * Ns[p], 1);
                expect_bitwise("matmul_multi part", a, b, (size_t)M * Ns[p]);
                free(a);
                free(b);
                free(w[p].data);
            }
            free(x);
            check_guards_and_free(g);
        }
}

/* Where check_multi_stacked puts the parts' weights on the device. */
enum {
    LAYOUT_STACKED,  /* one buffer, part p + 1 right after part p (upload_model's q/k/v) */
    LAYOUT_GAPPED,   /* one buffer, LAYOUT_GAP_ROWS rows between parts: must not count as stacked */
    LAYOUT_SEPARATE, /* one buffer per part */
    N_LAYOUTS
};
#define LAYOUT_GAP_ROWS 8
static const char *const layout_name[N_LAYOUTS] = {"stacked", "gapped", "separate"};

/* One matmul_multi case for matmul_multi_stacked: parts of Ns[p] rows and K
 * columns (bias_mask bit p: part p has a bias), input of M rows, weights in
 * each layout. FAST (stacked: one GEMM over all rows and a scatter; else one
 * GEMM per part) against the CPU with check_matmul's BF16 tolerance;
 * INVARIANT bit for bit between the layouts (the tensor-core path reads each
 * part where it is). Guards around every device buffer. */
static void check_multi_stacked(const mg_backend_ops *g, int M, int K, int n_parts, const int *Ns, int bias_mask) {
    const size_t row_bytes = (size_t)K * sizeof(uint16_t);
    size_t rows = 0, off[4]; /* part p starts at row off[p] of the stacked matrix */
    for (int p = 0; p < n_parts; p++) {
        off[p] = rows;
        rows += (size_t)Ns[p];
    }
    uint16_t *wh = malloc(rows * row_bytes); /* (rows, K), stacked */
    for (size_t i = 0; i < rows * K; i++) wh[i] = mg_f32_to_bf16(frand() / sqrtf((float)K));
    char *stacked = dev_copy(g, wh, rows * row_bytes); /* (rows, K) */
    /* (rows + gaps, K): part p at row off[p] + p * LAYOUT_GAP_ROWS, sentinel in the gaps */
    char *gapped = gbuf(g, (rows + (size_t)(n_parts - 1) * LAYOUT_GAP_ROWS) * row_bytes);
    float *x = rand_vec((size_t)M * K, 1.0f, 1);
    void *xd = act_in(g, x, (size_t)M * K, 1); /* (M, K) */
    mg_matrix host[4], dev[N_LAYOUTS][4];
    float *bias[4], *ref[4];
    mg_matmul_part parts[N_LAYOUTS][4];
    for (int p = 0; p < n_parts; p++) {
        const size_t n_out = (size_t)M * Ns[p], bytes = (size_t)Ns[p] * row_bytes;
        host[p] = (mg_matrix){.dtype = MG_DTYPE_BF16, .data = wh + off[p] * K, .rows = Ns[p], .cols = K};
        char *at_gap = gapped + (off[p] + (size_t)p * LAYOUT_GAP_ROWS) * row_bytes;
        cr_assert_eq(g->upload(at_gap, host[p].data, bytes), MG_OK, "%s", mg_error_last());
        const void *data[N_LAYOUTS] = {stacked + off[p] * row_bytes, at_gap, dev_copy(g, host[p].data, bytes)};
        bias[p] = (bias_mask >> p) & 1 ? rand_vec((size_t)Ns[p], 0.5f, 0) : NULL;
        float *bias_d = bias[p] ? dev_copy(g, bias[p], (size_t)Ns[p] * sizeof(float)) : NULL; /* (Ns[p]) */
        ref[p] = malloc(n_out * sizeof(float)); /* (M, Ns[p]) */
        cr_assert_eq(cpu_b()->matmul(ref[p], x, &host[p], bias[p], M, MG_KERNELS_FAST, 1), MG_OK);
        for (int l = 0; l < N_LAYOUTS; l++) {
            dev[l][p] = host[p];
            dev[l][p].data = data[l];
            parts[l][p] = (mg_matmul_part){act_in(g, NULL, n_out, 1), &dev[l][p], bias_d};
        }
    }
    for (int kern = 0; kern < 2; kern++) {
        float *out[N_LAYOUTS][4];
        for (int l = 0; l < N_LAYOUTS; l++) {
            cr_assert_eq(g->matmul_multi(parts[l], n_parts, xd, M, (mg_kernels)kern, 1), MG_OK, "%s",
                         mg_error_last());
            for (int p = 0; p < n_parts; p++) out[l][p] = act_out(g, parts[l][p].out, (size_t)M * Ns[p], 1);
        }
        for (int l = 0; l < N_LAYOUTS; l++)
            for (int p = 0; p < n_parts; p++) {
                const size_t n_out = (size_t)M * Ns[p];
                if (kern == MG_KERNELS_FAST || !invariant_gemm_tc()) {
                    const double err = rel_fro(out[l][p], ref[p], n_out), tol = 6e-3;
                    cr_expect_leq(err, tol, "%s %s M %d K %d part %d of %d (N %d, bias %d): relative error %.3g",
                                  layout_name[l], kern ? "invariant" : "fast", M, K, p, n_parts, Ns[p],
                                  bias[p] != NULL, err);
                } else if (l != LAYOUT_SEPARATE) {
                    char what[96];
                    snprintf(what, sizeof what, "invariant M %d K %d part %d: %s vs separate", M, K, p,
                             layout_name[l]);
                    expect_bitwise(what, out[l][p], out[LAYOUT_SEPARATE][p], n_out);
                }
            }
        for (int l = 0; l < N_LAYOUTS; l++)
            for (int p = 0; p < n_parts; p++) free(out[l][p]);
    }
    for (int p = 0; p < n_parts; p++) {
        free(bias[p]);
        free(ref[p]);
    }
    free(x);
    free(wh);
    check_guards_and_free(g);
}

/* matmul_multi over q/k/v-like weights (and a two-part gate/up-like shape,
 * which the stacked path takes as well) stacked in one buffer, and the
 * per-part fallback when they are not (gapped, separate), at M = 1, 7, 64
 * and 300 (above FAST's stacked-GEMM row limit: its per-part path on
 * stacked weights; INVARIANT on pinned cuBLASLt stacks every M). FAST and
 * pinned INVARIANT against the CPU; INVARIANT on the own kernels bitwise
 * against the separate parts. */
static void multi_stacked_cases(const mg_backend_ops *g) {
    rng_seed(12);
    const int Ms[] = {1, 7, 64, 300};
    const int qkv[3] = {256, 64, 64}, qkv_small[3] = {200, 40, 40}, gate_up[2] = {704, 704};
    for (int mi = 0; mi < (quick() ? 3 : 4); mi++) {
        const int M = Ms[mi];
        check_multi_stacked(g, M, 1024, 3, qkv, 0);      /* Llama: no biases (BF16 GEMM, plain scatter) */
        check_multi_stacked(g, M, 1024, 3, qkv, 7);      /* Qwen2: q, k and v biases (FP32 GEMM) */
        check_multi_stacked(g, M, 256, 3, qkv_small, 5); /* biases on q and v only; parts end mid-block */
        check_multi_stacked(g, M, 1024, 2, gate_up, 0);  /* gate/up */
    }
}

Test(cuda_ops, matmul_multi_stacked) { multi_stacked_cases(gpu_or_skip()); }

/* With the own invariant kernels, stacked parts give the separate parts'
 * bits (their order depends on K alone). */
Test(cuda_ops, matmul_multi_stacked_tc) { multi_stacked_cases(gpu_tc_or_skip()); }

/* INVARIANT matmul: row r of a batch of M equals the row computed alone,
 * bit for bit, and so does the row recomputed alone in place. Pinned
 * cuBLASLt: one kernel for every M (x and out staged when off its
 * alignment). Own kernels: M across the skinny (<= MG_CUDA_SKINNY_MAX rows)
 * and both tiled kernels, with K split over blocks or not (the choice
 * depends on the tile count: on N, M and the GPU's SM count). */
static void check_matmul_invariance(const mg_backend_ops *g, int N, int K, int logits) {
    const int Ms[] = {2, 9, 17, 33, 257, 5, 8, 16, 31, 32, 64, 65, 100, 128, 129, 2048};
    const int n_ms = quick() ? 5 : 16;
    test_matrix w = make_matrix(g, N, K, MG_DTYPE_BF16, 1.0f / sqrtf((float)K));
    float *bias = rand_vec((size_t)N, 0.5f, 0);
    float *bias_d = logits ? NULL : dev_copy(g, bias, (size_t)N * sizeof(float));
    float *x0 = rand_vec((size_t)K, 1.0f, 1);
    const size_t out_es = logits ? sizeof(float) : g->act_size(1);
    void *x1 = act_in(g, x0, (size_t)K, 1), *o1 = gbuf(g, (size_t)N * out_es);
    if (logits)
        cr_assert_eq(g->logits(o1, x1, &w.dev, 1, MG_KERNELS_INVARIANT, 1), MG_OK, "%s", mg_error_last());
    else
        cr_assert_eq(g->matmul(o1, x1, &w.dev, bias_d, 1, MG_KERNELS_INVARIANT, 1), MG_OK, "%s", mg_error_last());
    unsigned char *alone = malloc((size_t)N * out_es), *in_batch = malloc((size_t)N * out_es);
    cr_assert_eq(g->download(alone, o1, (size_t)N * out_es), MG_OK);
    for (int mi = 0; mi < n_ms; mi++) {
        const int M = Ms[mi];
        float *x = rand_vec((size_t)M * K, 1.0f, 1);
        const int at[3] = {0, M / 2, M - 1};
        for (int a = 0; a < 3; a++) memcpy(x + (size_t)at[a] * K, x0, (size_t)K * sizeof(float));
        void *xd = act_in(g, x, (size_t)M * K, 1), *od = gbuf(g, (size_t)M * N * out_es);
        if (logits)
            cr_assert_eq(g->logits(od, xd, &w.dev, M, MG_KERNELS_INVARIANT, 1), MG_OK, "%s", mg_error_last());
        else
            cr_assert_eq(g->matmul(od, xd, &w.dev, bias_d, M, MG_KERNELS_INVARIANT, 1), MG_OK, "%s",
                         mg_error_last());
        for (int a = 0; a < 3; a++) {
            cr_assert_eq(g->download(in_batch, (char *)od + (size_t)at[a] * N * out_es, (size_t)N * out_es), MG_OK);
            cr_expect(memcmp(alone, in_batch, (size_t)N * out_es) == 0,
                      "invariant %s N %d K %d: row %d of a batch of %d differs from the row alone",
                      logits ? "logits" : "matmul", N, K, at[a], M);
        }
        /* The middle row alone, read in place (x and out at a row offset). */
        void *xm = (char *)xd + (size_t)at[1] * K * g->act_size(1), *om = (char *)od + (size_t)at[1] * N * out_es;
        if (logits)
            cr_assert_eq(g->logits(om, xm, &w.dev, 1, MG_KERNELS_INVARIANT, 1), MG_OK, "%s", mg_error_last());
        else
            cr_assert_eq(g->matmul(om, xm, &w.dev, bias_d, 1, MG_KERNELS_INVARIANT, 1), MG_OK, "%s",
                         mg_error_last());
        cr_assert_eq(g->download(in_batch, om, (size_t)N * out_es), MG_OK);
        cr_expect(memcmp(alone, in_batch, (size_t)N * out_es) == 0,
                  "invariant %s N %d K %d: row %d of a batch of %d, recomputed alone in place, differs",
                  logits ? "logits" : "matmul", N, K, at[1], M);
        free(x);
    }
    free(alone);
    free(in_batch);
    free(x0);
    free(bias);
    free(w.data);
    check_guards_and_free(g);
}

static void invariance_cases(const mg_backend_ops *g) {
    rng_seed(7);
    check_matmul_invariance(g, 256, 1408, 0); /* last split shorter than the others */
    check_matmul_invariance(g, 8192, 512, 0); /* wide enough for the 128-row tiled kernel */
    check_matmul_invariance(g, 200, 4384, 0); /* 5 groups, last partial; few tiles: K split */
    if (quick()) return;
    check_matmul_invariance(g, 200, 4096, 0);   /* rows not a multiple of the tiles */
    check_matmul_invariance(g, 3000, 256, 1);   /* FP32 logits */
    check_matmul_invariance(g, 3000, 2080, 1);  /* FP32 logits, 3 groups (the last: one 32-column split) */
    check_matmul_invariance(g, 8192, 4384, 0);  /* many tiles: K split only for some M */
    check_matmul_invariance(g, 1000, 14336, 0); /* 14 groups (w_down's K) */
}

/* The default invariant GEMMs: pinned cuBLASLt (on BF16 shapes it has an
 * algorithm for; at least one of these shapes must have one, or the test
 * would only see the own kernels). Under MG_CUDA_INVARIANT_GEMM=tc in the
 * environment (gpu-check's ops-tc stage) the own kernels, as the next test. */
Test(cuda_ops, matmul_invariant_bitwise_across_batch_sizes) {
    invariance_cases(gpu_or_skip());
    char pins[2048];
    mg_cuda_invariant_gemm_describe(pins, sizeof pins);
    if (!invariant_gemm_tc()) cr_expect(strstr(pins, ": algo") != NULL, "no shape ran pinned cuBLASLt: %s", pins);
}

/* The own tensor-core kernels (MG_CUDA_INVARIANT_GEMM=tc). */
Test(cuda_ops, matmul_invariant_tc_bitwise_across_batch_sizes) { invariance_cases(gpu_tc_or_skip()); }

/* Tensor parallelism's reduction ops: the group results of matmul_groups,
 * folded in order, are the invariant matmul's output bit for bit (any M,
 * kernel and K split); the groups match the CPU's within FP32 sum-order
 * error; fold (FP32 adds in order) matches the CPU's fold bitwise. */
static void check_groups_fold(const mg_backend_ops *g, int M, int N, int K) {
    const mg_backend_ops *c = cpu_b();
    const int G = (K + MG_MATMUL_GROUP - 1) / MG_MATMUL_GROUP;
    test_matrix w = make_matrix(g, N, K, MG_DTYPE_BF16, 1.0f / sqrtf((float)K));
    float *x = rand_vec((size_t)M * K, 1.0f, 1);
    void *xd = act_in(g, x, (size_t)M * K, 1);
    float *groups_d = gbuf(g, (size_t)G * M * N * sizeof(float));
    void *folded = gbuf(g, (size_t)M * N * g->act_size(1)), *direct = gbuf(g, (size_t)M * N * g->act_size(1));
    cr_assert_eq(g->matmul_groups(groups_d, xd, &w.dev, M, 1), MG_OK, "%s", mg_error_last());
    cr_assert_eq(g->fold(folded, groups_d, G, (size_t)M * N, 1), MG_OK, "%s", mg_error_last());
    cr_assert_eq(g->matmul(direct, xd, &w.dev, NULL, M, MG_KERNELS_INVARIANT, 1), MG_OK, "%s", mg_error_last());
    float *a = act_out(g, folded, (size_t)M * N, 1), *b = act_out(g, direct, (size_t)M * N, 1);
    char what[96];
    snprintf(what, sizeof what, "fold(matmul_groups) vs invariant matmul, M %d N %d K %d", M, N, K);
    expect_bitwise(what, a, b, (size_t)M * N);
    float *groups = malloc((size_t)G * M * N * sizeof(float)), *ref = malloc((size_t)G * M * N * sizeof(float));
    cr_assert_eq(g->download(groups, groups_d, (size_t)G * M * N * sizeof(float)), MG_OK);
    cr_assert_eq(c->matmul_groups(ref, x, &w.host, M, 1), MG_OK);
    snprintf(what, sizeof what, "matmul_groups vs CPU, M %d N %d K %d", M, N, K);
    expect_close(what, groups, ref, (size_t)G * M * N, 0, 0, 1e-4, 1e-5);
    float *f32 = gbuf(g, (size_t)M * N * sizeof(float)), *fold_cpu = malloc((size_t)M * N * sizeof(float));
    cr_assert_eq(g->fold(f32, groups_d, G, (size_t)M * N, 0), MG_OK);
    cr_assert_eq(c->fold(fold_cpu, groups, G, (size_t)M * N, 0), MG_OK);
    float *fold_gpu = malloc((size_t)M * N * sizeof(float));
    cr_assert_eq(g->download(fold_gpu, f32, (size_t)M * N * sizeof(float)), MG_OK);
    snprintf(what, sizeof what, "FP32 fold vs CPU, M %d N %d K %d", M, N, K);
    expect_bitwise(what, fold_gpu, fold_cpu, (size_t)M * N);
    free(fold_gpu);
    free(fold_cpu);
    free(groups);
    free(ref);
    free(a);
    free(b);
    free(x);
    free(w.data);
    check_guards_and_free(g);
}

Test(cuda_ops, matmul_groups_fold_equals_invariant_matmul) {
    const mg_backend_ops *g = gpu_tc_or_skip(); /* the groups are the own kernels' */
    rng_seed(11);
    const int Ms[] = {1, 7, 33, 64, 100, 300};
    for (int i = 0; i < (quick() ? 3 : 6); i++) {
        check_groups_fold(g, Ms[i], 256, 2048);  /* 2 groups: an 8B o_proj half at TP 2 */
        check_groups_fold(g, Ms[i], 96, 4384);   /* 5 groups, the last partial */
        check_groups_fold(g, Ms[i], 4096, 1024); /* one group, many tiles */
    }
    /* copy2d: a strided block, nothing outside it touched. */
    float src[12], want[16], got[16];
    for (int i = 0; i < 12; i++) src[i] = (float)i + 1;
    for (int i = 0; i < 16; i++) want[i] = -1.0f;
    float *sd = dev_copy(g, src, sizeof src), *dd = dev_copy(g, want, sizeof want);
    for (int r = 0; r < 3; r++)
        for (int k = 0; k < 2; k++) want[r * 5 + 1 + k] = src[r * 4 + k];
    cr_assert_eq(g->copy2d(dd + 1, 5 * sizeof(float), sd, 4 * sizeof(float), 2 * sizeof(float), 3), MG_OK);
    cr_assert_eq(g->download(got, dd, sizeof got), MG_OK);
    cr_assert_arr_eq(got, want, sizeof want);
    check_guards_and_free(g);
}

/* The same checks and the CPU comparison with the tunables forced (they
 * pick kernels, tiles and K splits, never the order): set before the
 * backend starts in this test's process (Criterion forks one per test; in
 * a no-fork run they may come too late, which only narrows the coverage). */
static const mg_backend_ops *gpu_with_env(const char *skinny_max, const char *split_blocks) {
    setenv("MG_CUDA_SKINNY_MAX", skinny_max, 1);
    if (split_blocks)
        setenv("MG_CUDA_MM_SPLIT_BLOCKS", split_blocks, 1);
    else
        unsetenv("MG_CUDA_MM_SPLIT_BLOCKS");
    return gpu_tc_or_skip();
}

static void forced_matmul_checks(const mg_backend_ops *g) {
    const int Ms[] = {1, 17, 64, 65, 130};
    for (int mi = 0; mi < 5; mi++) {
        check_matmul(g, Ms[mi], 96, 4384, MG_DTYPE_BF16, 1, MG_KERNELS_INVARIANT, 1, 0);
        check_matmul(g, Ms[mi], 300, 2080, MG_DTYPE_BF16, 1, MG_KERNELS_INVARIANT, 0, 1);
    }
    check_matmul_invariance(g, 200, 4384, 0);
    check_matmul_invariance(g, 3000, 2080, 1);
    check_groups_fold(g, 17, 96, 4384);
    check_groups_fold(g, 130, 300, 2080);
    if (quick()) return;
    check_matmul_invariance(g, 8192, 4384, 0);
    check_matmul_invariance(g, 1000, 14336, 0);
}

/* Skinny up to 16 rows, tiled above; K never split. */
Test(cuda_ops, matmul_invariant_forced_no_k_split) {
    const mg_backend_ops *g = gpu_with_env("16", "0");
    rng_seed(8);
    forced_matmul_checks(g);
}

/* Skinny up to 16 rows, tiled above; K split whenever it has 2+ groups
 * (skinny: 3+). */
Test(cuda_ops, matmul_invariant_forced_k_split) {
    const mg_backend_ops *g = gpu_with_env("16", "100000000");
    rng_seed(9);
    forced_matmul_checks(g);
}

/* Tiled kernels for every M (the 64-row tiles at small M). */
Test(cuda_ops, matmul_invariant_forced_tiled_only) {
    const mg_backend_ops *g = gpu_with_env("0", NULL);
    rng_seed(10);
    forced_matmul_checks(g);
}

/* ---- RoPE + KV store, attention ----------------------------------------------------------- */

typedef struct {
    mg_kv_pool cpu, gpu;
    mg_kv_seq seqs[8];
    int32_t *tables[8];
} test_cache;

/* Pools of the same geometry on both backends, and sequences whose block
 * tables are shuffled block ids (valid in both pools). With fill, the
 * caches hold the same random (BF16-representable) K/V values. */
static void make_cache(const mg_backend_ops *g, test_cache *c, int layers, int kvh, int hd, int n_seqs, int max_len,
                       mg_dtype gpu_dtype, int fill, int bs) {
    const int per_seq = (max_len + bs - 1) / bs, n_blocks = n_seqs * per_seq + 3;
    cr_assert_eq(mg_kv_pool_init(&c->cpu, layers, kvh, hd, bs, n_blocks), MG_OK, "%s", mg_error_last());
    cr_assert_eq(mg_kv_pool_init_on(&c->gpu, g, gpu_dtype, layers, kvh, hd, bs, n_blocks), MG_OK, "%s",
                 mg_error_last());
    int32_t *perm = malloc((size_t)n_blocks * sizeof(int32_t));
    for (int i = 0; i < n_blocks; i++) perm[i] = i;
    for (int i = n_blocks - 1; i > 0; i--) {
        int j = irand(i + 1);
        int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (int s = 0; s < n_seqs; s++) {
        c->tables[s] = malloc((size_t)per_seq * sizeof(int32_t));
        memcpy(c->tables[s], perm + s * per_seq, (size_t)per_seq * sizeof(int32_t));
        c->seqs[s] = (mg_kv_seq){.blocks = c->tables[s], .n_blocks = per_seq, .capacity = per_seq};
    }
    free(perm);
    if (!fill) return;
    const size_t n = (size_t)layers * n_blocks * bs * kvh * hd;
    float *k = rand_vec(n, 1.0f, 1), *v = rand_vec(n, 1.0f, 1);
    memcpy(c->cpu.k, k, n * sizeof(float));
    memcpy(c->cpu.v, v, n * sizeof(float));
    for (int kv = 0; kv < 2; kv++) {
        const float *src = kv ? v : k;
        void *dst = kv ? c->gpu.v : c->gpu.k;
        if (gpu_dtype == MG_DTYPE_F32) {
            cr_assert_eq(g->upload(dst, src, n * sizeof(float)), MG_OK);
        } else {
            uint16_t *b = malloc(n * sizeof(uint16_t));
            for (size_t i = 0; i < n; i++) b[i] = mg_f32_to_bf16(src[i]);
            cr_assert_eq(g->upload(dst, b, n * sizeof(uint16_t)), MG_OK);
            free(b);
        }
    }
    free(k);
    free(v);
}

static void free_cache(test_cache *c, int n_seqs) {
    for (int s = 0; s < n_seqs; s++) free(c->tables[s]);
    mg_kv_pool_free(&c->cpu);
    mg_kv_pool_free(&c->gpu);
}

Test(cuda_ops, rope_kv_store) {
    const mg_backend_ops *g = gpu_or_skip();
    rng_seed(8);
    mg_config cfg = {.head_dim = 64, .rope_theta = 500000.0f, .rope_type = MG_ROPE_LLAMA3, .rope_factor = 8,
                     .rope_low_freq_factor = 1, .rope_high_freq_factor = 4, .rope_original_max_pos = 1024};
    float inv_freq[64];
    for (int rb = 0; rb < 2; rb++)
        for (int kvdt = 0; kvdt < 2; kvdt++) {
            if (kvdt == 1 && !rb) continue; /* a BF16 cache is for BF16 numerics */
            const int n_heads = 8, kvh = 2, hd = 64, layers = 3, layer = 1, n = 11;
            mg_rope_inv_freq(&cfg, inv_freq);
            float *ifd = dev_copy(g, inv_freq, sizeof(float) * hd / 2);
            test_cache c;
            make_cache(g, &c, layers, kvh, hd, 3, 5000, kvdt ? MG_DTYPE_BF16 : MG_DTYPE_F32, 0, 16);
            int32_t pos[11];
            mg_kv_seq *seqs[11];
            for (int i = 0; i < n; i++) { /* distinct positions within each sequence, one near the end */
                seqs[i] = &c.seqs[i % 3];
                pos[i] = i == 0 ? 4990 : (i / 3) * 457 + (i % 3) * 13;
            }
            mg_attn_rows rows = {.n_rows = n, .tokens = NULL, .positions = pos, .seqs = seqs};
            float *q = rand_vec((size_t)n * n_heads * hd, 2.0f, rb), *k = rand_vec((size_t)n * kvh * hd, 2.0f, rb);
            float *v = rand_vec((size_t)n * kvh * hd, 2.0f, rb);
            void *qd = act_in(g, q, (size_t)n * n_heads * hd, rb), *kd = act_in(g, k, (size_t)n * kvh * hd, rb);
            void *vd = act_in(g, v, (size_t)n * kvh * hd, rb);
            cr_assert_eq(cpu_b()->rope_kv_store(q, k, v, &c.cpu, layer, &rows, n_heads, inv_freq, rb), MG_OK);
            cr_assert_eq(g->rows_prepare(&rows), MG_OK, "%s", mg_error_last());
            cr_assert_eq(g->rope_kv_store(qd, kd, vd, &c.gpu, layer, &rows, n_heads, ifd, rb), MG_OK, "%s",
                         mg_error_last());
            float *gq = act_out(g, qd, (size_t)n * n_heads * hd, rb), *gk = act_out(g, kd, (size_t)n * kvh * hd, rb);
            expect_close("rope q", gq, q, (size_t)n * n_heads * hd, rb, 2, 2e-6, 1e-6);
            expect_close("rope k", gk, k, (size_t)n * kvh * hd, rb, 2, 2e-6, 1e-6);
            float ck[128], cv[128], gkc[128], gvc[128];
            for (int i = 0; i < n; i++) {
                cr_assert_eq(mg_kv_read(&c.cpu, seqs[i], layer, pos[i], ck, cv), MG_OK);
                cr_assert_eq(mg_kv_read(&c.gpu, seqs[i], layer, pos[i], gkc, gvc), MG_OK, "%s", mg_error_last());
                expect_close("cached k", gkc, ck, (size_t)kvh * hd, rb, 2, 2e-6, 1e-6);
                expect_bitwise("cached v", gvc, cv, (size_t)kvh * hd);
                expect_bitwise("cached k = rotated k", gkc, gk + (size_t)i * kvh * hd, (size_t)kvh * hd);
            }
            free(gq);
            free(gk);
            free(q);
            free(k);
            free(v);
            free_cache(&c, 3);
            check_guards_and_free(g);
        }
}

/* Runs attention for `rows` on both backends and compares. */
static float *gpu_attention(const mg_backend_ops *g, test_cache *c, const float *q, mg_attn_rows *rows, int n_heads,
                            int layer, mg_kernels kernels, int rb) {
    const size_t qn = (size_t)rows->n_rows * n_heads * c->gpu.head_dim;
    void *qd = act_in(g, q, qn, rb), *od = act_in(g, NULL, qn, rb);
    cr_assert_eq(g->rows_prepare(rows), MG_OK, "%s", mg_error_last());
    cr_assert_eq(g->attention(od, qd, &c->gpu, layer, rows, n_heads, kernels, rb), MG_OK, "%s", mg_error_last());
    return act_out(g, od, qn, rb);
}

static void attention_case_bs(const mg_backend_ops *g, int n_heads, int kvh, int hd, int rb, mg_dtype kv_dt,
                              int block_size) {
    const int layers = 2, layer = 1;
    test_cache c;
    make_cache(g, &c, layers, kvh, hd, 6, 1600, kv_dt, 1, block_size);
    /* Rows: decode rows of sequences 0..4 at lengths 1, 17, 256, 257, 1500,
     * then a prefill chunk of sequence 5 at positions 240..276. */
    int32_t pos[64];
    mg_kv_seq *seqs[64];
    const int dec[5] = {0, 16, 255, 256, 1499};
    int n = 0;
    for (int s = 0; s < 5; s++) pos[n] = dec[s], seqs[n++] = &c.seqs[s];
    for (int p = 240; p < 277; p++) pos[n] = p, seqs[n++] = &c.seqs[5];
    mg_attn_rows rows = {.n_rows = n, .tokens = NULL, .positions = pos, .seqs = seqs};
    const size_t row_len = (size_t)n_heads * hd;
    float *q = rand_vec((size_t)n * row_len, 1.0f, rb);
    char what[128];
    for (int kern = 0; kern < 2; kern++) {
        float *ref = malloc((size_t)n * row_len * sizeof(float));
        cr_assert_eq(cpu_b()->attention(ref, q, &c.cpu, layer, &rows, n_heads, (mg_kernels)kern, rb), MG_OK);
        float *got = gpu_attention(g, &c, q, &rows, n_heads, layer, (mg_kernels)kern, rb);
        snprintf(what, sizeof what, "attention heads %d/%d hd %d rb %d kv %s block %d %s", n_heads, kvh, hd, rb,
                 kv_dt == MG_DTYPE_BF16 ? "bf16" : "f32", block_size, kern ? "invariant" : "fast");
        expect_close(what, got, ref, (size_t)n * row_len, rb, 3, 2e-5, 2e-5);
        if (kern == MG_KERNELS_INVARIANT) {
            /* Each row alone gives the same bits as inside the batch. */
            for (int i = 0; i < n; i += (i < 5 ? 1 : 9)) {
                mg_attn_rows one = {.n_rows = 1, .tokens = NULL, .positions = &pos[i], .seqs = &seqs[i]};
                float *alone = gpu_attention(g, &c, q + (size_t)i * row_len, &one, n_heads, layer,
                                             MG_KERNELS_INVARIANT, rb);
                snprintf(what, sizeof what, "invariant attention row %d (position %d) alone vs batch of %d", i,
                         pos[i], n);
                expect_bitwise(what, alone, got + (size_t)i * row_len, row_len);
                free(alone);
            }
        }
        free(ref);
        free(got);
    }
    free(q);
    free_cache(&c, 6);
    check_guards_and_free(g);
}

/* The engine's KV block size (16 tokens). */
static void attention_case(const mg_backend_ops *g, int n_heads, int kvh, int hd, int rb, mg_dtype kv_dt) {
    attention_case_bs(g, n_heads, kvh, hd, rb, kv_dt, 16);
}

Test(cuda_ops, attention_vs_cpu_and_invariant) {
    const mg_backend_ops *g = gpu_or_skip();
    rng_seed(9);
    attention_case(g, 8, 2, 64, 1, MG_DTYPE_BF16);  /* mg-llama-27m */
    attention_case(g, 28, 4, 128, 1, MG_DTYPE_F32); /* Qwen2.5-7B group of 7, FP32 cache */
    if (quick()) return;
    attention_case(g, 32, 8, 128, 1, MG_DTYPE_BF16); /* Llama-3.1-8B */
    attention_case(g, 8, 2, 64, 0, MG_DTYPE_F32);   /* --fp32 */
    attention_case(g, 8, 4, 8, 0, MG_DTYPE_F32);    /* stories260K: head_dim 8 */
}

/* Other KV block sizes: one token a block (a chunk spans 256 pages), one
 * that is not a power of two (pages cut chunks anywhere), one larger than
 * a chunk (several chunks in one page). */
Test(cuda_ops, attention_block_sizes) {
    const mg_backend_ops *g = gpu_or_skip();
    rng_seed(11);
    const int sizes[] = {1, 5, 48, 512};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        attention_case_bs(g, 8, 2, 64, 1, MG_DTYPE_BF16, sizes[i]);
        attention_case_bs(g, 8, 2, 64, 0, MG_DTYPE_F32, sizes[i]);
    }
}

/* K/V staged in tiles of 64 keys instead of whole chunks: the same
 * checks (the tile size only stages loads). */
Test(cuda_ops, attention_forced_small_tiles) {
    setenv("MG_CUDA_ATTN_TILE", "64", 1);
    const mg_backend_ops *g = gpu_or_skip();
    rng_seed(9);
    attention_case(g, 8, 2, 64, 1, MG_DTYPE_BF16);
    attention_case(g, 32, 8, 128, 1, MG_DTYPE_BF16);
}

/* ---- argmax ----------------------------------------------------------------------------- */

Test(cuda_ops, argmax_matches_cpu_including_ties) {
    const mg_backend_ops *g = gpu_or_skip();
    rng_seed(10);
    const int vocabs[3] = {2, 8192, 128256};
    for (int vi = 0; vi < 3; vi++) {
        const int vocab = vocabs[vi], n = 6;
        float *l = rand_vec((size_t)n * vocab, 10.0f, 0);
        if (vocab > 100) {
            float *r1 = l + vocab, *r2 = l + 2 * (size_t)vocab, *r3 = l + 3 * (size_t)vocab;
            r1[77] = 50.0f, r1[5] = 50.0f;                          /* tie for the top: lower id wins */
            r2[vocab - 1] = 40.0f, r2[10] = 39.0f, r2[3000] = 39.0f; /* tie for second */
            for (int i = 0; i < vocab; i++) r3[i] = -1.0f;          /* all equal: margin 0, ids 0 and 1 */
        }
        float *ref_l = l;
        mg_argmax ref[6], got[6];
        cr_assert_eq(cpu_b()->argmax(ref, ref_l, n, vocab), MG_OK);
        float *ld = dev_copy(g, l, (size_t)n * vocab * sizeof(float));
        mg_argmax *od = gbuf(g, n * sizeof(mg_argmax));
        cr_assert_eq(g->argmax(od, ld, n, vocab), MG_OK, "%s", mg_error_last());
        cr_assert_eq(g->download(got, od, n * sizeof(mg_argmax)), MG_OK);
        for (int i = 0; i < n; i++) {
            cr_expect_eq(got[i].token, ref[i].token, "vocab %d row %d: argmax %d, CPU %d", vocab, i, got[i].token,
                         ref[i].token);
            cr_expect_eq(got[i].second, ref[i].second, "vocab %d row %d: second %d, CPU %d", vocab, i,
                         got[i].second, ref[i].second);
            cr_expect(memcmp(&got[i].margin, &ref[i].margin, sizeof(float)) == 0, "row %d: margin %.9g vs %.9g", i,
                      got[i].margin, ref[i].margin);
        }
        free(l);
        check_guards_and_free(g);
    }
}

/* ---- memory ops ----------------------------------------------------------------------------- */

Test(cuda_ops, memory_ops) {
    const mg_backend_ops *g = gpu_or_skip();
    rng_seed(11);
    const size_t n = 100001;
    float *a = rand_vec(n, 3.0f, 0), *b = malloc(n * sizeof(float));
    void *d1, *d2;
    cr_assert_eq(g->alloc(&d1, n * 4), MG_OK);
    cr_assert_eq(g->alloc(&d2, n * 4), MG_OK);
    cr_assert_eq(g->download(b, d1, n * 4), MG_OK);
    for (size_t i = 0; i < n; i++) cr_assert_eq(b[i], 0.0f, "alloc must zero-fill");
    cr_assert_eq(g->upload(d1, a, n * 4), MG_OK);
    cr_assert_eq(g->copy(d2, d1, n * 4), MG_OK);
    cr_assert_eq(g->download(b, d2, n * 4), MG_OK);
    cr_assert(memcmp(a, b, n * 4) == 0);
    cr_assert_eq(g->zero(d2, n * 4), MG_OK);
    cr_assert_eq(g->sync(), MG_OK);
    cr_assert_eq(g->download(b, d2, n * 4), MG_OK);
    for (size_t i = 0; i < n; i++) cr_assert_eq(b[i], 0.0f);
    /* BF16 activations round like mg_round_bf16 and come back exactly. */
    cr_assert_eq(g->act_upload(d1, a, n, 1), MG_OK);
    cr_assert_eq(g->act_download(b, d1, n, 1), MG_OK);
    for (size_t i = 0; i < n; i++) cr_assert_eq(b[i], mg_round_bf16(a[i]));
    g->free(d1);
    g->free(d2);
    free(a);
    free(b);
}

/* ---- a whole forward pass on a tiny random checkpoint ----------------------------------------- */

typedef struct {
    mg_model *model;
    char dir[256];
} tiny_model;

static tiny_model make_tiny(const char *arch) {
    tiny_model t;
    cr_assert_not_null(st_mkdtemp(t.dir, sizeof t.dir));
    st_tiny_opts o = {.arch = arch, .dim = 256, .hidden_dim = 704, .n_layers = 3, .n_heads = 8, .n_kv_heads = 2,
                      .vocab = 512, .seed = 42};
    cr_assert_eq(st_write_tiny_model(t.dir, &o), 0);
    cr_assert_eq(mg_model_load_hf(t.dir, &t.model), MG_OK, "%s", mg_error_last());
    return t;
}

static void free_tiny(tiny_model *t) {
    mg_model_free(t->model);
    st_rmtree(t->dir);
}

/* Prefill of prompt[0..n) then `steps` decode steps feeding prompt[n..n+steps)
 * (teacher forcing, so both backends see the same tokens); returns the
 * logits rows of the prefill's last row and of each step. */
static float *run_tiny(const mg_backend_ops *b, const mg_model *m, const int32_t *prompt, int n, int steps,
                       mg_kernels kernels, mg_act_precision prec) {
    const mg_config *c = &m->config;
    mg_forward *fw;
    mg_kv_pool pool;
    cr_assert_eq(mg_forward_init(&fw, m, b, 64), MG_OK, "%s", mg_error_last());
    mg_dtype dt = !b->host_memory && prec == MG_ACT_BF16 ? MG_DTYPE_BF16 : MG_DTYPE_F32;
    cr_assert_eq(mg_kv_pool_init_on(&pool, b, dt, c->n_layers, c->n_kv_heads, c->head_dim, 16, 8), MG_OK, "%s",
                 mg_error_last());
    mg_kv_seq seq = {0};
    cr_assert_eq(mg_kv_seq_reserve(&pool, &seq, n + steps), MG_OK);
    float *out = malloc((size_t)(steps + 1) * c->vocab_size * sizeof(float));
    int32_t pos[64];
    mg_kv_seq *seqs[64];
    uint8_t want[64] = {0};
    for (int i = 0; i < n; i++) pos[i] = i, seqs[i] = &seq;
    want[n - 1] = 1;
    mg_batch bt = {.n_rows = n, .tokens = prompt, .positions = pos, .seqs = seqs, .want_logits = want};
    cr_assert_eq(mg_forward_run(fw, &pool, &bt, kernels, prec, out), MG_OK, "%s", mg_error_last());
    for (int s = 0; s < steps; s++) {
        int32_t tok = prompt[n + s], p = n + s;
        mg_batch d = {.n_rows = 1, .tokens = &tok, .positions = &p, .seqs = seqs, .want_logits = NULL};
        cr_assert_eq(mg_forward_run(fw, &pool, &d, kernels, prec, out + (size_t)(s + 1) * c->vocab_size), MG_OK,
                     "%s", mg_error_last());
    }
    mg_kv_seq_free(&pool, &seq);
    mg_kv_pool_free(&pool);
    mg_forward_free(fw);
    return out;
}

/* Expects the matrices lying back to back in device memory, m[p + 1] right
 * after m[p]'s rows. */
static void expect_back_to_back(const char *what, int layer, const mg_matrix *const *m, int n) {
    for (int p = 1; p < n; p++) {
        const size_t bytes = (size_t)m[p - 1]->rows * m[p - 1]->cols * (m[p - 1]->dtype == MG_DTYPE_BF16 ? 2 : 4);
        cr_expect(m[p]->data == (const char *)m[p - 1]->data + bytes, "layer %d: %s part %d not right after part %d",
                  layer, what, p, p - 1);
    }
}

/* The GPU's weights_acquire stacks each layer's q/k/v (the shapes allow it:
 * every part a multiple of 256 bytes), which sends the forward pass's FAST
 * q/k/v matmul_multi to one GEMM (matmul.cu). */
static void expect_stacked_weights(const mg_backend_ops *g, const mg_model *m) {
    const mg_weights *w;
    cr_assert_eq(g->weights_acquire(&w, m), MG_OK, "%s", mg_error_last());
    for (int l = 0; l < m->config.n_layers; l++) {
        const mg_layer_weights *lw = &w->layers[l];
        const mg_matrix *qkv[3] = {&lw->wq, &lw->wk, &lw->wv};
        expect_back_to_back("q/k/v", l, qkv, 3);
    }
    g->weights_release(m);
}

Test(cuda_ops, tiny_model_forward_vs_cpu) {
    const mg_backend_ops *g = gpu_or_skip();
    const char *arches[2] = {"llama", "qwen2"};
    for (int ai = 0; ai < 2; ai++) {
        tiny_model t = make_tiny(arches[ai]);
        expect_stacked_weights(g, t.model);
        int32_t prompt[26];
        for (int i = 0; i < 26; i++) prompt[i] = (i * 37 + 11) % 512;
        for (int prec = 0; prec < 2; prec++)
            for (int kern = 0; kern < 2; kern++) {
                float *ref = run_tiny(cpu_b(), t.model, prompt, 20, 6, (mg_kernels)kern, (mg_act_precision)prec);
                float *got = run_tiny(g, t.model, prompt, 20, 6, (mg_kernels)kern, (mg_act_precision)prec);
                const size_t n = (size_t)7 * t.model->config.vocab_size;
                double err = rel_fro(got, ref, n);
                double tol = prec == MG_ACT_FP32 ? 1e-4 : 5e-2;
                cr_expect_leq(err, tol, "%s %s %s: logits relative error %.3g > %.3g", arches[ai],
                              prec == MG_ACT_FP32 ? "fp32" : "bf16", kern ? "invariant" : "fast", err, tol);
                free(ref);
                free(got);
            }
        free_tiny(&t);
    }
    /* The upload tuned FAST's algorithms of the stacked q/k/v (384 x 256;
     * FP32 with Qwen2's biases), which the prefill ran; unless the
     * environment turns the tuning off (gpu-check's sanitizer stage), as
     * the description then says. */
    char fast[8192];
    mg_cuda_fast_gemm_describe(fast, sizeof fast);
    if (!strstr(fast, "MG_CUDA_FAST_TUNE=0"))
        cr_expect(strstr(fast, "384 x 256:") && strstr(fast, "384 x 256 f32:"), "q/k/v not tuned for FAST: %s",
                  fast);
}

/* In a child process (CUDA not touched by the parent): the tiny model's
 * FAST logits (prefill of prompt[0..24) with logits at every row, then 6
 * decode steps) with MG_CUDA_FAST_TUNE=tune, written to path; exit status
 * 0, 3 when the GPU is not usable, 2 on any other failure. No Criterion
 * assertion runs here (the child exits through _exit). */
static void fast_logits_child(const mg_model *m, const int32_t *prompt, const char *tune, const char *path) {
    setenv("MG_CUDA_FAST_TUNE", tune, 1);
    const mg_backend_ops *g = mg_backend_cuda();
    if (!g) _exit(3);
    const mg_config *c = &m->config;
    const int n = 24, steps = 6, V = c->vocab_size;
    mg_forward *fw;
    mg_kv_pool pool;
    mg_kv_seq seq = {0};
    if (mg_forward_init(&fw, m, g, 64) != MG_OK ||
        mg_kv_pool_init_on(&pool, g, MG_DTYPE_BF16, c->n_layers, c->n_kv_heads, c->head_dim, 16, 8) != MG_OK ||
        mg_kv_seq_reserve(&pool, &seq, n + steps) != MG_OK)
        _exit(2);
    float *out = malloc((size_t)(n + steps) * V * sizeof(float)); /* (n + steps, V) */
    int32_t pos[64];
    mg_kv_seq *seqs[64];
    uint8_t want[64];
    for (int i = 0; i < n; i++) pos[i] = i, seqs[i] = &seq, want[i] = 1;
    mg_batch bt = {.n_rows = n, .tokens = prompt, .positions = pos, .seqs = seqs, .want_logits = want};
    if (!out || mg_forward_run(fw, &pool, &bt, MG_KERNELS_FAST, MG_ACT_BF16, out) != MG_OK) _exit(2);
    for (int s = 0; s < steps; s++) {
        int32_t tok = prompt[n + s], p = n + s;
        mg_batch d = {.n_rows = 1, .tokens = &tok, .positions = &p, .seqs = seqs, .want_logits = NULL};
        if (mg_forward_run(fw, &pool, &d, MG_KERNELS_FAST, MG_ACT_BF16, out + (size_t)(n + s) * V) != MG_OK)
            _exit(2);
    }
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(out, sizeof(float), (size_t)(n + steps) * V, f) != (size_t)(n + steps) * V || fclose(f))
        _exit(2);
    _exit(0);
}

/* FAST results do not depend on the timed choice of cuBLASLt algorithms:
 * MG_CUDA_FAST_TUNE=1 keeps only algorithms that give the bits of the
 * heuristic's pick for the bucket's batch size, so the tiny model's logits
 * (prefill of 24 rows, a bucket: the tuned GEMMs; decode: the GEMV kernel)
 * are the same bits with the timing on and off, which also makes FAST
 * repeat across processes. The setting is read once per process: two
 * child processes. */
Test(cuda_ops, fast_tuning_keeps_the_heuristics_bits) {
    /* compute-sanitizer follows forked children: under it (gpu-check's
     * sanitizer stage sets MG_TEST_NO_FORK) the test never finished. */
    if (getenv("MG_TEST_NO_FORK")) cr_skip_test("MG_TEST_NO_FORK: this test forks");
    tiny_model t = make_tiny("qwen2");
    int32_t prompt[30];
    for (int i = 0; i < 30; i++) prompt[i] = (i * 53 + 7) % 512;
    char path[2][sizeof t.dir + 16];
    const char *tune[2] = {"0", "1"};
    for (int k = 0; k < 2; k++) {
        snprintf(path[k], sizeof path[k], "%s/logits%d", t.dir, k);
        fflush(NULL);
        const pid_t pid = fork();
        cr_assert_neq(pid, -1);
        if (pid == 0) fast_logits_child(t.model, prompt, tune[k], path[k]);
        int status = 0;
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        if (WIFEXITED(status) && WEXITSTATUS(status) == 3) {
            free_tiny(&t);
            cr_skip_test("CUDA backend not usable here");
        }
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child with MG_CUDA_FAST_TUNE=%s failed (%d)",
                  tune[k], status);
    }
    const size_t n = (size_t)30 * t.model->config.vocab_size;
    float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
    FILE *fa = fopen(path[0], "rb"), *fb = fopen(path[1], "rb");
    cr_assert(fa && fb && fread(a, sizeof(float), n, fa) == n && fread(b, sizeof(float), n, fb) == n);
    fclose(fa);
    fclose(fb);
    expect_bitwise("FAST logits, timing off vs on", a, b, n);
    free(a);
    free(b);
    free_tiny(&t);
}

/* Whole forward pass, INVARIANT: a decode row computed alone gives the same
 * logits bits as inside a batch with other sequences and a prefill chunk. */
Test(cuda_ops, tiny_model_forward_invariant_bitwise) {
    const mg_backend_ops *g = gpu_or_skip();
    tiny_model t = make_tiny("llama");
    const mg_config *c = &t.model->config;
    const int V = c->vocab_size;
    mg_forward *fw;
    cr_assert_eq(mg_forward_init(&fw, t.model, g, 64), MG_OK, "%s", mg_error_last());
    mg_kv_pool pool;
    cr_assert_eq(mg_kv_pool_init_on(&pool, g, MG_DTYPE_BF16, c->n_layers, c->n_kv_heads, c->head_dim, 16, 100), MG_OK);
    /* Sequence A: prompt of 30 tokens prefilled, then one decode step alone
     * and the same step again (same position, same K/V written) inside a
     * batch with 3 other decode sequences and a prefill chunk. */
    mg_kv_seq seq[5] = {{0}};
    for (int s = 0; s < 5; s++) cr_assert_eq(mg_kv_seq_reserve(&pool, &seq[s], 200), MG_OK);
    int32_t tok[64], pos[64];
    mg_kv_seq *seqs[64];
    for (int s = 0; s < 5; s++) {
        const int len = 30 + 7 * s;
        for (int i = 0; i < len; i++) tok[i] = (i * 31 + 7 * s) % V, pos[i] = i, seqs[i] = &seq[s];
        mg_batch b = {.n_rows = len, .tokens = tok, .positions = pos, .seqs = seqs, .want_logits = NULL};
        float *l = malloc((size_t)len * V * sizeof(float));
        cr_assert_eq(mg_forward_run(fw, &pool, &b, MG_KERNELS_INVARIANT, MG_ACT_BF16, l), MG_OK, "%s",
                     mg_error_last());
        free(l);
    }
    float *alone = malloc((size_t)V * sizeof(float)), *batch = malloc((size_t)40 * V * sizeof(float));
    int32_t t0 = 123, p0 = 30;
    mg_kv_seq *s0 = &seq[0];
    mg_batch one = {.n_rows = 1, .tokens = &t0, .positions = &p0, .seqs = &s0, .want_logits = NULL};
    cr_assert_eq(mg_forward_run(fw, &pool, &one, MG_KERNELS_INVARIANT, MG_ACT_BF16, alone), MG_OK, "%s",
                 mg_error_last());
    int n = 0;
    for (int s = 1; s < 4; s++) tok[n] = 5 * s, pos[n] = 30 + 7 * s, seqs[n++] = &seq[s];
    tok[n] = t0, pos[n] = p0, seqs[n++] = &seq[0];
    for (int i = 0; i < 20; i++) tok[n] = (i * 13) % V, pos[n] = 58 + i, seqs[n++] = &seq[4];
    mg_batch many = {.n_rows = n, .tokens = tok, .positions = pos, .seqs = seqs, .want_logits = NULL};
    cr_assert_eq(mg_forward_run(fw, &pool, &many, MG_KERNELS_INVARIANT, MG_ACT_BF16, batch), MG_OK, "%s",
                 mg_error_last());
    expect_bitwise("invariant forward: decode row alone vs in a batch of 24", alone, batch + (size_t)3 * V, (size_t)V);
    free(alone);
    free(batch);
    for (int s = 0; s < 5; s++) mg_kv_seq_free(&pool, &seq[s]);
    mg_kv_pool_free(&pool);
    mg_forward_free(fw);
    free_tiny(&t);
}
