/*
 * plugins: the plugin loader, host and supervisor (see plugins.h). One struct plugin per
 * configured entry. Its struct aligw_host is the first member, so an in-process host call finds
 * its plugin without a global. Host calls run on plugin threads: they validate, build the Alink
 * message, and append it to the one queue under ps->lock; the loop drains the queue in drain().
 * State the host calls read (accepting flag, pending requests, subscriptions) is guarded by the
 * same lock. An out-of-process plugin has a struct child per running aligw-plugin-host: its
 * frames are handled on the loop by the same functions; the child struct outlives the plugin
 * until libuv has closed its handles. Completions of tracked posts hold a struct pref, which
 * forgets its plugin when the plugin is freed.
 */
#include "plugins.h"

#include <aligw/plugin.h>

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "alink.h"
#include "errors.h"
#include "log.h"
#include "paths.h"
#include "plugin_load.h"
#include "plugin_wire.h"
#include "strmap.h"

#define MAX_PAYLOAD (1024 * 1024)   /* LK4's client-side cap */
#define MAX_SUBS 64                 /* raw subscriptions per plugin */
#define CHILD_WRITE_MAX (16u << 20) /* bytes queued towards a host before it counts as hung */
#define STOP_WAIT_MS 2000           /* how long shutdown waits for a host to stop its plugin */

enum qtype { Q_UPLINK, Q_STATE, Q_SUBSCRIBE, Q_FW_RESULT, Q_FW_VERSION, Q_REQUEST };

struct pref; /* a plugin as seen by a pending completion */

struct qitem {
    struct qitem *next;
    enum qtype type;
    const struct aligw_device *dev;
    int qos, ok;
    char *topic;   /* uplink topic, subscribe filter, firmware version */
    char *payload; /* uplink payload, state reason, firmware result desc or module */
    size_t len;
    struct pref *ref; /* tracked uplink: whom to tell (a reference), else NULL */
    uint32_t gen;     /* the plugin's generation (host process) that posted it */
    uint64_t cookie;
    int64_t job_id; /* firmware result */
};

enum req_kind { REQ_SET, REQ_SERVICE };

struct pending {
    const struct aligw_device *dev;
    enum req_kind kind;
    char req_id[24];
    char service[ALINK_MAX_IDENT + 1];
    char rrpc[64];
};

struct sub {
    const struct aligw_device *dev;
    char *filter;
};

enum pstate { P_STARTING, P_RUNNING, P_RESTARTING, P_PARKED, P_FAILED, P_STOPPED };

static const char *const pstate_names[] = {"starting", "running", "restarting",
                                           "parked",   "failed",  "stopped"};

struct child {
    uv_process_t proc;
    uv_pipe_t pipe;
    struct plugin *p; /* NULL once detached */
    int handles;      /* open uv handles; freed at 0 */
    char *in;
    size_t in_len, in_cap;
    bool exited, reading, started, pipe_closing;
    uint64_t last_rx;
    char kill_reason[160]; /* why we killed it, if we did */
    char fail_reason[256]; /* what it said in W_FAILED */
    int fail_phase;
};

/* A device's place: the plugin serving it and its index there (ps->by_key's values). */
struct route {
    struct plugin *p;
    size_t i;
};

struct pref {
    _Atomic int refs;
    struct plugin *p; /* NULL once the plugin is freed (loop thread only) */
};

struct plugin {
    struct aligw_host host; /* first: host calls cast back to struct plugin */
    struct plugins *ps;
    struct aligw_plugin desc; /* copy, zero beyond the plugin's .size */
    void *dl;
    void *instance;
    char *label; /* name as configured, for logs */
    char *path;
    char *config; /* the plugin's config as JSON text */
    struct aligw_device *devs;
    char **keys; /* "pk/dn" per device */
    size_t n_devs;
    bool running; /* started and not stopped; set on the loop thread */
    struct pref *ref;
    uint32_t gen; /* bumped per host process */
    /* out of process */
    bool isolated;
    unsigned flags; /* WIRE_HAS_* of the running host */
    char *rname, *rversion;
    char *events; /* ABI 1.3: the event kinds it wants, plugin_events_join's form, or NULL */
    struct route *routes; /* n_devs: what ps->by_key maps this plugin's keys to */
    struct child *ch;
    uv_timer_t *timer; /* heartbeats while a host runs, the restart delay while none does */
    enum pstate state;
    int heartbeat_ms, restart_min_ms, restart_max_ms, max_start_failures;
    int start_failures, restarts;
    long backoff_ms;
    uint64_t started_at, ping_n;
    char last_error[256];
    /* under ps->lock: */
    bool accepting;
    struct pending *pending; /* ring of pending_max */
    size_t pending_head, n_pending;
    struct sub subs[MAX_SUBS];
    size_t n_subs;
};

struct plugins {
    uv_loop_t *loop;
    uv_async_t async;
    struct plugins_sink sink;
    struct plugins_opts opts;
    char **forbid;
    size_t n_forbid;
    char *firmware_dir; /* canonical, or NULL */
    char *host_path;
    struct plugin **v;
    size_t n;
    struct strmap by_key; /* "pk/dn" → struct route (the first plugin listing the device) */
    bool by_key_partial;  /* out of memory while filling it: find() also scans */
    bool stopped, closing, throttled;

    pthread_mutex_t lock;
    struct qitem *head, **tail;
    size_t q_count, q_bytes;
    struct plugins_stats stats;
    _Atomic uint32_t next_id;
};

static int child_send(struct plugin *p, struct wire_out *w);
static void resume_reading(struct plugins *ps);

/* ---- completions ---- */

static struct pref *pref_get(struct pref *r)
{
    atomic_fetch_add(&r->refs, 1);
    return r;
}

static void pref_put(struct pref *r)
{
    if (r && atomic_fetch_sub(&r->refs, 1) == 1)
        free(r);
}

/* The store's codes as the plugin ABI names them (plugin.h: host->post). */
static int abi_status(int rc)
{
    if (rc >= 0)
        return 0;
    if (rc == ALIGW_ESTOREFULL)
        return -ENOSPC;
    if (rc == ALIGW_ENODEVICE)
        return -ENODEV;
    return rc < -4000 ? -EIO : rc;
}

struct done {
    struct pref *ref;
    uint32_t gen;
    size_t dev;
    uint64_t cookie;
};

/* Tells the plugin (loop thread) that its tracked post is stored (status 0) or not. */
static void tell_done(struct pref *ref, uint32_t gen, size_t dev, uint64_t cookie, int status,
                      int64_t seq)
{
    struct plugin *p = ref->p;
    if (!p || p->gen != gen || dev >= p->n_devs)
        return; /* the plugin (or the host process that posted) is gone: it was never told */
    status = abi_status(status);
    if (!p->isolated) {
        if (p->running && p->desc.on_post_done)
            p->desc.on_post_done(p->instance, &p->devs[dev], cookie, status, seq);
        return;
    }
    if (!p->ch || p->ch->exited)
        return; /* (a host may post before its start() returned: it reads W_DONE after) */
    struct wire_out w = {0};
    wire_begin(&w, W_DONE);
    wire_u64(&w, dev);
    wire_u64(&w, cookie);
    wire_i64(&w, status);
    wire_i64(&w, seq);
    child_send(p, &w);
    wire_free(&w);
}

/* ABI 1.3: the answer to a host->request, to the plugin (or host process) that made it. */
static void tell_answer(struct pref *ref, uint32_t gen, size_t dev, uint64_t cookie,
                        const char *line, size_t n)
{
    struct plugin *p = ref->p;
    char *text;
    if (!p || p->gen != gen || dev >= p->n_devs)
        return;
    /* the response line without its newline, or an error when there was none (out of memory) */
    text = line && n ? strndup(line, line[n - 1] == '\n' ? n - 1 : n)
                     : strdup("{\"ok\":false,\"error\":{\"code\":\"internal\",\"message\":"
                              "\"out of memory\"}}");
    if (!text)
        return;
    if (!p->isolated) {
        if (p->running && p->desc.on_answer)
            p->desc.on_answer(p->instance, &p->devs[dev], cookie, text);
    } else if (p->ch && !p->ch->exited) {
        struct wire_out w = {0};
        wire_begin(&w, W_ANSWER);
        wire_u64(&w, dev);
        wire_u64(&w, cookie);
        wire_str(&w, text);
        child_send(p, &w);
        wire_free(&w);
    }
    free(text);
}

static void on_answered(void *arg, const char *line, size_t n)
{
    struct done *d = arg;
    tell_answer(d->ref, d->gen, d->dev, d->cookie, line, n);
    pref_put(d->ref);
    free(d);
}

static void on_committed(void *arg, int status, int64_t seq)
{
    struct done *d = arg;
    tell_done(d->ref, d->gen, d->dev, d->cookie, status, seq);
    pref_put(d->ref);
    free(d);
}

/* ---- queue ---- */

static void qitem_free(struct qitem *it)
{
    pref_put(it->ref);
    free(it->topic);
    free(it->payload);
    free(it);
}

/* Takes it; returns 0, -EAGAIN (full) or -ESHUTDOWN. */
static int enqueue(struct plugin *p, struct qitem *it)
{
    struct plugins *ps = p->ps;
    size_t bytes = it->len + (it->topic ? strlen(it->topic) : 0);
    int rc = 0;

    pthread_mutex_lock(&ps->lock);
    if (!p->accepting) {
        rc = -ESHUTDOWN;
    } else if (ps->q_count >= ps->opts.queue_max ||
               ps->q_bytes + bytes > ps->opts.queue_max_bytes) {
        ps->stats.rejected_full++;
        rc = -EAGAIN;
    } else {
        it->next = NULL;
        *ps->tail = it;
        ps->tail = &it->next;
        ps->q_count++;
        ps->q_bytes += bytes;
        ps->stats.queued++;
    }
    pthread_mutex_unlock(&ps->lock);
    if (rc < 0)
        qitem_free(it);
    else
        uv_async_send(&ps->async);
    return rc;
}

