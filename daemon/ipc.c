/*
 * ipc: the Unix-socket server of the local API (see ipc.h). Shape: one listener, a list of
 * connections, each with a line framer, a count of bytes queued for writing and of requests
 * still being handled. Bounds, checked before every request line (not once per read, so a client
 * that pipelines a whole read of requests and never reads the answers gets at most one answer
 * past them): a connection's requests are served while it has at most IPC_CONN_QUEUE_MAX bytes
 * of answers unsent and fewer than IPC_CONN_INFLIGHT_MAX requests in the handler, and, while
 * all connections together hold more than IPC_TOTAL_QUEUE_MAX unsent bytes, only while its own
 * queue is empty (so a client that reads is always served). Lines not served yet are kept (at
 * most one read, IPC_READ_CHUNK) and the socket is not read until they are; serving resumes as
 * the client reads. Fairness: the pipelined lines of one connection are served until their
 * answers add IPC_TURN_SLICE bytes, and the rest in later loop turns (an idle handle, round
 * robin, at most IPC_TURN_BUDGET bytes of answers per turn over all connections), so a
 * client that sends one request is answered in the next turn however much others pipelined. A
 * watcher's events are dropped (and counted) above the watch limit or the total bound instead.
 * Replies hold a reference on their connection, so a reply completed after the client left (or
 * after the server closed) is dropped without touching freed memory. Event lines are serialized
 * once and shared between watchers through a reference-counted buffer.
 */
#include "ipc.h"

#include "errors.h"
#include "log.h"

#include <errno.h>
#include <malloc.h>
#include <grp.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#ifndef ALIGW_VERSION
#define ALIGW_VERSION "unknown"
#endif

#define IPC_READ_CHUNK 65536
#define IPC_CONN_QUEUE_MAX (1u << 20)
#define IPC_TOTAL_QUEUE_MAX (8u << 20)
#define IPC_TURN_SLICE (16u << 10)   /* answers one connection's pipelined lines may add per turn */
#define IPC_TURN_BUDGET (512u << 10) /* answers all held lines together may add per turn */
#define IPC_CONN_INFLIGHT_MAX 1024
#define IPC_MAX_CONNS 1024
#define IPC_DEFAULT_WATCH_LIMIT (1u << 20)

struct shared_buf {
    unsigned refs;
    size_t len;
    char data[];
};

struct ipc_conn {
    uv_pipe_t pipe;
    struct ipc_server *srv; /* NULL once the connection's handle is closed */
    struct ipc_conn *prev, *next;
    unsigned refs; /* the open handle + each reply not yet completed */
    bool closing, reading, paused, close_after_write, watching;
    struct ipc_peer peer;
    struct ipc_framer fr;
    size_t wq_bytes;
    unsigned inflight;
    char *held;   /* read but not served yet (over a bound), held_len bytes from held_off */
    bool feeding; /* in conn_feed: replies completed meanwhile must not feed again */
    size_t held_off, held_len;
    struct ipc_watch_filter watch;
    uint64_t dropped;
};

struct wreq {
    uv_write_t req;
    struct ipc_conn *conn;
    struct shared_buf *sb; /* shared event line, or NULL */
    char *own;             /* response line owned by this write, or NULL */
    size_t len;
};

struct ipc_reply {
    struct ipc_conn *conn; /* NULL for a local request (ipc_local_request) */
    struct ipc_request req;
    struct ipc_server *srv; /* a local request's server */
    ipc_local_done done;    /* a local request's answer */
    void *done_arg;
};

struct access {
    uid_t *allow_uids, *admin_uids;
    gid_t *allow_gids, *admin_gids;
    size_t n_allow_uids, n_admin_uids, n_allow_gids, n_admin_gids;
};

struct ipc_server {
    uv_loop_t *loop;
    uv_pipe_t listener;
    bool listener_init, created_file, closing;
    char *path;
    char *group;
    struct access acc;
    size_t max_line, max_payload, watch_limit;
    ipc_request_cb cb;
    void *data;
    struct ipc_conn *conns;
    struct ipc_stats st;
    size_t wq_total;  /* unsent bytes of every connection */
    uv_idle_t resume; /* serves held lines in the next turn */
    bool resume_init, resume_on;
    size_t resume_rr;  /* round robin: where the next turn starts */
    size_t turn_spent; /* answers added by pipelined lines in this loop turn ... */
    uint64_t turn_now; /* ... which is the one with this uv_now() */
    unsigned handles;  /* connection handles not yet closed, plus the listener's */
    void (*close_cb)(void *data);
    void *close_data;
    char rbuf[IPC_READ_CHUNK];
};

/* ---- users and groups ---- */

