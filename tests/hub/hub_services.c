/*
 * hub_services: the platform's per-device documents, kept in the hub's memory the way the
 * platform keeps them, for the device shadow (/shadow/update → /shadow/get, versions, the
 * platform's error codes 400-409), desired properties (thing/property/desired/get and delete)
 * and device tags (thing/deviceinfo/update and delete). The cloud side drives them through
 * hub/ctl/shadow_desired (a control push), hub/ctl/desired_set and hub/ctl/services (a read-back
 * on hub/services). Part of the hub plugin (hub_plugin.c calls in); mosquitto's thread only.
 */
#include "hub_services.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

struct doc {
    struct doc *next;
    char key[256];
    long long version; /* the shadow's */
    json_t *reported, *desired;
    json_t *props; /* desired properties: {"id": {"value": v, "version": n}} */
    json_t *tags;  /* {"attrKey": "attrValue"} */
};

static struct doc *docs;

static long long now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (long long)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static struct doc *doc_get(const char *pk, const char *dn)
{
    char key[256];
    snprintf(key, sizeof(key), "%s/%s", pk, dn);
    for (struct doc *d = docs; d; d = d->next)
        if (!strcmp(d->key, key))
            return d;
    struct doc *d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    snprintf(d->key, sizeof(d->key), "%s", key);
    d->reported = json_object();
    d->desired = json_object();
    d->props = json_object();
    d->tags = json_object();
    d->next = docs;
    docs = d;
    return d;
}

static void send_json(hub_send_fn send, void *ctx, const char *topic, json_t *j)
{
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    if (s)
        send(ctx, topic, s);
    free(s);
    json_decref(j);
}

/* Values merged into o; a null value removes its key (the platform's rule for both). */
static void merge(json_t *o, json_t *with)
{
    const char *k;
    json_t *v;
    json_object_foreach(with, k, v)
    {
        if (json_is_null(v))
            json_object_del(o, k);
        else
            json_object_set(o, k, v);
    }
}

/* ---- shadow ---- */

static void shadow_error(const char *pk, const char *dn, struct doc *d, int code, const char *msg,
                         hub_send_fn send, void *ctx)
{
    char topic[300], c[16];
    snprintf(topic, sizeof(topic), "/shadow/get/%s/%s", pk, dn);
    snprintf(c, sizeof(c), "%d", code);
    send_json(send, ctx, topic,
              json_pack("{s:s,s:{s:s,s:{s:s,s:s}},s:I,s:I}", "method", "reply", "payload", "status",
                        "error", "content", "errorcode", c, "errormessage", msg, "version",
                        (json_int_t)d->version, "timestamp", (json_int_t)now_ms()));
}

static void shadow_state(const char *pk, const char *dn, struct doc *d, const char *method,
                         hub_send_fn send, void *ctx)
{
    char topic[300];
    snprintf(topic, sizeof(topic), "/shadow/get/%s/%s", pk, dn);
    json_t *payload = json_pack("{s:{s:O,s:O},s:{}}", "state", "reported", d->reported, "desired",
                                d->desired, "metadata");
    if (!strcmp(method, "reply"))
        json_object_set_new(payload, "status", json_string("success"));
    send_json(send, ctx, topic,
              json_pack("{s:s,s:o,s:I,s:I}", "method", method, "payload", payload, "version",
                        (json_int_t)d->version, "timestamp", (json_int_t)now_ms()));
}

