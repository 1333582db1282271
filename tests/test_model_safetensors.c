/* Tests for src/model/safetensors.c: a round trip, then every kind of bad
 * file, each of which must fail with the right status and a message naming
 * the file (and tensor) without crashing. Files are written from C. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

#include "model/safetensors.h"
#include "st_writer.h"

static char tmpdir[64];
static char path[4200];

/* Per-test temp dir; `path` is the file each test writes. */
static void setup(void) {
    cr_assert_not_null(st_mkdtemp(tmpdir, sizeof tmpdir));
    snprintf(path, sizeof path, "%s/t.safetensors", tmpdir);
}
static void teardown(void) { st_rmtree(tmpdir); }

TestSuite(safetensors, .init = setup, .fini = teardown);

/* Opens `path`, expecting failure with status `want` and a message holding
 * each of the (up to 2) substrings. */
static void expect_fail(mg_status want, const char *sub1, const char *sub2) {
    mg_st_file *f = (mg_st_file *)0x1;
    mg_error_clear();
    mg_status st = mg_st_open(path, &f);
    const char *msg = mg_error_last();
    cr_assert_eq(st, want, "status %s, want %s (%s)", mg_status_str(st), mg_status_str(want), msg);
    cr_assert_null(f);
    cr_assert(strstr(msg, path) || want == MG_ERR_IO, "message does not name the file: %s", msg);
    if (sub1) cr_assert(strstr(msg, sub1), "message lacks '%s': %s", sub1, msg);
    if (sub2) cr_assert(strstr(msg, sub2), "message lacks '%s': %s", sub2, msg);
}

/* Writes header text `h` (its true length in the length field) and `n`
 * data bytes. */
static void write_header(const char *h, size_t n) {
    unsigned char data[256] = {0};
    cr_assert(n <= sizeof data);
    cr_assert_eq(st_write_raw(path, strlen(h), h, strlen(h), data, n), 0);
}

Test(safetensors, round_trip) {
    uint16_t a[6] = {0x3f80, 0x4000, 0x4040, 0x4080, 0x40a0, 0x40c0}; /* 1..6 in BF16 */
    float b[3] = {1.5f, -2.0f, 3.25f};
    uint16_t c[1] = {0x3c00}; /* 1.0 in F16 */
    st_tensor t[] = {
        {"layer.a", "BF16", 2, {2, 3}, a, 0},
        {"b", "F32", 1, {3}, b, 0},
        {"scalar", "F16", 0, {0}, c, 0},
        {"empty", "F32", 2, {0, 7}, NULL, 0},
    };
    cr_assert_eq(st_write_file(path, t, 4), 0);
    mg_st_file *f;
    cr_assert_eq(mg_st_open(path, &f), MG_OK, "%s", mg_error_last());
    cr_assert_eq(mg_st_count(f), 4); /* __metadata__ is not a tensor */
    cr_assert_str_eq(mg_st_path(f), path);

    const mg_st_tensor *ta = mg_st_find(f, "layer.a");
    cr_assert_not_null(ta);
    cr_assert_eq(ta->dtype, MG_ST_BF16);
    cr_assert_eq(ta->ndim, 2);
    cr_assert_eq(ta->shape[0], 2);
    cr_assert_eq(ta->shape[1], 3);
    cr_assert_eq(ta->numel, 6);
    cr_assert_eq(ta->nbytes, 12);
    cr_assert_eq(memcmp(ta->data, a, sizeof a), 0);

    const mg_st_tensor *tb = mg_st_find(f, "b");
    cr_assert_not_null(tb);
    cr_assert_eq(tb->dtype, MG_ST_F32);
    cr_assert_eq(memcmp(tb->data, b, sizeof b), 0);

    const mg_st_tensor *tc = mg_st_find(f, "scalar");
    cr_assert_eq(tc->ndim, 0);
    cr_assert_eq(tc->numel, 1);
    cr_assert_eq(tc->dtype, MG_ST_F16);

    const mg_st_tensor *te = mg_st_find(f, "empty");
    cr_assert_eq(te->numel, 0);
    cr_assert_eq(te->nbytes, 0);

    cr_assert_null(mg_st_find(f, "missing"));
    cr_assert_null(mg_st_find(f, "__metadata__"));
    cr_assert_str_eq(mg_st_at(f, 0)->name, "b"); /* name order */
    char sh[32];
    cr_assert_str_eq(mg_st_shape_str(sh, sizeof sh, ta->shape, ta->ndim), "[2, 3]");
    mg_st_close(f);
    mg_st_close(NULL);
}

