/* Datasets, the flip study, calibration and the mode study. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../src/engine/model_dir.h"
#include "../src/study/calibration.h"
#include "../src/study/mode_study.h"
#include "shared_path.h"

static void open_small(mg_model **m, mg_tokenizer **t) {
    char dir[1024], ds[1024];
    MG_TEST_SHARED(dir, "models/mg-llama-27m");
    MG_TEST_SHARED(ds, "datasets");
    setenv("MARGINGATE_DATASETS", ds, 1);
    mg_model_format f;
    cr_assert_eq(mg_open_model(dir, m, t, &f), MG_OK, "%s", mg_error_last());
}

Test(dataset, the_four_sets_load_and_format) {
    mg_model *m;
    mg_tokenizer *t;
    open_small(&m, &t);
    const char *names[] = {"gsm8k", "math500", "humaneval", "sharegpt"};
    for (int i = 0; i < 4; i++) {
        mg_dataset d;
        cr_assert_eq(mg_dataset_load(names[i], t, 5, 64, &d), MG_OK, "%s: %s", names[i], mg_error_last());
        cr_assert_eq(d.n, 5, "%s", names[i]);
        for (int k = 0; k < d.n; k++) {
            cr_assert(d.n_ids[k] > 1 && d.n_ids[k] <= 64);
            cr_assert_eq(d.ids[k][0], 0, "%s prompt %d must start with BOS", names[i], k);
        }
        if (i == 0) { /* "Question: ...\nAnswer:" as in golden.json */
            char *text;
            cr_assert_eq(mg_tokenizer_decode(t, d.ids[0], (size_t)d.n_ids[0], 1, &text), MG_OK);
            cr_assert_eq(strncmp(text, "Question: Janet", 15), 0, "%s", text);
            free(text);
        }
        mg_dataset_free(&d);
    }
    mg_dataset d;
    cr_assert_eq(mg_dataset_load("no-such-set", t, 5, 64, &d), MG_ERR_ARG);
    FILE *f = fopen("/tmp/mg_bad_dataset.jsonl", "w");
    fputs("{\"prompt\": \"ok\"}\n{not json\n", f);
    fclose(f);
    cr_assert_eq(mg_dataset_load("/tmp/mg_bad_dataset.jsonl", t, 5, 64, &d), MG_ERR_FORMAT);
    f = fopen("/tmp/mg_bad_dataset.jsonl", "w");
    fputs("{\"prompt\": \"def f(x):\"}\n{\"question\": \"2+2?\"}\n{\"other\": 1}\n", f);
    fclose(f);
    cr_assert_eq(mg_dataset_load("/tmp/mg_bad_dataset.jsonl", t, 0, 64, &d), MG_OK, "%s", mg_error_last());
    cr_assert_eq(d.n, 2, "the record without a prompt is skipped");
    mg_dataset_free(&d);
    remove("/tmp/mg_bad_dataset.jsonl");
    mg_tokenizer_free(t);
    mg_model_free(m);
}

/* The report is self-consistent, and the calibrated tau catches every flip. */
Test(flip_study, report_and_calibration) {
    mg_model *m;
    mg_tokenizer *t;
    open_small(&m, &t);
    mg_dataset d;
    cr_assert_eq(mg_dataset_load("gsm8k", t, 8, 48, &d), MG_OK);
    mg_flip_opts o = {.batch = 8, .max_new = 20, .n_probes = 8, .precision = MG_ACT_BF16};
    mg_flip_report r;
    cr_assert_eq(mg_flip_study(m, mg_backend_cpu(), &d, &o, &r), MG_OK, "%s", mg_error_last());
    cr_assert_geq(r.n_steps, 8);
    cr_assert_leq(r.n_steps, 8 * 20);
    int flips = 0, per_prompt[8] = {0};
    for (long i = 0; i < r.n_steps; i++) {
        const mg_flip_step *s = &r.steps[i];
        cr_assert_eq(s->flip, s->solo_token != s->batch_token);
        cr_assert_eq(per_prompt[s->prompt], 0, "prompt %d has steps after its first flip", s->prompt);
        if (s->flip) flips++, per_prompt[s->prompt] = 1;
        if (s->step == 0) cr_assert_eq(s->kv_rel, 0.0f, "prefill is identical in both runs");
        cr_assert(s->solo_margin >= 0 && s->batch_margin >= 0);
    }
    cr_assert_eq(flips, r.n_flips);
    cr_assert_eq(r.seq_diverged, r.n_flips, "a prompt diverges exactly when it flips within max_new");
    mg_calibration c = mg_calibrate(&r);
    cr_assert_geq(c.tau, MG_TAU_FLOOR);
    for (int i = 0; i < r.n_flips; i++)
        cr_assert_lt(r.flips[i].batch_margin, c.tau, "flip %d (margin %g) not caught by tau %g", i,
                     r.flips[i].batch_margin, c.tau);
    cr_assert_float_eq(c.trigger_rate, mg_trigger_rate(&r, c.tau), 1e-6);
    /* Settings round trip, outside the model directory. */
    char cfg[] = "/tmp/mg_cal_XXXXXX";
    cr_assert_not_null(mkdtemp(cfg));
    char path[1100];
    snprintf(path, sizeof path, "%s/sub/calibration.json", cfg);
    setenv("MARGINGATE_CONFIG", path, 1);
    char model_dir[1024];
    MG_TEST_SHARED(model_dir, "models/mg-llama-27m");
    cr_assert_eq(mg_calibration_save(model_dir, "gsm8k", &c), MG_OK, "%s", mg_error_last());
    float tau = -1;
    cr_assert_eq(mg_calibration_load(model_dir, &tau), MG_OK, "%s", mg_error_last());
    cr_assert_float_eq(tau, c.tau, 1e-6);
    cr_assert_neq(mg_calibration_load("/tmp", &tau), MG_OK, "another model has no entry");
    FILE *f = fopen(path, "w");
    fputs("[1, 2", f);
    fclose(f);
    cr_assert_eq(mg_calibration_load(model_dir, &tau), MG_ERR_FORMAT, "a corrupt settings file is reported");
    remove(path);
    unsetenv("MARGINGATE_CONFIG");
    mg_flip_report_free(&r);
    mg_dataset_free(&d);
    mg_tokenizer_free(t);
    mg_model_free(m);
}

Test(mode_study, invariant_is_fully_deterministic) {
    mg_model *m;
    mg_tokenizer *t;
    open_small(&m, &t);
    mg_dataset d;
    cr_assert_eq(mg_dataset_load("humaneval", t, 6, 48, &d), MG_OK);
    mg_engine_config cfg = mg_engine_config_default();
    cfg.kv_bytes = (size_t)32 << 20;
    mg_mode_result r;
    cr_assert_eq(mg_mode_study(m, mg_backend_cpu(), &d, 4, 6, 12, MG_MODE_INVARIANT, &cfg, &r), MG_OK, "%s",
                 mg_error_last());
    cr_assert_eq(r.n_prompts, 4);
    cr_assert_eq(r.identical, 4);
    cr_assert_eq(r.generated, 6 * 12);
    mg_dataset_free(&d);
    mg_tokenizer_free(t);
    mg_model_free(m);
}
