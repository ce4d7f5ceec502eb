/*
 * api: request handlers and message routing (see api.h).
 *
 * Two small tables of things that wait, both keyed "pk/dn#id" and swept by one timer:
 *  - uplink waiters: a post_* request with wait_reply, answered when the platform's post_reply
 *    with the same Alink id arrives (or with a timeout error);
 *  - downlink calls: a property set or service call handed to API watchers, answered by a
 *    "reply" request or, when nobody answers within api.service_timeout_ms, by an error reply to
 *    the platform so the cloud caller is not left hanging. Synchronous calls (RRPC, both the
 *    /sys/…/rrpc/request form and /ext/rrpc/…) wait at most RRPC_BUDGET_MS, inside the
 *    platform's 8 s. A call that timed out stays as a tombstone for TOMBSTONE_MS, so a late
 *    "reply" gets a clear "too late" rather than "never received".
 * A plugin serving a device answers its own calls through the host table (plugins.c).
 */
#include "api.h"

#include "alink.h"
#include "base64.h"
#include "devices.h"
#include "errors.h"
#include "ipc.h"
#include "loopstat.h"
#include "timesync.h"
#include "log.h"
#include "netwatch.h"
#include "notify.h"
#include "ota.h"
#include "outbox.h"
#include "plugins.h"
#include "rconfig.h"
#include "session.h"
#include "shadow.h"
#include "statedb.h"
#include "strmap.h"

#include <aligw/plugin.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SWEEP_MS 200
#define REPLY_WAIT_MS 30000 /* how long a wait_reply post waits for the platform's _reply */
/* The platform gives a synchronous call 8 s; the error reply needs the rest to reach it. */
#define RRPC_BUDGET_MS 7500
#define TOMBSTONE_MS 60000
#define CONFIG_WAIT_MS 60000 /* config_get: the platform's reply and a file of at most 64 KB */

enum wait_kind { WAIT_UPLINK_REPLY, WAIT_DOWNLINK_CALL };

struct wait {
    enum wait_kind kind;
    char key[256]; /* "pk/dn#id#kind" */
    char dev[112]; /* "pk/dn" */
    char pk[40], dn[70];
    char id[64];
    uint64_t deadline;
    int budget_ms; /* the time it was given */
    struct wait *prev, *next;
    /* uplink */
    struct ipc_reply *reply;
    /* downlink */
    enum alink_kind call;
    char service[128];
    char rrpc_id[64];
    bool raw_rrpc;    /* answered with bytes: /sys/pk/dn/rrpc/request/<id> on rrpc/response/<id>,
                       * or the custom form on its own topic; QoS 0 */
    char custom[128]; /* the custom RRPC form's topic after pk/dn ("user/…"), else "" */
    bool expired;     /* timed out and answered; kept until deadline as a tombstone */
};

static struct {
    uv_loop_t *loop;
    const struct config *cfg;
    api_reload_fn reload;
    struct outbox *ob;
    struct statedb *db;
    struct ipc_server *ipc;
    struct plugins *plugins;
    struct strmap waits;
    struct wait *head;
    uv_timer_t sweep;
    uint64_t started_ms;
    bool running;
    char ota_dir[4096];
} A;

/* ---- the wait table ---------------------------------------------------------------------- */

static void wait_free(struct wait *w);

static struct wait *wait_new(enum wait_kind kind, const char *pk, const char *dn, const char *id,
                             uint64_t timeout_ms)
{
    struct wait *w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    w->kind = kind;
    snprintf(w->pk, sizeof(w->pk), "%s", pk);
    snprintf(w->dn, sizeof(w->dn), "%s", dn);
    snprintf(w->dev, sizeof(w->dev), "%s/%s", pk, dn);
    snprintf(w->id, sizeof(w->id), "%s", id);
    snprintf(w->key, sizeof(w->key), "%s#%s#%d", w->dev, id, kind);
    w->budget_ms = (int)timeout_ms;
    w->deadline = uv_now(A.loop) + timeout_ms;
    struct wait *old = strmap_get(&A.waits, w->key);
    if (old && old->expired) { /* a call timed out and repeated: the tombstone gives way */
        wait_free(old);
        old = NULL;
    }
    if (old) { /* the same id again while the first is pending: the first stays */
        free(w);
        return NULL;
    }
    if (strmap_put(&A.waits, w->key, w) < 0) {
        free(w);
        return NULL;
    }
    w->next = A.head;
    if (A.head)
        A.head->prev = w;
    A.head = w;
    return w;
}

static struct wait *wait_find(enum wait_kind kind, const char *dev, const char *id)
{
    char key[256];
    snprintf(key, sizeof(key), "%s#%s#%d", dev, id, kind);
    return strmap_get(&A.waits, key);
}

static void wait_free(struct wait *w)
{
    strmap_del(&A.waits, w->key);
    if (w->prev)
        w->prev->next = w->next;
    else
        A.head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    free(w);
}

/* ---- uplinks ----------------------------------------------------------------------------- */

struct append_ctx {
    struct ipc_reply *reply;
    char alink_id[16];
    bool wait_reply;
    char pk[40], dn[70];
};

static void on_appended(void *arg, int status, int64_t seq)
{
    struct append_ctx *c = arg;

    if (status < 0) {
        ipc_reply_errno(c->reply, status, "message not stored");
    } else if (c->wait_reply) {
        struct wait *w = wait_new(WAIT_UPLINK_REPLY, c->pk, c->dn, c->alink_id, REPLY_WAIT_MS);
        if (!w) {
            ipc_reply_error(c->reply, IPC_ERR_INTERNAL,
                            "stored (seq %lld), but cannot wait for the reply", (long long)seq);
        } else {
            w->reply = c->reply;
        }
    } else {
        json_t *res = json_pack("{s:I}", "seq", (json_int_t)seq);
        if (c->alink_id[0])
            json_object_set_new(res, "msg_id", json_string(c->alink_id));
        ipc_reply_ok(c->reply, res);
    }
    free(c);
}

/* Queues one uplink for an API request; the reply follows the commit. */
static void append_for(struct ipc_reply *reply, const struct ipc_request *req, const char *topic,
                       const void *payload, size_t len, int qos, uint32_t alink_id, bool wait_reply)
{
    struct append_ctx *c = calloc(1, sizeof(*c));
    int rc;

    if (!c) {
        ipc_reply_errno(reply, -ENOMEM, "cannot queue");
        return;
    }
    c->reply = reply;
    c->wait_reply = wait_reply;
    if (alink_id)
        snprintf(c->alink_id, sizeof(c->alink_id), "%u", alink_id);
    snprintf(c->pk, sizeof(c->pk), "%s", req->dev.pk);
    snprintf(c->dn, sizeof(c->dn), "%s", req->dev.dn);
    rc = outbox_append(A.ob, req->dev.key, topic, payload, len, qos, on_appended, c);
    if (rc < 0) {
        free(c);
        ipc_reply_errno(reply, rc, "message for %s not stored", req->dev.key);
    }
}

