/* cuBLASLt GEMMs, BF16 x BF16 with FP32 accumulation, BF16 or FP32 output,
 * in two flavours:
 * - heuristic (FAST): per (N, K, output type) and batch-size bucket, the
 *   fastest by timing of the heuristic's top results that give its first
 *   pick's bits, for the bucket's M (fast_tune, when the model's weights are uploaded:
 *   mg_cuda_lt_fast_prepare; MG_CUDA_FAST_TUNE=0 or an unprepared shape or
 *   M > 256: the heuristic's first pick), cached per (M, N, K, output
 *   type): a shape always runs the same arithmetic, in every process, but
 *   different M may run kernels with different reduction orders, split-K
 *   among them (the source of the GPU's batch-induced flips);
 * - pinned (INVARIANT): one algorithm per (N, K, output type) for every M,
 *   without split-K. A kernel without split-K computes each output element
 *   as one sequence of tensor-core steps over K in order, the same code for
 *   every element, wherever its row sits: so a row's bits depend on K and
 *   the pinned algorithm, never on M. The algorithm is chosen once per shape
 *   (pin_get, pin_tune): among the heuristic's split-K-free candidates for
 *   M = 1, 8, 32, 64, 128 that cuBLASLt accepts for every M up to 65536, the
 *   one whose time over the best candidate's, averaged over those M, is
 *   lowest (the worst ratio instead picked, for w_down, a kernel 1.24x slow
 *   at batch 1 to save 1.27x at 128, where the step is twice as long),
 *   timed back to back on copies of the weights that stream from memory as
 *   in a decode step.
 *   The choice is by timing, so another process could pin another kernel of
 *   the same shape; on an H100 with cuBLAS 13 every split-K-free candidate
 *   of the 8B shapes gave the same bits as every other
 *   (tools/lt_pin_probe.cu; bench/results/lt-pin-h100-2026-11-23.md).
 *
 * Row-major out (M, N) = x (M, K) w (N, K)^T is, in cuBLAS's column-major
 * terms, D (N x M, ld N) = op(A) B with A = w seen as K x N (ld K) and
 * op = transpose, B = x seen as K x M (ld K). */
#include <cublasLt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_common.cuh"

#define LT_WORKSPACE (32u << 20)
#define LT_MAX_PLANS 512

typedef struct {
    int M, N, K, out_f32, pinned;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a, b, d;
    cublasLtMatmulAlgo_t algo;
} lt_plan;

#define LT_MAX_PINS 64

/* The algorithm pinned for one (N, K, output type), or none (usable = 0:
 * cuBLASLt has no split-K-free algorithm for every M; the caller takes its
 * own kernels for this shape, for good). */
typedef struct {
    int N, K, out_f32, usable;
    cublasLtMatmulAlgo_t algo;
    float mean, worst; /* the chosen algorithm's time / best candidate's time over the tuning M: mean, max */
} lt_pin;

/* The FAST path's algorithms of one (N, K, output type), chosen by timing
 * per batch-size bucket (fast_tune): M runs bucket b's algorithm for the
 * smallest fast_bucket_m[b] >= M (cuBLASLt's heuristic picks one algorithm
 * per M from its model of the GPU; at decode sizes its first pick is often
 * not the fastest of its own top results: lt-pin-h100-2026-11-23.md). */
#define FAST_BUCKETS 13
static const int fast_bucket_m[FAST_BUCKETS] = {1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256};
#define FAST_CANDS 8
#define LT_MAX_FAST 64
typedef struct {
    int N, K, out_f32;
    cublasLtMatmulAlgo_t algo[FAST_BUCKETS];
    int tuned[FAST_BUCKETS]; /* 0: the heuristic gave nothing; its first pick stands */
    float gain[FAST_BUCKETS]; /* the heuristic's first pick's time / the chosen one's */
} lt_fast;

/* Per device (mg_cuda_dev): handle, workspace, plan cache, pins and FAST choices. */
typedef struct {
    cublasLtHandle_t lt;
    void *workspace;
    lt_plan plans[LT_MAX_PLANS];
    int n_plans;
    lt_pin pins[LT_MAX_PINS];
    int n_pins;
    lt_fast fasts[LT_MAX_FAST];
    int n_fasts;
} lt_state;
static lt_state lt_devs[MG_CUDA_MAX_DEV];
#define LT (lt_devs[mg_cuda_dev])