Test(safetensors, missing_file) {
    snprintf(path, sizeof path, "%s/nope.safetensors", tmpdir);
    expect_fail(MG_ERR_IO, "nope.safetensors", NULL);
}

Test(safetensors, directory_is_not_a_file) {
    snprintf(path, sizeof path, "%s", tmpdir);
    expect_fail(MG_ERR_IO, NULL, NULL);
}

Test(safetensors, empty_and_tiny_files) {
    cr_assert_eq(st_write_text(tmpdir, "t.safetensors", ""), 0);
    expect_fail(MG_ERR_FORMAT, "too small", NULL);
    cr_assert_eq(st_write_text(tmpdir, "t.safetensors", "abc"), 0);
    expect_fail(MG_ERR_FORMAT, "too small", NULL);
}

Test(safetensors, truncated_data) {
    float b[64] = {0};
    st_tensor t[] = {{"w", "F32", 2, {8, 8}, b, 0}};
    cr_assert_eq(st_write_file(path, t, 1), 0);
    struct stat sb;
    cr_assert_eq(stat(path, &sb), 0);
    cr_assert_eq(truncate(path, sb.st_size - 10), 0); /* data cut short */
    expect_fail(MG_ERR_FORMAT, "'w'", NULL);
}

Test(safetensors, truncated_header) {
    float b[4] = {0};
    st_tensor t[] = {{"w", "F32", 1, {4}, b, 0}};
    cr_assert_eq(st_write_file(path, t, 1), 0);
    cr_assert_eq(truncate(path, 20), 0);
    expect_fail(MG_ERR_FORMAT, "header length", NULL);
}

Test(safetensors, garbage_bytes) {
    unsigned char junk[512];
    uint32_t x = 12345;
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (unsigned char)((x = x * 1103515245u + 12345u) >> 16);
    FILE *fp = fopen(path, "wb");
    fwrite(junk, 1, sizeof junk, fp);
    fclose(fp);
    expect_fail(MG_ERR_FORMAT, NULL, NULL);
}

Test(safetensors, garbage_with_plausible_length) {
    const char junk[] = "\x01\x02garbage\xff\xfe not json at all";
    cr_assert_eq(st_write_raw(path, sizeof junk - 1, junk, sizeof junk - 1, NULL, 0), 0);
    expect_fail(MG_ERR_FORMAT, "JSON", NULL);
}

Test(safetensors, header_length_beyond_file) {
    const char *h = "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    unsigned char d[4] = {0};
    cr_assert_eq(st_write_raw(path, 1u << 20, h, strlen(h), d, 4), 0);
    expect_fail(MG_ERR_FORMAT, "exceeds the file", NULL);
    cr_assert_eq(st_write_raw(path, UINT64_MAX, h, strlen(h), d, 4), 0);
    expect_fail(MG_ERR_FORMAT, "exceeds the file", NULL);
}

Test(safetensors, header_json_malformed) {
    write_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}", 4);
    expect_fail(MG_ERR_FORMAT, "JSON", NULL);
    write_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}xx", 4);
    expect_fail(MG_ERR_FORMAT, "trailing", NULL);
    write_header("[1, 2, 3]", 0);
    expect_fail(MG_ERR_FORMAT, "not an object", NULL);
    write_header("{\"w\": 5}", 0);
    expect_fail(MG_ERR_FORMAT, "'w'", "not a JSON object");
}

Test(safetensors, embedded_nul_in_header) {
    const char h[] = "{}\0{\"w\":1}";
    cr_assert_eq(st_write_raw(path, sizeof h - 1, h, sizeof h - 1, NULL, 0), 0);
    expect_fail(MG_ERR_FORMAT, "trailing", NULL);
}

