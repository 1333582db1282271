/* margingate flips: the solo-vs-batch flip study, and (with --modes) the
 * sequence-level determinism of each mode on the same prompts. */
#include <getopt.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "../engine/model_dir.h"
#include "../study/calibration.h"
#include "../study/mode_study.h"
#include "cli.h"

static const char *all_datasets[] = {"gsm8k", "math500", "humaneval", "sharegpt"};

static void usage(FILE *f) {
    fprintf(f,
            "usage: margingate flips [-m MODEL] --dataset NAME|FILE|all [options]\n"
            "  --dataset D     gsm8k, math500, humaneval, sharegpt, all, or a JSON/JSONL file\n"
            "  --batch B       rows decoded together (default 32)\n"
            "  --max-new N     tokens generated per prompt (default 128)\n"
            "  --limit K       prompts measured per dataset (default 24)\n"
            "  --max-prompt T  cut prompts to T tokens (default 256)\n"
            "  --out DIR       CSV files and PNG plots (default flips-out)\n"
            "  --modes LIST    also measure sequence-level determinism of these modes\n"
            "                  (comma list of off,invariant,llm42,margingate,margingate-always)\n"
            "  --modes-only    skip the flip study, run only the --modes comparison\n"
            "  --tau T         MarginGate threshold (default: calibrated value, else 0.5)\n"
            "  --llm42-window W, --llm42-group B   LLM-42 settings (default 64, 8)\n"
            "  --fp32          FP32 activations (default BF16)\n"
            "  --device D      cpu, cuda or auto: where to compute (default auto: cuda when a\n"
            "                  GPU is present, else cpu)\n"
            "  --tensor-parallel N  split the model over N GPUs (NCCL; with --device cpu: N\n"
            "                       CPU ranks, for tests)\n"
            "  --threads N     OpenMP threads\n");
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Median of n floats (sorts a copy). */
static float median(const float *v, long n) {
    if (n == 0) return NAN;
    float *c = malloc((size_t)n * sizeof(float));
    if (!c) return NAN;
    memcpy(c, v, (size_t)n * sizeof(float));
    qsort(c, (size_t)n, sizeof(float), cmp_float);
    float m = c[n / 2];
    free(c);
    return m;
}

/* Appends this dataset's steps and flips to the CSV files. */
static void write_csv(const char *dir, const char *dataset, int batch, const mg_flip_report *r, int first) {
    char path[4096];
    snprintf(path, sizeof path, "%s/flips_steps.csv", dir);
    FILE *f = fopen(path, first ? "w" : "a");
    if (f) {
        if (first) fprintf(f, "dataset,batch,prompt,step,solo_token,batch_token,solo_margin,batch_margin,flip,kv_rel\n");
        for (long i = 0; i < r->n_steps; i++) {
            const mg_flip_step *s = &r->steps[i];
            fprintf(f, "%s,%d,%d,%d,%d,%d,%.6g,%.6g,%d,%.6g\n", dataset, batch, s->prompt, s->step, s->solo_token,
                    s->batch_token, s->solo_margin, s->batch_margin, s->flip, s->kv_rel);
        }
        fclose(f);
    }
    snprintf(path, sizeof path, "%s/flips_events.csv", dir);
    f = fopen(path, first ? "w" : "a");
    if (!f) return;
    if (first) {
        fprintf(f, "dataset,batch,prompt,step,solo_margin,batch_margin");
        for (int k = MG_FLIP_TRACE; k >= 1; k--) fprintf(f, ",kv_rel_t-%d", k);
        for (int l = 0; l < r->n_layers; l++) fprintf(f, ",kv_rel_layer%d", l);
        fprintf(f, "\n");
    }
    for (int i = 0; i < r->n_flips; i++) {
        const mg_flip_event *e = &r->flips[i];
        fprintf(f, "%s,%d,%d,%d,%.6g,%.6g", dataset, batch, e->prompt, e->step, e->solo_margin, e->batch_margin);
        for (int k = 0; k < MG_FLIP_TRACE; k++) fprintf(f, ",%.6g", e->trace[k]);
        for (int l = 0; l < r->n_layers; l++) fprintf(f, ",%.6g", e->layers ? e->layers[l] : NAN);
        fprintf(f, "\n");
    }
    fclose(f);
}

/* Writes DIR/flips_plots.gp and runs gnuplot on it, when it is installed. */
static void plot(const char *dir, long n_steps, long n_flips) {
    char path[4096];
    snprintf(path, sizeof path, "%s/flips_plots.gp", dir);
    FILE *f = fopen(path, "w");
    if (!f) return;
    fprintf(f, "# Plots of margingate flips' CSV files: gnuplot flips_plots.gp\nN = %ld\nF = %ld\n", n_steps, n_flips);
    fputs(
          "set terminal pngcairo size 900,500\n"
          "set datafile separator ','\n"
          "set output 'flips_margins.png'\n"
          "set title 'Top-1/top-2 margin of the batched run: all synchronous steps vs flips'\n"
          "set xlabel 'log10(margin + 1e-4)'\nset ylabel 'fraction of steps'\n"
          "set style fill transparent solid 0.5\n"
          "bw = 0.1\nbin(x) = bw * floor(x / bw)\n"
          "plot 'flips_steps.csv' every ::1 using (bin(log10($8 + 1e-4))):(1.0 / N) smooth frequency with boxes "
          "title 'all steps'",
          f);
    if (n_flips > 0)
        fputs(", \\\n     '' every ::1 using (bin(log10($8 + 1e-4))):($9 == 1 ? 1.0 / F : 0) smooth frequency "
              "with boxes title 'flips'",
              f);
    fputs("\n", f);
    if (n_flips > 0)
        fputs("set output 'flips_kv.png'\n"
          "set title 'K/V perturbation before each flip (relative L2, mean over layers)'\n"
          "set xlabel 'steps before the flip'\nset ylabel 'relative difference solo vs batched'\n"
          "set logscale y\n"
          "plot for [k=7:22] 'flips_events.csv' every ::1 using (k - 23):k with points pt 7 ps 0.6 "
          "lc rgb '#4060c0' notitle\n",
              f);
    fclose(f);
    if (system("command -v gnuplot >/dev/null 2>&1") != 0) {
        printf("(gnuplot not found: no PNG plots; %s draws them from the CSV files)\n", path);
        return;
    }
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "cd '%s' && gnuplot flips_plots.gp >/dev/null 2>&1", dir);
    if (system(cmd) == 0)
        printf("plots: %s/flips_margins.png%s%s%s\n", dir, n_flips ? ", " : "", n_flips ? dir : "",
               n_flips ? "/flips_kv.png" : " (no flips: no K/V plot)");
    else printf("(gnuplot failed on %s; the CSV files have the data)\n", path);
}