static void drain(struct plugins *ps)
{
    struct qitem *list, *it;

    pthread_mutex_lock(&ps->lock);
    list = ps->head;
    ps->head = NULL;
    ps->tail = &ps->head;
    ps->q_count = 0;
    ps->q_bytes = 0;
    pthread_mutex_unlock(&ps->lock);

    while ((it = list)) {
        const char *pk = it->dev->product_key, *dn = it->dev->device_name;
        int rc = 0;
        list = it->next;
        switch (it->type) {
        case Q_UPLINK:
            if (it->ref) {
                struct done *d = malloc(sizeof *d);
                if (!d) {
                    rc = -ENOMEM;
                } else {
                    *d = (struct done){.ref = pref_get(it->ref),
                                       .gen = it->gen,
                                       .dev = it->dev->index,
                                       .cookie = it->cookie};
                    rc = ps->sink.uplink(ps->sink.ctx, pk, dn, it->topic, it->payload, it->len,
                                         it->qos, on_committed, d);
                    if (rc < 0) {
                        pref_put(d->ref);
                        free(d);
                    }
                }
                if (rc < 0)
                    tell_done(it->ref, it->gen, it->dev->index, it->cookie, rc, 0);
            } else {
                rc = ps->sink.uplink(ps->sink.ctx, pk, dn, it->topic, it->payload, it->len, it->qos,
                                     NULL, NULL);
            }
            if (rc < 0)
                log_errno(LOG_WARNING, rc, "%s/%s: plugin uplink on %s not queued", pk, dn,
                          it->topic);
            break;
        case Q_STATE:
            if (ps->sink.device_state)
                ps->sink.device_state(ps->sink.ctx, pk, dn, it->ok, it->payload);
            break;
        case Q_SUBSCRIBE:
            rc =
                ps->sink.subscribe ? ps->sink.subscribe(ps->sink.ctx, pk, dn, it->topic) : -ENOTSUP;
            if (rc < 0)
                log_errno(LOG_WARNING, rc, "%s/%s: plugin subscription to %s failed", pk, dn,
                          it->topic);
            break;
        case Q_FW_RESULT:
            if (ps->sink.firmware_result)
                ps->sink.firmware_result(ps->sink.ctx, pk, dn, it->job_id, it->ok, it->topic,
                                         it->payload);
            break;
        case Q_FW_VERSION:
            if (ps->sink.firmware_version)
                ps->sink.firmware_version(ps->sink.ctx, pk, dn, it->payload, it->topic);
            break;
        case Q_REQUEST: {
            struct done *d = malloc(sizeof *d);
            if (!d || !ps->sink.request) {
                free(d);
                tell_answer(it->ref, it->gen, it->dev->index, it->cookie, NULL, 0);
                rc = -ENOMEM;
                break;
            }
            *d = (struct done){.ref = pref_get(it->ref),
                               .gen = it->gen,
                               .dev = it->dev->index,
                               .cookie = it->cookie};
            ps->sink.request(ps->sink.ctx, pk, dn, it->payload, it->len, on_answered, d);
            break;
        }
        }
        pthread_mutex_lock(&ps->lock);
        if (rc < 0)
            ps->stats.sink_errors++;
        else
            ps->stats.delivered++;
        pthread_mutex_unlock(&ps->lock);
        qitem_free(it);
    }
    if (ps->throttled)
        resume_reading(ps);
}

static void on_async(uv_async_t *h)
{
    drain(h->data);
}

/* ---- host functions (any thread in process; the loop for out-of-process frames) ---- */

static struct plugin *host_plugin(const struct aligw_host *h)
{
    return (struct plugin *)(void *)h;
}

/* dev must be one of p's device handles (compared as addresses, never dereferenced first). */
static bool dev_ok(const struct plugin *p, const struct aligw_device *dev)
{
    uintptr_t a = (uintptr_t)dev, lo = (uintptr_t)p->devs;
    if (!dev || !p->n_devs || a < lo || a >= lo + p->n_devs * sizeof *p->devs)
        return false;
    return (a - lo) % sizeof *p->devs == 0;
}

/* Tracking of one post: tracked posts carry a reference to the plugin and a cookie. */
struct track {
    bool on;
    uint64_t cookie;
};

static int queue_msg(struct plugin *p, const struct aligw_device *dev, struct alink_msg *m, int qos,
                     const struct track *t)
{
    struct qitem *it = calloc(1, sizeof *it);
    if (!it) {
        alink_msg_free(m);
        return -ENOMEM;
    }
    if (m->len > MAX_PAYLOAD) {
        free(it);
        alink_msg_free(m);
        return -E2BIG;
    }
    it->type = Q_UPLINK;
    it->dev = dev;
    it->qos = qos;
    it->topic = m->topic;
    it->payload = m->payload;
    it->len = m->len;
    if (t && t->on) {
        it->ref = pref_get(p->ref);
        it->gen = p->gen;
        it->cookie = t->cookie;
    }
    return enqueue(p, it);
}

static uint32_t next_id(struct plugins *ps)
{
    return atomic_fetch_add(&ps->next_id, 1);
}

static json_t *load_json(const char *text)
{
    return text ? json_loads(text, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, NULL) : NULL;
}

static int post_props(struct plugin *p, const struct aligw_device *dev, const char *params_json,
                      int64_t time_ms, const struct track *t)
{
    struct alink_msg m;
    json_t *params;
    int rc;

    if (!dev_ok(p, dev))
        return -ENODEV;
    if (!params_json || strlen(params_json) > MAX_PAYLOAD)
        return params_json ? -E2BIG : -EINVAL;
    params = load_json(params_json);
    if (!params)
        return -EINVAL;
    rc = alink_property_post(dev->product_key, dev->device_name, next_id(p->ps), params,
                             time_ms < 0 ? 0 : time_ms, p->ps->opts.ack, &m);
    json_decref(params);
    return rc < 0 ? rc : queue_msg(p, dev, &m, 1, t);
}

static int post_event(struct plugin *p, const struct aligw_device *dev, const char *event_id,
                      const char *value_json, int64_t time_ms, const struct track *t)
{
    struct alink_msg m;
    json_t *value = NULL;
    int rc;

    if (!dev_ok(p, dev))
        return -ENODEV;
    if (value_json && strlen(value_json) > MAX_PAYLOAD)
        return -E2BIG;
    if (value_json && !(value = load_json(value_json)))
        return -EINVAL;
    rc = alink_event_post(dev->product_key, dev->device_name, next_id(p->ps), event_id, value,
                          time_ms < 0 ? 0 : time_ms, p->ps->opts.ack, &m);
    json_decref(value);
    return rc < 0 ? rc : queue_msg(p, dev, &m, 1, t);
}

static int h_post_properties(const struct aligw_host *h, const struct aligw_device *dev,
                             const char *params_json, int64_t time_ms)
{
    return post_props(host_plugin(h), dev, params_json, time_ms, NULL);
}

static int h_post_event(const struct aligw_host *h, const struct aligw_device *dev,
                        const char *event_id, const char *value_json, int64_t time_ms)
{
    return post_event(host_plugin(h), dev, event_id, value_json, time_ms, NULL);
}

/* Under ps->lock: finds and removes the pending request (dev, req_id) into *out. */
static bool pending_take(struct plugin *p, const struct aligw_device *dev, const char *req_id,
                         struct pending *out)
{
    size_t cap = p->ps->opts.pending_max;
    for (size_t i = 0; i < p->n_pending; i++) {
        struct pending *e = &p->pending[(p->pending_head + i) % cap];
        if (e->dev != dev || strcmp(e->req_id, req_id) != 0)
            continue;
        *out = *e;
        /* close the gap: move later entries one slot back */
        for (size_t j = i; j + 1 < p->n_pending; j++)
            p->pending[(p->pending_head + j) % cap] = p->pending[(p->pending_head + j + 1) % cap];
        p->n_pending--;
        return true;
    }
    return false;
}

static void pending_add(struct plugin *p, const struct pending *e)
{
    size_t cap = p->ps->opts.pending_max;
    pthread_mutex_lock(&p->ps->lock);
    if (p->n_pending == cap) {
        struct pending *old = &p->pending[p->pending_head];
        log_dev(LOG_WARNING, old->dev->product_key, old->dev->device_name,
                "plugin %s: request %s never answered, forgotten", p->label, old->req_id);
        p->pending_head = (p->pending_head + 1) % cap;
        p->n_pending--;
    }
    p->pending[(p->pending_head + p->n_pending) % cap] = *e;
    p->n_pending++;
    pthread_mutex_unlock(&p->ps->lock);
}

static int build_reply(const struct pending *e, int code, const json_t *data, const char *message,
                       struct alink_msg *m)
{
    const char *pk = e->dev->product_key, *dn = e->dev->device_name;
    if (e->kind == REQ_SET)
        return alink_property_set_reply(pk, dn, e->req_id, code, data, message, m);
    return alink_service_reply(pk, dn, e->service, e->rrpc, e->req_id, code, data, message, m);
}

static int h_reply(const struct aligw_host *h, const struct aligw_device *dev,
                   const char *request_id, int code, const char *data_json)
{
    struct plugin *p = host_plugin(h);
    struct pending e;
    struct alink_msg m;
    json_t *data = NULL;
    bool found;
    int rc;

    if (!dev_ok(p, dev))
        return -ENODEV;
    if (!request_id)
        return -EINVAL;
    if (data_json) {
        data = load_json(data_json);
        if (!json_is_object(data) && !json_is_array(data)) {
            json_decref(data);
            return -EINVAL;
        }
    }
    pthread_mutex_lock(&p->ps->lock);
    found = pending_take(p, dev, request_id, &e);
    pthread_mutex_unlock(&p->ps->lock);
    if (!found) {
        json_decref(data);
        return -ENOENT;
    }
    rc = build_reply(&e, code, data, NULL, &m);
    json_decref(data);
    return rc < 0 ? rc : queue_msg(p, dev, &m, e.rrpc[0] ? 0 : 1, NULL);
}

