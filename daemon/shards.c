/*
 * shards: session shards in worker processes (see shards.h).
 *
 * aligwd keeps one record per open session: the caller's id, its shard, the parameters it was
 * opened with (so it can be opened again on a shard's new process) and what the shard last said
 * of it (connecting, connected, idle after a failure or a loss). Each time a session is opened
 * on a shard process it gets a fresh wire id, and events are matched by it: an event that was
 * already on its way when the session was closed (or its shard restarted) finds no record and
 * is dropped, as session_paho drops one by generation.
 *
 * A shard's end is seen twice, as its socket's end and as its process's exit. The first marks
 * it down and reports its sessions (SESSION_CONNECT_FAILED or SESSION_LOST); the socket's end
 * also kills the process, and only its exit starts the next one, so a shard never has two.
 */
#include "shards.h"

#include "idmap.h"
#include "log.h"
#include "paths.h"
#include "shard_wire.h"
#include "wirelink.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define RESTART_MIN_MS 100
#define RESTART_MAX_MS 10000
#define STABLE_MS 10000 /* a shard that ran this long restarts at once */
/* A shard whose loop answers nothing for HUNG_MS is killed (and restarted): a Paho deadlock or a
 * stopped process would otherwise hold its sessions for ever (their connects time out inside
 * it). Pinged every HUNG_MS / 8; any frame counts as an answer. Paho can hold its lock for
 * hundreds of milliseconds under load and a burst of opens waits on it in turn, so the bound is
 * generous. */
#define HUNG_MS 20000

enum { SS_CONNECTING, SS_CONNECTED, SS_IDLE };

struct ssess {
    uint64_t id, wid; /* the caller's id; the id on the shard process (0: not opened there) */
    unsigned shard;
    int state;
    struct session_params p;
    char strings[]; /* p's strings */
};

struct shard {
    unsigned index;
    uv_process_t *proc; /* NULL: no process */
    struct wirelink *link;
    int pid;
    bool up;         /* a process is running and its link works */
    size_t sessions; /* records placed on it */
    unsigned restarts;
    unsigned quick_deaths; /* exits in a row within STABLE_MS of the start */
    uint64_t started_ms;
    uint64_t last_rx_ms; /* when its link last brought a frame */
    uint64_t pings;
    uv_timer_t restart, heartbeat;
};

static struct {
    uv_loop_t *loop;
    session_event_cb cb;
    void *arg;
    struct shard *v;
    unsigned n;
    struct idmap by_id, by_wid;
    uint64_t next_wid;
    char *path;
    bool closing;
} S;

static int spawn(struct shard *sh);

/* ---- records --------------------------------------------------------------------------- */

static size_t opt_len(const char *s)
{
    return s ? strlen(s) + 1 : 0;
}

static char *put_str(char **at, const char *s)
{
    if (!s)
        return NULL;
    char *d = *at;
    size_t n = strlen(s) + 1;
    memcpy(d, s, n);
    *at += n;
    return d;
}

static struct ssess *record_new(uint64_t id, const struct session_params *p)
{
    size_t n = opt_len(p->host) + opt_len(p->ca_file) + opt_len(p->ca_dir) + opt_len(p->client_id) +
               opt_len(p->username) + opt_len(p->password);
    struct ssess *s = calloc(1, sizeof(*s) + n);
    char *at;

    if (!s)
        return NULL;
    s->id = id;
    s->p = *p;
    at = s->strings;
    s->p.host = put_str(&at, p->host);
    s->p.ca_file = put_str(&at, p->ca_file);
    s->p.ca_dir = put_str(&at, p->ca_dir);
    s->p.client_id = put_str(&at, p->client_id);
    s->p.username = put_str(&at, p->username);
    s->p.password = put_str(&at, p->password);
    return s;
}

static void record_free(struct ssess *s)
{
    if (s->p.password)
        memset((char *)s->p.password, 0, strlen(s->p.password));
    free(s);
}

/* ---- talking to a shard ------------------------------------------------------------------ */

