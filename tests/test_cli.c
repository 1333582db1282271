/* The margingate command as a user runs it: outputs, exit codes and the
 * one-line errors for bad input (missing model, non-UTF-8 prompt, prompt
 * longer than the context, bad flags, bad or unavailable --device). Runs
 * build/margingate. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "cli_helpers.h"
#include "shared_path.h"

static void need_model(void) {
    char dir[1024];
    MG_TEST_SHARED(dir, "models/mg-llama-27m");
}

Test(cli, tokenize_and_detokenize_round_trip) {
    need_model();
    cmd_result r = *run_cmd(BIN " tokenize --special 'Hello, world!'");
    cr_assert_eq(r.rc, 0, "%s", r.err);
    cr_assert(strstr(r.err, "default model"), "the default model must be announced: %s", r.err);
    cr_assert_eq(strncmp(r.out, "0 ", 2), 0, "BOS (0) first with --special: %s", r.out);
    char ids[900], cmd[1024];
    snprintf(ids, sizeof ids, "%.899s", r.out + 2); /* without BOS, which decode would print */
    ids[strcspn(ids, "\n")] = '\0';
    snprintf(cmd, sizeof cmd, BIN " detokenize %s", ids);
    cmd_result d = *run_cmd(cmd);
    cr_assert_eq(d.rc, 0, "%s", d.err);
    cr_assert_str_eq(d.out, "Hello, world!\n");
    cmd_result j = *run_cmd(BIN " tokenize --json 'Hi'");
    cr_assert_eq(j.rc, 0);
    cr_assert(strstr(j.out, "\"id\"") && strstr(j.out, "\"token\""), "%s", j.out);
}

Test(cli, generate_greedy_json_and_margins) {
    need_model();
    cmd_result r = *run_cmd(BIN " generate -p 'def add(a, b):' -n 8 --json");
    cr_assert_eq(r.rc, 0, "%s", r.err);
    cr_assert(strstr(r.out, "\"token_ids\"") && strstr(r.out, "\"margins\"") && strstr(r.out, "\"timings\""),
              "%s", r.out);
    cmd_result m = *run_cmd(BIN " generate -p 'def add(a, b):' -n 4 --margins");
    cr_assert_eq(m.rc, 0, "%s", m.err);
    cr_assert(strstr(m.out, "margin"), "%s", m.out);
    /* Greedy is reproducible run to run. */
    cmd_result a = *run_cmd(BIN " generate -p 'Question: 2+2?' -n 12");
    cmd_result b = *run_cmd(BIN " generate -p 'Question: 2+2?' -n 12");
    cr_assert_str_eq(a.out, b.out);
    /* Seeded sampling reproduces for the same seed. */
    cmd_result s1 = *run_cmd(BIN " generate -p 'The' -n 12 --temperature 0.8 --top-k 40 --top-p 0.9 --seed 7");
    cmd_result s2 = *run_cmd(BIN " generate -p 'The' -n 12 --temperature 0.8 --top-k 40 --top-p 0.9 --seed 7");
    cr_assert_eq(s1.rc, 0, "%s", s1.err);
    cr_assert_str_eq(s1.out, s2.out);
}

Test(cli, chat_template) {
    need_model();
    cmd_result r = *run_cmd(BIN " generate --chat -p 'Hello!' -n 4 --json");
    cr_assert_eq(r.rc, 0, "%s", r.err);
    cr_assert(strstr(r.out, "<|user|>\\nHello!\\n<|assistant|>\\n"), "%s", r.out);
}

Test(cli, missing_model_is_one_line_error) {
    cmd_result r = *run_cmd(BIN " generate -m /nonexistent/model -p hi");
    cr_assert_eq(r.rc, 1);
    cr_assert(strstr(r.err, "/nonexistent/model") && strstr(r.err, "-m"), "%s", r.err);
    cr_assert_eq(strchr(r.err, '\n'), r.err + strlen(r.err) - 1, "one line expected: %s", r.err);
}

Test(cli, non_utf8_prompt_rejected) {
    need_model();
    cmd_result r = *run_cmd(BIN " generate -p \"$(printf 'bad \\377\\376 bytes')\" -n 2");
    cr_assert_eq(r.rc, 1, "%s", r.err);
    cr_assert(strstr(r.err, "UTF-8"), "%s", r.err);
}

Test(cli, prompt_longer_than_context_rejected) {
    need_model();
    /* mg-llama-27m has a 4096-token context; 5000 repetitions are longer. */
    FILE *f = fopen("/tmp/mg_cli_long_prompt.txt", "w");
    cr_assert_not_null(f);
    for (int i = 0; i < 5000; i++) fputs("word ", f);
    fclose(f);
    cmd_result r = *run_cmd(BIN " generate -f /tmp/mg_cli_long_prompt.txt -n 4");
    remove("/tmp/mg_cli_long_prompt.txt");
    cr_assert_eq(r.rc, 1, "%s", r.err);
    cr_assert(strstr(r.err, "exceeds the model's context"), "%s", r.err);
}