/* Queues a reply to a downlink call (from the API or on timeout); raw bytes only for RRPC. */
static int send_call_reply(const struct wait *w, int code, const json_t *data, const char *message,
                           const void *raw, size_t raw_len)
{
    struct alink_msg m = {0};
    bool sync = w->raw_rrpc || w->rrpc_id[0];
    int rc;

    if (raw && !w->raw_rrpc)
        return -EINVAL;
    if (w->raw_rrpc)
        rc = alink_rrpc_response(w->pk, w->dn, w->rrpc_id, w->custom[0] ? w->custom : NULL, data,
                                 raw, raw_len, &m);
    else if (w->call == ALINK_PROPERTY_SET)
        rc = alink_property_set_reply(w->pk, w->dn, w->id, code, data, message, &m);
    else
        rc = alink_service_reply(w->pk, w->dn, w->service, w->rrpc_id[0] ? w->rrpc_id : NULL, w->id,
                                 code, data, message, &m);
    if (rc == 0) /* synchronous calls (RRPC) are answered at QoS 0, as the platform expects */
        rc = outbox_append(A.ob, w->dev, m.topic, m.payload, m.len, sync ? 0 : 1, NULL, NULL);
    alink_msg_free(&m);
    return rc;
}

static void on_sweep(uv_timer_t *t)
{
    uint64_t now = uv_now(A.loop);
    struct wait *w = A.head, *next;

    for (; w; w = next) {
        next = w->next;
        if (w->deadline > now)
            continue;
        if (w->kind == WAIT_UPLINK_REPLY) {
            ipc_reply_error(w->reply, IPC_ERR_TIMEOUT,
                            "stored and queued, but no reply from the platform for %s id %s "
                            "within %d s",
                            w->dev, w->id, REPLY_WAIT_MS / 1000);
        } else if (!w->expired) {
            char msg[160];
            snprintf(msg, sizeof(msg), "aligw: no local handler answered within %d ms",
                     w->budget_ms);
            if (w->raw_rrpc) /* bytes have no error envelope: the caller sees TIMEOUT */
                log_dev(LOG_WARNING, w->pk, w->dn,
                        "RRPC %s unanswered within %d ms; the platform tells its caller TIMEOUT",
                        w->id, w->budget_ms);
            else {
                log_dev(LOG_WARNING, w->pk, w->dn,
                        "%s %s (id %s) unanswered; replied with an error", alink_kind_name(w->call),
                        w->service, w->id);
                send_call_reply(w, 504, NULL, msg, NULL, 0);
            }
            w->expired = true;
            w->deadline = now + TOMBSTONE_MS;
            continue;
        }
        wait_free(w);
    }
}

/* ---- request handlers -------------------------------------------------------------------- */

static struct device *need_device(struct ipc_reply *r, const struct ipc_request *req)
{
    struct device *d = devices_find(req->dev.key);
    if (!d)
        ipc_reply_error(r, IPC_ERR_NO_DEVICE, "device %s is not configured", req->dev.key);
    return d;
}

static void do_post(struct ipc_reply *r, const struct ipc_request *req)
{
    struct device *d = need_device(r, req);
    struct alink_msg m = {0};
    uint32_t id;
    int rc;

    if (!d)
        return;
    id = device_next_alink_id(d);
    if (req->op == IPC_OP_POST_PROPERTIES)
        rc = alink_property_post(req->dev.pk, req->dev.dn, id, req->u.post.params,
                                 req->u.post.timestamp, req->u.post.ack, &m);
    else if (req->op == IPC_OP_POST_BATCH)
        rc = alink_batch_post(req->dev.pk, req->dev.dn, id, req->u.post.params, req->u.post.events,
                              req->u.post.ack, &m);
    else if (req->op == IPC_OP_POST_HISTORY)
        rc = alink_history_post(req->dev.pk, req->dev.dn, id, req->u.post.params,
                                req->u.post.events, req->u.post.ack, &m);
    else
        rc = alink_event_post(req->dev.pk, req->dev.dn, id, req->u.post.event, req->u.post.params,
                              req->u.post.timestamp, req->u.post.ack, &m);
    if (rc < 0) {
        ipc_reply_errno(r, rc, "params");
        return;
    }
    append_for(r, req, m.topic, m.payload, m.len, 1, id, req->u.post.wait_reply && req->u.post.ack);
    alink_msg_free(&m);
}

static void do_reply(struct ipc_reply *r, const struct ipc_request *req)
{
    struct wait *w = wait_find(WAIT_DOWNLINK_CALL, req->dev.key, req->u.reply.msg_id);
    int rc;

    if (!w) {
        ipc_reply_error(r, IPC_ERR_BAD_REQUEST,
                        "request_id: no pending property set or service call %s for %s (answered "
                        "already, or never received)",
                        req->u.reply.msg_id, req->dev.key);
        return;
    }
    if (w->expired) {
        ipc_reply_error(r, IPC_ERR_TIMEOUT,
                        "request_id: %s for %s came too late: nobody answered within %d ms%s",
                        w->id, req->dev.key, w->budget_ms,
                        w->raw_rrpc
                            ? " (the platform gives RRPC 8 s) and its caller was told TIMEOUT"
                            : ", so aligw answered the platform 504");
        return;
    }
    if (req->u.reply.payload && !w->raw_rrpc) {
        ipc_reply_error(r, IPC_ERR_BAD_REQUEST,
                        "payload_b64: raw bytes answer an RRPC request only; %s %s takes data",
                        alink_kind_name(w->call), w->service);
        return;
    }
    rc = send_call_reply(w, req->u.reply.code, req->u.reply.data, req->u.reply.message,
                         req->u.reply.payload, req->u.reply.payload_len);
    if (rc < 0) {
        ipc_reply_errno(r, rc, "reply not stored");
        return;
    }
    wait_free(w);
    ipc_reply_ok(r, NULL);
}

/* desired_get/delete, tags_update/delete: a thing-model request answered on its _reply. */
static void do_thing_request(struct ipc_reply *r, const struct ipc_request *req)
{
    static const struct {
        enum ipc_op op;
        const char *path;
    } paths[] = {{IPC_OP_DESIRED_GET, "property/desired/get"},
                 {IPC_OP_DESIRED_DELETE, "property/desired/delete"},
                 {IPC_OP_TAGS_UPDATE, "deviceinfo/update"},
                 {IPC_OP_TAGS_DELETE, "deviceinfo/delete"}};
    struct device *d = need_device(r, req);
    struct alink_msg m = {0};
    const char *path = NULL;
    int rc;

    if (!d)
        return;
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++)
        if (paths[i].op == req->op)
            path = paths[i].path;
    uint32_t id = device_next_alink_id(d);
    rc = alink_thing_request(req->dev.pk, req->dev.dn, id, path, req->u.thing.body, &m);
    if (rc < 0) {
        ipc_reply_errno(r, rc, "%s", ipc_op_name(req->op));
        return;
    }
    append_for(r, req, m.topic, m.payload, m.len, 1, id, true);
    alink_msg_free(&m);
}

static void on_shadow_done(void *arg, int status, const char *error, json_t *result)
{
    struct ipc_reply *r = arg;
    if (status == 0)
        ipc_reply_ok(r, json_incref(result));
    else if (status == -EREMOTE)
        ipc_reply_error(r, IPC_ERR_REFUSED, "%s", error);
    else if (status == -ETIMEDOUT)
        ipc_reply_error(r, IPC_ERR_TIMEOUT, "%s", error);
    else
        ipc_reply_errno(r, status, "%s", error);
}

