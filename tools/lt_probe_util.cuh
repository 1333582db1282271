/* Shared pieces of the standalone cuBLASLt probes (tools/lt_pin_probe.cu,
 * tools/mma_gemv_probe.cu): an exit-on-error check, a hashed BF16 fill, and
 * the descriptors of out (m, N) = x (m, K) w (N, K)^T. */
#ifndef MG_LT_PROBE_UTIL_CUH
#define MG_LT_PROBE_UTIL_CUH

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <stdio.h>
#include <stdlib.h>

#define CK(x)                                                                                                \
    do {                                                                                                     \
        cudaError_t e_ = (x);                                                                                \
        if (e_ != cudaSuccess) {                                                                             \
            fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e_));                        \
            exit(1);                                                                                         \
        }                                                                                                    \
    } while (0)

/* p[i] = a value in [-scale, scale) from a hash of (i, seed). */
__global__ void fill(__nv_bfloat16 *p, size_t n, unsigned seed, float scale) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 2654435761u ^ seed;
        h ^= h >> 13;
        h *= 0x5bd1e995u;
        h ^= h >> 15;
        p[i] = __float2bfloat16(((h & 0xffff) / 32768.0f - 1.0f) * scale);
    }
}

struct desc {
    cublasLtMatmulDesc_t d;
    cublasLtMatrixLayout_t a, b, c;
};

/* out (m, N) of type out_type = x (m, K) w (N, K)^T, BF16 in, FP32
 * accumulation, in cuBLAS's column-major terms. */
static desc make_desc(int m, int N, int K, cudaDataType_t out_type = CUDA_R_16BF) {
    desc r;
    cublasLtMatmulDescCreate(&r.d, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    cublasLtMatmulDescSetAttribute(r.d, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
    cublasLtMatmulDescSetAttribute(r.d, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
    cublasLtMatrixLayoutCreate(&r.a, CUDA_R_16BF, K, N, K);
    cublasLtMatrixLayoutCreate(&r.b, CUDA_R_16BF, K, m, K);
    cublasLtMatrixLayoutCreate(&r.c, out_type, N, m, N);
    return r;
}

static void free_desc(desc &r) {
    cublasLtMatmulDescDestroy(r.d);
    cublasLtMatrixLayoutDestroy(r.a);
    cublasLtMatrixLayoutDestroy(r.b);
    cublasLtMatrixLayoutDestroy(r.c);
}

#endif
