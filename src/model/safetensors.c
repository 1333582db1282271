#include "safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* The reference implementation refuses headers above 100 MB; a larger value
 * is far more likely a corrupt length than a real header. */
#define ST_MAX_HEADER (100u * 1000u * 1000u)

/* Largest integer a JSON number (a double) represents exactly. */
#define ST_MAX_JSON_INT 9007199254740992.0

struct mg_st_file {
    char *path;
    const uint8_t *map; /* (size) the whole file, read-only */
    size_t size;
    int n;
    mg_st_tensor *tensors; /* (n) sorted by name */
};

const char *mg_st_dtype_name(mg_st_dtype d) {
    switch (d) {
    case MG_ST_BF16: return "BF16";
    case MG_ST_F16: return "F16";
    case MG_ST_F32: return "F32";
    }
    return "?";
}

size_t mg_st_dtype_size(mg_st_dtype d) { return d == MG_ST_F32 ? 4 : 2; }

char *mg_st_shape_str(char *buf, size_t n, const int64_t *shape, int ndim) {
    size_t used = 0;
    if (n == 0) return buf;
    buf[0] = '\0';
    int w = snprintf(buf, n, "[");
    used = w > 0 ? (size_t)w : 0;
    for (int i = 0; i < ndim && used < n; i++) {
        w = snprintf(buf + used, n - used, "%s%lld", i ? ", " : "", (long long)shape[i]);
        if (w < 0) break;
        used += (size_t)w;
    }
    if (used < n) snprintf(buf + used, n - used, "]");
    return buf;
}

/* Maps a safetensors dtype string. Returns 1 and sets *d for a supported
 * dtype, 0 for a dtype of the safetensors spec that we do not handle, -1 for
 * a string that is not a safetensors dtype at all. */
static int parse_dtype(const char *s, mg_st_dtype *d) {
    static const char *const known_other[] = {"BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64",
                                              "U64", "F64", "F8_E4M3", "F8_E5M2", "F8_E8M0",
                                              "F4", "F6_E2M3", "F6_E3M2", "C64"};
    if (strcmp(s, "BF16") == 0) { *d = MG_ST_BF16; return 1; }
    if (strcmp(s, "F16") == 0) { *d = MG_ST_F16; return 1; }
    if (strcmp(s, "F32") == 0) { *d = MG_ST_F32; return 1; }
    for (size_t i = 0; i < sizeof known_other / sizeof known_other[0]; i++)
        if (strcmp(s, known_other[i]) == 0) return 0;
    return -1;
}

/* Reads a JSON number that must be a non-negative integer representable
 * exactly. Returns 1 and sets *v on success, 0 otherwise. */
static int json_uint(const cJSON *item, uint64_t *v) {
    if (!cJSON_IsNumber(item)) return 0;
    double d = item->valuedouble;
    if (!isfinite(d) || d < 0 || d > ST_MAX_JSON_INT || floor(d) != d) return 0;
    *v = (uint64_t)d;
    return 1;
}

/* Orders tensors by name (qsort/bsearch). */
static int cmp_by_name(const void *a, const void *b) {
    return strcmp(((const mg_st_tensor *)a)->name, ((const mg_st_tensor *)b)->name);
}

/* Orders tensor pointers by data offset (begin, then end). */
static int cmp_by_offset(const void *a, const void *b) {
    const mg_st_tensor *x = *(const mg_st_tensor *const *)a, *y = *(const mg_st_tensor *const *)b;
    const uint8_t *xa = x->data, *ya = y->data;
    if (xa != ya) return xa < ya ? -1 : 1;
    if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
    return 0;
}

/* Fills *t from the header entry `e` called `name`. `data` is the start of
 * the data section, `data_size` its length. Returns a status with a message
 * naming the file and tensor. */
