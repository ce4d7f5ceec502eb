/*
 * ipc_request: framing, parsing and validation of local API requests (see ipc_request.h).
 * Each op has a table of the fields it accepts; a request is walked member by member, every
 * member must be in its op's table (or be "id"/"op"), each field's parser checks type, length
 * and range and stores a typed value, then a per-op check looks at fields together (exactly one
 * of payload/payload_b64, a topic that belongs to the device). Every error names the field.
 */
#include "ipc_request.h"

#include "base64.h"

#include "errors.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TIME_MAX_MS 9007199254740991LL /* 2^53 - 1: what a JSON double holds exactly */
#define DAY_MS (24LL * 3600 * 1000)

static const char *const op_names[IPC_OP_COUNT_] = {
    [IPC_OP_HELLO] = "hello",
    [IPC_OP_PUBLISH] = "publish",
    [IPC_OP_POST_PROPERTIES] = "post_properties",
    [IPC_OP_POST_EVENT] = "post_event",
    [IPC_OP_REPLY] = "reply",
    [IPC_OP_WATCH] = "watch",
    [IPC_OP_DEVICES] = "devices",
    [IPC_OP_DEVICE] = "device",
    [IPC_OP_ADD_DEVICE] = "add_device",
    [IPC_OP_REMOVE_DEVICE] = "remove_device",
    [IPC_OP_STATS] = "stats",
    [IPC_OP_RELOAD] = "reload",
    [IPC_OP_STATUS] = "status",
    [IPC_OP_OTA] = "ota",
    [IPC_OP_OTA_RESULT] = "ota_result",
    [IPC_OP_OTA_VERSION] = "ota_version",
    [IPC_OP_OTA_CHECK] = "ota_check",
    [IPC_OP_POST_BATCH] = "post_batch",
    [IPC_OP_POST_HISTORY] = "post_history",
    [IPC_OP_CONFIG_GET] = "config_get",
    [IPC_OP_SHADOW_GET] = "shadow_get",
    [IPC_OP_SHADOW_UPDATE] = "shadow_update",
    [IPC_OP_SHADOW_CLEAR_DESIRED] = "shadow_clear_desired",
    [IPC_OP_DESIRED_GET] = "desired_get",
    [IPC_OP_DESIRED_DELETE] = "desired_delete",
    [IPC_OP_TAGS_UPDATE] = "tags_update",
    [IPC_OP_TAGS_DELETE] = "tags_delete",
};

static const char *const err_names[IPC_ERR_COUNT_] = {
    [IPC_ERR_BAD_JSON] = "bad_json",
    [IPC_ERR_BAD_REQUEST] = "bad_request",
    [IPC_ERR_UNKNOWN_OP] = "unknown_op",
    [IPC_ERR_LINE_TOO_LONG] = "line_too_long",
    [IPC_ERR_PAYLOAD_TOO_LARGE] = "payload_too_large",
    [IPC_ERR_NO_DEVICE] = "no_device",
    [IPC_ERR_FORBIDDEN] = "forbidden",
    [IPC_ERR_STORE_FULL] = "store_full",
    [IPC_ERR_UNAVAILABLE] = "unavailable",
    [IPC_ERR_TIMEOUT] = "timeout",
    [IPC_ERR_INTERNAL] = "internal",
    [IPC_ERR_REFUSED] = "refused",
    [IPC_ERR_EXISTS] = "exists",
    [IPC_ERR_BUSY] = "busy",
};

static const char *const kind_names[] = {"message", "property_set", "service_call", "state",
                                         "reply",   "ota",          "config",       "shadow"};

const char *ipc_op_name(enum ipc_op op)
{
    return (unsigned)op < IPC_OP_COUNT_ ? op_names[op] : "?";
}

const char *ipc_err_name(enum ipc_err code)
{
    return (unsigned)code < IPC_ERR_COUNT_ ? err_names[code] : "internal";
}

const char *ipc_event_kind_name(enum ipc_event_kind kind)
{
    for (unsigned i = 0; i < sizeof(kind_names) / sizeof(kind_names[0]); i++)
        if ((unsigned)kind == 1u << i)
            return kind_names[i];
    return "?";
}

bool ipc_op_is_admin(enum ipc_op op)
{
    return op == IPC_OP_ADD_DEVICE || op == IPC_OP_REMOVE_DEVICE || op == IPC_OP_RELOAD;
}

enum ipc_err ipc_err_from_errno(int err)
{
    switch (err) {
    case ALIGW_ENODEVICE:
    case -ENOENT:
        return IPC_ERR_NO_DEVICE;
    case ALIGW_ESTOREFULL:
    case -ENOSPC:
        return IPC_ERR_STORE_FULL;
    case -EACCES:
    case -EPERM:
        return IPC_ERR_FORBIDDEN;
    case -ETIMEDOUT:
        return IPC_ERR_TIMEOUT;
    case -EAGAIN:
    case -ENOTCONN:
    case -ECONNRESET:
    case -ESHUTDOWN:
    case ALIGW_EAUTH:
    case ALIGW_EKICKED:
        return IPC_ERR_UNAVAILABLE;
    case -EINVAL:
    case ALIGW_ECONFIG:
        return IPC_ERR_BAD_REQUEST;
    case -EMSGSIZE:
    case -E2BIG:
        return IPC_ERR_PAYLOAD_TOO_LARGE;
    case -EEXIST:
        return IPC_ERR_EXISTS;
    case -EBUSY:
    case -ECANCELED:
        return IPC_ERR_BUSY;
    case ALIGW_EREFUSED:
        return IPC_ERR_REFUSED;
    default:
        return IPC_ERR_INTERNAL;
    }
}

/* ---- small validators ---- */

static bool is_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static bool chars_ok(const char *s, size_t n, const char *extra)
{
    for (size_t i = 0; i < n; i++)
        if (!is_alnum(s[i]) && (s[i] == '\0' || !strchr(extra, s[i])))
            return false;
    return true;
}

int ipc_device_key_parse(const char *s, struct ipc_device_key *out, const char **why)
{
    const char *slash = strchr(s, '/');
    if (!slash) {
        *why = "must be \"productKey/deviceName\"";
        return -EINVAL;
    }
    size_t pl = (size_t)(slash - s), dl = strlen(slash + 1);
    if (pl == 0 || pl > IPC_PK_MAX || !chars_ok(s, pl, "_-")) {
        *why = "productKey must be 1-32 letters, digits, '_' or '-'";
        return -EINVAL;
    }
    if (dl == 0 || dl > IPC_DN_MAX || !chars_ok(slash + 1, dl, "_-@.:")) {
        *why = "deviceName must be 1-64 letters, digits or \"_-@.:\"";
        return -EINVAL;
    }
    memcpy(out->pk, s, pl);
    out->pk[pl] = '\0';
    memcpy(out->dn, slash + 1, dl + 1);
    memcpy(out->key, s, pl + dl + 2);
    return 0;
}

static bool ident_ok(const char *s, size_t n)
{
    return n > 0 && n <= IPC_IDENT_MAX && chars_ok(s, n, "_:.-");
}