/* One dataset: the off-path flip study, its table row and CSV. */
static int study_dataset(const char *name, const mg_model *model, const mg_backend_ops *backend,
                         const mg_tokenizer *tok, const mg_flip_opts *fo, int max_prompt, const char *out_dir,
                         int first, mg_dataset *d_out, mg_flip_report *r) {
    int need = fo->n_probes > fo->batch ? fo->n_probes : fo->batch;
    if (mg_dataset_load(name, tok, need, max_prompt, d_out) != MG_OK) return cli_fail("flips", "cannot load the dataset");
    mg_flip_opts o = *fo;
    if (o.n_probes > d_out->n) o.n_probes = d_out->n;
    if (o.batch > d_out->n) {
        fprintf(stderr, "margingate flips: %s has only %d prompts, fewer than the batch of %d\n", name, d_out->n, o.batch);
        return 1;
    }
    if (mg_flip_study(model, backend, d_out, &o, r) != MG_OK) return cli_fail("flips", "study failed");
    float *m = malloc((size_t)(r->n_steps + 1) * sizeof(float));
    float *fm = malloc((size_t)(r->n_flips + 1) * sizeof(float));
    double before = 0, at = 0;
    int nb = 0;
    for (long i = 0; i < r->n_steps; i++) m[i] = r->steps[i].batch_margin;
    float fmax = 0;
    for (int i = 0; i < r->n_flips; i++) {
        fm[i] = r->flips[i].batch_margin;
        if (fm[i] > fmax) fmax = fm[i];
        for (int k = 0; k < MG_FLIP_TRACE; k++)
            if (!isnan(r->flips[i].trace[k])) before += r->flips[i].trace[k], nb++;
        for (long s = 0; s < r->n_steps; s++)
            if (r->steps[s].prompt == r->flips[i].prompt && r->steps[s].step == r->flips[i].step) at += r->steps[s].kv_rel;
    }
    printf("%-10s %5d %6d %8ld %6d %8.3f%% %7d/%-4d %9.4f %9.4f %9.4f %10.2e %10.2e\n", name, o.batch, o.n_probes,
           r->n_steps, r->n_flips, r->n_steps ? 100.0 * r->n_flips / r->n_steps : 0.0, r->seq_diverged, o.n_probes,
           median(m, r->n_steps), r->n_flips ? median(fm, r->n_flips) : NAN, r->n_flips ? fmax : NAN,
           nb ? before / nb : NAN, r->n_flips ? at / r->n_flips : NAN);
    fflush(stdout);
    free(m);
    free(fm);
    write_csv(out_dir, name, o.batch, r, first);
    return 0;
}

