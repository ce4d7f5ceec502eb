/*
 * alink: thing-model topics and Alink JSON envelopes (see alink.h). Payloads follow the Link SDK
 * 4.x request shape — id, version, params, sys.ack, no "method" (the platform derives it from the
 * topic) — and its reply shape. Everything here is a pure function so plugins' threads, the IPC
 * layer and the loop can all build messages without locks.
 */
#include "alink.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void alink_msg_free(struct alink_msg *m)
{
    if (!m)
        return;
    free(m->topic);
    free(m->payload);
    m->topic = m->payload = NULL;
    m->len = 0;
}

bool alink_ident_ok(const char *s)
{
    size_t n = 0;
    if (!s || !*s)
        return false;
    for (; s[n]; n++) {
        char c = s[n];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == ':'))
            return false;
        if (n >= ALINK_MAX_IDENT)
            return false;
    }
    return true;
}

static bool req_id_ok(const char *s)
{
    size_t n = 0;
    if (!s || !*s)
        return false;
    for (; s[n]; n++)
        if (s[n] < '0' || s[n] > '9' || n >= 20)
            return false;
    return true;
}

/* A path segment (pk, dn) must be non-empty and contain no '/', '+', '#'. */
static bool seg_ok(const char *s)
{
    return s && *s && !strpbrk(s, "/+#");
}

static char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;
    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    return s;
}

/* Dumps root into out->payload and takes topic; frees root. */
static int finish(json_t *root, char *topic, struct alink_msg *out)
{
    char *payload = root ? json_dumps(root, ALINK_DUMP_FLAGS) : NULL;
    json_decref(root);
    if (!payload || !topic) {
        free(payload);
        free(topic);
        return -ENOMEM;
    }
    out->topic = topic;
    out->payload = payload;
    out->len = strlen(payload);
    return 0;
}

static json_t *request(uint32_t id, json_t *params, bool ack)
{
    char ids[16];
    snprintf(ids, sizeof ids, "%" PRIu32, id);
    return json_pack("{s:s,s:s,s:o,s:{s:i}}", "id", ids, "version", "1.0", "params", params, "sys",
                     "ack", ack ? 1 : 0);
}

static bool is_timed_value(const json_t *v)
{
    return json_is_object(v) && json_object_get(v, "value") && json_object_size(v) <= 2 &&
           (json_object_size(v) == 1 || json_is_integer(json_object_get(v, "time")));
}

int alink_property_post(const char *pk, const char *dn, uint32_t id, const json_t *params,
                        int64_t time_ms, bool ack, struct alink_msg *out)
{
    const char *key;
    json_t *v, *p;

    memset(out, 0, sizeof *out);
    if (!seg_ok(pk) || !seg_ok(dn) || !json_is_object(params) || json_object_size(params) == 0)
        return -EINVAL;
    if (json_object_size(params) > ALINK_MAX_PROPERTIES)
        return -E2BIG;
    p = json_object();
    if (!p)
        return -ENOMEM;
    json_object_foreach((json_t *)params, key, v)
    {
        json_t *nv;
        if (!alink_ident_ok(key)) {
            json_decref(p);
            return -EINVAL;
        }
        if (time_ms > 0 && !is_timed_value(v))
            nv = json_pack("{s:O,s:I}", "value", v, "time", (json_int_t)time_ms);
        else
            nv = json_incref(v);
        if (!nv || json_object_set_new(p, key, nv) < 0) {
            json_decref(p);
            return -ENOMEM;
        }
    }
    return finish(request(id, p, ack), xasprintf("/sys/%s/%s/thing/event/property/post", pk, dn),
                  out);
}

int alink_event_post(const char *pk, const char *dn, uint32_t id, const char *event_id,
                     const json_t *value, int64_t time_ms, bool ack, struct alink_msg *out)
{
    json_t *p;

    memset(out, 0, sizeof *out);
    if (!seg_ok(pk) || !seg_ok(dn) || !alink_ident_ok(event_id) ||
        strcmp(event_id, "property") == 0)
        return -EINVAL;
    if (value && !json_is_object(value))
        return -EINVAL;
    p = json_pack("{s:o}", "value", value ? json_deep_copy(value) : json_object());
    if (!p)
        return -ENOMEM;
    if (time_ms > 0)
        json_object_set_new(p, "time", json_integer(time_ms));
    return finish(request(id, p, ack),
                  xasprintf("/sys/%s/%s/thing/event/%s/post", pk, dn, event_id), out);
}

