/*
 * aligwctl: the command-line client of aligwd's local API. One request per run (watch: one
 * request, then events until interrupted) over the Unix socket, newline-delimited JSON as in
 * docs/api.md. Output is a table or a short summary for people, the daemon's JSON untouched
 * with --json. Exit codes are for scripts: 0 ok, 1 the request failed, 2 usage, 3 aligwd is not
 * running, 4 access refused.
 */
#include <errno.h>
#include <stdint.h>
#include <grp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "aligwctl.h"
#include "base64.h"

#define DEFAULT_SOCKET "/run/aligw/aligw.sock"

static const char usage_text[] =
    "Usage: aligwctl [-s SOCKET] [--json] COMMAND [ARGS...]\n"
    "\n"
    "Talks to aligwd, the Aliyun IoT gateway daemon, over its local socket.\n"
    "\n"
    "Commands:\n"
    "  status                      gateway summary: devices by state, queue, uptime\n"
    "  devices [--all] [--state S] device table; by default the devices that are not online\n"
    "                              first and as many as fit the terminal\n"
    "  device PK/DN                one device's full status\n"
    "  post PK/DN KEY=VALUE...     post properties (VALUE is JSON if it parses, else text)\n"
    "       [--params JSON] [--time MS] [--no-ack] [--wait]\n"
    "  event PK/DN EVENT [KEY=VALUE...] [--params JSON] [--time MS] [--wait]\n"
    "                              post a thing-model event\n"
    "  batch PK/DN JSON|@FILE [--no-ack] [--wait]\n"
    "                              several timed values per property/event in one message:\n"
    "                              "
    "{\"properties\":{\"T\":[{\"value\":1,\"time\":MS},...]},\"events\":{...}}\n"
    "  history PK/DN JSON|@FILE [--no-ack] [--wait]\n"
    "                              values recorded while offline: {\"properties\":[{\"T\":\n"
    "                              {\"value\":1,\"time\":MS}},...],\"events\":[...]}\n"
    "  publish PK/DN TOPIC PAYLOAD [--qos 0|1] [--b64]\n"
    "                              raw publish; PAYLOAD '-' reads bytes from stdin;\n"
    "                              --b64: PAYLOAD is base64 already\n"
    "  reply PK/DN REQUEST_ID CODE [KEY=VALUE...] [--data JSON] [--message TEXT]\n"
    "                              answer a property set or service call seen on watch\n"
    "        [--bytes-b64 B64]     (RRPC) the answer as raw bytes, base64\n"
    "  watch [PK/DN...] [--topic FILTER]... [--kind KIND]...\n"
    "                              follow events live (KIND: message, property_set,\n"
    "                              service_call, state, reply, ota); Ctrl-C stops\n"
    "  add --json DEVICE_JSON|@FILE\n"
    "  add --pk PK --dn DN [--secret-file FILE | --secret-stdin]\n"
    "                              add a device at runtime (persisted); for one-product-one-\n"
    "                              secret use --json with product_secret\n"
    "  remove PK/DN                remove a device added at runtime\n"
    "  ota [PK/DN]                 firmware upgrade jobs (device, module, from -> to version,\n"
    "                              state, progress, error) and versions\n"
    "  ota-version PK/DN VERSION [MODULE]\n"
    "                              set a module's firmware version (reported to the cloud)\n"
    "  ota-check PK/DN [MODULE]    ask the cloud for a pending upgrade (firmware/get)\n"
    "  config PK/DN                fetch the product's remote configuration (config/get)\n"
    "  shadow PK/DN                the device shadow (reported, desired, version)\n"
    "  shadow-update PK/DN JSON|@FILE [--version N]\n"
    "                              report values to the shadow (version: aligw's by default)\n"
    "  shadow-clear PK/DN          clear the shadow's desired values\n"
    "  desired PK/DN ID...         desired property values set in the cloud\n"
    "  desired-delete PK/DN ID...  delete desired property values\n"
    "  tags PK/DN KEY=VALUE...     set device tags; tags-delete PK/DN KEY... removes them\n"
    "  ota-result PK/DN JOB ok [VERSION] | ota-result PK/DN JOB STEP [REASON]\n"
    "                              answer an \"ota\" apply event: applied, or failed with\n"
    "                              STEP -1 (upgrade), -2 (download), -3 (verify), -4 (flash)\n"
    "  reload                      reload the configuration file\n"
    "  stats                       counters of the daemon and its API\n"
    "  top [--once] [--interval S] live view: devices by state, msg/s, queue, the busiest\n"
    "                              and the troubled devices; q quits; --once: one frame\n"
    "  health [--min-online SHARE] exit 0 when aligwd answers, its store is writable and at\n"
    "                              least SHARE (default health.min_online) of the devices\n"
    "                              are online, else 1 (for HEALTHCHECK and monitoring)\n"
    "  hello                       protocol and daemon version\n"
    "  time                        the platform's time: the system clock's offset from it\n"
    "\n"
    "Options:\n"
    "  -s, --socket PATH   the daemon's socket (default $ALIGW_SOCKET or " DEFAULT_SOCKET ")\n"
    "  --json              print the daemon's JSON response as is (events: one per line)\n"
    "  -h, --help          this text\n"
    "\n"
    "--wait (post, event, batch, history) answers only once the platform replied, with its code.\n"
    "\n"
    "Exit status: 0 ok, 1 the request failed (the daemon's error is printed), 2 usage error,\n"
    "3 aligwd is not running, 4 access to the socket refused.\n"
    "\n"
    "Examples:\n"
    "  aligwctl devices --state offline\n"
    "  aligwctl post a1B2c3D4e5F/boiler-01 Temperature=21.5 Power='\"on\"'\n"
    "  aligwctl watch a1B2c3D4e5F/boiler-01 --kind service_call --json\n";

