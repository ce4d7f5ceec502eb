/*
 * rconfig_notice: the remote configuration a platform message describes, parsed and checked. Two
 * messages carry one (reference/aliyun-protocol.md §3.2, LinkSDK's COTA): the push on
 * /sys/pk/dn/thing/config/push ({"id","params":{configId, configSize, sign, signMethod, url,
 * getType}}) and the reply to thing.config.get ({"id","code":200,"data":{the same fields}}).
 * Pure: no state, no I/O, safe on any thread, fuzzed (tests/fuzz/fuzz_rconfig_notice.c).
 * Untrusted input gets a negative errno and a reason naming the field, never a crash.
 */
#ifndef ALIGW_RCONFIG_NOTICE_H
#define ALIGW_RCONFIG_NOTICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RCONFIG_MAX_BYTES 65536 /* the platform's limit for a configuration file (64 KB) */
#define RCONFIG_ID_MAX 64
#define RCONFIG_URL_MAX 2048

enum rconfig_sign { RCONFIG_SIGN_SHA256 = 1, RCONFIG_SIGN_MD5 = 2 };

struct rconfig_notice {
    char msg_id[24];                    /* the message's "id" ("" if absent) */
    char config_id[RCONFIG_ID_MAX + 1]; /* configId: letters, digits, "_-." */
    int64_t size;                       /* configSize: 1..RCONFIG_MAX_BYTES */
    enum rconfig_sign sign_method;
    char digest[65]; /* lowercase hex: 64 chars for SHA-256, 32 for MD5 */
    char url[RCONFIG_URL_MAX + 1];
    int code;          /* a get_reply's code (200 when parsed successfully) */
    char message[128]; /* a get_reply's message when code is not 200 */
};

enum rconfig_notice_kind { RCONFIG_PUSH, RCONFIG_GET_REPLY };

/*
 * Parses payload (untrusted, len bytes, need not be NUL-terminated). Returns 0 and fills *out, or:
 * -ENOENT (a get_reply with code 200 and no configuration: data {} or absent), -EREMOTE (a
 * get_reply whose code is not 200: out->code and out->message say what the platform said),
 * -EFBIG (configSize above the platform's 64 KB), -EINVAL (anything else malformed: bad JSON,
 * missing or invalid field, getType other than "file", unknown signMethod, a digest of the wrong
 * length, a URL that is not http(s)). A reason naming the field goes to err (may be NULL).
 * out->msg_id is filled whenever it could be read, so a push can be answered even when refused.
 */
int rconfig_notice_parse(enum rconfig_notice_kind kind, const char *payload, size_t len,
                         struct rconfig_notice *out, char *err, size_t errlen);

#endif
