/*
 * shadow: per-device shadow requests in order, one outstanding, and the tracked version (see
 * shadow.h).
 */
#include "shadow.h"

#include "alink.h"
#include "log.h"
#include "devrec.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct sreq {
    enum shadow_op op;
    json_t *reported;  /* SHADOW_UPDATE */
    int64_t version;   /* the caller's, or -1 */
    int64_t sent_with; /* the version it went out with */
    bool internal;     /* a get aligw sent to learn the version (no caller) */
    bool retried;      /* a conflict was retried once already */
    shadow_done_fn done;
    void *arg;
    struct sreq *next;
};

struct sdev {
    struct devrec rec; /* key, pk, dn; first */
    int64_t version;   /* -1 = unknown */
    struct sreq *head, *tail;
    bool in_flight;
    uint64_t deadline;
};

static struct {
    uv_loop_t *loop;
    struct shadow_hooks h;
    struct devrec_set devs;
    uv_timer_t sweep;
    bool running;
} S;

static struct sdev *dev_get(const char *pk, const char *dn, bool create)
{
    bool created;
    struct sdev *d = devrec_get(&S.devs, pk, dn, create ? sizeof(*d) : 0, &created);
    if (created)
        d->version = -1;
    return d;
}

static void finish(struct sdev *d, int status, const char *error, json_t *result)
{
    struct sreq *r = d->head;
    d->head = r->next;
    if (!d->head)
        d->tail = NULL;
    d->in_flight = false;
    if (r->done)
        r->done(r->arg, status, error, result);
    json_decref(r->reported);
    free(r);
}

static void pump(struct sdev *d);

/* Puts a get in front of the queue (to learn the version an update needs). */
static int push_front_get(struct sdev *d)
{
    struct sreq *g = calloc(1, sizeof(*g));
    if (!g)
        return -ENOMEM;
    g->op = SHADOW_GET;
    g->version = -1;
    g->internal = true;
    g->next = d->head;
    d->head = g;
    if (!d->tail)
        d->tail = g;
    return 0;
}

/* Sends the head of d's queue when nothing is in flight. */
static void pump(struct sdev *d)
{
    while (d->head && !d->in_flight) {
        struct sreq *r = d->head;
        struct alink_msg m = {0};
        int rc;

        if (r->op != SHADOW_GET) {
            if (r->version < 0 && d->version < 0) {
                if (push_front_get(d) < 0) {
                    finish(d, -ENOMEM, "out of memory", NULL);
                    continue;
                }
                continue; /* the get goes first */
            }
            r->sent_with = r->version >= 0 ? r->version : d->version + 1;
        }
        rc = alink_shadow_request(d->rec.pk, d->rec.dn, r->op == SHADOW_GET,
                                  r->op == SHADOW_UPDATE ? r->reported : NULL, r->sent_with, &m);
        if (rc == 0)
            rc = S.h.uplink(S.h.ctx, d->rec.key, m.topic, m.payload, m.len);
        alink_msg_free(&m);
        if (rc < 0) {
            finish(d, rc, "the shadow request was not stored", NULL);
            continue;
        }
        d->in_flight = true;
        d->deadline = uv_now(S.loop) + SHADOW_TIMEOUT_MS;
    }
}

int shadow_request(const char *pk, const char *dn, enum shadow_op op, const json_t *reported,
                   int64_t version, shadow_done_fn done, void *arg)
{
    if (op == SHADOW_UPDATE && !json_is_object(reported))
        return -EINVAL;
    struct sdev *d = dev_get(pk, dn, true);
    struct sreq *r = d ? calloc(1, sizeof(*r)) : NULL;
    if (!r)
        return -ENOMEM;
    r->op = op;
    r->reported = op == SHADOW_UPDATE ? json_deep_copy(reported) : NULL;
    r->version = version;
    r->done = done;
    r->arg = arg;
    if (d->tail)
        d->tail->next = r;
    else
        d->head = r;
    d->tail = r;
    pump(d);
    return 0;
}

static void control_event(struct sdev *d, const struct alink_shadow *sh)
{
    json_t *ev = json_pack("{s:s,s:s,s:s,s:I}", "event", "shadow", "device", d->rec.key, "method",
                           "control", "version", (json_int_t)sh->version);
    json_t *des = json_object_get(sh->state, "desired"),
           *rep = json_object_get(sh->state, "reported");
    json_object_set(ev, "desired", json_is_object(des) ? des : json_object());
    if (json_is_object(rep))
        json_object_set(ev, "reported", rep);
    if (sh->timestamp)
        json_object_set_new(ev, "timestamp", json_integer(sh->timestamp));
    int n = S.h.event(S.h.ctx, d->rec.key, ev);
    if (n <= 0)
        log_dev(LOG_INFO, d->rec.pk, d->rec.dn,
                "shadow control (version %lld): no plugin or API watcher took the shadow event",
                (long long)sh->version);
    json_decref(ev);
}

