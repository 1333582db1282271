/* Running build/margingate from tests: stdout, stderr and the exit code. */
#ifndef MG_TEST_CLI_HELPERS_H
#define MG_TEST_CLI_HELPERS_H

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define BIN "./build/margingate"

typedef struct {
    int rc;
    char out[65536];
    char err[8192];
} cmd_result;

/* Runs `cmdline` through sh, capturing stdout and stderr. The result lives
 * in a static buffer until the next call. */
static inline cmd_result *run_cmd(const char *cmdline) {
    static cmd_result r;
    memset(&r, 0, sizeof r);
    char full[8192], path[64];
    snprintf(path, sizeof path, "/tmp/mg_cli_err_%d", (int)getpid());
    snprintf(full, sizeof full, "%s 2>%s", cmdline, path);
    FILE *p = popen(full, "r");
    cr_assert_not_null(p);
    size_t n = fread(r.out, 1, sizeof r.out - 1, p);
    r.out[n] = '\0';
    int st = pclose(p);
    r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    FILE *e = fopen(path, "r");
    if (e) {
        n = fread(r.err, 1, sizeof r.err - 1, e);
        r.err[n] = '\0';
        fclose(e);
        remove(path);
    }
    return &r;
}

#endif