static int resolve_uid(const char *name, uid_t *out)
{
    char buf[4096], *end;
    struct passwd pw, *res = NULL;
    unsigned long v = strtoul(name, &end, 10);
    if (*name && *end == '\0') {
        *out = (uid_t)v;
        return 0;
    }
    if (getpwnam_r(name, &pw, buf, sizeof(buf), &res) != 0 || !res)
        return -ENOENT;
    *out = res->pw_uid;
    return 0;
}

static int resolve_gid(const char *name, gid_t *out)
{
    char buf[8192], *end;
    struct group gr, *res = NULL;
    unsigned long v = strtoul(name, &end, 10);
    if (*name && *end == '\0') {
        *out = (gid_t)v;
        return 0;
    }
    if (getgrnam_r(name, &gr, buf, sizeof(buf), &res) != 0 || !res)
        return -ENOENT;
    *out = res->gr_gid;
    return 0;
}

static void access_free(struct access *a)
{
    free(a->allow_uids);
    free(a->admin_uids);
    free(a->allow_gids);
    free(a->admin_gids);
    memset(a, 0, sizeof(*a));
}

static int resolve_users(char **names, size_t n, uid_t **out, size_t *nout, const char *key)
{
    *nout = 0;
    *out = n ? calloc(n, sizeof(uid_t)) : NULL;
    if (n && !*out)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        if (resolve_uid(names[i], &(*out)[i]) < 0) {
            log_error("api.%s: unknown user \"%s\"", key, names[i]);
            return -EINVAL;
        }
    }
    *nout = n;
    return 0;
}

static int resolve_groups(char **names, size_t n, gid_t **out, size_t *nout, const char *key)
{
    *nout = 0;
    *out = n ? calloc(n, sizeof(gid_t)) : NULL;
    if (n && !*out)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        if (resolve_gid(names[i], &(*out)[i]) < 0) {
            log_error("api.%s: unknown group \"%s\"", key, names[i]);
            return -EINVAL;
        }
    }
    *nout = n;
    return 0;
}

static int access_load(struct access *a, const struct config *cfg)
{
    int rc;
    memset(a, 0, sizeof(*a));
    if ((rc = resolve_users(cfg->api.allow_users, cfg->api.n_allow_users, &a->allow_uids,
                            &a->n_allow_uids, "allow_users")) < 0 ||
        (rc = resolve_users(cfg->api.admin_users, cfg->api.n_admin_users, &a->admin_uids,
                            &a->n_admin_uids, "admin_users")) < 0 ||
        (rc = resolve_groups(cfg->api.allow_groups, cfg->api.n_allow_groups, &a->allow_gids,
                             &a->n_allow_gids, "allow_groups")) < 0 ||
        (rc = resolve_groups(cfg->api.admin_groups, cfg->api.n_admin_groups, &a->admin_gids,
                             &a->n_admin_gids, "admin_groups")) < 0)
        access_free(a);
    return rc;
}

/* True when uid is listed, or its primary or a supplementary group is. */
static bool peer_listed(uid_t uid, gid_t gid, const uid_t *uids, size_t nu, const gid_t *gids,
                        size_t ng)
{
    for (size_t i = 0; i < nu; i++)
        if (uids[i] == uid)
            return true;
    if (ng == 0)
        return false;
    for (size_t i = 0; i < ng; i++)
        if (gids[i] == gid)
            return true;
    char buf[4096];
    struct passwd pw, *res = NULL;
    if (getpwuid_r(uid, &pw, buf, sizeof(buf), &res) != 0 || !res)
        return false;
    gid_t groups[256];
    int n = 256;
    if (getgrouplist(res->pw_name, gid, groups, &n) < 0)
        n = 256; /* truncated: check what we got */
    for (int j = 0; j < n; j++)
        for (size_t i = 0; i < ng; i++)
            if (groups[j] == gids[i])
                return true;
    return false;
}

static void peer_rights(const struct access *a, struct ipc_peer *p, bool *allowed)
{
    bool self = p->uid == 0 || p->uid == geteuid();
    *allowed =
        self || (a->n_allow_uids == 0 && a->n_allow_gids == 0) ||
        peer_listed(p->uid, p->gid, a->allow_uids, a->n_allow_uids, a->allow_gids, a->n_allow_gids);
    /* Managing devices (add, remove, reload) is for root and the daemon's own user unless the
     * admin lists name more: an empty list widens nothing. */
    p->admin = self || peer_listed(p->uid, p->gid, a->admin_uids, a->n_admin_uids, a->admin_gids,
                                   a->n_admin_gids);
}

/* ---- connections ---- */

static void conn_unref(struct ipc_conn *c)
{
    if (--c->refs == 0) {
        ipc_framer_free(&c->fr);
        free(c->held);
        free(c);
    }
}

