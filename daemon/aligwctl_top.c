/*
 * aligwctl health and aligwctl top. health asks aligwd for its status once and judges it: the
 * daemon answers, its store takes messages (the disk is not full) and at least health.min_online
 * of the devices are online; exit 0 healthy, 1 unhealthy, 3 not running, 4 access refused (the
 * container's HEALTHCHECK and systemd/monitoring checks use it). A damaged outbox counts as
 * not writable. top is a live view in plain
 * ANSI (no curses): every interval it asks for the status and the device list on one
 * connection and redraws devices by state, message rates from the counters' differences, the
 * queue, the busiest devices and the troubled ones; --once prints one frame (two samples one
 * interval apart, so the rates are real) without escape codes, for scripts.
 */
#include "aligwctl.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

static json_t *request(const char *op, int *code)
{
    return ctl_call(json_pack("{s:s}", "op", op), code);
}

static int parse_share(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || v < 0 || v > 1) {
        fprintf(stderr, "aligwctl: --min-online must be a share from 0 to 1, got '%s'\n", s);
        return EXIT_USAGE;
    }
    *out = v;
    return 0;
}

int ctl_health(int argc, char **argv)
{
    double min_online = -1;
    int code;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--min-online") && i + 1 < argc) {
            if ((code = parse_share(argv[++i], &min_online)) != 0)
                return code;
        } else {
            fprintf(stderr, "aligwctl: health: unknown argument '%s'\nTry 'aligwctl --help'.\n",
                    argv[i]);
            return EXIT_USAGE;
        }
    }
    if ((code = ctl_connect()) != EXIT_OK)
        return code;
    bool json_out = ctl_json;
    ctl_json = false; /* the verdict is printed, not the daemon's line */
    json_t *res = request("status", &code);
    ctl_json = json_out;
    if (!res)
        return code == EXIT_DENIED ? code : EXIT_FAILED;
    json_t *r = json_object_get(res, "result");
    if (min_online < 0)
        min_online = json_number_value(json_object_get(json_object_get(r, "health"), "min_online"));
    json_int_t total = ctl_geti(r, "devices"), online = ctl_geti(r, "online");
    json_t *q = json_object_get(r, "queue");
    /* full: the disk is; damaged: SQLite found the file damaged (the daemon is stopping) */
    bool full =
        json_is_true(json_object_get(q, "full")) || json_is_true(json_object_get(q, "damaged"));
    double share = total ? (double)online / (double)total : 1.0;
    bool ok = !full && share + 1e-9 >= min_online;
    if (ctl_json) {
        json_t *o = json_pack("{s:b,s:I,s:I,s:f,s:b}", "healthy", ok, "online", online, "devices",
                              total, "min_online", min_online, "store_writable", !full);
        char *s = json_dumps(o, JSON_COMPACT);
        puts(s);
        free(s);
        json_decref(o);
    } else {
        printf("%s: %lld/%lld devices online (%.0f%%, need %.0f%%), store %s\n",
               ok ? "healthy" : "unhealthy", (long long)online, (long long)total, share * 100,
               min_online * 100, full ? "FULL (appends refused)" : "writable");
    }
    json_decref(res);
    return ok ? EXIT_OK : EXIT_FAILED;
}

/* ---- top ----------------------------------------------------------------------------------- */

struct prev {
    char *key;
    json_int_t out, in;
};

struct sample {
    double at_ms;
    json_t *status, *devices; /* results */
};

struct row {
    json_t *d;
    double out_rate, in_rate;
};

static volatile sig_atomic_t top_stop;
static void on_stop(int s)
{
    top_stop = 1;
}

static int cmp_prev(const void *a, const void *b)
{
    return strcmp(((const struct prev *)a)->key, ((const struct prev *)b)->key);
}

static int cmp_busy(const void *a, const void *b)
{
    const struct row *x = a, *y = b;
    double dx = x->out_rate + x->in_rate, dy = y->out_rate + y->in_rate;
    if (dx != dy)
        return dx < dy ? 1 : -1;
    json_int_t qx = ctl_geti(x->d, "queued"), qy = ctl_geti(y->d, "queued");
    return qx < qy ? 1 : qx > qy ? -1 : 0;
}

static bool troubled(json_t *d)
{
    const char *st = json_string_value(json_object_get(d, "state"));
    return !st || strcmp(st, "online") != 0 || json_object_get(d, "field_error") ||
           ctl_geti(d, "dropped") + ctl_geti(d, "expired") > 0;
}

static int fetch(struct sample *s, int *code)
{
    json_t *a = request("status", code);
    if (!a)
        return -1;
    json_t *b = request("devices", code);
    if (!b) {
        json_decref(a);
        return -1;
    }
    s->at_ms = ctl_now_ms();
    s->status = json_incref(json_object_get(a, "result"));
    s->devices = json_incref(json_object_get(b, "result"));
    json_decref(a);
    json_decref(b);
    return 0;
}