int cmd_flips(int argc, char **argv) {
    enum { O_BATCH = 256, O_NEW, O_LIMIT, O_MAXP, O_OUT, O_MODES, O_TAU, O_W, O_B, O_FP32, O_THREADS, O_DATASET,
           O_MODES_ONLY, O_DEVICE, O_TP };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},   {"dataset", required_argument, 0, O_DATASET},
        {"batch", required_argument, 0, O_BATCH}, {"max-new", required_argument, 0, O_NEW},
        {"limit", required_argument, 0, O_LIMIT}, {"max-prompt", required_argument, 0, O_MAXP},
        {"out", required_argument, 0, O_OUT},   {"modes", required_argument, 0, O_MODES},
        {"tau", required_argument, 0, O_TAU},   {"llm42-window", required_argument, 0, O_W},
        {"llm42-group", required_argument, 0, O_B}, {"fp32", no_argument, 0, O_FP32},
        {"threads", required_argument, 0, O_THREADS}, {"modes-only", no_argument, 0, O_MODES_ONLY},
        {"device", required_argument, 0, O_DEVICE},
        {"tensor-parallel", required_argument, 0, O_TP},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *model_flag = NULL, *dataset = NULL, *out_dir = "flips-out", *modes = NULL, *device = "auto";
    int tensor_parallel = 1;
    mg_flip_opts fo = {.batch = 32, .max_new = 128, .n_probes = 24, .precision = MG_ACT_BF16};
    int max_prompt = 256, threads = 0, c, W = 64, Bv = 8, modes_only = 0;
    float tau = NAN;
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
        case O_OUT: out_dir = optarg; break;
        case O_MODES: modes = optarg; break;
        case O_TAU: bad = cli_parse_float(optarg, &tau) || tau < 0; break;
        case O_W: bad = cli_parse_int(optarg, &W) || W < 1; break;
        case O_B: bad = cli_parse_int(optarg, &Bv) || Bv < 1; break;
        case O_FP32: fo.precision = MG_ACT_FP32; break;
        case O_THREADS: bad = cli_parse_int(optarg, &threads) || threads < 1; break;
        case O_MODES_ONLY: modes_only = 1; break;
        case O_DEVICE: device = optarg; break;
        case O_TP:
            if (cli_parse_tensor_parallel("flips", optarg, &tensor_parallel)) return 2;
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
        if (bad) {
            fprintf(stderr, "margingate flips: invalid value '%s' for %s\n", optarg, argv[optind - 1]);
            return 2;
        }
    }
    if (!dataset || optind != argc || (modes_only && !modes)) {
        usage(stderr);
        return 2;
    }
    const mg_backend_ops *backend;
    int dev_rc = cli_backend("flips", device, tensor_parallel, &backend);
    if (dev_rc) return dev_rc;
    cli_set_threads(threads);
    const char *model_path = cli_model_path(model_flag);
    mg_model *model;
    mg_tokenizer *tok;
    mg_model_format fmt;
    if (cli_open_model("flips", model_path, &model, &tok, &fmt)) return 1;
    /* One reference for the whole run, so the study and the engine of each
     * mode share one copy of the weights on the device. */
    const mg_weights *pinned = NULL;
    if (backend->weights_acquire(&pinned, model) != MG_OK) {
        mg_model_free(model);
        mg_tokenizer_free(tok);
        return cli_fail("flips", "cannot place the weights on the device");
    }
    mkdir(out_dir, 0755);
    char date[32];
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", gmtime(&now));
    if (!modes_only) {
        printf("flip study: %s, batch %d, %d new tokens, up to %d prompts per dataset (cut to %d tokens), %s "
               "activations, device %s, fast kernels, %d threads, %s\n",
               model_path, fo.batch, fo.max_new, fo.n_probes, max_prompt, fo.precision == MG_ACT_BF16 ? "BF16" : "FP32",
               backend->name, omp_get_max_threads(), date);
        printf("%-10s %5s %6s %8s %6s %9s %12s %9s %9s %9s %10s %10s\n", "dataset", "batch", "prompts", "sync", "flips",
               "rate", "seq_diverged", "m_p50", "mflip_p50", "mflip_max", "kv_before", "kv_at_flip");
    }
    int rc = 0, n_sets = 0;
    const char **sets = all_datasets;
    if (strcmp(dataset, "all") != 0) sets = &dataset, n_sets = 1;
    else n_sets = 4;
    mg_dataset ds[4];
    mg_flip_report reports[4];
    int loaded = 0;
    for (int i = 0; i < n_sets && rc == 0; i++, loaded++) {
        memset(&reports[i], 0, sizeof reports[i]);
        if (modes_only) {
            int need = fo.n_probes > fo.batch ? fo.n_probes : fo.batch;
            if (mg_dataset_load(sets[i], tok, need, max_prompt, &ds[i]) != MG_OK)
                rc = cli_fail("flips", "cannot load the dataset");
        } else {
            rc = study_dataset(sets[i], model, backend, tok, &fo, max_prompt, out_dir, i == 0, &ds[i], &reports[i]);
        }
    }
    if (rc == 0 && !modes_only) {
        printf("columns: sync = synchronous decode steps; rate = flips / sync; m_p50 = median batched margin of all "
               "steps;\n  mflip = batched margin at flips; kv_before / kv_at_flip = mean relative K/V perturbation "
               "over the %d steps before a flip / at the flip\n",
               MG_FLIP_TRACE);
        printf("CSV: %s/flips_steps.csv, %s/flips_events.csv\n", out_dir, out_dir);
        long steps = 0, flips = 0;
        for (int i = 0; i < loaded; i++) steps += reports[i].n_steps, flips += reports[i].n_flips;
        plot(out_dir, steps, flips);
    }
    if (rc == 0 && modes) {
        float tau_used = isnan(tau) ? cli_default_tau(model_path, 0.5f) : tau;
        printf("\nsequence-level determinism through the engine (solo vs batch %d, all arriving at once), "
               "margingate tau %.4g, device %s\n",
               fo.batch, tau_used, backend->name);
        printf("%-10s %-17s %10s %9s %9s %9s %10s %9s %9s\n", "dataset", "mode", "identical", "trigger", "repairs",
               "rollback", "recompute", "solo_s", "batch_s");
        char *list = strdup(modes);
        for (int i = 0; i < loaded && rc == 0; i++) {
            char *save = NULL;
            strcpy(list, modes);
            for (char *m = strtok_r(list, ",", &save); m && rc == 0; m = strtok_r(NULL, ",", &save)) {
                mg_engine_config cfg = mg_engine_config_default();
                cfg.precision = fo.precision;
                cfg.llm42_window = W;
                cfg.llm42_group = Bv;
                cfg.max_running = fo.batch;
                cfg.margingate_tau = tau_used;
                mg_mode mode;
                if (!strcmp(m, "margingate-always")) mode = MG_MODE_MARGINGATE, cfg.margingate_tau = INFINITY;
                else if (mg_mode_parse(m, &mode) != 0) {
                    fprintf(stderr, "margingate flips: unknown mode '%s'\n", m);
                    rc = 2;
                    break;
                }
                mg_mode_result res;
                int probes = fo.n_probes < ds[i].n ? fo.n_probes : ds[i].n;
                if (mg_mode_study(model, backend, &ds[i], probes, fo.batch, fo.max_new, mode, &cfg, &res) !=
                    MG_OK) {
                    rc = cli_fail("flips", "mode study failed");
                    break;
                }
                const mg_mode_counters *b = &res.batched;
                printf("%-10s %-17s %5d/%-4d %8.2f%% %9ld %9ld %9.2f%% %9.1f %9.1f\n", sets[i], m, res.identical,
                       res.n_prompts, b->steps ? 100.0 * b->verified_steps / b->steps : 0.0, b->repairs,
                       b->rolled_back, res.generated ? 100.0 * b->rolled_back / res.generated : 0.0, res.solo_s,
                       res.batch_s);
                fflush(stdout);
            }
        }
        free(list);
        printf("trigger = verified steps / decode steps (llm42: verified tokens / decode steps); recompute = "
               "rolled-back tokens / generated tokens\n");
    }
    for (int i = 0; i < loaded; i++) {
        mg_dataset_free(&ds[i]);
        if (rc == 0) mg_flip_report_free(&reports[i]);
    }
    backend->weights_release(model);
    mg_model_free(model);
    mg_tokenizer_free(tok);
    return rc;
}