static void free_filter(struct ipc_watch_filter *w)
{
    struct ipc_request tmp = {.op = IPC_OP_WATCH};
    tmp.u.watch = *w;
    ipc_request_free(&tmp);
    memset(w, 0, sizeof(*w));
}

static void server_maybe_free(struct ipc_server *srv)
{
    if (!srv->closing || srv->handles > 0)
        return;
    if (srv->close_cb)
        srv->close_cb(srv->close_data);
    access_free(&srv->acc);
    free(srv->path);
    free(srv->group);
    free(srv);
}

static void on_conn_closed(uv_handle_t *h)
{
    struct ipc_conn *c = h->data;
    struct ipc_server *srv = c->srv;
    c->srv = NULL;
    free_filter(&c->watch);
    conn_unref(c);
    srv->handles--;
    server_maybe_free(srv);
    /* A client that pipelined a lot leaves megabytes of freed buffers: give them back. */
    malloc_trim(0);
}

static void conn_close(struct ipc_conn *c)
{
    struct ipc_server *srv = c->srv;
    if (c->closing)
        return;
    c->closing = true;
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    srv->st.connections--;
    if (c->watching)
        srv->st.watchers--;
    uv_read_stop((uv_stream_t *)&c->pipe);
    uv_close((uv_handle_t *)&c->pipe, on_conn_closed);
}

static void conn_update_reading(struct ipc_conn *c);
static int conn_send(struct ipc_conn *c, char *own, struct shared_buf *sb, size_t len);

static void send_dropped_notice(struct ipc_conn *c)
{
    char line[64];
    int n = snprintf(line, sizeof(line), "{\"event\":\"dropped\",\"count\":%llu}\n",
                     (unsigned long long)c->dropped);
    char *own = malloc((size_t)n + 1);
    if (!own)
        return;
    memcpy(own, line, (size_t)n + 1);
    c->dropped = 0;
    conn_send(c, own, NULL, (size_t)n);
}

static void on_write(uv_write_t *req, int status)
{
    struct wreq *w = (struct wreq *)req;
    struct ipc_conn *c = w->conn;
    c->wq_bytes -= w->len;
    if (c->srv)
        c->srv->wq_total -= w->len;
    if (w->sb && --w->sb->refs == 0)
        free(w->sb);
    free(w->own);
    free(w);
    if (c->closing)
        return;
    if (status < 0) {
        log_debug("ipc: write to pid %d failed: %s", (int)c->peer.pid, uv_strerror(status));
        conn_close(c);
        return;
    }
    if (c->close_after_write && c->wq_bytes == 0) {
        conn_close(c);
        return;
    }
    if (c->watching && c->dropped && c->wq_bytes <= c->srv->watch_limit / 2)
        send_dropped_notice(c);
    conn_update_reading(c);
}

/* Queues one line; takes own (or a reference on sb). Returns 0 or a negative errno. */
static int conn_send(struct ipc_conn *c, char *own, struct shared_buf *sb, size_t len)
{
    struct wreq *w = calloc(1, sizeof(*w));
    if (!w) {
        free(own);
        return -ENOMEM;
    }
    w->conn = c;
    w->own = own;
    w->sb = sb;
    w->len = len;
    if (sb)
        sb->refs++;
    uv_buf_t b = uv_buf_init(own ? own : sb->data, (unsigned)len);
    c->wq_bytes += len;
    c->srv->wq_total += len;
    int rc = uv_write(&w->req, (uv_stream_t *)&c->pipe, &b, 1, on_write);
    if (rc < 0) {
        c->wq_bytes -= len;
        c->srv->wq_total -= len;
        if (sb)
            sb->refs--;
        free(own);
        free(w);
        conn_close(c);
    }
    return rc;
}

/* op: the request's, or IPC_OP_COUNT_ for a line that was not a valid request. */
static void count_request(struct ipc_server *srv, int op, bool error)
{
    srv->st.requests++;
    if (error)
        srv->st.errors++;
    if (op >= 0 && op <= IPC_OP_COUNT_)
        srv->st.by_op[op][error]++;
}

static void send_error(struct ipc_conn *c, int op, json_t *id, enum ipc_err code, const char *msg)
{
    size_t n;
    char *line = ipc_response_error(id, code, msg, &n);
    count_request(c->srv, op, true);
    if (line)
        conn_send(c, line, NULL, n);
}

static void send_ok(struct ipc_conn *c, int op, json_t *id, json_t *result)
{
    size_t n;
    char *line = ipc_response_ok(id, result, &n);
    count_request(c->srv, op, false);
    if (line)
        conn_send(c, line, NULL, n);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct ipc_conn *c = h->data;
    *buf = uv_buf_init(c->srv->rbuf, sizeof(c->srv->rbuf));
}