static int publish_raw(struct plugin *p, const struct aligw_device *dev, const char *topic,
                       const void *payload, size_t len, int qos, const struct track *t)
{
    struct alink_msg m = {0};

    if (!dev_ok(p, dev))
        return -ENODEV;
    if (!topic || !alink_topic_owned(dev->product_key, dev->device_name, topic, ALINK_PUBLISH) ||
        (qos != 0 && qos != 1) || (len && !payload) || strlen(topic) > 512)
        return -EINVAL;
    if (len > MAX_PAYLOAD)
        return -E2BIG;
    m.topic = strdup(topic);
    m.payload = malloc(len + 1);
    if (!m.topic || !m.payload) {
        alink_msg_free(&m);
        return -ENOMEM;
    }
    if (len)
        memcpy(m.payload, payload, len);
    m.payload[len] = '\0';
    m.len = len;
    return queue_msg(p, dev, &m, qos, t);
}

static int h_publish_raw(const struct aligw_host *h, const struct aligw_device *dev,
                         const char *topic, const void *payload, size_t len, int qos)
{
    return publish_raw(host_plugin(h), dev, topic, payload, len, qos, NULL);
}

static int h_set_device_state(const struct aligw_host *h, const struct aligw_device *dev, int ok,
                              const char *reason)
{
    struct plugin *p = host_plugin(h);
    struct qitem *it;

    if (!dev_ok(p, dev))
        return -ENODEV;
    it = calloc(1, sizeof *it);
    if (!it)
        return -ENOMEM;
    it->type = Q_STATE;
    it->dev = dev;
    it->ok = ok ? 1 : 0;
    if (asprintf(&it->payload, "%.200s", reason ? reason : (ok ? "ok" : "error")) < 0) {
        free(it);
        return -ENOMEM;
    }
    return enqueue(p, it);
}

static void plugin_log(struct plugin *p, int level, const char *text)
{
    if (level < LOG_ERR)
        level = LOG_ERR;
    if (level > LOG_DEBUG)
        level = LOG_DEBUG;
    if (level <= log_level)
        log_write_plugin(level, p->label, "%s", text); /* PLUGIN= in the journal */
}

static void h_log(const struct aligw_host *h, int level, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;

    if (level > log_level || !fmt)
        return;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    plugin_log(host_plugin(h), level, buf);
}

static int h_subscribe(const struct aligw_host *h, const struct aligw_device *dev,
                       const char *filter)
{
    struct plugin *p = host_plugin(h);
    struct qitem *it;
    int rc = 0;

    if (!dev_ok(p, dev))
        return -ENODEV;
    if (!filter || strlen(filter) > 512 ||
        !alink_topic_owned(dev->product_key, dev->device_name, filter, ALINK_SUBSCRIBE))
        return -EINVAL;
    if (!p->ps->sink.subscribe)
        return -ENOTSUP;
    it = calloc(1, sizeof *it);
    if (!it || !(it->topic = strdup(filter))) {
        free(it);
        return -ENOMEM;
    }
    it->type = Q_SUBSCRIBE;
    it->dev = dev;
    pthread_mutex_lock(&p->ps->lock);
    if (p->n_subs == MAX_SUBS) {
        rc = -ENOSPC;
    } else if (!(p->subs[p->n_subs].filter = strdup(filter))) {
        rc = -ENOMEM;
    } else {
        p->subs[p->n_subs++].dev = dev;
    }
    pthread_mutex_unlock(&p->ps->lock);
    if (rc < 0) {
        qitem_free(it);
        return rc;
    }
    return enqueue(p, it);
}

static int h_firmware_result(const struct aligw_host *h, const struct aligw_device *dev,
                             int64_t job_id, int step, const char *version, const char *desc)
{
    struct plugin *p = host_plugin(h);
    struct qitem *it;

    if (!dev_ok(p, dev))
        return -ENODEV;
    if (!plugin_fw_result_ok(job_id, step, version))
        return -EINVAL;
    it = calloc(1, sizeof *it);
    if (!it)
        return -ENOMEM;
    it->type = Q_FW_RESULT;
    it->dev = dev;
    it->job_id = job_id;
    it->ok = step;
    it->topic = strdup(version ? version : "");
    if (asprintf(&it->payload, "%.128s", desc ? desc : "") < 0)
        it->payload = NULL;
    if (!it->topic || !it->payload) {
        qitem_free(it);
        return -ENOMEM;
    }
    return enqueue(p, it);
}

static int h_set_firmware_version(const struct aligw_host *h, const struct aligw_device *dev,
                                  const char *module, const char *version)
{
    struct plugin *p = host_plugin(h);
    struct qitem *it;

    if (!dev_ok(p, dev))
        return -ENODEV;
    if (!plugin_fw_version_ok(module, version))
        return -EINVAL;
    it = calloc(1, sizeof *it);
    if (!it)
        return -ENOMEM;
    it->type = Q_FW_VERSION;
    it->dev = dev;
    it->topic = strdup(version);
    it->payload = strdup(module ? module : "");
    if (!it->topic || !it->payload) {
        qitem_free(it);
        return -ENOMEM;
    }
    return enqueue(p, it);
}

/* ABI 1.3: a local API request for dev; text is checked already (plugin_request_prepare) and
 * taken. Its answer goes back to the plugin generation that asked. */
static int queue_request(struct plugin *p, const struct aligw_device *dev, char *text,
                         uint64_t cookie)
{
    struct qitem *it = calloc(1, sizeof *it);
    if (!it) {
        free(text);
        return -ENOMEM;
    }
    it->type = Q_REQUEST;
    it->dev = dev;
    it->payload = text;
    it->len = strlen(text);
    it->cookie = cookie;
    it->ref = pref_get(p->ref);
    it->gen = p->gen;
    return enqueue(p, it);
}

static int h_request(const struct aligw_host *h, const struct aligw_device *dev,
                     const char *request_json, uint64_t cookie)
{
    struct plugin *p = host_plugin(h);
    char *text;
    int rc;

    if (!dev_ok(p, dev))
        return -ENODEV;
    if (!p->desc.on_answer)
        return -ENOTSUP;
    rc = plugin_request_prepare(request_json, p->keys[dev->index], &text);
    return rc < 0 ? rc : queue_request(p, dev, text, cookie);
}

static int h_post(const struct aligw_host *h, const struct aligw_device *dev,
                  const struct aligw_post *post)
{
    struct plugin *p = host_plugin(h);
    struct track t = {.on = true};

    if (!dev_ok(p, dev))
        return -ENODEV;
    if (!p->desc.on_post_done)
        return -ENOTSUP;
    if (!post || post->size < offsetof(struct aligw_post, cookie) + sizeof post->cookie)
        return -EINVAL;
    t.cookie = post->cookie;
    switch (post->kind) {
    case ALIGW_POST_PROPERTIES:
        return post_props(p, dev, post->params_json, post->time_ms, &t);
    case ALIGW_POST_EVENT:
        return post_event(p, dev, post->event_id, post->params_json, post->time_ms, &t);
    case ALIGW_POST_RAW:
        return publish_raw(p, dev, post->topic, post->payload, post->len, post->qos, &t);
    }
    return -EINVAL;
}

static int h_device_info(const struct aligw_host *h, const struct aligw_device *dev,
                         struct aligw_device_info *info)
{
    struct plugin *p = host_plugin(h);
    if (!dev_ok(p, dev))
        return -ENODEV;
    if (!info || info->size < offsetof(struct aligw_device_info, key) + sizeof info->key)
        return -EINVAL;
    info->product_key = dev->product_key;
    info->device_name = dev->device_name;
    info->index = dev->index;
    info->key = p->keys[dev->index];
    return 0;
}

/* ---- loading ---- */

/* The .so to load: the config resolved it (config.c: plugin_file); a bare path as given. */
static char *resolve_path(const struct plugin_conf *c)
{
    if (c->path)
        return strdup(c->path);
    return c->name && strchr(c->name, '/') ? strdup(c->name) : NULL;
}

