/*
 * plugins: the plugin loader and host (see plugins.h). One struct plugin per configured entry.
 * Its struct aligw_host is the first member, so a host call finds its plugin without a global.
 * Host calls run on plugin threads: they validate, build the Alink message, and append it to the
 * one queue under ps->lock; the loop drains the queue in on_async(). State the host calls read
 * (accepting flag, pending requests, subscriptions) is guarded by the same lock.
 */
#include "plugins.h"

#include <aligw/plugin.h>

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "alink.h"
#include "errors.h"
#include "log.h"

#define MAX_PAYLOAD (1024 * 1024) /* LK4's client-side cap */
#define MAX_SUBS 64               /* raw subscriptions per plugin */

enum qtype { Q_UPLINK, Q_STATE, Q_SUBSCRIBE, Q_FW_RESULT, Q_FW_VERSION };

struct qitem {
    struct qitem *next;
    enum qtype type;
    const struct aligw_device *dev;
    int qos, ok;
    char *topic;   /* uplink topic, subscribe filter, firmware version */
    char *payload; /* uplink payload, state reason, firmware result desc or module */
    size_t len;
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

struct plugin {
    struct aligw_host host; /* first: host calls cast back to struct plugin */
    struct plugins *ps;
    struct aligw_plugin desc; /* copy, zero beyond the plugin's .size */
    void *dl;
    void *instance;
    char *label; /* name as configured, for logs */
    char *path;
    struct aligw_device *devs;
    size_t n_devs;
    bool running; /* started and not stopped; set on the loop thread */
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
    struct plugin **v;
    size_t n;
    bool stopped, closing;

    pthread_mutex_t lock;
    struct qitem *head, **tail;
    size_t q_count, q_bytes;
    struct plugins_stats stats;
    _Atomic uint32_t next_id;
};

/* ---- queue ---- */

static void qitem_free(struct qitem *it)
{
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
            rc = ps->sink.uplink(ps->sink.ctx, pk, dn, it->topic, it->payload, it->len, it->qos);
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
        }
        pthread_mutex_lock(&ps->lock);
        if (rc < 0)
            ps->stats.sink_errors++;
        else
            ps->stats.delivered++;
        pthread_mutex_unlock(&ps->lock);
        qitem_free(it);
    }
}

static void on_async(uv_async_t *h)
{
    drain(h->data);
}

/* ---- host functions (any thread) ---- */

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

static int queue_msg(struct plugin *p, const struct aligw_device *dev, struct alink_msg *m, int qos)
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

static int h_post_properties(const struct aligw_host *h, const struct aligw_device *dev,
                             const char *params_json, int64_t time_ms)
{
    struct plugin *p = host_plugin(h);
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
    return rc < 0 ? rc : queue_msg(p, dev, &m, 1);
}

static int h_post_event(const struct aligw_host *h, const struct aligw_device *dev,
                        const char *event_id, const char *value_json, int64_t time_ms)
{
    struct plugin *p = host_plugin(h);
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
    return rc < 0 ? rc : queue_msg(p, dev, &m, 1);
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
    return rc < 0 ? rc : queue_msg(p, dev, &m, e.rrpc[0] ? 0 : 1);
}

static int h_publish_raw(const struct aligw_host *h, const struct aligw_device *dev,
                         const char *topic, const void *payload, size_t len, int qos)
{
    struct plugin *p = host_plugin(h);
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
    return queue_msg(p, dev, &m, qos);
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

static void h_log(const struct aligw_host *h, int level, const char *fmt, ...)
{
    struct plugin *p = host_plugin(h);
    char buf[1024];
    va_list ap;

    if (level < LOG_ERR)
        level = LOG_ERR;
    if (level > LOG_DEBUG)
        level = LOG_DEBUG;
    if (level > log_level || !fmt)
        return;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    log_write(level, "plugin %s: %s", p->label, buf);
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

/* 1-64 printable bytes. */
static bool fw_text_ok(const char *s, bool may_be_empty)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0)
        return may_be_empty;
    if (n > 64)
        return false;
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return false;
    return true;
}