static void handle_watch(struct ipc_conn *c, struct ipc_request *req)
{
    json_t *kinds = json_array();
    if (!c->watching)
        c->srv->st.watchers++;
    free_filter(&c->watch);
    c->watch = req->u.watch;
    memset(&req->u.watch, 0, sizeof(req->u.watch));
    c->watching = true;
    for (unsigned k = 1; k < IPC_EV_ALL_; k <<= 1)
        if (c->watch.kinds & k)
            json_array_append_new(kinds, json_string(ipc_event_kind_name((enum ipc_event_kind)k)));
    send_ok(c, IPC_OP_WATCH, req->id,
            json_pack("{s:b,s:o,s:I,s:I}", "watching", 1, "kinds", kinds, "devices",
                      (json_int_t)(c->watch.all_devices ? -1 : (json_int_t)c->watch.n_devices),
                      "topics", (json_int_t)c->watch.n_topics));
}

static void on_line(void *ctx, const char *line, size_t len, bool too_long)
{
    struct ipc_conn *c = ctx;
    struct ipc_server *srv = c->srv;
    struct ipc_request req;
    struct ipc_error err;
    char msg[128];

    if (c->closing)
        return;
    if (too_long) {
        json_t *id = ipc_request_peek_id(line, len);
        snprintf(msg, sizeof(msg), "request line longer than %zu bytes (api.max_line)",
                 srv->max_line);
        send_error(c, IPC_OP_COUNT_, id, IPC_ERR_LINE_TOO_LONG, msg);
        json_decref(id);
        return;
    }
    struct ipc_limits lim = {.max_payload = srv->max_payload};
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    lim.now_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    if (ipc_request_parse(line, len, &lim, &req, &err) < 0) {
        send_error(c, IPC_OP_COUNT_, err.id, err.code, err.message);
        ipc_error_free(&err);
        return;
    }
    if (ipc_op_is_admin(req.op) && !c->peer.admin) {
        snprintf(msg, sizeof(msg), "%s needs admin rights (api.admin_users/admin_groups)",
                 ipc_op_name(req.op));
        send_error(c, (int)req.op, req.id, IPC_ERR_FORBIDDEN, msg);
        ipc_request_free(&req);
        return;
    }
    if (req.op == IPC_OP_HELLO) {
        send_ok(c, IPC_OP_HELLO, req.id,
                json_pack("{s:i,s:s,s:s,s:I,s:b,s:I,s:I}", "protocol", IPC_PROTOCOL_VERSION,
                          "server", "aligwd", "version", ALIGW_VERSION, "uid",
                          (json_int_t)c->peer.uid, "admin", c->peer.admin, "max_line",
                          (json_int_t)srv->max_line, "max_payload", (json_int_t)srv->max_payload));
        ipc_request_free(&req);
        return;
    }
    if (req.op == IPC_OP_WATCH) {
        handle_watch(c, &req);
        ipc_request_free(&req);
        return;
    }
    struct ipc_reply *r = malloc(sizeof(*r));
    if (!r) {
        send_error(c, (int)req.op, req.id, IPC_ERR_INTERNAL, "out of memory");
        ipc_request_free(&req);
        return;
    }
    r->conn = c;
    r->req = req;
    c->refs++;
    c->inflight++;
    if (srv->cb)
        srv->cb(srv, r, &r->req, srv->data);
    else
        ipc_reply_error(r, IPC_ERR_UNAVAILABLE, "no handler for %s", ipc_op_name(req.op));
}

/* Whether the connection's next request may be served now (see the file comment). */
static bool conn_may_serve(const struct ipc_conn *c)
{
    if (c->wq_bytes > IPC_CONN_QUEUE_MAX || c->inflight >= IPC_CONN_INFLIGHT_MAX)
        return false;
    return c->wq_bytes == 0 || c->srv->wq_total <= IPC_TOTAL_QUEUE_MAX;
}

/* Serves data line by line while the bounds allow; returns the bytes used. The caller holds a
 * reference (a handler may close the connection). */
