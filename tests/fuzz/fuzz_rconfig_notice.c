/*
 * fuzz_rconfig_notice: arbitrary bytes to rconfig_notice_parse() as a configuration push and as
 * a thing.config.get reply. Whatever the input: 0 with a notice that keeps its promises (a
 * configId of 1..64 allowed characters, 1..64 KB, a lowercase hex digest of its method's length,
 * an http(s) URL), or an error with a reason; never a crash or a leak.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rconfig_notice.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    for (int k = RCONFIG_PUSH; k <= RCONFIG_GET_REPLY; k++) {
        struct rconfig_notice n;
        char err[200];
        int rc = rconfig_notice_parse((enum rconfig_notice_kind)k, (const char *)data, size, &n,
                                      err, sizeof(err));
        if (rc < 0) {
            if (!err[0])
                abort();
            continue;
        }
        size_t want = n.sign_method == RCONFIG_SIGN_MD5 ? 32 : 64;
        if (!n.config_id[0] || strlen(n.config_id) > RCONFIG_ID_MAX || n.size <= 0 ||
            n.size > RCONFIG_MAX_BYTES || strlen(n.digest) != want ||
            strspn(n.digest, "0123456789abcdef") != want || strncmp(n.url, "http", 4) != 0 ||
            strspn(n.config_id,
                   "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.") !=
                strlen(n.config_id))
            abort();
    }
    return 0;
}