/* A topic filter is valid when '+' and '#' stand alone in their level and '#' comes last. */
static bool pattern_ok(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] != '+' && p[i] != '#')
            continue;
        bool start = i == 0 || p[i - 1] == '/';
        bool end = i + 1 == n || p[i + 1] == '/';
        if (!start || !end || (p[i] == '#' && i + 1 != n))
            return false;
    }
    return true;
}

bool ipc_topic_match(const char *pat, const char *topic)
{
    while (*pat) {
        if (pat[0] == '#')
            return true;
        if (pat[0] == '+') {
            while (*topic && *topic != '/')
                topic++;
            pat++;
        } else {
            const char *pe = strchr(pat, '/'), *te = strchr(topic, '/');
            size_t pl = pe ? (size_t)(pe - pat) : strlen(pat);
            size_t tl = te ? (size_t)(te - topic) : strlen(topic);
            if (pl != tl || memcmp(pat, topic, pl) != 0)
                return false;
            pat += pl;
            topic += tl;
        }
        /* both at a level end now */
        if (*pat == '/' && *topic == '/') {
            pat++;
            topic++;
        } else if (*pat == '/' && *topic == '\0') {
            return strcmp(pat, "/#") == 0; /* "a/#" matches "a" */
        } else {
            return *pat == '\0' && *topic == '\0';
        }
    }
    return *topic == '\0';
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

bool ipc_watch_matches(const struct ipc_watch_filter *f, unsigned kind, const char *device_key,
                       const char *topic)
{
    if (!(f->kinds & kind))
        return false;
    if (!f->all_devices) {
        if (!device_key || !bsearch(&device_key, f->devices, f->n_devices, sizeof(char *), cmp_str))
            return false;
    }
    if (f->n_topics && topic) {
        for (size_t i = 0; i < f->n_topics; i++)
            if (ipc_topic_match(f->topics[i], topic))
                return true;
        return false;
    }
    return true;
}

/* ---- the parser ---- */

struct pctx {
    struct ipc_request *req;
    struct ipc_error *err;
    const struct ipc_limits *lim;
    size_t max_payload;
    bool seen_payload, seen_b64, seen_device;
};

static int fail(struct pctx *c, enum ipc_err code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(struct pctx *c, enum ipc_err code, const char *field, const char *fmt, ...)
{
    va_list ap;
    int n = 0;
    c->err->code = code;
    if (field)
        n = snprintf(c->err->message, sizeof(c->err->message), "%s: ", field);
    va_start(ap, fmt);
    vsnprintf(c->err->message + n, sizeof(c->err->message) - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

/* A string member with no NUL inside and a length in [min, max]. */
static const char *get_str(struct pctx *c, const char *name, json_t *v, size_t min, size_t max,
                           size_t *len)
{
    if (!json_is_string(v)) {
        fail(c, IPC_ERR_BAD_REQUEST, name, "must be a string");
        return NULL;
    }
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    if (strlen(s) != n) {
        fail(c, IPC_ERR_BAD_REQUEST, name, "must not contain NUL characters");
        return NULL;
    }
    if (n < min || n > max) {
        if (min > 0 && n == 0)
            fail(c, IPC_ERR_BAD_REQUEST, name, "must not be empty");
        else
            fail(c, IPC_ERR_BAD_REQUEST, name, "longer than %zu bytes", max);
        return NULL;
    }
    if (len)
        *len = n;
    return s;
}

static char *dup_str(struct pctx *c, const char *name, json_t *v, size_t min, size_t max)
{
    const char *s = get_str(c, name, v, min, max, NULL);
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        fail(c, IPC_ERR_INTERNAL, name, "out of memory");
    return d;
}

static int f_device(struct pctx *c, const char *name, json_t *v)
{
    const char *why;
    const char *s = get_str(c, name, v, 1, IPC_PK_MAX + IPC_DN_MAX + 1, NULL);
    if (!s)
        return -1;
    if (ipc_device_key_parse(s, &c->req->dev, &why) < 0)
        return fail(c, IPC_ERR_BAD_REQUEST, name, "%s", why);
    c->seen_device = true;
    return 0;
}

static int f_topic(struct pctx *c, const char *name, json_t *v)
{
    size_t n;
    const char *s = get_str(c, name, v, 1, IPC_TOPIC_MAX, &n);
    if (!s)
        return -1;
    if (s[0] != '/')
        return fail(c, IPC_ERR_BAD_REQUEST, name, "must start with '/'");
    if (strpbrk(s, "+#"))
        return fail(c, IPC_ERR_BAD_REQUEST, name, "wildcards '+' and '#' are not allowed here");
    if (!(c->req->u.publish.topic = strdup(s)))
        return fail(c, IPC_ERR_INTERNAL, name, "out of memory");
    return 0;
}

static int too_large(struct pctx *c, const char *name, size_t n)
{
    return fail(c, IPC_ERR_PAYLOAD_TOO_LARGE, name, "%zu bytes, more than the limit of %zu", n,
                c->max_payload);
}

static int f_payload(struct pctx *c, const char *name, json_t *v)
{
    if (c->seen_payload || c->seen_b64)
        return fail(c, IPC_ERR_BAD_REQUEST, "payload",
                    "give either payload or payload_b64, not both");
    if (!json_is_string(v))
        return fail(c, IPC_ERR_BAD_REQUEST, name, "must be a string");
    size_t n = json_string_length(v);
    if (n > c->max_payload)
        return too_large(c, name, n);
    unsigned char *p = malloc(n + 1);
    if (!p)
        return fail(c, IPC_ERR_INTERNAL, name, "out of memory");
    memcpy(p, json_string_value(v), n + 1);
    c->req->u.publish.payload = p;
    c->req->u.publish.payload_len = n;
    c->seen_payload = true;
    return 0;
}

/* A base64 string → bytes (NUL-terminated for convenience), within the payload limit. */
static int decode_b64(struct pctx *c, const char *name, json_t *v, unsigned char **out, size_t *len)
{
    if (!json_is_string(v))
        return fail(c, IPC_ERR_BAD_REQUEST, name, "must be a base64 string");
    size_t n = json_string_length(v);
    if (n / 4 * 3 > c->max_payload + 2)
        return too_large(c, name, n / 4 * 3);
    unsigned char *p = malloc(n / 4 * 3 + 4);
    if (!p)
        return fail(c, IPC_ERR_INTERNAL, name, "out of memory");
    long m = base64_decode(json_string_value(v), n, p);
    if (m < 0) {
        free(p);
        return fail(c, IPC_ERR_BAD_REQUEST, name, "is not valid base64");
    }
    if ((size_t)m > c->max_payload) {
        free(p);
        return too_large(c, name, (size_t)m);
    }
    p[m] = '\0';
    *out = p;
    *len = (size_t)m;
    return 0;
}

static int f_payload_b64(struct pctx *c, const char *name, json_t *v)
{
    if (c->seen_payload || c->seen_b64)
        return fail(c, IPC_ERR_BAD_REQUEST, "payload",
                    "give either payload or payload_b64, not both");
    if (decode_b64(c, name, v, &c->req->u.publish.payload, &c->req->u.publish.payload_len) < 0)
        return -1;
    c->seen_b64 = true;
    return 0;
}

/* reply: the raw bytes that answer an RRPC request (its forms carry bytes, not Alink JSON). */
static int f_reply_b64(struct pctx *c, const char *name, json_t *v)
{
    return decode_b64(c, name, v, &c->req->u.reply.payload, &c->req->u.reply.payload_len);
}

static int f_qos(struct pctx *c, const char *name, json_t *v)
{
    if (!json_is_integer(v) || (json_integer_value(v) != 0 && json_integer_value(v) != 1))
        return fail(c, IPC_ERR_BAD_REQUEST, name, "must be 0 or 1");
    c->req->u.publish.qos = (int)json_integer_value(v);
    return 0;
}

static int check_time(struct pctx *c, const char *name, json_t *v, int64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) <= 0 || json_integer_value(v) > TIME_MAX_MS)
        return fail(c, IPC_ERR_BAD_REQUEST, name, "must be a positive integer (ms since 1970)");
    int64_t t = json_integer_value(v);
    if (c->lim->now_ms > 0 && t > c->lim->now_ms + DAY_MS)
        return fail(c, IPC_ERR_BAD_REQUEST, name,
                    "more than 24 h in the future (the platform refuses it)");
    if (out)
        *out = t;
    return 0;
}

static int f_timestamp(struct pctx *c, const char *name, json_t *v)
{
    return check_time(c, name, v, &c->req->u.post.timestamp);
}

static int f_ack(struct pctx *c, const char *name, json_t *v)
{
    if (!json_is_boolean(v))
        return fail(c, IPC_ERR_BAD_REQUEST, name, "must be true or false");
    c->req->u.post.ack = json_is_true(v);
    return 0;
}

static int f_wait_reply(struct pctx *c, const char *name, json_t *v)
{
    if (!json_is_boolean(v))
        return fail(c, IPC_ERR_BAD_REQUEST, name, "must be true or false");
    c->req->u.post.wait_reply = json_is_true(v);
    return 0;
}

static int check_serialized_size(struct pctx *c, const char *name, json_t *v)
{
    size_t n = json_dumpb(v, NULL, 0, JSON_COMPACT);
    if (n > c->max_payload)
        return too_large(c, name, n);
    return 0;
}

/* post_properties params: {"ident": value | {"value": v, "time": ms}}, 1..200 members. */
static int f_props(struct pctx *c, const char *name, json_t *v)
{
    const char *key;
    json_t *val;
    char field[IPC_IDENT_MAX + 32];

    if (!json_is_object(v))
        return fail(c, IPC_ERR_BAD_REQUEST, name, "must be an object of property values");
    if (json_object_size(v) == 0)
        return fail(c, IPC_ERR_BAD_REQUEST, name, "must name at least one property");
    if (json_object_size(v) > IPC_PROPS_MAX)
        return fail(c, IPC_ERR_BAD_REQUEST, name,
                    "%zu properties, more than the platform's %d per report", json_object_size(v),
                    IPC_PROPS_MAX);
    json_object_foreach(v, key, val)
    {
        size_t kl = strlen(key);
        if (!ident_ok(key, kl))
            return fail(c, IPC_ERR_BAD_REQUEST, name,
                        "property \"%.64s\": identifiers are 1-64 letters, digits or \"_:.-\"",
                        key);
        json_t *t = json_is_object(val) ? json_object_get(val, "time") : NULL;
        if (t) {
            snprintf(field, sizeof(field), "%s.%s.time", name, key);
            if (!json_object_get(val, "value") || json_object_size(val) != 2)
                return fail(c, IPC_ERR_BAD_REQUEST, field,
                            "a timed value must be exactly {\"value\":…,\"time\":ms}");
            if (check_time(c, field, t, NULL) < 0)
                return -1;
        }
    }
    if (check_serialized_size(c, name, v) < 0)
        return -1;
    c->req->u.post.params = json_incref(v);
    return 0;
}

/*
 * One {"value": v, "time": ms} of a batch or history post (events: v an object of identifiers).
 * field names it for the error.
 */
static int timed_value(struct pctx *c, const char *field, json_t *tv, bool event)
{
    const char *key;
    json_t *val, *v = json_object_get(tv, "value");
    if (!json_is_object(tv) || !v || !json_object_get(tv, "time") || json_object_size(tv) != 2)
        return fail(c, IPC_ERR_BAD_REQUEST, field, "must be {\"value\":…,\"time\":ms}");
    if (event) {
        if (!json_is_object(v))
            return fail(c, IPC_ERR_BAD_REQUEST, field, "an event's value must be an object");
        json_object_foreach(v, key, val)
        {
            if (!ident_ok(key, strlen(key)))
                return fail(c, IPC_ERR_BAD_REQUEST, field,
                            "parameter \"%.64s\": identifiers are 1-64 letters, digits or "
                            "\"_:.-\"",
                            key);
        }
    }
    return check_time(c, field, json_object_get(tv, "time"), NULL);
}

/*
 * post_batch "properties" / "events": {"ident": [{"value": v, "time": ms}, ...]}: at most 200
 * identifiers, each with 1..IPC_BATCH_VALUES_MAX timed values.
 */
static int batch_map(struct pctx *c, const char *name, json_t *v, bool event, json_t **out)
{
    const char *key;
    json_t *arr;
    char field[IPC_IDENT_MAX + 48];

    if (!json_is_object(v) || json_object_size(v) == 0)
        return fail(c, IPC_ERR_BAD_REQUEST, name,
                    "must be a non-empty object of identifier → [{\"value\":…,\"time\":ms}]");
    if (json_object_size(v) > IPC_PROPS_MAX)
        return fail(c, IPC_ERR_BAD_REQUEST, name, "%zu identifiers, more than the platform's %d",
                    json_object_size(v), IPC_PROPS_MAX);
    json_object_foreach(v, key, arr)
    {
        if (!ident_ok(key, strlen(key)))
            return fail(c, IPC_ERR_BAD_REQUEST, name,
                        "\"%.64s\": identifiers are 1-64 letters, digits or \"_:.-\"", key);
        snprintf(field, sizeof(field), "%s.%s", name, key);
        if (!json_is_array(arr) || json_array_size(arr) == 0 ||
            json_array_size(arr) > IPC_BATCH_VALUES_MAX)
            return fail(c, IPC_ERR_BAD_REQUEST, field, "must be an array of 1-%d timed values",
                        IPC_BATCH_VALUES_MAX);
        for (size_t i = 0; i < json_array_size(arr); i++) {
            snprintf(field, sizeof(field), "%s.%s[%zu]", name, key, i);
            if (timed_value(c, field, json_array_get(arr, i), event) < 0)
                return -1;
        }
    }
    if (check_serialized_size(c, name, v) < 0)
        return -1;
    *out = json_incref(v);
    return 0;
}

/*
 * post_history "properties" / "events": [{"ident": {"value": v, "time": ms}, ...}, ...]: 1..
 * IPC_BATCH_VALUES_MAX records, each a non-empty object of at most 200 identifiers.
 */
static int history_list(struct pctx *c, const char *name, json_t *v, bool event, json_t **out)
{
    const char *key;
    json_t *tv;
    char field[IPC_IDENT_MAX + 48];

    if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > IPC_BATCH_VALUES_MAX)
        return fail(c, IPC_ERR_BAD_REQUEST, name,
                    "must be an array of 1-%d records {identifier: {\"value\":…,\"time\":ms}}",
                    IPC_BATCH_VALUES_MAX);
    for (size_t i = 0; i < json_array_size(v); i++) {
        json_t *rec = json_array_get(v, i);
        snprintf(field, sizeof(field), "%s[%zu]", name, i);
        if (!json_is_object(rec) || json_object_size(rec) == 0 ||
            json_object_size(rec) > IPC_PROPS_MAX)
            return fail(c, IPC_ERR_BAD_REQUEST, field, "must be an object of 1-%d identifiers",
                        IPC_PROPS_MAX);
        json_object_foreach(rec, key, tv)
        {
            if (!ident_ok(key, strlen(key)))
                return fail(c, IPC_ERR_BAD_REQUEST, field,
                            "\"%.64s\": identifiers are 1-64 letters, digits or \"_:.-\"", key);
            snprintf(field, sizeof(field), "%s[%zu].%s", name, i, key);
            if (timed_value(c, field, tv, event) < 0)
                return -1;
        }
    }
    if (check_serialized_size(c, name, v) < 0)
        return -1;
    *out = json_incref(v);
    return 0;
}

static int f_batch_props(struct pctx *c, const char *name, json_t *v)
{
    return batch_map(c, name, v, false, &c->req->u.post.params);
}

static int f_batch_events(struct pctx *c, const char *name, json_t *v)
{
    return batch_map(c, name, v, true, &c->req->u.post.events);
}

static int f_hist_props(struct pctx *c, const char *name, json_t *v)
{
    return history_list(c, name, v, false, &c->req->u.post.params);
}

static int f_hist_events(struct pctx *c, const char *name, json_t *v)
{
    return history_list(c, name, v, true, &c->req->u.post.events);
}

/* post_event params: the event's output parameters, any object (may be empty). */
static int f_event_params(struct pctx *c, const char *name, json_t *v)
{
    const char *key;
    json_t *val;
    if (!json_is_object(v))
        return fail(c, IPC_ERR_BAD_REQUEST, name, "must be an object");
    json_object_foreach(v, key, val)
    {
        if (!ident_ok(key, strlen(key)))
            return fail(c, IPC_ERR_BAD_REQUEST, name,
                        "parameter \"%.64s\": identifiers are 1-64 letters, digits or \"_:.-\"",
                        key);
    }
    if (check_serialized_size(c, name, v) < 0)
        return -1;
    c->req->u.post.params = json_incref(v);
    return 0;
}

static int f_event(struct pctx *c, const char *name, json_t *v)
{
    size_t n;
    const char *s = get_str(c, name, v, 1, IPC_IDENT_MAX, &n);
    if (!s)
        return -1;
    if (!ident_ok(s, n))
        return fail(c, IPC_ERR_BAD_REQUEST, name,
                    "identifiers are 1-64 letters, digits or \"_:.-\"");
    memcpy(c->req->u.post.event, s, n + 1);
    return 0;
}

static int f_request_id(struct pctx *c, const char *name, json_t *v)
{
    char *dst = c->req->u.reply.msg_id;
    if (json_is_integer(v)) {
        if (json_integer_value(v) < 0)
            return fail(c, IPC_ERR_BAD_REQUEST, name, "must not be negative");
        snprintf(dst, IPC_MSGID_MAX + 1, "%lld", (long long)json_integer_value(v));
        return 0;
    }
    if (!json_is_string(v))
        return fail(c, IPC_ERR_BAD_REQUEST, name, "must be a string (the downlink's \"id\")");
    size_t n;
    const char *s = get_str(c, name, v, 1, IPC_MSGID_MAX, &n);
    if (!s)
        return -1;
    if (!chars_ok(s, n, "_-.:"))
        return fail(c, IPC_ERR_BAD_REQUEST, name, "must be letters, digits or \"_-.:\"");
    memcpy(dst, s, n + 1);
    return 0;
}

static int f_code(struct pctx *c, const char *name, json_t *v)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 999999)
        return fail(c, IPC_ERR_BAD_REQUEST, name, "must be an integer 0-999999 (200 = success)");
    c->req->u.reply.code = (int)json_integer_value(v);
    return 0;
}

