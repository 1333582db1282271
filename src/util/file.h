/* Whole-file helpers. */
#ifndef MG_FILE_H
#define MG_FILE_H

#include <stddef.h>

#include "status.h"

/* Reads the whole file at `path` into a NUL-terminated malloc'd buffer.
 * On success stores it in *out (caller frees) and its length (without the
 * NUL) in *len (may be NULL). Returns MG_ERR_IO with a message naming the
 * path when the file cannot be read. */
mg_status mg_file_read(const char *path, char **out, size_t *len);

/* Returns 1 if `path` exists and is a regular file, 0 otherwise. */
int mg_file_exists(const char *path);

/* Joins dir and name with a '/' into buf (size n). Returns MG_ERR_RANGE if it
 * does not fit. */
mg_status mg_path_join(char *buf, size_t n, const char *dir, const char *name);

#endif