static void sample_free(struct sample *s)
{
    json_decref(s->status);
    json_decref(s->devices);
    memset(s, 0, sizeof(*s));
}

static double rate(json_t *now, json_t *before, const char *k, double dt_s)
{
    if (!before || dt_s <= 0)
        return 0;
    double d = (double)(ctl_geti(now, k) - ctl_geti(before, k));
    return d > 0 ? d / dt_s : 0;
}

static int term_cols(void)
{
    struct winsize ws;
    if (isatty(STDOUT_FILENO) && ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
        return ws.ws_col;
    return 100;
}

/* One frame from cur, with rates against prev (NULL: no rates yet). */
static void draw(const struct sample *cur, const struct sample *prev, struct prev *pv, size_t npv,
                 bool ansi)
{
    json_t *st = cur->status, *arr = json_object_get(cur->devices, "devices");
    json_t *m = json_object_get(st, "messages"),
           *pm = prev ? json_object_get(prev->status, "messages") : NULL;
    json_t *q = json_object_get(st, "queue");
    double dt = prev ? (cur->at_ms - prev->at_ms) / 1000 : 0;
    char up[16], bytes[16], oldest[16];
    int rows = ansi ? ctl_term_rows() : 0, cols = term_cols();
    int w = cols > 100 ? 40 : cols > 70 ? cols - 60 : 12;

    if (ansi)
        printf("\033[H\033[2J");
    ctl_fmt_age(up, sizeof(up), (double)ctl_geti(st, "uptime_s"));
    printf("aligwd %s  up %s  devices %lld/%lld online%s\n",
           json_string_value(json_object_get(st, "version")) ?: "?", up,
           (long long)ctl_geti(st, "online"), (long long)ctl_geti(st, "devices"),
           ansi ? "  (q quits)" : "");
    const char *k;
    json_t *v;
    printf("states:");
    json_object_foreach(json_object_get(st, "states"), k, v)
        printf("  %s %lld", k, (long long)json_integer_value(v));
    printf("\n");
    if (prev)
        printf("msg/s: in %.1f  accepted %.1f  out (acked) %.1f  in flight %lld\n",
               rate(m, pm, "received", dt), rate(m, pm, "accepted", dt), rate(m, pm, "acked", dt),
               (long long)ctl_geti(m, "inflight"));
    else
        printf("msg/s: (measuring)\n");
    ctl_fmt_bytes(bytes, sizeof(bytes), (double)ctl_geti(q, "bytes"));
    json_int_t o = ctl_geti(q, "oldest_ms");
    ctl_fmt_age(oldest, sizeof(oldest), o > 0 ? (ctl_now_ms() - (double)o) / 1000 : -1);
    printf("queue: %lld messages, %s, oldest %s, dropped %lld, expired %lld%s\n",
           (long long)ctl_geti(q, "queued"), bytes, oldest, (long long)ctl_geti(q, "dropped"),
           (long long)ctl_geti(q, "expired"),
           json_is_true(json_object_get(q, "full")) ? "  STORE FULL" : "");

    size_t n = json_array_size(arr);
    struct row *r = calloc(n ? n : 1, sizeof(*r));
    size_t nt = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *d = json_array_get(arr, i);
        struct prev key = {.key = (char *)json_string_value(json_object_get(d, "device"))};
        struct prev *p = key.key && pv ? bsearch(&key, pv, npv, sizeof(*pv), cmp_prev) : NULL;
        r[i].d = d;
        if (p && dt > 0) {
            double dout = (double)(ctl_geti(d, "messages_out") - p->out);
            double din = (double)(ctl_geti(d, "messages_in") - p->in);
            r[i].out_rate = dout > 0 ? dout / dt : 0;
            r[i].in_rate = din > 0 ? din / dt : 0;
        }
        if (troubled(d))
            nt++;
    }
    /* Room: the busiest get half of what is left, the troubled the rest. */
    int room = rows ? rows - 9 : 20;
    int busy_n = room / 2 > 3 ? room / 2 : 3, trouble_n = room - busy_n > 3 ? room - busy_n : 3;
    qsort(r, n, sizeof(*r), cmp_busy);
    printf("\nBUSIEST\n%-*s  %-12s %8s %8s %8s\n", w, "DEVICE", "STATE", "OUT/s", "IN/s", "QUEUED");
    for (size_t i = 0; i < n && (int)i < busy_n; i++)
        printf("%-*.*s  %-12.12s %8.1f %8.1f %8lld\n", w, w,
               json_string_value(json_object_get(r[i].d, "device")),
               json_string_value(json_object_get(r[i].d, "state")) ?: "?", r[i].out_rate,
               r[i].in_rate, (long long)ctl_geti(r[i].d, "queued"));
    printf("\nTROUBLED (%zu)\n%-*s  %-12s %6s  %s\n", nt, w, "DEVICE", "STATE", "SINCE", "REASON");
    int shown = 0;
    for (size_t i = 0; i < n && shown < trouble_n; i++) {
        json_t *d = r[i].d;
        if (!troubled(d))
            continue;
        char since[16];
        json_int_t s = ctl_geti(d, "since_ms");
        ctl_fmt_age(since, sizeof(since), s > 0 ? (ctl_now_ms() - (double)s) / 1000 : -1);
        const char *why = json_string_value(json_object_get(d, "last_error"));
        if (!why)
            why = json_string_value(json_object_get(d, "field_error"));
        printf("%-*.*s  %-12.12s %6s  %.*s\n", w, w,
               json_string_value(json_object_get(d, "device")),
               json_string_value(json_object_get(d, "state")) ?: "?", since,
               cols > w + 24 ? cols - w - 24 : 20, why ? why : "");
        shown++;
    }
    if ((size_t)shown < nt)
        printf("... %zu more: aligwctl devices --all\n", nt - (size_t)shown);
    free(r);
    fflush(stdout);
}

