/* The four determinism modes on the batched CPU engine (mg-llama-27m):
 * a request's output alone vs inside batches of 2..64 with other companions,
 * arrival orders, prefill chunk sizes and preemption. The checks are
 * engine_mode_checks.h, shared with the CUDA backend's test_cuda_modes.c. */
#include "engine_mode_checks.h"

/* off: the fast path really flips on the CPU: some request decoded inside a
 * batch of 32 differs from its solo run. Otherwise the determinism modes
 * would be moot. */
Test(engine_modes, off_flips_occur) {
    int diverged = check_off_divergence(mg_backend_cpu());
    cr_assert_gt(diverged, 0, "no batch-induced flip at all on the fast path");
}

/* invariant: tokens and logits bitwise identical alone and in batches of
 * 2..64 with different companions, staggered arrivals, other prefill chunk
 * sizes, and preemption. */
Test(engine_modes, invariant_bitwise_across_batches) { check_invariant_bitwise(mg_backend_cpu()); }

/* Preemption really happens with the small budget used above. */
Test(engine_modes, preemption_swaps_and_resumes) { check_preemption_resumes(mg_backend_cpu()); }

/* llm42: identical tokens across batch compositions and runs for the same
 * (W, B); the rollback path runs (natural flips or forced ones). */
Test(engine_modes, llm42_deterministic_with_rollback) { check_llm42_deterministic(mg_backend_cpu()); }

/* llm42: the verifier's logits are bitwise independent of the batch. */
Test(engine_modes, llm42_verified_logits_bitwise) { check_llm42_logits_bitwise(mg_backend_cpu()); }

/* margingate: with every step verified and forced mismatches, each forced
 * mismatch is repaired and the output equals the solo invariant output. */
Test(engine_modes, margingate_repairs_faults) { check_margingate_repairs(mg_backend_cpu()); }

/* margingate K/V repair, checked directly: after verified steps, every K/V
 * column of the request equals the solo invariant run's, bitwise. */
Test(engine_modes, margingate_kv_column_equals_invariant) { check_margingate_kv_column(mg_backend_cpu()); }