static const char *sock_path;
bool ctl_json;
static int sock_fd = -1;
static char *rbuf;
static size_t rlen, rcap;
static volatile sig_atomic_t stop; /* SIGINT/SIGTERM while watching */

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "aligwctl: ");
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    fprintf(stderr, fmt, arg); /* fmt is always a literal with one %s */
#pragma GCC diagnostic pop
    fprintf(stderr, "\nTry 'aligwctl --help'.\n");
    return EXIT_USAGE;
}

int ctl_connect(void)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(sock_path) >= sizeof(sa.sun_path)) {
        fprintf(stderr, "aligwctl: socket path too long: %s\n", sock_path);
        return EXIT_USAGE;
    }
    strcpy(sa.sun_path, sock_path);
    sock_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock_fd < 0 || connect(sock_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        if (e == ENOENT || e == ENOTDIR) {
            fprintf(stderr, "aligwctl: aligwd is not running (no socket at %s)\n", sock_path);
            return EXIT_NOT_RUNNING;
        }
        if (e == ECONNREFUSED) {
            fprintf(stderr, "aligwctl: aligwd is not running (nothing listens on %s)\n", sock_path);
            return EXIT_NOT_RUNNING;
        }
        if (e == EACCES || e == EPERM) {
            struct stat st;
            struct group *g = stat(sock_path, &st) == 0 ? getgrgid(st.st_gid) : NULL;
            fprintf(stderr, "aligwctl: permission denied on %s", sock_path);
            if (g && g->gr_gid == 0)
                fprintf(stderr,
                        ": run as root, or have the daemon give the socket a group for API "
                        "users (api.group in its configuration, e.g. \"aligw\") and join it");
            else if (g)
                fprintf(stderr,
                        ": run as root or join the group '%s' (usermod -aG %s $USER, "
                        "then log in again)",
                        g->gr_name, g->gr_name);
            fprintf(stderr, "\n");
            return EXIT_DENIED;
        }
        fprintf(stderr, "aligwctl: cannot connect to %s: %s\n", sock_path, strerror(e));
        return EXIT_NOT_RUNNING;
    }
    return EXIT_OK;
}

/* Reads one line; returns a parsed object or NULL at EOF / error. raw gets the text. */
static json_t *read_msg(char **raw)
{
    for (;;) {
        char *nl = rlen ? memchr(rbuf, '\n', rlen) : NULL; /* rbuf is NULL until the first read */
        if (nl) {
            size_t n = (size_t)(nl - rbuf);
            json_t *j = json_loadb(rbuf, n, 0, NULL);
            if (raw) {
                *raw = strndup(rbuf, n);
            }
            memmove(rbuf, nl + 1, rlen - n - 1);
            rlen -= n + 1;
            return j;
        }
        if (rlen == rcap) {
            if (rcap >= (64u << 20)) { /* a line over 64 MiB: give up on it */
                rlen = 0;
                continue;
            }
            char *nb = realloc(rbuf, rcap ? rcap * 2 : 65536);
            if (!nb)
                return NULL;
            rbuf = nb;
            rcap = rcap ? rcap * 2 : 65536;
        }
        ssize_t r = read(sock_fd, rbuf + rlen, rcap - rlen);
        if (r < 0 && errno == EINTR && !stop)
            continue; /* a signal that does not stop us; Ctrl-C while watching does */
        if (r <= 0)
            return NULL;
        rlen += (size_t)r;
    }
}

static int send_req(json_t *req)
{
    char *s = json_dumps(req, JSON_COMPACT);
    size_t n = strlen(s);
    s = realloc(s, n + 2);
    s[n++] = '\n';
    const char *p = s;
    while (n > 0) {
        ssize_t w = write(sock_fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            free(s);
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    free(s);
    return 0;
}

/* Sends req (stolen) with id 1 and waits for its response. Returns the response or NULL. */
json_t *ctl_call(json_t *req, int *code)
{
    json_object_set_new(req, "id", json_integer(1));
    /* A refused peer gets one "forbidden" line and the connection is closed, possibly before
     * the request is written: the answer is read either way. */
    bool sent = send_req(req) == 0;
    json_decref(req);
    for (;;) {
        char *raw = NULL;
        json_t *j = read_msg(&raw);
        if (!j) {
            free(raw);
            fprintf(stderr, "aligwctl: %s\n",
                    sent ? "aligwd closed the connection" : "lost the connection to aligwd");
            *code = EXIT_FAILED;
            return NULL;
        }
        json_t *ok = json_object_get(j, "ok");
        if (ok && (json_integer_value(json_object_get(j, "id")) == 1 ||
                   json_is_null(json_object_get(j, "id")))) {
            if (!json_is_true(ok)) {
                json_t *e = json_object_get(j, "error");
                const char *c = json_string_value(json_object_get(e, "code"));
                if (ctl_json)
                    puts(raw);
                else
                    fprintf(stderr, "aligwctl: %s: %s\n", c ? c : "error",
                            json_string_value(json_object_get(e, "message")));
                *code = c && strcmp(c, "forbidden") == 0 ? EXIT_DENIED : EXIT_FAILED;
                free(raw);
                json_decref(j);
                return NULL;
            }
            if (ctl_json)
                puts(raw);
            free(raw);
            *code = EXIT_OK;
            return j;
        }
        free(raw);
        json_decref(j);
    }
}

/* ---- formatting ---- */

json_int_t ctl_geti(json_t *o, const char *k)
{
    return json_integer_value(json_object_get(o, k));
}

void ctl_fmt_bytes(char *out, size_t n, double b)
{
    const char *u[] = {"B", "kB", "MB", "GB", "TB"};
    int i = 0;
    while (b >= 1000 && i < 4) {
        b /= 1000;
        i++;
    }
    snprintf(out, n, i ? "%.1f %s" : "%.0f %s", b, u[i]);
}

void ctl_fmt_age(char *out, size_t n, double s)
{
    if (s < 0)
        snprintf(out, n, "-");
    else if (s < 120)
        snprintf(out, n, "%.0fs", s);
    else if (s < 7200)
        snprintf(out, n, "%.0fm", s / 60);
    else if (s < 172800)
        snprintf(out, n, "%.1fh", s / 3600);
    else
        snprintf(out, n, "%.1fd", s / 86400);
}

double ctl_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec * 1000 + (double)ts.tv_nsec / 1e6;
}

/* Prints an object as indented "key: value" lines. */
static void print_kv(json_t *o, int indent)
{
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v)
    {
        if (json_is_object(v)) {
            printf("%*s%s:\n", indent, "", k);
            print_kv(v, indent + 2);
        } else {
            char *s = json_is_string(v) ? strdup(json_string_value(v))
                                        : json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
            printf("%*s%s: %s\n", indent, "", k, s ? s : "?");
            free(s);
        }
    }
}

