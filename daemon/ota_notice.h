/*
 * ota_notice: the OTA job a platform message describes, parsed and checked. It reads the two
 * messages that carry one — the push on /ota/device/upgrade/${pk}/${dn} ("code" "1000" or 200)
 * and the reply to thing.ota.firmware.get — in every field variant the platform and its SDKs
 * use (see reference/aliyun-protocol.md §3.3): "sign" or "md5", signMethod MD5/Md5/SHA256/Sha256,
 * optional module, extData and isDiff, and multi-file packages ("files"). Pure: no state, no I/O,
 * safe on any thread, fuzzed (tests/fuzz/fuzz_ota_notice.c). Untrusted input gets -EINVAL with a
 * reason that names the field, never a crash.
 */
#ifndef ALIGW_OTA_NOTICE_H
#define ALIGW_OTA_NOTICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define OTA_MAX_FILES 16
#define OTA_VERSION_MAX 64
#define OTA_MODULE_MAX 64
#define OTA_URL_MAX 2048
#define OTA_EXT_MAX 4096         /* bytes of extData as JSON text */
#define OTA_SIZE_MAX (1LL << 40) /* 1 TiB: a sanity bound far above the platform's 1,000 MB */

enum ota_sign { OTA_SIGN_MD5 = 1, OTA_SIGN_SHA256 = 2 };

struct ota_file {
    char *url;
    char *name;   /* "fileName", or "" */
    int64_t size; /* bytes, > 0 */
    enum ota_sign sign_method;
    char digest[65]; /* lowercase hex: 32 chars for MD5, 64 for SHA-256 */
};

struct ota_notice {
    char version[OTA_VERSION_MAX + 1]; /* the package's version */
    char module[OTA_MODULE_MAX + 1];   /* "" = the default module */
    bool is_diff;
    char *ext_data; /* extData as compact JSON text, or NULL */
    size_t n_files; /* 1..OTA_MAX_FILES */
    struct ota_file files[OTA_MAX_FILES];
    int64_t total_size;
    char msg_id[24]; /* the message's "id" ("" if absent) */
    /* After a failed parse: the progress step that reports it (−3 when the digest cannot be
     * used, −2 for a URL or size the download cannot work with, −1 otherwise); module and
     * version keep what could be read. */
    int fail_step;
};

/* Which message the payload is. */
enum ota_notice_kind {
    OTA_NOTICE_PUSH,     /* /ota/device/upgrade/pk/dn: code "1000", 1000 or 200 */
    OTA_NOTICE_GET_REPLY /* thing/ota/firmware/get_reply: code 200, data {} = nothing pending */
};

/*
 * Parses payload (untrusted, len bytes, need not be NUL-terminated). Returns 0 and fills *out
 * (free with ota_notice_free), or: -ENOENT (a get_reply saying no upgrade is pending), -ENOTSUP
 * (the MQTT stream download variant, dProtocol "mqtt"), -EINVAL (anything malformed: bad JSON,
 * wrong code, missing or invalid field, unknown signMethod, digest of the wrong length, URL not
 * http(s)). A reason naming the field is written to err (err may be NULL). On failure *out holds
 * nothing to free; its fail_step, module, version and msg_id are set as far as they could be read.
 */
int ota_notice_parse(const char *payload, size_t len, enum ota_notice_kind kind,
                     struct ota_notice *out, char *err, size_t err_len);
void ota_notice_free(struct ota_notice *n);

/* "md5" / "sha256" (OpenSSL digest names), or NULL. */
const char *ota_sign_name(enum ota_sign s);
/* Parses "md5"/"sha256" back; 0 when unknown. */
enum ota_sign ota_sign_parse(const char *s);

#endif
