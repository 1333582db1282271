/* Probe: does a tensor-core GEMV that sums K in 16-wide mma.sync steps, in
 * order, into one FP32 accumulator give the bits of cuBLASLt's split-K-free
 * kernels (the invariant path's pinned GEMMs)?
 *
 * Why: the invariant path needs one kernel per shape for every batch size,
 * and cuBLASLt's pinned kernel is 1.1-1.3x slower at batch 1 than the fast
 * path's GEMV (bench/results/cuda-h100-2026-11-23-run3.md). If a GEMV of
 * mma.sync steps matched the pinned kernel bit for bit, the invariant path
 * could run it at small batch (after checking the match on the machine)
 * and stay invariant. tools/lt_pin_probe.cu found that every split-K-free
 * cuBLASLt algorithm of a shape gives the same bits: consistent with one
 * accumulator fed by 16-wide tensor-core steps in K order.
 *
 * For each Llama-3.1-8B weight shape (N x K), BF16 inputs, FP32 outputs, M = 8
 * rows of x: the heuristic's split-K-free algorithms at M = 1 and 64 (run at
 * M = 8) against mma variants:
 *   wA:  weights as the A operand (16 output features a warp), x as B
 *        (8 columns: the 8 rows of x);
 *   xA:  x as A (rows 8-15 zero), weights as B (8 output features a warp);
 *   wA2: wA with two accumulators over alternate k steps, added at the end
 *        (a control: it should differ).
 * Prints, per shape, each algorithm's mismatches against the first one and
 * each variant's against the first algorithm (of N x 8 outputs).
 * Built by make with CUDA (build/mma_gemv_probe); run it on the GPU machine. */
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

#include "backend/cuda/cuda_common.cuh" /* bf16, mma16816: the kernels' own tensor-core step */
#include "lt_probe_util.cuh"

static const int M = 8;
static const size_t WS = 32u << 20;

/* Two consecutive BF16 at p (p + 1 the higher half), 0 when !ok. */
static __device__ __forceinline__ uint32_t pair(const bf16 *p, bool ok) { return ok ? *(const uint32_t *)p : 0u; }

/* wA (ACCS = 1) and wA2 (ACCS = 2): warp w computes out[m][16w .. 16w + 15]. */
template <int ACCS> __global__ void gemv_wa(float *out, const bf16 *w, const bf16 *x, int N, int K) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    const int n0 = (blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * 16;
    if (n0 >= N) return;
    float acc[ACCS][4] = {};
    const bf16 *w_lo = w + (size_t)(n0 + g) * K, *w_hi = w + (size_t)(n0 + g + 8) * K, *xr = x + (size_t)g * K;
    for (int k0 = 0, s = 0; k0 < K; k0 += 16, s++) {
        const int k = k0 + 2 * t4;
        mma16816(acc[ACCS == 1 ? 0 : s & 1], pair(w_lo + k, true), pair(w_hi + k, true), pair(w_lo + k + 8, true),
                 pair(w_hi + k + 8, true), pair(xr + k, g < M), pair(xr + k + 8, g < M));
    }
    float d[4];
    for (int e = 0; e < 4; e++) d[e] = ACCS == 1 ? acc[0][e] : acc[0][e] + acc[ACCS - 1][e];
    out[(size_t)(2 * t4) * N + n0 + g] = d[0];
    out[(size_t)(2 * t4 + 1) * N + n0 + g] = d[1];
    out[(size_t)(2 * t4) * N + n0 + g + 8] = d[2];
    out[(size_t)(2 * t4 + 1) * N + n0 + g + 8] = d[3];
}

/* xA: warp w computes out[m][8w .. 8w + 7]. */
__global__ void gemv_xa(float *out, const bf16 *w, const bf16 *x, int N, int K) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    const int n0 = (blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * 8;
    if (n0 >= N) return;
    float acc[4] = {};
    const bf16 *xr = x + (size_t)g * K, *wr = w + (size_t)(n0 + g) * K;
    for (int k0 = 0; k0 < K; k0 += 16) {
        const int k = k0 + 2 * t4;
        mma16816(acc, pair(xr + k, g < M), 0u, pair(xr + k + 8, g < M), 0u, pair(wr + k, true),
                 pair(wr + k + 8, true));
    }
    out[(size_t)g * N + n0 + 2 * t4] = acc[0];
    out[(size_t)g * N + n0 + 2 * t4 + 1] = acc[1];
}

static int splitk(const cublasLtMatmulAlgo_t *a) {
    int32_t v = 1;
    size_t wr = 0;
    cublasLtMatmulAlgoConfigGetAttribute(a, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &v, sizeof v, &wr);
    return v;
}

static size_t mismatches(const std::vector<float> &a, const std::vector<float> &b) {
    size_t n = 0;
    for (size_t i = 0; i < a.size(); i++) n += memcmp(&a[i], &b[i], sizeof(float)) != 0;
    return n;
}

