/* Evaluation prompt sets for the flip study, calibration and benchmarks:
 * GSM8K test, MATH500, HumanEval and ShareGPT first turns (from
 * ../shared/datasets), or a user's JSON / JSONL file. Prompts are formatted
 * the way mg-llama-27m saw such text in training (see its golden.json):
 *   gsm8k     "Question: {question}\nAnswer:"
 *   math500   "Problem: {problem}\nSolution:"
 *   humaneval "{prompt}" unchanged
 *   sharegpt  the first human turn through the model's chat template
 * A user file is JSONL or a JSON array; each record's "prompt", "question",
 * "problem", "text" or first "conversations" human turn is used as is (a
 * conversation turn goes through the chat template). */
#ifndef MG_DATASET_H
#define MG_DATASET_H

#include <stddef.h>
#include <stdint.h>

#include "../tokenizer/tokenizer.h"
#include "../util/status.h"

typedef struct {
    char *name;       /* "gsm8k", ..., or the file name */
    int n;            /* number of prompts */
    int32_t **ids;    /* (n) token ids of each prompt, BOS included */
    int *n_ids;       /* (n) */
} mg_dataset;

/* Directory holding the shared datasets: $MARGINGATE_DATASETS or
 * "../shared/datasets". */
const char *mg_dataset_dir(void);

/* Loads up to `limit` prompts (limit <= 0: all) of dataset `name_or_file`,
 * tokenized with `tok`; prompts longer than `max_tokens` ids are cut to their
 * first max_tokens ids. Returns MG_ERR_IO / MG_ERR_FORMAT with a message
 * naming the file, or MG_ERR_ARG for an unknown name that is not a file. */
mg_status mg_dataset_load(const char *name_or_file, const mg_tokenizer *tok, int limit, int max_tokens,
                          mg_dataset *out);

void mg_dataset_free(mg_dataset *d);

#endif