static mg_status parse_tensor(const char *path, const char *name, const cJSON *e, const uint8_t *data,
                              size_t data_size, mg_st_tensor *t) {
    if (!cJSON_IsObject(e))
        return mg_error_set(MG_ERR_FORMAT, "%s: tensor '%s': header entry is not a JSON object", path, name);

    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    if (!cJSON_IsString(jd))
        return mg_error_set(MG_ERR_FORMAT, "%s: tensor '%s': missing or non-string \"dtype\"", path, name);
    int k = parse_dtype(jd->valuestring, &t->dtype);
    if (k <= 0)
        return mg_error_set(MG_ERR_UNSUPPORTED, "%s: tensor '%s': %s dtype %s (supported: BF16, F16, F32)",
                            path, name, k == 0 ? "unsupported" : "unknown", jd->valuestring);

    const cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
    if (!cJSON_IsArray(js))
        return mg_error_set(MG_ERR_FORMAT, "%s: tensor '%s': missing or non-array \"shape\"", path, name);
    int nd = cJSON_GetArraySize(js);
    if (nd > MG_ST_MAX_DIMS)
        return mg_error_set(MG_ERR_FORMAT, "%s: tensor '%s': %d dimensions (at most %d supported)", path, name,
                            nd, MG_ST_MAX_DIMS);
    t->ndim = nd;
    size_t numel = 1;
    int overflow = 0;
    int i = 0;
    for (const cJSON *d = js->child; d; d = d->next, i++) {
        uint64_t v;
        if (!json_uint(d, &v))
            return mg_error_set(MG_ERR_FORMAT, "%s: tensor '%s': shape[%d] is not a non-negative integer", path,
                                name, i);
        t->shape[i] = (int64_t)v;
        if (v != 0 && numel > SIZE_MAX / v) overflow = 1;
        else numel *= (size_t)v;
    }
    /* A zero dimension makes the product 0 even if an earlier product overflowed. */
    if (numel == 0) overflow = 0;
    size_t esize = mg_st_dtype_size(t->dtype);
    if (overflow || numel > SIZE_MAX / esize)
        return mg_error_set(MG_ERR_FORMAT, "%s: tensor '%s': shape overflows the size of memory", path, name);
    t->numel = numel;
    t->nbytes = numel * esize;

    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    uint64_t begin, end;
    if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2 || !json_uint(jo->child, &begin) ||
        !json_uint(jo->child->next, &end))
        return mg_error_set(MG_ERR_FORMAT, "%s: tensor '%s': \"data_offsets\" must be [begin, end] integers",
                            path, name);
    if (begin > end)
        return mg_error_set(MG_ERR_FORMAT, "%s: tensor '%s': data_offsets [%llu, %llu] are not ordered", path,
                            name, (unsigned long long)begin, (unsigned long long)end);
    if (end > data_size)
        return mg_error_set(MG_ERR_FORMAT,
                            "%s: tensor '%s': data_offsets [%llu, %llu] run past the data section (%zu bytes)",
                            path, name, (unsigned long long)begin, (unsigned long long)end, data_size);
    if (end - begin != t->nbytes) {
        char sh[160];
        return mg_error_set(MG_ERR_FORMAT,
                            "%s: tensor '%s': data_offsets span %llu bytes but %s %s needs %zu bytes", path, name,
                            (unsigned long long)(end - begin), jd->valuestring,
                            mg_st_shape_str(sh, sizeof sh, t->shape, t->ndim), t->nbytes);
    }
    t->data = data + begin;
    return MG_OK;
}

/* Checks that the tensors tile the data section exactly: sorted by offset,
 * each begins where the previous one ends, the last ends at data_size. */
static mg_status check_tiling(const char *path, mg_st_tensor *tensors, int n, const uint8_t *data,
                              size_t data_size) {
    if (n == 0) {
        if (data_size != 0)
            return mg_error_set(MG_ERR_FORMAT, "%s: %zu data bytes but no tensors", path, data_size);
        return MG_OK;
    }
    const mg_st_tensor **order = malloc((size_t)n * sizeof *order);
    if (!order) return mg_error_set(MG_ERR_OOM, "%s: out of memory", path);
    for (int i = 0; i < n; i++) order[i] = &tensors[i];
    qsort(order, (size_t)n, sizeof *order, cmp_by_offset);
    size_t expect = 0;
    mg_status st = MG_OK;
    for (int i = 0; i < n; i++) {
        size_t begin = (size_t)((const uint8_t *)order[i]->data - data);
        if (begin < expect) {
            st = mg_error_set(MG_ERR_FORMAT, "%s: tensor '%s' (bytes %zu..%zu) overlaps tensor '%s'", path,
                              order[i]->name, begin, begin + order[i]->nbytes, order[i - 1]->name);
            break;
        }
        if (begin > expect) {
            st = mg_error_set(MG_ERR_FORMAT, "%s: %zu unused bytes before tensor '%s' in the data section", path,
                              begin - expect, order[i]->name);
            break;
        }
        expect = begin + order[i]->nbytes;
    }
    if (st == MG_OK && expect != data_size)
        st = mg_error_set(MG_ERR_FORMAT, "%s: data section has %zu bytes but its tensors cover %zu", path,
                          data_size, expect);
    free(order);
    return st;
}

/* Parses and validates the header of the mapped file f (path, map, size
 * set). Fills f->n and f->tensors. */
