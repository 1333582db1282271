/* The margingate command as a user runs it: outputs, exit codes and the
 * one-line errors for bad input (missing model, non-UTF-8 prompt, prompt
 * longer than the context, bad flags). Runs build/margingate. */
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