int alink_batch_post(const char *pk, const char *dn, uint32_t id, const json_t *props,
                     const json_t *events, bool ack, struct alink_msg *out)
{
    json_t *p;
    memset(out, 0, sizeof *out);
    if (!seg_ok(pk) || !seg_ok(dn) || (!props && !events) || (props && !json_is_object(props)) ||
        (events && !json_is_object(events)))
        return -EINVAL;
    p = json_object();
    if (!p || (props && json_object_set(p, "properties", (json_t *)props) < 0) ||
        (events && json_object_set(p, "events", (json_t *)events) < 0)) {
        json_decref(p);
        return -ENOMEM;
    }
    return finish(request(id, p, ack),
                  xasprintf("/sys/%s/%s/thing/event/property/batch/post", pk, dn), out);
}

int alink_history_post(const char *pk, const char *dn, uint32_t id, const json_t *props,
                       const json_t *events, bool ack, struct alink_msg *out)
{
    json_t *p;
    memset(out, 0, sizeof *out);
    if (!seg_ok(pk) || !seg_ok(dn) || (!props && !events) || (props && !json_is_array(props)) ||
        (events && !json_is_array(events)))
        return -EINVAL;
    json_t *rec = json_pack("{s:{s:s,s:s}}", "identity", "productKey", pk, "deviceName", dn);
    p = json_array();
    if (!rec || !p || (props && json_object_set(rec, "properties", (json_t *)props) < 0) ||
        (events && json_object_set(rec, "events", (json_t *)events) < 0) ||
        json_array_append(p, rec) < 0) {
        json_decref(rec);
        json_decref(p);
        return -ENOMEM;
    }
    json_decref(rec);
    return finish(request(id, p, ack),
                  xasprintf("/sys/%s/%s/thing/event/property/history/post", pk, dn), out);
}

static json_t *reply(const char *req_id, int code, const json_t *data, const char *message)
{
    json_t *r = json_pack("{s:s,s:i,s:o}", "id", req_id, "code", code, "data",
                          data ? json_deep_copy(data) : json_object());
    if (!r)
        return NULL;
    if (!message && code == 200)
        message = "success";
    if (message && json_object_set_new(r, "message", json_string(message)) < 0) {
        json_decref(r); /* not UTF-8 */
        return NULL;
    }
    json_object_set_new(r, "version", json_string("1.0"));
    return r;
}

int alink_service_reply(const char *pk, const char *dn, const char *service_id, const char *rrpc_id,
                        const char *req_id, int code, const json_t *data, const char *message,
                        struct alink_msg *out)
{
    char *topic;

    memset(out, 0, sizeof *out);
    if (!seg_ok(pk) || !seg_ok(dn) || !alink_ident_ok(service_id) || !req_id_ok(req_id) ||
        (data && !json_is_object(data) && !json_is_array(data)))
        return -EINVAL;
    if (rrpc_id && *rrpc_id) {
        if (!seg_ok(rrpc_id))
            return -EINVAL;
        topic = xasprintf("/ext/rrpc/%s/sys/%s/%s/thing/service/%s", rrpc_id, pk, dn, service_id);
    } else {
        topic = xasprintf("/sys/%s/%s/thing/service/%s_reply", pk, dn, service_id);
    }
    return finish(reply(req_id, code, data, message), topic, out);
}

int alink_property_set_reply(const char *pk, const char *dn, const char *req_id, int code,
                             const json_t *data, const char *message, struct alink_msg *out)
{
    memset(out, 0, sizeof *out);
    if (!seg_ok(pk) || !seg_ok(dn) || !req_id_ok(req_id) ||
        (data && !json_is_object(data) && !json_is_array(data)))
        return -EINVAL;
    return finish(reply(req_id, code, data, message),
                  xasprintf("/sys/%s/%s/thing/service/property/set_reply", pk, dn), out);
}

