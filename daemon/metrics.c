/*
 * metrics: the Prometheus endpoint (see metrics.h). libmicrohttpd parses HTTP and keeps the
 * connections; it runs in its external epoll mode (no thread of its own): the loop polls MHD's
 * epoll descriptor and calls MHD_run() when it is readable or when MHD's timeout (idle
 * connections) is due. The listening socket is made here, so a Unix socket path works like a
 * TCP address. Every scrape renders the whole text afresh from the registry, the outbox, the API
 * and the process (/proc/self); nothing is kept between scrapes.
 */
#include "metrics.h"

#include "api.h"
#include "devices.h"
#include "errors.h"
#include "ipc.h"
#include "log.h"
#include "ota.h"
#include "outbox.h"
#include "plugins.h"
#include "session.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#define MAX_CONNECTIONS 16
#define CONNECTION_TIMEOUT_S 10

static struct {
    uv_loop_t *loop;
    const struct config *cfg;
    struct outbox *ob;
    struct MHD_Daemon *mhd;
    int listen_fd;
    char *unix_path; /* unlinked at close */
    uv_poll_t poll;
    uv_timer_t timer;
    bool running;
} X = {.listen_fd = -1};

/* ---- the text ------------------------------------------------------------------------------ */

struct text {
    char *p;
    size_t len, cap;
    bool oom;
};

