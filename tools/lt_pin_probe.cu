/* Probe: can one pinned cuBLASLt algorithm serve every batch size bit for bit
 * (a batch-invariant GEMM at the fast path's speed)?
 *
 * For each Llama-3.1-8B weight shape (N x K), BF16 in, FP32 accumulate:
 *  - candidates: the heuristic's top algorithms at M = 1, 8, 32, 64, 128;
 *  - for each candidate: whether it runs at every M in 1..128, 512, 2048;
 *    its time at M = 1, 8, 32, 64, 128 (weights rotated over > L2 so that
 *    they stream from HBM) against the heuristic's own pick per M;
 *  - bitwise: rows of an M = m run (m = 1..128 and 512) vs the same rows of
 *    the M = 2048 run, and a row at a shifted x pointer.
 * Prints one line per candidate. Built by make with CUDA (build/lt_pin_probe);
 * run it on the GPU machine. */
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <algorithm>
#include <vector>

#include "lt_probe_util.cuh"

static cublasLtHandle_t lt;
static void *ws;
static const size_t WS = 32u << 20;

static int heuristic(int M, int N, int K, int n, cublasLtMatmulHeuristicResult_t *res) {
    desc d = make_desc(M, N, K);
    cublasLtMatmulPreference_t pref;
    cublasLtMatmulPreferenceCreate(&pref);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &WS, sizeof WS);
    int found = 0;
    cublasLtMatmulAlgoGetHeuristic(lt, d.d, d.a, d.b, d.c, d.c, pref, n, res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    free_desc(d);
    return found;
}

static bool run_d(desc &d, const cublasLtMatmulAlgo_t *algo, const void *w, const void *x, void *out) {
    const float alpha = 1, beta = 0;
    return cublasLtMatmul(lt, d.d, &alpha, w, d.a, x, d.b, &beta, out, d.c, out, d.c, algo, ws, WS, 0) ==
           CUBLAS_STATUS_SUCCESS;
}

static bool run(const cublasLtMatmulAlgo_t *algo, int M, int N, int K, const void *w, const void *x, void *out) {
    desc d = make_desc(M, N, K);
    bool ok = run_d(d, algo, w, x, out);
    cudaDeviceSynchronize();
    free_desc(d);
    return ok;
}

static bool check(const cublasLtMatmulAlgo_t *algo, int M, int N, int K) {
    desc d = make_desc(M, N, K);
    cublasLtMatmulHeuristicResult_t r;
    cublasStatus_t s = cublasLtMatmulAlgoCheck(lt, d.d, d.a, d.b, d.c, d.c, algo, &r);
    free_desc(d);
    return s == CUBLAS_STATUS_SUCCESS && r.workspaceSize <= WS;
}

template <typename T> static T cfg(const cublasLtMatmulAlgo_t *a, cublasLtMatmulAlgoConfigAttributes_t at) {
    T v = 0;
    size_t wr = 0;
    cublasLtMatmulAlgoConfigGetAttribute(a, at, &v, sizeof v, &wr);
    return v;
}

static void describe(const cublasLtMatmulAlgo_t *a, char *buf, size_t n) {
    snprintf(buf, n, "id%d tile%u st%u sk%d red%u sw%u co%u in%u cl%u", cfg<int32_t>(a, CUBLASLT_ALGO_CONFIG_ID),
             cfg<uint32_t>(a, CUBLASLT_ALGO_CONFIG_TILE_ID), cfg<uint32_t>(a, CUBLASLT_ALGO_CONFIG_STAGES_ID),
             cfg<int32_t>(a, CUBLASLT_ALGO_CONFIG_SPLITK_NUM), cfg<uint32_t>(a, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME),
             cfg<uint32_t>(a, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING), cfg<uint32_t>(a, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION),
             (unsigned)cfg<uint16_t>(a, CUBLASLT_ALGO_CONFIG_INNER_SHAPE_ID),
             (unsigned)cfg<uint16_t>(a, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID));
}

