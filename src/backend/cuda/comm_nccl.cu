/* Collectives between CUDA devices of one process through NCCL, for the
 * tensor-parallel backend (src/backend/tp/). One communicator per rank,
 * created on the rank's worker thread (its device selected); collectives
 * run on the rank's stream, in issue order with its kernels, and can be
 * captured in the rank's CUDA graphs.
 *
 * Determinism: the invariant path only all-gathers (moves bits, in any
 * algorithm). The fast path's all-reduce: with 2 ranks every element is one
 * FP32 addition of the two partials (a + b == b + a), the same bits in any
 * algorithm or protocol, so NCCL keeps its choice (LL for the small decode
 * messages: about a third of Simple's latency per call). With more ranks the
 * order of the additions depends on the algorithm, so NCCL_ALGO=Ring and
 * NCCL_PROTO=Simple are pinned unless the user set them (the chunking still
 * follows the message size: the fast path is not batch-invariant anyway;
 * the invariant path never all-reduces). NVLink multicast (NVLS) is off, as
 * the GPU machines require.
 *
 * libnccl.so.2 is opened at run time (dlopen), so that a machine without
 * NCCL still runs everything but tensor parallelism, which then says why. */
#include <dlfcn.h>
#include <nccl.h>
#include <stdlib.h>

#include "cuda_common.cuh"

extern "C" {
#include "../tp/tp.h"
}

/* The NCCL entry points we use, resolved once. */
static struct {
    int tried;
    void *lib;
    ncclResult_t (*get_unique_id)(ncclUniqueId *);
    ncclResult_t (*comm_init_rank)(ncclComm_t *, int, ncclUniqueId, int);
    ncclResult_t (*comm_destroy)(ncclComm_t);
    ncclResult_t (*all_reduce)(const void *, void *, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t, cudaStream_t);
    ncclResult_t (*all_gather)(const void *, void *, size_t, ncclDataType_t, ncclComm_t, cudaStream_t);
    const char *(*error_string)(ncclResult_t);
} nccl;

static int nccl_load(void) {
    if (nccl.tried) return nccl.lib != NULL;
    nccl.tried = 1;
    nccl.lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!nccl.lib) nccl.lib = dlopen("libnccl.so", RTLD_NOW | RTLD_LOCAL);
    if (!nccl.lib) return 0;
    *(void **)&nccl.get_unique_id = dlsym(nccl.lib, "ncclGetUniqueId");
    *(void **)&nccl.comm_init_rank = dlsym(nccl.lib, "ncclCommInitRank");
    *(void **)&nccl.comm_destroy = dlsym(nccl.lib, "ncclCommDestroy");
    *(void **)&nccl.all_reduce = dlsym(nccl.lib, "ncclAllReduce");
    *(void **)&nccl.all_gather = dlsym(nccl.lib, "ncclAllGather");
    *(void **)&nccl.error_string = dlsym(nccl.lib, "ncclGetErrorString");
    if (!nccl.get_unique_id || !nccl.comm_init_rank || !nccl.comm_destroy || !nccl.all_reduce || !nccl.all_gather ||
        !nccl.error_string) {
        dlclose(nccl.lib);
        nccl.lib = NULL;
    }
    return nccl.lib != NULL;
}

typedef struct {
    int n;
    ncclUniqueId id;
    ncclComm_t comm[MG_TP_MAX_RANKS];
} nccl_comm;

static mg_status nccl_fail(ncclResult_t r, const char *what) {
    return mg_error_set(MG_ERR_BACKEND, "NCCL error %d (%s) in %s", (int)r, nccl.error_string(r), what);
}

#define NCCL_TRY(call)                                                                                       \
    do {                                                                                                     \
        ncclResult_t nccl_r_ = (call);                                                                       \
        if (nccl_r_ != ncclSuccess) return nccl_fail(nccl_r_, #call);                                        \
    } while (0)

static mg_status nccl_prepare(void **out, int n_ranks) {
    if (n_ranks > 2) {
        setenv("NCCL_ALGO", "Ring", 0);
        setenv("NCCL_PROTO", "Simple", 0);
    }
    setenv("NCCL_NVLS_ENABLE", "0", 0);
    nccl_comm *c = (nccl_comm *)calloc(1, sizeof *c);
    if (!c) return mg_error_set(MG_ERR_OOM, "cannot allocate the NCCL communicator table");
    c->n = n_ranks;
    ncclResult_t r = nccl.get_unique_id(&c->id);
    if (r != ncclSuccess) {
        free(c);
        return nccl_fail(r, "ncclGetUniqueId");
    }
    *out = c;
    return MG_OK;
}

static mg_status nccl_rank_init(void *comm, int rank) {
    nccl_comm *c = (nccl_comm *)comm;
    NCCL_TRY(nccl.comm_init_rank(&c->comm[rank], c->n, c->id, rank));
    return MG_OK;
}

static mg_status nccl_allreduce_f32(void *comm, int rank, float *buf, size_t count) {
    nccl_comm *c = (nccl_comm *)comm;
    NCCL_TRY(nccl.all_reduce(buf, buf, count, ncclFloat32, ncclSum, c->comm[rank], mg_cuda.stream));
    return MG_OK;
}

static mg_status nccl_allgather(void *comm, int rank, const void *send, void *recv, size_t bytes) {
    nccl_comm *c = (nccl_comm *)comm;
    NCCL_TRY(nccl.all_gather(send, recv, bytes, ncclUint8, c->comm[rank], mg_cuda.stream));
    return MG_OK;
}

static void nccl_rank_free(void *comm, int rank) {
    nccl_comm *c = (nccl_comm *)comm;
    if (c->comm[rank]) nccl.comm_destroy(c->comm[rank]);
    c->comm[rank] = NULL;
}

static void nccl_destroy(void *comm) { free(comm); }

static const mg_tp_comm_ops nccl_ops = {
    /* .name = */ "nccl",
    /* .prepare = */ nccl_prepare,
    /* .rank_init = */ nccl_rank_init,
    /* .allreduce_f32 = */ nccl_allreduce_f32,
    /* .allgather = */ nccl_allgather,
    /* .rank_free = */ nccl_rank_free,
    /* .destroy = */ nccl_destroy,
};

extern "C" const mg_tp_comm_ops *mg_tp_comm_nccl(void) {
    if (!nccl_load()) {
        const char *why = dlerror();
        mg_error_set(MG_ERR_UNSUPPORTED, "tensor parallelism on CUDA needs NCCL: cannot load libnccl.so.2 (%s)",
                     why ? why : "entry points missing");
        return NULL;
    }
    return &nccl_ops;
}