static size_t conn_feed(struct ipc_conn *c, const char *data, size_t n)
{
    struct ipc_server *srv = c->srv;
    size_t off = 0, start = c->wq_bytes;
    if (uv_now(srv->loop) != srv->turn_now) {
        srv->turn_now = uv_now(srv->loop);
        srv->turn_spent = 0;
    }
    c->feeding = true;
    while (off < n && !c->closing && c->srv && conn_may_serve(c) &&
           c->wq_bytes <= start + IPC_TURN_SLICE && srv->turn_spent < IPC_TURN_BUDGET) {
        const char *nl = memchr(data + off, '\n', n - off);
        size_t seg = nl ? (size_t)(nl - (data + off)) + 1 : n - off;
        size_t before = c->wq_bytes;
        ipc_framer_feed(&c->fr, data + off, seg, on_line, c);
        srv->turn_spent += c->wq_bytes > before ? c->wq_bytes - before : 0;
        off += seg;
    }
    c->feeding = false;
    return off;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct ipc_conn *c = s->data;
    if (nread < 0) {
        conn_close(c);
        return;
    }
    if (nread == 0)
        return;
    c->refs++; /* a handler may close the connection under us */
    size_t used = conn_feed(c, buf->base, (size_t)nread);
    if (!c->closing && used < (size_t)nread) {
        /* Over a bound: keep the rest (the read buffer is shared) and stop reading. */
        size_t rest = (size_t)nread - used;
        char *h = malloc(rest);
        if (!h) {
            conn_close(c);
        } else {
            memcpy(h, buf->base + used, rest);
            free(c->held);
            c->held = h;
            c->held_off = 0;
            c->held_len = rest;
        }
    }
    if (!c->closing)
        conn_update_reading(c);
    conn_unref(c);
}

static void on_resume(uv_idle_t *h);

/* Held lines that may be served get their next slice in the next loop turn. */
static void schedule_resume(struct ipc_server *srv)
{
    if (srv->resume_init && !srv->resume_on && !srv->closing &&
        uv_idle_start(&srv->resume, on_resume) == 0)
        srv->resume_on = true;
}

/* Reads while nothing is held and the connection is under its bounds; pauses otherwise. Held
 * lines are served from the next turn on (on_resume) once the bounds allow. */
static void conn_update_reading(struct ipc_conn *c)
{
    if (c->closing || c->close_after_write || c->feeding)
        return;
    if (c->held && conn_may_serve(c))
        schedule_resume(c->srv);
    bool over = c->held != NULL || !conn_may_serve(c);
    if (over && c->reading) {
        uv_read_stop((uv_stream_t *)&c->pipe);
        c->reading = false;
    } else if (!over && !c->reading) {
        if (uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read) == 0)
            c->reading = true;
    }
}

/*
 * One slice of held lines per connection that may be served, round robin from where the last
 * turn stopped, until the turn's answers reach IPC_TURN_BUDGET: a loop turn stays short however
 * many clients pipeline, so a client that sends one request is answered soon.
 */
static void on_resume(uv_idle_t *h)
{
    struct ipc_server *srv = h->data;
    struct ipc_conn *v[IPC_MAX_CONNS + 1];
    size_t n = 0, done = 0;

    uv_idle_stop(&srv->resume);
    srv->resume_on = false;
    for (struct ipc_conn *c = srv->conns; c && n < sizeof(v) / sizeof(v[0]); c = c->next)
        if (c->held && !c->closing && !c->feeding && conn_may_serve(c)) {
            c->refs++;
            v[n++] = c;
        }
    for (size_t k = 0; k < n; k++) {
        struct ipc_conn *c = v[(srv->resume_rr + k) % n];
        if (srv->turn_spent >= IPC_TURN_BUDGET && uv_now(srv->loop) == srv->turn_now) {
            schedule_resume(srv);
            break;
        }
        if (!c->held || c->closing || !conn_may_serve(c))
            continue;
        size_t used = conn_feed(c, c->held + c->held_off, c->held_len);
        done++;
        c->held_off += used;
        c->held_len -= used;
        if (c->held_len == 0) {
            free(c->held);
            c->held = NULL;
            c->held_off = 0;
        }
        if (!c->closing)
            conn_update_reading(c);
    }
    srv->resume_rr += done;
    for (size_t k = 0; k < n; k++)
        conn_unref(v[k]);
}