static int f_data(struct pctx *c, const char *name, json_t *v)
{
    if (!json_is_object(v))
        return fail(c, IPC_ERR_BAD_REQUEST, name, "must be an object");
    if (check_serialized_size(c, name, v) < 0)
        return -1;
    c->req->u.reply.data = json_incref(v);
    return 0;
}

static int f_message(struct pctx *c, const char *name, json_t *v)
{
    return (c->req->u.reply.message = dup_str(c, name, v, 0, 256)) ? 0 : -1;
}

static int f_watch_devices(struct pctx *c, const char *name, json_t *v)
{
    struct ipc_watch_filter *w = &c->req->u.watch;
    if (json_is_string(v) && strcmp(json_string_value(v), "*") == 0)
        return 0;
    if (!json_is_array(v))
        return fail(c, IPC_ERR_BAD_REQUEST, name, "must be \"*\" or an array of \"pk/dn\"");
    size_t n = json_array_size(v);
    if (n == 0)
        return fail(c, IPC_ERR_BAD_REQUEST, name, "must not be empty (use \"*\" for all)");
    if (n > IPC_WATCH_DEVICES_MAX)
        return fail(c, IPC_ERR_BAD_REQUEST, name, "more than %d devices", IPC_WATCH_DEVICES_MAX);
    if (!(w->devices = calloc(n, sizeof(char *))))
        return fail(c, IPC_ERR_INTERNAL, name, "out of memory");
    for (size_t i = 0; i < n; i++) {
        struct ipc_device_key k;
        const char *why;
        json_t *e = json_array_get(v, i);
        if (!json_is_string(e) || ipc_device_key_parse(json_string_value(e), &k, &why) < 0 ||
            strlen(json_string_value(e)) != json_string_length(e))
            return fail(c, IPC_ERR_BAD_REQUEST, name, "element %zu: must be \"pk/dn\"", i);
        if (!(w->devices[w->n_devices++] = strdup(k.key)))
            return fail(c, IPC_ERR_INTERNAL, name, "out of memory");
    }
    qsort(w->devices, w->n_devices, sizeof(char *), cmp_str);
    w->all_devices = false;
    return 0;
}

