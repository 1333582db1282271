/* Tensor parallelism as a backend: mg_backend_tp wraps N copies of a base
 * backend (one per rank: a CUDA device, or CPU "ranks" for tests) behind
 * the ordinary op table, so the forward pass, the engine and every command
 * run unchanged on a model split Megatron-style over the ranks:
 *   - q/k/v, gate/up: column-parallel (rank r holds its heads / FFN slice);
 *   - o, down: row-parallel (rank r holds its slice of the input columns),
 *     followed by a reduction;
 *   - LM head: vocab-parallel, followed by an all-gather of the logits;
 *   - embedding, norms: replicated; KV cache: split by KV head.
 *
 * The reduction after a row-parallel matmul:
 *   - FAST: each rank's FP32 partial product (its columns, base `logits`),
 *     an all-reduce sum, then `fold` into the activation;
 *   - INVARIANT: each rank's group results (base `matmul_groups`, one FP32
 *     value per group of MG_MATMUL_GROUP columns), an all-gather, then
 *     `fold` of all groups in group order. On CUDA this is the invariant
 *     matmul's own order, so the output is bit for bit the single-device
 *     output whenever each rank's column slice is a whole number of groups
 *     (and the same for any batch: the all-gather moves bits, it adds
 *     nothing).
 *
 * Threads: one worker thread per rank. A forward pass (graph_run) runs the
 * pass's issue callback on every worker at once; each op called from a
 * worker dispatches to that rank's base backend with the rank's pointers.
 * Memory ops called from any other thread run on every rank (downloads
 * read rank 0, or gather a KV pool's heads from all ranks).
 *
 * Buffers: a handle is rank 0's pointer; the other ranks' buffers of an
 * allocation are found by address (pointer arithmetic on handles works).
 * KV pools (alloc_kv) are split by KV head: rank r holds bytes / N of them,
 * and a byte offset o of the whole pool is offset o / N of each rank's part
 * (rank-major within every K/V vector), which keeps mg_kv_read, swap
 * save/load and block addressing valid. */
#ifndef MG_TP_H
#define MG_TP_H

#include <stddef.h>

#include "../backend.h"

#define MG_TP_MAX_RANKS 8

/* Collectives between the ranks, called on each rank's worker thread with
 * that rank's buffers (in its base backend's memory), in the same order on
 * every rank. */
typedef struct {
    const char *name;
    /* Once, on the creating thread, before any rank_init. */
    mg_status (*prepare)(void **comm, int n_ranks);
    /* On rank `rank`'s worker, concurrently on every rank. */
    mg_status (*rank_init)(void *comm, int rank);
    /* buf[i] = sum over ranks of buf[i] (FP32). */
    mg_status (*allreduce_f32)(void *comm, int rank, float *buf, size_t count);
    /* recv = the ranks' send buffers of `bytes` each, in rank order. */
    mg_status (*allgather)(void *comm, int rank, const void *send, void *recv, size_t bytes);
    void (*rank_free)(void *comm, int rank);
    void (*destroy)(void *comm);
} mg_tp_comm_ops;

/* NCCL between CUDA devices (src/backend/cuda/comm_nccl.cu); NULL with a
 * reason in builds without CUDA or NCCL. Sets NCCL_NVLS_ENABLE=0, and with
 * more than 2 ranks NCCL_ALGO=Ring and NCCL_PROTO=Simple, unless the
 * environment sets them. */
const mg_tp_comm_ops *mg_tp_comm_nccl(void);

/* The tensor-parallel backend over `n_ranks` ranks of the named base
 * backend ("cuda": devices 0..n_ranks-1 with NCCL; "cpu": CPU ranks with
 * host collectives, for tests). One TP backend per process: a second call
 * returns the same one if the arguments match, else NULL with a message.
 * NULL with the reason when devices are missing or NCCL fails. */
const mg_backend_ops *mg_backend_tp(const char *base, int n_ranks);

/* The backend a command computes on: base device name ("auto", "cpu",
 * "cuda") and tensor-parallel degree (1: the base backend itself). */
const mg_backend_ops *mg_backend_select(const char *device, int tensor_parallel);

#endif
