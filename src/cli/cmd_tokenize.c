/* margingate tokenize / detokenize. */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "../engine/model_dir.h"
#include "cli.h"

static void tokenize_usage(FILE *f) {
    fprintf(f, "usage: margingate tokenize [-m MODEL] [--special] [--json] TEXT\n"
               "  --special  apply the tokenizer's post-processor (e.g. prepend BOS)\n"
               "  --json     print [{\"id\": ID, \"token\": STRING}, ...]\n");
}

int cmd_tokenize(int argc, char **argv) {
    static const struct option opts[] = {{"model", required_argument, 0, 'm'}, {"special", no_argument, 0, 's'},
                                         {"json", no_argument, 0, 'j'},        {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *model = NULL;
    int special = 0, json = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 's': special = 1; break;
        case 'j': json = 1; break;
        case 'h': tokenize_usage(stdout); return 0;
        default: tokenize_usage(stderr); return 2;
        }
    }
    if (optind != argc - 1) {
        tokenize_usage(stderr);
        return 2;
    }
    const char *text = argv[optind];
    model = cli_model_path(model);
    if (cli_model_missing("tokenize", model)) return 1;
    mg_tokenizer *tok;
    if (mg_open_tokenizer(model, &tok) != MG_OK) return cli_fail("tokenize", "cannot load the tokenizer");
    int32_t *ids;
    size_t n;
    if (mg_tokenizer_encode(tok, text, strlen(text), special, &ids, &n) != MG_OK) {
        mg_tokenizer_free(tok);
        return cli_fail("tokenize", "cannot tokenize the text");
    }
    if (json) {
        cJSON *arr = cJSON_CreateArray();
        for (size_t i = 0; i < n; i++) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddNumberToObject(o, "id", ids[i]);
            const char *s = mg_tokenizer_token_str(tok, ids[i]);
            cJSON_AddStringToObject(o, "token", s ? s : "");
            cJSON_AddItemToArray(arr, o);
        }
        char *out = cJSON_PrintUnformatted(arr);
        printf("%s\n", out);
        free(out);
        cJSON_Delete(arr);
    } else {
        for (size_t i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
        printf("\n");
    }
    free(ids);
    mg_tokenizer_free(tok);
    return 0;
}

static void detokenize_usage(FILE *f) { fprintf(f, "usage: margingate detokenize [-m MODEL] ID...\n"); }

int cmd_detokenize(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *model = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'h': detokenize_usage(stdout); return 0;
        default: detokenize_usage(stderr); return 2;
        }
    }
    int n = argc - optind;
    if (n < 1) {
        detokenize_usage(stderr);
        return 2;
    }
    int32_t *ids = malloc((size_t)n * sizeof(int32_t));
    if (!ids) return 1;
    for (int i = 0; i < n; i++) {
        int v;
        if (cli_parse_int(argv[optind + i], &v) != 0) {
            fprintf(stderr, "margingate detokenize: '%s' is not a token id\n", argv[optind + i]);
            free(ids);
            return 2;
        }
        ids[i] = v;
    }
    model = cli_model_path(model);
    if (cli_model_missing("detokenize", model)) {
        free(ids);
        return 1;
    }
    mg_tokenizer *tok;
    if (mg_open_tokenizer(model, &tok) != MG_OK) {
        free(ids);
        return cli_fail("detokenize", "cannot load the tokenizer");
    }
    char *text;
    mg_status st = mg_tokenizer_decode(tok, ids, (size_t)n, 0, &text);
    free(ids);
    mg_tokenizer_free(tok);
    if (st != MG_OK) return cli_fail("detokenize", "cannot decode");
    printf("%s\n", text);
    free(text);
    return 0;
}