void shadow_on_message(const char *pk, const char *dn, const void *payload, size_t len)
{
    struct alink_shadow sh;
    char err[128];
    struct sdev *d = dev_get(pk, dn, true);

    if (!d)
        return;
    if (alink_shadow_parse(payload, len, &sh, err, sizeof(err)) < 0) {
        log_dev(LOG_WARNING, pk, dn, "ignoring a malformed shadow message: %s", err);
        return;
    }
    if (sh.version >= 0 && (sh.ok || sh.control))
        d->version = sh.version;
    if (sh.control) {
        control_event(d, &sh);
        alink_shadow_free(&sh);
        return;
    }
    if (!d->in_flight) {
        log_dev(LOG_DEBUG, pk, dn, "a shadow reply nobody waits for");
        alink_shadow_free(&sh);
        return;
    }
    struct sreq *r = d->head;
    if (sh.ok) {
        json_t *res = json_pack("{s:I}", "version",
                                (json_int_t)(sh.version >= 0 ? sh.version : r->sent_with));
        if (r->op == SHADOW_GET) {
            json_t *rep = json_object_get(sh.state, "reported");
            json_t *des = json_object_get(sh.state, "desired");
            json_object_set(res, "reported", json_is_object(rep) ? rep : json_object());
            json_object_set(res, "desired", json_is_object(des) ? des : json_object());
            if (sh.timestamp)
                json_object_set_new(res, "timestamp", json_integer(sh.timestamp));
        } else if (sh.version < 0) {
            d->version = r->sent_with;
        }
        finish(d, 0, NULL, res);
        json_decref(res);
    } else if (sh.errorcode == 409 && r->version < 0 && !r->retried) {
        /* aligw picked the version and the platform knows a newer one: once more after it */
        r->retried = true;
        d->in_flight = false;
        d->version = sh.version; /* unknown (-1): pump sends a get first */
        log_dev(LOG_INFO, pk, dn, "shadow version conflict at %lld: retrying after the current",
                (long long)r->sent_with);
    } else {
        char why[256];
        snprintf(why, sizeof(why), "the platform refused the shadow %s: %d %s%s",
                 r->op == SHADOW_GET ? "get" : "update", sh.errorcode,
                 sh.message[0] ? sh.message : "(no message)",
                 sh.errorcode == 409 ? " (the version given is not above the shadow's)" : "");
        if (sh.errorcode == 409 && sh.version >= 0) {
            size_t n = strlen(why);
            snprintf(why + n, sizeof(why) - n, "; the shadow is at version %lld",
                     (long long)sh.version);
            d->version = sh.version;
        } else if (sh.errorcode == 409) {
            d->version = -1; /* learn it again before the next update */
        }
        finish(d, -EREMOTE, why, NULL);
    }
    alink_shadow_free(&sh);
    pump(d);
}

int64_t shadow_version(const char *pk, const char *dn)
{
    struct sdev *d = dev_get(pk, dn, false);
    return d ? d->version : -1;
}

static void fail_all(struct sdev *d, int status, const char *why)
{
    while (d->head)
        finish(d, status, why, NULL);
}

void shadow_device_removed(const char *pk, const char *dn)
{
    struct sdev *d = dev_get(pk, dn, false);
    if (d)
        fail_all(d, -ENODEV, "the device was removed");
}

static void on_sweep(uv_timer_t *t)
{
    uint64_t now = uv_now(S.loop);
    for (struct devrec *e = S.devs.head; e; e = e->next) {
        struct sdev *d = (struct sdev *)e;
        if (!d->in_flight || d->deadline > now)
            continue;
        log_dev(LOG_WARNING, d->rec.pk, d->rec.dn, "no shadow reply within %d s",
                SHADOW_TIMEOUT_MS / 1000);
        finish(d, -ETIMEDOUT, "no reply from the platform's shadow", NULL);
        pump(d);
    }
}

void shadow_init(uv_loop_t *loop, const struct shadow_hooks *hooks)
{
    memset(&S, 0, sizeof(S));
    S.loop = loop;
    S.h = *hooks;
    devrec_set_init(&S.devs);
    uv_timer_init(loop, &S.sweep);
    uv_timer_start(&S.sweep, on_sweep, 500, 500);
    uv_unref((uv_handle_t *)&S.sweep);
    S.running = true;
}

static void fail_stopping(void *rec)
{
    fail_all(rec, -ECANCELED, "aligwd is stopping");
}

void shadow_close(void)
{
    if (!S.running)
        return;
    devrec_set_free(&S.devs, fail_stopping);
    uv_timer_stop(&S.sweep);
    uv_close((uv_handle_t *)&S.sweep, NULL);
    S.running = false;
}