/* Opens s on its shard's running process with a fresh wire id. */
static int send_open(struct shard *sh, struct ssess *s)
{
    struct wire_out *w = wirelink_out(sh->link);
    int rc;

    if (s->wid)
        idmap_del(&S.by_wid, s->wid);
    s->wid = 0;
    if (!w)
        return -ENOTCONN;
    uint64_t wid = ++S.next_wid;
    if ((rc = idmap_put(&S.by_wid, wid, s)) < 0)
        return rc;
    if ((rc = shard_wire_open(w, wid, &s->p)) < 0) {
        idmap_del(&S.by_wid, wid);
        return rc;
    }
    s->wid = wid;
    return 0;
}

static void deliver(struct ssess *s, const struct session_event *ev)
{
    struct session_event e = *ev;
    e.id = s->id;
    S.cb(S.arg, &e);
}

static void on_frame(void *arg, struct wire_in *r)
{
    struct shard *sh = arg;
    struct session_event ev;

    sh->last_rx_ms = uv_now(S.loop);
    if (r->type == SH_PONG) {
        wire_get_u64(r);
        return;
    }
    if (r->type != SH_EVENT || !shard_wire_get_event(r, &ev)) {
        r->bad = true;
        return;
    }
    struct ssess *s = idmap_get(&S.by_wid, ev.id);
    if (!s || s->shard != sh->index)
        return; /* closed (or reopened) since: stale */
    switch (ev.kind) {
    case SESSION_CONNECTED:
        s->state = SS_CONNECTED;
        break;
    case SESSION_CONNECT_FAILED:
    case SESSION_LOST:
        s->state = SS_IDLE;
        break;
    default:
        break;
    }
    deliver(s, &ev);
}

/*
 * Reports kind (code -ECONNRESET, text why) for every session on sh whose state is `state` and
 * that has no wire id (dropped from a dead process, or not opened on the new one), making it idle.
 * The list is taken first: the caller's callback may close or open sessions.
 */
static void report(struct shard *sh, int state, enum session_event_kind kind, const char *why)
{
    size_t n = 0, cap = sh->sessions + 1;
    uint64_t *ids = malloc(cap * sizeof(*ids));
    char text[200];

    snprintf(text, sizeof(text), "session shard %u %s", sh->index, why);
    for (size_t i = 0; i < S.by_id.cap; i++) {
        struct ssess *s = idmap_at(&S.by_id, i);
        if (!s || s->shard != sh->index || s->state != state || s->wid)
            continue;
        s->state = SS_IDLE;
        if (ids && n < cap)
            ids[n++] = s->id;
    }
    for (size_t k = 0; k < n; k++) {
        struct ssess *s = idmap_get(&S.by_id, ids[k]);
        struct session_event ev = {.kind = kind, .code = -ECONNRESET, .message = text};
        if (s && s->state == SS_IDLE && !s->wid)
            deliver(s, &ev);
    }
    free(ids); /* without memory for the list the sessions stay idle: they reopen at connect */
}

/*
 * The shard's process is gone or its link is: every session on it is reported as a failed
 * connect or a lost connection; the caller backs off and connects again, on the next process.
 */
static void shard_down(struct shard *sh, const char *why)
{
    if (!sh->up)
        return;
    sh->up = false;
    wirelink_close(sh->link);
    sh->link = NULL;
    if (S.closing)
        return;
    log_write(LOG_ERR, "session shard %u (pid %d) %s: its %zu session(s) reconnect", sh->index,
              sh->pid, why, sh->sessions);
    for (size_t i = 0; i < S.by_id.cap; i++) { /* none of its wire ids is valid any more */
        struct ssess *s = idmap_at(&S.by_id, i);
        if (s && s->shard == sh->index && s->wid) {
            idmap_del(&S.by_wid, s->wid);
            s->wid = 0;
        }
    }
    report(sh, SS_CONNECTING, SESSION_CONNECT_FAILED, why);
    report(sh, SS_CONNECTED, SESSION_LOST, why);
}

/* Down (its sessions reported) and killed; its exit starts the next one. */
static void kill_shard(struct shard *sh, const char *why)
{
    shard_down(sh, why);
    if (sh->proc)
        uv_process_kill(sh->proc, SIGKILL);
}

