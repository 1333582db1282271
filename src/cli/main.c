/* margingate: deterministic LLM inference. Dispatches to subcommands. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: margingate <command> [options]\n"
            "\n"
            "commands:\n"
            "  generate    generate a continuation of a prompt\n"
            "  tokenize    print the token ids of a text\n"
            "  detokenize  print the text of token ids\n"
            "  serve       OpenAI-compatible HTTP server with per-request determinism\n"
            "  bench-serve load benchmark client for a running server\n"
            "  bench       latency and throughput of each determinism mode\n"
            "  flips       solo-vs-batch flip study (and per-mode determinism with --modes)\n"
            "  calibrate   choose MarginGate's margin threshold tau from a flip study\n"
            "\n"
            "Run `margingate <command> --help` for a command's options.\n"
            "Without -m, commands use $MARGINGATE_MODEL or %s.\n",
            MG_DEFAULT_MODEL);
}

int main(int argc, char **argv) {
    /* Let OpenMP use fewer threads when other processes keep the cores busy:
     * spinning threads waiting for a descheduled peer at every op's barrier
     * made decode 70x slower on a loaded 2-core machine. --threads N (and
     * OMP_DYNAMIC) override this. */
    if (!getenv("OMP_DYNAMIC")) omp_set_dynamic(1);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "generate")) return cmd_generate(argc - 1, argv + 1);
    if (!strcmp(cmd, "tokenize")) return cmd_tokenize(argc - 1, argv + 1);
    if (!strcmp(cmd, "detokenize")) return cmd_detokenize(argc - 1, argv + 1);
    if (!strcmp(cmd, "serve")) return cmd_serve(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench-serve")) return cmd_bench_serve(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench")) return cmd_bench(argc - 1, argv + 1);
    if (!strcmp(cmd, "flips")) return cmd_flips(argc - 1, argv + 1);
    if (!strcmp(cmd, "calibrate")) return cmd_calibrate(argc - 1, argv + 1);
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "margingate: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
