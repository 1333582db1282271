/* The fast path's GEMM: cuBLASLt, BF16 x BF16 with FP32 accumulation, BF16
 * or FP32 output, the algorithm chosen by cuBLASLt's heuristic for each
 * shape (cached per (M, N, K, output type); the heuristic is deterministic,
 * so a shape always runs the same kernel, but different M may run different
 * kernels with different reduction orders).
 *
 * Row-major out (M, N) = x (M, K) w (N, K)^T is, in cuBLAS's column-major
 * terms, D (N x M, ld N) = op(A) B with A = w seen as K x N (ld K) and
 * op = transpose, B = x seen as K x M (ld K). */
#include <cublasLt.h>
#include <stdio.h>
#include <stdlib.h>

#include "cuda_common.cuh"

#define LT_WORKSPACE (32u << 20)
#define LT_MAX_PLANS 512

typedef struct {
    int M, N, K, out_f32;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a, b, d;
    cublasLtMatmulAlgo_t algo;
} lt_plan;

/* Per device (mg_cuda_dev): handle, workspace and plan cache. */
typedef struct {
    cublasLtHandle_t lt;
    void *workspace;
    lt_plan plans[LT_MAX_PLANS];
    int n_plans;
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
    if (LT.workspace) cudaFree(LT.workspace);
    if (LT.lt) cublasLtDestroy(LT.lt);
    LT.workspace = NULL;
    LT.lt = NULL;
}

static mg_status make_plan(lt_plan *p, int M, int N, int K, int out_f32) {
    *p = (lt_plan){M, N, K, out_f32, NULL, NULL, NULL, NULL, {}};
    LT_TRY(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    LT_TRY(cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16BF, K, N, K));
    LT_TRY(cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16BF, K, M, K));
    LT_TRY(cublasLtMatrixLayoutCreate(&p->d, out_f32 ? CUDA_R_32F : CUDA_R_16BF, N, M, N));
    cublasLtMatmulPreference_t pref;
    LT_TRY(cublasLtMatmulPreferenceCreate(&pref));
    const size_t ws = LT_WORKSPACE;
    cublasStatus_t s =
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    cublasLtMatmulHeuristicResult_t result;
    int found = 0;
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulAlgoGetHeuristic(LT.lt, p->desc, p->a, p->b, p->d, p->d, pref, 1, &result, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (s != CUBLAS_STATUS_SUCCESS) return lt_fail(s, "cublasLtMatmulAlgoGetHeuristic", __LINE__);
    if (found < 1)
        return mg_error_set(MG_ERR_BACKEND, "cuBLASLt has no algorithm for a %d x %d x %d BF16 GEMM", M, N, K);
    p->algo = result.algo;
    return MG_OK;
}

mg_status mg_cuda_lt_gemm(void *out, int out_f32, const void *x, const void *w, int M, int N, int K) {
    MG_TRY(lt_init());
    lt_plan *p = NULL;
    for (int i = 0; i < LT.n_plans && !p; i++)
        if (LT.plans[i].M == M && LT.plans[i].N == N && LT.plans[i].K == K && LT.plans[i].out_f32 == out_f32)
            p = &LT.plans[i];
    if (!p) {
        if (LT.n_plans == LT_MAX_PLANS) { /* forget the oldest half; rare */
            for (int i = 0; i < LT_MAX_PLANS / 2; i++) {
                cublasLtMatmulDescDestroy(LT.plans[i].desc);
                cublasLtMatrixLayoutDestroy(LT.plans[i].a);
                cublasLtMatrixLayoutDestroy(LT.plans[i].b);
                cublasLtMatrixLayoutDestroy(LT.plans[i].d);
            }
            for (int i = LT_MAX_PLANS / 2; i < LT_MAX_PLANS; i++) LT.plans[i - LT_MAX_PLANS / 2] = LT.plans[i];
            LT.n_plans = LT_MAX_PLANS / 2;
        }
        MG_TRY(make_plan(&LT.plans[LT.n_plans], M, N, K, out_f32));
        p = &LT.plans[LT.n_plans++];
    }
    const float alpha = 1.0f, beta = 0.0f;
    LT_TRY(cublasLtMatmul(LT.lt, p->desc, &alpha, w, p->a, x, p->b, &beta, out, p->d, out, p->d, &p->algo, LT.workspace,
                          LT_WORKSPACE, mg_cuda.stream));
    return MG_OK;
}