static void refuse(struct ipc_conn *c, enum ipc_err code, const char *msg)
{
    send_error(c, IPC_OP_COUNT_, NULL, code, msg);
    c->close_after_write = true;
    if (c->wq_bytes == 0)
        conn_close(c);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct ipc_server *srv = server->data;
    if (status < 0) {
        log_warn("ipc: accept on %s failed: %s", srv->path, uv_strerror(status));
        return;
    }
    struct ipc_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    if (uv_pipe_init(srv->loop, &c->pipe, 0) < 0) {
        free(c);
        return;
    }
    c->pipe.data = c;
    c->srv = srv;
    c->refs = 1;
    srv->handles++;
    ipc_framer_init(&c->fr, srv->max_line);
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    srv->st.connections++;
    if (uv_accept(server, (uv_stream_t *)&c->pipe) < 0) {
        conn_close(c);
        return;
    }
    uv_os_fd_t fd;
    struct ucred cred;
    socklen_t cl = sizeof(cred);
    if (uv_fileno((uv_handle_t *)&c->pipe, &fd) < 0 ||
        getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0) {
        log_warn("ipc: cannot read the peer's credentials on %s", srv->path);
        conn_close(c);
        return;
    }
    c->peer.pid = cred.pid;
    c->peer.uid = cred.uid;
    c->peer.gid = cred.gid;
    bool allowed;
    peer_rights(&srv->acc, &c->peer, &allowed);
    char msg[160];
    if (!allowed) {
        srv->st.refused++;
        log_notice("ipc: refused pid %d uid %u gid %u (not in api.allow_users/allow_groups)",
                   (int)cred.pid, (unsigned)cred.uid, (unsigned)cred.gid);
        snprintf(msg, sizeof(msg),
                 "uid %u is not allowed to use aligwd (api.allow_users/allow_groups)",
                 (unsigned)cred.uid);
        refuse(c, IPC_ERR_FORBIDDEN, msg);
        return;
    }
    if (srv->st.connections > IPC_MAX_CONNS) {
        srv->st.refused++;
        snprintf(msg, sizeof(msg), "too many connections (%d)", IPC_MAX_CONNS);
        refuse(c, IPC_ERR_BUSY, msg);
        return;
    }
    srv->st.accepted++;
    log_debug("ipc: connection from pid %d uid %u%s", (int)cred.pid, (unsigned)cred.uid,
              c->peer.admin ? " (admin)" : "");
    conn_update_reading(c);
}

/* ---- replies ---- */

static void reply_finish(struct ipc_reply *r, char *line, size_t n, bool error)
{
    struct ipc_conn *c = r->conn;
    if (!c) {
        count_request(r->srv, (int)r->req.op, error);
        r->done(r->done_arg, line, line ? n : 0);
        free(line);
        ipc_request_free(&r->req);
        free(r);
        return;
    }
    c->inflight--;
    if (!c->closing && c->srv) {
        count_request(c->srv, (int)r->req.op, error);
        if (line) {
            conn_send(c, line, NULL, n);
            line = NULL;
        }
        if (!c->closing)
            conn_update_reading(c);
    }
    free(line);
    ipc_request_free(&r->req);
    free(r);
    conn_unref(c);
}

void ipc_reply_ok(struct ipc_reply *r, json_t *result)
{
    size_t n = 0;
    char *line = NULL;
    if (!r->conn || !r->conn->closing)
        line = ipc_response_ok(r->req.id, result, &n);
    else
        json_decref(result);
    reply_finish(r, line, n, false);
}

static void reply_verror(struct ipc_reply *r, enum ipc_err code, int err, const char *fmt,
                         va_list ap)
{
    char msg[512];
    size_t n = 0;
    char *line = NULL;
    if (!r->conn || !r->conn->closing) {
        int m = vsnprintf(msg, sizeof(msg), fmt, ap);
        if (m < 0)
            m = 0;
        if (err < 0 && (size_t)m < sizeof(msg))
            snprintf(msg + m, sizeof(msg) - (size_t)m, ": %s", aligw_strerror(err));
        line = ipc_response_error(r->req.id, code, msg, &n);
    }
    reply_finish(r, line, n, true);
}

void ipc_reply_error(struct ipc_reply *r, enum ipc_err code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    reply_verror(r, code, 0, fmt, ap);
    va_end(ap);
}

void ipc_reply_errno(struct ipc_reply *r, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    reply_verror(r, ipc_err_from_errno(err), err, fmt, ap);
    va_end(ap);
}

bool ipc_reply_connected(const struct ipc_reply *r)
{
    return !r->conn || !r->conn->closing;
}

static void local_error(struct ipc_server *srv, int op, json_t *id, enum ipc_err code,
                        const char *msg, ipc_local_done done, void *arg)
{
    size_t n = 0;
    char *line = ipc_response_error(id, code, msg, &n);
    count_request(srv, op, true);
    done(arg, line, line ? n : 0);
    free(line);
}