static void shadow_update(const char *pk, const char *dn, const void *payload, int len,
                          hub_send_fn send, void *ctx)
{
    struct doc *d = doc_get(pk, dn);
    json_t *req = json_loadb(payload, (size_t)len, 0, NULL), *state, *ver, *rep, *des;
    const char *method;
    char topic[300];

    if (!d)
        goto out;
    if (!json_is_object(req)) {
        shadow_error(pk, dn, d, 400, "invalid JSON", send, ctx);
        goto out;
    }
    method = json_string_value(json_object_get(req, "method"));
    if (!method) {
        shadow_error(pk, dn, d, 401, "method missing", send, ctx);
        goto out;
    }
    if (!strcmp(method, "get")) {
        shadow_state(pk, dn, d, "reply", send, ctx);
        goto out;
    }
    if (strcmp(method, "update") != 0) {
        shadow_error(pk, dn, d, 406, "invalid method", send, ctx);
        goto out;
    }
    state = json_object_get(req, "state");
    ver = json_object_get(req, "version");
    if (!json_is_object(state)) {
        shadow_error(pk, dn, d, 402, "state missing", send, ctx);
        goto out;
    }
    if (!json_is_integer(ver)) {
        shadow_error(pk, dn, d, 403, "version is not a number", send, ctx);
        goto out;
    }
    rep = json_object_get(state, "reported");
    des = json_object_get(state, "desired");
    if (!rep && !des) {
        shadow_error(pk, dn, d, 404, "reported missing", send, ctx);
        goto out;
    }
    if ((rep && (!json_is_object(rep) || json_object_size(rep) == 0)) ||
        (des && !json_is_null(des) &&
         !(json_is_string(des) && !strcmp(json_string_value(des), "null")))) {
        shadow_error(pk, dn, d, 405, "reported is empty or desired is not \"null\"", send, ctx);
        goto out;
    }
    if (json_integer_value(ver) <= d->version) {
        shadow_error(pk, dn, d, 409, "version conflict", send, ctx);
        goto out;
    }
    if (rep)
        merge(d->reported, rep);
    if (des)
        json_object_clear(d->desired);
    d->version = json_integer_value(ver);
    snprintf(topic, sizeof(topic), "/shadow/get/%s/%s", pk, dn);
    send_json(send, ctx, topic,
              json_pack("{s:s,s:{s:s,s:I},s:I,s:I}", "method", "reply", "payload", "status",
                        "success", "version", (json_int_t)d->version, "version",
                        (json_int_t)d->version, "timestamp", (json_int_t)now_ms()));
out:
    json_decref(req);
}

/* ---- desired properties and tags (Alink requests answered on _reply) ---- */

static void alink_answer(const char *topic, json_t *req, int code, json_t *data,
                         const char *message, hub_send_fn send, void *ctx)
{
    char rtopic[512], id[40];
    json_t *jid = json_object_get(req, "id");
    if (json_is_string(jid))
        snprintf(id, sizeof(id), "%s", json_string_value(jid));
    else if (json_is_integer(jid))
        snprintf(id, sizeof(id), "%lld", (long long)json_integer_value(jid));
    else {
        json_decref(data);
        return;
    }
    snprintf(rtopic, sizeof(rtopic), "%s_reply", topic);
    send_json(send, ctx, rtopic,
              json_pack("{s:s,s:i,s:o,s:s,s:s}", "id", id, "code", code, "data",
                        data ? data : json_object(), "message", message, "version", "1.0"));
}

static int tag_key_ok(const char *k)
{
    size_t n = k ? strlen(k) : 0;
    if (n == 0 || n > 30 || !isalpha((unsigned char)k[0]))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)k[i]) && k[i] != '_')
            return 0;
    return 1;
}

static int desired_get(struct doc *d, json_t *params, json_t **data)
{
    size_t i;
    json_t *v;
    if (!json_is_array(params))
        return 460;
    *data = json_object();
    json_array_foreach(params, i, v)
    {
        if (!json_is_string(v))
            return 460;
        json_t *p = json_object_get(d->props, json_string_value(v));
        if (p)
            json_object_set(*data, json_string_value(v), p);
    }
    return 200;
}

static int desired_delete(struct doc *d, json_t *params)
{
    const char *k;
    json_t *v;
    if (!json_is_object(params))
        return 460;
    json_object_foreach(params, k, v)
    {
        json_t *ver = json_object_get(v, "version"), *cur = json_object_get(d->props, k);
        if (!json_is_object(v) || (ver && !json_is_integer(ver)))
            return 460;
        if (ver && cur &&
            json_integer_value(ver) < json_integer_value(json_object_get(cur, "version")))
            return 460; /* an older version than the one held */
    }
    json_object_foreach(params, k, v) json_object_del(d->props, k);
    return 200;
}