static void print_states(json_t *states, json_int_t total)
{
    const char *k;
    json_t *v;
    printf("%lld devices", (long long)total);
    const char *sep = ": ";
    /* online first, then the rest as the daemon lists them */
    if (json_object_get(states, "online")) {
        printf("%s%lld online", sep, (long long)ctl_geti(states, "online"));
        sep = ", ";
    }
    json_object_foreach(states, k, v)
    {
        if (strcmp(k, "online") != 0) {
            printf("%s%lld %s", sep, (long long)json_integer_value(v), k);
            sep = ", ";
        }
    }
    printf("\n");
}

static void print_queue(json_t *q)
{
    char b[32], a[32];
    if (!q)
        return;
    ctl_fmt_bytes(b, sizeof(b), (double)ctl_geti(q, "bytes"));
    json_int_t oldest = ctl_geti(q, "oldest_ms");
    ctl_fmt_age(a, sizeof(a), oldest > 0 ? (ctl_now_ms() - (double)oldest) / 1000 : -1);
    printf("queue: %lld messages, %s, oldest %s; dropped %lld, expired %lld\n",
           (long long)ctl_geti(q, "queued"), b, a, (long long)ctl_geti(q, "dropped"),
           (long long)ctl_geti(q, "expired"));
    if (json_is_true(json_object_get(q, "damaged")))
        printf("OUTBOX DAMAGED: aligwd is stopping (see aligwd --check-store)\n");
    if (ctl_geti(q, "errors") > 0)
        printf("outbox errors: %lld, last: %s\n", (long long)ctl_geti(q, "errors"),
               json_string_value(json_object_get(q, "last_error")) ?: "?");
}

static int state_rank(const char *s)
{
    static const char *order[] = {"needs-reset", "auth-refused", "tls-failed", "kicked",
                                  "no-network",  "backoff",      "offline",    "registering",
                                  "connecting",  "online"};
    for (int i = 0; i < (int)(sizeof(order) / sizeof(order[0])); i++)
        if (s && strcmp(s, order[i]) == 0)
            return i;
    return 4;
}

static int cmp_dev(const void *a, const void *b)
{
    json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
    int rx = state_rank(json_string_value(json_object_get(x, "state")));
    int ry = state_rank(json_string_value(json_object_get(y, "state")));
    if (rx != ry)
        return rx - ry;
    return strcmp(json_string_value(json_object_get(x, "device")),
                  json_string_value(json_object_get(y, "device")));
}

int ctl_term_rows(void)
{
    struct winsize ws;
    if (!isatty(STDOUT_FILENO))
        return 0;
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 0)
        return ws.ws_row;
    return 24;
}

