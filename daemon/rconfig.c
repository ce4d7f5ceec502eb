/*
 * rconfig: remote configuration files, fetched, verified and handed over (see rconfig.h).
 *
 * Per device: at most one transfer (struct rdev) and the requests waiting for it. A waiter
 * first waits for the get_reply with its id (id set), then, once the reply named a file, for
 * the transfer (id cleared); every waiter without an id is answered when the transfer ends.
 */
#include "rconfig.h"

#include "alink.h"
#include "base64.h"
#include "download.h"
#include "errors.h"
#include "log.h"
#include "rconfig_notice.h"
#include "devrec.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#define SWEEP_MS 500

struct waiter {
    char id[24]; /* the get's Alink id while its reply is awaited; "" once a file is awaited */
    uint64_t deadline;
    rconfig_done_fn done;
    void *arg;
    struct waiter *next;
};

struct rdev {
    struct devrec rec;       /* key, pk, dn; first */
    struct download *dl;     /* the transfer, or NULL */
    struct rconfig_notice n; /* what is being fetched */
    char push_id[24];        /* the push being fetched for ("" = for a get) */
    char have_id[RCONFIG_ID_MAX + 1], have_digest[65]; /* the file kept now */
    struct waiter *waiters;
};

static struct {
    uv_loop_t *loop;
    struct rconfig_opts o;
    char dir[4096], ca[4096];
    struct rconfig_hooks h;
    struct download_ctx *dl;
    struct devrec_set devs;
    uv_timer_t sweep;
    bool running;
} R;

static struct rdev *dev_get(const char *pk, const char *dn, bool create)
{
    return devrec_get(&R.devs, pk, dn, create ? sizeof(struct rdev) : 0, NULL);
}

static void dev_path(const struct rdev *d, const char *leaf, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%s/%s/%s", R.dir, d->rec.pk, d->rec.dn, leaf);
}

static int mkdirs(const struct rdev *d)
{
    char p[4400];
    const char *parts[] = {d->rec.pk, d->rec.dn};
    snprintf(p, sizeof(p), "%s", R.dir);
    if (mkdir(p, 0750) < 0 && errno != EEXIST)
        return -errno;
    for (int i = 0; i < 2; i++) {
        size_t n = strlen(p);
        snprintf(p + n, sizeof(p) - n, "/%s", parts[i]);
        if (mkdir(p, 0750) < 0 && errno != EEXIST)
            return -errno;
    }
    return 0;
}

static void push_reply(const struct rdev *d, const char *id, int code, const char *message)
{
    struct alink_msg m = {0};
    if (!id[0] || alink_config_push_reply(d->rec.pk, d->rec.dn, id, code, message, &m) < 0)
        return;
    if (R.h.uplink(R.h.ctx, d->rec.key, m.topic, m.payload, m.len) < 0)
        log_dev(LOG_WARNING, d->rec.pk, d->rec.dn, "configuration push %s: reply not stored", id);
    alink_msg_free(&m);
}

/* Answers every waiter that waits for the file (or, with all, every waiter). */
static void answer(struct rdev *d, bool all, int status, const char *error, json_t *config)
{
    struct waiter **pp = &d->waiters, *w;
    while ((w = *pp)) {
        if (!all && w->id[0]) {
            pp = &w->next;
            continue;
        }
        *pp = w->next;
        w->done(w->arg, status, error, config);
        free(w);
    }
}

/* The transfer ended badly: the push is answered 500, the file's waiters get why. */
static void fetch_failed(struct rdev *d, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fetch_failed(struct rdev *d, int status, const char *fmt, ...)
{
    char why[320];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    log_dev(LOG_WARNING, d->rec.pk, d->rec.dn, "configuration %s not taken: %s", d->n.config_id,
            why);
    push_reply(d, d->push_id, 500, why);
    d->push_id[0] = '\0';
    answer(d, false, status, why, NULL);
}

/* The "config" event for the file kept now (content read back from it: at most 64 KB). */
static json_t *config_event(const struct rdev *d, const char *path)
{
    unsigned char buf[RCONFIG_MAX_BYTES + 1];
    ssize_t n = -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        n = read(fd, buf, sizeof(buf));
        close(fd);
    }
    if (n < 0 || n > RCONFIG_MAX_BYTES)
        return NULL;
    json_t *ev = json_pack("{s:s,s:s,s:s,s:I,s:s,s:s,s:s}", "event", "config", "device", d->rec.key,
                           "config_id", d->have_id, "size", (json_int_t)n, "sign_method",
                           d->n.sign_method == RCONFIG_SIGN_MD5 ? "md5" : "sha256", "digest",
                           d->have_digest, "path", path);
    if (!ev)
        return NULL;
    json_t *text = json_stringn((const char *)buf, (size_t)n); /* NULL unless UTF-8 */
    if (text && !memchr(buf, '\0', (size_t)n)) {
        json_object_set_new(ev, "content", text);
    } else {
        json_decref(text);
        char *b64 = base64_encode(buf, (size_t)n);
        json_object_set_new(ev, "content_b64", json_string(b64 ? b64 : ""));
        free(b64);
    }
    return ev;
}