static void do_shadow(struct ipc_reply *r, const struct ipc_request *req)
{
    if (!need_device(r, req))
        return;
    enum shadow_op op = req->op == IPC_OP_SHADOW_GET      ? SHADOW_GET
                        : req->op == IPC_OP_SHADOW_UPDATE ? SHADOW_UPDATE
                                                          : SHADOW_CLEAR_DESIRED;
    int rc = shadow_request(req->dev.pk, req->dev.dn, op, req->u.thing.body,
                            op == SHADOW_GET ? -1 : req->u.thing.version, on_shadow_done, r);
    if (rc < 0)
        ipc_reply_errno(r, rc, "shadow request not queued");
}

/* config_get: thing.config.get queued, answered once rconfig has the file (or says why not). */
static void on_config_done(void *arg, int status, const char *error, json_t *config)
{
    struct ipc_reply *r = arg;
    if (status == 0) {
        json_t *res = json_deep_copy(config);
        json_object_del(res, "event");
        ipc_reply_ok(r, res);
    } else if (status == -EREMOTE) {
        ipc_reply_error(r, IPC_ERR_REFUSED, "%s", error);
    } else if (status == -ETIMEDOUT) {
        ipc_reply_error(r, IPC_ERR_TIMEOUT, "%s", error);
    } else if (status == -ENOENT) {
        ipc_reply_error(r, IPC_ERR_REFUSED, "%s", error); /* not no_device: the device exists */
    } else {
        ipc_reply_errno(r, status, "%s", error);
    }
}

static void do_config_get(struct ipc_reply *r, const struct ipc_request *req)
{
    struct device *d = need_device(r, req);
    struct alink_msg m = {0};
    char ids[16];
    int rc;

    if (!d)
        return;
    uint32_t id = device_next_alink_id(d);
    snprintf(ids, sizeof(ids), "%u", id);
    rc = alink_config_get(req->dev.pk, req->dev.dn, id, &m);
    if (rc == 0)
        rc = outbox_append(A.ob, req->dev.key, m.topic, m.payload, m.len, 1, NULL, NULL);
    alink_msg_free(&m);
    if (rc < 0) {
        ipc_reply_errno(r, rc, "thing.config.get for %s not stored", req->dev.key);
        return;
    }
    if ((rc = rconfig_wait(req->dev.pk, req->dev.dn, ids, CONFIG_WAIT_MS, on_config_done, r)) < 0)
        ipc_reply_errno(r, rc, "cannot wait for the configuration");
}

struct list_ctx {
    json_t *arr;
    const char *state;
    size_t by_state[DEV_STATE_COUNT];
};

static void list_one(struct device *d, void *arg)
{
    struct list_ctx *c = arg;
    enum device_state s = device_state(d);
    if (s < DEV_STATE_COUNT)
        c->by_state[s]++;
    if (c->arr && (!c->state || strcmp(c->state, device_state_name(s)) == 0))
        json_array_append_new(c->arr, device_status_json(d, false));
}

static json_t *state_counts(struct list_ctx *c)
{
    json_t *o = json_object();
    for (int s = 0; s < DEV_STATE_COUNT; s++)
        if (c->by_state[s])
            json_object_set_new(o, device_state_name((enum device_state)s),
                                json_integer((json_int_t)c->by_state[s]));
    return o;
}

static json_t *queue_json(void)
{
    struct outbox_stats st;
    struct outbox_health h;
    outbox_total_stats(A.ob, &st);
    outbox_health(A.ob, &h);
    json_t *o = json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:b}", "queued", (json_int_t)st.count, "bytes",
                          (json_int_t)st.bytes, "dropped", (json_int_t)st.dropped, "expired",
                          (json_int_t)st.expired, "oldest_ms", (json_int_t)st.oldest_ms, "errors",
                          (json_int_t)h.errors, "damaged", h.damaged);
    if (o && h.last_error[0])
        json_object_set_new(o, "last_error", json_string(h.last_error));
    if (o)
        json_object_set_new(o, "full", json_boolean(st.full));
    return o;
}

/* Message counters since the start (what aligwctl top turns into rates). */
static json_t *messages_json(void)
{
    struct outbox_stats st;
    struct device_totals t;
    outbox_total_stats(A.ob, &st);
    devices_get_totals(&t);
    return json_pack("{s:I,s:I,s:I,s:I,s:I}", "accepted", (json_int_t)st.accepted, "forwarded",
                     (json_int_t)t.c.msgs_sent, "acked", (json_int_t)t.c.msgs_out, "received",
                     (json_int_t)t.c.msgs_in, "inflight", (json_int_t)t.inflight);
}

static void do_devices(struct ipc_reply *r, const struct ipc_request *req)
{
    const char *want = req->u.devices.state;
    if (want) { /* a misspelt state would list nothing, as if no device were in it */
        int s = 0;
        while (s < 8 && strcmp(want, device_state_name((enum device_state)s)) != 0)
            s++;
        if (s == 8) {
            ipc_reply_error(r, IPC_ERR_BAD_REQUEST,
                            "state: '%s' is not one of offline, registering, connecting, "
                            "online, backoff, auth-refused, kicked, needs-reset",
                            want);
            return;
        }
    }
    struct list_ctx c = {.arr = json_array(), .state = want};
    devices_foreach(list_one, &c);
    ipc_reply_ok(r, json_pack("{s:o,s:I,s:I,s:o}", "devices", c.arr, "total",
                              (json_int_t)devices_count(), "online", (json_int_t)devices_online(),
                              "states", state_counts(&c)));
}

/* Reloads the file; the reply names the changed keys that wait for a restart. */
static void do_reload(struct ipc_reply *r)
{
    char restart[1024];
    if (A.reload(restart, sizeof(restart)) < 0) {
        ipc_reply_error(r, IPC_ERR_BAD_REQUEST,
                        "the configuration has errors (see the daemon's log); the running "
                        "configuration is kept");
        return;
    }
    json_t *keys = json_array();
    for (char *k = restart, *next; k && *k; k = next) {
        next = strstr(k, ", ");
        if (next) {
            *next = '\0';
            next += 2;
        }
        json_array_append_new(keys, json_string(k));
    }
    ipc_reply_ok(r, json_pack("{s:o}", "restart_needed", keys));
}

void api_get_stats(struct ipc_stats *is, struct plugins_stats *ps)
{
    memset(is, 0, sizeof(*is));
    memset(ps, 0, sizeof(*ps));
    if (A.ipc)
        ipc_server_stats(A.ipc, is);
    if (A.plugins)
        plugins_get_stats(A.plugins, ps);
}

/* The session shards (session.h): [{pid, sessions, restarts}], empty when sessions run here. */
static json_t *shards_json(void)
{
    struct session_shard_info v[64];
    size_t n = session_layer_shards(v, 64);
    json_t *a = json_array();
    for (size_t i = 0; i < n && i < 64; i++)
        json_array_append_new(a,
                              json_pack("{s:i,s:I,s:i}", "pid", v[i].pid, "sessions",
                                        (json_int_t)v[i].sessions, "restarts", (int)v[i].restarts));
    return a;
}

