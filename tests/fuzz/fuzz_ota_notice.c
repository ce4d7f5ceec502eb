/*
 * fuzz_ota_notice: feeds arbitrary bytes to ota_notice_parse() as an upgrade push and as a
 * firmware/get reply. Whatever the input, the parser returns 0 with a notice that holds its own
 * promises (1..OTA_MAX_FILES files, each with an http(s) URL, a positive size and a hex digest of
 * its method's length, sizes adding up to total_size) or an error with a reason, never a crash or
 * a leak. A parsed notice is also written back the way ota.c stores a job and parsed again: the
 * stored form must round-trip.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "ota_notice.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(const struct ota_notice *n)
{
    int64_t total = 0;
    if (n->n_files < 1 || n->n_files > OTA_MAX_FILES || !n->version[0])
        abort();
    for (size_t i = 0; i < n->n_files; i++) {
        const struct ota_file *f = &n->files[i];
        size_t want = f->sign_method == OTA_SIGN_MD5 ? 32 : 64;
        if (!f->url || strncasecmp(f->url, "http", 4) != 0 || f->size <= 0 ||
            strlen(f->digest) != want || !ota_sign_name(f->sign_method))
            abort();
        total += f->size;
    }
    if (total != n->total_size)
        abort();
}

/* The normalized form ota.c keeps in the state database. */
static char *stored(const struct ota_notice *n)
{
    json_t *files = json_array();
    for (size_t i = 0; i < n->n_files; i++)
        json_array_append_new(files, json_pack("{s:s,s:I,s:s,s:s}", "url", n->files[i].url, "size",
                                               (json_int_t)n->files[i].size, "sign",
                                               n->files[i].digest, "name", n->files[i].name));
    json_t *root = json_pack("{s:s,s:{s:s,s:s,s:s,s:o}}", "code", "1000", "data", "version",
                             n->version, "module", n->module, "signMethod",
                             ota_sign_name(n->files[0].sign_method), "files", files);
    char *s = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[200];
    for (int kind = OTA_NOTICE_PUSH; kind <= OTA_NOTICE_GET_REPLY; kind++) {
        struct ota_notice n;
        int rc = ota_notice_parse((const char *)data, size, (enum ota_notice_kind)kind, &n, err,
                                  sizeof(err));
        if (rc < 0) {
            if (rc != -ENOENT && !err[0])
                abort(); /* a refusal says why */
            if (n.fail_step < -4 || n.fail_step > -1)
                abort();
            continue;
        }
        check(&n);
        bool same_method = true;
        for (size_t i = 1; i < n.n_files; i++)
            same_method &= n.files[i].sign_method == n.files[0].sign_method;
        char *s = same_method ? stored(&n) : NULL;
        if (s) {
            struct ota_notice m;
            if (ota_notice_parse(s, strlen(s), OTA_NOTICE_PUSH, &m, err, sizeof(err)) != 0)
                abort(); /* what we store must parse again */
            if (strcmp(m.version, n.version) || strcmp(m.module, n.module) ||
                m.n_files != n.n_files || m.total_size != n.total_size)
                abort();
            ota_notice_free(&m);
            free(s);
        }
        ota_notice_free(&n);
    }
    return 0;
}