int alink_thing_request(const char *pk, const char *dn, uint32_t id, const char *path,
                        const json_t *params, struct alink_msg *out)
{
    char method[160];
    memset(out, 0, sizeof *out);
    if (!seg_ok(pk) || !seg_ok(dn) || !path || !*path || strpbrk(path, "+#") ||
        strstr(path, "//") || path[0] == '/' || strlen(path) >= sizeof method - 7 ||
        (params && !json_is_object(params) && !json_is_array(params)))
        return -EINVAL;
    snprintf(method, sizeof method, "thing.%s", path);
    for (char *c = method; *c; c++)
        if (*c == '/')
            *c = '.';
    json_t *r = request(id, params ? json_deep_copy(params) : json_object(), true);
    if (r)
        json_object_set_new(r, "method", json_string(method));
    return finish(r, xasprintf("/sys/%s/%s/thing/%s", pk, dn, path), out);
}

int alink_shadow_request(const char *pk, const char *dn, bool get, const json_t *reported,
                         int64_t version, struct alink_msg *out)
{
    json_t *r;
    memset(out, 0, sizeof *out);
    if (!seg_ok(pk) || !seg_ok(dn) || (!get && version < 0) ||
        (reported && !json_is_object(reported)))
        return -EINVAL;
    if (get)
        r = json_pack("{s:s}", "method", "get");
    else if (reported)
        r = json_pack("{s:s,s:{s:O},s:I}", "method", "update", "state", "reported", reported,
                      "version", (json_int_t)version);
    else
        r = json_pack("{s:s,s:{s:s},s:I}", "method", "update", "state", "desired", "null",
                      "version", (json_int_t)version);
    return finish(r, xasprintf("/shadow/update/%s/%s", pk, dn), out);
}

int alink_shadow_parse(const void *payload, size_t len, struct alink_shadow *out, char *err,
                       size_t errlen)
{
    json_t *root, *p, *v;
    const char *m;

    memset(out, 0, sizeof *out);
    out->version = -1;
    root = json_loadb(payload, len, 0, NULL);
    if (!json_is_object(root)) {
        json_decref(root);
        snprintf(err, errlen, "not a JSON object");
        return -EINVAL;
    }
    out->root = root;
    m = json_string_value(json_object_get(root, "method"));
    p = json_object_get(root, "payload");
    if (!m || (strcmp(m, "reply") != 0 && strcmp(m, "control") != 0) || !json_is_object(p)) {
        snprintf(err, errlen, "method: not \"reply\" or \"control\", or no payload object");
        alink_shadow_free(out);
        return -EINVAL;
    }
    out->control = m[0] == 'c';
    v = json_object_get(root, "version");
    if (json_is_integer(v) && json_integer_value(v) >= 0)
        out->version = json_integer_value(v);
    v = json_object_get(root, "timestamp");
    if (json_is_integer(v))
        out->timestamp = json_integer_value(v);
    v = json_object_get(p, "state");
    out->state = json_is_object(v) ? v : NULL;
    const char *status = json_string_value(json_object_get(p, "status"));
    out->ok = out->control || (status && strcmp(status, "success") == 0);
    if (!out->ok) {
        json_t *c = json_object_get(p, "content");
        json_t *code = json_object_get(c, "errorcode");
        const char *msg = json_string_value(json_object_get(c, "errormessage"));
        if (json_is_integer(code))
            out->errorcode = (int)json_integer_value(code);
        else if (json_is_string(code))
            out->errorcode = atoi(json_string_value(code));
        snprintf(out->message, sizeof out->message, "%s", msg ? msg : "");
    }
    return 0;
}

void alink_shadow_free(struct alink_shadow *s)
{
    if (!s)
        return;
    json_decref(s->root);
    s->root = NULL;
    s->state = NULL;
}

int alink_config_push_reply(const char *pk, const char *dn, const char *req_id, int code,
                            const char *message, struct alink_msg *out)
{
    memset(out, 0, sizeof *out);
    if (!seg_ok(pk) || !seg_ok(dn) || !req_id_ok(req_id))
        return -EINVAL;
    return finish(reply(req_id, code, NULL, message),
                  xasprintf("/sys/%s/%s/thing/config/push_reply", pk, dn), out);
}