static int f_watch_topics(struct pctx *c, const char *name, json_t *v)
{
    struct ipc_watch_filter *w = &c->req->u.watch;
    if (!json_is_array(v))
        return fail(c, IPC_ERR_BAD_REQUEST, name, "must be an array of topic filters");
    size_t n = json_array_size(v);
    if (n > IPC_WATCH_TOPICS_MAX)
        return fail(c, IPC_ERR_BAD_REQUEST, name, "more than %d filters", IPC_WATCH_TOPICS_MAX);
    if (n && !(w->topics = calloc(n, sizeof(char *))))
        return fail(c, IPC_ERR_INTERNAL, name, "out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(v, i);
        size_t len = json_is_string(e) ? json_string_length(e) : 0;
        if (!json_is_string(e) || len == 0 || len > 255 || strlen(json_string_value(e)) != len ||
            !pattern_ok(json_string_value(e), len))
            return fail(c, IPC_ERR_BAD_REQUEST, name,
                        "element %zu: must be an MQTT topic filter ('+' and '#' as whole "
                        "levels, '#' last)",
                        i);
        if (!(w->topics[w->n_topics++] = strdup(json_string_value(e))))
            return fail(c, IPC_ERR_INTERNAL, name, "out of memory");
    }
    return 0;
}

static int f_watch_kinds(struct pctx *c, const char *name, json_t *v)
{
    if (!json_is_array(v) || json_array_size(v) == 0)
        return fail(c, IPC_ERR_BAD_REQUEST, name, "must be a non-empty array of event kinds");
    unsigned kinds = 0;
    for (size_t i = 0; i < json_array_size(v); i++) {
        json_t *e = json_array_get(v, i);
        unsigned k = 0;
        for (unsigned j = 0; json_is_string(e) && j < sizeof(kind_names) / sizeof(*kind_names); j++)
            if (strcmp(json_string_value(e), kind_names[j]) == 0)
                k = 1u << j;
        if (!k)
            return fail(c, IPC_ERR_BAD_REQUEST, name,
                        "element %zu: must be one of message, property_set, service_call, "
                        "state, reply, ota",
                        i);
        kinds |= k;
    }
    c->req->u.watch.kinds = kinds;
    return 0;
}