static void on_link_end(void *arg, int err)
{
    struct shard *sh = arg;
    char why[120];
    if (err == -EPROTO)
        snprintf(why, sizeof(why), "broke the frame protocol");
    else if (err < 0)
        snprintf(why, sizeof(why), "lost its link: %s", uv_strerror(err));
    else
        snprintf(why, sizeof(why), "closed its link");
    kill_shard(sh, why);
}

static void proc_closed(uv_handle_t *h)
{
    free(h);
}

static void on_heartbeat(uv_timer_t *t)
{
    struct shard *sh = t->data;
    struct wire_out *w;
    if (S.closing || !sh->up || !sh->proc)
        return;
    if (uv_now(S.loop) - sh->last_rx_ms > HUNG_MS) {
        char why[80];
        snprintf(why, sizeof(why), "hung: no answer for %d ms", HUNG_MS);
        kill_shard(sh, why);
        return;
    }
    if ((w = wirelink_out(sh->link)))
        shard_wire_id(w, SH_PING, ++sh->pings);
}

static void on_restart_timer(uv_timer_t *t)
{
    struct shard *sh = t->data;
    int rc;
    if (S.closing || sh->proc)
        return;
    sh->restarts++;
    if ((rc = spawn(sh)) < 0) {
        log_write_err(LOG_ERR, rc, "session shard %u: cannot start %s", sh->index, S.path);
        uv_timer_start(&sh->restart, on_restart_timer, RESTART_MAX_MS, 0);
    }
}

static void on_exit_cb(uv_process_t *p, int64_t status, int sig)
{
    struct shard *sh = p->data;
    char why[120];

    if (sig)
        snprintf(why, sizeof(why), "was killed by signal %d (%s)", sig, strsignal(sig));
    else
        snprintf(why, sizeof(why), "exited with status %lld", (long long)status);
    if (sh->up)
        shard_down(sh, why);
    else if (!S.closing)
        log_write(LOG_NOTICE, "session shard %u (pid %d) %s", sh->index, sh->pid, why);
    sh->proc = NULL;
    sh->pid = 0;
    uv_close((uv_handle_t *)p, proc_closed);
    if (S.closing)
        return;
    uint64_t lived = uv_now(S.loop) - sh->started_ms;
    sh->quick_deaths = lived >= STABLE_MS ? 0 : sh->quick_deaths + 1;
    uint64_t delay = 0;
    if (sh->quick_deaths > 1) {
        delay = RESTART_MIN_MS;
        for (unsigned i = 2; i < sh->quick_deaths && delay < RESTART_MAX_MS; i++)
            delay *= 2;
        delay = delay > RESTART_MAX_MS ? RESTART_MAX_MS : delay;
    }
    uv_timer_start(&sh->restart, on_restart_timer, delay, 0);
}