static void print_devices(json_t *res, bool all)
{
    json_t *arr = json_object_get(res, "devices");
    size_t n = json_array_size(arr);
    json_t **v = calloc(n ? n : 1, sizeof(json_t *));
    size_t w = 16;
    for (size_t i = 0; i < n; i++) {
        v[i] = json_array_get(arr, i);
        size_t l = strlen(json_string_value(json_object_get(v[i], "device")) ?: "");
        if (l > w)
            w = l;
    }
    if (w > 44)
        w = 44;
    qsort(v, n, sizeof(*v), cmp_dev);

    print_states(json_object_get(res, "states"), ctl_geti(res, "total"));
    int rows = ctl_term_rows();
    size_t limit = all || rows == 0 ? n : (size_t)(rows > 8 ? rows - 5 : 3);
    size_t shown = 0, hidden_online = 0, hidden_other = 0;
    printf("%-*s  %-12s %6s %8s %9s %7s %7s  %s\n", (int)w, "DEVICE", "STATE", "SINCE", "QUEUED",
           "BYTES", "OLDEST", "DROPPED", "LAST ERROR");
    double now = ctl_now_ms();
    for (size_t i = 0; i < n; i++) {
        const char *st = json_string_value(json_object_get(v[i], "state"));
        if (shown >= limit) {
            if (st && strcmp(st, "online") == 0)
                hidden_online++;
            else
                hidden_other++;
            continue;
        }
        char since[16], bytes[16], oldest[16];
        json_int_t s = ctl_geti(v[i], "since_ms");
        ctl_fmt_age(since, sizeof(since), s > 0 ? (now - (double)s) / 1000 : -1);
        ctl_fmt_bytes(bytes, sizeof(bytes), (double)ctl_geti(v[i], "queued_bytes"));
        json_int_t o = ctl_geti(v[i], "oldest_ms");
        ctl_fmt_age(oldest, sizeof(oldest), o > 0 ? (now - (double)o) / 1000 : -1);
        const char *err = json_string_value(json_object_get(v[i], "last_error"));
        if (!err)
            err = json_string_value(json_object_get(v[i], "field_error"));
        printf("%-*.*s  %-12.12s %6s %8lld %9s %7s %7lld  %.50s\n", (int)w, (int)w,
               json_string_value(json_object_get(v[i], "device")), st ? st : "?", since,
               (long long)ctl_geti(v[i], "queued"), bytes, oldest,
               (long long)(ctl_geti(v[i], "dropped") + ctl_geti(v[i], "expired")),
               err && st && strcmp(st, "online") ? err : "");
        shown++;
    }
    if (hidden_online || hidden_other)
        printf("... and %zu more (%zu online, %zu not online): use --all or --state STATE\n",
               hidden_online + hidden_other, hidden_online, hidden_other);
    free(v);
}

static void print_status(json_t *res)
{
    char up[16];
    ctl_fmt_age(up, sizeof(up), (double)ctl_geti(res, "uptime_s"));
    printf("aligwd %s, up %s\n", json_string_value(json_object_get(res, "version")) ?: "?", up);
    print_states(json_object_get(res, "states"), ctl_geti(res, "devices"));
    print_queue(json_object_get(res, "queue"));
    const char *k;
    json_t *v;
    json_object_foreach(res, k, v)
    {
        if (json_is_object(v) && strcmp(k, "states") && strcmp(k, "queue")) {
            printf("%s:\n", k);
            print_kv(v, 2);
        }
    }
    size_t i;
    json_array_foreach(json_object_get(res, "plugin_hosts"), i, v)
    {
        const char *err = json_string_value(json_object_get(v, "last_error"));
        if (i == 0)
            printf("plugins:\n");
        printf("  %-20s %-10s %-8s restarts %lld%s%s\n",
               json_string_value(json_object_get(v, "name")) ?: "?",
               json_string_value(json_object_get(v, "state")) ?: "?",
               json_string_value(json_object_get(v, "isolation")) ?: "?",
               (long long)ctl_geti(v, "restarts"), err ? "  last: " : "", err ? err : "");
    }
}

static void print_event(json_t *e)
{
    char ts[32];
    time_t t = time(NULL);
    strftime(ts, sizeof(ts), "%H:%M:%S", localtime(&t));
    const char *kind = json_string_value(json_object_get(e, "event")) ?: "?";
    const char *dev = json_string_value(json_object_get(e, "device")) ?: "";
    printf("%s %-13s %s", ts, kind, dev);
    const char *k;
    json_t *v;
    json_object_foreach(e, k, v)
    {
        if (!strcmp(k, "event") || !strcmp(k, "device"))
            continue;
        char *s = json_is_string(v) ? strdup(json_string_value(v))
                                    : json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        printf(" %s=%s", k, s ? s : "?");
        free(s);
    }
    printf("\n");
    fflush(stdout);
}

/* ---- argument helpers ---- */

static json_t *parse_value(const char *s)
{
    json_t *v = json_loads(s, JSON_DECODE_ANY, NULL);
    return v ? v : json_string(s);
}

/* KEY=VALUE words into obj; returns 0 or the usage exit code. */
static int add_kv(json_t *obj, const char *arg)
{
    const char *eq = strchr(arg, '=');
    if (!eq || eq == arg)
        return usage_error("expected KEY=VALUE, got '%s'", arg);
    char *key = strndup(arg, (size_t)(eq - arg));
    json_object_set_new(obj, key, parse_value(eq + 1));
    free(key);
    return 0;
}

static char *read_all(FILE *f, size_t *len)
{
    size_t cap = 4096, n = 0;
    char *b = malloc(cap);
    size_t r;
    while ((r = fread(b + n, 1, cap - n - 1, f)) > 0) {
        n += r;
        if (n + 1 == cap)
            b = realloc(b, cap *= 2);
    }
    b[n] = '\0';
    *len = n;
    return b;
}

/* Object from a JSON text or @file. */
static json_t *json_arg(const char *opt, const char *s)
{
    json_error_t e;
    json_t *j = s[0] == '@' ? json_load_file(s + 1, 0, &e) : json_loads(s, 0, &e);
    if (!j || !json_is_object(j)) {
        fprintf(stderr, "aligwctl: %s: not a JSON object: %s\n", opt, j ? "" : e.text);
        json_decref(j);
        return NULL;
    }
    return j;
}

static void on_sig(int s)
{
    stop = 1;
}

/* ---- commands ---- */

/* A command's words and options, as parsed from the command line. */
struct args {
    char **rest; /* the words that are not options */
    int nrest;
    json_t *params, *kinds, *topics;
    const char *state, *time_ms, *qos, *message, *pk, *dn, *secret_file, *add_json, *bytes_b64,
        *version;
    bool all, no_ack, wait, is_b64, secret_stdin;
};