static int f_add_device(struct pctx *c, const char *name, json_t *v)
{
    if (!json_is_object(v))
        return fail(c, IPC_ERR_BAD_REQUEST, name,
                    "must be a device object (as in the configuration's \"devices\")");
    if (json_dumpb(v, NULL, 0, JSON_COMPACT) > 65536)
        return fail(c, IPC_ERR_BAD_REQUEST, name, "larger than 64 KiB");
    c->req->u.add.device = json_incref(v);
    return 0;
}

static int f_state(struct pctx *c, const char *name, json_t *v)
{
    return (c->req->u.devices.state = dup_str(c, name, v, 1, 32)) ? 0 : -1;
}

static int f_client(struct pctx *c, const char *name, json_t *v)
{
    return (c->req->u.hello.client = dup_str(c, name, v, 0, 64)) ? 0 : -1;
}

static int f_ota_job(struct pctx *c, const char *name, json_t *v)
{
    if (!json_is_integer(v) || json_integer_value(v) <= 0)
        return fail(c, IPC_ERR_BAD_REQUEST, name, "must be a positive integer (the job id)");
    c->req->u.ota.job = (int64_t)json_integer_value(v);
    return 0;
}

static int f_ota_step(struct pctx *c, const char *name, json_t *v)
{
    if (!json_is_integer(v) || json_integer_value(v) > 0 || json_integer_value(v) < -4)
        return fail(c, IPC_ERR_BAD_REQUEST, name,
                    "must be 0 (applied) or -1 (upgrade failed), -2 (download failed), -3 "
                    "(verify failed), -4 (flash failed)");
    c->req->u.ota.step = (int)json_integer_value(v);
    return 0;
}

/* Versions and module names: 1-64 printable bytes without control characters. */
static int ota_text(struct pctx *c, const char *name, json_t *v, char *dst, size_t min)
{
    size_t n;
    const char *s = get_str(c, name, v, min, 64, &n);
    if (!s)
        return -1;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return fail(c, IPC_ERR_BAD_REQUEST, name, "must not contain control characters");
    memcpy(dst, s, n + 1);
    return 0;
}

static int f_ota_version(struct pctx *c, const char *name, json_t *v)
{
    return ota_text(c, name, v, c->req->u.ota.version, 1);
}

static int f_ota_module(struct pctx *c, const char *name, json_t *v)
{
    return ota_text(c, name, v, c->req->u.ota.module, 0);
}

static int f_ota_desc(struct pctx *c, const char *name, json_t *v)
{
    return (c->req->u.ota.desc = dup_str(c, name, v, 0, 128)) ? 0 : -1;
}

struct field {
    const char *name;
    int (*parse)(struct pctx *c, const char *name, json_t *v);
    bool required;
};

#define END                                                                                        \
    {                                                                                              \
        NULL, NULL, false                                                                          \
    }
static const struct field fl_hello[] = {{"client", f_client, false}, END};
static const struct field fl_publish[] = {
    {"device", f_device, true},    {"topic", f_topic, true},
    {"payload", f_payload, false}, {"payload_b64", f_payload_b64, false},
    {"qos", f_qos, false},         END};
static const struct field fl_props[] = {
    {"device", f_device, true},          {"params", f_props, true},
    {"timestamp", f_timestamp, false},   {"ack", f_ack, false},
    {"wait_reply", f_wait_reply, false}, END};
static const struct field fl_event[] = {{"device", f_device, true},
                                        {"event", f_event, true},
                                        {"params", f_event_params, true},
                                        {"timestamp", f_timestamp, false},
                                        {"ack", f_ack, false},
                                        {"wait_reply", f_wait_reply, false},
                                        END};
static const struct field fl_batch[] = {
    {"device", f_device, true},          {"properties", f_batch_props, false},
    {"events", f_batch_events, false},   {"ack", f_ack, false},
    {"wait_reply", f_wait_reply, false}, END};
static const struct field fl_history[] = {
    {"device", f_device, true},          {"properties", f_hist_props, false},
    {"events", f_hist_events, false},    {"ack", f_ack, false},
    {"wait_reply", f_wait_reply, false}, END};
static const struct field fl_reply[] = {{"device", f_device, true},
                                        {"request_id", f_request_id, true},
                                        {"code", f_code, true},
                                        {"data", f_data, false},
                                        {"message", f_message, false},
                                        {"payload_b64", f_reply_b64, false},
                                        END};
static const struct field fl_watch[] = {{"devices", f_watch_devices, false},
                                        {"topics", f_watch_topics, false},
                                        {"kinds", f_watch_kinds, false},
                                        END};
/* ---- shadow, desired properties, tags ---- */

static int f_reported(struct pctx *c, const char *name, json_t *v)
{
    if (!json_is_object(v) || json_object_size(v) == 0)
        return fail(c, IPC_ERR_BAD_REQUEST, name, "must be a non-empty object");
    if (json_object_size(v) > IPC_SHADOW_KEYS_MAX)
        return fail(c, IPC_ERR_BAD_REQUEST, name, "more than %d values (the platform's limit)",
                    IPC_SHADOW_KEYS_MAX);
    if (check_serialized_size(c, name, v) < 0)
        return -1;
    c->req->u.thing.body = json_incref(v);
    return 0;
}

static int f_shadow_version(struct pctx *c, const char *name, json_t *v)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return fail(c, IPC_ERR_BAD_REQUEST, name, "must be an integer >= 0");
    c->req->u.thing.version = json_integer_value(v);
    return 0;
}

/* An array of 1..IPC_PROPS_MAX thing-model identifiers. */
static int ident_array(struct pctx *c, const char *name, json_t *v)
{
    size_t i, n = json_array_size(v);
    json_t *e;
    if (!json_is_array(v) || n == 0 || n > IPC_PROPS_MAX)
        return fail(c, IPC_ERR_BAD_REQUEST, name, "must be an array of 1-%d identifiers",
                    IPC_PROPS_MAX);
    json_array_foreach(v, i, e)
    {
        if (!json_is_string(e) || !ident_ok(json_string_value(e), json_string_length(e)))
            return fail(c, IPC_ERR_BAD_REQUEST, name,
                        "element %zu: identifiers are 1-64 letters, digits or \"_:.-\"", i);
    }
    return 0;
}