static int spawn(struct shard *sh)
{
    uv_process_options_t o = {0};
    uv_stdio_container_t stdio[4];
    char idx[16], level[16];
    char *args[5];
    int sv[2], rc;

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return -errno;
    snprintf(idx, sizeof(idx), "%u", sh->index);
    snprintf(level, sizeof(level), "%d", log_level);
    args[0] = S.path;
    args[1] = "3";
    args[2] = idx;
    args[3] = level;
    args[4] = NULL;
    stdio[0].flags = UV_IGNORE;
    stdio[1].flags = UV_INHERIT_FD;
    stdio[1].data.fd = 2;
    stdio[2].flags = UV_INHERIT_FD;
    stdio[2].data.fd = 2;
    stdio[3].flags = UV_INHERIT_FD;
    stdio[3].data.fd = sv[1];
    o.file = S.path;
    o.args = args;
    o.stdio = stdio;
    o.stdio_count = 4;
    o.exit_cb = on_exit_cb;
    o.flags = UV_PROCESS_DETACHED; /* ^C reaches aligwd only; PDEATHSIG ties it to aligwd */
    sh->proc = calloc(1, sizeof(*sh->proc));
    if (!sh->proc) {
        close(sv[0]);
        close(sv[1]);
        return -ENOMEM;
    }
    sh->proc->data = sh;
    rc = uv_spawn(S.loop, sh->proc, &o);
    close(sv[1]);
    if (rc < 0) {
        close(sv[0]);
        uv_close((uv_handle_t *)sh->proc, proc_closed);
        sh->proc = NULL;
        return rc;
    }
    sh->pid = sh->proc->pid;
    sh->started_ms = sh->last_rx_ms = uv_now(S.loop);
    if ((rc = wirelink_open(&sh->link, S.loop, sv[0], on_frame, on_link_end, sh)) < 0) {
        uv_process_kill(sh->proc, SIGKILL);
        return 0; /* its exit brings the next attempt */
    }
    sh->up = true;
    if (sh->restarts)
        log_write(LOG_NOTICE, "session shard %u started again (pid %d)", sh->index, sh->pid);
    /* sessions asked to connect while it was down; one that cannot be sent fails its connect */
    for (size_t i = 0; i < S.by_id.cap; i++) {
        struct ssess *s = idmap_at(&S.by_id, i);
        if (s && s->shard == sh->index && s->state == SS_CONNECTING && !s->wid)
            send_open(sh, s);
    }
    report(sh, SS_CONNECTING, SESSION_CONNECT_FAILED, "could not take the session");
    return 0;
}

/* ---- the session layer's calls ----------------------------------------------------------- */

int shards_init(uv_loop_t *loop, session_event_cb cb, void *arg, unsigned n)
{
    int rc = 0;

    memset(&S, 0, sizeof(S));
    S.loop = loop;
    S.cb = cb;
    S.arg = arg;
    idmap_init(&S.by_id);
    idmap_init(&S.by_wid);
    S.path = paths_helper("ALIGW_SESSION_SHARD", "aligw-session-shard");
    S.v = calloc(n, sizeof(*S.v));
    if (!S.path || !S.v) {
        free(S.path);
        free(S.v);
        return -ENOMEM;
    }
    S.n = n;
    for (unsigned i = 0; i < n; i++) {
        S.v[i].index = i;
        S.v[i].restart.data = S.v[i].heartbeat.data = &S.v[i];
        uv_timer_init(loop, &S.v[i].restart);
        uv_timer_init(loop, &S.v[i].heartbeat);
        uv_timer_start(&S.v[i].heartbeat, on_heartbeat, HUNG_MS / 8, HUNG_MS / 8);
        uv_unref((uv_handle_t *)&S.v[i].heartbeat);
    }
    for (unsigned i = 0; i < n && rc == 0; i++)
        rc = spawn(&S.v[i]);
    if (rc < 0) {
        log_write_err(LOG_ERR, rc, "cannot start the session shards (%s)", S.path);
        shards_close();
        return rc;
    }
    log_write(LOG_INFO, "sessions run in %u shard process(es) (%s)", n, S.path);
    return 0;
}

static struct shard *closing_v; /* freed when the last restart timer has closed */
static unsigned closing_timers;

static void timer_closed(uv_handle_t *h)
{
    if (--closing_timers == 0) {
        free(closing_v);
        closing_v = NULL;
    }
}

void shards_close(void)
{
    if (!S.v)
        return;
    S.closing = true;
    for (unsigned i = 0; i < S.n; i++) {
        struct shard *sh = &S.v[i];
        if (sh->link) {
            wirelink_close(sh->link); /* the shard sees the end, closes its clients and exits */
            sh->link = NULL;
        }
        sh->up = false;
        if (sh->proc) {
            uv_close((uv_handle_t *)sh->proc, proc_closed);
            sh->proc = NULL;
        }
        uv_close((uv_handle_t *)&sh->restart, timer_closed);
        uv_close((uv_handle_t *)&sh->heartbeat, timer_closed);
    }
    closing_v = S.v;
    closing_timers = 2 * S.n;
    S.v = NULL;
    S.n = 0;
    for (size_t i = 0; i < S.by_id.cap; i++) {
        struct ssess *s = idmap_at(&S.by_id, i);
        if (s)
            record_free(s);
    }
    idmap_free(&S.by_id);
    idmap_free(&S.by_wid);
    free(S.path);
    S.path = NULL;
}