/* An integer word in [lo, hi], whole (no trailing text); returns 0 or the usage exit code. */
static int parse_int(const char *what, const char *s, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "aligwctl: %s must be an integer from %lld to %lld, got '%s'\n", what, lo,
                hi, s);
        return EXIT_USAGE;
    }
    *out = v;
    return 0;
}

static void set_device(json_t *req, const struct args *a)
{
    json_object_set_new(req, "device", json_string(a->rest[0]));
}

static int build_plain(json_t *req, struct args *a)
{
    return 0;
}

static int build_devices(json_t *req, struct args *a)
{
    if (a->state)
        json_object_set_new(req, "state", json_string(a->state));
    return 0;
}

static int build_device(json_t *req, struct args *a)
{
    set_device(req, a);
    return 0;
}

/* post and event: KEY=VALUE words after the device (and the event's name). */
static int build_post(json_t *req, struct args *a, int first)
{
    int code;
    set_device(req, a);
    for (int k = first; k < a->nrest; k++)
        if ((code = add_kv(a->params, a->rest[k])) != 0)
            return code;
    json_object_set(req, "params", a->params);
    if (a->time_ms) {
        long long ms;
        if ((code = parse_int("--time", a->time_ms, 0, INT64_MAX, &ms)) != 0)
            return code;
        json_object_set_new(req, "timestamp", json_integer(ms));
    }
    if (a->no_ack)
        json_object_set_new(req, "ack", json_false());
    if (a->wait)
        json_object_set_new(req, "wait_reply", json_true());
    return 0;
}

static int build_properties(json_t *req, struct args *a)
{
    if (a->nrest < 2 && json_object_size(a->params) == 0)
        return usage_error("%s", "post needs at least one KEY=VALUE or --params");
    return build_post(req, a, 1);
}

static int build_event(json_t *req, struct args *a)
{
    json_object_set_new(req, "event", json_string(a->rest[1]));
    return build_post(req, a, 2);
}

/* batch, history: the properties and events of a JSON object (or @FILE) into the request. */
static int build_timed(json_t *req, struct args *a)
{
    json_t *j = json_arg("JSON", a->rest[1]);
    const char *key;
    json_t *v;
    if (!j)
        return 2;
    set_device(req, a);
    json_object_foreach(j, key, v)
    {
        if (strcmp(key, "properties") != 0 && strcmp(key, "events") != 0) {
            json_decref(j);
            return usage_error("unknown member \"%s\" (properties, events)", key);
        }
        json_object_set(req, key, v);
    }
    json_decref(j);
    if (a->no_ack)
        json_object_set_new(req, "ack", json_false());
    if (a->wait)
        json_object_set_new(req, "wait_reply", json_true());
    return 0;
}

static int build_publish(json_t *req, struct args *a)
{
    set_device(req, a);
    json_object_set_new(req, "topic", json_string(a->rest[1]));
    if (!strcmp(a->rest[2], "-")) {
        size_t n;
        char *data = read_all(stdin, &n);
        char *enc = base64_encode(data, n);
        json_object_set_new(req, "payload_b64", json_string(enc));
        free(enc);
        free(data);
    } else {
        json_object_set_new(req, a->is_b64 ? "payload_b64" : "payload", json_string(a->rest[2]));
    }
    if (a->qos) {
        long long q;
        int code = parse_int("--qos", a->qos, 0, 1, &q);
        if (code)
            return code;
        json_object_set_new(req, "qos", json_integer(q));
    }
    return 0;
}

/* shadow-update PK/DN JSON [--version N]: the reported values. */
static int build_shadow_update(json_t *req, struct args *a)
{
    json_t *j = json_arg("JSON", a->rest[1]);
    if (!j)
        return 2;
    set_device(req, a);
    json_object_set_new(req, "reported", j);
    if (a->version) {
        long long v;
        int code = parse_int("--version", a->version, 0, INT64_MAX, &v);
        if (code)
            return code;
        json_object_set_new(req, "version", json_integer(v));
    }
    return 0;
}

/* desired, desired-delete PK/DN ID...; tags-delete PK/DN KEY...: the words as an array. */
static int build_words(json_t *req, struct args *a)
{
    const char *name = !strcmp(json_string_value(json_object_get(req, "op")), "tags_delete")
                           ? "keys"
                           : "identifiers";
    json_t *arr = json_array();
    set_device(req, a);
    for (int k = 1; k < a->nrest; k++)
        json_array_append_new(arr, json_string(a->rest[k]));
    json_object_set_new(req, name, arr);
    return 0;
}

/* tags PK/DN KEY=VALUE...: the tags as strings (no number guessing). */
static int build_tags(json_t *req, struct args *a)
{
    json_t *tags = json_object();
    set_device(req, a);
    for (int k = 1; k < a->nrest; k++) {
        const char *eq = strchr(a->rest[k], '=');
        if (!eq || eq == a->rest[k]) {
            json_decref(tags);
            return usage_error("'%s' is not KEY=VALUE", a->rest[k]);
        }
        char key[64];
        snprintf(key, sizeof(key), "%.*s", (int)(eq - a->rest[k]), a->rest[k]);
        json_object_set_new(tags, key, json_string(eq + 1));
    }
    json_object_set_new(req, "tags", tags);
    return 0;
}