/* Checks the file and its directory: no one but root or us may be able to change them. */
static int check_file(const char *path, char *err, size_t len)
{
    struct stat st;
    char *copy, *dir;
    int rc = 0;

    if (stat(path, &st) < 0)
        return plugin_refuse(err, len, "plugin %s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return plugin_refuse(err, len, "plugin %s: not a regular file", path);
    if (st.st_mode & (S_IWGRP | S_IWOTH))
        return plugin_refuse(
            err, len,
            "plugin %s is writable by group or others (mode %04o): refusing to load it "
            "(chmod go-w)",
            path, (unsigned)(st.st_mode & 07777));
    if (st.st_uid != 0 && st.st_uid != geteuid())
        return plugin_refuse(
            err, len, "plugin %s is owned by uid %u, neither root nor us: refusing to load it",
            path, (unsigned)st.st_uid);
    copy = strdup(path);
    if (!copy)
        return -ENOMEM;
    dir = dirname(copy);
    if (stat(dir, &st) == 0 && (st.st_mode & S_IWOTH) && !(st.st_mode & S_ISVTX))
        rc = plugin_refuse(err, len,
                           "plugin %s: its directory %s is writable by anyone: refusing to load it",
                           path, dir);
    free(copy);
    return rc;
}

static const struct aligw_host host_table = {
    .abi_major = ALIGW_PLUGIN_ABI_MAJOR,
    .abi_minor = ALIGW_PLUGIN_ABI_MINOR,
    .size = sizeof(struct aligw_host),
    .post_properties = h_post_properties,
    .post_event = h_post_event,
    .reply = h_reply,
    .publish_raw = h_publish_raw,
    .set_device_state = h_set_device_state,
    .log = h_log,
    .subscribe = h_subscribe,
    .post = h_post,
    .device_info = h_device_info,
    .firmware_result = h_firmware_result,
    .set_firmware_version = h_set_firmware_version,
    .request = h_request,
};

/* ---- lifecycle ---- */

int plugins_init(struct plugins **out, uv_loop_t *loop, const struct plugins_sink *sink,
                 const struct plugins_opts *opts)
{
    struct plugins *ps;
    int rc;

    *out = NULL;
    if (!sink || !sink->uplink)
        return -EINVAL;
    ps = calloc(1, sizeof *ps);
    if (!ps)
        return -ENOMEM;
    ps->loop = loop;
    strmap_init(&ps->by_key);
    ps->sink = *sink;
    ps->opts.queue_max = 100000;
    ps->opts.queue_max_bytes = 64u << 20;
    ps->opts.pending_max = 1024;
    ps->opts.ack = true;
    if (opts) {
        if (opts->queue_max)
            ps->opts.queue_max = opts->queue_max;
        if (opts->queue_max_bytes)
            ps->opts.queue_max_bytes = opts->queue_max_bytes;
        if (opts->pending_max)
            ps->opts.pending_max = opts->pending_max;
        ps->opts.ack = opts->ack;
    }
    ps->host_path = opts && opts->host_path
                        ? strdup(opts->host_path)
                        : paths_helper("ALIGW_PLUGIN_HOST", "aligw-plugin-host");
    ps->forbid = calloc((opts ? opts->n_forbid : 0) + 2, sizeof *ps->forbid);
    if (!ps->host_path || !ps->forbid) {
        free(ps->host_path);
        free(ps->forbid);
        free(ps);
        return -ENOMEM;
    }
    for (size_t i = 0; opts && i < opts->n_forbid; i++) {
        char real[PATH_MAX];
        /* canonical, as the host compares them with what it lists */
        const char *f = realpath(opts->forbid[i], real) ? real : opts->forbid[i];
        if (f[0] == '/' && strcmp(f, "/") != 0 && (ps->forbid[ps->n_forbid] = strdup(f)))
            ps->n_forbid++;
    }
    if (asprintf(&ps->forbid[ps->n_forbid], "/proc/%d", (int)getpid()) >= 0)
        ps->n_forbid++;
    if (opts && opts->firmware_dir) {
        char real[PATH_MAX];
        ps->firmware_dir = strdup(realpath(opts->firmware_dir, real) ? real : opts->firmware_dir);
    }
    ps->tail = &ps->head;
    atomic_init(&ps->next_id, (uint32_t)time(NULL) * 1000u);
    pthread_mutex_init(&ps->lock, NULL);
    rc = uv_async_init(loop, &ps->async, on_async);
    if (rc < 0) {
        pthread_mutex_destroy(&ps->lock);
        free(ps);
        return rc;
    }
    ps->async.data = ps;
    *out = ps;
    return 0;
}

static void fail_devices(struct plugins *ps, const struct plugin_conf *c, const char *reason)
{
    if (!ps->sink.device_state)
        return;
    for (size_t i = 0; i < c->n_devices; i++) {
        char buf[256];
        const char *slash = strchr(c->devices[i], '/');
        if (!slash)
            continue;
        snprintf(buf, sizeof buf, "%.*s", (int)(slash - c->devices[i]), c->devices[i]);
        ps->sink.device_state(ps->sink.ctx, buf, slash + 1, 0, reason);
    }
}

/* Every device of p: field state ok, or down with reason. */
static void devices_state(struct plugin *p, int ok, const char *reason)
{
    if (!p->ps->sink.device_state)
        return;
    for (size_t i = 0; i < p->n_devs; i++)
        p->ps->sink.device_state(p->ps->sink.ctx, p->devs[i].product_key, p->devs[i].device_name,
                                 ok, reason);
}

static void plugin_free(struct plugin *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n_devs; i++) {
        free((char *)p->devs[i].product_key);
        free((char *)p->devs[i].device_name);
        free(p->keys[i]);
    }
    for (size_t i = 0; i < p->n_subs; i++)
        free(p->subs[i].filter);
    if (p->ref) {
        p->ref->p = NULL;
        pref_put(p->ref);
    }
    free(p->devs);
    free(p->keys);
    free(p->pending);
    free(p->label);
    free(p->path);
    free(p->config);
    free(p->rname);
    free(p->rversion);
    free(p->events);
    free(p->routes);
    if (p->dl)
        dlclose(p->dl);
    free(p);
}

/* ---- out of process: one aligw-plugin-host per plugin ---- */

static void child_handle_closed(uv_handle_t *h)
{
    struct child *ch = h->data;
    if (--ch->handles == 0) {
        free(ch->in);
        free(ch);
    }
}

/* Detaches ch from its plugin and closes its handles (the process may still run: kill first). */
static void child_release(struct child *ch)
{
    if (ch->p && ch->p->ch == ch)
        ch->p->ch = NULL;
    ch->p = NULL;
    if (!uv_is_closing((uv_handle_t *)&ch->pipe))
        uv_close((uv_handle_t *)&ch->pipe, child_handle_closed);
    if (!uv_is_closing((uv_handle_t *)&ch->proc))
        uv_close((uv_handle_t *)&ch->proc, child_handle_closed);
}

static void child_kill(struct child *ch, const char *why)
{
    if (ch->exited)
        return;
    if (!ch->kill_reason[0])
        snprintf(ch->kill_reason, sizeof ch->kill_reason, "%s", why);
    uv_process_kill(&ch->proc, SIGKILL);
}

struct wreq {
    uv_write_t req;
    char data[];
};

static void on_written(uv_write_t *req, int status)
{
    free(req);
}

/* Sends a finished frame (w is wire_begin'd and filled) to p's host; a host that does not read
 * what we send is hung. */
/* Queues frame w towards p's host: 0, or a negative errno when it cannot go (no host running,
 * a frame that does not encode, no memory, a host not reading: then killed). */
static int child_send(struct plugin *p, struct wire_out *w)
{
    struct child *ch = p->ch;
    int rc;
    if (!ch || ch->exited || ch->pipe_closing)
        return -ENOTCONN;
    if ((rc = wire_end(w)) < 0)
        return rc;
    if (uv_stream_get_write_queue_size((uv_stream_t *)&ch->pipe) > CHILD_WRITE_MAX) {
        child_kill(ch, "not reading its socket (16 MiB queued towards it)");
        return -EPIPE;
    }
    struct wreq *r = malloc(sizeof *r + w->len);
    if (!r)
        return -ENOMEM;
    memcpy(r->data, w->p, w->len);
    uv_buf_t b = uv_buf_init(r->data, (unsigned)w->len);
    if ((rc = uv_write(&r->req, (uv_stream_t *)&ch->pipe, &b, 1, on_written)) < 0)
        free(r);
    return rc < 0 ? rc : 0;
}

static void on_timer(uv_timer_t *t);

static long backoff_next(struct plugin *p)
{
    long b = p->backoff_ms ? p->backoff_ms * 2 : p->restart_min_ms;
    if (b > p->restart_max_ms)
        b = p->restart_max_ms;
    p->backoff_ms = b;
    return b;
}

/* Answers every request the dead host was given with 500, and forgets its subscriptions'
 * bookkeeping (the sessions keep them; a new host subscribes again). */
static void forget_requests(struct plugin *p)
{
    struct pending *v;
    size_t n, cap = p->ps->opts.pending_max;

    pthread_mutex_lock(&p->ps->lock);
    n = p->n_pending;
    v = calloc(n ? n : 1, sizeof *v);
    for (size_t i = 0; v && i < n; i++)
        v[i] = p->pending[(p->pending_head + i) % cap];
    p->n_pending = 0;
    for (size_t i = 0; i < p->n_subs; i++)
        free(p->subs[i].filter);
    p->n_subs = 0;
    pthread_mutex_unlock(&p->ps->lock);
    for (size_t i = 0; v && i < n; i++) {
        struct alink_msg m;
        if (build_reply(&v[i], ALIGW_REPLY_DEVICE_ERROR, NULL, "device's plugin stopped", &m) < 0)
            continue;
        p->ps->sink.uplink(p->ps->sink.ctx, v[i].dev->product_key, v[i].dev->device_name, m.topic,
                           m.payload, m.len, v[i].rrpc[0] ? 0 : 1, NULL, NULL);
        alink_msg_free(&m);
    }
    free(v);
}

static bool child_consume(struct child *ch);

/* The host has exited: what it wrote before is all in the socket buffer; handle it now (its
 * last posts, its W_FAILED reason) rather than lose it when the pipe closes. */
static void child_drain_exited(struct child *ch)
{
    int fd;
    if (!ch->p || ch->pipe_closing || uv_fileno((uv_handle_t *)&ch->pipe, &fd) != 0)
        return;
    for (;;) {
        if (ch->in_cap - ch->in_len < 65536) {
            char *n = realloc(ch->in, ch->in_len + 65536);
            if (!n)
                return;
            ch->in = n;
            ch->in_cap = ch->in_len + 65536;
        }
        ssize_t n = read(fd, ch->in + ch->in_len, ch->in_cap - ch->in_len);
        if (n <= 0 && !(n < 0 && errno == EINTR))
            return;
        if (n > 0) {
            ch->in_len += (size_t)n;
            if (!child_consume(ch))
                return;
        }
    }
}