void ipc_local_request(struct ipc_server *srv, const char *device_key, const char *line, size_t len,
                       ipc_local_done done, void *arg)
{
    struct ipc_limits lim = {.max_payload = srv->max_payload};
    struct ipc_request req;
    struct ipc_error err;
    struct timespec ts;
    char msg[128];

    clock_gettime(CLOCK_REALTIME, &ts);
    lim.now_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    if (len > srv->max_line) {
        snprintf(msg, sizeof(msg), "request longer than %zu bytes (api.max_line)", srv->max_line);
        local_error(srv, IPC_OP_COUNT_, NULL, IPC_ERR_LINE_TOO_LONG, msg, done, arg);
        return;
    }
    json_t *root = json_loadb(line, len, 0, NULL);
    int rc = root ? ipc_request_bind_device(root, device_key) : 0;
    char *bound = root && rc == 0 ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    if (rc < 0) {
        local_error(srv, IPC_OP_COUNT_, NULL, rc == -EPERM ? IPC_ERR_FORBIDDEN : IPC_ERR_INTERNAL,
                    rc == -EPERM ? "device: a plugin may only make requests for its own device"
                                 : "out of memory",
                    done, arg);
        return;
    }
    rc = ipc_request_parse(bound ? bound : line, bound ? strlen(bound) : len, &lim, &req, &err);
    free(bound);
    if (rc < 0) {
        local_error(srv, IPC_OP_COUNT_, err.id, err.code, err.message, done, arg);
        ipc_error_free(&err);
        return;
    }
    if (ipc_op_is_admin(req.op) || req.op == IPC_OP_HELLO || req.op == IPC_OP_WATCH) {
        snprintf(msg, sizeof(msg), "%s is not available to plugins", ipc_op_name(req.op));
        local_error(srv, (int)req.op, req.id, IPC_ERR_FORBIDDEN, msg, done, arg);
        ipc_request_free(&req);
        return;
    }
    struct ipc_reply *r = calloc(1, sizeof(*r));
    if (!r) {
        local_error(srv, (int)req.op, req.id, IPC_ERR_INTERNAL, "out of memory", done, arg);
        ipc_request_free(&req);
        return;
    }
    r->req = req;
    r->srv = srv;
    r->done = done;
    r->done_arg = arg;
    if (srv->cb)
        srv->cb(srv, r, &r->req, srv->data);
    else
        ipc_reply_error(r, IPC_ERR_UNAVAILABLE, "no handler for %s", ipc_op_name(req.op));
}

/* ---- events ---- */

int ipc_broadcast(struct ipc_server *srv, enum ipc_event_kind kind, const char *device_key,
                  const char *topic, json_t *event)
{
    struct shared_buf *sb = NULL;
    int delivered = 0;

    for (struct ipc_conn *c = srv->conns, *next; c; c = next) {
        next = c->next;
        if (!c->watching || c->closing ||
            !ipc_watch_matches(&c->watch, (unsigned)kind, device_key, topic))
            continue;
        if (c->wq_bytes > srv->watch_limit ||
            (c->wq_bytes > 0 && srv->wq_total > IPC_TOTAL_QUEUE_MAX)) {
            c->dropped++;
            srv->st.events_dropped++;
            continue;
        }
        if (!sb) {
            if (!json_object_get(event, "event"))
                json_object_set_new(event, "event", json_string(ipc_event_kind_name(kind)));
            size_t n = json_dumpb(event, NULL, 0, JSON_COMPACT);
            if (n == 0 || !(sb = malloc(sizeof(*sb) + n + 1)))
                return -ENOMEM;
            json_dumpb(event, sb->data, n, JSON_COMPACT);
            sb->data[n] = '\n';
            sb->len = n + 1;
            sb->refs = 1; /* ours, until the loop ends */
        }
        if (conn_send(c, NULL, sb, sb->len) == 0) {
            delivered++;
            srv->st.events_sent++;
        }
    }
    if (sb && --sb->refs == 0)
        free(sb);
    return delivered;
}

/* ---- the server ---- */

static void apply_limits(struct ipc_server *srv, const struct config *cfg)
{
    srv->max_payload = cfg->api.max_payload ? cfg->api.max_payload : IPC_DEFAULT_MAX_PAYLOAD;
    srv->max_line = cfg->api.max_line ? cfg->api.max_line : IPC_DEFAULT_MAX_LINE;
}

int ipc_server_init(struct ipc_server **out, uv_loop_t *loop, const struct config *cfg,
                    ipc_request_cb cb, void *data)
{
    struct ipc_server *srv = calloc(1, sizeof(*srv));
    int rc = -ENOMEM;
    *out = NULL;
    if (!srv)
        return -ENOMEM;
    srv->loop = loop;
    srv->cb = cb;
    srv->data = data;
    srv->watch_limit = IPC_DEFAULT_WATCH_LIMIT;
    apply_limits(srv, cfg);
    if (!(srv->path = strdup(cfg->api.socket ? cfg->api.socket : "/run/aligw/aligw.sock")))
        goto fail;
    if (cfg->api.group && !(srv->group = strdup(cfg->api.group)))
        goto fail;
    if ((rc = access_load(&srv->acc, cfg)) < 0)
        goto fail;
    *out = srv;
    return 0;
fail:
    free(srv->path);
    free(srv->group);
    free(srv);
    return rc;
}

