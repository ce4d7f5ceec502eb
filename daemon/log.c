/*
 * log: stderr writer with syslog priority prefixes, or journald entries with structured fields
 * when stderr is the journal (see log.h). One write(2) (or one sd_journal_sendv) per line, so
 * lines from the loop and from worker threads never interleave mid-line. The per-device rate
 * limiter is a small fixed table of (device, kind) windows under one mutex: its memory does not
 * grow with the number of devices or kinds (a full table reports and reuses its oldest window).
 */
#include "log.h"

#include "errors.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* Our own call site in emit() would be meaningless as CODE_FILE/CODE_LINE. */
#define SD_JOURNAL_SUPPRESS_LOCATION
#include <systemd/sd-journal.h>

int log_level = LOG_INFO;
static bool journal;

#define RL_SLOTS 512
#define RL_PROBE 8

struct rl_slot {
    uint64_t hash; /* 0 = free */
    const void *kind;
    char device[96]; /* "pk/dn" */
    char pk[64], event[32];
    int prio;
    int64_t start_ms;
    unsigned n, suppressed;
};

static struct {
    pthread_mutex_t lock;
    struct rl_slot slot[RL_SLOTS];
} RL = {.lock = PTHREAD_MUTEX_INITIALIZER};

void log_init(void)
{
    const char *e = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    struct stat st;
    journal = e && sscanf(e, "%llu:%llu", &dev, &ino) == 2 && fstat(STDERR_FILENO, &st) == 0 &&
              (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

bool log_to_journal(void)
{
    return journal;
}

struct fields {
    const char *pk, *dn, *event, *plugin;
};

/* Sends one entry: to journald with the fields, or as a "<N>" line on stderr. */
static void emit(int prio, const struct fields *f, const char *msg, size_t len)
{
    if (journal) {
        char b[6][160];
        struct iovec iov[8];
        int n = 0;
        char *m = malloc(len + 9);
        if (m) {
            memcpy(m, "MESSAGE=", 8);
            memcpy(m + 8, msg, len);
            iov[n++] = (struct iovec){m, len + 8};
            snprintf(b[0], sizeof(b[0]), "PRIORITY=%d", prio);
            iov[n++] = (struct iovec){b[0], strlen(b[0])};
            iov[n++] = (struct iovec){(char *)"SYSLOG_IDENTIFIER=aligwd", 24};
            if (f && f->pk && f->dn) {
                snprintf(b[1], sizeof(b[1]), "DEVICE=%s/%s", f->pk, f->dn);
                snprintf(b[2], sizeof(b[2]), "PRODUCT_KEY=%s", f->pk);
                snprintf(b[3], sizeof(b[3]), "DEVICE_NAME=%s", f->dn);
                for (int i = 1; i <= 3; i++)
                    iov[n++] = (struct iovec){b[i], strlen(b[i])};
            }
            if (f && f->event) {
                snprintf(b[4], sizeof(b[4]), "ALIGW_EVENT=%s", f->event);
                iov[n++] = (struct iovec){b[4], strlen(b[4])};
            }
            if (f && f->plugin) {
                snprintf(b[5], sizeof(b[5]), "PLUGIN=%s", f->plugin);
                iov[n++] = (struct iovec){b[5], strlen(b[5])};
            }
            int rc = sd_journal_sendv(iov, n);
            free(m);
            if (rc >= 0)
                return;
        }
        /* journald is away: stderr still reaches it, without the fields */
    }
    char line[2100];
    int h = snprintf(line, sizeof(line), "<%d>", prio);
    if (len > sizeof(line) - (size_t)h - 1)
        len = sizeof(line) - (size_t)h - 1;
    memcpy(line + h, msg, len);
    line[(size_t)h + len] = '\n';
    (void)!write(STDERR_FILENO, line, (size_t)h + len + 1);
}

static size_t vformat(char *buf, size_t size, const char *prefix, int err, const char *fmt,
                      va_list ap) __attribute__((format(printf, 5, 0)));
static size_t vformat(char *buf, size_t size, const char *prefix, int err, const char *fmt,
                      va_list ap)
{
    int n = prefix ? snprintf(buf, size, "%s", prefix) : 0;
    int m = vsnprintf(buf + n, size - (size_t)n, fmt, ap);
    if (m < 0)
        m = 0;
    n += m;
    if ((size_t)n > size - 80)
        n = (int)size - 80; /* truncated: keep room for the error */
    if (err < 0)
        n += snprintf(buf + n, size - (size_t)n, ": %s", aligw_strerror(err));
    return (size_t)n;
}

void log_write(int prio, const char *fmt, ...)
{
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    size_t n = vformat(buf, sizeof(buf), NULL, 0, fmt, ap);
    va_end(ap);
    emit(prio, NULL, buf, n);
}

void log_write_err(int prio, int err, const char *fmt, ...)
{
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    size_t n = vformat(buf, sizeof(buf), NULL, err, fmt, ap);
    va_end(ap);
    emit(prio, NULL, buf, n);
}

void log_write_plugin(int prio, const char *plugin, const char *fmt, ...)
{
    char buf[2048], prefix[96];
    struct fields f = {.plugin = plugin};
    va_list ap;
    snprintf(prefix, sizeof(prefix), "plugin %s: ", plugin);
    va_start(ap, fmt);
    size_t n = vformat(buf, sizeof(buf), prefix, 0, fmt, ap);
    va_end(ap);
    emit(prio, &f, buf, n);
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t hash(const char *pk, const char *dn, const void *kind)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (const char *s = pk; s && *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    h = (h ^ '/') * 1099511628211ULL;
    for (const char *s = dn; s && *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    h ^= (uint64_t)(uintptr_t)kind;
    h *= 1099511628211ULL;
    return h ? h : 1;
}

/* Reports a slot's suppressed count (lock held). */
static void report(struct rl_slot *s)
{
    char msg[160];
    const char *slash = strchr(s->device, '/');
    struct fields f = {
        .pk = s->pk, .dn = slash ? slash + 1 : "", .event = s->event[0] ? s->event : NULL};
    int n = snprintf(msg, sizeof(msg), "%s: %u similar message%s suppressed", s->device,
                     s->suppressed, s->suppressed == 1 ? "" : "s");
    emit(s->prio, &f, msg, (size_t)n);
    s->suppressed = 0;
}

/* Whether a line of (pk/dn, kind) may go out now; reports what a passed window suppressed. */
static bool admit(int prio, const char *pk, const char *dn, const char *event, const void *kind)
{
    uint64_t h = hash(pk, dn, kind);
    int64_t now = mono_ms();
    struct rl_slot *s = NULL, *oldest = NULL;
    bool ok;

    pthread_mutex_lock(&RL.lock);
    for (unsigned i = 0; i < RL_PROBE; i++) {
        struct rl_slot *c = &RL.slot[(h + i) % RL_SLOTS];
        if (c->hash == h && c->kind == kind) {
            s = c;
            break;
        }
        if (!c->hash && !s) {
            s = c;
            break;
        }
        if (!oldest || c->start_ms < oldest->start_ms)
            oldest = c;
    }
    if (!s) { /* the probe run is full: reuse its oldest window */
        s = oldest;
        if (s->suppressed)
            report(s);
        s->hash = 0;
    }
    if (s->hash != h) {
        memset(s, 0, sizeof(*s));
        s->hash = h;
        s->kind = kind;
        snprintf(s->device, sizeof(s->device), "%s/%s", pk ? pk : "", dn ? dn : "");
        snprintf(s->pk, sizeof(s->pk), "%s", pk ? pk : "");
        snprintf(s->event, sizeof(s->event), "%s", event ? event : "");
        s->start_ms = now;
    }
    if (now - s->start_ms >= LOG_WINDOW_MS) {
        if (s->suppressed)
            report(s);
        s->start_ms = now;
        s->n = 0;
    }
    s->prio = prio;
    ok = s->n < LOG_BURST;
    if (ok)
        s->n++;
    else
        s->suppressed++;
    pthread_mutex_unlock(&RL.lock);
    return ok;
}

void log_flush_suppressed(void)
{
    int64_t now = mono_ms();
    pthread_mutex_lock(&RL.lock);
    for (size_t i = 0; i < RL_SLOTS; i++) {
        struct rl_slot *s = &RL.slot[i];
        if (s->hash && s->suppressed && now - s->start_ms >= LOG_WINDOW_MS) {
            report(s);
            s->start_ms = now;
            s->n = 0;
        }
    }
    pthread_mutex_unlock(&RL.lock);
}

void log_write_dev(int prio, const char *pk, const char *dn, const char *event, const char *fmt,
                   ...)
{
    char buf[2048], prefix[160];
    struct fields f = {.pk = pk, .dn = dn, .event = event};
    va_list ap;

    if (!admit(prio, pk, dn, event, event ? (const void *)event : (const void *)fmt))
        return;
    snprintf(prefix, sizeof(prefix), "%s/%s: ", pk ? pk : "", dn ? dn : "");
    va_start(ap, fmt);
    size_t n = vformat(buf, sizeof(buf), prefix, 0, fmt, ap);
    va_end(ap);
    emit(prio, &f, buf, n);
}

int log_level_parse(const char *name)
{
    static const struct {
        const char *name;
        int level;
    } levels[] = {{"error", LOG_ERR},
                  {"warning", LOG_WARNING},
                  {"notice", LOG_NOTICE},
                  {"info", LOG_INFO},
                  {"debug", LOG_DEBUG}};
    for (size_t i = 0; name && i < sizeof(levels) / sizeof(levels[0]); i++)
        if (strcasecmp(name, levels[i].name) == 0)
            return levels[i].level;
    return -1;
}
