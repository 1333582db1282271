/* Read-only access to a .safetensors file through mmap.
 *
 * Layout: an 8-byte little-endian header length N, N bytes of JSON mapping
 * tensor names to {"dtype", "shape", "data_offsets": [begin, end]} (plus an
 * optional "__metadata__" object, ignored), then the data section. Offsets are
 * relative to the start of the data section.
 *
 * mg_st_open validates the whole header against the file before returning, as
 * the reference implementation (huggingface/safetensors) does: JSON well
 * formed, header within the file, every dtype supported, shapes non-negative
 * without overflow, end - begin == numel * dtype size, and the tensors tiling
 * the data section exactly (no overlap, no gap, no trailing bytes). After a
 * successful open every tensor's data pointer is safe to read for nbytes. */
#ifndef MG_SAFETENSORS_H
#define MG_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "../util/status.h"

typedef enum { MG_ST_BF16 = 0, MG_ST_F16 = 1, MG_ST_F32 = 2 } mg_st_dtype;

#define MG_ST_MAX_DIMS 8

typedef struct {
    const char *name;            /* NUL-terminated, owned by the file handle */
    mg_st_dtype dtype;
    int ndim;                    /* 0 (scalar) .. MG_ST_MAX_DIMS */
    int64_t shape[MG_ST_MAX_DIMS];
    size_t numel;                /* product of shape (1 for a scalar) */
    size_t nbytes;               /* numel * element size */
    const void *data;            /* (nbytes) inside the mapping; may be unaligned */
} mg_st_tensor;

typedef struct mg_st_file mg_st_file;

/* Maps and validates the safetensors file at `path`. On success *out is a new
 * handle (close with mg_st_close). Returns MG_ERR_IO if the file cannot be
 * opened or mapped, MG_ERR_FORMAT for any structural problem (the message
 * names the file and, where there is one, the tensor), MG_ERR_UNSUPPORTED for
 * a dtype other than BF16/F16/F32 (naming the tensor and dtype), MG_ERR_OOM. */
mg_status mg_st_open(const char *path, mg_st_file **out);

/* Unmaps the file and frees the handle (NULL is fine). Tensor pointers
 * obtained from it become invalid. */
void mg_st_close(mg_st_file *f);

/* Returns the tensor called `name`, or NULL if the file has none. */
const mg_st_tensor *mg_st_find(const mg_st_file *f, const char *name);

/* Number of tensors in the file (excluding __metadata__). */
int mg_st_count(const mg_st_file *f);

/* Returns tensor i (0 <= i < mg_st_count), in name order. */
const mg_st_tensor *mg_st_at(const mg_st_file *f, int i);

/* Path the file was opened with. */
const char *mg_st_path(const mg_st_file *f);

/* Size of the mapping in bytes (the whole file). */
size_t mg_st_file_size(const mg_st_file *f);

/* Returns "BF16", "F16" or "F32". */
const char *mg_st_dtype_name(mg_st_dtype d);

/* Bytes per element of `d` (2 or 4). */
size_t mg_st_dtype_size(mg_st_dtype d);

/* Formats a shape as "[a, b, ...]" into buf (size n, always NUL-terminated);
 * returns buf. */
char *mg_st_shape_str(char *buf, size_t n, const int64_t *shape, int ndim);

#endif
