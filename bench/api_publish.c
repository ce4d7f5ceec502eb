/*
 * api_publish: the C producer for bench/forward's aligwd run. It writes `publish` requests
 * (message i goes to device i % N, topic "/${pk}/${dn}/user/update", a JSON payload padded to
 * --payload bytes and sent as a JSON string, qos 1, id first_id + i - offset), the same bytes the
 * Python producer it replaced wrote, and pipelines them: message j goes out on connection j % K, at
 * most --window unanswered per connection, written 256 lines at a time, and every response line is
 * read and counted ("ok":true, or kept as one of the first five errors). The peers aligwd is
 * compared with generate their messages in C; a Python producer would take CPU the gateway then
 * lacks on a small machine, so this one exists to compare like with like.
 *
 * All lines are built in memory and all connections opened before the clock starts. Each
 * connection has a reader thread, which counts the answers and wakes the connection's writer
 * thread when the window opens; both block in the socket calls (five-minute time-outs). Prints
 * one JSON line on stdout: {"t0","t_ok","ok","messages","errors","cpu_s","cpu_build_s"}, where
 * t0 is CLOCK_MONOTONIC (the clock Python's time.monotonic() reads) in seconds just before the
 * first send, t_ok when the last response was read, cpu_s the process's user + system CPU from t0
 * to the end and cpu_build_s what building the lines took. Exits 0 when every message was answered
 * ok, 1 otherwise, 2 on bad arguments or an unreachable socket. --dump writes the request lines to
 * stdout instead.
 *
 * Paced mode, --rate R: message j is written at t0 + j / R (one line at a time, on connection
 * j % K), so the gateway sees a steady R messages/s instead of a burst. --times FILE writes each
 * message's send time (CLOCK_REALTIME, "i seconds" per line, i as in the payload's "seq") for
 * latency figures against the consumer's arrival stamps.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "paho_common.h"

#define CHUNK_LINES 256
#define MAX_ERRORS 5
#define ERROR_MAX_LEN 300
#define READ_BUF (1 << 20)
#define IO_TIMEOUT_S 300

struct conn {
    int fd, idx;
    char *buf; /* the requests, back to back */
    size_t len, cap;
    size_t *ends; /* ends[i] = byte offset where line i starts; ends[n] = len */
    long n, cap_lines;
    long ok;
    int nerr;
    char *errs[MAX_ERRORS]; /* the reader's */
    char werr[160];         /* the writer's, or "" */
    double t_done;
    pthread_mutex_t mu; /* guards got, done, writer_waiting and writer_needs */
    pthread_cond_t cv;
    long got, writer_needs; /* answers read; how many the waiting writer needs */
    int done, writer_waiting;
};

static long window = 8192;
static double rate;    /* messages/s in paced mode, 0 = as fast as the window allows */
static double t_start; /* bench_now_s() at the first send */
static double *times;  /* send time (wall clock) per message, or NULL */
static long nconn_all; /* connections */

static void usage(void)
{
    fprintf(stderr, "usage: api_publish --socket PATH --devices CSV --count N --messages M\n"
                    "       --payload BYTES [--connections K] [--window W] [--first-id ID]\n"
                    "       [--offset I] [--rate R] [--times FILE] [--dump]\n");
    exit(2);
}

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n);
    if (!q) {
        fprintf(stderr, "api_publish: out of memory\n");
        exit(2);
    }
    return q;
}

static void conn_append(struct conn *c, const char *line, size_t n)
{
    if (c->len + n > c->cap) {
        c->cap = (c->len + n) * 2;
        c->buf = xrealloc(c->buf, c->cap);
    }
    if (c->n + 2 > c->cap_lines) {
        c->cap_lines = (c->n + 2) * 2;
        c->ends = xrealloc(c->ends, (size_t)c->cap_lines * sizeof(*c->ends));
    }
    if (c->n == 0)
        c->ends[0] = 0;
    memcpy(c->buf + c->len, line, n);
    c->len += n;
    c->ends[++c->n] = c->len;
}