/* The file is kept: tell the owner, answer the push and the waiters. */
static void deliver(struct rdev *d, bool fresh)
{
    char path[4400];
    dev_path(d, "config", path, sizeof(path));
    json_t *ev = config_event(d, path);
    if (!ev) {
        fetch_failed(d, -EIO, "cannot read %s back", path);
        return;
    }
    if (fresh) {
        int n = R.h.event(R.h.ctx, d->rec.key, ev);
        log_dev(LOG_INFO, d->rec.pk, d->rec.dn, "configuration %s kept (%lld bytes)%s", d->have_id,
                (long long)json_integer_value(json_object_get(ev, "size")),
                n > 0 ? "" : "; no plugin or API watcher took the config event");
    }
    push_reply(d, d->push_id, 200, NULL);
    d->push_id[0] = '\0';
    answer(d, false, 0, NULL, ev);
    json_decref(ev);
}

static void on_fetched(void *arg, const struct download_result *r)
{
    struct rdev *d = arg;
    char part[4400], final[4400];

    d->dl = NULL;
    dev_path(d, "config.part", part, sizeof(part));
    dev_path(d, "config", final, sizeof(final));
    if (r->status < 0) {
        unlink(part);
        fetch_failed(d, r->status, "download failed: %s",
                     r->error[0] ? r->error : aligw_strerror(r->status));
        return;
    }
    if (r->bytes != d->n.size || strcmp(r->digest, d->n.digest) != 0) {
        unlink(part);
        fetch_failed(d, -EBADMSG, "%s",
                     r->bytes != d->n.size ? "size differs from configSize"
                                           : "digest differs from sign");
        return;
    }
    if (rename(part, final) < 0) {
        int e = -errno;
        unlink(part);
        fetch_failed(d, e, "cannot keep it: %s", aligw_strerror(e));
        return;
    }
    snprintf(d->have_id, sizeof(d->have_id), "%s", d->n.config_id);
    snprintf(d->have_digest, sizeof(d->have_digest), "%s", d->n.digest);
    deliver(d, true);
}

/* Fetches the file n names for d (for the push push_id, or "" for a get). */
static void fetch(struct rdev *d, const struct rconfig_notice *n, const char *push_id)
{
    char part[4400], final[4400];
    struct stat st;
    struct statvfs sv;
    int rc;

    if (d->dl) { /* a newer configuration replaces the one in flight */
        download_cancel(d->dl);
        d->dl = NULL;
        fetch_failed(d, -ECANCELED, "superseded by configuration %s", n->config_id);
    }
    d->n = *n;
    snprintf(d->push_id, sizeof(d->push_id), "%s", push_id);
    dev_path(d, "config", final, sizeof(final));
    if (!strcmp(d->have_id, n->config_id) && !strcmp(d->have_digest, n->digest) &&
        stat(final, &st) == 0) {
        deliver(d, false); /* the same file again: nothing to fetch, nothing new to tell */
        return;
    }
    if (strncmp(n->url, "https://", 8) != 0 && !R.o.allow_http) {
        fetch_failed(d, -EPROTONOSUPPORT, "URL is not https:// (ota.allow_http accepts it)");
        return;
    }
    if ((rc = mkdirs(d)) < 0) {
        fetch_failed(d, rc, "cannot create its directory under %s: %s", R.dir, aligw_strerror(rc));
        return;
    }
    if (statvfs(R.dir, &sv) == 0 &&
        (int64_t)sv.f_bavail * (int64_t)sv.f_frsize < n->size + R.o.min_free_bytes) {
        fetch_failed(d, -ENOSPC, "not enough disk: %lld bytes plus the reserve of %lld, %lld free",
                     (long long)n->size, (long long)R.o.min_free_bytes,
                     (long long)sv.f_bavail * (long long)sv.f_frsize);
        return;
    }
    dev_path(d, "config.part", part, sizeof(part));
    unlink(part); /* small enough to fetch whole again */
    struct download_req req = {
        .url = n->url,
        .path = part,
        .expect_size = n->size,
        .digest = n->sign_method == RCONFIG_SIGN_MD5 ? "md5" : "sha256",
        .ca_file = R.o.ca_file,
        .allow_http = R.o.allow_http,
        .done = on_fetched,
        .arg = d,
    };
    rc = download_start(R.dl, &req, &d->dl);
    if (rc < 0) {
        d->dl = NULL;
        fetch_failed(d, rc, "cannot download: %s",
                     rc == -EINVAL ? "URL not accepted" : aligw_strerror(rc));
    }
}