static void do_status(struct ipc_reply *r, bool stats)
{
    struct list_ctx c = {0};
    json_t *o;

    devices_foreach(list_one, &c);
    o = json_pack("{s:s,s:I,s:I,s:I,s:o,s:o,s:o}", "version", ALIGW_VERSION, "uptime_s",
                  (json_int_t)((uv_now(A.loop) - A.started_ms) / 1000), "devices",
                  (json_int_t)devices_count(), "online", (json_int_t)devices_online(), "states",
                  state_counts(&c), "queue", queue_json(), "time", timesync_status());
    json_object_set_new(o, "network",
                        json_pack("{s:b,s:I}", "watch", netwatch_running(), "changes",
                                  (json_int_t)netwatch_changes()));
    json_object_set_new(o, "shards", shards_json());
    unsigned long long fd_limit;
    size_t sessions = devices_session_limit(&fd_limit);
    if (sessions)
        json_object_set_new(o, "fds",
                            json_pack("{s:I,s:I}", "limit", (json_int_t)fd_limit,
                                      "devices_servable", (json_int_t)sessions));
    json_object_set_new(o, "messages", messages_json());
    /* What aligwctl health checks against (health.min_online). */
    json_object_set_new(o, "health", json_pack("{s:f}", "min_online", A.cfg->health.min_online));
    if (stats) {
        struct ipc_stats is;
        struct plugins_stats ps = {0};
        ipc_server_stats(A.ipc, &is);
        if (A.plugins)
            plugins_get_stats(A.plugins, &ps);
        json_object_set_new(
            o, "api",
            json_pack("{s:i,s:i,s:I,s:I,s:I,s:I,s:I,s:I}", "connections", is.connections,
                      "watchers", is.watchers, "accepted", (json_int_t)is.accepted, "refused",
                      (json_int_t)is.refused, "requests", (json_int_t)is.requests, "errors",
                      (json_int_t)is.errors, "events_sent", (json_int_t)is.events_sent,
                      "events_dropped", (json_int_t)is.events_dropped));
        struct loopstat ls;
        loopstat_take(&ls);
        json_object_set_new(o, "loop",
                            json_pack("{s:I,s:f,s:f}", "turns", (json_int_t)ls.turns, "max_turn_ms",
                                      ls.max_turn_ms, "busy_s", ls.total_busy_ms / 1000.0));
        json_object_set_new(o, "plugins",
                            json_pack("{s:I,s:I,s:I,s:I}", "queued", (json_int_t)ps.queued,
                                      "delivered", (json_int_t)ps.delivered, "rejected_full",
                                      (json_int_t)ps.rejected_full, "sink_errors",
                                      (json_int_t)ps.sink_errors));
    }
    if (A.plugins)
        json_object_set_new(o, "plugin_hosts", plugins_status(A.plugins));
    ipc_reply_ok(r, o);
}

static void join_errors(const struct config_errors *e, char *buf, size_t size)
{
    size_t off = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < e->n && off + 4 < size; i++)
        off += (size_t)snprintf(buf + off, size - off, "%s%s", i ? "; " : "", e->v[i].text);
}

static void config_versions(const struct device_conf *d);

static void do_add(struct ipc_reply *r, const struct ipc_request *req)
{
    struct device_conf dc;
    struct config_errors errs = {0};
    char msg[1024], key[128];
    char *text;
    int rc;

    rc = config_device_from_json(A.cfg, req->u.add.device, &dc, &errs);
    if (rc < 0) {
        join_errors(&errs, msg, sizeof(msg));
        config_errors_free(&errs);
        ipc_reply_error(r, IPC_ERR_BAD_REQUEST, "device: %s", msg);
        return;
    }
    config_errors_free(&errs);
    snprintf(key, sizeof(key), "%s/%s", dc.product_key, dc.device_name);
    if (devices_find(key)) {
        ipc_reply_error(r, IPC_ERR_EXISTS, "device %s is already configured", key);
        config_device_conf_free(&dc);
        return;
    }
    dc.runtime = true;
    text = json_dumps(req->u.add.device, JSON_COMPACT);
    rc = text ? statedb_device_add(A.db, dc.product_key, dc.device_name, text) : -ENOMEM;
    if (text) {
        memset(text, 0, strlen(text)); /* it holds the device secret */
        free(text);
    }
    if (rc == 0)
        rc = devices_add(&dc);
    if (rc == 0)
        config_versions(&dc);
    if (rc < 0)
        ipc_reply_errno(r, rc, "device %s not added", key);
    else {
        log_notice("%s: added at runtime", key);
        ipc_reply_ok(r, json_pack("{s:s}", "device", key));
    }
    config_device_conf_free(&dc);
}

static void do_remove(struct ipc_reply *r, const struct ipc_request *req)
{
    struct device *d = need_device(r, req);
    if (!d)
        return;
    if (!device_conf(d)->runtime) {
        ipc_reply_error(r, IPC_ERR_BAD_REQUEST,
                        "device: %s comes from the configuration file; remove it there and "
                        "reload",
                        req->dev.key);
        return;
    }
    int rc = statedb_device_remove(A.db, req->dev.pk, req->dev.dn);
    if (rc < 0 && rc != -ENOENT) {
        ipc_reply_errno(r, rc, "device %s not removed", req->dev.key);
        return;
    }
    devices_remove(req->dev.key);
    /* Its queued messages stay in the outbox (nothing accepted is dropped by a removal) and go
     * out if the device is added again; TTL and the caps still apply to them. */
    struct outbox_stats st;
    outbox_device_stats(A.ob, req->dev.key, &st);
    log_notice("%s: removed at runtime; %llu queued message(s) kept, delivered if it is added "
               "again",
               req->dev.key, (unsigned long long)st.count);
    ipc_reply_ok(r, json_pack("{s:s,s:I,s:s}", "device", req->dev.key, "queued",
                              (json_int_t)st.count, "queued_messages",
                              "kept: delivered if the device is added again (store.ttl and the "
                              "byte caps still apply)"));
}

/* ---- OTA requests ------------------------------------------------------------------------ */

static void do_ota(struct ipc_reply *r, const struct ipc_request *req)
{
    if (req->dev.key[0] && !need_device(r, req))
        return;
    ipc_reply_ok(r, ota_json(req->dev.key[0] ? req->dev.key : NULL));
}

static void do_ota_result(struct ipc_reply *r, const struct ipc_request *req)
{
    int rc;
    if (!need_device(r, req))
        return;
    rc = ota_result(req->dev.pk, req->dev.dn, req->u.ota.job, req->u.ota.step,
                    req->u.ota.version[0] ? req->u.ota.version : NULL, req->u.ota.desc);
    if (rc == -ENOENT)
        ipc_reply_error(r, IPC_ERR_BAD_REQUEST, "job: no OTA job %lld for %s",
                        (long long)req->u.ota.job, req->dev.key);
    else if (rc == -EALREADY)
        ipc_reply_error(r, IPC_ERR_BAD_REQUEST,
                        "job: OTA job %lld of %s is not waiting to be applied (finished, replaced "
                        "or still downloading)",
                        (long long)req->u.ota.job, req->dev.key);
    else if (rc < 0)
        ipc_reply_errno(r, rc, "OTA result not recorded");
    else
        ipc_reply_ok(r, NULL);
}