/* The per-device counters of s, sorted by key, for the next frame's rates. */
static struct prev *remember(const struct sample *s, size_t *n)
{
    json_t *arr = json_object_get(s->devices, "devices");
    size_t k = 0, len = json_array_size(arr);
    struct prev *pv = calloc(len ? len : 1, sizeof(*pv));
    for (size_t i = 0; i < len; i++) {
        json_t *d = json_array_get(arr, i);
        const char *key = json_string_value(json_object_get(d, "device"));
        if (!key)
            continue;
        pv[k].key = strdup(key);
        pv[k].out = ctl_geti(d, "messages_out");
        pv[k].in = ctl_geti(d, "messages_in");
        k++;
    }
    qsort(pv, k, sizeof(*pv), cmp_prev);
    *n = k;
    return pv;
}

static void forget(struct prev *pv, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(pv[i].key);
    free(pv);
}

int ctl_top(int argc, char **argv)
{
    ctl_json = false;
    bool once = false;
    double interval = 1.0;
    int code;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--once")) {
            once = true;
        } else if (!strcmp(argv[i], "--interval") && i + 1 < argc) {
            char *end;
            interval = strtod(argv[++i], &end);
            if (*end || interval < 0.1 || interval > 3600) {
                fprintf(stderr, "aligwctl: --interval must be 0.1 to 3600 seconds\n");
                return EXIT_USAGE;
            }
        } else {
            fprintf(stderr, "aligwctl: top: unknown argument '%s'\nTry 'aligwctl --help'.\n",
                    argv[i]);
            return EXIT_USAGE;
        }
    }
    if ((code = ctl_connect()) != EXIT_OK)
        return code;

    bool tty = !once && isatty(STDIN_FILENO) && isatty(STDOUT_FILENO);
    struct termios saved;
    if (tty && tcgetattr(STDIN_FILENO, &saved) == 0) {
        struct termios raw = saved;
        raw.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
        raw.c_cc[VMIN] = 0;
        raw.c_cc[VTIME] = 0;
        tcsetattr(STDIN_FILENO, TCSANOW, &raw);
        printf("\033[?25l"); /* hide the cursor */
    } else {
        tty = false;
    }
    struct sigaction sa = {.sa_handler = on_stop};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    struct sample prev = {0}, cur = {0};
    struct prev *pv = NULL;
    size_t npv = 0;
    code = EXIT_OK;
    for (int frame = 0; !top_stop; frame++) {
        if (fetch(&cur, &code) < 0)
            break;
        if (!once || frame == 1)
            draw(&cur, frame ? &prev : NULL, pv, npv, !once);
        forget(pv, npv);
        pv = remember(&cur, &npv);
        sample_free(&prev);
        prev = cur;
        memset(&cur, 0, sizeof(cur));
        if (once && frame == 1)
            break;
        /* Wait for the interval, or a key: q quits, anything else redraws now. */
        struct pollfd p = {.fd = STDIN_FILENO, .events = POLLIN};
        int ready = poll(&p, tty ? 1 : 0, (int)(interval * 1000));
        if (ready > 0) {
            char c = 0;
            if (read(STDIN_FILENO, &c, 1) == 1 && (c == 'q' || c == 'Q'))
                break;
        }
    }
    forget(pv, npv);
    sample_free(&prev);
    if (tty) {
        tcsetattr(STDIN_FILENO, TCSANOW, &saved);
        printf("\033[?25h\n");
    }
    return code;
}