static void conn_error(struct conn *c, const char *s, size_t n)
{
    if (c->nerr >= MAX_ERRORS)
        return;
    if (n > ERROR_MAX_LEN)
        n = ERROR_MAX_LEN;
    c->errs[c->nerr] = xrealloc(NULL, n + 1);
    memcpy(c->errs[c->nerr], s, n);
    c->errs[c->nerr][n] = '\0';
    c->nerr++;
}

/* The writer thread of a connection: sends the lines CHUNK_LINES at a time (blocking), waiting
 * while that would leave more than `window` unanswered. */
static void *conn_write(void *arg)
{
    struct conn *c = arg;
    long sent = 0;
    while (sent < c->n) {
        long to = sent + CHUNK_LINES < c->n ? sent + CHUNK_LINES : c->n;
        long j = sent * nconn_all + c->idx; /* the message's number */
        if (rate > 0) {
            to = sent + 1;
            bench_sleep_until(t_start + (double)j / rate);
        }
        pthread_mutex_lock(&c->mu);
        while (to - c->got > window && !c->done) {
            c->writer_waiting = 1;
            c->writer_needs = to - window;
            pthread_cond_wait(&c->cv, &c->mu);
        }
        c->writer_waiting = 0;
        int done = c->done;
        pthread_mutex_unlock(&c->mu);
        if (done)
            break;
        size_t pos = c->ends[sent], end = c->ends[to];
        while (pos < end) {
            ssize_t w = send(c->fd, c->buf + pos, end - pos, MSG_NOSIGNAL);
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0) {
                snprintf(c->werr, sizeof(c->werr), "send: %s after %ld requests", strerror(errno),
                         sent);
                return NULL;
            }
            pos += (size_t)w;
        }
        if (times)
            times[j] = bench_wall_s();
        sent = to;
    }
    return NULL;
}

/* One connection: starts its writer, reads and counts the answers until all are in, the peer
 * closes, or an error; then tells the writer to stop. */
static void *conn_run(void *arg)
{
    struct conn *c = arg;
    char *rbuf = xrealloc(NULL, READ_BUF);
    size_t rcap = READ_BUF, rlen = 0;
    long got = 0;
    char msg[128];
    pthread_t writer;
    if (pthread_create(&writer, NULL, conn_write, c) != 0) {
        snprintf(msg, sizeof(msg), "pthread_create failed");
        conn_error(c, msg, strlen(msg));
        c->t_done = bench_now_s();
        free(rbuf);
        return NULL;
    }
    while (got < c->n) {
        if (rlen == rcap) { /* one response longer than the buffer */
            rcap *= 2;
            rbuf = xrealloc(rbuf, rcap);
        }
        ssize_t n = read(c->fd, rbuf + rlen, rcap - rlen);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                snprintf(msg, sizeof(msg), "connection closed after %ld responses", got);
            else
                snprintf(msg, sizeof(msg), "read: %s after %ld responses",
                         errno == EAGAIN ? "timed out" : strerror(errno), got);
            conn_error(c, msg, strlen(msg));
            break;
        }
        rlen += (size_t)n;
        char *s = rbuf, *end = rbuf + rlen, *nl;
        while ((nl = memchr(s, '\n', (size_t)(end - s))) != NULL) {
            got++;
            if (memmem(s, (size_t)(nl - s), "\"ok\":true", 9))
                c->ok++;
            else
                conn_error(c, s, (size_t)(nl - s));
            s = nl + 1;
        }
        rlen = (size_t)(end - s);
        memmove(rbuf, s, rlen);
        pthread_mutex_lock(&c->mu);
        c->got = got;
        if (c->writer_waiting && got >= c->writer_needs)
            pthread_cond_signal(&c->cv);
        pthread_mutex_unlock(&c->mu);
    }
    c->t_done = bench_now_s();
    pthread_mutex_lock(&c->mu);
    c->done = 1;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    shutdown(c->fd, SHUT_RDWR); /* unblocks a writer stuck in send after a failure */
    pthread_join(writer, NULL);
    if (c->werr[0])
        conn_error(c, c->werr, strlen(c->werr));
    free(rbuf);
    return NULL;
}