static void add(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add(struct text *t, const char *fmt, ...)
{
    va_list ap;
    for (int tries = 0; tries < 2 && !t->oom; tries++) {
        va_start(ap, fmt);
        int n = vsnprintf(t->p ? t->p + t->len : NULL, t->p ? t->cap - t->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->oom = true;
            return;
        }
        if (t->p && t->len + (size_t)n < t->cap) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap ? t->cap : 16384;
        while (cap <= t->len + (size_t)n)
            cap *= 2;
        char *np = realloc(t->p, cap);
        if (!np) {
            t->oom = true;
            return;
        }
        t->p = np;
        t->cap = cap;
    }
}

static void family(struct text *t, const char *name, const char *type, const char *help)
{
    add(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void sample_u(struct text *t, const char *name, uint64_t v)
{
    add(t, "%s %llu\n", name, (unsigned long long)v);
}

/* A label value with \, " and newline escaped as the text format wants. */
static void add_label_value(struct text *t, const char *s, size_t n)
{
    for (size_t i = 0; i < n && !t->oom; i++) {
        char c = s[i];
        if (c == '\\')
            add(t, "\\\\");
        else if (c == '"')
            add(t, "\\\"");
        else if (c == '\n')
            add(t, "\\n");
        else
            add(t, "%c", c);
    }
}

/* ---- the process --------------------------------------------------------------------------- */

static double process_start_time(void)
{
    char buf[1024];
    FILE *f = fopen("/proc/self/stat", "r");
    size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
    if (f)
        fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    unsigned long long start_ticks = 0, btime = 0;
    /* After ") ": state is field 3; starttime is field 22. */
    for (int field = 2; p && field < 22; field++)
        p = strchr(p + 1, ' ');
    if (!p || sscanf(p + 1, "%llu", &start_ticks) != 1)
        return 0;
    f = fopen("/proc/stat", "r");
    while (f && fgets(buf, sizeof(buf), f))
        if (sscanf(buf, "btime %llu", &btime) == 1)
            break;
    if (f)
        fclose(f);
    long hz = sysconf(_SC_CLK_TCK);
    return (double)btime + (double)start_ticks / (double)(hz > 0 ? hz : 100);
}

static void render_process(struct text *t)
{
    struct rusage ru;
    long page = sysconf(_SC_PAGESIZE);
    unsigned long long vm_pages = 0, rss_pages = 0;
    FILE *f;

    if (getrusage(RUSAGE_SELF, &ru) == 0) {
        double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                     (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
        family(t, "process_cpu_seconds_total", "counter",
               "Total user and system CPU time spent in seconds.");
        add(t, "process_cpu_seconds_total %.6f\n", cpu);
    }
    if ((f = fopen("/proc/self/statm", "r"))) {
        if (fscanf(f, "%llu %llu", &vm_pages, &rss_pages) == 2) {
            family(t, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.");
            sample_u(t, "process_virtual_memory_bytes", vm_pages * (unsigned long long)page);
            family(t, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
            sample_u(t, "process_resident_memory_bytes", rss_pages * (unsigned long long)page);
        }
        fclose(f);
    }
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        uint64_t n = 0;
        for (struct dirent *e; (e = readdir(d));)
            if (e->d_name[0] != '.')
                n++;
        closedir(d);
        family(t, "process_open_fds", "gauge", "Number of open file descriptors.");
        sample_u(t, "process_open_fds", n - 1); /* not counting the one reading the directory */
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        family(t, "process_max_fds", "gauge", "Maximum number of open file descriptors.");
        sample_u(t, "process_max_fds", (uint64_t)rl.rlim_cur);
    }
    double start = process_start_time();
    if (start > 0) {
        family(t, "process_start_time_seconds", "gauge",
               "Start time of the process since unix epoch in seconds.");
        add(t, "process_start_time_seconds %.2f\n", start);
    }
}

/* ---- the gateway --------------------------------------------------------------------------- */

static void counter(struct text *t, const char *name, const char *help, uint64_t v)
{
    family(t, name, "counter", help);
    sample_u(t, name, v);
}

static void gauge(struct text *t, const char *name, const char *help, uint64_t v)
{
    family(t, name, "gauge", help);
    sample_u(t, name, v);
}

static void ota_state_line(void *arg, const char *state, size_t n)
{
    add(arg, "aligw_ota_jobs{state=\"%s\"} %zu\n", state, n);
}

static void render_gateway(struct text *t)
{
    struct device_totals dt;
    struct outbox_stats os = {0};
    struct ipc_stats is;
    struct plugins_stats ps;

    devices_get_totals(&dt);
    if (X.ob)
        outbox_total_stats(X.ob, &os);
    api_get_stats(&is, &ps);

    family(t, "aligw_build_info", "gauge", "aligwd's version.");
    add(t, "aligw_build_info{version=\"%s\"} 1\n", ALIGW_VERSION);
    family(t, "aligw_devices", "gauge", "Configured devices by session state.");
    for (int s = 0; s < DEV_STATE_COUNT; s++)
        add(t, "aligw_devices{state=\"%s\"} %zu\n", device_state_name((enum device_state)s),
            dt.by_state[s]);
    struct session_shard_info sv[64];
    size_t ns = session_layer_shards(sv, 64);
    unsigned restarts = 0;
    for (size_t i = 0; i < ns && i < 64; i++)
        restarts += sv[i].restarts;
    family(t, "aligw_session_shards", "gauge", "Session shard processes (0: sessions in aligwd).");
    add(t, "aligw_session_shards %zu\n", ns);
    counter(t, "aligw_session_shard_restarts_total", "Session shards started again after an exit.",
            restarts);
    counter(t, "aligw_connects_total", "Sessions that came online.", dt.c.connects);
    counter(t, "aligw_disconnects_total", "Sessions lost or closed after being online.",
            dt.c.disconnects);
    counter(t, "aligw_kicks_total", "Sessions taken over by another login of the same device.",
            dt.c.kicks);
    counter(t, "aligw_auth_refusals_total", "Logins the platform refused for their credentials.",
            dt.c.auth_failures);
    counter(t, "aligw_ack_timeouts_total",
            "Sessions reopened because no PUBACK came within cloud.ack_timeout_ms.",
            dt.c.ack_timeouts);
    counter(t, "aligw_subscriptions_refused_total", "Subscriptions the platform refused.",
            dt.c.sub_refused);
    counter(t, "aligw_messages_accepted_total",
            "Uplink messages committed to the outbox (producers told accepted).", os.accepted);
    counter(t, "aligw_messages_forwarded_total",
            "Uplink messages handed to a device's session (resends count again).", dt.c.msgs_sent);
    counter(t, "aligw_messages_acked_total", "Uplink messages the platform acknowledged.",
            dt.c.msgs_out);
    counter(t, "aligw_messages_received_total", "Downlink messages received from the platform.",
            dt.c.msgs_in);
    counter(t, "aligw_messages_dropped_total",
            "Queued messages deleted by the store's cap (drop-oldest), since the store was made.",
            os.dropped);
    counter(t, "aligw_messages_expired_total",
            "Queued messages deleted by the store's TTL, since the store was made.", os.expired);
    gauge(t, "aligw_outbox_messages", "Messages queued in the outbox.", os.count);
    gauge(t, "aligw_outbox_bytes", "Topic and payload bytes queued in the outbox.", os.bytes);
    family(t, "aligw_outbox_oldest_age_seconds", "gauge",
           "Age of the oldest queued message (0 when the outbox is empty).");
    double age = 0;
    if (os.oldest_ms > 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        age =
            ((double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6 - (double)os.oldest_ms) / 1000.0;
        if (age < 0)
            age = 0;
    }
    add(t, "aligw_outbox_oldest_age_seconds %.3f\n", age);
    gauge(t, "aligw_outbox_full", "1 while the disk is full and appends are refused.",
          os.full ? 1 : 0);
    gauge(t, "aligw_inflight_messages", "Uplink messages sent and not yet acknowledged.",
          dt.inflight);

    gauge(t, "aligw_api_connections", "Open connections to the local API.", is.connections);
    gauge(t, "aligw_api_watchers", "API connections following events.", is.watchers);
    family(t, "aligw_api_connections_total", "counter",
           "Connections to the local API, accepted or refused (not allowed).");
    add(t, "aligw_api_connections_total{result=\"accepted\"} %llu\n",
        (unsigned long long)is.accepted);
    add(t, "aligw_api_connections_total{result=\"refused\"} %llu\n",
        (unsigned long long)is.refused);
    family(t, "aligw_api_requests_total", "counter",
           "Requests answered by the local API, by op and result (op \"invalid\": not a valid "
           "request).");
    for (int op = 0; op <= IPC_OP_COUNT_; op++)
        for (int err = 0; err < 2; err++)
            add(t, "aligw_api_requests_total{op=\"%s\",result=\"%s\"} %llu\n",
                op == IPC_OP_COUNT_ ? "invalid" : ipc_op_name((enum ipc_op)op),
                err ? "error" : "ok", (unsigned long long)is.by_op[op][err]);
    family(t, "aligw_api_events_total", "counter",
           "Events sent to API watchers, or dropped for a slow watcher.");
    add(t, "aligw_api_events_total{result=\"sent\"} %llu\n", (unsigned long long)is.events_sent);
    add(t, "aligw_api_events_total{result=\"dropped\"} %llu\n",
        (unsigned long long)is.events_dropped);
    gauge(t, "aligw_plugin_uplinks_queued", "Plugin uplinks waiting for the loop.", ps.queued);
    family(t, "aligw_plugin_uplinks_total", "counter",
           "Plugin uplinks by outcome: delivered to the outbox, refused (queue full), failed.");
    add(t, "aligw_plugin_uplinks_total{result=\"delivered\"} %llu\n", ps.delivered);
    add(t, "aligw_plugin_uplinks_total{result=\"rejected_full\"} %llu\n", ps.rejected_full);
    add(t, "aligw_plugin_uplinks_total{result=\"error\"} %llu\n", ps.sink_errors);
    counter(t, "aligw_plugin_restarts_total",
            "Plugin hosts restarted after a crash, an exit or a missed heartbeat.", ps.restarts);
    family(t, "aligw_ota_jobs", "gauge", "Firmware upgrade jobs by state.");
    ota_count_by_state(ota_state_line, t);
}

/* ---- per device ---------------------------------------------------------------------------- */

struct devrow {
    const char *key;
    size_t pk_len;
    enum device_state state;
    int inflight;
    struct device_counters c;
    struct outbox_stats os;
};

struct devrows {
    struct devrow *v;
    size_t n, cap;
    bool oom;
};

static void collect_row(struct device *d, void *arg)
{
    struct devrows *rows = arg;
    if (rows->n == rows->cap) {
        size_t cap = rows->cap ? rows->cap * 2 : 256;
        struct devrow *v = realloc(rows->v, cap * sizeof(*v));
        if (!v) {
            rows->oom = true;
            return;
        }
        rows->v = v;
        rows->cap = cap;
    }
    struct devrow *r = &rows->v[rows->n++];
    r->key = device_key(d);
    r->pk_len = strcspn(r->key, "/");
    r->state = device_state(d);
    device_get_counters(d, &r->c, &r->inflight);
    if (X.ob)
        outbox_device_counts(X.ob, r->key, &r->os);
    else
        memset(&r->os, 0, sizeof(r->os));
}

enum dev_series {
    DS_ONLINE,
    DS_QUEUED,
    DS_QUEUED_BYTES,
    DS_INFLIGHT,
    DS_ACCEPTED,
    DS_FORWARDED,
    DS_ACKED,
    DS_RECEIVED,
    DS_DROPPED,
    DS_EXPIRED,
    DS_CONNECTS,
    DS_DISCONNECTS,
    DS_KICKS,
    DS_AUTH,
    DS_COUNT_
};

static const struct {
    const char *name, *type, *help;
} dev_series[DS_COUNT_] = {
    [DS_ONLINE] = {"aligw_device_online", "gauge", "1 when the device's session is online."},
    [DS_QUEUED] = {"aligw_device_outbox_messages", "gauge", "Messages queued for the device."},
    [DS_QUEUED_BYTES] = {"aligw_device_outbox_bytes", "gauge", "Bytes queued for the device."},
    [DS_INFLIGHT] = {"aligw_device_inflight_messages", "gauge",
                     "The device's messages sent and not yet acknowledged."},
    [DS_ACCEPTED] = {"aligw_device_messages_accepted_total", "counter",
                     "The device's uplink messages committed to the outbox."},
    [DS_FORWARDED] = {"aligw_device_messages_forwarded_total", "counter",
                      "The device's uplink messages handed to its session."},
    [DS_ACKED] = {"aligw_device_messages_acked_total", "counter",
                  "The device's uplink messages the platform acknowledged."},
    [DS_RECEIVED] = {"aligw_device_messages_received_total", "counter",
                     "Downlink messages received for the device."},
    [DS_DROPPED] = {"aligw_device_messages_dropped_total", "counter",
                    "The device's queued messages deleted by a cap."},
    [DS_EXPIRED] = {"aligw_device_messages_expired_total", "counter",
                    "The device's queued messages deleted by the TTL."},
    [DS_CONNECTS] = {"aligw_device_connects_total", "counter",
                     "Times the device's session came online."},
    [DS_DISCONNECTS] = {"aligw_device_disconnects_total", "counter",
                        "Times the device's session was lost or closed."},
    [DS_KICKS] = {"aligw_device_kicks_total", "counter",
                  "Times another login of the device took its session."},
    [DS_AUTH] = {"aligw_device_auth_refusals_total", "counter",
                 "Logins of the device refused for their credentials."},
};

static uint64_t dev_value(const struct devrow *r, enum dev_series s)
{
    switch (s) {
    case DS_ONLINE:
        return r->state == DEV_ONLINE;
    case DS_QUEUED:
        return r->os.count;
    case DS_QUEUED_BYTES:
        return r->os.bytes;
    case DS_INFLIGHT:
        return r->inflight > 0 ? (uint64_t)r->inflight : 0;
    case DS_ACCEPTED:
        return r->os.accepted;
    case DS_FORWARDED:
        return r->c.msgs_sent;
    case DS_ACKED:
        return r->c.msgs_out;
    case DS_RECEIVED:
        return r->c.msgs_in;
    case DS_DROPPED:
        return r->os.dropped;
    case DS_EXPIRED:
        return r->os.expired;
    case DS_CONNECTS:
        return r->c.connects;
    case DS_DISCONNECTS:
        return r->c.disconnects;
    case DS_KICKS:
        return r->c.kicks;
    case DS_AUTH:
        return r->c.auth_failures;
    case DS_COUNT_:
        break;
    }
    return 0;
}

static void render_devices(struct text *t)
{
    struct devrows rows = {0};
    devices_foreach(collect_row, &rows);
    if (rows.oom)
        t->oom = true;
    for (int s = 0; s < DS_COUNT_ && !t->oom; s++) {
        family(t, dev_series[s].name, dev_series[s].type, dev_series[s].help);
        for (size_t i = 0; i < rows.n && !t->oom; i++) {
            const struct devrow *r = &rows.v[i];
            add(t, "%s{product_key=\"", dev_series[s].name);
            add_label_value(t, r->key, r->pk_len);
            add(t, "\",device_name=\"");
            add_label_value(t, r->key + r->pk_len + 1, strlen(r->key + r->pk_len + 1));
            add(t, "\"} %llu\n", (unsigned long long)dev_value(r, (enum dev_series)s));
        }
    }
    free(rows.v);
}

int metrics_render(char **out, size_t *len)
{
    struct text t = {0};
    render_gateway(&t);
    if (X.cfg && X.cfg->metrics.per_device)
        render_devices(&t);
    render_process(&t);
    if (t.oom || !t.p) {
        free(t.p);
        return -ENOMEM;
    }
    *out = t.p;
    *len = t.len;
    return 0;
}

/* ---- HTTP ---------------------------------------------------------------------------------- */

static enum MHD_Result respond_text(struct MHD_Connection *conn, unsigned status, const char *text)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    enum MHD_Result r = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return r;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return respond_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET /metrics is served\n");
    if (strcmp(url, "/metrics") != 0)
        return respond_text(conn, MHD_HTTP_NOT_FOUND, "not found: the metrics are at /metrics\n");

    char *text;
    size_t len;
    if (metrics_render(&text, &len) < 0)
        return respond_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8");
    enum MHD_Result r = MHD_queue_response(conn, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return r;
}

static void mhd_log(void *cls, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n && msg[n - 1] == '\n')
        msg[--n] = '\0';
    log_debug("metrics: %s", msg);
}

static void run_mhd(void)
{
    MHD_UNSIGNED_LONG_LONG ms;
    if (!X.mhd)
        return;
    MHD_run(X.mhd);
    if (MHD_get_timeout(X.mhd, &ms) == MHD_YES)
        uv_timer_start(&X.timer, (uv_timer_cb)run_mhd, ms + 1, 0);
    else
        uv_timer_stop(&X.timer);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    run_mhd();
}

/* A listening socket for spec (validated by the config). Returns the fd or a negative errno. */
static int open_listener(const char *spec)
{
    int fd, rc;
    if (spec[0] == '/') {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        struct stat st;
        if (strlen(spec) >= sizeof(sa.sun_path))
            return -ENAMETOOLONG;
        strcpy(sa.sun_path, spec);
        if (lstat(spec, &st) == 0 && S_ISSOCK(st.st_mode))
            unlink(spec); /* left by a daemon that did not stop in order */
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return -errno;
        if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || chmod(spec, 0660) < 0 ||
            listen(fd, 64) < 0) {
            rc = -errno;
            close(fd);
            return rc;
        }
        X.unix_path = strdup(spec);
        return fd;
    }

    char host[256];
    const char *colon = strrchr(spec, ':');
    size_t hl = (size_t)(colon - spec);
    if (hl >= sizeof(host))
        return -EINVAL;
    memcpy(host, spec, hl);
    host[hl] = '\0';
    char *h = host;
    if (h[0] == '[') { /* [v6] */
        h++;
        h[strlen(h) - 1] = '\0';
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    if ((rc = getaddrinfo(*h ? h : NULL, colon + 1, &hints, &ai)) != 0)
        return rc == EAI_SYSTEM ? -errno : -EADDRNOTAVAIL;
    rc = -EADDRNOTAVAIL;
    fd = -1;
    for (struct addrinfo *a = ai; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            rc = -errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 64) == 0)
            break;
        rc = -errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    return fd >= 0 ? fd : rc;
}

int metrics_start(uv_loop_t *loop, const struct config *cfg, struct outbox *ob)
{
    int rc;
    X.loop = loop;
    X.cfg = cfg;
    X.ob = ob;
    if (!cfg->metrics.listen)
        return 0;
    X.listen_fd = open_listener(cfg->metrics.listen);
    if (X.listen_fd < 0) {
        rc = X.listen_fd;
        X.listen_fd = -1;
        log_errno(LOG_ERR, rc, "metrics: cannot listen on %s", cfg->metrics.listen);
        return rc;
    }
    X.mhd = MHD_start_daemon(MHD_USE_EPOLL | MHD_USE_ERROR_LOG, 0, NULL, NULL, on_request, NULL,
                             MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, MHD_OPTION_LISTEN_SOCKET,
                             X.listen_fd, MHD_OPTION_CONNECTION_LIMIT, (unsigned)MAX_CONNECTIONS,
                             MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)CONNECTION_TIMEOUT_S,
                             MHD_OPTION_END);
    if (X.mhd)
        X.listen_fd = -1; /* MHD_stop_daemon() closes it */
    const union MHD_DaemonInfo *info =
        X.mhd ? MHD_get_daemon_info(X.mhd, MHD_DAEMON_INFO_EPOLL_FD) : NULL;
    if (!info) {
        log_error("metrics: libmicrohttpd did not start on %s", cfg->metrics.listen);
        metrics_close();
        return -EIO;
    }
    uv_timer_init(loop, &X.timer);
    if ((rc = uv_poll_init(loop, &X.poll, info->epoll_fd)) < 0) {
        uv_close((uv_handle_t *)&X.timer, NULL);
        log_errno(LOG_ERR, rc, "metrics: cannot poll");
        metrics_close();
        return rc;
    }
    X.running = true;
    uv_poll_start(&X.poll, UV_READABLE, on_poll);
    log_notice("metrics: serving /metrics on %s%s", cfg->metrics.listen,
               cfg->metrics.per_device ? " (per device)" : "");
    return 0;
}

void metrics_apply_config(const struct config *cfg)
{
    X.cfg = cfg; /* a changed listen is named by the reload as needing a restart */
}

void metrics_close(void)
{
    if (X.running) {
        uv_poll_stop(&X.poll);
        uv_close((uv_handle_t *)&X.poll, NULL);
        uv_close((uv_handle_t *)&X.timer, NULL);
        X.running = false;
    }
    if (X.mhd) {
        MHD_stop_daemon(X.mhd);
        X.mhd = NULL;
    }
    if (X.listen_fd >= 0) { /* MHD did not start */
        close(X.listen_fd);
        X.listen_fd = -1;
    }
    if (X.unix_path) {
        unlink(X.unix_path);
        free(X.unix_path);
        X.unix_path = NULL;
    }
    X.cfg = NULL;
    X.ob = NULL;
}
