/* Backend selection by name, and the CUDA entry point of builds without
 * CUDA (the CUDA backend itself is src/backend/cuda/, built with nvcc). */
#include <string.h>

#include "backend.h"
#include "tp/tp.h"

#ifndef MG_HAVE_CUDA
const mg_backend_ops *mg_backend_cuda(void) {
    mg_error_set(MG_ERR_UNSUPPORTED, "this build of margingate has no CUDA backend (nvcc was not found, or CUDA=0)");
    return NULL;
}

const mg_backend_ops *mg_backend_cuda_on(int device) {
    (void)device;
    return mg_backend_cuda();
}

const mg_tp_comm_ops *mg_tp_comm_nccl(void) {
    mg_error_set(MG_ERR_UNSUPPORTED, "this build of margingate has no CUDA backend, hence no NCCL");
    return NULL;
}

void mg_cuda_invariant_gemm_describe(char *buf, size_t size) {
    if (size) buf[0] = 0;
}

void mg_cuda_fast_gemm_describe(char *buf, size_t size) {
    if (size) buf[0] = 0;
}
#endif

const mg_backend_ops *mg_backend_by_name(const char *name) {
    if (!name || !strcmp(name, "auto")) {
        const mg_backend_ops *cuda = mg_backend_cuda();
        if (cuda) return cuda;
        mg_error_clear();
        return mg_backend_cpu();
    }
    if (!strcmp(name, "cpu")) return mg_backend_cpu();
    if (!strcmp(name, "cuda")) return mg_backend_cuda();
    mg_error_set(MG_ERR_ARG, "unknown device '%s' (expected cpu, cuda or auto)", name);
    return NULL;
}