static void on_child_exit(uv_process_t *proc, int64_t status, int sig)
{
    struct child *ch = proc->data;
    struct plugin *p = ch->p;
    char why[200], down[400];
    long delay;

    ch->exited = true;
    child_drain_exited(ch);
    if (!p) {
        child_release(ch);
        return;
    }
    if (ch->kill_reason[0])
        snprintf(why, sizeof why, "%.150s", ch->kill_reason);
    else if (ch->fail_reason[0])
        snprintf(why, sizeof why, "%.190s", ch->fail_reason);
    else if (sig)
        snprintf(why, sizeof why, "crashed: signal %d (%s)", sig, strsignal(sig));
    else
        snprintf(why, sizeof why, "exited with status %d", (int)status);
    bool in_start = !ch->started;
    bool load_failed = ch->fail_phase == 1; /* W_FAILED in phase 0: the .so cannot be loaded */
    child_release(ch);
    p->running = false;
    p->gen++;
    forget_requests(p);
    if (p->ps->stopped) {
        p->state = P_STOPPED;
        return;
    }
    snprintf(p->last_error, sizeof p->last_error, "%s%s", why,
             in_start ? " (before start() returned)" : "");
    if (in_start) {
        p->start_failures++;
    } else {
        p->start_failures = 0;
        if (uv_now(p->ps->loop) - p->started_at > (uint64_t)p->restart_max_ms)
            p->backoff_ms = 0; /* it ran long enough: start again from the shortest delay */
    }
    if (load_failed || p->start_failures >= p->max_start_failures) {
        p->state = P_PARKED;
        log_error("plugin %s (%s): %s; parked after %d failed start(s) in a row: not restarted "
                  "until aligwd restarts; its %zu device(s) are down",
                  p->label, p->path, p->last_error, p->start_failures ? p->start_failures : 1,
                  p->n_devs);
        snprintf(down, sizeof down, "plugin-down: plugin %s parked after %d failed start(s): %s",
                 p->label, p->start_failures ? p->start_failures : 1, p->last_error);
        devices_state(p, 0, down);
        return;
    }
    delay = backoff_next(p);
    p->state = P_RESTARTING;
    log_error("plugin %s (%s): host process %s; restarting it in %ld ms", p->label, p->path,
              p->last_error, delay);
    snprintf(down, sizeof down, "plugin-down: plugin %s %s; restarting in %ld ms", p->label,
             p->last_error, delay);
    devices_state(p, 0, down);
    uv_timer_start(p->timer, on_timer, (uint64_t)delay, 0);
}

static void child_handle_frame(struct plugin *p, struct child *ch, struct wire_in *r);

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    struct child *ch = h->data;
    size_t want = 65536;
    if (ch->in_cap - ch->in_len < want) {
        char *n = realloc(ch->in, ch->in_len + want);
        if (!n) {
            *buf = uv_buf_init(NULL, 0);
            return;
        }
        ch->in = n;
        ch->in_cap = ch->in_len + want;
    }
    *buf = uv_buf_init(ch->in + ch->in_len, (unsigned)(ch->in_cap - ch->in_len));
}

static bool over_high_water(struct plugins *ps)
{
    bool over;
    pthread_mutex_lock(&ps->lock);
    over =
        ps->q_count > ps->opts.queue_max / 4 * 3 || ps->q_bytes > ps->opts.queue_max_bytes / 4 * 3;
    pthread_mutex_unlock(&ps->lock);
    return over;
}

/* Handles every complete frame in ch->in; false on a protocol error. */
static bool child_consume(struct child *ch)
{
    size_t off = 0, body;
    int rc;
    while (ch->p && (rc = wire_frame(ch->in + off, ch->in_len - off, &body)) != 0) {
        struct wire_in r;
        if (rc < 0 || !wire_open(&r, ch->in + off + 4, body))
            return false;
        child_handle_frame(ch->p, ch, &r);
        if (r.bad)
            return false;
        off += 4 + body;
    }
    memmove(ch->in, ch->in + off, ch->in_len - off);
    ch->in_len -= off;
    return true;
}

static void on_child_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct child *ch = s->data;
    if (n < 0) {
        uv_read_stop(s);
        ch->reading = false;
        ch->pipe_closing = true; /* EOF: it is exiting; on_child_exit does the rest */
        return;
    }
    ch->in_len += (size_t)n;
    if (!ch->p)
        return;
    ch->last_rx = uv_now(ch->p->ps->loop);
    if (!child_consume(ch)) {
        child_kill(ch, "broke the frame protocol");
        return;
    }
    if (ch->p && over_high_water(ch->p->ps)) { /* back-pressure: stop reading until drained */
        uv_read_stop(s);
        ch->reading = false;
        ch->p->ps->throttled = true;
    }
}

static void resume_reading(struct plugins *ps)
{
    if (over_high_water(ps))
        return;
    ps->throttled = false;
    for (size_t i = 0; i < ps->n; i++) {
        struct child *ch = ps->v[i]->ch;
        if (ch && !ch->reading && !ch->pipe_closing && !ch->exited) {
            ch->last_rx = uv_now(ps->loop);
            if (uv_read_start((uv_stream_t *)&ch->pipe, on_alloc, on_child_read) == 0)
                ch->reading = true;
        }
    }
}

static void child_handle_frame(struct plugin *p, struct child *ch, struct wire_in *r)
{
    uint64_t i = 0, tracked, cookie;
    const struct aligw_device *dev = NULL;
    struct track t = {0};
    int rc = 0;

    if (r->type == W_PROPS || r->type == W_EVENT || r->type == W_RAW || r->type == W_REPLY ||
        r->type == W_STATE || r->type == W_SUB || r->type == W_CALL_RC || r->type == W_FW_RESULT ||
        r->type == W_FW_VERSION || r->type == W_REQUEST) {
        i = wire_get_u64(r);
        if (i >= p->n_devs) {
            r->bad = true;
            return;
        }
        dev = &p->devs[i];
    }
    switch (r->type) {
    case W_STARTED: {
        p->flags = (unsigned)wire_get_u64(r);
        const char *name = wire_get_str(r), *version = wire_get_str(r);
        const char *events = wire_get_str(r);
        free(p->rname);
        free(p->rversion);
        free(p->events);
        p->rname = strdup(name);
        p->rversion = strdup(version);
        p->events = p->flags & WIRE_HAS_EVENT ? strdup(events) : NULL;
        ch->started = true;
        p->running = true;
        p->state = P_RUNNING;
        p->started_at = uv_now(p->ps->loop);
        p->start_failures = 0;
        log_info("plugin %s: %s %s started in aligw-plugin-host (pid %d) from %s, serving %zu "
                 "device(s)",
                 p->label, name, version, ch->proc.pid, p->path, p->n_devs);
        if (p->restarts || p->last_error[0])
            devices_state(p, 1, NULL);
        break;
    }
    case W_FAILED: {
        int phase = (int)wire_get_u64(r);
        int err = (int)wire_get_i64(r);
        const char *msg = wire_get_str(r);
        ch->fail_phase = phase + 1;
        snprintf(ch->fail_reason, sizeof ch->fail_reason, "%s", msg[0] ? msg : aligw_strerror(err));
        log_error("plugin %s (%s): %s", p->label, p->path, ch->fail_reason);
        break;
    }
    case W_PONG:
        wire_get_u64(r);
        break;
    case W_PROPS: {
        tracked = wire_get_u64(r);
        cookie = wire_get_u64(r);
        int64_t time_ms = wire_get_i64(r);
        const char *params = wire_get_str(r);
        t = (struct track){.on = tracked != 0, .cookie = cookie};
        if (!r->bad)
            rc = post_props(p, dev, params, time_ms, &t);
        break;
    }
    case W_EVENT: {
        tracked = wire_get_u64(r);
        cookie = wire_get_u64(r);
        int64_t time_ms = wire_get_i64(r);
        const char *id = wire_get_str(r);
        uint64_t has_value = wire_get_u64(r);
        const char *value = wire_get_str(r);
        t = (struct track){.on = tracked != 0, .cookie = cookie};
        if (!r->bad)
            rc = post_event(p, dev, id, has_value ? value : NULL, time_ms, &t);
        break;
    }
    case W_RAW: {
        size_t len;
        tracked = wire_get_u64(r);
        cookie = wire_get_u64(r);
        int qos = (int)wire_get_u64(r);
        const char *topic = wire_get_str(r), *payload = wire_get_bytes(r, &len);
        t = (struct track){.on = tracked != 0, .cookie = cookie};
        if (!r->bad)
            rc = publish_raw(p, dev, topic, payload, len, qos, &t);
        break;
    }
    case W_REPLY: {
        int code = (int)wire_get_i64(r);
        const char *req = wire_get_str(r);
        uint64_t has_data = wire_get_u64(r);
        const char *data = wire_get_str(r);
        if (!r->bad)
            rc = h_reply(&p->host, dev, req, code, has_data ? data : NULL);
        if (rc == -ENOENT) {
            log_dev(LOG_WARNING, dev->product_key, dev->device_name,
                    "plugin %s: reply to unknown or already answered request %s", p->label, req);
            rc = 0;
        }
        break;
    }
    case W_STATE: {
        int ok = (int)wire_get_u64(r);
        const char *reason = wire_get_str(r);
        if (!r->bad)
            rc = h_set_device_state(&p->host, dev, ok, reason);
        break;
    }
    case W_LOG: {
        int level = (int)wire_get_i64(r);
        const char *text = wire_get_str(r);
        if (!r->bad)
            plugin_log(p, level, text);
        break;
    }
    case W_SUB: {
        const char *filter = wire_get_str(r);
        if (!r->bad)
            rc = h_subscribe(&p->host, dev, filter);
        break;
    }
    case W_FW_RESULT: {
        int64_t job_id = wire_get_i64(r), step = wire_get_i64(r);
        const char *version = wire_get_str(r), *desc = wire_get_str(r);
        if (!r->bad && (step < INT_MIN || step > INT_MAX))
            r->bad = true;
        if (!r->bad)
            rc = h_firmware_result(&p->host, dev, job_id, (int)step, version, desc);
        break;
    }
    case W_FW_VERSION: {
        const char *module = wire_get_str(r), *version = wire_get_str(r);
        if (!r->bad)
            rc = h_set_firmware_version(&p->host, dev, module, version);
        break;
    }
    case W_REQUEST: {
        uint64_t ck = wire_get_u64(r);
        const char *json = wire_get_str(r);
        char *text = NULL;
        if (r->bad)
            break;
        /* checked again here: the host process is not trusted with another device */
        rc = plugin_request_prepare(json, p->keys[dev->index], &text);
        if (rc == 0)
            rc = queue_request(p, dev, text, ck);
        else
            tell_answer(p->ref, p->gen, dev->index, ck, NULL, 0);
        break;
    }
    case W_CALL_RC: {
        int err = (int)wire_get_i64(r);
        const char *req = wire_get_str(r);
        struct pending e;
        bool found;
        pthread_mutex_lock(&p->ps->lock);
        found = pending_take(p, dev, req, &e);
        pthread_mutex_unlock(&p->ps->lock);
        if (found) {
            struct alink_msg m;
            int code = err == -ENOTSUP ? ALIGW_REPLY_BAD_PARAMS : ALIGW_REPLY_DEVICE_ERROR;
            if (build_reply(&e, code, NULL, aligw_strerror(err), &m) == 0) {
                p->ps->sink.uplink(p->ps->sink.ctx, dev->product_key, dev->device_name, m.topic,
                                   m.payload, m.len, e.rrpc[0] ? 0 : 1, NULL, NULL);
                alink_msg_free(&m);
            }
        }
        break;
    }
    default:
        r->bad = true;
        return;
    }
    if (rc < 0 && dev) {
        if (t.on)
            tell_done(p->ref, p->gen, i, t.cookie, rc, 0);
        else
            log_errno(LOG_WARNING, rc, "%s/%s: plugin %s: call refused", dev->product_key,
                      dev->device_name, p->label);
    }
}