Test(safetensors, padded_header_accepted) {
    write_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}      ", 4);
    mg_st_file *f;
    cr_assert_eq(mg_st_open(path, &f), MG_OK, "%s", mg_error_last());
    mg_st_close(f);
}

Test(safetensors, no_tensors) {
    write_header("{\"__metadata__\":{\"format\":\"pt\"}}", 0);
    mg_st_file *f;
    cr_assert_eq(mg_st_open(path, &f), MG_OK, "%s", mg_error_last());
    cr_assert_eq(mg_st_count(f), 0);
    cr_assert_null(mg_st_find(f, "x"));
    mg_st_close(f);
}

Test(safetensors, offsets_out_of_range) {
    write_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8);
    expect_fail(MG_ERR_FORMAT, "'w'", "past the data section");
}

Test(safetensors, offsets_unordered) {
    write_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4);
    expect_fail(MG_ERR_FORMAT, "'w'", "not ordered");
}

Test(safetensors, offsets_malformed) {
    write_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4);
    expect_fail(MG_ERR_FORMAT, "'w'", "data_offsets");
    write_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,-4]}}", 4);
    expect_fail(MG_ERR_FORMAT, "'w'", "data_offsets");
    write_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4);
    expect_fail(MG_ERR_FORMAT, "'w'", "data_offsets");
}

Test(safetensors, overlapping_tensors) {
    write_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                 "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                 12);
    expect_fail(MG_ERR_FORMAT, "overlaps", NULL);
}

Test(safetensors, gap_and_trailing_bytes) {
    write_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8);
    expect_fail(MG_ERR_FORMAT, "unused bytes", NULL);
    write_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8);
    expect_fail(MG_ERR_FORMAT, "cover", NULL);
}

Test(safetensors, size_mismatch_vs_shape) {
    write_header("{\"w\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[0,8]}}", 8);
    expect_fail(MG_ERR_FORMAT, "'w'", "[2, 3]");
}

Test(safetensors, unsupported_dtypes) {
    write_header("{\"q\":{\"dtype\":\"I8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4);
    expect_fail(MG_ERR_UNSUPPORTED, "'q'", "I8");
    write_header("{\"q\":{\"dtype\":\"F8_E4M3\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4);
    expect_fail(MG_ERR_UNSUPPORTED, "'q'", "F8_E4M3");
    write_header("{\"q\":{\"dtype\":\"WEIRD\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4);
    expect_fail(MG_ERR_UNSUPPORTED, "'q'", "WEIRD");
    write_header("{\"q\":{\"dtype\":7,\"shape\":[4],\"data_offsets\":[0,4]}}", 4);
    expect_fail(MG_ERR_FORMAT, "'q'", "dtype");
}

Test(safetensors, bad_shapes) {
    write_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4);
    expect_fail(MG_ERR_FORMAT, "'w'", "shape");
    write_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4);
    expect_fail(MG_ERR_FORMAT, "'w'", "shape");
    write_header("{\"w\":{\"dtype\":\"F32\",\"shape\":\"4\",\"data_offsets\":[0,4]}}", 4);
    expect_fail(MG_ERR_FORMAT, "'w'", "shape");
    write_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776,1099511627776],"
                 "\"data_offsets\":[0,4]}}",
                 4);
    expect_fail(MG_ERR_FORMAT, "'w'", "overflow");
    write_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4);
    expect_fail(MG_ERR_FORMAT, "'w'", "dimensions");
}

Test(safetensors, zero_dim_after_huge_dims_is_empty) {
    write_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776,0],\"data_offsets\":[0,0]}}", 0);
    mg_st_file *f;
    cr_assert_eq(mg_st_open(path, &f), MG_OK, "%s", mg_error_last());
    cr_assert_eq(mg_st_find(f, "w")->numel, 0);
    mg_st_close(f);
}

Test(safetensors, duplicate_names) {
    write_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                 "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                 8);
    expect_fail(MG_ERR_FORMAT, "'w'", "twice");
}