static mg_status parse_header(mg_st_file *f) {
    const char *path = f->path;
    if (f->size < 8)
        return mg_error_set(MG_ERR_FORMAT, "%s: %zu bytes is too small for a safetensors file", path, f->size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | f->map[i];
    if (hlen > f->size - 8)
        return mg_error_set(MG_ERR_FORMAT, "%s: header length %llu exceeds the file (%zu bytes)", path,
                            (unsigned long long)hlen, f->size);
    if (hlen > ST_MAX_HEADER)
        return mg_error_set(MG_ERR_FORMAT, "%s: header length %llu exceeds the 100 MB limit", path,
                            (unsigned long long)hlen);
    if (hlen < 2) return mg_error_set(MG_ERR_FORMAT, "%s: header length %llu is too small", path,
                                      (unsigned long long)hlen);

    /* cJSON wants NUL-terminated text; the header is not. */
    char *text = malloc((size_t)hlen + 1);
    if (!text) return mg_error_set(MG_ERR_OOM, "%s: cannot allocate the header", path);
    memcpy(text, f->map + 8, (size_t)hlen);
    text[hlen] = '\0';
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(text, &end, 0);
    if (!root) {
        size_t at = end ? (size_t)(end - text) : 0;
        free(text);
        return mg_error_set(MG_ERR_FORMAT, "%s: header is not valid JSON (error near byte %zu of %llu)", path,
                            at, (unsigned long long)hlen);
    }
    /* Anything after the JSON value must be padding whitespace; this also
     * catches an embedded NUL that stopped the parser early. */
    for (const char *p = end; p < text + hlen; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            size_t at = (size_t)(p - text);
            cJSON_Delete(root);
            free(text);
            return mg_error_set(MG_ERR_FORMAT, "%s: trailing bytes after the header JSON (at byte %zu)", path, at);
        }
    }
    free(text);
    mg_status st = MG_OK;
    if (!cJSON_IsObject(root)) {
        st = mg_error_set(MG_ERR_FORMAT, "%s: header JSON is not an object", path);
        goto out;
    }

    int n = 0;
    for (const cJSON *e = root->child; e; e = e->next)
        if (strcmp(e->string, "__metadata__") != 0) n++;
    f->tensors = calloc(n ? (size_t)n : 1, sizeof *f->tensors);
    if (!f->tensors) {
        st = mg_error_set(MG_ERR_OOM, "%s: out of memory", path);
        goto out;
    }
    const uint8_t *data = f->map + 8 + hlen;
    size_t data_size = f->size - 8 - (size_t)hlen;
    for (const cJSON *e = root->child; e; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0) continue;
        mg_st_tensor *t = &f->tensors[f->n];
        t->name = strdup(e->string);
        if (!t->name) {
            st = mg_error_set(MG_ERR_OOM, "%s: out of memory", path);
            goto out;
        }
        f->n++;
        st = parse_tensor(path, e->string, e, data, data_size, t);
        if (st != MG_OK) goto out;
    }
    qsort(f->tensors, (size_t)f->n, sizeof *f->tensors, cmp_by_name);
    for (int i = 1; i < f->n; i++) {
        if (strcmp(f->tensors[i - 1].name, f->tensors[i].name) == 0) {
            st = mg_error_set(MG_ERR_FORMAT, "%s: tensor '%s' appears twice in the header", path,
                              f->tensors[i].name);
            goto out;
        }
    }
    st = check_tiling(path, f->tensors, f->n, data, data_size);
out:
    cJSON_Delete(root);
    return st;
}

mg_status mg_st_open(const char *path, mg_st_file **out) {
    *out = NULL;
    mg_st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        return mg_error_set(MG_ERR_OOM, "%s: out of memory", path);
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        mg_status st = mg_error_set(MG_ERR_IO, "cannot open %s: %s", path, strerror(errno));
        mg_st_close(f);
        return st;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        mg_st_close(f);
        return mg_error_set(MG_ERR_IO, "%s is not a regular file", path);
    }
    f->size = (size_t)sb.st_size;
    if (f->size >= 8) {
        void *m = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            mg_status st = mg_error_set(MG_ERR_IO, "cannot mmap %s: %s", path, strerror(errno));
            close(fd);
            mg_st_close(f);
            return st;
        }
        f->map = m;
    }
    close(fd);
    mg_status st = parse_header(f);
    if (st != MG_OK) {
        mg_st_close(f);
        return st;
    }
    *out = f;
    return MG_OK;
}

void mg_st_close(mg_st_file *f) {
    if (!f) return;
    if (f->map) munmap((void *)f->map, f->size);
    for (int i = 0; i < f->n; i++) free((char *)f->tensors[i].name);
    free(f->tensors);
    free(f->path);
    free(f);
}

const mg_st_tensor *mg_st_find(const mg_st_file *f, const char *name) {
    mg_st_tensor key = {.name = name};
    return bsearch(&key, f->tensors, (size_t)f->n, sizeof *f->tensors, cmp_by_name);
}

int mg_st_count(const mg_st_file *f) { return f->n; }

const mg_st_tensor *mg_st_at(const mg_st_file *f, int i) { return &f->tensors[i]; }

const char *mg_st_path(const mg_st_file *f) { return f->path; }

size_t mg_st_file_size(const mg_st_file *f) { return f->size; }
