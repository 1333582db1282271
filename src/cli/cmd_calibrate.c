/* margingate calibrate: chooses MarginGate's tau from a flip study and
 * writes it to the user's settings. */
#include <getopt.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "../engine/model_dir.h"
#include "../study/calibration.h"
#include "../study/mode_study.h"
#include "cli.h"

#define SEQ_DOUBLINGS 6

static void usage(FILE *f) {
    fprintf(f,
            "usage: margingate calibrate [-m MODEL] [--dataset NAME|FILE] [options]\n"
            "  --dataset D     calibration prompts (default math500)\n"
            "  --batch B       batch of the flip study (default 32)\n"
            "  --max-new N     tokens per prompt (default 128)\n"
            "  --limit K       prompts (default 64)\n"
            "  --max-prompt T  cut prompts to T tokens (default 256)\n"
            "  --dry-run       print tau without writing the settings file\n"
            "  --sequences     then check it end to end: margingate decodes the prompts alone\n"
            "                  and in batches; tau doubles (at most %d times) until every\n"
            "                  sequence matches its solo run\n"
            "  --device D      cpu, cuda or auto: where to compute (default auto: cuda when a\n"
            "                  GPU is present, else cpu)\n"
            "  --tensor-parallel N  split the model over N GPUs (NCCL; with --device cpu: N\n"
            "                       CPU ranks, for tests)\n"
            "  --threads N     OpenMP threads\n"
            "tau = %.1f x the largest batched margin at an observed flip, at least %.3g; it is written to\n"
            "$MARGINGATE_CONFIG or ~/.config/margingate/calibration.json, keyed by the model's path.\n",
            SEQ_DOUBLINGS, MG_TAU_SAFETY, MG_TAU_FLOOR);
}

/* Raises *tau (doubling, at most SEQ_DOUBLINGS times) until margingate's
 * outputs in batches equal its solo outputs for every prompt of the study.
 * The flip study's margins are lockstep figures; in free decoding the fast
 * path's K/V of unverified steps differ between solo and batch, so flips can
 * sit at larger margins. Returns 1 when some tau reached every prompt. */
static int raise_until_sequences_agree(const mg_model *model, const mg_backend_ops *backend, const mg_dataset *d,
                                       const mg_flip_opts *fo, float *tau, mg_status *st) {
    mg_engine_config cfg = mg_engine_config_default();
    cfg.precision = fo->precision;
    cfg.max_running = fo->batch;
    for (int k = 0; k <= SEQ_DOUBLINGS; k++, *tau *= 2.0f) {
        cfg.margingate_tau = *tau;
        mg_mode_result m;
        *st = mg_mode_study(model, backend, d, fo->n_probes, fo->batch, fo->max_new, MG_MODE_MARGINGATE, &cfg, &m);
        if (*st != MG_OK) return 0;
        const double verified = m.batched.steps ? 100.0 * m.batched.verified_steps / m.batched.steps : 0;
        printf("tau %.6g: %d of %d sequences identical alone and in batches of %d; %.2f%% of batched decode "
               "steps verified\n",
               *tau, m.identical, m.n_prompts, fo->batch, verified);
        fflush(stdout);
        if (m.identical == m.n_prompts) return 1;
    }
    *tau /= 2.0f; /* the last one tried */
    return 0;
}