Test(cli, bad_flags) {
    cmd_result r = *run_cmd(BIN " generate -p hi --temperature abc");
    cr_assert_eq(r.rc, 2);
    cr_assert(strstr(r.err, "invalid value"), "%s", r.err);
    r = *run_cmd(BIN " frobnicate");
    cr_assert_eq(r.rc, 2);
    cr_assert(strstr(r.err, "unknown command"), "%s", r.err);
    r = *run_cmd(BIN " generate -p hi --top-p 1.5");
    cr_assert_eq(r.rc, 1);
    cr_assert(strstr(r.err, "top_p"), "%s", r.err);
}

Test(cli, stories260k_llama2c_checkpoint) {
    char dir[1024];
    MG_TEST_SHARED(dir, "models/stories260K");
    char cmd[2048];
    snprintf(cmd, sizeof cmd, BIN " generate -m %s/stories260K.bin -p 'Once upon a time' -n 12", dir);
    cmd_result r = *run_cmd(cmd);
    cr_assert_eq(r.rc, 0, "%s", r.err);
    cr_assert(strstr(r.out, ", there was a little girl"), "%s", r.out);
}

/* ---- --device: every subcommand that computes ----------------------------- */

/* Each computing subcommand with arguments that make a valid, small run on
 * mg-llama-27m (and gsm8k_test.jsonl), so that --device decides the outcome.
 * serve runs under `timeout` in case it starts after all. */
static const char *device_cmds[][2] = {
    {"generate", BIN " generate -m %s -p hi -n 2 --threads 1"},
    {"flips", BIN " flips -m %s --dataset %s --batch 2 --limit 2 --max-new 3 --max-prompt 24 --threads 1 --out %s"},
    {"calibrate", BIN " calibrate -m %s --dataset %s --batch 2 --limit 2 --max-new 3 --max-prompt 24 --threads 1 "
                  "--dry-run"},
    {"bench", BIN " bench -m %s --batch 1 --new 2 --modes off --prompt-len 8 --prefill-len 0 --threads 1"},
    {"serve", "timeout 20 " BIN " serve -m %s --port 0 --threads 1"},
};
#define N_DEVICE_CMDS (sizeof device_cmds / sizeof *device_cmds)

/* Runs device_cmds[i] with ` --device DEV` appended; MARGINGATE_CONFIG
 * points at `cfg` so nothing reaches the user's settings. */
static cmd_result *run_device_cmd(size_t i, const char *dev, const char *model, const char *data, const char *out,
                                  const char *cfg) {
    char base[2048], cmd[4096];
    if (!strcmp(device_cmds[i][0], "flips")) snprintf(base, sizeof base, device_cmds[i][1], model, data, out);
    else if (!strcmp(device_cmds[i][0], "calibrate")) snprintf(base, sizeof base, device_cmds[i][1], model, data);
    else snprintf(base, sizeof base, device_cmds[i][1], model);
    snprintf(cmd, sizeof cmd, "MARGINGATE_CONFIG=%s %s --device %s", cfg, base, dev);
    return run_cmd(cmd);
}

static void device_paths(char *model, size_t nm, char *data, size_t nd, char *out, size_t no, char *cfg, size_t nc) {
    char dir[1024];
    MG_TEST_SHARED(dir, "models/mg-llama-27m");
    snprintf(model, nm, "%s", dir);
    MG_TEST_SHARED(dir, "datasets/gsm8k_test.jsonl");
    snprintf(data, nd, "%s", dir);
    snprintf(out, no, "/tmp/mg_cli_flips_%d", (int)getpid());
    snprintf(cfg, nc, "/tmp/mg_cli_cfg_%d.json", (int)getpid());
}