static int build_reply(json_t *req, struct args *a)
{
    long long c;
    int code = parse_int("CODE", a->rest[2], INT32_MIN, INT32_MAX, &c);
    if (code)
        return code;
    set_device(req, a);
    json_object_set_new(req, "request_id", json_string(a->rest[1]));
    json_object_set_new(req, "code", json_integer(c));
    for (int k = 3; k < a->nrest; k++)
        if ((code = add_kv(a->params, a->rest[k])) != 0)
            return code;
    if (json_object_size(a->params))
        json_object_set(req, "data", a->params);
    if (a->message)
        json_object_set_new(req, "message", json_string(a->message));
    if (a->bytes_b64) /* an RRPC answer's raw bytes */
        json_object_set_new(req, "payload_b64", json_string(a->bytes_b64));
    return 0;
}

static int build_watch(json_t *req, struct args *a)
{
    if (a->nrest) {
        json_t *d = json_array();
        for (int k = 0; k < a->nrest; k++)
            json_array_append_new(d, json_string(a->rest[k]));
        json_object_set_new(req, "devices", d);
    }
    if (json_array_size(a->topics))
        json_object_set(req, "topics", a->topics);
    if (json_array_size(a->kinds))
        json_object_set(req, "kinds", a->kinds);
    return 0;
}

static int build_add(json_t *req, struct args *a)
{
    json_t *dev;
    if (a->add_json) {
        if (!(dev = json_arg("--json", a->add_json)))
            return EXIT_USAGE;
    } else {
        if (!a->pk || !a->dn)
            return usage_error("%s", "add needs --json DEVICE_JSON or --pk and --dn");
        dev = json_pack("{s:s,s:s}", "product_key", a->pk, "device_name", a->dn);
        if (a->secret_file || a->secret_stdin) {
            FILE *f = a->secret_stdin ? stdin : fopen(a->secret_file, "r");
            if (!f) {
                fprintf(stderr, "aligwctl: %s: %s\n", a->secret_file, strerror(errno));
                json_decref(dev);
                return EXIT_USAGE;
            }
            size_t n;
            char *s = read_all(f, &n);
            while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r'))
                s[--n] = '\0';
            json_object_set_new(dev, "device_secret", json_string(s));
            memset(s, 0, n);
            free(s);
            if (!a->secret_stdin)
                fclose(f);
        }
    }
    json_object_set_new(req, "device", dev);
    return 0;
}

/* The platform's time as the gateway last learnt it (the "time" part of status). */
static void print_time(json_t *r, const struct args *a)
{
    json_t *t = json_object_get(r, "time");
    if (!json_is_true(json_object_get(t, "synced"))) {
        printf("not synced yet (%lld request(s) sent)\n", (long long)ctl_geti(t, "requests"));
        return;
    }
    char age[16];
    ctl_fmt_age(age, sizeof(age), (ctl_now_ms() - (double)ctl_geti(t, "synced_at_ms")) / 1000);
    json_int_t off = ctl_geti(t, "offset_ms");
    printf(
        "platform time: system clock %s by %lld ms (round trip %lld ms), learnt %s ago via %s%s\n",
        off > 0 ? "behind" : "ahead", (long long)(off < 0 ? -off : off),
        (long long)ctl_geti(t, "rtt_ms"), age, json_string_value(json_object_get(t, "via")) ?: "-",
        json_is_true(json_object_get(t, "skewed")) ? " (beyond cloud.max_clock_skew_ms)" : "");
}

static int build_ota(json_t *req, struct args *a)
{
    if (a->nrest)
        set_device(req, a);
    return 0;
}

static int build_ota_version(json_t *req, struct args *a)
{
    set_device(req, a);
    json_object_set_new(req, "version", json_string(a->rest[1]));
    if (a->nrest > 2)
        json_object_set_new(req, "module", json_string(a->rest[2]));
    return 0;
}

static int build_ota_check(json_t *req, struct args *a)
{
    set_device(req, a);
    if (a->nrest > 1)
        json_object_set_new(req, "module", json_string(a->rest[1]));
    return 0;
}

static int build_ota_result(json_t *req, struct args *a)
{
    long long job, step = 0;
    int code = parse_int("JOB", a->rest[1], 1, INT64_MAX, &job);
    if (code)
        return code;
    set_device(req, a);
    json_object_set_new(req, "job", json_integer(job));
    if (strcmp(a->rest[2], "ok") != 0) {
        if ((code = parse_int("STEP", a->rest[2], -4, -1, &step)) != 0)
            return code;
        json_object_set_new(req, "step", json_integer(step));
        if (a->nrest > 3)
            json_object_set_new(req, "desc", json_string(a->rest[3]));
    } else if (a->nrest > 3) {
        json_object_set_new(req, "version", json_string(a->rest[3]));
    }
    return 0;
}

/* One line per job, then the versions of devices without a job. */
static void print_ota(json_t *r, const struct args *a)
{
    json_t *jobs = json_object_get(r, "jobs"), *vers = json_object_get(r, "versions"), *j;
    size_t i;

    if (json_array_size(jobs))
        printf("%-40s %-10s %-25s %-11s %5s  %s\n", "DEVICE", "MODULE", "VERSION", "STATE", "PROG",
               "ERROR");
    json_array_foreach(jobs, i, j)
    {
        const char *m = json_string_value(json_object_get(j, "module"));
        const char *from = json_string_value(json_object_get(j, "from_version"));
        const char *err = json_string_value(json_object_get(j, "error"));
        char ver[160];
        snprintf(ver, sizeof(ver), "%s → %s", from && *from ? from : "?",
                 json_string_value(json_object_get(j, "to_version")));
        printf("%-40s %-10s %-25s %-11s %4lld%%  %s\n",
               json_string_value(json_object_get(j, "device")), m && *m ? m : "-", ver,
               json_string_value(json_object_get(j, "state")),
               (long long)json_integer_value(json_object_get(j, "progress")), err ? err : "");
    }
    if (json_array_size(vers)) {
        printf("%s%-40s %-10s %-25s %s\n", json_array_size(jobs) ? "\n" : "", "DEVICE", "MODULE",
               "FIRMWARE", "SOURCE");
        json_array_foreach(vers, i, j)
        {
            const char *m = json_string_value(json_object_get(j, "module"));
            printf("%-40s %-10s %-25s %s\n", json_string_value(json_object_get(j, "device")),
                   m && *m ? m : "-", json_string_value(json_object_get(j, "version")),
                   json_string_value(json_object_get(j, "source")));
        }
    }
    if (!json_array_size(jobs) && !json_array_size(vers))
        printf("no firmware versions known and no upgrade jobs\n");
}