static int child_spawn(struct plugin *p)
{
    struct plugins *ps = p->ps;
    struct child *ch = calloc(1, sizeof *ch);
    uv_process_options_t o = {0};
    uv_stdio_container_t stdio[4];
    char fdarg[16];
    char *args[4];
    int sv[2], rc;

    if (!ch)
        return -ENOMEM;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        rc = -errno;
        free(ch);
        return rc;
    }
    snprintf(fdarg, sizeof fdarg, "3");
    args[0] = ps->host_path;
    args[1] = p->path;
    args[2] = fdarg;
    args[3] = NULL;
    stdio[0].flags = UV_IGNORE;
    stdio[1].flags = UV_INHERIT_FD;
    stdio[1].data.fd = 2; /* the plugin's stdout goes to our log stream too */
    stdio[2].flags = UV_INHERIT_FD;
    stdio[2].data.fd = 2;
    stdio[3].flags = UV_INHERIT_FD;
    stdio[3].data.fd = sv[1];
    o.file = ps->host_path;
    o.args = args;
    o.stdio = stdio;
    o.stdio_count = 4;
    o.exit_cb = on_child_exit;
    /* its own session: a terminal's ^C reaches aligwd, which stops the hosts in order (they
     * still die with aligwd: PDEATHSIG, and under systemd the unit's cgroup) */
    o.flags = UV_PROCESS_DETACHED;
    ch->proc.data = ch;
    ch->pipe.data = ch;
    rc = uv_spawn(ps->loop, &ch->proc, &o);
    close(sv[1]);
    if (rc < 0) {
        close(sv[0]);
        /* a failed uv_spawn still needs uv_close on the handle */
        ch->handles = 1;
        uv_close((uv_handle_t *)&ch->proc, child_handle_closed);
        return rc;
    }
    ch->handles = 2;
    uv_pipe_init(ps->loop, &ch->pipe, 0);
    uv_pipe_open(&ch->pipe, sv[0]);
    ch->p = p;
    p->ch = ch;
    p->state = P_STARTING;
    ch->last_rx = uv_now(ps->loop);
    if (uv_read_start((uv_stream_t *)&ch->pipe, on_alloc, on_child_read) == 0)
        ch->reading = true;

    struct wire_out w = {0};
    wire_begin(&w, W_INIT);
    wire_str(&w, p->label);
    wire_str(&w, p->config);
    wire_u64(&w, ps->n_forbid);
    for (size_t i = 0; i < ps->n_forbid; i++)
        wire_str(&w, ps->forbid[i]);
    wire_u64(&w, p->n_devs);
    for (size_t i = 0; i < p->n_devs; i++) {
        wire_str(&w, p->devs[i].product_key);
        wire_str(&w, p->devs[i].device_name);
    }
    wire_u64(&w, ps->firmware_dir ? 1 : 0);
    if (ps->firmware_dir)
        wire_str(&w, ps->firmware_dir);
    child_send(p, &w);
    wire_free(&w);
    uv_timer_start(p->timer, on_timer, (uint64_t)(p->heartbeat_ms / 4),
                   (uint64_t)(p->heartbeat_ms / 4));
    return 0;
}

/* Heartbeats while a host runs; the restart when none does. */
static void on_timer(uv_timer_t *t)
{
    struct plugin *p = t->data;
    struct child *ch = p->ch;

    if (p->ps->stopped)
        return;
    if (!ch) {
        uv_timer_stop(t);
        if (p->state != P_RESTARTING)
            return;
        p->restarts++;
        int rc = child_spawn(p);
        if (rc < 0) {
            log_errno(LOG_ERR, rc, "plugin %s: cannot start %s", p->label, p->ps->host_path);
            uv_timer_start(t, on_timer, (uint64_t)backoff_next(p), 0);
        }
        return;
    }
    if (ch->exited || !ch->reading)
        return;
    if (uv_now(p->ps->loop) - ch->last_rx > (uint64_t)p->heartbeat_ms) {
        char why[160];
        snprintf(why, sizeof why, "hung: no heartbeat for %d ms", p->heartbeat_ms);
        log_error("plugin %s (pid %d): %s; killing it", p->label, ch->proc.pid, why);
        child_kill(ch, why);
        return;
    }
    struct wire_out w = {0};
    wire_begin(&w, W_PING);
    wire_u64(&w, ++p->ping_n);
    child_send(p, &w);
    wire_free(&w);
}

static void timer_closed(uv_handle_t *h)
{
    struct plugin *p = h->data;
    free(h);
    plugin_free(p);
}

/* Shutdown: asks p's host to stop its plugin and handles what it sends until it exits (or
 * STOP_WAIT_MS passes), on the loop thread; then the host is killed if still there. */
static void child_stop_sync(struct plugin *p)
{
    struct child *ch = p->ch;
    int fd = -1;
    struct wire_out w = {0};

    if (!ch)
        return;
    if (ch->reading)
        uv_read_stop((uv_stream_t *)&ch->pipe);
    ch->reading = false;
    if (!ch->exited && ch->started && !ch->pipe_closing &&
        uv_stream_get_write_queue_size((uv_stream_t *)&ch->pipe) == 0 &&
        uv_fileno((uv_handle_t *)&ch->pipe, &fd) == 0) {
        uint64_t deadline = uv_hrtime() / 1000000 + STOP_WAIT_MS;
        size_t off = 0;
        wire_begin(&w, W_STOP);
        wire_end(&w);
        while (off < w.len && uv_hrtime() / 1000000 < deadline) {
            ssize_t n = write(fd, w.p + off, w.len - off);
            if (n > 0)
                off += (size_t)n;
            else if (n < 0 && errno != EAGAIN && errno != EINTR)
                break;
            else
                poll(&(struct pollfd){.fd = fd, .events = POLLOUT}, 1, 10);
        }
        while (off == w.len && ch->p) {
            long left = (long)(deadline - uv_hrtime() / 1000000);
            struct pollfd pf = {.fd = fd, .events = POLLIN};
            if (left <= 0 || poll(&pf, 1, (int)left) <= 0)
                break;
            if (ch->in_cap - ch->in_len < 65536) {
                char *n = realloc(ch->in, ch->in_len + 65536);
                if (!n)
                    break;
                ch->in = n;
                ch->in_cap = ch->in_len + 65536;
            }
            ssize_t n = read(fd, ch->in + ch->in_len, ch->in_cap - ch->in_len);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
                break; /* it exited */
            if (n > 0) {
                ch->in_len += (size_t)n;
                if (!child_consume(ch))
                    break;
            }
        }
        wire_free(&w);
    }
    if (!ch->exited) {
        pid_t pid = ch->proc.pid;
        uv_process_kill(&ch->proc, SIGKILL);
        waitpid(pid, NULL, 0); /* the loop will not reap it: its handle closes now */
    }
    child_release(ch);
}

/* Out of process: checks the file, then starts the host; the rest happens in frames. */
static int start_isolated(struct plugins *ps, struct plugin *p, const struct plugin_conf *c,
                          char *err, size_t len)
{
    p->isolated = true;
    p->heartbeat_ms = c->heartbeat_ms ? c->heartbeat_ms : 5000;
    p->restart_min_ms = c->restart_min_ms ? c->restart_min_ms : 1000;
    p->restart_max_ms = c->restart_max_ms ? c->restart_max_ms : 60000;
    p->max_start_failures = c->max_start_failures ? c->max_start_failures : 5;
    p->timer = malloc(sizeof *p->timer);
    if (!p->timer)
        return -ENOMEM;
    uv_timer_init(ps->loop, p->timer);
    p->timer->data = p;
    pthread_mutex_lock(&ps->lock);
    p->accepting = true;
    pthread_mutex_unlock(&ps->lock);
    int rc = child_spawn(p);
    if (rc < 0)
        return plugin_refuse(err, len, "plugin %s: cannot start %s: %s", p->label, ps->host_path,
                             aligw_strerror(rc));
    return 0;
}

