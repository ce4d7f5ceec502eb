/*
 * ota_notice: parsing of OTA job messages (see ota_notice.h). Field names follow the platform's
 * documentation and its SDKs: LinkSDK 4 reads "sign" + "signMethod", iotkit 3 reads "md5"; both
 * are accepted, "sign" preferred. Entries of "files" accept the same names as the top level
 * ("url", "size", "sign"/"md5", "name") and the "file"-prefixed spellings ("fileUrl", "fileSize",
 * "fileSign"/"fileMd5", "fileName").
 */
#include "ota_notice.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

static int bad(char *err, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int bad(char *err, size_t len, const char *fmt, ...)
{
    va_list ap;
    if (err && len) {
        va_start(ap, fmt);
        vsnprintf(err, len, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

const char *ota_sign_name(enum ota_sign s)
{
    return s == OTA_SIGN_MD5 ? "md5" : s == OTA_SIGN_SHA256 ? "sha256" : NULL;
}

enum ota_sign ota_sign_parse(const char *s)
{
    if (!s)
        return 0;
    if (!strcasecmp(s, "md5"))
        return OTA_SIGN_MD5;
    if (!strcasecmp(s, "sha256"))
        return OTA_SIGN_SHA256;
    return 0;
}

void ota_notice_free(struct ota_notice *n)
{
    if (!n)
        return;
    for (size_t i = 0; i < n->n_files; i++) {
        free(n->files[i].url);
        free(n->files[i].name);
    }
    free(n->ext_data);
    memset(n, 0, sizeof(*n));
}

/* A printable string without control characters, 1..max bytes. */
static bool text_ok(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max)
        return false;
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return false;
    return true;
}

static json_t *get2(json_t *o, const char *a, const char *b)
{
    json_t *v = json_object_get(o, a);
    return v ? v : (b ? json_object_get(o, b) : NULL);
}

static int parse_size(json_t *v, int64_t *out)
{
    json_int_t n;
    if (json_is_integer(v)) {
        n = json_integer_value(v);
    } else if (json_is_string(v)) {
        const char *s = json_string_value(v);
        char *end;
        errno = 0;
        if (!*s || !isdigit((unsigned char)*s))
            return -1;
        n = strtoll(s, &end, 10);
        if (errno || *end)
            return -1;
    } else {
        return -1;
    }
    if (n <= 0 || n > OTA_SIZE_MAX)
        return -1;
    *out = n;
    return 0;
}

/* Fills f from the object o (the top level or an entry of "files"); method is the package's
 * signMethod (0 when absent). where names the object in messages. */
static int parse_file(json_t *o, enum ota_sign method, const char *where, struct ota_file *f,
                      int *step, char *err, size_t len)
{
    json_t *url = get2(o, "url", "fileUrl");
    json_t *size = get2(o, "size", "fileSize");
    json_t *sign = get2(o, "sign", "fileSign");
    json_t *md5 = get2(o, "md5", "fileMd5");
    json_t *name = get2(o, "name", "fileName");
    const char *u, *dg = NULL;
    size_t want;

    *step = -2;
    if (!json_is_string(url))
        return bad(err, len, "%surl: missing or not a string", where);
    u = json_string_value(url);
    if (!text_ok(u, OTA_URL_MAX) || strpbrk(u, " \t\"<>\\"))
        return bad(err, len, "%surl: empty, too long or has invalid characters", where);
    if (strncasecmp(u, "https://", 8) != 0 && strncasecmp(u, "http://", 7) != 0)
        return bad(err, len, "%surl: not an http(s) URL", where);
    if (parse_size(size, &f->size) < 0)
        return bad(err, len, "%ssize: missing, not a positive integer or above %lld", where,
                   (long long)OTA_SIZE_MAX);
    *step = -3;
    /* "sign" with the signMethod wins; "md5" is used when there is no usable sign. */
    if (json_is_string(sign) && json_string_length(sign) > 0) {
        if (!method)
            return bad(err, len, "%ssignMethod: missing (needed with sign)", where);
        dg = json_string_value(sign);
        f->sign_method = method;
    } else if (json_is_string(md5) && json_string_length(md5) > 0) {
        if (method && method != OTA_SIGN_MD5)
            return bad(err, len, "%ssign: missing for signMethod SHA256", where);
        dg = json_string_value(md5);
        f->sign_method = OTA_SIGN_MD5;
    } else {
        return bad(err, len, "%ssign: missing (neither sign nor md5)", where);
    }
    want = f->sign_method == OTA_SIGN_MD5 ? 32 : 64;
    if (strlen(dg) != want)
        return bad(err, len, "%ssign: %zu characters, a %s digest has %zu hex digits", where,
                   strlen(dg), f->sign_method == OTA_SIGN_MD5 ? "MD5" : "SHA-256", want);
    for (size_t i = 0; i < want; i++) {
        if (!isxdigit((unsigned char)dg[i]))
            return bad(err, len, "%ssign: not hexadecimal", where);
        f->digest[i] = (char)tolower((unsigned char)dg[i]);
    }
    f->digest[want] = '\0';
    *step = -1;
    if (name && !json_is_string(name))
        return bad(err, len, "%sname: not a string", where);
    f->url = strdup(u);
    f->name = strdup(name ? json_string_value(name) : "");
    if (!f->url || !f->name)
        return -ENOMEM;
    return 0;
}

static int code_of(json_t *c, int *out)
{
    if (json_is_integer(c)) {
        *out = (int)json_integer_value(c);
        return 0;
    }
    if (json_is_string(c)) {
        const char *s = json_string_value(c);
        char *end;
        long v;
        if (!*s || strlen(s) > 9)
            return -1;
        v = strtol(s, &end, 10);
        if (*end)
            return -1;
        *out = (int)v;
        return 0;
    }
    return -1;
}

static int parse_doc(json_t *root, enum ota_notice_kind kind, struct ota_notice *n, char *err,
                     size_t len)
{
    json_t *data, *v, *files;
    enum ota_sign method = 0;
    int code = 0, rc;

    if (!json_is_object(root))
        return bad(err, len, "not a JSON object");
    v = json_object_get(root, "id");
    if (json_is_integer(v) && json_integer_value(v) >= 0)
        snprintf(n->msg_id, sizeof(n->msg_id), "%lld", (long long)json_integer_value(v));
    else if (json_is_string(v) && json_string_length(v) < sizeof(n->msg_id))
        snprintf(n->msg_id, sizeof(n->msg_id), "%s", json_string_value(v));
    v = json_object_get(root, "code");
    if (v) {
        if (code_of(v, &code) < 0)
            return bad(err, len, "code: not a number");
        if (kind == OTA_NOTICE_PUSH ? (code != 1000 && code != 200) : code != 200) {
            json_t *m = json_object_get(root, "message");
            return bad(err, len, "code: %d (%s)", code,
                       json_is_string(m) ? json_string_value(m) : "no message");
        }
    } else if (kind == OTA_NOTICE_GET_REPLY) {
        return bad(err, len, "code: missing");
    }
    data = json_object_get(root, "data");
    if (kind == OTA_NOTICE_GET_REPLY &&
        (!data || json_is_null(data) || (json_is_object(data) && json_object_size(data) == 0)))
        return -ENOENT;
    if (!json_is_object(data))
        return bad(err, len, "data: missing or not an object");

    v = json_object_get(data, "dProtocol");
    if (v && !json_is_string(v))
        return bad(err, len, "data.dProtocol: not a string");
    if (v && strcasecmp(json_string_value(v), "https") != 0 &&
        strcasecmp(json_string_value(v), "http") != 0) {
        if (!strcasecmp(json_string_value(v), "mqtt")) {
            bad(err, len, "data.dProtocol: MQTT stream download is not supported");
            return -ENOTSUP;
        }
        return bad(err, len, "data.dProtocol: unknown protocol");
    }
    v = json_object_get(data, "version");
    if (!json_is_string(v) || !text_ok(json_string_value(v), OTA_VERSION_MAX))
        return bad(err, len, "data.version: missing, empty, longer than %d or not text",
                   OTA_VERSION_MAX);
    snprintf(n->version, sizeof(n->version), "%s", json_string_value(v));
    v = json_object_get(data, "module");
    if (v && !json_is_null(v)) {
        const char *m;
        if (!json_is_string(v))
            return bad(err, len, "data.module: not a string");
        m = json_string_value(v);
        if (*m && !text_ok(m, OTA_MODULE_MAX))
            return bad(err, len, "data.module: longer than %d or not text", OTA_MODULE_MAX);
        if (strcmp(m, "default") != 0)
            snprintf(n->module, sizeof(n->module), "%s", m);
    }
    v = json_object_get(data, "signMethod");
    if (v && !json_is_null(v)) {
        if (!json_is_string(v) || !(method = ota_sign_parse(json_string_value(v)))) {
            n->fail_step = -3;
            return bad(err, len, "data.signMethod: unknown (MD5, Md5, SHA256 or Sha256)");
        }
    }
    v = json_object_get(data, "isDiff");
    if (v && !json_is_null(v)) {
        if (json_is_boolean(v))
            n->is_diff = json_is_true(v);
        else if (json_is_integer(v) && (json_integer_value(v) == 0 || json_integer_value(v) == 1))
            n->is_diff = json_integer_value(v) == 1;
        else
            return bad(err, len, "data.isDiff: not 0, 1 or a boolean");
    }
    v = json_object_get(data, "extData");
    if (v && !json_is_null(v)) {
        n->ext_data = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!n->ext_data)
            return -ENOMEM;
        if (strlen(n->ext_data) > OTA_EXT_MAX)
            return bad(err, len, "data.extData: more than %d bytes", OTA_EXT_MAX);
    }

    files = json_object_get(data, "files");
    if (files && !json_is_null(files)) {
        size_t i;
        json_t *f;
        if (!json_is_array(files) || json_array_size(files) == 0)
            return bad(err, len, "data.files: not a non-empty array");
        if (json_array_size(files) > OTA_MAX_FILES)
            return bad(err, len, "data.files: more than %d files", OTA_MAX_FILES);
        json_array_foreach(files, i, f)
        {
            char where[48];
            snprintf(where, sizeof(where), "data.files[%zu].", i);
            if (!json_is_object(f))
                return bad(err, len, "%s: not an object", where);
            rc = parse_file(f, method, where, &n->files[n->n_files], &n->fail_step, err, len);
            n->n_files++;
            if (rc < 0)
                return rc;
        }
    } else {
        rc = parse_file(data, method, "data.", &n->files[0], &n->fail_step, err, len);
        n->n_files = 1;
        if (rc < 0)
            return rc;
    }
    n->fail_step = -2;
    for (size_t i = 0; i < n->n_files; i++) {
        n->total_size += n->files[i].size;
        if (n->total_size > OTA_SIZE_MAX)
            return bad(err, len, "data: the files add up to more than %lld bytes",
                       (long long)OTA_SIZE_MAX);
    }
    return 0;
}

int ota_notice_parse(const char *payload, size_t len, enum ota_notice_kind kind,
                     struct ota_notice *out, char *err, size_t err_len)
{
    json_error_t je;
    json_t *root;
    int rc;

    memset(out, 0, sizeof(*out));
    out->fail_step = -1;
    if (err && err_len)
        err[0] = '\0';
    if (!payload)
        return bad(err, err_len, "no payload");
    root = json_loadb(payload, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return bad(err, err_len, "bad JSON at %d:%d: %s", je.line, je.column, je.text);
    out->fail_step = -1;
    rc = parse_doc(root, kind, out, err, err_len);
    json_decref(root);
    if (rc < 0) {
        char module[sizeof(out->module)], version[sizeof(out->version)], id[sizeof(out->msg_id)];
        int step = out->fail_step ? out->fail_step : -1;
        memcpy(module, out->module, sizeof(module));
        memcpy(version, out->version, sizeof(version));
        memcpy(id, out->msg_id, sizeof(id));
        ota_notice_free(out);
        out->fail_step = step;
        memcpy(out->module, module, sizeof(module));
        memcpy(out->version, version, sizeof(version));
        memcpy(out->msg_id, id, sizeof(id));
    }
    return rc;
}