int alink_config_get(const char *pk, const char *dn, uint32_t id, struct alink_msg *out)
{
    memset(out, 0, sizeof *out);
    if (!seg_ok(pk) || !seg_ok(dn))
        return -EINVAL;
    json_t *r =
        request(id, json_pack("{s:s,s:s}", "configScope", "product", "getType", "file"), true);
    if (r)
        json_object_set_new(r, "method", json_string("thing.config.get"));
    return finish(r, xasprintf("/sys/%s/%s/thing/config/get", pk, dn), out);
}

int alink_rrpc_response(const char *pk, const char *dn, const char *rrpc_id, const char *custom,
                        const json_t *data, const void *raw, size_t raw_len, struct alink_msg *out)
{
    char *topic;

    memset(out, 0, sizeof *out);
    if (!seg_ok(pk) || !seg_ok(dn) || !rrpc_id || !seg_ok(rrpc_id))
        return -EINVAL;
    if (custom && (strncmp(custom, "user/", 5) != 0 || !custom[5] || strpbrk(custom, "+#")))
        return -EINVAL;
    topic = custom ? xasprintf("/ext/rrpc/%s//%s/%s/%s", rrpc_id, pk, dn, custom)
                   : xasprintf("/sys/%s/%s/rrpc/response/%s", pk, dn, rrpc_id);
    if (!raw)
        return finish(data ? json_incref((json_t *)data) : json_object(), topic, out);
    char *copy = malloc(raw_len + 1);
    if (!copy || !topic) {
        free(copy);
        free(topic);
        return -ENOMEM;
    }
    memcpy(copy, raw, raw_len);
    copy[raw_len] = '\0';
    out->topic = topic;
    out->payload = copy;
    out->len = raw_len;
    return 0;
}

const char *alink_kind_name(enum alink_kind k)
{
    switch (k) {
    case ALINK_PROPERTY_SET:
        return "property_set";
    case ALINK_SERVICE_CALL:
        return "service_call";
    case ALINK_POST_REPLY:
        return "post_reply";
    case ALINK_REPLY:
        return "reply";
    case ALINK_RRPC_REQUEST:
        return "rrpc_request";
    case ALINK_OTA_UPGRADE:
        return "ota_upgrade";
    case ALINK_NTP_RESPONSE:
        return "ntp_response";
    case ALINK_EXT_ERROR:
        return "ext_error";
    case ALINK_CONFIG_PUSH:
        return "config_push";
    case ALINK_CUSTOM:
        return "custom";
    case ALINK_SHADOW:
        return "shadow";
    case ALINK_NOT_MINE:
        return "not_mine";
    case ALINK_OTHER:
        break;
    }
    return "other";
}

/* If s starts with "a/b/" (a = pk, b = dn, joined by '/'), returns what follows, else NULL. */
static const char *after_pk_dn(const char *s, const char *pk, const char *dn)
{
    size_t lp = strlen(pk), ld = strlen(dn);
    if (strncmp(s, pk, lp) != 0 || s[lp] != '/')
        return NULL;
    s += lp + 1;
    if (strncmp(s, dn, ld) != 0)
        return NULL;
    s += ld;
    if (*s == '\0')
        return s;
    if (*s != '/')
        return NULL;
    return s + 1;
}

static int copy_name(char *dst, size_t cap, const char *src, size_t n)
{
    if (n >= cap)
        return -EINVAL;
    memcpy(dst, src, n);
    dst[n] = '\0';
    return 0;
}

static bool ends_with(const char *s, const char *suffix, size_t *stem)
{
    size_t ls = strlen(s), lx = strlen(suffix);
    if (ls < lx || strcmp(s + ls - lx, suffix) != 0)
        return false;
    *stem = ls - lx;
    return true;
}