/* Loads, creates and starts one entry. On failure p keeps what is needed to report. */
static int start_one(struct plugins *ps, struct plugin *p, const struct plugin_conf *c, char *err,
                     size_t len)
{
    int rc;

    p->path = resolve_path(c);
    if (!p->path)
        return plugin_refuse(err, len, "plugin %s: no path", c->name ? c->name : "(unnamed)");
    rc = check_file(p->path, err, len);
    if (rc < 0)
        return rc;
    p->devs = calloc(c->n_devices ? c->n_devices : 1, sizeof *p->devs);
    p->keys = calloc(c->n_devices ? c->n_devices : 1, sizeof *p->keys);
    p->pending = calloc(ps->opts.pending_max, sizeof *p->pending);
    p->ref = calloc(1, sizeof *p->ref);
    if (!p->devs || !p->keys || !p->pending || !p->ref)
        return -ENOMEM;
    atomic_init(&p->ref->refs, 1);
    p->ref->p = p;
    for (size_t i = 0; i < c->n_devices; i++) {
        const char *slash = strchr(c->devices[i], '/');
        if (!slash || slash == c->devices[i] || !slash[1])
            return plugin_refuse(err, len, "plugin %s: bad device \"%s\" (want pk/dn)", p->path,
                                 c->devices[i]);
        p->devs[i].product_key = strndup(c->devices[i], (size_t)(slash - c->devices[i]));
        p->devs[i].device_name = strdup(slash + 1);
        p->keys[i] = strdup(c->devices[i]);
        p->devs[i].index = i;
        p->n_devs = i + 1;
        if (!p->devs[i].product_key || !p->devs[i].device_name || !p->keys[i])
            return -ENOMEM;
    }
    p->config = c->config ? json_dumps(c->config, JSON_COMPACT | JSON_ENCODE_ANY) : strdup("{}");
    if (!p->config)
        return -ENOMEM;
    if (!c->in_process)
        return start_isolated(ps, p, c, err, len);
    rc = plugin_load_so(p->path, &p->dl, &p->desc, err, len);
    if (rc < 0)
        return rc;
    if (p->desc.events && p->desc.on_event) {
        char skipped[256];
        if (!(p->events = plugin_events_join(p->desc.events, skipped, sizeof skipped)))
            return -ENOMEM;
        if (skipped[0])
            log_warn("plugin %s: unknown or malformed event kinds skipped: %s", p->label, skipped);
    }
    pthread_mutex_lock(&ps->lock);
    p->accepting = true;
    pthread_mutex_unlock(&ps->lock);
    rc = p->desc.create(&p->host, p->config, p->devs, p->n_devs, &p->instance);
    if (rc < 0)
        return plugin_refuse(err, len, "plugin %s (%s): create failed: %s", p->label, p->path,
                             aligw_strerror(rc));
    rc = p->desc.start(p->instance);
    if (rc < 0)
        return plugin_refuse(err, len, "plugin %s (%s): start failed: %s", p->label, p->path,
                             aligw_strerror(rc));
    p->running = true;
    p->state = P_RUNNING;
    log_info("plugin %s: %s %s loaded in process from %s, serving %zu device(s)", p->label,
             p->desc.name, p->desc.version ? p->desc.version : "", p->path, p->n_devs);
    return 0;
}

int plugins_start(struct plugins *ps, const struct plugin_conf *confs, size_t n)
{
    struct plugin **v;
    int failed = 0;

    v = realloc(ps->v, (ps->n + n) * sizeof *v);
    if (!v && n)
        return -ENOMEM;
    ps->v = v;
    for (size_t i = 0; i < n; i++) {
        const struct plugin_conf *c = &confs[i];
        char err[512] = "";
        struct plugin *p = calloc(1, sizeof *p);
        int rc;

        if (!p || !(p->label = strdup(c->name ? c->name : "(unnamed)"))) {
            free(p);
            fail_devices(ps, c, "out of memory loading its plugin");
            failed++;
            continue;
        }
        p->host = host_table;
        p->ps = ps;
        rc = start_one(ps, p, c, err, sizeof err);
        if (rc < 0) {
            if (!err[0])
                snprintf(err, sizeof err, "plugin %s: %s", p->label, aligw_strerror(rc));
            log_error("%s; its %zu device(s) are disabled", err, c->n_devices);
            snprintf(p->last_error, sizeof p->last_error, "%.250s", err);
            p->state = P_FAILED;
            pthread_mutex_lock(&ps->lock);
            p->accepting = false;
            pthread_mutex_unlock(&ps->lock);
            if (!p->isolated && p->desc.destroy && (p->instance || p->dl))
                p->desc.destroy(p->instance);
            p->instance = NULL;
            drain(ps); /* anything it queued before failing references its devices */
            if (p->dl)
                dlclose(p->dl);
            p->dl = NULL;
            fail_devices(ps, c, err);
            failed++;
        }
        ps->v[ps->n++] = p; /* kept, not running: routes its devices' downlinks to a 500 */
        if (!(p->routes = calloc(p->n_devs ? p->n_devs : 1, sizeof *p->routes)))
            ps->by_key_partial = true;
        for (size_t j = 0; p->routes && j < p->n_devs; j++) {
            p->routes[j] = (struct route){p, j};
            if (!p->keys[j] || (!strmap_get(&ps->by_key, p->keys[j]) &&
                                strmap_put(&ps->by_key, p->keys[j], &p->routes[j]) < 0))
                ps->by_key_partial = true;
        }
    }
    return failed;
}

static bool find(const struct plugins *ps, const char *pk, const char *dn, struct plugin **pp,
                 const struct aligw_device **dp)
{
    char key[512];
    const struct route *r;
    if (!pk || !dn)
        return false;
    if ((size_t)snprintf(key, sizeof key, "%s/%s", pk, dn) < sizeof key &&
        (r = strmap_get(&ps->by_key, key))) {
        *pp = r->p;
        *dp = &r->p->devs[r->i];
        return true;
    }
    if (!ps->by_key_partial)
        return false;
    /* the map could not hold every device (out of memory): the slow way */
    for (size_t i = 0; i < ps->n; i++) {
        struct plugin *p = ps->v[i];
        for (size_t j = 0; j < p->n_devs; j++) {
            if (strcmp(p->devs[j].product_key, pk) == 0 &&
                strcmp(p->devs[j].device_name, dn) == 0) {
                *pp = p;
                *dp = &p->devs[j];
                return true;
            }
        }
    }
    return false;
}

bool plugins_serves(const struct plugins *ps, const char *pk, const char *dn)
{
    struct plugin *p;
    const struct aligw_device *d;
    return find(ps, pk, dn, &p, &d);
}

/* Answers a request from the host itself (loop thread). */
static void host_answer(struct plugins *ps, const struct pending *e, int code, const char *msg)
{
    struct alink_msg m;
    if (build_reply(e, code, NULL, msg, &m) < 0)
        return;
    int rc = ps->sink.uplink(ps->sink.ctx, e->dev->product_key, e->dev->device_name, m.topic,
                             m.payload, m.len, e->rrpc[0] ? 0 : 1, NULL, NULL);
    if (rc < 0)
        log_errno(LOG_WARNING, rc, "%s/%s: reply not queued", e->dev->product_key,
                  e->dev->device_name);
    alink_msg_free(&m);
}

static int dispatch(struct plugins *ps, const char *pk, const char *dn, struct pending *e,
                    const char *params_json)
{
    struct plugin *p;
    const struct aligw_device *dev;
    int rc;

    if (!find(ps, pk, dn, &p, &dev))
        return -ENODEV;
    e->dev = dev;
    if (!p->running) {
        host_answer(ps, e, ALIGW_REPLY_DEVICE_ERROR, "device's plugin is not running");
        return 0;
    }
    bool has = p->isolated ? (p->flags & (e->kind == REQ_SET ? WIRE_HAS_SET : WIRE_HAS_CALL))
                           : (e->kind == REQ_SET ? p->desc.on_property_set != NULL
                                                 : p->desc.on_service_call != NULL);
    if (!has) {
        host_answer(ps, e, ALIGW_REPLY_BAD_PARAMS,
                    e->kind == REQ_SET ? "properties are read-only" : "no such service");
        return 0;
    }
    pending_add(p, e);
    if (p->isolated) {
        struct wire_out w = {0};
        wire_begin(&w, e->kind == REQ_SET ? W_SET : W_CALL);
        wire_u64(&w, dev->index);
        wire_str(&w, e->req_id);
        if (e->kind == REQ_SERVICE)
            wire_str(&w, e->service);
        wire_str(&w, params_json ? params_json : "{}");
        child_send(p, &w);
        wire_free(&w);
        return 0;
    }
    if (e->kind == REQ_SET)
        rc = p->desc.on_property_set(p->instance, dev, e->req_id, params_json ? params_json : "{}");
    else
        rc = p->desc.on_service_call(p->instance, dev, e->req_id, e->service,
                                     params_json ? params_json : "{}");
    if (rc < 0) {
        struct pending taken;
        bool found;
        pthread_mutex_lock(&ps->lock);
        found = pending_take(p, dev, e->req_id, &taken);
        pthread_mutex_unlock(&ps->lock);
        if (found)
            host_answer(ps, &taken, ALIGW_REPLY_DEVICE_ERROR, aligw_strerror(rc));
    }
    return 0;
}

