/* The four determinism modes on the batched engine on the CUDA backend
 * (mg-llama-27m): the checks test_engine_modes.c runs on the CPU
 * (engine_mode_checks.h), with the GPU's kernels. A request's output alone vs
 * inside batches with other companions, arrival times, prefill chunk sizes
 * and preemption:
 * - off: the requests whose tokens change in a batch of 32 are counted and
 *   reported (not asserted: the fast path need not flip on mg-llama-27m at a
 *   small batch);
 * - invariant: tokens and logits bitwise equal to the solo run;
 * - llm42: tokens equal to the solo run, forced mismatches rolled back, and
 *   the verifier's logits bitwise equal to the solo run's;
 * - margingate (tau = infinity): forced mismatches repaired, output and K/V
 *   columns bitwise equal to the solo invariant run.
 * Every test skips (the reason printed at the end) without a usable GPU, and
 * without ../shared (MG_SHARED_DIR) outside CI. */
#include "engine_mode_checks.h"
#include "model_helpers.h"

MG_CUDA_SKIP_REPORT("test_cuda_modes")

Test(cuda_modes, off_divergence_report) {
    const mg_backend_ops *g = cuda_or_skip();
    check_off_divergence(g);
}

Test(cuda_modes, invariant_bitwise_across_batches) { check_invariant_bitwise(cuda_or_skip()); }

Test(cuda_modes, preemption_swaps_and_resumes) { check_preemption_resumes(cuda_or_skip()); }

Test(cuda_modes, llm42_deterministic_with_rollback) { check_llm42_deterministic(cuda_or_skip()); }

Test(cuda_modes, llm42_verified_logits_bitwise) { check_llm42_logits_bitwise(cuda_or_skip()); }

Test(cuda_modes, margingate_repairs_faults) { check_margingate_repairs(cuda_or_skip()); }

Test(cuda_modes, margingate_kv_column_equals_invariant) { check_margingate_kv_column(cuda_or_skip()); }