/* rest = path after "/sys/pk/dn/". */
static int classify_sys(const char *rest, struct alink_topic *out)
{
    size_t stem;
    const char *p;

    if (strcmp(rest, "thing/service/property/set") == 0) {
        out->kind = ALINK_PROPERTY_SET;
        return 0;
    }
    if (strcmp(rest, "thing/config/push") == 0) {
        out->kind = ALINK_CONFIG_PUSH;
        return 0;
    }
    if (strncmp(rest, "rrpc/request/", 13) == 0) {
        p = rest + 13;
        if (!seg_ok(p))
            return 0; /* ALINK_OTHER: no id that could be answered */
        out->kind = ALINK_RRPC_REQUEST;
        return copy_name(out->rrpc_id, sizeof out->rrpc_id, p, strlen(p));
    }
    /* thing/event/${name}/post_reply; the batch and history posts' replies (two levels in
     * between) are replies like any other, below. */
    if (strncmp(rest, "thing/event/", 12) == 0 && ends_with(rest, "/post_reply", &stem) &&
        stem > 12 && !memchr(rest + 12, '/', stem - 12)) {
        out->kind = ALINK_POST_REPLY;
        return copy_name(out->name, sizeof out->name, rest + 12, stem - 12);
    }
    if (ends_with(rest, "_reply", &stem) && stem > 0 && rest[stem - 1] != '/' &&
        !strstr(rest, "//")) {
        out->kind = ALINK_REPLY;
        return copy_name(out->name, sizeof out->name, rest, stem);
    }
    if (strncmp(rest, "thing/service/", 14) == 0) {
        p = rest + 14;
        if (!alink_ident_ok(p))
            return 0;
        out->kind = ALINK_SERVICE_CALL;
        return copy_name(out->name, sizeof out->name, p, strlen(p));
    }
    return 0;
}

int alink_classify(const char *pk, const char *dn, const char *topic, struct alink_topic *out)
{
    const char *rest;
    int rc = 0;

    if (!out)
        return -EINVAL;
    memset(out, 0, sizeof *out);
    out->kind = ALINK_NOT_MINE;
    if (!seg_ok(pk) || !seg_ok(dn) || !topic) {
        out->kind = ALINK_OTHER;
        return -EINVAL;
    }
    if (strncmp(topic, "/sys/", 5) == 0) {
        rest = after_pk_dn(topic + 5, pk, dn);
        if (rest) {
            out->kind = ALINK_OTHER;
            rc = classify_sys(rest, out);
        }
    } else if (strncmp(topic, "/ext/rrpc/", 10) == 0) {
        const char *id = topic + 10, *slash = strchr(id, '/');
        if (slash && slash > id && slash[1] == '/' && (rest = after_pk_dn(slash + 2, pk, dn))) {
            /* The custom form wraps a custom topic: /ext/rrpc/<id>//pk/dn/user/... */
            out->kind = ALINK_OTHER;
            if (strncmp(rest, "user/", 5) == 0 && alink_topic_owned(pk, dn, topic, ALINK_PUBLISH)) {
                out->kind = ALINK_RRPC_REQUEST;
                rc = copy_name(out->name, sizeof out->name, rest, strlen(rest));
                if (rc == 0)
                    rc = copy_name(out->rrpc_id, sizeof out->rrpc_id, id, (size_t)(slash - id));
            }
        } else if (slash && slash > id && strncmp(slash, "/sys/", 5) == 0 &&
                   (rest = after_pk_dn(slash + 5, pk, dn))) {
            out->kind = ALINK_OTHER;
            if (strncmp(rest, "thing/service/", 14) == 0 && alink_ident_ok(rest + 14)) {
                out->kind = ALINK_SERVICE_CALL;
                rc = copy_name(out->name, sizeof out->name, rest + 14, strlen(rest + 14));
                if (rc == 0)
                    rc = copy_name(out->rrpc_id, sizeof out->rrpc_id, id, (size_t)(slash - id));
            }
        }
    } else if (strncmp(topic, "/ota/device/upgrade/", 20) == 0) {
        rest = after_pk_dn(topic + 20, pk, dn);
        if (rest && *rest == '\0')
            out->kind = ALINK_OTA_UPGRADE;
    } else if (strncmp(topic, "/ext/ntp/", 9) == 0) {
        rest = after_pk_dn(topic + 9, pk, dn);
        if (rest)
            out->kind = strcmp(rest, "response") == 0 ? ALINK_NTP_RESPONSE : ALINK_OTHER;
    } else if (strncmp(topic, "/shadow/get/", 12) == 0) {
        rest = after_pk_dn(topic + 12, pk, dn);
        if (rest && *rest == '\0')
            out->kind = ALINK_SHADOW;
    } else if (strncmp(topic, "/ext/error/", 11) == 0) {
        rest = after_pk_dn(topic + 11, pk, dn);
        if (rest && *rest == '\0')
            out->kind = ALINK_EXT_ERROR;
    } else if (topic[0] == '/' && (rest = after_pk_dn(topic + 1, pk, dn))) {
        out->kind = ALINK_OTHER;
        if (strncmp(rest, "user/", 5) == 0 && rest[5]) {
            out->kind = ALINK_CUSTOM;
            rc = copy_name(out->name, sizeof out->name, rest + 5, strlen(rest + 5));
        }
    } else if (strstr(topic, "/") && (rest = strstr(topic, pk)) && after_pk_dn(rest, pk, dn) &&
               rest > topic && rest[-1] == '/') {
        out->kind = ALINK_OTHER; /* e.g. /shadow/get/pk/dn, /ext/error/pk/dn */
    }
    if (rc < 0) {
        out->kind = ALINK_OTHER;
        out->name[0] = out->rrpc_id[0] = '\0';
    }
    return rc;
}