static int tags_change(struct doc *d, json_t *params, int update)
{
    size_t i;
    json_t *t;
    if (!json_is_array(params) || json_array_size(params) == 0)
        return 460;
    json_array_foreach(params, i, t)
    {
        const char *k = json_string_value(json_object_get(t, "attrKey"));
        const char *v = json_string_value(json_object_get(t, "attrValue"));
        if (!tag_key_ok(k) || (update && (!v || strlen(v) > 128)))
            return 460;
    }
    json_array_foreach(params, i, t)
    {
        const char *k = json_string_value(json_object_get(t, "attrKey"));
        if (update)
            json_object_set(d->tags, k, json_object_get(t, "attrValue"));
        else
            json_object_del(d->tags, k);
    }
    return 200;
}

int hub_services_message(const char *pk, const char *dn, const char *topic, const void *payload,
                         int len, hub_send_fn send, void *ctx)
{
    char pfx[300];
    snprintf(pfx, sizeof(pfx), "/shadow/update/%s/%s", pk, dn);
    if (!strcmp(topic, pfx)) {
        shadow_update(pk, dn, payload, len, send, ctx);
        return 1;
    }
    snprintf(pfx, sizeof(pfx), "/sys/%s/%s/thing/", pk, dn);
    if (strncmp(topic, pfx, strlen(pfx)) != 0)
        return 0;
    const char *rest = topic + strlen(pfx);
    int kind = !strcmp(rest, "property/desired/get")      ? 1
               : !strcmp(rest, "property/desired/delete") ? 2
               : !strcmp(rest, "deviceinfo/update")       ? 3
               : !strcmp(rest, "deviceinfo/delete")       ? 4
                                                          : 0;
    if (!kind)
        return 0;
    json_t *req = json_loadb(payload, (size_t)len, 0, NULL), *data = NULL;
    struct doc *d = doc_get(pk, dn);
    if (json_is_object(req) && d) {
        json_t *params = json_object_get(req, "params");
        int code = kind == 1   ? desired_get(d, params, &data)
                   : kind == 2 ? desired_delete(d, params)
                               : tags_change(d, params, kind == 3);
        if (code != 200) {
            json_decref(data);
            data = NULL;
        }
        alink_answer(topic, req, code, data, code == 200 ? "success" : "request parameter error",
                     send, ctx);
    }
    json_decref(req);
    return 1;
}

void hub_services_control(const char *topic, json_t *req, hub_send_fn send, void *ctx,
                          hub_send_fn to_device, void *(*device_ctx)(const char *, const char *))
{
    const char *pk = json_string_value(json_object_get(req, "productKey"));
    const char *dn = json_string_value(json_object_get(req, "deviceName"));
    struct doc *d = pk && dn ? doc_get(pk, dn) : NULL;
    if (!d)
        return;
    if (!strcmp(topic, "hub/ctl/shadow_desired")) {
        /* The cloud sets desired values: version + 1 and a control push to the device. */
        json_t *des = json_object_get(req, "desired");
        if (json_is_object(des))
            merge(d->desired, des);
        d->version++;
        shadow_state(pk, dn, d, "control", to_device, device_ctx(pk, dn));
    } else if (!strcmp(topic, "hub/ctl/desired_set")) {
        const char *k;
        json_t *v;
        json_object_foreach(json_object_get(req, "properties"), k, v)
        {
            json_t *cur = json_object_get(d->props, k);
            json_int_t ver = cur ? json_integer_value(json_object_get(cur, "version")) + 1 : 1;
            json_object_set_new(d->props, k, json_pack("{s:O,s:I}", "value", v, "version", ver));
        }
    } else if (!strcmp(topic, "hub/ctl/services")) {
        json_t *out =
            json_pack("{s:O?,s:{s:I,s:O,s:O},s:O,s:O}", "id", json_object_get(req, "id"), "shadow",
                      "version", (json_int_t)d->version, "reported", d->reported, "desired",
                      d->desired, "desired_properties", d->props, "tags", d->tags);
        send_json(send, ctx, "hub/services", out);
    }
}