static int f_identifiers(struct pctx *c, const char *name, json_t *v)
{
    if (ident_array(c, name, v) < 0)
        return -1;
    if (c->req->op == IPC_OP_DESIRED_GET) {
        c->req->u.thing.body = json_incref(v);
        return 0;
    }
    json_t *o = c->req->u.thing.body ? c->req->u.thing.body : json_object();
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e) if (!json_object_get(o, json_string_value(e)))
        json_object_set_new(o, json_string_value(e), json_object());
    c->req->u.thing.body = o;
    return 0;
}

/* desired_delete: {"id": {"version": n}} for deletes that must not pass a newer value. */
static int f_desired_versions(struct pctx *c, const char *name, json_t *v)
{
    const char *k;
    json_t *e;
    if (!json_is_object(v) || json_object_size(v) == 0 || json_object_size(v) > IPC_PROPS_MAX)
        return fail(c, IPC_ERR_BAD_REQUEST, name, "must be an object of 1-%d identifiers",
                    IPC_PROPS_MAX);
    json_t *o = c->req->u.thing.body ? c->req->u.thing.body : json_object();
    c->req->u.thing.body = o;
    json_object_foreach(v, k, e)
    {
        if (!ident_ok(k, strlen(k)))
            return fail(c, IPC_ERR_BAD_REQUEST, name, "\"%.64s\" is not an identifier", k);
        if (!json_is_integer(e) || json_integer_value(e) < 0)
            return fail(c, IPC_ERR_BAD_REQUEST, name, "\"%.64s\": a version >= 0", k);
        json_object_set_new(o, k, json_pack("{s:I}", "version", json_integer_value(e)));
    }
    return 0;
}

/* The platform's tag keys: a letter, then letters, digits or '_', at most 30. */
static bool tag_key_ok(const char *k, size_t n)
{
    if (n == 0 || n > 30 || !isalpha((unsigned char)k[0]))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)k[i]) && k[i] != '_')
            return false;
    return true;
}

static int f_tags(struct pctx *c, const char *name, json_t *v)
{
    const char *k;
    json_t *e;
    if (!json_is_object(v) || json_object_size(v) == 0 || json_object_size(v) > IPC_TAGS_MAX)
        return fail(c, IPC_ERR_BAD_REQUEST, name, "must be an object of 1-%d \"key\": \"value\"",
                    IPC_TAGS_MAX);
    json_t *a = json_array();
    c->req->u.thing.body = a;
    json_object_foreach(v, k, e)
    {
        if (!tag_key_ok(k, strlen(k)))
            return fail(c, IPC_ERR_BAD_REQUEST, name,
                        "key \"%.64s\": a letter, then letters, digits or \"_\", at most 30", k);
        if (!json_is_string(e) || json_string_length(e) == 0 || json_string_length(e) > 128)
            return fail(c, IPC_ERR_BAD_REQUEST, name, "\"%s\": the value must be 1-128 characters",
                        k);
        json_array_append_new(a, json_pack("{s:s,s:O}", "attrKey", k, "attrValue", e));
    }
    return 0;
}

static int f_tag_keys(struct pctx *c, const char *name, json_t *v)
{
    size_t i, n = json_array_size(v);
    json_t *e;
    if (!json_is_array(v) || n == 0 || n > IPC_TAGS_MAX)
        return fail(c, IPC_ERR_BAD_REQUEST, name, "must be an array of 1-%d tag keys",
                    IPC_TAGS_MAX);
    json_t *a = json_array();
    c->req->u.thing.body = a;
    json_array_foreach(v, i, e)
    {
        if (!json_is_string(e) || !tag_key_ok(json_string_value(e), json_string_length(e)))
            return fail(c, IPC_ERR_BAD_REQUEST, name,
                        "element %zu: a letter, then letters, digits or \"_\", at most 30", i);
        json_array_append_new(a, json_pack("{s:O}", "attrKey", e));
    }
    return 0;
}

static const struct field fl_shadow_update[] = {{"device", f_device, true},
                                                {"reported", f_reported, true},
                                                {"version", f_shadow_version, false},
                                                END};
static const struct field fl_shadow_clear[] = {
    {"device", f_device, true}, {"version", f_shadow_version, false}, END};
static const struct field fl_desired_get[] = {
    {"device", f_device, true}, {"identifiers", f_identifiers, true}, END};
static const struct field fl_desired_delete[] = {{"device", f_device, true},
                                                 {"identifiers", f_identifiers, false},
                                                 {"versions", f_desired_versions, false},
                                                 END};
static const struct field fl_tags_update[] = {
    {"device", f_device, true}, {"tags", f_tags, true}, END};
static const struct field fl_tags_delete[] = {
    {"device", f_device, true}, {"keys", f_tag_keys, true}, END};

static const struct field fl_devices[] = {{"state", f_state, false}, END};
static const struct field fl_device[] = {{"device", f_device, true}, END};
static const struct field fl_add[] = {{"device", f_add_device, true}, END};
static const struct field fl_none[] = {END};
static const struct field fl_ota[] = {{"device", f_device, false}, END};
static const struct field fl_ota_result[] = {
    {"device", f_device, true},        {"job", f_ota_job, true},    {"step", f_ota_step, false},
    {"version", f_ota_version, false}, {"desc", f_ota_desc, false}, END};
static const struct field fl_ota_version[] = {{"device", f_device, true},
                                              {"module", f_ota_module, false},
                                              {"version", f_ota_version, true},
                                              END};
static const struct field fl_ota_check[] = {
    {"device", f_device, true}, {"module", f_ota_module, false}, END};

static const struct field *const op_fields[IPC_OP_COUNT_] = {
    [IPC_OP_HELLO] = fl_hello,
    [IPC_OP_PUBLISH] = fl_publish,
    [IPC_OP_POST_PROPERTIES] = fl_props,
    [IPC_OP_POST_EVENT] = fl_event,
    [IPC_OP_REPLY] = fl_reply,
    [IPC_OP_WATCH] = fl_watch,
    [IPC_OP_DEVICES] = fl_devices,
    [IPC_OP_DEVICE] = fl_device,
    [IPC_OP_ADD_DEVICE] = fl_add,
    [IPC_OP_REMOVE_DEVICE] = fl_device,
    [IPC_OP_STATS] = fl_none,
    [IPC_OP_RELOAD] = fl_none,
    [IPC_OP_STATUS] = fl_none,
    [IPC_OP_OTA] = fl_ota,
    [IPC_OP_OTA_RESULT] = fl_ota_result,
    [IPC_OP_OTA_VERSION] = fl_ota_version,
    [IPC_OP_OTA_CHECK] = fl_ota_check,
    [IPC_OP_POST_BATCH] = fl_batch,
    [IPC_OP_POST_HISTORY] = fl_history,
    [IPC_OP_CONFIG_GET] = fl_device,
    [IPC_OP_SHADOW_GET] = fl_device,
    [IPC_OP_SHADOW_UPDATE] = fl_shadow_update,
    [IPC_OP_SHADOW_CLEAR_DESIRED] = fl_shadow_clear,
    [IPC_OP_DESIRED_GET] = fl_desired_get,
    [IPC_OP_DESIRED_DELETE] = fl_desired_delete,
    [IPC_OP_TAGS_UPDATE] = fl_tags_update,
    [IPC_OP_TAGS_DELETE] = fl_tags_delete,
};