int cmd_calibrate(int argc, char **argv) {
    enum { O_DATASET = 256, O_BATCH, O_NEW, O_LIMIT, O_MAXP, O_DRY, O_THREADS, O_DEVICE, O_TP, O_SEQ };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},     {"dataset", required_argument, 0, O_DATASET},
        {"batch", required_argument, 0, O_BATCH}, {"max-new", required_argument, 0, O_NEW},
        {"limit", required_argument, 0, O_LIMIT}, {"max-prompt", required_argument, 0, O_MAXP},
        {"dry-run", no_argument, 0, O_DRY},       {"threads", required_argument, 0, O_THREADS},
        {"device", required_argument, 0, O_DEVICE},
        {"tensor-parallel", required_argument, 0, O_TP},
        {"sequences", no_argument, 0, O_SEQ},
        {"help", no_argument, 0, 'h'},            {0, 0, 0, 0}};
    const char *model_flag = NULL, *dataset = "math500", *device = "auto";
    int tensor_parallel = 1;
    mg_flip_opts fo = {.batch = 32, .max_new = 128, .n_probes = 64, .precision = MG_ACT_BF16};
    int max_prompt = 256, dry = 0, threads = 0, sequences = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:h", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case 'm': model_flag = optarg; break;
        case O_DATASET: dataset = optarg; break;
        case O_BATCH: bad = cli_parse_int(optarg, &fo.batch) || fo.batch < 1 || fo.batch > 1024; break;
        case O_NEW: bad = cli_parse_int(optarg, &fo.max_new) || fo.max_new < 2; break;
        case O_LIMIT: bad = cli_parse_int(optarg, &fo.n_probes) || fo.n_probes < 1; break;
        case O_MAXP: bad = cli_parse_int(optarg, &max_prompt) || max_prompt < 1; break;
        case O_DRY: dry = 1; break;
        case O_SEQ: sequences = 1; break;
        case O_THREADS: bad = cli_parse_int(optarg, &threads) || threads < 1; break;
        case O_DEVICE: device = optarg; break;
        case O_TP:
            if (cli_parse_tensor_parallel("calibrate", optarg, &tensor_parallel)) return 2;
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
        if (bad) {
            fprintf(stderr, "margingate calibrate: invalid value '%s' for %s\n", optarg, argv[optind - 1]);
            return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }
    const mg_backend_ops *backend;
    int dev_rc = cli_backend("calibrate", device, tensor_parallel, &backend);
    if (dev_rc) return dev_rc;
    cli_set_threads(threads);
    const char *model_path = cli_model_path(model_flag);
    mg_model *model;
    mg_tokenizer *tok;
    mg_model_format fmt;
    if (cli_open_model("calibrate", model_path, &model, &tok, &fmt)) return 1;
    int rc = 1;
    mg_dataset d;
    mg_flip_report r;
    int need = fo.n_probes > fo.batch ? fo.n_probes : fo.batch;
    if (mg_dataset_load(dataset, tok, need, max_prompt, &d) != MG_OK) {
        cli_fail("calibrate", "cannot load the dataset");
        goto done_model;
    }
    if (fo.n_probes > d.n) fo.n_probes = d.n;
    if (fo.batch > d.n) fo.batch = d.n;
    if (mg_flip_study(model, backend, &d, &fo, &r) != MG_OK) {
        cli_fail("calibrate", "flip study failed");
        goto done_data;
    }
    mg_calibration cal = mg_calibrate(&r);
    printf("calibration on %s, device %s: %d prompts, batch %d, %d new tokens: %ld synchronous steps, %d flips\n",
           dataset, backend->name, fo.n_probes, fo.batch, fo.max_new, cal.n_steps, cal.n_flips);
    printf("largest batched margin at a flip: %.6g\n", cal.min_catching);
    printf("tau = max(%.1f x %.6g, %.3g) = %.6g\n", MG_TAU_SAFETY, cal.min_catching, MG_TAU_FLOOR, cal.tau);
    printf("expected trigger rate on %s: %.2f%% of decode steps\n", dataset, 100.0 * cal.trigger_rate);
    if (sequences) {
        mg_status st;
        const float flip_tau = cal.tau;
        const int agreed = raise_until_sequences_agree(model, backend, &d, &fo, &cal.tau, &st);
        if (st != MG_OK) {
            cli_fail("calibrate", "sequence check failed");
            goto done_report;
        }
        if (agreed)
            printf("tau = %.6g: every sequence matches (%.6g from the flip study)\n", cal.tau, flip_tau);
        else
            printf("no tau up to %.6g made every sequence match; keeping %.6g (verify every step with "
                   "margingate-always for certainty)\n",
                   cal.tau, cal.tau);
        cal.trigger_rate = mg_trigger_rate(&r, cal.tau);
    }
    if (!dry) {
        char path[PATH_MAX];
        if (mg_calibration_save(model_path, dataset, &cal) != MG_OK || mg_settings_path(path, sizeof path) != MG_OK) {
            cli_fail("calibrate", "cannot write the settings");
            goto done_report;
        }
        printf("written to %s\n", path);
    }
    rc = 0;
done_report:
    mg_flip_report_free(&r);
done_data:
    mg_dataset_free(&d);
done_model:
    mg_model_free(model);
    mg_tokenizer_free(tok);
    return rc;
}