static int h_firmware_result(const struct aligw_host *h, const struct aligw_device *dev,
                             int64_t job_id, int step, const char *version, const char *desc)
{
    struct plugin *p = host_plugin(h);
    struct qitem *it;

    if (!dev_ok(p, dev))
        return -ENODEV;
    if (step > 0 || step < -4 || job_id <= 0 || !fw_text_ok(version, true))
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
    if (!fw_text_ok(version, false) || !fw_text_ok(module, true))
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

/* ---- loading ---- */

static int refuse(char *err, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int refuse(char *err, size_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
    return ALIGW_EPLUGIN;
}

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
        return refuse(err, len, "plugin %s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return refuse(err, len, "plugin %s: not a regular file", path);
    if (st.st_mode & (S_IWGRP | S_IWOTH))
        return refuse(err, len,
                      "plugin %s is writable by group or others (mode %04o): refusing to load it "
                      "(chmod go-w)",
                      path, (unsigned)(st.st_mode & 07777));
    if (st.st_uid != 0 && st.st_uid != geteuid())
        return refuse(err, len,
                      "plugin %s is owned by uid %u, neither root nor us: refusing to load it",
                      path, (unsigned)st.st_uid);
    copy = strdup(path);
    if (!copy)
        return -ENOMEM;
    dir = dirname(copy);
    if (stat(dir, &st) == 0 && (st.st_mode & S_IWOTH) && !(st.st_mode & S_ISVTX))
        rc = refuse(err, len,
                    "plugin %s: its directory %s is writable by anyone: refusing to load it", path,
                    dir);
    free(copy);
    return rc;
}

/* Opens path and validates its descriptor into *desc. On failure nothing stays loaded. */
static int load(const char *path, void **dl_out, struct aligw_plugin *desc, char *err, size_t len)
{
    const struct aligw_plugin *d;
    void *dl;
    int rc;

    *dl_out = NULL;
    rc = check_file(path, err, len);
    if (rc < 0)
        return rc;
    dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!dl)
        return refuse(err, len, "plugin %s: cannot load: %s", path, dlerror());
    d = dlsym(dl, "aligw_plugin");
    if (!d) {
        rc = refuse(err, len, "plugin %s: no symbol \"aligw_plugin\" (not an aligw plugin?)", path);
        goto out;
    }
    if (d->abi_major != ALIGW_PLUGIN_ABI_MAJOR) {
        rc = refuse(err, len,
                    "plugin %s: built for plugin ABI %u.%u, this aligwd speaks %u.%u: rebuild it "
                    "against this version's aligw/plugin.h",
                    path, d->abi_major, d->abi_minor, ALIGW_PLUGIN_ABI_MAJOR,
                    ALIGW_PLUGIN_ABI_MINOR);
        goto out;
    }
    if (d->size < offsetof(struct aligw_plugin, destroy) + sizeof d->destroy) {
        rc = refuse(err, len, "plugin %s: descriptor too small (%u bytes)", path, d->size);
        goto out;
    }
    memset(desc, 0, sizeof *desc);
    memcpy(desc, d, d->size < sizeof *desc ? d->size : sizeof *desc);
    if (!desc->name || !*desc->name || !desc->create || !desc->start || !desc->stop ||
        !desc->destroy) {
        rc = refuse(err, len, "plugin %s: descriptor lacks name, create, start, stop or destroy",
                    path);
        goto out;
    }
    *dl_out = dl;
    return 0;
out:
    dlclose(dl);
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
    .firmware_result = h_firmware_result,
    .set_firmware_version = h_set_firmware_version,
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

static void plugin_free(struct plugin *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n_devs; i++) {
        free((char *)p->devs[i].product_key);
        free((char *)p->devs[i].device_name);
    }
    for (size_t i = 0; i < p->n_subs; i++)
        free(p->subs[i].filter);
    free(p->devs);
    free(p->pending);
    free(p->label);
    free(p->path);
    if (p->dl)
        dlclose(p->dl);
    free(p);
}

/* Loads, creates and starts one entry. On failure p keeps what is needed to report. */
static int start_one(struct plugins *ps, struct plugin *p, const struct plugin_conf *c, char *err,
                     size_t len)
{
    char *cfg;
    int rc;

    p->path = resolve_path(c);
    if (!p->path)
        return refuse(err, len, "plugin %s: no path", c->name ? c->name : "(unnamed)");
    rc = load(p->path, &p->dl, &p->desc, err, len);
    if (rc < 0)
        return rc;
    p->devs = calloc(c->n_devices ? c->n_devices : 1, sizeof *p->devs);
    p->pending = calloc(ps->opts.pending_max, sizeof *p->pending);
    if (!p->devs || !p->pending)
        return -ENOMEM;
    for (size_t i = 0; i < c->n_devices; i++) {
        const char *slash = strchr(c->devices[i], '/');
        if (!slash || slash == c->devices[i] || !slash[1])
            return refuse(err, len, "plugin %s: bad device \"%s\" (want pk/dn)", p->path,
                          c->devices[i]);
        p->devs[i].product_key = strndup(c->devices[i], (size_t)(slash - c->devices[i]));
        p->devs[i].device_name = strdup(slash + 1);
        p->devs[i].index = i;
        p->n_devs = i + 1;
        if (!p->devs[i].product_key || !p->devs[i].device_name)
            return -ENOMEM;
    }
    cfg = c->config ? json_dumps(c->config, JSON_COMPACT | JSON_ENCODE_ANY) : strdup("{}");
    if (!cfg)
        return -ENOMEM;
    pthread_mutex_lock(&ps->lock);
    p->accepting = true;
    pthread_mutex_unlock(&ps->lock);
    rc = p->desc.create(&p->host, cfg, p->devs, p->n_devs, &p->instance);
    free(cfg);
    if (rc < 0)
        return refuse(err, len, "plugin %s (%s): create failed: %s", p->label, p->path,
                      aligw_strerror(rc));
    rc = p->desc.start(p->instance);
    if (rc < 0)
        return refuse(err, len, "plugin %s (%s): start failed: %s", p->label, p->path,
                      aligw_strerror(rc));
    p->running = true;
    log_info("plugin %s: %s %s loaded from %s, serving %zu device(s)", p->label, p->desc.name,
             p->desc.version ? p->desc.version : "", p->path, p->n_devs);
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
            pthread_mutex_lock(&ps->lock);
            p->accepting = false;
            pthread_mutex_unlock(&ps->lock);
            if (p->desc.destroy && (p->instance || p->dl))
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
    }
    return failed;
}