void rconfig_on_push(const char *pk, const char *dn, const char *payload, size_t len)
{
    struct rconfig_notice n;
    char err[200];
    struct rdev *d = dev_get(pk, dn, true);
    int rc = rconfig_notice_parse(RCONFIG_PUSH, payload, len, &n, err, sizeof(err));

    if (!d)
        return;
    if (rc < 0) {
        log_dev(LOG_WARNING, pk, dn, "configuration push refused: %s", err);
        push_reply(d, n.msg_id, 460, err);
        return;
    }
    log_dev(LOG_INFO, pk, dn, "configuration %s pushed (%lld bytes)", n.config_id,
            (long long)n.size);
    fetch(d, &n, n.msg_id);
}

void rconfig_on_get_reply(const char *pk, const char *dn, const char *payload, size_t len)
{
    struct rconfig_notice n;
    char err[200];
    struct rdev *d = dev_get(pk, dn, false);
    int rc = rconfig_notice_parse(RCONFIG_GET_REPLY, payload, len, &n, err, sizeof(err));
    struct waiter *w = NULL;

    for (w = d ? d->waiters : NULL; w && (!w->id[0] || strcmp(w->id, n.msg_id) != 0); w = w->next)
        ;
    if (!w) {
        log_dev(LOG_DEBUG, pk, dn, "a config get_reply (id %s) nobody waits for", n.msg_id);
        return;
    }
    if (rc < 0) {
        struct waiter **pp = &d->waiters;
        while (*pp != w)
            pp = &(*pp)->next;
        *pp = w->next;
        if (rc != -ENOENT)
            log_dev(LOG_WARNING, pk, dn, "configuration get: %s", err);
        w->done(w->arg, rc, err, NULL);
        free(w);
        return;
    }
    w->id[0] = '\0'; /* now waits for the file */
    if (d->dl && !strcmp(d->n.config_id, n.config_id) && !strcmp(d->n.digest, n.digest))
        return; /* already coming (a push of the same file) */
    fetch(d, &n, "");
}

int rconfig_wait(const char *pk, const char *dn, const char *msg_id, int timeout_ms,
                 rconfig_done_fn done, void *arg)
{
    struct rdev *d = dev_get(pk, dn, true);
    struct waiter *w = d ? calloc(1, sizeof(*w)) : NULL;
    if (!w)
        return -ENOMEM;
    snprintf(w->id, sizeof(w->id), "%s", msg_id);
    w->deadline = uv_now(R.loop) + (uint64_t)timeout_ms;
    w->done = done;
    w->arg = arg;
    w->next = d->waiters;
    d->waiters = w;
    return 0;
}

static void on_sweep(uv_timer_t *t)
{
    uint64_t now = uv_now(R.loop);
    for (struct devrec *e = R.devs.head; e; e = e->next) {
        struct rdev *d = (struct rdev *)e;
        struct waiter **pp = &d->waiters, *w;
        while ((w = *pp)) {
            if (w->deadline > now) {
                pp = &w->next;
                continue;
            }
            *pp = w->next;
            w->done(w->arg, -ETIMEDOUT,
                    w->id[0] ? "no reply from the platform to thing.config.get"
                             : "the configuration file did not arrive in time (it is still "
                               "being fetched: a config event follows)",
                    NULL);
            free(w);
        }
    }
}

void rconfig_device_removed(const char *pk, const char *dn)
{
    struct rdev *d = dev_get(pk, dn, false);
    if (!d)
        return;
    if (d->dl) {
        download_cancel(d->dl);
        d->dl = NULL;
    }
    answer(d, true, -ENODEV, "the device was removed", NULL);
}

static void apply_opts(const struct rconfig_opts *o)
{
    R.o = *o;
    snprintf(R.dir, sizeof(R.dir), "%s", o->dir ? o->dir : "config");
    R.o.dir = R.dir;
    if (o->ca_file) {
        snprintf(R.ca, sizeof(R.ca), "%s", o->ca_file);
        R.o.ca_file = R.ca;
    }
}

int rconfig_init(uv_loop_t *loop, const struct rconfig_opts *opts,
                 const struct rconfig_hooks *hooks)
{
    struct download_limits l = {.max_concurrent = 2};
    int rc;

    memset(&R, 0, sizeof(R));
    R.loop = loop;
    R.h = *hooks;
    apply_opts(opts);
    devrec_set_init(&R.devs);
    if ((rc = download_init(loop, &l, &R.dl)) < 0)
        return rc;
    uv_timer_init(loop, &R.sweep);
    uv_timer_start(&R.sweep, on_sweep, SWEEP_MS, SWEEP_MS);
    uv_unref((uv_handle_t *)&R.sweep);
    R.running = true;
    return 0;
}

void rconfig_set_opts(const struct rconfig_opts *opts)
{
    apply_opts(opts);
}

static void cancel_stopping(void *rec)
{
    struct rdev *d = rec;
    if (d->dl)
        download_cancel(d->dl);
    answer(d, true, -ECANCELED, "aligwd is stopping", NULL);
}

void rconfig_close(void)
{
    if (!R.running)
        return;
    devrec_set_free(&R.devs, cancel_stopping);
    uv_timer_stop(&R.sweep);
    uv_close((uv_handle_t *)&R.sweep, NULL);
    download_close(R.dl);
    R.running = false;
}