static mg_status lt_fail(cublasStatus_t s, const char *what, int line) {
    return mg_error_set(MG_ERR_BACKEND, "cuBLASLt error %d (%s) in %s at %s:%d", (int)s, cublasGetStatusString(s),
                        what, __FILE__, line);
}

#define LT_TRY(call)                                                                                         \
    do {                                                                                                     \
        cublasStatus_t lt_s_ = (call);                                                                       \
        if (lt_s_ != CUBLAS_STATUS_SUCCESS) return lt_fail(lt_s_, #call, __LINE__);                          \
    } while (0)

static mg_status lt_init(void) {
    if (LT.lt) return MG_OK;
    LT_TRY(cublasLtCreate(&LT.lt));
    MG_CUDA_TRY(cudaMalloc(&LT.workspace, LT_WORKSPACE));
    return MG_OK;
}

void mg_cuda_lt_shutdown(void) {
    for (int i = 0; i < LT.n_plans; i++) {
        cublasLtMatmulDescDestroy(LT.plans[i].desc);
        cublasLtMatrixLayoutDestroy(LT.plans[i].a);
        cublasLtMatrixLayoutDestroy(LT.plans[i].b);
        cublasLtMatrixLayoutDestroy(LT.plans[i].d);
    }
    LT.n_plans = 0;
    LT.n_pins = 0;
    LT.n_fasts = 0;
    if (LT.workspace) cudaFree(LT.workspace);
    if (LT.lt) cublasLtDestroy(LT.lt);
    LT.workspace = NULL;
    LT.lt = NULL;
}

/* Descriptors of out (M, N) = x (M, K) w (N, K)^T, no algorithm yet. */
static mg_status plan_descs(lt_plan *p, int M, int N, int K, int out_f32, int pinned) {
    *p = (lt_plan){M, N, K, out_f32, pinned, NULL, NULL, NULL, NULL, {}};
    LT_TRY(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    LT_TRY(cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16BF, K, N, K));
    LT_TRY(cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16BF, K, M, K));
    LT_TRY(cublasLtMatrixLayoutCreate(&p->d, out_f32 ? CUDA_R_32F : CUDA_R_16BF, N, M, N));
    return MG_OK;
}

static void plan_free(lt_plan *p) {
    if (p->desc) cublasLtMatmulDescDestroy(p->desc);
    if (p->a) cublasLtMatrixLayoutDestroy(p->a);
    if (p->b) cublasLtMatrixLayoutDestroy(p->b);
    if (p->d) cublasLtMatrixLayoutDestroy(p->d);
    p->desc = NULL;
    p->a = p->b = p->d = NULL;
}

/* Pointer alignment cuBLASLt's heuristic assumes by default (its
 * MIN_ALIGNMENT preferences); the pinned algorithms are chosen under it
 * (asking for 16 leaves out the fastest small-batch kernels: +10% at batch
 * 1 on an H100, 2026-11-23). */
#define LT_ALIGN 256

