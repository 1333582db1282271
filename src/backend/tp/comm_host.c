/* Collectives between CPU ranks (threads of one process): each rank
 * publishes its buffer, a barrier, then every rank reads all of them. Sums
 * are taken in rank order from +0, so every rank gets the same bits. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "tp_internal.h"

typedef struct {
    int n;
    pthread_barrier_t barrier;
    const void *send[MG_TP_MAX_RANKS]; /* the buffer each rank published */
} host_comm;

static mg_status host_prepare(void **out, int n_ranks) {
    host_comm *c = calloc(1, sizeof *c);
    if (!c) return mg_error_set(MG_ERR_OOM, "cannot allocate the host communicator");
    c->n = n_ranks;
    if (pthread_barrier_init(&c->barrier, NULL, (unsigned)n_ranks) != 0) {
        free(c);
        return mg_error_set(MG_ERR_BACKEND, "cannot create a barrier for %d ranks", n_ranks);
    }
    *out = c;
    return MG_OK;
}

static mg_status host_rank_init(void *comm, int rank) {
    (void)comm;
    (void)rank;
    return MG_OK;
}

static mg_status host_allreduce_f32(void *comm, int rank, float *buf, size_t count) {
    host_comm *c = comm;
    float *sum = malloc((count ? count : 1) * sizeof(float));
    c->send[rank] = buf;
    pthread_barrier_wait(&c->barrier);
    if (sum)
        for (size_t i = 0; i < count; i++) {
            float acc = 0.0f;
            for (int q = 0; q < c->n; q++) acc += ((const float *)c->send[q])[i];
            sum[i] = acc;
        }
    pthread_barrier_wait(&c->barrier); /* everyone has read every buffer */
    if (!sum) return mg_error_set(MG_ERR_OOM, "cannot allocate an all-reduce buffer of %zu values", count);
    memcpy(buf, sum, count * sizeof(float));
    free(sum);
    return MG_OK;
}

static mg_status host_allgather(void *comm, int rank, const void *send, void *recv, size_t bytes) {
    host_comm *c = comm;
    c->send[rank] = send;
    pthread_barrier_wait(&c->barrier);
    for (int q = 0; q < c->n; q++) memcpy((char *)recv + (size_t)q * bytes, c->send[q], bytes);
    pthread_barrier_wait(&c->barrier); /* nobody reuses its send buffer before all have copied */
    return MG_OK;
}

static void host_rank_free(void *comm, int rank) {
    (void)comm;
    (void)rank;
}

static void host_destroy(void *comm) {
    host_comm *c = comm;
    if (!c) return;
    pthread_barrier_destroy(&c->barrier);
    free(c);
}

const mg_tp_comm_ops mg_tp_comm_host = {
    .name = "host",
    .prepare = host_prepare,
    .rank_init = host_rank_init,
    .allreduce_f32 = host_allreduce_f32,
    .allgather = host_allgather,
    .rank_free = host_rank_free,
    .destroy = host_destroy,
};