/* Time per call (us), weights rotated over n_copies copies of N x K. */
static float time_us(const cublasLtMatmulAlgo_t *algo, int M, int N, int K, const __nv_bfloat16 *wbuf, int n_copies,
                     const void *x, void *out) {
    const size_t wn = (size_t)N * K;
    desc d = make_desc(M, N, K);
    for (int i = 0; i < 3; i++)
        if (!run_d(d, algo, wbuf + (i % n_copies) * wn, x, out)) {
            free_desc(d);
            return -1;
        }
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    const int iters = 40;
    cudaEventRecord(e0);
    for (int i = 0; i < iters; i++) run_d(d, algo, wbuf + (i % n_copies) * wn, x, out);
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    free_desc(d);
    return ms * 1000 / iters;
}

int main() {
    cublasLtCreate(&lt);
    CK(cudaMalloc(&ws, WS));
    const int shapes[][2] = {{6144, 4096}, {4096, 4096}, {14336, 4096}, {4096, 14336}, {128256, 4096}};
    const int Ms[] = {1, 8, 32, 64, 128};
    const int NM = 5, MAXM = 2048, REQ = 32;
    for (auto &sh : shapes) {
        const int N = sh[0], K = sh[1];
        const size_t wn = (size_t)N * K;
        const int n_copies = (int)((400u << 20) / (wn * 2) + 1);
        __nv_bfloat16 *wbuf, *x, *full, *part;
        CK(cudaMalloc(&wbuf, wn * n_copies * 2));
        CK(cudaMalloc(&x, (size_t)MAXM * K * 2));
        CK(cudaMalloc(&full, (size_t)MAXM * N * 2));
        CK(cudaMalloc(&part, (size_t)MAXM * N * 2));
        fill<<<1024, 256>>>(wbuf, wn * n_copies, 1, 0.02f);
        fill<<<1024, 256>>>(x, (size_t)MAXM * K, 2, 1.0f);
        CK(cudaDeviceSynchronize());
        printf("\n== N %d K %d (%d weight copies)\n", N, K, n_copies);
        float best[NM + 1];
        std::vector<cublasLtMatmulAlgo_t> cands;
        std::vector<std::vector<int>> ranks; /* [cand][m]: rank among no-split results, REQ if absent */
        for (int mi = 0; mi <= NM; mi++) {
            const int M = mi < NM ? Ms[mi] : MAXM;
            cublasLtMatmulHeuristicResult_t res[REQ];
            int f = heuristic(M, N, K, REQ, res);
            best[mi] = time_us(&res[0].algo, M, N, K, wbuf, n_copies, x, part);
            char b[160];
            describe(&res[0].algo, b, sizeof b);
            printf("heuristic M %4d: %8.1f us  %s  (%d results)\n", M, best[mi], b, f);
            if (mi == NM) break;
            int rank = 0;
            for (int i = 0; i < f; i++) {
                if (cfg<int32_t>(&res[i].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM) > 1) continue;
                int at = -1;
                for (size_t c = 0; c < cands.size(); c++)
                    if (memcmp(&cands[c], &res[i].algo, sizeof res[i].algo) == 0) at = (int)c;
                if (at < 0) {
                    cands.push_back(res[i].algo);
                    ranks.push_back(std::vector<int>(NM, REQ));
                    at = (int)cands.size() - 1;
                }
                ranks[at][mi] = rank++;
            }
        }
        std::vector<__nv_bfloat16> hf((size_t)MAXM * N), hp((size_t)MAXM * N), h0((size_t)128 * N);
        int rank_pick = -1, rank_worst = 1 << 30, rank_sum = 1 << 30, time_pick = -1, first_valid = -1;
        float time_worst = 1e30f;
        std::vector<float> worsts(cands.size(), -1);
        int cross_differ = 0, cross_tested = 0;
        for (size_t ci = 0; ci < cands.size(); ci++) {
            auto &c = cands[ci];
            char b[160];
            describe(&c, b, sizeof b);
            bool ok = true;
            for (int m = 1; m <= 256 && ok; m++) ok = check(&c, m, N, K);
            for (int m = 512; m <= 65536 && ok; m *= 2) ok = check(&c, m, N, K);
            if (!ok) {
                printf("  %2zu %-44s not valid for every M\n", ci, b);
                continue;
            }
            float t[NM + 1], worst = 0;
            for (int mi = 0; mi <= NM; mi++) {
                const int M = mi < NM ? Ms[mi] : MAXM;
                t[mi] = time_us(&c, M, N, K, wbuf, n_copies, x, part);
                if (mi < NM && t[mi] / best[mi] > worst) worst = t[mi] / best[mi];
            }
            worsts[ci] = worst;
            int rw = 0, rs = 0;
            for (int mi = 0; mi < NM; mi++) rw = std::max(rw, ranks[ci][mi]), rs += ranks[ci][mi];
            if (rw < rank_worst || (rw == rank_worst && rs < rank_sum)) rank_pick = (int)ci, rank_worst = rw, rank_sum = rs;
            if (worst < time_worst) time_pick = (int)ci, time_worst = worst;
            /* bitwise: M = m rows vs the M = 2048 run */
            run(&c, MAXM, N, K, wbuf, x, full);
            CK(cudaMemcpy(hf.data(), full, hf.size() * 2, cudaMemcpyDeviceToHost));
            int bad = 0, tested = 0;
            const int ms[] = {1, 2, 3, 7, 8, 9, 16, 31, 32, 33, 63, 64, 65, 100, 127, 128, 512};
            for (int m : ms) {
                run(&c, m, N, K, wbuf, x, part);
                CK(cudaMemcpy(hp.data(), part, (size_t)m * N * 2, cudaMemcpyDeviceToHost));
                tested++;
                if (memcmp(hp.data(), hf.data(), (size_t)m * N * 2)) bad++;
            }
            run(&c, 1, N, K, wbuf, x + (size_t)5 * K, part); /* row 5 alone */
            CK(cudaMemcpy(hp.data(), part, (size_t)N * 2, cudaMemcpyDeviceToHost));
            tested++;
            if (memcmp(hp.data(), hf.data() + (size_t)5 * N, (size_t)N * 2)) bad++;
            /* across algorithms: this one's M = 2048 rows vs the first valid one's */
            if (first_valid < 0) {
                first_valid = (int)ci;
                memcpy(h0.data(), hf.data(), h0.size() * 2);
            } else {
                cross_tested++;
                cross_differ += memcmp(h0.data(), hf.data(), h0.size() * 2) != 0;
            }
            printf("  %2zu %-44s us %6.1f %6.1f %6.1f %6.1f %6.1f | 2048: %7.1f  worst x%.2f ranks %2d %2d %2d %2d %2d "
                   "bitwise %s (%d/%d)\n",
                   ci, b, t[0], t[1], t[2], t[3], t[4], t[5], worst, ranks[ci][0], ranks[ci][1], ranks[ci][2],
                   ranks[ci][3], ranks[ci][4], bad ? "DIFFERS" : "same", bad, tested);
        }
        if (rank_pick >= 0)
            printf("  RANK RULE pick: cand %d worst x%.2f | TIME pick: cand %d worst x%.2f | algorithms giving other "
                   "bits than the first valid one: %d of %d\n",
                   rank_pick, worsts[rank_pick], time_pick, worsts[time_pick], cross_differ, cross_tested);
        /* the heuristic's own per-M picks against the M = 2048 pick */
        {
            cublasLtMatmulHeuristicResult_t r2048;
            heuristic(MAXM, N, K, 1, &r2048);
            run(&r2048.algo, MAXM, N, K, wbuf, x, full);
            CK(cudaMemcpy(hf.data(), full, hf.size() * 2, cudaMemcpyDeviceToHost));
            int bad = 0;
            for (int mi = 0; mi < NM; mi++) {
                cublasLtMatmulHeuristicResult_t r;
                heuristic(Ms[mi], N, K, 1, &r);
                run(&r.algo, Ms[mi], N, K, wbuf, x, part);
                CK(cudaMemcpy(hp.data(), part, (size_t)Ms[mi] * N * 2, cudaMemcpyDeviceToHost));
                bad += memcmp(hp.data(), hf.data(), (size_t)Ms[mi] * N * 2) != 0;
            }
            printf("  heuristic per M vs M = 2048: %d of %d batch sizes differ\n", bad, NM);
        }
        cudaFree(wbuf);
        cudaFree(x);
        cudaFree(full);
        cudaFree(part);
    }
    return 0;
}