static bool find(const struct plugins *ps, const char *pk, const char *dn, struct plugin **pp,
                 const struct aligw_device **dp)
{
    if (!pk || !dn)
        return false;
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
                             m.payload, m.len, e->rrpc[0] ? 0 : 1);
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
    if ((e->kind == REQ_SET && !p->desc.on_property_set) ||
        (e->kind == REQ_SERVICE && !p->desc.on_service_call)) {
        host_answer(ps, e, ALIGW_REPLY_BAD_PARAMS,
                    e->kind == REQ_SET ? "properties are read-only" : "no such service");
        return 0;
    }
    pending_add(p, e);
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
    if (!wanted || !p->running || !p->desc.on_message)
        return -ENOENT;
    p->desc.on_message(p->instance, dev, topic, payload, len);
    return 0;
}

int plugins_firmware(struct plugins *ps, const char *pk, const char *dn,
                     const struct aligw_firmware *fw)
{
    struct plugin *p;
    const struct aligw_device *dev;

    if (!ps || !find(ps, pk, dn, &p, &dev) || !p->running)
        return -ENODEV;
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
        if (p->running) {
            p->desc.stop(p->instance);
            p->running = false;
        }
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
        plugin_free(ps->v[i]);
        ps->v[i] = NULL;
    }
    ps->n = 0;
}

static void on_closed(uv_handle_t *h)
{
    struct plugins *ps = h->data;
    free(ps->v);
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
}

int plugins_check_config(const struct plugin_conf *c, char *err, size_t len)
{
    struct aligw_plugin desc;
    char *path = resolve_path(c), *cfg = NULL;
    void *dl = NULL;
    int rc;

    if (!path)
        return refuse(err, len, "plugin %s: no path", c->name ? c->name : "(unnamed)");
    rc = load(path, &dl, &desc, err, len);
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
        rc = refuse(err, len, "plugin %s (%s): %s", c->name ? c->name : desc.name, path,
                    msg[0] ? msg : aligw_strerror(rc));
out:
    free(cfg);
    free(path);
    if (dl)
        dlclose(dl);
    return rc;
}