static int check_whole(struct pctx *c)
{
    struct ipc_request *r = c->req;
    if (r->op == IPC_OP_PUBLISH) {
        if (c->seen_payload && c->seen_b64)
            return fail(c, IPC_ERR_BAD_REQUEST, "payload",
                        "give either payload or payload_b64, not both");
        if (!c->seen_payload && !c->seen_b64)
            return fail(c, IPC_ERR_BAD_REQUEST, "payload", "missing (or payload_b64)");
        /* Whether the topic is the device's is checked by api.c (alink_topic_owned), after
         * whether the device exists. */
    }
    if (r->op == IPC_OP_REPLY && r->u.reply.payload && r->u.reply.data)
        return fail(c, IPC_ERR_BAD_REQUEST, "payload_b64",
                    "give either data or payload_b64 (raw bytes for an RRPC request), not both");
    if (r->op == IPC_OP_DESIRED_DELETE && !r->u.thing.body)
        return fail(c, IPC_ERR_BAD_REQUEST, "identifiers", "missing (or versions)");
    if (r->op == IPC_OP_POST_BATCH || r->op == IPC_OP_POST_HISTORY) {
        if (!r->u.post.params && !r->u.post.events)
            return fail(c, IPC_ERR_BAD_REQUEST, "properties", "missing (or events)");
        size_t n = (r->u.post.params ? json_dumpb(r->u.post.params, NULL, 0, JSON_COMPACT) : 0) +
                   (r->u.post.events ? json_dumpb(r->u.post.events, NULL, 0, JSON_COMPACT) : 0);
        if (n > c->max_payload)
            return too_large(c, "properties", n);
    }
    return 0;
}

static void set_defaults(struct ipc_request *r)
{
    switch (r->op) {
    case IPC_OP_PUBLISH:
        r->u.publish.qos = 1;
        break;
    case IPC_OP_POST_PROPERTIES:
    case IPC_OP_POST_EVENT:
    case IPC_OP_POST_BATCH:
    case IPC_OP_POST_HISTORY:
        r->u.post.ack = true;
        break;
    case IPC_OP_WATCH:
        r->u.watch.all_devices = true;
        r->u.watch.kinds = IPC_EV_ALL_;
        break;
    case IPC_OP_REPLY:
        r->u.reply.code = 200;
        break;
    case IPC_OP_SHADOW_UPDATE:
    case IPC_OP_SHADOW_CLEAR_DESIRED:
        r->u.thing.version = -1;
        break;
    default:
        break;
    }
}

static int check_id(struct pctx *c, json_t *id)
{
    if (!id)
        return fail(c, IPC_ERR_BAD_REQUEST, "id", "missing (a number or a string)");
    if (json_is_string(id)) {
        size_t n = json_string_length(id);
        if (n == 0 || n > IPC_ID_MAX)
            return fail(c, IPC_ERR_BAD_REQUEST, "id", "a string id must be 1-%d bytes", IPC_ID_MAX);
    } else if (!json_is_integer(id)) {
        return fail(c, IPC_ERR_BAD_REQUEST, "id", "must be an integer or a string");
    }
    return 0;
}

int ipc_request_parse(const char *line, size_t len, const struct ipc_limits *lim,
                      struct ipc_request *req, struct ipc_error *err)
{
    static const struct ipc_limits no_limits;
    struct pctx c = {.req = req, .err = err, .lim = lim ? lim : &no_limits};
    json_error_t jerr;
    json_t *root = NULL, *id, *opv;
    const char *key;
    json_t *val;
    int rc = -EINVAL;

    memset(req, 0, sizeof(*req));
    memset(err, 0, sizeof(*err));
    c.max_payload = c.lim->max_payload ? c.lim->max_payload : IPC_DEFAULT_MAX_PAYLOAD;

    root = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        fail(&c, IPC_ERR_BAD_JSON, NULL, "invalid JSON at column %d: %s", jerr.column, jerr.text);
        goto out;
    }
    if (!json_is_object(root)) {
        fail(&c, IPC_ERR_BAD_REQUEST, NULL, "a request must be a JSON object");
        goto out;
    }
    id = json_object_get(root, "id");
    if (check_id(&c, id) < 0)
        goto out;
    err->id = json_incref(id);
    opv = json_object_get(root, "op");
    if (!opv) {
        fail(&c, IPC_ERR_BAD_REQUEST, "op", "missing");
        goto out;
    }
    if (!json_is_string(opv)) {
        fail(&c, IPC_ERR_BAD_REQUEST, "op", "must be a string");
        goto out;
    }
    req->op = IPC_OP_COUNT_;
    for (int i = 0; i < IPC_OP_COUNT_; i++)
        if (strcmp(json_string_value(opv), op_names[i]) == 0)
            req->op = (enum ipc_op)i;
    if (req->op == IPC_OP_COUNT_) {
        fail(&c, IPC_ERR_UNKNOWN_OP, "op", "unknown operation \"%.64s\"", json_string_value(opv));
        goto out;
    }
    set_defaults(req);

    const struct field *fields = op_fields[req->op];
    json_object_foreach(root, key, val)
    {
        if (strcmp(key, "id") == 0 || strcmp(key, "op") == 0)
            continue;
        const struct field *f = fields;
        while (f->name && strcmp(f->name, key) != 0)
            f++;
        if (!f->name) {
            fail(&c, IPC_ERR_BAD_REQUEST, NULL, "unknown field \"%.64s\" for %s", key,
                 op_names[req->op]);
            goto out;
        }
        if (f->parse(&c, f->name, val) < 0)
            goto out;
    }
    for (const struct field *f = fields; f->name; f++) {
        if (f->required && !json_object_get(root, f->name)) {
            fail(&c, IPC_ERR_BAD_REQUEST, f->name, "missing");
            goto out;
        }
    }
    if (check_whole(&c) < 0)
        goto out;
    req->id = json_incref(id);
    ipc_error_free(err);
    rc = 0;
out:
    json_decref(root);
    if (rc < 0)
        ipc_request_free(req);
    return rc;
}

