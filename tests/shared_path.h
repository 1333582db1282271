/* Locating ../shared assets from tests.
 *
 * Tests read the project's shared assets (models, tokenizers, datasets)
 * through MG_SHARED_DIR (default "../shared", relative to the repo root where
 * `make test` runs). When an asset is absent, a test skips with a message on
 * a developer machine, but fails under CI (CI set in the environment), where
 * ../shared is guaranteed to be present. */
#ifndef MG_TEST_SHARED_PATH_H
#define MG_TEST_SHARED_PATH_H

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

static inline const char *mg_test_shared_dir(void) {
    const char *d = getenv("MG_SHARED_DIR");
    return d && *d ? d : "../shared";
}

/* Fills buf with <shared>/<rel>. Skips (or fails under CI) if it is absent. */
#define MG_TEST_SHARED(buf, rel)                                                        \
    do {                                                                                \
        snprintf((buf), sizeof(buf), "%s/%s", mg_test_shared_dir(), (rel));             \
        struct stat mg_st_;                                                             \
        if (stat((buf), &mg_st_) != 0) {                                                \
            if (getenv("CI")) cr_assert_fail("shared asset missing under CI: %s", (buf));     \
            cr_skip_test("shared asset absent on this machine: %s", (buf));             \
        }                                                                               \
    } while (0)

#endif