int main(void) {
    cublasLtHandle_t lt;
    if (cublasLtCreate(&lt) != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "cublasLtCreate failed\n");
        return 1;
    }
    void *ws;
    CK(cudaMalloc(&ws, WS));
    const int shapes[5][2] = {{6144, 4096}, {4096, 4096}, {14336, 4096}, {4096, 14336}, {128256, 4096}};
    for (int si = 0; si < 5; si++) {
        const int N = shapes[si][0], K = shapes[si][1];
        bf16 *w, *x;
        float *out;
        CK(cudaMalloc(&w, (size_t)N * K * sizeof(bf16)));
        CK(cudaMalloc(&x, (size_t)M * K * sizeof(bf16)));
        CK(cudaMalloc(&out, (size_t)M * N * sizeof(float)));
        fill<<<1024, 256>>>(w, (size_t)N * K, 17u + si, 0.05f);
        fill<<<64, 256>>>(x, (size_t)M * K, 91u + si, 1.0f);
        CK(cudaDeviceSynchronize());
        printf("\n== N %d K %d, M %d, FP32 out\n", N, K, M);

        /* cuBLASLt's split-K-free candidates (heuristic at M = 1 and 64), each run at M = 8. */
        std::vector<cublasLtMatmulAlgo_t> algos;
        for (int hm : {1, 64}) {
            desc d = make_desc(hm, N, K, CUDA_R_32F);
            cublasLtMatmulPreference_t pref;
            cublasLtMatmulPreferenceCreate(&pref);
            cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &WS, sizeof WS);
            cublasLtMatmulHeuristicResult_t res[8];
            int found = 0;
            cublasLtMatmulAlgoGetHeuristic(lt, d.d, d.a, d.b, d.c, d.c, pref, 8, res, &found);
            cublasLtMatmulPreferenceDestroy(pref);
            free_desc(d);
            for (int i = 0; i < found; i++) {
                bool dup = splitk(&res[i].algo) != 1;
                for (auto &a : algos) dup = dup || !memcmp(&a, &res[i].algo, sizeof a);
                if (!dup) algos.push_back(res[i].algo);
            }
        }
        std::vector<std::vector<float>> lt_out;
        desc d = make_desc(M, N, K, CUDA_R_32F);
        for (auto &a : algos) {
            cublasLtMatmulHeuristicResult_t r;
            if (cublasLtMatmulAlgoCheck(lt, d.d, d.a, d.b, d.c, d.c, &a, &r) != CUBLAS_STATUS_SUCCESS) continue;
            const float alpha = 1, beta = 0;
            CK(cudaMemset(out, 0xff, (size_t)M * N * sizeof(float)));
            if (cublasLtMatmul(lt, d.d, &alpha, w, d.a, x, d.b, &beta, out, d.c, out, d.c, &a, ws, WS, 0) !=
                CUBLAS_STATUS_SUCCESS)
                continue;
            CK(cudaDeviceSynchronize());
            std::vector<float> h((size_t)M * N);
            CK(cudaMemcpy(h.data(), out, h.size() * sizeof(float), cudaMemcpyDeviceToHost));
            lt_out.push_back(h);
        }
        free_desc(d);
        if (lt_out.empty()) {
            printf("no split-K-free cuBLASLt algorithm ran\n");
        } else {
            for (size_t i = 1; i < lt_out.size(); i++)
                printf("cuBLASLt algorithm %zu vs 0: %zu of %zu differ\n", i, mismatches(lt_out[i], lt_out[0]),
                       lt_out[0].size());
            const char *names[3] = {"wA", "xA", "wA2"};
            for (int v = 0; v < 3; v++) {
                CK(cudaMemset(out, 0xff, (size_t)M * N * sizeof(float)));
                const int per_warp = v == 1 ? 8 : 16, warps = (N + per_warp - 1) / per_warp;
                const dim3 grid((warps + 7) / 8);
                if (v == 0) gemv_wa<1><<<grid, 256>>>(out, w, x, N, K);
                else if (v == 1) gemv_xa<<<grid, 256>>>(out, w, x, N, K);
                else gemv_wa<2><<<grid, 256>>>(out, w, x, N, K);
                CK(cudaDeviceSynchronize());
                std::vector<float> h((size_t)M * N);
                CK(cudaMemcpy(h.data(), out, h.size() * sizeof(float), cudaMemcpyDeviceToHost));
                size_t row0 = 0;
                for (int n = 0; n < N; n++) row0 += memcmp(&h[n], &lt_out[0][n], sizeof(float)) != 0;
                printf("mma %-3s vs cuBLASLt algorithm 0: %zu of %zu differ (row 0: %zu of %d); first: %.9g vs %.9g\n",
                       names[v], mismatches(h, lt_out[0]), h.size(), row0, N, h[0], lt_out[0][0]);
            }
        }
        CK(cudaFree(w));
        CK(cudaFree(x));
        CK(cudaFree(out));
    }
    cudaFree(ws);
    cublasLtDestroy(lt);
    return 0;
}