static void on_request(struct ipc_server *srv, struct ipc_reply *r, const struct ipc_request *req,
                       void *data)
{
    switch (req->op) {
    case IPC_OP_PUBLISH:
        if (!need_device(r, req))
            break;
        if (!alink_topic_owned(req->dev.pk, req->dev.dn, req->u.publish.topic, ALINK_PUBLISH)) {
            ipc_reply_error(r, IPC_ERR_BAD_REQUEST,
                            "topic: %s is not a topic device %s may publish on (/%s/%s/user/..., "
                            "/sys/%s/%s/..., /ota/device/<kind>/%s/%s, /shadow/<kind>/%s/%s, "
                            "/ext/<kind>/%s/%s/...)",
                            req->u.publish.topic, req->dev.key, req->dev.pk, req->dev.dn,
                            req->dev.pk, req->dev.dn, req->dev.pk, req->dev.dn, req->dev.pk,
                            req->dev.dn, req->dev.pk, req->dev.dn);
            break;
        }
        append_for(r, req, req->u.publish.topic, req->u.publish.payload, req->u.publish.payload_len,
                   req->u.publish.qos, 0, false);
        break;
    case IPC_OP_POST_PROPERTIES:
    case IPC_OP_POST_EVENT:
    case IPC_OP_POST_BATCH:
    case IPC_OP_POST_HISTORY:
        do_post(r, req);
        break;
    case IPC_OP_REPLY:
        do_reply(r, req);
        break;
    case IPC_OP_CONFIG_GET:
        do_config_get(r, req);
        break;
    case IPC_OP_DESIRED_GET:
    case IPC_OP_DESIRED_DELETE:
    case IPC_OP_TAGS_UPDATE:
    case IPC_OP_TAGS_DELETE:
        do_thing_request(r, req);
        break;
    case IPC_OP_SHADOW_GET:
    case IPC_OP_SHADOW_UPDATE:
    case IPC_OP_SHADOW_CLEAR_DESIRED:
        do_shadow(r, req);
        break;
    case IPC_OP_DEVICES:
        do_devices(r, req);
        break;
    case IPC_OP_DEVICE: {
        struct device *d = need_device(r, req);
        if (d) {
            json_t *o = device_status_json(d, true);
            json_t *fw = ota_json(req->dev.key);
            json_object_set(o, "firmware", json_object_get(fw, "versions"));
            json_object_set(o, "ota_jobs", json_object_get(fw, "jobs"));
            json_decref(fw);
            ipc_reply_ok(r, o);
        }
        break;
    }
    case IPC_OP_OTA:
        do_ota(r, req);
        break;
    case IPC_OP_OTA_RESULT:
        do_ota_result(r, req);
        break;
    case IPC_OP_OTA_VERSION: {
        int rc =
            ota_set_version(req->dev.pk, req->dev.dn, req->u.ota.module, req->u.ota.version, "api");
        if (rc < 0)
            ipc_reply_errno(r, rc, "version of %s not set", req->dev.key);
        else
            ipc_reply_ok(r, NULL);
        break;
    }
    case IPC_OP_OTA_CHECK: {
        int rc = ota_check(req->dev.pk, req->dev.dn, req->u.ota.module);
        if (rc < 0)
            ipc_reply_errno(r, rc, "firmware/get for %s not queued", req->dev.key);
        else
            ipc_reply_ok(r, NULL);
        break;
    }
    case IPC_OP_ADD_DEVICE:
        do_add(r, req);
        break;
    case IPC_OP_REMOVE_DEVICE:
        do_remove(r, req);
        break;
    case IPC_OP_STATS:
        do_status(r, true);
        break;
    case IPC_OP_STATUS:
        do_status(r, false);
        break;
    case IPC_OP_RELOAD:
        do_reload(r);
        break;
    default:
        ipc_reply_error(r, IPC_ERR_UNKNOWN_OP, "op: %s is not handled", ipc_op_name(req->op));
        break;
    }
}

/* ---- downlinks --------------------------------------------------------------------------- */

/*
 * The one way an event leaves: to the API watchers whose filter takes it and, when it asked for
 * this kind (ABI 1.3 "events"), to the plugin serving the device. Returns how many took it (a
 * call nobody took is answered by the caller with an error).
 */
static int emit(enum ipc_event_kind kind, const char *key, const char *topic, json_t *ev)
{
    int n = A.ipc ? ipc_broadcast(A.ipc, kind, key, topic, ev) : 0;
    struct device *d = A.plugins ? devices_find(key) : NULL;
    const char *name = ipc_event_kind_name(kind);
    if (n < 0)
        n = 0;
    if (d && name) {
        const struct device_conf *dc = device_conf(d);
        if (plugins_wants_event(A.plugins, dc->product_key, dc->device_name, name)) {
            char *text = json_dumps(ev, JSON_COMPACT);
            if (text && plugins_event(A.plugins, dc->product_key, dc->device_name, name, text) == 0)
                n++;
            free(text);
        }
    }
    return n;
}

/* Whether anyone would take a kind of event for d (so it is only built when needed). */
static bool anyone_wants(enum ipc_event_kind kind, struct device *d)
{
    struct ipc_stats is;
    ipc_server_stats(A.ipc, &is);
    if (is.watchers > 0)
        return true;
    const struct device_conf *dc = device_conf(d);
    return A.plugins && plugins_wants_event(A.plugins, dc->product_key, dc->device_name,
                                            ipc_event_kind_name(kind));
}

/* The payload as JSON text when it is JSON, else as a string (or base64 for binary). */
static void set_payload(json_t *ev, const void *payload, size_t len)
{
    json_error_t e;
    json_t *j = json_loadb(payload, len, JSON_DECODE_ANY, &e);
    if (j) {
        json_object_set_new(ev, "payload_json", j);
        return;
    }
    json_t *s = json_stringn(payload, len); /* NULL if not valid UTF-8 */
    if (s) {
        json_object_set_new(ev, "payload", s);
        return;
    }
    char *out = base64_encode(payload, len);
    if (!out)
        return;
    json_object_set_new(ev, "payload_b64", json_string(out));
    free(out);
}