/* Up to `want` heuristic results for plan p into res (*found of them). */
static mg_status heuristic(const lt_plan *p, int want, cublasLtMatmulHeuristicResult_t *res, int *found) {
    cublasLtMatmulPreference_t pref;
    LT_TRY(cublasLtMatmulPreferenceCreate(&pref));
    const size_t ws = LT_WORKSPACE;
    cublasStatus_t s =
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    *found = 0;
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulAlgoGetHeuristic(LT.lt, p->desc, p->a, p->b, p->d, p->d, pref, want, res, found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (s != CUBLAS_STATUS_SUCCESS) return lt_fail(s, "cublasLtMatmulAlgoGetHeuristic", __LINE__);
    return MG_OK;
}

/* ---- pinned algorithms (INVARIANT) ---------------------------------------------- */

#define PIN_TUNE_M 5
static const int pin_tune_m[PIN_TUNE_M] = {1, 8, 32, 64, 128};
#define PIN_MAX_CANDS 40

/* Whether cuBLASLt accepts algo for every M a pass can have (1..65536: all
 * of 1..160, then a spread of larger ones). */
static int algo_runs_every_m(const cublasLtMatmulAlgo_t *algo, int N, int K, int out_f32) {
    static const int big[] = {192, 255, 256, 257, 320, 511, 512, 1000, 1024, 2047, 2048, 4097, 8192, 16384, 65536};
    for (int i = 0; i < 160 + (int)(sizeof big / sizeof big[0]); i++) {
        const int M = i < 160 ? i + 1 : big[i - 160];
        lt_plan p;
        int ok = plan_descs(&p, M, N, K, out_f32, 1) == MG_OK;
        cublasLtMatmulHeuristicResult_t r;
        ok = ok && cublasLtMatmulAlgoCheck(LT.lt, p.desc, p.a, p.b, p.d, p.d, algo, &r) == CUBLAS_STATUS_SUCCESS &&
             r.workspaceSize <= LT_WORKSPACE;
        plan_free(&p);
        if (!ok) return 0;
    }
    return 1;
}

static int splitk_of(const cublasLtMatmulAlgo_t *algo) {
    int32_t v = 1;
    size_t written = 0;
    if (cublasLtMatmulAlgoConfigGetAttribute(algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &v, sizeof v, &written) !=
        CUBLAS_STATUS_SUCCESS)
        return -1;
    return v;
}

/* The weights a tuning run streams: copies[i] (N, K) for i < n, in turn,
 * together more than twice the L2, so that each run reads its weights from
 * memory as a decode step does (copy 0: the real matrix; the others: a
 * constant, the kernels' speed does not depend on the values). */
#define PIN_MAX_COPIES 8
typedef struct {
    const void *copies[PIN_MAX_COPIES];
    int n;
} pin_weights;

/* GPU time (ms) per run of plan p with algo: 2 runs to warm up, then 12
 * back to back over the weight copies in turn, timed together. Called
 * outside any capture. */
static mg_status time_algo(const lt_plan *p, const cublasLtMatmulAlgo_t *algo, const pin_weights *wts, const void *x,
                           void *out, cudaEvent_t e0, cudaEvent_t e1, float *ms) {
    const float alpha = 1.0f, beta = 0.0f;
    const int warm = 2, runs = 12;
    for (int r = 0; r < warm + runs; r++) {
        if (r == warm) MG_CUDA_TRY(cudaEventRecord(e0, mg_cuda.stream));
        LT_TRY(cublasLtMatmul(LT.lt, p->desc, &alpha, wts->copies[r % wts->n], p->a, x, p->b, &beta, out, p->d, out,
                              p->d, algo, LT.workspace, LT_WORKSPACE, mg_cuda.stream));
    }
    MG_CUDA_TRY(cudaEventRecord(e1, mg_cuda.stream));
    MG_CUDA_TRY(cudaEventSynchronize(e1));
    float t = 0.0f;
    MG_CUDA_TRY(cudaEventElapsedTime(&t, e0, e1));
    *ms = t / runs;
    return MG_OK;
}

/* Candidates and timings for pin: see the header comment. wts: the weights
 * to stream; x and out are scratch of the largest tuning M. */
static mg_status pin_tune(lt_pin *pin, const pin_weights *wts, void *x, void *out) {
    const int N = pin->N, K = pin->K;
    cublasLtMatmulAlgo_t cands[PIN_MAX_CANDS];
    int n_cands = 0;
    for (int mi = 0; mi < PIN_TUNE_M; mi++) {
        lt_plan p;
        cublasLtMatmulHeuristicResult_t res[8];
        int found = 0;
        mg_status st = plan_descs(&p, pin_tune_m[mi], N, K, pin->out_f32, 1);
        if (st == MG_OK) st = heuristic(&p, 8, res, &found);
        plan_free(&p);
        MG_TRY(st);
        for (int i = 0; i < found && n_cands < PIN_MAX_CANDS; i++) {
            if (splitk_of(&res[i].algo) != 1) continue;
            int dup = 0;
            for (int c = 0; c < n_cands && !dup; c++) dup = !memcmp(&cands[c], &res[i].algo, sizeof cands[c]);
            if (!dup && algo_runs_every_m(&res[i].algo, N, K, pin->out_f32)) cands[n_cands++] = res[i].algo;
        }
    }
    pin->usable = n_cands > 0;
    if (!n_cands) return MG_OK;
    float t[PIN_MAX_CANDS][PIN_TUNE_M], best[PIN_TUNE_M];
    cudaEvent_t e0 = NULL, e1 = NULL;
    MG_CUDA_TRY(cudaEventCreate(&e0));
    mg_status st = cudaEventCreate(&e1) == cudaSuccess ? MG_OK : mg_error_set(MG_ERR_BACKEND, "cudaEventCreate failed");
    for (int mi = 0; mi < PIN_TUNE_M && st == MG_OK; mi++) {
        lt_plan p;
        st = plan_descs(&p, pin_tune_m[mi], N, K, pin->out_f32, 1);
        best[mi] = 1e30f;
        for (int c = 0; c < n_cands && st == MG_OK; c++) {
            st = time_algo(&p, &cands[c], wts, x, out, e0, e1, &t[c][mi]);
            if (t[c][mi] < best[mi]) best[mi] = t[c][mi];
        }
        plan_free(&p);
    }
    cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    MG_TRY(st);
    int pick = 0;
    float pick_mean = 1e30f;
    for (int c = 0; c < n_cands; c++) {
        float sum = 0.0f;
        for (int mi = 0; mi < PIN_TUNE_M; mi++) sum += t[c][mi] / best[mi];
        if (sum / PIN_TUNE_M < pick_mean) pick = c, pick_mean = sum / PIN_TUNE_M;
    }
    pin->algo = cands[pick];
    pin->mean = pick_mean;
    pin->worst = 0.0f;
    for (int mi = 0; mi < PIN_TUNE_M; mi++) pin->worst = fmaxf(pin->worst, t[pick][mi] / best[mi]);
    return MG_OK;
}

/* x (n BF16) = values in [-1, 1) from a hash of the index: an input on
 * which two kernels of different arithmetic give different bits. */
__global__ void fill_probe_input(bf16 *x, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 2654435761u;
        h ^= h >> 13;
        h *= 0x5bd1e995u;
        h ^= h >> 15;
        x[i] = __float2bfloat16_rn((float)(h & 0xffff) / 32768.0f - 1.0f);
    }
}