static int parse_long(const char *v, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi)
        return -1;
    *out = x;
    return 0;
}

static double cpu_now(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void print_json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            printf("\\%c", ch);
        else if (ch < 0x20 || ch == 0x7f)
            printf("\\u%04x", ch);
        else
            putchar(ch);
    }
    putchar('"');
}

int main(int argc, char **argv)
{
    const char *sock_path = NULL, *devfile = NULL, *times_path = NULL;
    long long count = 0, messages = 0, payload_len = -1, nconn = 2, win = 8192, first_id = 1,
              offset = 0;
    int dump = 0;
    bench_prog = "api_publish";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "--dump")) {
            dump = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "api_publish: %s: missing value\n", a);
            usage();
        }
        i++;
        if (!strcmp(a, "--socket"))
            sock_path = v;
        else if (!strcmp(a, "--devices"))
            devfile = v;
        else if (!strcmp(a, "--count"))
            bad = parse_long(v, 1, INT_MAX, &count);
        else if (!strcmp(a, "--messages"))
            bad = parse_long(v, 1, LONG_MAX / 2, &messages);
        else if (!strcmp(a, "--payload"))
            bad = parse_long(v, 0, 1 << 24, &payload_len);
        else if (!strcmp(a, "--connections"))
            bad = parse_long(v, 1, 1024, &nconn);
        else if (!strcmp(a, "--window"))
            bad = parse_long(v, 1, LONG_MAX / 2, &win);
        else if (!strcmp(a, "--first-id"))
            bad = parse_long(v, LLONG_MIN / 4, LLONG_MAX / 4, &first_id);
        else if (!strcmp(a, "--offset"))
            bad = parse_long(v, 0, LLONG_MAX / 4, &offset);
        else if (!strcmp(a, "--times"))
            times_path = v;
        else if (!strcmp(a, "--rate")) {
            char *end;
            rate = strtod(v, &end);
            bad = *end || !(rate > 0 && rate <= 1e7) ? -1 : 0;
        } else {
            fprintf(stderr, "api_publish: unknown option %s\n", a);
            usage();
        }
        if (bad) {
            fprintf(stderr, "api_publish: %s: bad value '%s'\n", a, v);
            usage();
        }
    }
    if (!devfile || count <= 0 || messages <= 0 || payload_len < 0 || (!sock_path && !dump)) {
        fprintf(stderr, "api_publish: --socket, --devices, --count, --messages and --payload are "
                        "required\n");
        usage();
    }
    window = (long)win;
    if (sock_path && strlen(sock_path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        fprintf(stderr, "api_publish: socket path too long: %s\n", sock_path);
        return 2;
    }

    double c_build0 = cpu_now();
    struct bench_device *devs = NULL;
    int ndev = bench_load_devices(devfile, &devs, (int)count);
    if (ndev < count) {
        fprintf(stderr, "api_publish: %s has %d usable devices, %lld wanted\n", devfile,
                ndev < 0 ? 0 : ndev, count);
        return 2;
    }
    char **keys = xrealloc(NULL, (size_t)ndev * sizeof(*keys));
    char **topics = xrealloc(NULL, (size_t)ndev * sizeof(*topics));
    size_t longest = 0;
    for (int d = 0; d < ndev; d++) {
        size_t kl = strlen(devs[d].pk) + strlen(devs[d].dn) + 2;
        keys[d] = xrealloc(NULL, kl);
        snprintf(keys[d], kl, "%s/%s", devs[d].pk, devs[d].dn);
        topics[d] = xrealloc(NULL, kl + 14);
        snprintf(topics[d], kl + 14, "/%s/%s/user/update", devs[d].pk, devs[d].dn);
        longest = kl > longest ? kl : longest;
    }

    /* The request lines: the payload is a JSON text sent as a JSON string, so
     * its quotes are escaped (it holds nothing else that json.dumps would escape). */
    struct conn *conns = calloc((size_t)nconn, sizeof(*conns));
    size_t line_cap = 2 * (size_t)payload_len + 3 * longest + 256;
    char *line = xrealloc(NULL, line_cap);
    for (long long j = 0; j < messages; j++) {
        long long i = offset + j;
        int d = (int)(i % ndev);
        char head[64];
        int hl = snprintf(head, sizeof(head), "{\"seq\":%lld,\"dev\":%d,\"pad\":\"", i, d);
        long long pad = payload_len - hl - 2;
        if (pad < 0)
            pad = 0;
        int n = snprintf(line, line_cap,
                         "{\"id\":%lld,\"op\":\"publish\",\"device\":\"%s\",\"topic\":\"%s\","
                         "\"payload\":\"",
                         first_id + j, keys[d], topics[d]);
        for (const char *h = head; *h; h++) {
            if (*h == '"')
                line[n++] = '\\';
            line[n++] = *h;
        }
        memset(line + n, 'x', (size_t)pad);
        n += (int)pad;
        n += snprintf(line + n, line_cap - (size_t)n, "\\\"}\",\"qos\":1}\n");
        conn_append(&conns[j % nconn], line, (size_t)n);
    }
    free(line);
    double cpu_build = cpu_now() - c_build0;

    if (dump) {
        /* in message order: line j is line j / K of connection j % K */
        for (long long j = 0; j < messages; j++) {
            struct conn *c = &conns[j % nconn];
            long k = (long)(j / nconn);
            fwrite(c->buf + c->ends[k], 1, c->ends[k + 1] - c->ends[k], stdout);
        }
        return 0;
    }

    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, sock_path, strlen(sock_path) + 1);
    for (int k = 0; k < nconn; k++) {
        conns[k].fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (conns[k].fd < 0 || connect(conns[k].fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
            fprintf(stderr, "api_publish: connect %s: %s\n", sock_path, strerror(errno));
            return 2;
        }
        struct timeval tv = {.tv_sec = IO_TIMEOUT_S};
        setsockopt(conns[k].fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(conns[k].fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        pthread_mutex_init(&conns[k].mu, NULL);
        pthread_cond_init(&conns[k].cv, NULL);
    }

    pthread_t *th = calloc((size_t)nconn, sizeof(*th));
    nconn_all = (long)nconn;
    if (times_path)
        times = calloc((size_t)messages, sizeof(*times));
    double c0 = cpu_now();
    double t0 = bench_now_s();
    t_start = t0;
    for (int k = 0; k < nconn; k++)
        conns[k].idx = k;
    for (int k = 0; k < nconn; k++)
        if (pthread_create(&th[k], NULL, conn_run, &conns[k]) != 0) {
            fprintf(stderr, "api_publish: pthread_create failed\n");
            return 2;
        }
    long long ok = 0;
    double t_ok = t0;
    for (int k = 0; k < nconn; k++) {
        pthread_join(th[k], NULL);
        ok += conns[k].ok;
        t_ok = conns[k].t_done > t_ok ? conns[k].t_done : t_ok;
        close(conns[k].fd);
    }
    double cpu = cpu_now() - c0;
    if (times_path && bench_write_times(times_path, times, (long)messages, (long)offset) < 0)
        fprintf(stderr, "api_publish: cannot write %s: %s\n", times_path, strerror(errno));

    printf("{\"t0\":%.6f,\"t_ok\":%.6f,\"ok\":%lld,\"messages\":%lld,\"errors\":[", t0, t_ok, ok,
           messages);
    int shown = 0;
    for (int k = 0; k < nconn; k++)
        for (int e = 0; e < conns[k].nerr && shown < MAX_ERRORS; e++, shown++) {
            if (shown)
                putchar(',');
            print_json_string(conns[k].errs[e]);
        }
    printf("],\"cpu_s\":%.3f,\"cpu_build_s\":%.3f}\n", cpu, cpu_build);
    fflush(stdout);
    return ok == messages ? 0 : 1;
}