static void downlink_call(struct device *d, const struct device_conf *dc, const char *topic,
                          const struct alink_topic *t, const struct alink_payload *p,
                          const void *raw, size_t raw_len)
{
    const char *pk = dc->product_key, *dn = dc->device_name, *key = device_key(d);
    bool raw_rrpc = t->kind == ALINK_RRPC_REQUEST;
    const char *id = raw_rrpc ? t->rrpc_id : p->id;
    char *params = p->params ? json_dumps(p->params, ALINK_DUMP_FLAGS) : strdup("{}");
    int handled = 0;
    enum ipc_event_kind kind =
        t->kind == ALINK_PROPERTY_SET ? IPC_EV_PROPERTY_SET : IPC_EV_SERVICE_CALL;

    /* A plugin that lists the kind in its events gets it as an event, else at its entry point. */
    if (A.plugins && plugins_serves(A.plugins, pk, dn) &&
        !plugins_wants_event(A.plugins, pk, dn, ipc_event_kind_name(kind))) {
        if (t->kind == ALINK_PROPERTY_SET)
            handled = plugins_property_set(A.plugins, pk, dn, id, params) == 0;
        else if (!raw_rrpc)
            handled = plugins_service_call(A.plugins, pk, dn, id, t->name,
                                           t->rrpc_id[0] ? t->rrpc_id : NULL, params) == 0;
    }
    free(params);

    json_t *ev = json_pack("{s:s,s:s,s:s}", "device", key, "topic", topic, "id", id);
    if (t->kind == ALINK_PROPERTY_SET) {
        json_object_set_new(ev, "event", json_string("property_set"));
    } else {
        json_object_set_new(ev, "event", json_string("service_call"));
        json_object_set_new(ev, "service", json_string(raw_rrpc ? "rrpc" : t->name));
        if (t->rrpc_id[0])
            json_object_set_new(ev, "rrpc_id", json_string(t->rrpc_id));
    }
    json_object_set(ev, "params", p->params ? p->params : json_object());
    if (raw_rrpc) { /* the RRPC forms carry bytes: params only when they happen to be JSON */
        char *b64 = base64_encode(raw ? raw : "", raw ? raw_len : 0);
        if (b64)
            json_object_set_new(ev, "payload_b64", json_string(b64));
        free(b64);
        if (t->name[0])
            json_object_set_new(ev, "rrpc_topic", json_sprintf("/%s/%s/%s", pk, dn, t->name));
    }
    int watchers =
        handled ? ipc_broadcast(A.ipc, kind, key, topic, ev) : emit(kind, key, topic, ev);
    json_decref(ev);
    if (handled)
        return; /* the plugin answers through the host table */

    struct wait tmp = {.call = t->kind, .raw_rrpc = raw_rrpc};
    snprintf(tmp.pk, sizeof(tmp.pk), "%s", pk);
    snprintf(tmp.dn, sizeof(tmp.dn), "%s", dn);
    snprintf(tmp.dev, sizeof(tmp.dev), "%s", key);
    snprintf(tmp.id, sizeof(tmp.id), "%s", id);
    snprintf(tmp.service, sizeof(tmp.service), "%s", t->name);
    snprintf(tmp.rrpc_id, sizeof(tmp.rrpc_id), "%s", t->rrpc_id);
    if (raw_rrpc)
        snprintf(tmp.custom, sizeof(tmp.custom), "%s", t->name);
    if (watchers <= 0) {
        log_dev(LOG_WARNING, pk, dn, "%s %s (id %s): no plugin or API client handles it",
                alink_kind_name(t->kind), t->name, id);
        if (!raw_rrpc) /* bytes have no error envelope: the platform's caller sees TIMEOUT */
            send_call_reply(&tmp, 503, NULL, "aligw: no local handler for this device", NULL, 0);
        return;
    }
    uint64_t budget = (uint64_t)A.cfg->api.service_timeout_ms;
    if ((raw_rrpc || t->rrpc_id[0]) && budget > RRPC_BUDGET_MS)
        budget = RRPC_BUDGET_MS;
    struct wait *w = wait_new(WAIT_DOWNLINK_CALL, pk, dn, id, budget);
    if (w) {
        w->call = tmp.call;
        w->raw_rrpc = raw_rrpc;
        memcpy(w->service, tmp.service, sizeof(w->service));
        memcpy(w->rrpc_id, tmp.rrpc_id, sizeof(w->rrpc_id));
        memcpy(w->custom, tmp.custom, sizeof(w->custom));
    }
}

/*
 * A notice on /ext/error: the platform says something is wrong with this device (its payload is
 * untrusted and its shape not documented: a JSON object's "code" and "message" when it has
 * them, else the text with anything unprintable replaced). Shown in the device's status and
 * logged as a warning when it changes.
 */
static void platform_error(struct device *d, const struct device_conf *dc, const void *payload,
                           size_t len)
{
    char text[160];
    json_t *o = json_loadb(payload, len, 0, NULL);
    const char *msg = json_string_value(json_object_get(o, "message"));
    json_t *code = json_object_get(o, "code");
    if (json_is_object(o) && (msg || code)) {
        char c[32] = "";
        if (json_is_integer(code))
            snprintf(c, sizeof(c), "%lld", (long long)json_integer_value(code));
        else if (json_is_string(code))
            snprintf(c, sizeof(c), "%.31s", json_string_value(code));
        snprintf(text, sizeof(text), "%s%s%s", c, c[0] && msg ? ": " : "", msg ? msg : "");
    } else {
        size_t n = len < sizeof(text) - 1 ? len : sizeof(text) - 1;
        for (size_t i = 0; i < n; i++) {
            unsigned char ch = ((const unsigned char *)payload)[i];
            text[i] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
        }
        text[n] = '\0';
    }
    json_decref(o);
    if (device_set_platform_error(d, text))
        log_dev(LOG_WARNING, dc->product_key, dc->device_name, "the platform reports: %s", text);
}

static void on_downlink(void *ctx, struct device *d, const char *topic, const void *payload,
                        size_t len)
{
    const struct device_conf *dc = device_conf(d);
    struct alink_topic t;
    struct alink_payload p = {0};
    char err[128];
    bool parsed = false;

    log_dev(LOG_DEBUG, dc->product_key, dc->device_name, "downlink on %s (%zu bytes)", topic, len);
    alink_classify(dc->product_key, dc->device_name, topic, &t);

    /* Every message goes to message watchers (the payload is only decoded when there are any)
     * and to a plugin that asked for raw topics. */
    if (anyone_wants(IPC_EV_MESSAGE, d)) {
        json_t *ev = json_pack("{s:s,s:s,s:s,s:s}", "event", "message", "device", device_key(d),
                               "topic", topic, "kind", alink_kind_name(t.kind));
        set_payload(ev, payload, len);
        emit(IPC_EV_MESSAGE, device_key(d), topic, ev);
        json_decref(ev);
    }
    if (A.plugins && plugins_serves(A.plugins, dc->product_key, dc->device_name))
        plugins_message(A.plugins, dc->product_key, dc->device_name, topic, payload, len);

    if (t.kind == ALINK_OTA_UPGRADE) {
        ota_on_push(d, payload, len);
        return;
    }
    if (t.kind == ALINK_REPLY && strcmp(t.name, "thing/ota/firmware/get") == 0)
        ota_on_get_reply(d, payload, len);
    if (t.kind == ALINK_REPLY && strcmp(t.name, "thing/config/get") == 0)
        rconfig_on_get_reply(dc->product_key, dc->device_name, payload, len);
    if (t.kind == ALINK_SHADOW) {
        shadow_on_message(dc->product_key, dc->device_name, payload, len);
        return;
    }
    if (t.kind == ALINK_CONFIG_PUSH) {
        rconfig_on_push(dc->product_key, dc->device_name, payload, len);
        return;
    }

    switch (t.kind) {
    case ALINK_PROPERTY_SET:
    case ALINK_SERVICE_CALL:
    case ALINK_POST_REPLY:
    case ALINK_REPLY:
        parsed = alink_parse(payload, len, &p, err, sizeof(err)) == 0;
        if (!parsed) {
            log_dev(LOG_WARNING, dc->product_key, dc->device_name,
                    "ignoring a malformed %s on %s: %s", alink_kind_name(t.kind), topic, err);
            return;
        }
        break;
    case ALINK_RRPC_REQUEST:
        break;
    case ALINK_NTP_RESPONSE:
        timesync_response(dc->product_key, dc->device_name, payload, len);
        return;
    case ALINK_EXT_ERROR:
        platform_error(d, dc, payload, len);
        return;
    default:
        return;
    }

    if (t.kind == ALINK_PROPERTY_SET || t.kind == ALINK_SERVICE_CALL) {
        downlink_call(d, dc, topic, &t, &p, NULL, 0);
    } else if (t.kind == ALINK_RRPC_REQUEST) {
        struct alink_payload raw = {0};
        raw.params = json_loadb(payload, len, 0, NULL);
        downlink_call(d, dc, topic, &t, &raw, payload, len);
        json_decref(raw.params);
    } else {
        /* A _reply: match it to a post waiting for it, and tell reply watchers. */
        struct wait *w = wait_find(WAIT_UPLINK_REPLY, device_key(d), p.id);
        if (w) {
            if (!p.has_code || p.code == 200)
                ipc_reply_ok(w->reply, json_pack("{s:s,s:i,s:s?,s:O?}", "msg_id", p.id, "code",
                                                 p.has_code ? p.code : 200, "message", p.message,
                                                 "data", p.data));
            else
                ipc_reply_error(w->reply, IPC_ERR_REFUSED, "the platform replied %d: %s", p.code,
                                p.message ? p.message : "(no message)");
            wait_free(w);
        }
        json_t *rev = json_pack("{s:s,s:s,s:s,s:s,s:i,s:s?}", "event", "reply", "device",
                                device_key(d), "topic", topic, "msg_id", p.id, "code",
                                p.has_code ? p.code : 200, "message", p.message);
        emit(IPC_EV_REPLY, device_key(d), topic, rev);
        json_decref(rev);
    }
    if (parsed)
        alink_payload_free(&p);
}