static void print_devices_cmd(json_t *r, const struct args *a)
{
    print_devices(r, a->all || a->state);
}

static void print_status_cmd(json_t *r, const struct args *a)
{
    print_status(r);
}

/* The default: the result's fields, or "ok" when it has none. */
static void print_result(json_t *r, const struct args *a)
{
    if (json_object_size(r))
        print_kv(r, 0);
    else
        printf("ok\n");
}

/*
 * One command: the request op it sends, the words it needs (with the usage line shown when
 * they are missing), how it builds the request from its arguments (0 or an exit code), and how
 * a result is printed for people (--json prints the daemon's line as is). stream: events follow
 * the response until the user stops it.
 */
struct command {
    const char *name, *op;
    int min_words;
    const char *usage;
    int (*build)(json_t *req, struct args *a);
    void (*print)(json_t *result, const struct args *a);
    bool stream;
};

static const struct command commands[] = {
    {"status", "status", 0, NULL, build_plain, print_status_cmd, false},
    {"stats", "stats", 0, NULL, build_plain, print_result, false},
    {"reload", "reload", 0, NULL, build_plain, print_result, false},
    {"hello", "hello", 0, NULL, build_plain, print_result, false},
    {"time", "status", 0, NULL, build_plain, print_time, false},
    {"devices", "devices", 0, NULL, build_devices, print_devices_cmd, false},
    {"device", "device", 1, "which device? (PK/DN)", build_device, print_result, false},
    {"remove", "remove_device", 1, "which device? (PK/DN)", build_device, print_result, false},
    {"post", "post_properties", 1, "usage: post PK/DN KEY=VALUE...", build_properties, print_result,
     false},
    {"event", "post_event", 2, "usage: event PK/DN EVENT [KEY=VALUE...]", build_event, print_result,
     false},
    {"batch", "post_batch", 2, "usage: batch PK/DN JSON|@FILE", build_timed, print_result, false},
    {"history", "post_history", 2, "usage: history PK/DN JSON|@FILE", build_timed, print_result,
     false},
    {"publish", "publish", 3, "usage: publish PK/DN TOPIC PAYLOAD", build_publish, print_result,
     false},
    {"reply", "reply", 3, "usage: reply PK/DN REQUEST_ID CODE [KEY=VALUE...]", build_reply,
     print_result, false},
    {"watch", "watch", 0, NULL, build_watch, NULL, true},
    {"add", "add_device", 0, NULL, build_add, print_result, false},
    {"ota", "ota", 0, NULL, build_ota, print_ota, false},
    {"config", "config_get", 1, "usage: config PK/DN", build_device, print_result, false},
    {"shadow", "shadow_get", 1, "usage: shadow PK/DN", build_device, print_result, false},
    {"shadow-update", "shadow_update", 2, "usage: shadow-update PK/DN JSON|@FILE [--version N]",
     build_shadow_update, print_result, false},
    {"shadow-clear", "shadow_clear_desired", 1, "usage: shadow-clear PK/DN", build_device,
     print_result, false},
    {"desired", "desired_get", 2, "usage: desired PK/DN ID...", build_words, print_result, false},
    {"desired-delete", "desired_delete", 2, "usage: desired-delete PK/DN ID...", build_words,
     print_result, false},
    {"tags", "tags_update", 2, "usage: tags PK/DN KEY=VALUE...", build_tags, print_result, false},
    {"tags-delete", "tags_delete", 2, "usage: tags-delete PK/DN KEY...", build_words, print_result,
     false},
    {"ota-version", "ota_version", 2, "usage: ota-version PK/DN VERSION [MODULE]",
     build_ota_version, print_result, false},
    {"ota-check", "ota_check", 1, "usage: ota-check PK/DN [MODULE]", build_ota_check, print_result,
     false},
    {"ota-result", "ota_result", 3,
     "usage: ota-result PK/DN JOB ok [VERSION] | ota-result PK/DN JOB STEP [REASON]",
     build_ota_result, print_result, false},
    {NULL},
};

/* Options taking a value, and where it goes. */
static const char **value_option(struct args *a, const char *name, const char *cmd)
{
    if (!strcmp(name, "--state"))
        return &a->state;
    if (!strcmp(name, "--time"))
        return &a->time_ms;
    if (!strcmp(name, "--qos"))
        return &a->qos;
    if (!strcmp(name, "--message"))
        return &a->message;
    if (!strcmp(name, "--bytes-b64"))
        return &a->bytes_b64;
    if (!strcmp(name, "--version"))
        return &a->version;
    if (!strcmp(name, "--pk"))
        return &a->pk;
    if (!strcmp(name, "--dn"))
        return &a->dn;
    if (!strcmp(name, "--secret-file"))
        return &a->secret_file;
    if (!strcmp(name, "--json") && !strcmp(cmd, "add"))
        return &a->add_json;
    return NULL;
}