static int perr(char *err, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int perr(char *err, size_t len, const char *fmt, ...)
{
    if (err && len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, len, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

int alink_parse(const char *payload, size_t len, struct alink_payload *out, char *err,
                size_t err_len)
{
    json_error_t je;
    json_t *v;

    memset(out, 0, sizeof *out);
    if (!payload)
        return perr(err, err_len, "empty payload");
    out->root = json_loadb(payload, len, JSON_REJECT_DUPLICATES, &je);
    if (!out->root)
        return perr(err, err_len, "invalid JSON at column %d: %s", je.column, je.text);
    if (!json_is_object(out->root)) {
        alink_payload_free(out);
        return perr(err, err_len, "payload is not a JSON object");
    }
    v = json_object_get(out->root, "id");
    if (json_is_string(v)) {
        if (!req_id_ok(json_string_value(v))) {
            alink_payload_free(out);
            return perr(err, err_len, "\"id\" must be a string of up to 20 digits");
        }
        snprintf(out->id, sizeof out->id, "%s", json_string_value(v));
    } else if (json_is_integer(v) && json_integer_value(v) >= 0) {
        snprintf(out->id, sizeof out->id, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    } else if (v) {
        alink_payload_free(out);
        return perr(err, err_len, "\"id\" must be a string or a non-negative integer");
    }
    v = json_object_get(out->root, "params");
    if (v && !json_is_object(v) && !json_is_array(v)) {
        alink_payload_free(out);
        return perr(err, err_len, "\"params\" must be an object or an array");
    }
    out->params = v;
    out->data = json_object_get(out->root, "data");
    v = json_object_get(out->root, "code");
    if (json_is_integer(v)) {
        json_int_t c = json_integer_value(v);
        if (c < -2147483647 || c > 2147483647) {
            alink_payload_free(out);
            return perr(err, err_len, "\"code\" out of range");
        }
        out->has_code = true;
        out->code = (int)c;
    } else if (json_is_string(v)) {
        const char *s = json_string_value(v);
        char *end;
        long c;
        errno = 0;
        c = strtol(s, &end, 10);
        if (!*s || *end || errno || c < -2147483647 || c > 2147483647) {
            alink_payload_free(out);
            return perr(err, err_len, "\"code\" is not a number");
        }
        out->has_code = true;
        out->code = (int)c;
    } else if (v) {
        alink_payload_free(out);
        return perr(err, err_len, "\"code\" must be a number");
    }
    v = json_object_get(out->root, "message");
    if (json_is_string(v))
        out->message = json_string_value(v);
    v = json_object_get(out->root, "method");
    if (json_is_string(v))
        out->method = json_string_value(v);
    return 0;
}

void alink_payload_free(struct alink_payload *p)
{
    if (!p)
        return;
    json_decref(p->root);
    memset(p, 0, sizeof *p);
}

int alink_system_topics(const char *pk, const char *dn, char ***out, size_t *n)
{
    /* The "/sys/pk/dn/" ones by suffix; then three outside /sys. */
    static const char *const sys[] = {
        "thing/service/property/set",
        "thing/service/+",
        "thing/event/+/post_reply",
        "thing/event/property/batch/post_reply", /* '+' matches one level only */
        "thing/event/property/history/post_reply",
        "rrpc/request/+",
        "thing/config/push",
        "thing/config/get_reply",
        "thing/ota/firmware/get_reply",
        "thing/property/desired/get_reply",
        "thing/property/desired/delete_reply",
        "thing/deviceinfo/update_reply",
        "thing/deviceinfo/delete_reply",
    };
    size_t ns = sizeof sys / sizeof sys[0], k = ns + 4;
    char **v;
    int rc = 0;

    *out = NULL;
    if (n)
        *n = 0;
    if (!seg_ok(pk) || !seg_ok(dn))
        return -EINVAL;
    v = calloc(k + 1, sizeof *v);
    if (!v)
        return -ENOMEM;
    for (size_t i = 0; i < ns; i++)
        v[i] = xasprintf("/sys/%s/%s/%s", pk, dn, sys[i]);
    v[ns] = xasprintf("/ota/device/upgrade/%s/%s", pk, dn);
    v[ns + 1] = xasprintf("/ext/ntp/%s/%s/response", pk, dn);
    v[ns + 2] = xasprintf("/ext/error/%s/%s", pk, dn);
    v[ns + 3] = xasprintf("/shadow/get/%s/%s", pk, dn);
    for (size_t i = 0; i < k; i++)
        if (!v[i])
            rc = -ENOMEM;
    if (rc < 0) {
        for (size_t i = 0; i < k; i++)
            free(v[i]);
        free(v);
        return rc;
    }
    *out = v;
    if (n)
        *n = k;
    return 0;
}

int alink_ext_rrpc_topics(const char *pk, const char *dn, char *const *user_topics, size_t n_user,
                          char ***out, size_t *n)
{
    size_t k = 0, cap = n_user + 1;
    char **v, prefix[160];

    *out = NULL;
    if (n)
        *n = 0;
    if (!seg_ok(pk) || !seg_ok(dn) ||
        snprintf(prefix, sizeof prefix, "/%s/%s/user/", pk, dn) >= (int)sizeof prefix)
        return -EINVAL;
    v = calloc(cap + 1, sizeof *v);
    if (!v)
        return -ENOMEM;
    v[k++] = xasprintf("/ext/rrpc/+/sys/%s/%s/thing/service/+", pk, dn);
    for (size_t i = 0; i < n_user; i++)
        if (user_topics[i] && strncmp(user_topics[i], prefix, strlen(prefix)) == 0)
            v[k++] = xasprintf("/ext/rrpc/+/%s", user_topics[i]);
    for (size_t i = 0; i < k; i++)
        if (!v[i]) {
            for (size_t j = 0; j < k; j++)
                free(v[j]);
            free(v);
            return -ENOMEM;
        }
    *out = v;
    if (n)
        *n = k;
    return 0;
}

void alink_topics_free(char **topics)
{
    if (!topics)
        return;
    for (char **p = topics; *p; p++)
        free(*p);
    free(topics);
}

/* ---- topic ownership --------------------------------------------------------------------- */

/* Whether the level [s, s+n) equals w. */
static bool level_is(const char *s, size_t n, const char *w)
{
    return strlen(w) == n && memcmp(s, w, n) == 0;
}

/*
 * Splits topic (after its leading '/') into levels; returns how many (up to max), or -1 when a
 * level is empty or there are more than max. lv[i]/ln[i] point into topic.
 */
static int split_levels(const char *topic, const char **lv, size_t *ln, int max)
{
    int n = 0;
    const char *p = topic + 1;

    for (;;) {
        const char *e = strchr(p, '/');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == 0 || n == max)
            return -1;
        lv[n] = p;
        ln[n++] = len;
        if (!e)
            return n;
        p = e + 1;
    }
}

/* Wildcards: none for publishing; whole levels from `from` on for subscribing, '#' last. */
static bool wildcards_ok(const char **lv, const size_t *ln, int n, int from, enum alink_use use)
{
    for (int i = 0; i < n; i++) {
        bool plus = memchr(lv[i], '+', ln[i]) != NULL, hash = memchr(lv[i], '#', ln[i]) != NULL;
        if (!plus && !hash)
            continue;
        if (use == ALINK_PUBLISH || i < from || ln[i] != 1 || (hash && i != n - 1))
            return false;
    }
    return true;
}

#define TOPIC_MAX_LEVELS 32

static bool owned_levels(const char *pk, const char *dn, const char **lv, const size_t *ln, int n,
                         enum alink_use use, int depth)
{
    if (n >= 3 && level_is(lv[0], ln[0], pk) && level_is(lv[1], ln[1], dn) &&
        level_is(lv[2], ln[2], "user"))
        return n >= 4 && wildcards_ok(lv, ln, n, 3, use);
    if (n >= 1 && level_is(lv[0], ln[0], "sys"))
        return n >= 4 && level_is(lv[1], ln[1], pk) && level_is(lv[2], ln[2], dn) &&
               wildcards_ok(lv, ln, n, 3, use);
    if (n >= 1 && level_is(lv[0], ln[0], "ota"))
        return n == 5 && level_is(lv[1], ln[1], "device") && level_is(lv[3], ln[3], pk) &&
               level_is(lv[4], ln[4], dn) && wildcards_ok(lv, ln, n, 5, use);
    if (n >= 1 && level_is(lv[0], ln[0], "shadow"))
        return n == 4 && level_is(lv[2], ln[2], pk) && level_is(lv[3], ln[3], dn) &&
               wildcards_ok(lv, ln, n, 4, use);
    if (n >= 1 && level_is(lv[0], ln[0], "ext")) {
        if (n >= 3 && level_is(lv[1], ln[1], "rrpc"))
            return depth == 0 && wildcards_ok(lv, ln, 3, 2, use) &&
                   owned_levels(pk, dn, lv + 3, ln + 3, n - 3, use, depth + 1);
        return n >= 4 && level_is(lv[2], ln[2], pk) && level_is(lv[3], ln[3], dn) &&
               wildcards_ok(lv, ln, n, 4, use);
    }
    if (use == ALINK_SUBSCRIBE && n >= 3 && level_is(lv[0], ln[0], "broadcast"))
        return level_is(lv[1], ln[1], pk) && wildcards_ok(lv, ln, n, 2, use);
    return false;
}

bool alink_topic_owned(const char *pk, const char *dn, const char *topic, enum alink_use use)
{
    const char *lv[TOPIC_MAX_LEVELS];
    size_t ln[TOPIC_MAX_LEVELS];
    int n;

    if (!pk || !dn || !topic || topic[0] != '/' || !*pk || !*dn)
        return false;
    if (strncmp(topic, "/ext/rrpc/", 10) == 0) {
        /* The custom RRPC form keeps the custom topic's own slash: /ext/rrpc/<id>//pk/dn/user/… */
        const char *id = topic + 10, *slash = strchr(id, '/');
        if (slash && slash[1] == '/') {
            size_t idn = (size_t)(slash - id);
            bool wild = memchr(id, '+', idn) || memchr(id, '#', idn);
            bool any_id = use == ALINK_SUBSCRIBE && idn == 1 && *id == '+';
            const char *rest = after_pk_dn(slash + 2, pk, dn);
            return idn > 0 && (!wild || any_id) && rest && strncmp(rest, "user/", 5) == 0 &&
                   alink_topic_owned(pk, dn, slash + 1, use);
        }
    }
    n = split_levels(topic, lv, ln, TOPIC_MAX_LEVELS);
    return n > 0 && owned_levels(pk, dn, lv, ln, n, use, 0);
}
