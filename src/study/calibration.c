#include "calibration.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "../util/file.h"

float mg_trigger_rate(const mg_flip_report *r, float tau) {
    if (r->n_steps == 0) return 0.0f;
    long n = 0;
    for (long i = 0; i < r->n_steps; i++) n += r->steps[i].batch_margin < tau;
    return (float)n / (float)r->n_steps;
}

mg_calibration mg_calibrate(const mg_flip_report *r) {
    mg_calibration c = {.n_flips = r->n_flips, .n_steps = r->n_steps};
    for (int i = 0; i < r->n_flips; i++)
        if (r->flips[i].batch_margin > c.min_catching) c.min_catching = r->flips[i].batch_margin;
    c.tau = c.min_catching * MG_TAU_SAFETY;
    if (c.tau < MG_TAU_FLOOR) c.tau = MG_TAU_FLOOR;
    c.trigger_rate = mg_trigger_rate(r, c.tau);
    return c;
}

mg_status mg_settings_path(char *buf, size_t n) {
    const char *explicit_path = getenv("MARGINGATE_CONFIG");
    if (explicit_path && *explicit_path) {
        if (strlen(explicit_path) >= n) return mg_error_set(MG_ERR_RANGE, "settings path too long");
        strcpy(buf, explicit_path);
        return MG_OK;
    }
    const char *xdg = getenv("XDG_CONFIG_HOME");
    const char *home = getenv("HOME");
    int w;
    if (xdg && *xdg) w = snprintf(buf, n, "%s/margingate/calibration.json", xdg);
    else if (home && *home) w = snprintf(buf, n, "%s/.config/margingate/calibration.json", home);
    else return mg_error_set(MG_ERR_IO, "neither MARGINGATE_CONFIG, XDG_CONFIG_HOME nor HOME is set");
    if (w < 0 || (size_t)w >= n) return mg_error_set(MG_ERR_RANGE, "settings path too long");
    return MG_OK;
}

/* mkdir -p of the folder holding `path`. */
static mg_status make_parent(const char *path) {
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir) return MG_OK;
    *slash = '\0';
    for (char *p = dir + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(dir, 0755) != 0 && errno != EEXIST) return mg_error_set(MG_ERR_IO, "cannot create %s", dir);
        *p = '/';
    }
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) return mg_error_set(MG_ERR_IO, "cannot create %s", dir);
    return MG_OK;
}

/* The key a model's entry is stored under: its real path. */
static void model_key(const char *model_path, char *key, size_t n) {
    char real[PATH_MAX];
    snprintf(key, n, "%s", realpath(model_path, real) ? real : model_path);
}

/* Reads the settings object (an empty one if the file does not exist). */
static mg_status read_settings(const char *path, cJSON **out) {
    char *text;
    if (!mg_file_exists(path)) {
        *out = cJSON_CreateObject();
        return MG_OK;
    }
    mg_status st = mg_file_read(path, &text, NULL);
    if (st != MG_OK) return st;
    *out = cJSON_Parse(text);
    free(text);
    if (!*out || !cJSON_IsObject(*out)) {
        cJSON_Delete(*out);
        return mg_error_set(MG_ERR_FORMAT, "%s is not a JSON object; fix or delete it", path);
    }
    return MG_OK;
}

mg_status mg_calibration_save(const char *model_path, const char *dataset, const mg_calibration *c) {
    char path[PATH_MAX], key[PATH_MAX];
    mg_status st = mg_settings_path(path, sizeof path);
    if (st != MG_OK || (st = make_parent(path)) != MG_OK) return st;
    cJSON *root;
    if ((st = read_settings(path, &root)) != MG_OK) return st;
    model_key(model_path, key, sizeof key);
    cJSON_DeleteItemFromObjectCaseSensitive(root, key);
    cJSON *e = cJSON_AddObjectToObject(root, key);
    cJSON_AddNumberToObject(e, "tau", c->tau);
    cJSON_AddNumberToObject(e, "largest_flip_margin", c->min_catching);
    cJSON_AddNumberToObject(e, "safety_factor", MG_TAU_SAFETY);
    cJSON_AddNumberToObject(e, "floor", MG_TAU_FLOOR);
    cJSON_AddNumberToObject(e, "expected_trigger_rate", c->trigger_rate);
    cJSON_AddNumberToObject(e, "flips", c->n_flips);
    cJSON_AddNumberToObject(e, "synchronous_steps", (double)c->n_steps);
    cJSON_AddStringToObject(e, "dataset", dataset);
    char date[32];
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    cJSON_AddStringToObject(e, "date", date);
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) return mg_error_set(MG_ERR_OOM, "out of memory");
    /* Write to a temporary file and rename, so a crash never leaves half a file. */
    char tmp[PATH_MAX + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        free(text);
        return mg_error_set(MG_ERR_IO, "cannot write %s: %s", tmp, strerror(errno));
    }
    int ok = fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    ok = (fclose(f) == 0) && ok;
    free(text);
    if (!ok || rename(tmp, path) != 0) return mg_error_set(MG_ERR_IO, "cannot write %s", path);
    return MG_OK;
}

mg_status mg_calibration_load(const char *model_path, float *tau) {
    char path[PATH_MAX], key[PATH_MAX];
    mg_status st = mg_settings_path(path, sizeof path);
    if (st != MG_OK) return st;
    if (!mg_file_exists(path)) return mg_error_set(MG_ERR_IO, "no calibration file at %s", path);
    cJSON *root;
    if ((st = read_settings(path, &root)) != MG_OK) return st;
    model_key(model_path, key, sizeof key);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, key), "tau");
    st = cJSON_IsNumber(t) && t->valuedouble >= 0
             ? MG_OK
             : mg_error_set(MG_ERR_IO, "no calibrated tau for %s in %s", key, path);
    if (st == MG_OK) *tau = (float)t->valuedouble;
    cJSON_Delete(root);
    return st;
}