static void on_state_changed(void *ctx, struct device *d, enum device_state old)
{
    json_t *ev = device_status_json(d, false);
    json_object_set_new(ev, "event", json_string("state"));
    json_object_set_new(ev, "old", json_string(device_state_name(old)));
    emit(IPC_EV_STATE, device_key(d), NULL, ev);
    json_decref(ev);
    if (device_state(d) == DEV_ONLINE || old == DEV_ONLINE)
        notify_status();
    const struct device_conf *dc = device_conf(d);
    if (device_state(d) == DEV_ONLINE)
        timesync_online(dc->product_key, dc->device_name);
    else if (old == DEV_ONLINE)
        timesync_offline(dc->product_key, dc->device_name);
    if (device_state(d) == DEV_ONLINE && old != DEV_ONLINE)
        ota_device_online(d);
}

static void on_device_removed(void *ctx, struct device *d)
{
    const char *key = device_key(d);
    ota_device_removed(device_conf(d)->product_key, device_conf(d)->device_name);
    rconfig_device_removed(device_conf(d)->product_key, device_conf(d)->device_name);
    shadow_device_removed(device_conf(d)->product_key, device_conf(d)->device_name);
    size_t klen = strlen(key);
    struct wait *w = A.head, *next;

    for (; w; w = next) {
        next = w->next;
        if (strncmp(w->key, key, klen) != 0 || w->key[klen] != '#')
            continue;
        if (w->kind == WAIT_UPLINK_REPLY)
            ipc_reply_error(w->reply, IPC_ERR_NO_DEVICE, "device %s was removed", key);
        wait_free(w);
    }
}

/* ---- plugin sink ------------------------------------------------------------------------- */

static int sink_uplink(void *ctx, const char *pk, const char *dn, const char *topic,
                       const char *payload, size_t len, int qos,
                       void (*done)(void *arg, int status, int64_t seq), void *arg)
{
    struct device *d = devices_find2(pk, dn);
    if (!d)
        return ALIGW_ENODEVICE;
    return outbox_append(A.ob, device_key(d), topic, payload, len, qos, done, arg);
}

static int sink_subscribe(void *ctx, const char *pk, const char *dn, const char *filter)
{
    return devices_subscribe(pk, dn, filter);
}

static void sink_device_state(void *ctx, const char *pk, const char *dn, int ok, const char *reason)
{
    struct device *d = devices_find2(pk, dn);
    if (!d)
        return;
    device_set_field_error(d, ok ? NULL : reason);
    json_t *ev = device_status_json(d, false);
    json_object_set_new(ev, "event", json_string("state"));
    json_object_set_new(ev, "field_ok", json_boolean(ok));
    emit(IPC_EV_STATE, device_key(d), NULL, ev);
    json_decref(ev);
}

static void sink_firmware_result(void *ctx, const char *pk, const char *dn, int64_t job_id,
                                 int step, const char *version, const char *desc)
{
    int rc = ota_result(pk, dn, job_id, step, version, desc);
    if (rc < 0)
        log_dev(LOG_WARNING, pk, dn, "plugin answered OTA job %lld, which %s", (long long)job_id,
                rc == -ENOENT ? "does not exist" : "is not being applied");
}

static void sink_firmware_version(void *ctx, const char *pk, const char *dn, const char *module,
                                  const char *version)
{
    int rc = ota_set_version(pk, dn, module, version, "plugin");
    if (rc < 0)
        log_errno(LOG_WARNING, rc, "%s/%s: firmware version from the plugin not stored", pk, dn);
}

/* ABI 1.3: a plugin's request, served like a socket client's for its device. */
static void sink_request(void *ctx, const char *pk, const char *dn, const char *json, size_t len,
                         void (*done)(void *arg, const char *line, size_t n), void *arg)
{
    char key[IPC_PK_MAX + IPC_DN_MAX + 2];
    snprintf(key, sizeof(key), "%s/%s", pk, dn);
    ipc_local_request(A.ipc, key, json, len, done, arg);
}

/* ---- OTA hooks --------------------------------------------------------------------------- */

static int ota_uplink(void *ctx, const char *key, const char *topic, const char *payload,
                      size_t len)
{
    return outbox_append(A.ob, key, topic, payload, len, 1, NULL, NULL);
}

static int ota_apply_plugin(void *ctx, const char *pk, const char *dn, const struct ota_apply *a)
{
    struct aligw_firmware fw = {
        .size = sizeof(fw),
        .job_id = a->job_id,
        .module = a->module,
        .version = a->version,
        .from_version = a->from_version,
        .n_files = a->n_files,
        .paths = a->paths,
        .names = a->names,
        .total_size = a->total_size,
        .is_diff = a->is_diff,
        .ext_data = a->ext_data,
    };
    if (!A.plugins)
        return -ENODEV;
    return plugins_firmware(A.plugins, pk, dn, &fw);
}

static int ota_event(void *ctx, const char *key, json_t *ev)
{
    return emit(IPC_EV_OTA, key, NULL, ev);
}

static int config_event(void *ctx, const char *key, json_t *ev)
{
    return emit(IPC_EV_CONFIG, key, NULL, ev);
}

static int shadow_event(void *ctx, const char *key, json_t *ev)
{
    return emit(IPC_EV_SHADOW, key, NULL, ev);
}

/* Remote configuration files come from the platform's storage like firmware: the same trust
 * store, http rule and disk reserve. */
static void rconfig_opts_from(const struct config *cfg, struct rconfig_opts *o)
{
    static char dir[4096];
    snprintf(dir, sizeof(dir), "%s/config", cfg->state_dir);
    *o = (struct rconfig_opts){.dir = dir,
                               .ca_file = cfg->ota.ca_file,
                               .allow_http = cfg->ota.allow_http,
                               .min_free_bytes = cfg->ota.min_free_bytes};
}

