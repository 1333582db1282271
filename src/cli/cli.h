/* Shared pieces of the margingate command: subcommand entry points and the
 * model-path rule every subcommand follows. */
#ifndef MG_CLI_H
#define MG_CLI_H

#include <stdio.h>

#include "../backend/backend.h"
#include "../engine/model_dir.h"

#define MG_DEFAULT_MODEL "../shared/models/mg-llama-27m"

/* Each subcommand: argv[0] is the subcommand name. Returns the exit code. */
int cmd_generate(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_bench_serve(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_flips(int argc, char **argv);
int cmd_calibrate(int argc, char **argv);

/* The model path to use: `flag` (from -m) if given, else $MARGINGATE_MODEL,
 * else MG_DEFAULT_MODEL; announces on stderr when not given with -m. */
const char *cli_model_path(const char *flag);

/* Prints "margingate <cmd>: <what>: <mg_error_last()>" on stderr; returns 1. */
int cli_fail(const char *cmd, const char *what);

/* Hint printed when the model path does not exist. Returns 1. */
int cli_model_missing(const char *cmd, const char *path);

/* Opens the model and tokenizer at `path` (mg_open_model). Returns 0, or 1
 * after printing why not: the missing-path hint (cli_model_missing) or
 * "margingate <cmd>: cannot load the model: <error>". */
int cli_open_model(const char *cmd, const char *path, mg_model **model, mg_tokenizer **tok, mg_model_format *format);

/* --threads N > 0: exactly N OpenMP threads (dynamic adjustment off);
 * 0 leaves OpenMP's default. */
void cli_set_threads(int threads);

/* MarginGate's tau for the model at `model_path` when no --tau was given:
 * the value `margingate calibrate` stored in the user's settings, else
 * `fallback`. Says on stderr which one it uses. */
float cli_default_tau(const char *model_path, float fallback);

/* The backend for a --device value, the one rule of every subcommand that
 * computes: "cpu", "cuda", or "auto" (cuda when a usable GPU is present,
 * else cpu; also what a NULL `device` means). Returns 0 with *out set; 2
 * after printing "margingate <cmd>: invalid value 'X' for --device
 * (expected cpu, cuda or auto)" on stderr; 1 after printing why the device
 * cannot be used (e.g. --device cuda without a GPU, or in a build without
 * CUDA). Initialises the CUDA backend when it picks or tries it.
 * tensor_parallel > 1 splits the model over that many ranks of the device
 * (mg_backend_select). */
int cli_backend(const char *cmd, const char *device, int tensor_parallel, const mg_backend_ops **out);

/* The --tensor-parallel value: a positive integer into *out and 0, else 2
 * after printing "margingate <cmd>: --tensor-parallel needs a positive
 * integer (got 'X')" on stderr. */
int cli_parse_tensor_parallel(const char *cmd, const char *s, int *out);

/* "fast" or "invariant" into *out; returns 0 on success. */
int cli_parse_kernels(const char *s, mg_kernels *out);

/* Parses a whole string as an int / float / uint64; returns 0 on success. */
int cli_parse_int(const char *s, int *out);
int cli_parse_float(const char *s, float *out);
int cli_parse_u64(const char *s, unsigned long long *out);

#endif
