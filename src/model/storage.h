/* Private to src/model: the memory behind an mg_model's weights (file
 * mappings and converted buffers), released together by mg_model_free. */
#ifndef MG_MODEL_STORAGE_H
#define MG_MODEL_STORAGE_H

#include <stddef.h>

#include "model.h"
#include "safetensors.h"

/* Returns a new, empty storage, or NULL when out of memory. */
mg_model_storage *mg_storage_new(void);

/* Allocates `bytes` zeroed bytes owned by s (aligned for any type). Returns
 * NULL when out of memory (the caller reports MG_ERR_OOM). */
void *mg_storage_alloc(mg_model_storage *s, size_t bytes);

/* Hands the open safetensors file f to s, which closes it when freed. On
 * failure (MG_ERR_OOM) f is closed at once. */
mg_status mg_storage_add_file(mg_model_storage *s, mg_st_file *f);

/* Hands a mapping made with mmap to s, which unmaps it when freed. On
 * failure (MG_ERR_OOM) it is unmapped at once. */
mg_status mg_storage_add_map(mg_model_storage *s, void *addr, size_t len);

/* Releases everything s owns, then s itself (NULL is fine). */
void mg_storage_free(mg_model_storage *s);

#endif