static struct shard *up_shard(const struct ssess *s)
{
    struct shard *sh = &S.v[s->shard];
    return sh->up ? sh : NULL;
}

int shards_open(uint64_t id, const struct session_params *p)
{
    struct ssess *s;
    unsigned best = 0;
    int rc;

    if (!S.v)
        return -EINVAL;
    if (idmap_get(&S.by_id, id))
        return -EEXIST;
    if (!p->host || !p->client_id || !p->username || !p->password)
        return -EINVAL;
    for (unsigned i = 1; i < S.n; i++) /* the shard with the fewest sessions */
        if (S.v[i].sessions < S.v[best].sessions)
            best = i;
    if (!(s = record_new(id, p)))
        return -ENOMEM;
    s->shard = best;
    s->state = SS_CONNECTING;
    if ((rc = idmap_put(&S.by_id, id, s)) < 0) {
        record_free(s);
        return rc;
    }
    struct shard *sh = up_shard(s);
    if (sh && (rc = send_open(sh, s)) < 0) {
        idmap_del(&S.by_id, id);
        record_free(s);
        return rc;
    }
    S.v[best].sessions++; /* a shard that is down opens it when it is back (spawn) */
    return 0;
}

int shards_connect(uint64_t id)
{
    struct ssess *s = idmap_get(&S.by_id, id);
    struct shard *sh;
    struct wire_out *w;
    int rc = 0;

    if (!s)
        return -ENOENT;
    s->state = SS_CONNECTING;
    if (!(sh = up_shard(s)))
        return 0; /* opened when the shard is back */
    if (!s->wid)
        rc = send_open(sh, s); /* its shard was restarted since it was opened */
    else if ((w = wirelink_out(sh->link)))
        rc = shard_wire_id(w, SH_CONNECT, s->wid);
    if (rc < 0)
        s->state = SS_IDLE;
    return rc;
}

void shards_close_session(uint64_t id)
{
    struct ssess *s = idmap_del(&S.by_id, id);
    struct shard *sh;
    struct wire_out *w;

    if (!s)
        return;
    S.v[s->shard].sessions--;
    if (s->wid) {
        idmap_del(&S.by_wid, s->wid);
        if ((sh = up_shard(s)) && (w = wirelink_out(sh->link)))
            shard_wire_id(w, SH_CLOSE, s->wid);
    }
    record_free(s);
}

/* The link of a connected session, or NULL. */
static struct wire_out *connected_out(uint64_t id, uint64_t *wid, int *err)
{
    struct ssess *s = idmap_get(&S.by_id, id);
    struct shard *sh;
    *err = -ENOENT;
    if (!s)
        return NULL;
    *err = -ENOTCONN;
    if (s->state != SS_CONNECTED || !s->wid || !(sh = up_shard(s)))
        return NULL;
    *wid = s->wid;
    return wirelink_out(sh->link);
}

int shards_publish(uint64_t id, const char *topic, const void *payload, size_t len, int qos,
                   uint64_t ref)
{
    uint64_t wid;
    int rc;
    struct wire_out *w = connected_out(id, &wid, &rc);
    return w ? shard_wire_publish(w, wid, topic, payload, len, qos, ref) : rc;
}

int shards_subscribe(uint64_t id, char *const *topics, size_t n)
{
    uint64_t wid;
    int rc;
    struct wire_out *w = connected_out(id, &wid, &rc);
    if (n == 0)
        return w ? 0 : rc;
    return w ? shard_wire_subscribe(w, wid, topics, n) : rc;
}

size_t shards_info(struct session_shard_info *v, size_t n)
{
    for (unsigned i = 0; i < S.n && i < n; i++) {
        v[i].pid = S.v[i].up ? S.v[i].pid : 0;
        v[i].sessions = S.v[i].sessions;
        v[i].restarts = S.v[i].restarts;
    }
    return S.n;
}
