#include "cpu_ops.h"

static const mg_backend_ops cpu_ops = {
    .name = "cpu",
    .embed = mg_cpu_embed,
    .rmsnorm = mg_cpu_rmsnorm,
    .matmul = mg_cpu_matmul,
    .rope = mg_cpu_rope,
    .kv_store = mg_cpu_kv_store,
    .attention = mg_cpu_attention,
    .add = mg_cpu_add,
    .swiglu = mg_cpu_swiglu,
};

const mg_backend_ops *mg_backend_cpu(void) { return &cpu_ops; }
