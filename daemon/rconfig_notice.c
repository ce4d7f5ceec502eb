/*
 * rconfig_notice: parsing of the platform's remote configuration messages (see the header).
 */
#include "rconfig_notice.h"

#include <jansson.h>

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int fail(int rc, char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(int rc, char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

static bool id_chars_ok(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr("_-.", s[i]))
            return false;
    return true;
}

/* The message id: a string or a non-negative integer, at most 20 characters. */
static void read_id(json_t *root, char *dst, size_t cap)
{
    json_t *id = json_object_get(root, "id");
    dst[0] = '\0';
    if (json_is_string(id) && json_string_length(id) < cap &&
        id_chars_ok(json_string_value(id), json_string_length(id)))
        snprintf(dst, cap, "%s", json_string_value(id));
    else if (json_is_integer(id) && json_integer_value(id) >= 0)
        snprintf(dst, cap, "%lld", (long long)json_integer_value(id));
}

static int fields(json_t *o, struct rconfig_notice *out, char *err, size_t errlen)
{
    json_t *v;
    const char *s;
    size_t n;

    v = json_object_get(o, "getType");
    if (v && (!json_is_string(v) || strcmp(json_string_value(v), "file") != 0))
        return fail(-EINVAL, err, errlen, "getType: only \"file\" is known");
    v = json_object_get(o, "configId");
    if (!json_is_string(v) || (n = json_string_length(v)) == 0 || n > RCONFIG_ID_MAX ||
        !id_chars_ok(json_string_value(v), n))
        return fail(-EINVAL, err, errlen,
                    "configId: missing, or not 1-64 letters, digits or \"_-.\"");
    memcpy(out->config_id, json_string_value(v), n + 1);
    v = json_object_get(o, "configSize");
    if (!json_is_integer(v) || json_integer_value(v) <= 0)
        return fail(-EINVAL, err, errlen, "configSize: missing, or not a positive integer");
    if (json_integer_value(v) > RCONFIG_MAX_BYTES)
        return fail(-EFBIG, err, errlen, "configSize: %lld bytes, above the platform's %d",
                    (long long)json_integer_value(v), RCONFIG_MAX_BYTES);
    out->size = json_integer_value(v);
    v = json_object_get(o, "signMethod");
    s = json_string_value(v);
    if (!s)
        return fail(-EINVAL, err, errlen, "signMethod: missing");
    if (!strcasecmp(s, "sha256"))
        out->sign_method = RCONFIG_SIGN_SHA256;
    else if (!strcasecmp(s, "md5"))
        out->sign_method = RCONFIG_SIGN_MD5;
    else
        return fail(-EINVAL, err, errlen, "signMethod: \"%.32s\" is not Sha256 or Md5", s);
    size_t want = out->sign_method == RCONFIG_SIGN_SHA256 ? 64 : 32;
    v = json_object_get(o, "sign");
    if (!json_is_string(v) || json_string_length(v) != want)
        return fail(-EINVAL, err, errlen, "sign: missing, or not %zu hex digits", want);
    s = json_string_value(v);
    for (size_t i = 0; i < want; i++) {
        if (!isxdigit((unsigned char)s[i]))
            return fail(-EINVAL, err, errlen, "sign: not hex");
        out->digest[i] = (char)tolower((unsigned char)s[i]);
    }
    out->digest[want] = '\0';
    v = json_object_get(o, "url");
    if (!json_is_string(v) || (n = json_string_length(v)) > RCONFIG_URL_MAX ||
        (strncmp(json_string_value(v), "https://", 8) != 0 &&
         strncmp(json_string_value(v), "http://", 7) != 0) ||
        memchr(json_string_value(v), '\0', n))
        return fail(-EINVAL, err, errlen, "url: missing, too long or not http(s)");
    memcpy(out->url, json_string_value(v), n + 1);
    return 0;
}

int rconfig_notice_parse(enum rconfig_notice_kind kind, const char *payload, size_t len,
                         struct rconfig_notice *out, char *err, size_t errlen)
{
    json_error_t je;
    json_t *root, *o;
    int rc;

    memset(out, 0, sizeof(*out));
    if (err && errlen)
        err[0] = '\0';
    root = json_loadb(payload ? payload : "", len, 0, &je);
    if (!json_is_object(root)) {
        json_decref(root);
        return fail(-EINVAL, err, errlen, "not a JSON object");
    }
    read_id(root, out->msg_id, sizeof(out->msg_id));
    if (kind == RCONFIG_PUSH) {
        o = json_object_get(root, "params");
        rc = json_is_object(o) ? fields(o, out, err, errlen)
                               : fail(-EINVAL, err, errlen, "params: missing or not an object");
    } else {
        json_t *code = json_object_get(root, "code");
        out->code = json_is_integer(code)  ? (int)json_integer_value(code)
                    : json_is_string(code) ? atoi(json_string_value(code))
                                           : 200;
        o = json_object_get(root, "data");
        if (out->code != 200) {
            const char *m = json_string_value(json_object_get(root, "message"));
            snprintf(out->message, sizeof(out->message), "%s", m ? m : "");
            rc = fail(-EREMOTE, err, errlen, "the platform replied %d%s%s", out->code,
                      m ? ": " : "", m ? out->message : "");
        } else if (!o || (json_is_object(o) && json_object_size(o) == 0)) {
            rc = fail(-ENOENT, err, errlen, "no configuration for this product");
        } else {
            rc = json_is_object(o) ? fields(o, out, err, errlen)
                                   : fail(-EINVAL, err, errlen, "data: not an object");
        }
    }
    json_decref(root);
    return rc;
}