static void free_strv(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

void ipc_request_free(struct ipc_request *req)
{
    if (!req)
        return;
    switch (req->op) {
    case IPC_OP_HELLO:
        free(req->u.hello.client);
        break;
    case IPC_OP_PUBLISH:
        free(req->u.publish.topic);
        free(req->u.publish.payload);
        break;
    case IPC_OP_POST_PROPERTIES:
    case IPC_OP_POST_EVENT:
    case IPC_OP_POST_BATCH:
    case IPC_OP_POST_HISTORY:
        json_decref(req->u.post.params);
        json_decref(req->u.post.events);
        break;
    case IPC_OP_REPLY:
        json_decref(req->u.reply.data);
        free(req->u.reply.message);
        free(req->u.reply.payload);
        break;
    case IPC_OP_WATCH:
        free_strv(req->u.watch.devices, req->u.watch.n_devices);
        free_strv(req->u.watch.topics, req->u.watch.n_topics);
        break;
    case IPC_OP_ADD_DEVICE:
        json_decref(req->u.add.device);
        break;
    case IPC_OP_DEVICES:
        free(req->u.devices.state);
        break;
    case IPC_OP_OTA_RESULT:
        free(req->u.ota.desc);
        break;
    case IPC_OP_SHADOW_UPDATE:
    case IPC_OP_DESIRED_GET:
    case IPC_OP_DESIRED_DELETE:
    case IPC_OP_TAGS_UPDATE:
    case IPC_OP_TAGS_DELETE:
        json_decref(req->u.thing.body);
        break;
    default:
        break;
    }
    json_decref(req->id);
    memset(req, 0, sizeof(*req));
}

void ipc_error_free(struct ipc_error *err)
{
    json_decref(err->id);
    err->id = NULL;
}

/* ---- responses ---- */

static char *dump_line(json_t *o, size_t *len)
{
    char *s = NULL;
    if (o) {
        size_t n = json_dumpb(o, NULL, 0, JSON_COMPACT);
        if (n > 0 && (s = malloc(n + 2)) != NULL) {
            json_dumpb(o, s, n, JSON_COMPACT);
            s[n] = '\n';
            s[n + 1] = '\0';
            *len = n + 1;
        }
        json_decref(o);
    }
    return s;
}

char *ipc_response_ok(json_t *id, json_t *result, size_t *len)
{
    return dump_line(
        json_pack("{s:O?,s:b,s:o}", "id", id, "ok", 1, "result", result ? result : json_object()),
        len);
}

char *ipc_response_error(json_t *id, enum ipc_err code, const char *message, size_t *len)
{
    return dump_line(json_pack("{s:O?,s:b,s:{s:s,s:s}}", "id", id, "ok", 0, "error", "code",
                               ipc_err_name(code), "message", message ? message : ""),
                     len);
}

json_t *ipc_request_peek_id(const char *h, size_t n)
{
    size_t i = 0;
#define WS()                                                                                       \
    while (i < n && (h[i] == ' ' || h[i] == '\t'))                                                 \
    i++
    WS();
    if (i >= n || h[i++] != '{')
        return NULL;
    WS();
    if (n - i < 4 || memcmp(h + i, "\"id\"", 4) != 0)
        return NULL;
    i += 4;
    WS();
    if (i >= n || h[i++] != ':')
        return NULL;
    WS();
    if (i < n && h[i] == '"') {
        size_t s = ++i;
        while (i < n && h[i] != '"' && h[i] != '\\' && (unsigned char)h[i] >= 0x20 && i - s <= 64)
            i++;
        if (i >= n || h[i] != '"' || i == s)
            return NULL;
        return json_stringn(h + s, i - s); /* NULL when not UTF-8 */
    }
    size_t s = i;
    if (i < n && h[i] == '-')
        i++;
    while (i < n && h[i] >= '0' && h[i] <= '9' && i - s < 18)
        i++;
    if (i == s || i >= n || (h[i] != ',' && h[i] != '}' && h[i] != ' ') || h[i - 1] == '-')
        return NULL;
    char num[24];
    memcpy(num, h + s, i - s);
    num[i - s] = '\0';
    return json_integer(strtoll(num, NULL, 10));
#undef WS
}

/* ---- framing ---- */

void ipc_framer_init(struct ipc_framer *f, size_t max_line)
{
    memset(f, 0, sizeof(*f));
    f->max_line = max_line ? max_line : IPC_DEFAULT_MAX_LINE;
}

void ipc_framer_free(struct ipc_framer *f)
{
    free(f->buf);
    f->buf = NULL;
    f->len = f->cap = 0;
}

static void emit(const char *line, size_t n, ipc_line_cb cb, void *ctx)
{
    if (n > 0 && line[n - 1] == '\r')
        n--;
    size_t i = 0;
    while (i < n && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r'))
        i++;
    if (i < n)
        cb(ctx, line, n, false);
}

/* Remembers the first bytes of the line being dropped: what is buffered, then data. */
static void keep_head(struct ipc_framer *f, const char *data, size_t n)
{
    size_t a = f->len < IPC_FRAMER_HEAD ? f->len : IPC_FRAMER_HEAD;
    if (a)
        memcpy(f->head, f->buf, a);
    size_t b = IPC_FRAMER_HEAD - a < n ? IPC_FRAMER_HEAD - a : n;
    memcpy(f->head + a, data, b);
    f->head_len = a + b;
    f->len = 0;
    if (f->cap > 65536) { /* give back what the long line took */
        free(f->buf);
        f->buf = NULL;
        f->cap = 0;
    }
}

int ipc_framer_feed(struct ipc_framer *f, const char *data, size_t n, ipc_line_cb cb, void *ctx)
{
    int rc = 0;
    while (n > 0) {
        const char *nl = memchr(data, '\n', n);
        size_t seg = nl ? (size_t)(nl - data) : n;

        if (f->discarding) {
            if (!nl)
                return rc;
            f->discarding = false;
            cb(ctx, f->head, f->head_len, true);
        } else if (f->len + seg > f->max_line) {
            keep_head(f, data, seg);
            if (nl)
                cb(ctx, f->head, f->head_len, true);
            else
                f->discarding = true;
        } else if (nl && f->len == 0) {
            emit(data, seg, cb, ctx);
        } else {
            if (f->len + seg > f->cap) {
                size_t cap = f->cap ? f->cap : 256;
                while (cap < f->len + seg)
                    cap *= 2;
                if (cap > f->max_line)
                    cap = f->max_line;
                char *nb = realloc(f->buf, cap);
                if (!nb) {
                    rc = -ENOMEM;
                    keep_head(f, data, seg);
                    if (nl)
                        cb(ctx, f->head, f->head_len, true);
                    else
                        f->discarding = true;
                    goto next;
                }
                f->buf = nb;
                f->cap = cap;
            }
            memcpy(f->buf + f->len, data, seg);
            f->len += seg;
            if (nl) {
                size_t total = f->len;
                f->len = 0;
                emit(f->buf, total, cb, ctx);
            }
        }
    next:
        if (!nl)
            break;
        data = nl + 1;
        n -= seg + 1;
    }
    return rc;
}

int ipc_request_bind_device(json_t *root, const char *device_key)
{
    const char *op = json_string_value(json_object_get(root, "op"));
    json_t *dev = json_object_get(root, "device");
    bool takes = false;
    for (int i = 0; op && i < IPC_OP_COUNT_; i++)
        if (op_names[i] && strcmp(op, op_names[i]) == 0)
            for (const struct field *f = op_fields[i]; f->name; f++)
                takes = takes || strcmp(f->name, "device") == 0;
    if (dev)
        return json_is_string(dev) && strcmp(json_string_value(dev), device_key) == 0 ? 0 : -EPERM;
    if (takes)
        return json_object_set_new(root, "device", json_string(device_key)) < 0 ? -ENOMEM : 0;
    return 0;
}