/* Flags, and the bool each sets. */
static bool *flag_option(struct args *a, const char *name)
{
    if (!strcmp(name, "--all"))
        return &a->all;
    if (!strcmp(name, "--no-ack"))
        return &a->no_ack;
    if (!strcmp(name, "--wait"))
        return &a->wait;
    if (!strcmp(name, "--b64"))
        return &a->is_b64;
    if (!strcmp(name, "--secret-stdin"))
        return &a->secret_stdin;
    if (!strcmp(name, "--json"))
        return &ctl_json;
    return NULL;
}

/* The command's options (anywhere after it) and words; returns 0 or the usage exit code. */
static int parse_args(const char *cmd, int argc, char **argv, int i, struct args *a)
{
    for (; i < argc; i++) {
        const char *o = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        const char **slot = value_option(a, o, cmd);
        bool *flag;
        if (slot) {
            if (!v)
                return usage_error("%s needs a value", o);
            *slot = v;
            i++;
        } else if (!strcmp(o, "--params") || !strcmp(o, "--data")) {
            json_t *extra;
            if (!v || !(extra = json_arg(o, v)))
                return EXIT_USAGE;
            json_object_update(a->params, extra);
            json_decref(extra);
            i++;
        } else if (!strcmp(o, "--topic") || !strcmp(o, "--kind")) {
            if (!v)
                return usage_error("%s needs a value", o);
            json_array_append_new(o[2] == 't' ? a->topics : a->kinds, json_string(v));
            i++;
        } else if ((flag = flag_option(a, o)) != NULL) {
            *flag = true;
        } else if (o[0] == '-' && o[1] == '-') {
            return usage_error("unknown option '%s'", o);
        } else {
            a->rest[a->nrest++] = argv[i];
        }
    }
    return 0;
}

/* Prints the events that follow a watch until interrupted or the daemon goes away. */
static int follow_events(void)
{
    struct sigaction sa = {.sa_handler = on_sig};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    if (!ctl_json)
        fprintf(stderr, "watching; Ctrl-C to stop\n");
    fflush(stdout); /* with --json the watch's answer: a reader knows the watch is in place */
    while (!stop) {
        char *raw = NULL;
        json_t *e = read_msg(&raw);
        if (!e) {
            free(raw);
            if (stop)
                break;
            fprintf(stderr, "aligwctl: aligwd closed the connection\n");
            return EXIT_FAILED;
        }
        if (ctl_json) {
            puts(raw);
            fflush(stdout);
        } else {
            print_event(e);
        }
        free(raw);
        json_decref(e);
    }
    return EXIT_OK;
}

/* Runs cmd with its arguments: builds the request, sends it, prints the answer. */
static int run(const struct command *cmd, struct args *a)
{
    int code;
    json_t *req = json_object(), *res;
    if (a->nrest < cmd->min_words) {
        json_decref(req);
        return usage_error("%s", cmd->usage);
    }
    json_object_set_new(req, "op", json_string(cmd->op));
    if ((code = cmd->build(req, a)) != 0 || (code = ctl_connect()) != EXIT_OK) {
        json_decref(req);
        return code;
    }
    if (!(res = ctl_call(req, &code))) /* steals req */
        return code;
    if (cmd->stream)
        code = follow_events();
    else if (!ctl_json)
        cmd->print(json_object_get(res, "result"), a);
    json_decref(res);
    return code;
}

int main(int argc, char **argv)
{
    const char *name = NULL;
    const struct command *cmd;
    int i = 1, code;
    struct args a = {0};

    sock_path = getenv("ALIGW_SOCKET");
    if (!sock_path || !*sock_path)
        sock_path = DEFAULT_SOCKET;
    signal(SIGPIPE, SIG_IGN);

    /* global options come before the command; the command's own options anywhere after */
    for (; i < argc && !name; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            fputs(usage_text, stdout);
            return EXIT_OK;
        } else if (!strcmp(argv[i], "--json")) {
            ctl_json = true;
        } else if (!strcmp(argv[i], "-s") || !strcmp(argv[i], "--socket")) {
            if (++i >= argc)
                return usage_error("%s needs a path", argv[i - 1]);
            sock_path = argv[i];
        } else if (argv[i][0] == '-') {
            return usage_error("unknown option '%s'", argv[i]);
        } else {
            name = argv[i];
        }
    }
    if (!name)
        return usage_error("%s", "no command given");
    if (!strcmp(name, "health") || !strcmp(name, "top")) {
        code = name[0] == 'h' ? ctl_health(argc - i, argv + i) : ctl_top(argc - i, argv + i);
        if (sock_fd >= 0)
            close(sock_fd);
        return code;
    }
    for (cmd = commands; cmd->name && strcmp(cmd->name, name) != 0; cmd++)
        ;
    if (!cmd->name)
        return usage_error("unknown command '%s'", name);

    a.rest = calloc((size_t)argc + 1, sizeof(char *));
    a.params = json_object();
    a.kinds = json_array();
    a.topics = json_array();
    code = parse_args(name, argc, argv, i, &a);
    if (code == 0)
        code = run(cmd, &a);
    json_decref(a.params);
    json_decref(a.kinds);
    json_decref(a.topics);
    free(a.rest);
    if (sock_fd >= 0)
        close(sock_fd);
    return code;
}