/* What a tuning run streams (weight copies), reads (x: max_m rows of the
 * hashed input, also what the FAST tuning compares bits on) and writes (out
 * scratch of max_m rows). */
typedef struct {
    pin_weights wts;
    void *extra[PIN_MAX_COPIES];
    void *x, *out;
} tune_bufs;

/* Allocates b for (N, K) weights w: as many copies as fit, up to twice
 * the L2 (fewer only blur the timing), filled with BF16 0x3c3c (0.0115):
 * w itself may span two allocations (adjacent stacked parts), which a
 * copy must not. Called outside any capture; tune_bufs_free in any case. */
static mg_status tune_bufs_alloc(tune_bufs *b, int N, int K, int out_f32, const void *w, int max_m) {
    memset(b, 0, sizeof *b);
    b->wts.copies[0] = w;
    b->wts.n = 1;
    int dev = 0, l2 = 0;
    MG_CUDA_TRY(cudaGetDevice(&dev));
    MG_CUDA_TRY(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
    const size_t w_bytes = (size_t)N * K * 2, stream_bytes = 2 * (size_t)(l2 > 0 ? l2 : (64 << 20));
    for (size_t have = w_bytes; have < stream_bytes && b->wts.n < PIN_MAX_COPIES; have += w_bytes) {
        void *c = NULL;
        if (cudaMalloc(&c, w_bytes) != cudaSuccess) {
            (void)cudaGetLastError();
            break;
        }
        b->extra[b->wts.n] = c;
        if (cudaMemsetAsync(c, 0x3c, w_bytes, mg_cuda.stream) != cudaSuccess)
            return mg_error_set(MG_ERR_BACKEND, "cudaMemsetAsync failed");
        b->wts.copies[b->wts.n++] = c;
    }
    if (cudaMalloc(&b->x, (size_t)max_m * K * 2) != cudaSuccess ||
        cudaMalloc(&b->out, (size_t)max_m * N * (out_f32 ? 4 : 2)) != cudaSuccess) {
        (void)cudaGetLastError();
        return mg_error_set(MG_ERR_OOM, "GEMM %d x %d: no device memory to tune it", N, K);
    }
    const size_t n = (size_t)max_m * K;
    fill_probe_input<<<mg_div_up(n, 256) < 1024 ? mg_div_up(n, 256) : 1024, 256, 0, mg_cuda.stream>>>((bf16 *)b->x,
                                                                                                      n);
    MG_CUDA_LAUNCHED("fill_probe_input");
    return MG_OK;
}

/* Waits for the tuning runs (an error into *st if they failed and *st was
 * MG_OK) and frees b. */
static void tune_bufs_free(tune_bufs *b, mg_status *st) {
    if (cudaStreamSynchronize(mg_cuda.stream) != cudaSuccess && *st == MG_OK)
        *st = mg_error_set(MG_ERR_BACKEND, "GEMM tuning: %s", cudaGetErrorString(cudaGetLastError()));
    for (int i = 0; i < PIN_MAX_COPIES; i++)
        if (b->extra[i]) cudaFree(b->extra[i]);
    if (b->x) cudaFree(b->x);
    if (b->out) cudaFree(b->out);
    memset(b, 0, sizeof *b);
    mg_cuda.buffers_gen++; /* freed device memory: recorded graphs must not outlive it */
}

/* The pin of (N, K, out_f32), tuned on first use (w: the weights the call
 * is about; the tuning runs GEMMs on them and synchronises the stream). */
static mg_status pin_get(int N, int K, int out_f32, const void *w, lt_pin **out) {
    for (int i = 0; i < LT.n_pins; i++)
        if (LT.pins[i].N == N && LT.pins[i].K == K && LT.pins[i].out_f32 == out_f32) {
            *out = &LT.pins[i];
            return MG_OK;
        }
    if (LT.n_pins == LT_MAX_PINS) { /* the table never shrinks: every later new shape gets this answer */
        static lt_pin own_kernels; /* usable = 0 */
        *out = &own_kernels;
        return MG_OK;
    }
    cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    MG_CUDA_TRY(cudaStreamIsCapturing(mg_cuda.stream, &cap));
    if (cap != cudaStreamCaptureStatusNone)
        return mg_error_set(MG_ERR_BACKEND,
                            "invariant GEMM %d x %d: first use inside a CUDA graph capture (the pinned "
                            "algorithm is tuned on a direct run)",
                            N, K);
    lt_pin *pin = &LT.pins[LT.n_pins];
    *pin = (lt_pin){N, K, out_f32, 0, {}, 0.0f, 0.0f};
    tune_bufs b;
    mg_status st = tune_bufs_alloc(&b, N, K, out_f32, w, pin_tune_m[PIN_TUNE_M - 1]);
    if (st == MG_OK) st = pin_tune(pin, &b.wts, b.x, b.out);
    tune_bufs_free(&b, &st);
    MG_TRY(st);
    LT.n_pins++;
    *out = pin;
    return MG_OK;
}

/* ---- tuned heuristic algorithms (FAST) ------------------------------------------ */

/* *diff += the 16-bit words (n of them) where a and b differ. */
__global__ void count_diff_words(const uint16_t *a, const uint16_t *b, size_t n, unsigned *diff) {
    unsigned local = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        local += a[i] != b[i];
    if (local) atomicAdd(diff, local);
}

/* Whether algo gives ref's bits for plan p on (w, x): out is scratch of
 * the plan's output size; diff one device word. */
static mg_status same_bits(const lt_plan *p, const cublasLtMatmulAlgo_t *algo, const void *w, const void *x,
                           void *out, const void *ref, unsigned *diff, int *same) {
    const float alpha = 1.0f, beta = 0.0f;
    const size_t words = (size_t)p->M * p->N * (p->out_f32 ? 2 : 1);
    LT_TRY(cublasLtMatmul(LT.lt, p->desc, &alpha, w, p->a, x, p->b, &beta, out, p->d, out, p->d, algo, LT.workspace,
                          LT_WORKSPACE, mg_cuda.stream));
    MG_CUDA_TRY(cudaMemsetAsync(diff, 0, sizeof *diff, mg_cuda.stream));
    count_diff_words<<<mg_div_up(words, 256) < 1024 ? mg_div_up(words, 256) : 1024, 256, 0, mg_cuda.stream>>>(
        (const uint16_t *)out, (const uint16_t *)ref, words, diff);
    MG_CUDA_LAUNCHED("count_diff_words");
    unsigned host = 1;
    MG_CUDA_TRY(cudaMemcpyAsync(&host, diff, sizeof host, cudaMemcpyDeviceToHost, mg_cuda.stream));
    MG_CUDA_TRY(cudaStreamSynchronize(mg_cuda.stream));
    *same = host == 0;
    return MG_OK;
}

/* For each bucket M: the heuristic's first FAST_CANDS results (for M) that
 * give the bits of its first pick (on the real weights and a hashed input:
 * kernels of another reduction order, split-K among them, differ there),
 * each timed as pin_tune times (back to back over the weight copies); the
 * fastest is kept. So the timing changes the speed, never the results: a
 * FAST GEMM of M rows computes what the heuristic's pick for M's bucket
 * computes, in every process (the GPU generate check expects runs to
 * repeat bit for bit).
 * MG_CUDA_FAST_TUNE=2 times every candidate, whatever its bits (faster
 * where a split-K pick has a faster split-free rival; then another process
 * may pick another kernel, and FAST may differ between runs). */
static mg_status fast_tune(lt_fast *f, const tune_bufs *b) {
    const int max_m = fast_bucket_m[FAST_BUCKETS - 1];
    const size_t out_bytes = (size_t)max_m * f->N * (f->out_f32 ? 4 : 2);
    void *ref = NULL;
    unsigned *diff = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    mg_status st = MG_OK;
    if (cudaMalloc(&ref, out_bytes) != cudaSuccess || cudaMalloc((void **)&diff, sizeof *diff) != cudaSuccess ||
        cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess) {
        (void)cudaGetLastError();
        st = mg_error_set(MG_ERR_OOM, "GEMM %d x %d: no device memory to tune it", f->N, f->K);
    }
    const float alpha = 1.0f, beta = 0.0f;
    for (int bi = 0; bi < FAST_BUCKETS && st == MG_OK; bi++) {
        lt_plan p;
        cublasLtMatmulHeuristicResult_t res[FAST_CANDS];
        int found = 0;
        st = plan_descs(&p, fast_bucket_m[bi], f->N, f->K, f->out_f32, 0);
        if (st == MG_OK) st = heuristic(&p, FAST_CANDS, res, &found);
        if (st == MG_OK && found > 0 &&
            cublasLtMatmul(LT.lt, p.desc, &alpha, b->wts.copies[0], p.a, b->x, p.b, &beta, ref, p.d, ref, p.d,
                           &res[0].algo, LT.workspace, LT_WORKSPACE, mg_cuda.stream) != CUBLAS_STATUS_SUCCESS)
            st = mg_error_set(MG_ERR_BACKEND, "GEMM %d x %d: the heuristic's pick does not run", f->N, f->K);
        float first = 0.0f, best = 1e30f;
        for (int c = 0; c < found && st == MG_OK; c++) {
            int same = 1;
            if (c > 0 && mg_cuda.fast_tune != 2)
                st = same_bits(&p, &res[c].algo, b->wts.copies[0], b->x, b->out, ref, diff, &same);
            if (st != MG_OK || !same) continue;
            float t = 0.0f;
            st = time_algo(&p, &res[c].algo, &b->wts, b->x, b->out, e0, e1, &t);
            if (c == 0) first = t;
            if (st == MG_OK && t < best) best = t, f->algo[bi] = res[c].algo;
        }
        plan_free(&p);
        f->tuned[bi] = st == MG_OK && found > 0;
        f->gain[bi] = f->tuned[bi] ? first / best : 1.0f;
    }
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    cudaFree(ref);
    cudaFree(diff);
    return st;
}

static lt_fast *fast_find(int N, int K, int out_f32) {
    for (int i = 0; i < LT.n_fasts; i++)
        if (LT.fasts[i].N == N && LT.fasts[i].K == K && LT.fasts[i].out_f32 == out_f32) return &LT.fasts[i];
    return NULL;
}

mg_status mg_cuda_lt_fast_prepare(int N, int K, int out_f32, const void *w) {
    if (!mg_cuda.fast_tune) return MG_OK;
    MG_TRY(lt_init());
    if (fast_find(N, K, out_f32) || LT.n_fasts == LT_MAX_FAST) return MG_OK;
    cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    MG_CUDA_TRY(cudaStreamIsCapturing(mg_cuda.stream, &cap));
    if (cap != cudaStreamCaptureStatusNone) return MG_OK; /* the heuristic's picks, untuned */
    lt_fast *f = &LT.fasts[LT.n_fasts];
    memset(f, 0, sizeof *f);
    f->N = N, f->K = K, f->out_f32 = out_f32;
    tune_bufs b;
    mg_status st = tune_bufs_alloc(&b, N, K, out_f32, w, fast_bucket_m[FAST_BUCKETS - 1]);
    if (st == MG_OK) st = fast_tune(f, &b);
    tune_bufs_free(&b, &st);
    if (st == MG_ERR_OOM) { /* no room to tune (a tight GPU): the heuristic's picks, as untuned */
        mg_error_clear();
        return MG_OK;
    }
    MG_TRY(st);
    LT.n_fasts++;
    return MG_OK;
}

/* Appends entry to buf (size > 0, *used bytes so far), after "; " unless
 * it is entry 0, when all of it fits; else leaves buf as it was and
 * returns 0. */
static int append_entry(char *buf, size_t size, size_t *used, int n, const char *entry) {
    const int w = snprintf(buf + *used, size - *used, "%s%s", n ? "; " : "", entry);
    if (w < 0 || (size_t)w >= size - *used) {
        buf[*used] = 0;
        return 0;
    }
    *used += (size_t)w;
    return 1;
}

int mg_cuda_lt_fast_describe(char *buf, size_t size) {
    size_t used = 0;
    int n = 0;
    if (!size) return 0;
    buf[0] = 0;
    for (int i = 0; i < LT.n_fasts; i++, n++) {
        const lt_fast *f = &LT.fasts[i];
        char e[320];
        int w = snprintf(e, sizeof e, "%d x %d%s:", f->N, f->K, f->out_f32 ? " f32" : "");
        for (int bi = 0; bi < FAST_BUCKETS && w > 0 && (size_t)w < sizeof e; bi++)
            w += snprintf(e + w, sizeof e - w, " %d %.2f", fast_bucket_m[bi], f->gain[bi]);
        if (!append_entry(buf, size, &used, n, e)) break;
    }
    return n;
}

static mg_status make_plan(lt_plan *p, int M, int N, int K, int out_f32, const lt_pin *pin) {
    MG_TRY(plan_descs(p, M, N, K, out_f32, pin != NULL));
    if (pin) {
        cublasLtMatmulHeuristicResult_t r;
        const cublasStatus_t s = cublasLtMatmulAlgoCheck(LT.lt, p->desc, p->a, p->b, p->d, p->d, &pin->algo, &r);
        if (s != CUBLAS_STATUS_SUCCESS || r.workspaceSize > LT_WORKSPACE)
            return mg_error_set(MG_ERR_BACKEND,
                                "the pinned cuBLASLt algorithm of the %d x %d invariant GEMM does not run at M = %d "
                                "(MG_CUDA_INVARIANT_GEMM=tc takes the own kernels)",
                                N, K, M);
        p->algo = pin->algo;
        return MG_OK;
    }
    /* FAST: the tuned algorithm of M's bucket (the smallest >= M) when
     * cuBLASLt takes it at M. */
    const lt_fast *f = fast_find(N, K, out_f32);
    int bi = 0;
    while (bi < FAST_BUCKETS && fast_bucket_m[bi] < M) bi++;
    cublasLtMatmulHeuristicResult_t r;
    if (f && bi < FAST_BUCKETS && f->tuned[bi] &&
        cublasLtMatmulAlgoCheck(LT.lt, p->desc, p->a, p->b, p->d, p->d, &f->algo[bi], &r) == CUBLAS_STATUS_SUCCESS &&
        r.workspaceSize <= LT_WORKSPACE) {
        p->algo = f->algo[bi];
        return MG_OK;
    }
    cublasLtMatmulHeuristicResult_t result;
    int found = 0;
    MG_TRY(heuristic(p, 1, &result, &found));
    if (found < 1)
        return mg_error_set(MG_ERR_BACKEND, "cuBLASLt has no algorithm for a %d x %d x %d BF16 GEMM", M, N, K);
    p->algo = result.algo;
    return MG_OK;
}

/* The plan of (M, N, K, out_f32, pinned), made on first use. */
static mg_status plan_get(int M, int N, int K, int out_f32, const lt_pin *pin, lt_plan **out) {
    const int pinned = pin != NULL;
    for (int i = 0; i < LT.n_plans; i++) {
        lt_plan *p = &LT.plans[i];
        if (p->M == M && p->N == N && p->K == K && p->out_f32 == out_f32 && p->pinned == pinned) {
            *out = p;
            return MG_OK;
        }
    }
    if (LT.n_plans == LT_MAX_PLANS) { /* forget the oldest half; rare */
        for (int i = 0; i < LT_MAX_PLANS / 2; i++) plan_free(&LT.plans[i]);
        for (int i = LT_MAX_PLANS / 2; i < LT_MAX_PLANS; i++) LT.plans[i - LT_MAX_PLANS / 2] = LT.plans[i];
        LT.n_plans = LT_MAX_PLANS / 2;
    }
    lt_plan *p = &LT.plans[LT.n_plans];
    const mg_status st = make_plan(p, M, N, K, out_f32, pin);
    if (st != MG_OK) {
        plan_free(p);
        return st;
    }
    LT.n_plans++;
    *out = p;
    return MG_OK;
}

static mg_status lt_run(const lt_plan *p, void *out, const void *x, const void *w) {
    const float alpha = 1.0f, beta = 0.0f;
    LT_TRY(cublasLtMatmul(LT.lt, p->desc, &alpha, w, p->a, x, p->b, &beta, out, p->d, out, p->d, &p->algo, LT.workspace,
                          LT_WORKSPACE, mg_cuda.stream));
    return MG_OK;
}

mg_status mg_cuda_lt_gemm(void *out, int out_f32, const void *x, const void *w, int M, int N, int K) {
    MG_TRY(lt_init());
    lt_plan *p;
    MG_TRY(plan_get(M, N, K, out_f32, NULL, &p));
    return lt_run(p, out, x, w);
}

mg_status mg_cuda_lt_pinned_usable(int N, int K, int out_f32, const void *w, int *usable) {
    *usable = 0;
    if ((uintptr_t)w % LT_ALIGN) return MG_OK; /* this matrix: never (its address does not change) */
    MG_TRY(lt_init());
    lt_pin *pin;
    MG_TRY(pin_get(N, K, out_f32, w, &pin));
    *usable = pin->usable;
    return MG_OK;
}

mg_status mg_cuda_lt_gemm_pinned(void *out, int out_f32, const void *x, const void *w, int M, int N, int K) {
    MG_TRY(lt_init());
    lt_pin *pin;
    MG_TRY(pin_get(N, K, out_f32, w, &pin));
    if (!pin->usable)
        return mg_error_set(MG_ERR_BACKEND, "no pinned cuBLASLt algorithm for the %d x %d invariant GEMM", N, K);
    if ((uintptr_t)w % LT_ALIGN)
        return mg_error_set(MG_ERR_BACKEND,
                            "invariant GEMM %d x %d: weights not %d-byte aligned (MG_CUDA_INVARIANT_GEMM=tc takes "
                            "the own kernels)",
                            N, K, LT_ALIGN);
    lt_plan *p;
    MG_TRY(plan_get(M, N, K, out_f32, pin, &p));
    /* Operands off the alignment the algorithm was chosen under: the same
     * kernel on aligned copies (the same bits; a copy in, a copy out). */
    const size_t x_bytes = (size_t)M * K * 2, out_bytes = (size_t)M * N * (out_f32 ? 4 : 2);
    const void *xa = x;
    void *oa = out;
    if ((uintptr_t)x % LT_ALIGN) {
        void *tmp;
        MG_TRY(mg_cuda_scratch(MG_SCRATCH_LT_IN, x_bytes, &tmp));
        MG_CUDA_TRY(cudaMemcpyAsync(tmp, x, x_bytes, cudaMemcpyDeviceToDevice, mg_cuda.stream));
        xa = tmp;
    }
    if ((uintptr_t)out % LT_ALIGN) MG_TRY(mg_cuda_scratch(MG_SCRATCH_LT_OUT, out_bytes, &oa));
    MG_TRY(lt_run(p, oa, xa, w));
    if (oa != out) MG_CUDA_TRY(cudaMemcpyAsync(out, oa, out_bytes, cudaMemcpyDeviceToDevice, mg_cuda.stream));
    return MG_OK;
}

int mg_cuda_lt_pins_describe(char *buf, size_t size) {
    size_t used = 0;
    int n = 0;
    if (!size) return 0;
    buf[0] = 0;
    for (int i = 0; i < LT.n_pins; i++, n++) {
        const lt_pin *pin = &LT.pins[i];
        uint32_t tile = 0, stages = 0;
        uint16_t cluster = 0;
        int32_t id = 0;
        size_t wr = 0;
        cublasLtMatmulAlgoConfigGetAttribute(&pin->algo, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof id, &wr);
        cublasLtMatmulAlgoConfigGetAttribute(&pin->algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof tile, &wr);
        cublasLtMatmulAlgoConfigGetAttribute(&pin->algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof stages, &wr);
        cublasLtMatmulAlgoConfigGetAttribute(&pin->algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &cluster,
                                             sizeof cluster, &wr);
        char e[160];
        if (pin->usable)
            snprintf(e, sizeof e, "%d x %d%s: algo %d tile %u stages %u cluster %u (%.2fx, worst %.2fx)", pin->N,
                     pin->K, pin->out_f32 ? " f32" : "", (int)id, tile, stages, (unsigned)cluster, pin->mean,
                     pin->worst);
        else
            snprintf(e, sizeof e, "%d x %d%s: own kernels", pin->N, pin->K, pin->out_f32 ? " f32" : "");
        if (!append_entry(buf, size, &used, n, e)) break;
    }
    return n;
}
