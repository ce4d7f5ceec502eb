/*
 * outbox_bench: the outbox on its own, on a real file. Prints appends/s with group commit at
 * both durabilities (a burst of pipelined appends, and one append per loop turn), the time to
 * open a store holding N messages (default 1,000,000), the drain rate (peek + ack) of that
 * backlog, and the process RSS before and after queuing it.
 *
 * usage: outbox_bench [dir] [backlog]   (dir defaults to a fresh directory under /tmp)
 */
#include "errors.h"
#include "outbox.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uv_loop_t loop;
static long n_done, n_failed;
static char payload[200];

static void on_append(void *arg, int status, int64_t seq)
{
    n_done++;
    if (status)
        n_failed++;
}

static long rss_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof(line), f))
        if (sscanf(line, "VmRSS: %ld", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb;
}

static double now_s(void)
{
    return (double)uv_hrtime() / 1e9;
}

static bool closed;
static void on_closed(void *arg)
{
    closed = true;
}

static void close_ob(struct outbox *ob)
{
    closed = false;
    outbox_close(ob, on_closed, NULL);
    while (!closed)
        uv_run(&loop, UV_RUN_ONCE);
}

/* Producer: an idle handle appending `per_turn` messages each loop turn until `total`. */
struct producer {
    uv_idle_t idle;
    struct outbox *ob;
    long sent, total;
    int per_turn, devices;
};

static void produce(uv_idle_t *h)
{
    struct producer *p = h->data;
    char dev[32];
    for (int i = 0; i < p->per_turn && p->sent < p->total; i++, p->sent++) {
        snprintf(dev, sizeof(dev), "pk/dev%04ld", p->sent % p->devices);
        if (outbox_append(p->ob, dev, "/sys/pk/dev/thing/event/property/post", payload,
                          sizeof(payload), 1, on_append, NULL) < 0)
            n_failed++, n_done++;
    }
    if (p->sent >= p->total)
        uv_idle_stop(h);
}

static double run_appends(struct outbox *ob, long total, int per_turn, int devices)
{
    struct producer p = {.ob = ob, .total = total, .per_turn = per_turn, .devices = devices};
    n_done = n_failed = 0;
    uv_idle_init(&loop, &p.idle);
    p.idle.data = &p;
    double t0 = now_s();
    uv_idle_start(&p.idle, produce);
    while (n_done < total)
        uv_run(&loop, UV_RUN_ONCE);
    double dt = now_s() - t0;
    uv_close((uv_handle_t *)&p.idle, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    if (n_failed)
        printf("  (%ld appends failed)\n", n_failed);
    return total / dt;
}

static struct outbox *open_store(const char *path, enum store_durability d)
{
    struct outbox_opts o = {.path = path, .durability = d, .policy = STORE_DROP_OLDEST};
    struct outbox *ob;
    int rc = outbox_open(&loop, &o, NULL, NULL, &ob);
    if (rc < 0) {
        fprintf(stderr, "outbox_open %s: %s\n", path, aligw_strerror(rc));
        exit(1);
    }
    return ob;
}

int main(int argc, char **argv)
{
    char dirbuf[] = "/tmp/aligw-outbox-bench-XXXXXX", path[512], cmd[600];
    const char *dir = argc > 1 ? argv[1] : mkdtemp(dirbuf);
    long backlog = argc > 2 ? strtol(argv[2], NULL, 10) : 1000000;
    const int devices = 100;
    struct outbox_stats st;

    memset(payload, 'x', sizeof(payload));
    uv_loop_init(&loop);
    printf("outbox_bench: %zu-byte payloads, %d devices, dir %s\n", sizeof(payload), devices, dir);

    for (int d = 0; d < 2; d++) {
        enum store_durability dur = d ? DURABILITY_FULL : DURABILITY_NORMAL;
        snprintf(path, sizeof(path), "%s/append%d.db", dir, d);
        struct outbox *ob = open_store(path, dur);
        double burst = run_appends(ob, 200000, 1000, devices);
        double single = run_appends(ob, 3000, 1, devices);
        printf("appends/s, durability %-6s: %9.0f (1,000 per loop turn)  %7.0f (1 per turn)\n",
               d ? "full" : "normal", burst, single);
        close_ob(ob);
    }

    snprintf(path, sizeof(path), "%s/backlog.db", dir);
    long rss0 = rss_kb();
    struct outbox *ob = open_store(path, DURABILITY_NORMAL);
    double t0 = now_s();
    double rate = run_appends(ob, backlog, 5000, devices);
    long rss1 = rss_kb();
    printf("queued %ld messages in %.1f s (%.0f/s); RSS before %ld kB, after %ld kB (+%ld kB)\n",
           backlog, now_s() - t0, rate, rss0, rss1, rss1 - rss0);
    close_ob(ob);

    t0 = now_s();
    ob = open_store(path, DURABILITY_NORMAL);
    double open_s = now_s() - t0;
    outbox_total_stats(ob, &st);
    printf("open with %llu queued: %.3f s (RSS %ld kB)\n", (unsigned long long)st.count, open_s,
           rss_kb());

    /* Drain: per device, peek 500 past the last one handed on, ack them, let the batch run. */
    struct outbox_msg *m = calloc(500, sizeof(*m));
    int64_t *after = calloc((size_t)devices, sizeof(*after));
    long drained = 0;
    long rss_peak = 0;
    t0 = now_s();
    while (st.count > 0) {
        for (int dv = 0; dv < devices; dv++) {
            char dev[32];
            size_t n;
            snprintf(dev, sizeof(dev), "pk/dev%04d", dv);
            if (outbox_peek(ob, dev, after[dv], m, 500, &n) < 0)
                return 1;
            for (size_t i = 0; i < n; i++) {
                outbox_ack(ob, dev, m[i].seq);
                after[dv] = m[i].seq;
                outbox_msg_free(&m[i]);
            }
            drained += (long)n;
        }
        outbox_flush(ob);
        uv_run(&loop, UV_RUN_NOWAIT);
        outbox_total_stats(ob, &st);
        long r = rss_kb();
        rss_peak = r > rss_peak ? r : rss_peak;
    }
    double dt = now_s() - t0;
    printf("drained %ld messages (peek + ack) in %.2f s: %.0f msg/s (peak RSS %ld kB)\n", drained,
           dt, drained / dt, rss_peak);
    free(m);
    free(after);
    close_ob(ob);
    uv_loop_close(&loop);
    if (argc <= 1) {
        snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
        if (system(cmd) != 0)
            return 1;
    }
    return 0;
}