static void ota_opts_from(const struct config *cfg, struct ota_opts *o)
{
    snprintf(A.ota_dir, sizeof(A.ota_dir), "%s/ota", cfg->state_dir);
    *o = (struct ota_opts){.dir = A.ota_dir,
                           .max_concurrent = cfg->ota.max_concurrent,
                           .max_rate = cfg->ota.max_rate,
                           .ca_file = cfg->ota.ca_file,
                           .allow_http = cfg->ota.allow_http,
                           .progress_interval_ms = cfg->ota.progress_interval_ms,
                           .apply_timeout_s = cfg->ota.apply_timeout_s,
                           .max_retries = cfg->ota.max_retries,
                           .min_free_bytes = cfg->ota.min_free_bytes,
                           .pull_at_login = cfg->ota.pull_at_login};
}

/* The configuration's firmware_version of each device (file and runtime-added ones). */
static void config_versions(const struct device_conf *d)
{
    for (size_t i = 0; i < d->n_fw; i++)
        ota_config_version(d->product_key, d->device_name, d->fw_modules[i], d->fw_versions[i]);
}

static void config_versions_all(const struct config *cfg)
{
    for (size_t i = 0; i < cfg->n_devices; i++)
        config_versions(&cfg->devices[i]);
}

/* ---- life cycle -------------------------------------------------------------------------- */

static void add_runtime_devices(void)
{
    struct statedb_device *v = NULL;
    size_t n = 0;

    if (statedb_device_list(A.db, &v, &n) < 0)
        return;
    for (size_t i = 0; i < n; i++) {
        json_error_t je;
        json_t *obj = json_loads(v[i].config, 0, &je);
        struct device_conf dc;
        struct config_errors errs = {0};
        if (obj && config_device_from_json(A.cfg, obj, &dc, &errs) == 0) {
            dc.runtime = true;
            config_versions(&dc);
            if (devices_add(&dc) == -EEXIST)
                log_warn("%s/%s: added at runtime and also in the configuration file; the "
                         "file's entry is used",
                         v[i].product_key, v[i].device_name);
            config_device_conf_free(&dc);
        } else {
            log_error("%s/%s: the stored runtime device is no longer valid; it is not started",
                      v[i].product_key, v[i].device_name);
        }
        config_errors_free(&errs);
        json_decref(obj);
    }
    statedb_device_list_free(v, n);
}

/* timesync's way out: a QoS 0 publish on the device's session now, not through the outbox. */
static int send_now(void *ctx, const char *pk, const char *dn, const char *topic,
                    const char *payload)
{
    struct device *d = devices_find2(pk, dn);
    return d ? devices_publish_now(d, topic, payload) : ALIGW_ENODEVICE;
}

int api_start(uv_loop_t *loop, const struct config *cfg, struct outbox *ob, struct statedb *db,
              api_reload_fn reload)
{
    struct devices_hooks hooks = {
        .downlink = on_downlink, .state_changed = on_state_changed, .removed = on_device_removed};
    struct plugins_sink sink = {.uplink = sink_uplink,
                                .device_state = sink_device_state,
                                .subscribe = sink_subscribe,
                                .firmware_result = sink_firmware_result,
                                .firmware_version = sink_firmware_version,
                                .request = sink_request};
    struct ota_hooks oh = {
        .uplink = ota_uplink, .apply_plugin = ota_apply_plugin, .event = ota_event};
    struct ota_opts oo;
    struct plugins_opts popts = {0};
    char store_dir[4096];
    char *forbid[3];
    int rc;

    A.loop = loop;
    A.cfg = cfg;
    A.ob = ob;
    A.db = db;
    A.reload = reload;
    A.started_ms = uv_now(loop);
    strmap_init(&A.waits);
    uv_timer_init(loop, &A.sweep);
    uv_timer_start(&A.sweep, on_sweep, SWEEP_MS, SWEEP_MS);
    A.running = true;

    rc = ipc_server_init(&A.ipc, loop, cfg, on_request, NULL);
    if (rc == 0)
        rc = ipc_server_start(A.ipc);
    if (rc < 0)
        return rc;
    struct timesync_opts to = {.interval_s = cfg->cloud.time_sync_s,
                               .max_skew_ms = cfg->cloud.max_clock_skew_ms,
                               .send = send_now};
    if ((rc = timesync_start(loop, &to)) < 0)
        return rc;
    ota_opts_from(cfg, &oo);
    rc = ota_init(loop, db, &oo, &oh);
    if (rc < 0)
        return rc;
    config_versions_all(cfg);
    struct rconfig_hooks rh = {.uplink = ota_uplink, .event = config_event};
    struct rconfig_opts ro;
    rconfig_opts_from(cfg, &ro);
    if ((rc = rconfig_init(loop, &ro, &rh)) < 0)
        return rc;
    struct shadow_hooks sh = {.uplink = ota_uplink, .event = shadow_event};
    shadow_init(loop, &sh);
    rc = devices_init(loop, cfg, ob, db, &hooks);
    if (rc < 0)
        return rc;
    add_runtime_devices();
    popts.ack = true;
    /* Out-of-process plugins must not reach the databases or the API socket by path. */
    snprintf(store_dir, sizeof(store_dir), "%s", cfg->store.path);
    if (strrchr(store_dir, '/'))
        *strrchr(store_dir, '/') = '\0';
    forbid[0] = cfg->state_dir;
    forbid[1] = store_dir[0] ? store_dir : cfg->state_dir;
    forbid[2] = cfg->runtime_dir;
    popts.forbid = forbid;
    popts.n_forbid = 3;
    popts.firmware_dir = oo.dir; /* ota_init made it: on_firmware's files, read-only */
    rc = plugins_init(&A.plugins, loop, &sink, &popts);
    if (rc < 0)
        return rc;
    /* A plugin that fails disables its own devices only; the daemon goes on. */
    plugins_start(A.plugins, cfg->plugins, cfg->n_plugins);
    ota_start();
    return 0;
}

void api_apply_config(const struct config *cfg)
{
    struct ota_opts oo;

    A.cfg = cfg;
    timesync_apply(cfg->cloud.time_sync_s, cfg->cloud.max_clock_skew_ms);
    ota_opts_from(cfg, &oo);
    ota_set_opts(&oo);
    struct rconfig_opts ro;
    rconfig_opts_from(cfg, &ro);
    rconfig_set_opts(&ro);
    config_versions_all(cfg);
    if (A.ipc)
        ipc_server_set_access(A.ipc, cfg);
}

void api_close(void)
{
    if (!A.running)
        return;
    A.running = false;
    timesync_stop();
    if (A.plugins) {
        plugins_stop(A.plugins);
        plugins_close(A.plugins);
        A.plugins = NULL;
    }
    ota_close();
    rconfig_close();
    shadow_close();
    while (A.head) {
        if (A.head->kind == WAIT_UPLINK_REPLY)
            ipc_reply_error(A.head->reply, IPC_ERR_UNAVAILABLE, "aligwd is shutting down");
        wait_free(A.head);
    }
    strmap_free(&A.waits);
    uv_close((uv_handle_t *)&A.sweep, NULL);
    if (A.ipc) {
        ipc_server_close(A.ipc, NULL, NULL);
        A.ipc = NULL;
    }
}