int ipc_server_set_access(struct ipc_server *srv, const struct config *cfg)
{
    struct access a;
    int rc = access_load(&a, cfg);
    if (rc < 0)
        return rc;
    access_free(&srv->acc);
    srv->acc = a;
    apply_limits(srv, cfg);
    return 0;
}

void ipc_server_set_watch_limit(struct ipc_server *srv, size_t bytes)
{
    srv->watch_limit = bytes;
}

/* Removes path if it is a socket nobody accepts on. */
static int clear_stale(const char *path)
{
    struct stat st;
    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : -errno;
    if (!S_ISSOCK(st.st_mode)) {
        log_error("ipc: %s exists and is not a socket; not removing it", path);
        return -EEXIST;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strcpy(sa.sun_path, path);
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
    int e = errno;
    close(fd);
    if (rc == 0) {
        log_error("ipc: another process listens on %s (is aligwd already running?)", path);
        return -EADDRINUSE;
    }
    if (e != ECONNREFUSED) {
        log_error("ipc: cannot check the old socket %s: %s", path, strerror(e));
        return -e;
    }
    log_info("ipc: removing stale socket %s", path);
    return unlink(path) < 0 && errno != ENOENT ? -errno : 0;
}

static int activated_fd(void)
{
    int n = sd_listen_fds(0);
    for (int i = 0; i < n; i++)
        if (sd_is_socket_unix(SD_LISTEN_FDS_START + i, SOCK_STREAM, 1, NULL, 0) > 0)
            return SD_LISTEN_FDS_START + i;
    return -1;
}

int ipc_server_start(struct ipc_server *srv)
{
    int rc, fd = activated_fd();

    if ((rc = uv_pipe_init(srv->loop, &srv->listener, 0)) < 0)
        return rc;
    srv->listener_init = true;
    srv->handles++;
    srv->listener.data = srv;
    if ((rc = uv_idle_init(srv->loop, &srv->resume)) < 0)
        return rc;
    srv->resume_init = true;
    srv->handles++;
    srv->resume.data = srv;
    if (fd >= 0) {
        if ((rc = uv_pipe_open(&srv->listener, fd)) < 0) {
            log_error("ipc: cannot use the socket systemd passed (fd %d): %s", fd, uv_strerror(rc));
            return rc;
        }
        log_info("ipc: using the socket passed by systemd (fd %d)", fd);
    } else {
        if (strlen(srv->path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
            log_error("ipc: socket path %s is too long", srv->path);
            return -ENAMETOOLONG;
        }
        if ((rc = clear_stale(srv->path)) < 0)
            return rc;
        if ((rc = uv_pipe_bind(&srv->listener, srv->path)) < 0) {
            log_error("ipc: cannot bind %s: %s", srv->path, uv_strerror(rc));
            return rc;
        }
        srv->created_file = true;
        /* Nobody can connect before listen(), so there is no window with looser rights. */
        if (chmod(srv->path, 0660) < 0) {
            rc = -errno;
            log_errno(LOG_ERR, rc, "ipc: chmod %s", srv->path);
            return rc;
        }
        if (srv->group) {
            gid_t gid;
            if (resolve_gid(srv->group, &gid) < 0) {
                log_error("ipc: api.group: unknown group \"%s\"", srv->group);
                return -EINVAL;
            }
            if (chown(srv->path, (uid_t)-1, gid) < 0) {
                rc = -errno;
                log_errno(LOG_ERR, rc, "ipc: chgrp %s to %s", srv->path, srv->group);
                return rc;
            }
        }
    }
    if ((rc = uv_listen((uv_stream_t *)&srv->listener, 128, on_connection)) < 0) {
        log_error("ipc: cannot listen on %s: %s", srv->path, uv_strerror(rc));
        return rc;
    }
    log_info("ipc: listening on %s", fd >= 0 ? "the systemd socket" : srv->path);
    return 0;
}

static void on_listener_closed(uv_handle_t *h)
{
    struct ipc_server *srv = h->data;
    srv->handles--;
    server_maybe_free(srv);
}

void ipc_server_close(struct ipc_server *srv, void (*cb)(void *data), void *data)
{
    srv->closing = true;
    srv->close_cb = cb;
    srv->close_data = data;
    if (srv->created_file)
        unlink(srv->path);
    if (srv->listener_init)
        uv_close((uv_handle_t *)&srv->listener, on_listener_closed);
    if (srv->resume_init)
        uv_close((uv_handle_t *)&srv->resume, on_listener_closed);
    while (srv->conns)
        conn_close(srv->conns);
    server_maybe_free(srv); /* at once only when nothing was open */
}

void ipc_server_stats(const struct ipc_server *srv, struct ipc_stats *out)
{
    *out = srv->st;
}