Test(cli, device_cpu_runs_and_reports_name_it) {
    char model[1024], data[1024], out[128], cfg[128];
    device_paths(model, sizeof model, data, sizeof data, out, sizeof out, cfg, sizeof cfg);
    char rm[256];
    snprintf(rm, sizeof rm, "rm -rf '%s'", out);
    cmd_result r = *run_device_cmd(1, "cpu", model, data, out, cfg); /* flips */
    int rm_rc = system(rm);
    cr_assert_eq(r.rc, 0, "%s", r.err);
    cr_assert(strstr(r.out, "flip study: ") && strstr(r.out, ", device cpu, "), "%s", r.out);
    cr_assert_eq(rm_rc, 0);
    r = *run_device_cmd(2, "cpu", model, data, out, cfg); /* calibrate */
    cr_assert_eq(r.rc, 0, "%s", r.err);
    cr_assert(strstr(r.out, "calibration on ") && strstr(r.out, ", device cpu: "), "%s", r.out);
    cr_assert_neq(access(cfg, F_OK), 0, "--dry-run must not write %s", cfg);
    r = *run_device_cmd(3, "cpu", model, data, out, cfg); /* bench */
    cr_assert_eq(r.rc, 0, "%s", r.err);
    cr_assert(strstr(r.out, "margingate bench | model ") && strstr(r.out, " | device cpu | "), "%s", r.out);
    /* --modes alone: its header names the device too. */
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             BIN " flips -m %s --dataset %s --batch 2 --limit 2 --max-new 3 --max-prompt 24 --threads 1 --out %s "
                 "--modes off --modes-only --tau 0.5 --device cpu",
             model, data, out);
    r = *run_cmd(cmd);
    rm_rc = system(rm);
    cr_assert_eq(r.rc, 0, "%s", r.err);
    cr_assert_eq(rm_rc, 0);
    cr_assert(strstr(r.out, "sequence-level determinism") && strstr(r.out, ", device cpu\n"), "%s", r.out);
    cr_assert_null(strstr(r.out, "flip study: "), "--modes-only skips the flip study: %s", r.out);
    /* generate: the JSON record and the stderr summary. */
    snprintf(cmd, sizeof cmd, BIN " generate -m %s -p hi -n 2 --device cpu --json", model);
    r = *run_cmd(cmd);
    cr_assert_eq(r.rc, 0, "%s", r.err);
    cr_assert(strstr(r.out, "\"device\":\t\"cpu\""), "%s", r.out);
    r = *run_device_cmd(0, "cpu", model, data, out, cfg);
    cr_assert_eq(r.rc, 0, "%s", r.err);
    cr_assert(strstr(r.err, "margingate: device cpu: prompt "), "%s", r.err);
}

Test(cli, device_invalid_value_rejected_by_every_subcommand) {
    char model[1024], data[1024], out[128], cfg[128];
    device_paths(model, sizeof model, data, sizeof data, out, sizeof out, cfg, sizeof cfg);
    for (size_t i = 0; i < N_DEVICE_CMDS; i++) {
        const char *name = device_cmds[i][0];
        cmd_result r = *run_device_cmd(i, "tpu", model, data, out, cfg);
        cr_assert_eq(r.rc, 2, "%s --device tpu: rc %d, %s", name, r.rc, r.err);
        char want[256];
        snprintf(want, sizeof want,
                 "margingate %s: invalid value 'tpu' for --device (expected cpu, cuda or auto)\n", name);
        cr_assert_str_eq(r.err, want, "%s", name);
        cr_assert_str_eq(r.out, "", "%s printed on stdout: %s", name, r.out);
        char help[128];
        snprintf(help, sizeof help, BIN " %s --help", name);
        r = *run_cmd(help);
        cr_assert_eq(r.rc, 0, "%s --help", name);
        cr_assert(strstr(r.out, "--device") && strstr(r.out, "auto"), "%s --help: %s", name, r.out);
    }
    cr_assert_neq(access(out, F_OK), 0, "flips must not start with a bad --device");
}

/* With --device auto, generate reports the device it picked: cuda exactly
 * when a usable GPU is present. */
static int gpu_usable(const char *model) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, BIN " generate -m %s -p hi -n 1 --device auto --json", model);
    cmd_result *r = run_cmd(cmd);
    cr_assert_eq(r->rc, 0, "%s", r->err);
    int cuda = strstr(r->out, "\"device\":\t\"cuda\"") != NULL;
    cr_assert(cuda || strstr(r->out, "\"device\":\t\"cpu\""), "auto names cpu or cuda: %s", r->out);
    return cuda;
}

Test(cli, device_cuda_without_gpu_is_a_clear_error) {
    char model[1024], data[1024], out[128], cfg[128];
    device_paths(model, sizeof model, data, sizeof data, out, sizeof out, cfg, sizeof cfg);
    if (gpu_usable(model)) cr_skip_test("a usable GPU is present: --device cuda works here");
    for (size_t i = 0; i < N_DEVICE_CMDS; i++) {
        const char *name = device_cmds[i][0];
        cmd_result r = *run_device_cmd(i, "cuda", model, data, out, cfg);
        cr_assert_eq(r.rc, 1, "%s --device cuda without a GPU: rc %d (-1 = killed by a signal), %s", name, r.rc,
                     r.err);
        char want[128];
        snprintf(want, sizeof want, "margingate %s: cannot compute on --device cuda: ", name);
        cr_assert_eq(strncmp(r.err, want, strlen(want)), 0, "%s: %s", name, r.err);
        cr_assert_gt(strlen(r.err), strlen(want) + 1, "%s: the reason is missing: %s", name, r.err);
        cr_assert_eq(strchr(r.err, '\n'), r.err + strlen(r.err) - 1, "%s: one line expected: %s", name, r.err);
        cr_assert_str_eq(r.out, "", "%s printed on stdout: %s", name, r.out);
    }
    cr_assert_neq(access(out, F_OK), 0, "flips must not start without its device");
}