int plugins_property_set(struct plugins *ps, const char *pk, const char *dn, const char *req_id,
                         const char *params_json)
{
    struct pending e = {.kind = REQ_SET};
    if (!req_id || !*req_id || strlen(req_id) >= sizeof e.req_id ||
        strspn(req_id, "0123456789") != strlen(req_id))
        return -EINVAL;
    strcpy(e.req_id, req_id);
    return dispatch(ps, pk, dn, &e, params_json);
}

int plugins_service_call(struct plugins *ps, const char *pk, const char *dn, const char *req_id,
                         const char *service_id, const char *rrpc_id, const char *params_json)
{
    struct pending e = {.kind = REQ_SERVICE};
    if (!req_id || !*req_id || strlen(req_id) >= sizeof e.req_id ||
        strspn(req_id, "0123456789") != strlen(req_id) || !alink_ident_ok(service_id) ||
        (rrpc_id && strlen(rrpc_id) >= sizeof e.rrpc))
        return -EINVAL;
    strcpy(e.req_id, req_id);
    strcpy(e.service, service_id);
    if (rrpc_id)
        strcpy(e.rrpc, rrpc_id);
    return dispatch(ps, pk, dn, &e, params_json);
}

/* MQTT filter match: '+' one level, '#' the rest. */
static bool topic_match(const char *f, const char *t)
{
    while (*f) {
        if (*f == '#')
            return true;
        if (*f == '+') {
            while (*t && *t != '/')
                t++;
            f++;
        } else {
            if (*f != *t)
                return false;
            f++;
            t++;
        }
        if (*f == '\0')
            return *t == '\0';
    }
    return *t == '\0';
}

int plugins_message(struct plugins *ps, const char *pk, const char *dn, const char *topic,
                    const void *payload, size_t len)
{
    struct plugin *p;
    const struct aligw_device *dev;
    bool wanted = false;

    if (!topic || !find(ps, pk, dn, &p, &dev))
        return -ENODEV;
    pthread_mutex_lock(&ps->lock);
    for (size_t i = 0; i < p->n_subs && !wanted; i++)
        wanted = p->subs[i].dev == dev && topic_match(p->subs[i].filter, topic);
    pthread_mutex_unlock(&ps->lock);
    if (!wanted || !p->running)
        return -ENOENT;
    if (p->isolated) {
        struct wire_out w = {0};
        if (!(p->flags & WIRE_HAS_MSG))
            return -ENOENT;
        wire_begin(&w, W_MSG);
        wire_u64(&w, dev->index);
        wire_str(&w, topic);
        wire_bytes(&w, payload, len);
        child_send(p, &w);
        wire_free(&w);
        return 0;
    }
    if (!p->desc.on_message)
        return -ENOENT;
    int rc = p->desc.on_message(p->instance, dev, topic, payload, len);
    if (rc < 0)
        log_debug("plugin %s: on_message returned %d (ignored)", p->label, rc);
    return 0;
}

bool plugins_wants_event(const struct plugins *ps, const char *pk, const char *dn, const char *kind)
{
    struct plugin *p;
    const struct aligw_device *dev;
    return ps && find(ps, pk, dn, &p, &dev) && p->running && plugin_events_has(p->events, kind);
}

int plugins_event(struct plugins *ps, const char *pk, const char *dn, const char *kind,
                  const char *event_json)
{
    struct plugin *p;
    const struct aligw_device *dev;

    if (!ps || !find(ps, pk, dn, &p, &dev))
        return -ENODEV;
    if (!p->running || !plugin_events_has(p->events, kind))
        return -ENOENT;
    if (!p->isolated) {
        p->desc.on_event(p->instance, dev, event_json);
        return 0;
    }
    struct wire_out w = {0};
    wire_begin(&w, W_NOTICE);
    wire_u64(&w, dev->index);
    wire_str(&w, event_json);
    int rc = child_send(p, &w);
    wire_free(&w);
    return rc == -ENOTCONN ? -ENOENT : rc;
}

int plugins_firmware(struct plugins *ps, const char *pk, const char *dn,
                     const struct aligw_firmware *fw)
{
    struct plugin *p;
    const struct aligw_device *dev;

    if (!ps || !find(ps, pk, dn, &p, &dev) || !p->running)
        return -ENODEV;
    if (p->isolated) {
        /* The host calls on_firmware; a refusal comes back as a firmware_result of -4. */
        struct wire_out w = {0};
        if (!(p->flags & WIRE_HAS_FW))
            return -ENOTSUP;
        wire_begin(&w, W_FW);
        wire_u64(&w, dev->index);
        wire_i64(&w, fw->job_id);
        wire_str(&w, fw->module);
        wire_str(&w, fw->version);
        wire_str(&w, fw->from_version);
        wire_i64(&w, fw->total_size);
        wire_u64(&w, fw->is_diff ? 1 : 0);
        wire_u64(&w, fw->ext_data != NULL);
        wire_str(&w, fw->ext_data);
        wire_u64(&w, fw->n_files);
        for (size_t k = 0; k < fw->n_files; k++) {
            wire_str(&w, fw->paths[k]);
            wire_str(&w, fw->names ? fw->names[k] : "");
        }
        /* Not sent: the job is decided now, not after ota.apply_timeout_s; a host being
         * restarted is a plugin not running (the job is offered again later). */
        int rc = child_send(p, &w);
        wire_free(&w);
        return rc == -ENOTCONN ? -ENODEV : rc;
    }
    if (!p->desc.on_firmware)
        return -ENOTSUP;
    return p->desc.on_firmware(p->instance, dev, fw);
}

void plugins_stop(struct plugins *ps)
{
    if (ps->stopped)
        return;
    ps->stopped = true;
    for (size_t i = 0; i < ps->n; i++) {
        struct plugin *p = ps->v[i];
        if (p->isolated) {
            child_stop_sync(p);
            p->running = false;
        } else if (p->running) {
            p->desc.stop(p->instance);
            p->running = false;
        }
        p->state = P_STOPPED;
        pthread_mutex_lock(&ps->lock);
        p->accepting = false;
        pthread_mutex_unlock(&ps->lock);
        if (p->instance) {
            p->desc.destroy(p->instance);
            p->instance = NULL;
        }
    }
    drain(ps); /* deliver what the plugins queued before they stopped */
    for (size_t i = 0; i < ps->n; i++) {
        struct plugin *p = ps->v[i];
        if (p->timer)
            uv_close((uv_handle_t *)p->timer, timer_closed); /* frees p, then the timer */
        else
            plugin_free(p);
        ps->v[i] = NULL;
    }
    ps->n = 0;
    strmap_free(&ps->by_key); /* its keys were the plugins' */
    strmap_init(&ps->by_key);
}

static void on_closed(uv_handle_t *h)
{
    struct plugins *ps = h->data;
    free(ps->v);
    strmap_free(&ps->by_key);
    for (size_t i = 0; i < ps->n_forbid; i++)
        free(ps->forbid[i]);
    free(ps->forbid);
    free(ps->firmware_dir);
    free(ps->host_path);
    pthread_mutex_destroy(&ps->lock);
    free(ps);
}

void plugins_close(struct plugins *ps)
{
    if (!ps || ps->closing)
        return;
    plugins_stop(ps);
    ps->closing = true;
    uv_close((uv_handle_t *)&ps->async, on_closed);
}

void plugins_get_stats(const struct plugins *ps, struct plugins_stats *st)
{
    pthread_mutex_lock((pthread_mutex_t *)&ps->lock);
    *st = ps->stats;
    pthread_mutex_unlock((pthread_mutex_t *)&ps->lock);
    st->restarts = 0;
    for (size_t i = 0; i < ps->n; i++)
        st->restarts += (unsigned long long)ps->v[i]->restarts; /* loop-owned */
}

json_t *plugins_status(const struct plugins *ps)
{
    json_t *a = json_array();
    for (size_t i = 0; ps && i < ps->n; i++) {
        const struct plugin *p = ps->v[i];
        json_t *o = json_pack("{s:s,s:s,s:s,s:i}", "name", p->label, "isolation",
                              p->isolated ? "process" : "none", "state", pstate_names[p->state],
                              "restarts", p->restarts);
        if (p->ch && !p->ch->exited)
            json_object_set_new(o, "pid", json_integer(p->ch->proc.pid));
        if (p->isolated)
            json_object_set_new(o, "failed_starts", json_integer(p->start_failures));
        if (p->last_error[0])
            json_object_set_new(o, "last_error", json_string(p->last_error));
        json_array_append_new(a, o);
    }
    return a;
}

int plugins_check_config(const struct plugin_conf *c, char *err, size_t len)
{
    struct aligw_plugin desc;
    char *path = resolve_path(c), *cfg = NULL;
    void *dl = NULL;
    int rc;

    if (!path)
        return plugin_refuse(err, len, "plugin %s: no path", c->name ? c->name : "(unnamed)");
    rc = check_file(path, err, len);
    if (rc == 0)
        rc = plugin_load_so(path, &dl, &desc, err, len);
    if (rc < 0)
        goto out;
    if (!desc.check_config)
        goto out;
    cfg = c->config ? json_dumps(c->config, JSON_COMPACT | JSON_ENCODE_ANY) : strdup("{}");
    if (!cfg) {
        rc = -ENOMEM;
        goto out;
    }
    char msg[400] = "";
    rc = desc.check_config(cfg, msg, sizeof msg);
    if (rc < 0)
        rc = plugin_refuse(err, len, "plugin %s (%s): %s", c->name ? c->name : desc.name, path,
                           msg[0] ? msg : aligw_strerror(rc));
out:
    free(cfg);
    free(path);
    if (dl)
        dlclose(dl);
    return rc;
}