/* --tensor-parallel: 2 CPU ranks run and name themselves; a bad degree is a
 * usage error; a degree the model cannot split is a one-line error. */
Test(cli, tensor_parallel_cpu_ranks_and_errors) {
    need_model();
    char model[1024], cmd[2048];
    snprintf(model, sizeof model, "%s/models/mg-llama-27m", mg_test_shared_dir());
    snprintf(cmd, sizeof cmd, BIN " generate -m %s -p hi -n 3 --device cpu --tensor-parallel 2 --json --threads 1",
             model);
    cmd_result r = *run_cmd(cmd);
    cr_assert_eq(r.rc, 0, "%s", r.err);
    cr_assert(strstr(r.out, "\"device\":\t\"cpu-tp2\""), "%s", r.out);
    cr_assert(strstr(r.out, "\"token_ids\":"), "%s", r.out);
    snprintf(cmd, sizeof cmd, BIN " generate -m %s -p hi -n 3 --device cpu --tensor-parallel 0", model);
    r = *run_cmd(cmd);
    cr_assert_eq(r.rc, 2, "%s", r.err);
    cr_assert_str_eq(r.err, "margingate generate: --tensor-parallel needs a positive integer (got '0')\n");
    snprintf(cmd, sizeof cmd, BIN " generate -m %s -p hi -n 3 --device cpu --tensor-parallel 3", model);
    r = *run_cmd(cmd);
    cr_assert_eq(r.rc, 1, "%s", r.err);
    cr_assert(strstr(r.err, "tensor parallel 3: the model's attention heads (8) do not split evenly"), "%s", r.err);
    cr_assert_null(strchr(strchr(r.err, '\n') + 1, '\n'), "one line: %s", r.err);
    /* flips, calibrate and bench on 2 ranks name the split device. */
    char data[1024], out[128], cfg[128], rm[256];
    device_paths(model, sizeof model, data, sizeof data, out, sizeof out, cfg, sizeof cfg);
    snprintf(rm, sizeof rm, "rm -rf '%s'", out);
    r = *run_device_cmd(1, "cpu --tensor-parallel 2", model, data, out, cfg); /* flips */
    int rm_rc = system(rm);
    cr_assert_eq(r.rc, 0, "%s", r.err);
    cr_assert_eq(rm_rc, 0);
    cr_assert(strstr(r.out, ", device cpu-tp2, "), "%s", r.out);
    r = *run_device_cmd(2, "cpu --tensor-parallel 2", model, data, out, cfg); /* calibrate */
    cr_assert_eq(r.rc, 0, "%s", r.err);
    cr_assert(strstr(r.out, ", device cpu-tp2: "), "%s", r.out);
    r = *run_device_cmd(3, "cpu --tensor-parallel 2", model, data, out, cfg); /* bench */
    cr_assert_eq(r.rc, 0, "%s", r.err);
    cr_assert(strstr(r.out, " | device cpu-tp2 | "), "%s", r.out);
}

/* calibrate --sequences checks tau end to end and reports each try. */
Test(cli, calibrate_sequences_reports_agreement) {
    char model[1024], data[1024], out[128], cfg[128], cmd[4096];
    device_paths(model, sizeof model, data, sizeof data, out, sizeof out, cfg, sizeof cfg);
    snprintf(cmd, sizeof cmd,
             "MARGINGATE_CONFIG=%s " BIN " calibrate -m %s --dataset %s --batch 3 --limit 3 --max-new 6 "
             "--max-prompt 24 --threads 1 --dry-run --sequences --device cpu",
             cfg, model, data);
    cmd_result r = *run_cmd(cmd);
    cr_assert_eq(r.rc, 0, "%s", r.err);
    cr_assert(strstr(r.out, " of 3 sequences identical alone and in batches of 3; "), "%s", r.out);
    cr_assert(strstr(r.out, "every sequence matches") || strstr(r.out, "no tau up to"), "%s", r.out);
    cr_assert_neq(access(cfg, F_OK), 0, "--dry-run must not write %s", cfg);
}
