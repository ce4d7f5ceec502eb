/*
 * timesync: the platform's time (see timesync.h). With T1 the request's send time, T2/T3 the
 * platform's receive/send times and T4 the answer's arrival (all wall clock, ms), the offset of
 * the platform's clock from ours is ((T2 - T1) + (T3 - T4)) / 2 and the round trip
 * (T4 - T1) - (T3 - T2). An answer is taken only for the request in flight (same T1, same device)
 * and with a sane round trip; anything else is counted and dropped.
 */
#include "timesync.h"

#include "log.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ANSWER_TIMEOUT_MS 5000 /* a request unanswered this long is asked again */
#define FIRST_ASK_MS 1000      /* after the first device is online: its subscriptions are in */
#define MAX_RTT_MS 60000

static struct {
    uv_loop_t *loop;
    struct timesync_opts o;
    uv_timer_t timer, retry;
    bool running;
    char via[160];         /* "pk/dn" of the online device asked through, "" when none */
    char pending_dev[160]; /* the device a request is in flight on, "" when none */
    int64_t pending_t1;
    uint64_t pending_at; /* loop clock */
    bool synced, skewed;
    int64_t offset_ms, rtt_ms, synced_at_ms;
    uint64_t requests, bad_answers;
} T;

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Asks through T.via unless a request is in flight and not yet timed out. */
static void ask(void)
{
    char pk[80], dn[80], topic[256], payload[64];
    if (!T.o.interval_s || !T.via[0] || !T.o.send)
        return;
    if (T.pending_dev[0] && uv_now(T.loop) - T.pending_at < ANSWER_TIMEOUT_MS)
        return;
    const char *slash = strchr(T.via, '/');
    if (!slash || (size_t)(slash - T.via) >= sizeof(pk))
        return;
    snprintf(pk, sizeof(pk), "%.*s", (int)(slash - T.via), T.via);
    snprintf(dn, sizeof(dn), "%s", slash + 1);
    snprintf(topic, sizeof(topic), "/ext/ntp/%s/%s/request", pk, dn);
    int64_t t1 = wall_ms();
    snprintf(payload, sizeof(payload), "{\"deviceSendTime\":\"%" PRId64 "\"}", t1);
    if (T.o.send(T.o.ctx, pk, dn, topic, payload) < 0)
        return;
    T.requests++;
    T.pending_t1 = t1;
    T.pending_at = uv_now(T.loop);
    snprintf(T.pending_dev, sizeof(T.pending_dev), "%s", T.via);
}

static void on_timer(uv_timer_t *t)
{
    ask();
}

/* Until the first answer: ask, and again every ANSWER_TIMEOUT_MS (a request sent before the
 * answer's subscription was in place, or lost with its connection, is never answered). */
static void on_retry(uv_timer_t *t)
{
    if (T.synced)
        return;
    ask();
    uv_timer_start(&T.retry, on_retry, ANSWER_TIMEOUT_MS, 0);
}

static void arm(void)
{
    if (T.o.interval_s > 0)
        uv_timer_start(&T.timer, on_timer, (uint64_t)T.o.interval_s * 1000,
                       (uint64_t)T.o.interval_s * 1000);
    else
        uv_timer_stop(&T.timer);
}

int timesync_start(uv_loop_t *loop, const struct timesync_opts *o)
{
    memset(&T, 0, sizeof(T));
    T.loop = loop;
    T.o = *o;
    int rc = uv_timer_init(loop, &T.timer);
    if (rc < 0 || (rc = uv_timer_init(loop, &T.retry)) < 0)
        return rc;
    uv_unref((uv_handle_t *)&T.timer);
    uv_unref((uv_handle_t *)&T.retry);
    T.running = true;
    arm();
    return 0;
}

void timesync_apply(int interval_s, int max_skew_ms)
{
    bool changed = interval_s != T.o.interval_s;
    T.o.interval_s = interval_s;
    T.o.max_skew_ms = max_skew_ms;
    if (T.running && changed)
        arm();
}

void timesync_stop(void)
{
    if (T.running) {
        uv_close((uv_handle_t *)&T.timer, NULL);
        uv_close((uv_handle_t *)&T.retry, NULL);
        T.running = false;
    }
}

void timesync_online(const char *pk, const char *dn)
{
    if (!T.running || T.via[0])
        return;
    snprintf(T.via, sizeof(T.via), "%s/%s", pk, dn);
    if (!T.synced && T.o.interval_s) /* the first device online: learn the time soon */
        uv_timer_start(&T.retry, on_retry, FIRST_ASK_MS, 0);
}

void timesync_offline(const char *pk, const char *dn)
{
    char key[160];
    snprintf(key, sizeof(key), "%s/%s", pk, dn);
    if (strcmp(key, T.via) == 0)
        T.via[0] = '\0'; /* the next device online takes over */
}

/* A string of digits (how the platform sends its times) or a number; -1 when neither. */
static int64_t time_field(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    if (json_is_integer(v))
        return json_integer_value(v);
    const char *s = json_string_value(v);
    if (!s || !*s || strlen(s) > 18)
        return -1;
    for (const char *p = s; *p; p++)
        if (*p < '0' || *p > '9')
            return -1;
    return strtoll(s, NULL, 10);
}

void timesync_response(const char *pk, const char *dn, const void *payload, size_t len)
{
    char key[160];
    int64_t t4 = wall_ms();
    snprintf(key, sizeof(key), "%s/%s", pk, dn);
    json_t *o = json_loadb(payload, len, 0, NULL);
    int64_t t1 = time_field(o, "deviceSendTime"), t2 = time_field(o, "serverRecvTime"),
            t3 = time_field(o, "serverSendTime");
    json_decref(o);
    int64_t rtt = (t4 - t1) - (t3 - t2);
    if (!T.pending_dev[0] || strcmp(key, T.pending_dev) != 0 || t1 != T.pending_t1 || t2 <= 0 ||
        t3 < t2 || rtt < 0 || rtt > MAX_RTT_MS) {
        T.bad_answers++;
        log_dev(LOG_DEBUG, pk, dn,
                "time answer ignored (not for the request in flight, or "
                "its times do not add up)");
        return;
    }
    T.pending_dev[0] = '\0';
    uv_timer_stop(&T.retry);
    T.offset_ms = ((t2 - t1) + (t3 - t4)) / 2;
    T.rtt_ms = rtt;
    T.synced_at_ms = t4;
    T.synced = true;
    int64_t off = T.offset_ms < 0 ? -T.offset_ms : T.offset_ms;
    if (off > T.o.max_skew_ms && !T.skewed) {
        T.skewed = true;
        log_warn("the system clock is %.1f s %s the platform's (cloud.max_clock_skew_ms is %d): "
                 "TLS certificate checks and signed login timestamps depend on it; check NTP",
                 (double)off / 1000, T.offset_ms > 0 ? "behind" : "ahead of", T.o.max_skew_ms);
    } else if (off <= T.o.max_skew_ms && T.skewed) {
        T.skewed = false;
        log_notice("the system clock agrees with the platform's again (offset %" PRId64 " ms)",
                   T.offset_ms);
    }
    log_debug("platform time: offset %" PRId64 " ms, round trip %" PRId64 " ms, via %s",
              T.offset_ms, T.rtt_ms, key);
}

bool timesync_offset(int64_t *offset_ms)
{
    if (T.synced && offset_ms)
        *offset_ms = T.offset_ms;
    return T.synced;
}

json_t *timesync_status(void)
{
    json_t *o = json_pack("{s:b,s:I,s:I}", "synced", T.synced, "requests", (json_int_t)T.requests,
                          "bad_answers", (json_int_t)T.bad_answers);
    if (T.synced) {
        json_object_set_new(o, "offset_ms", json_integer(T.offset_ms));
        json_object_set_new(o, "rtt_ms", json_integer(T.rtt_ms));
        json_object_set_new(o, "synced_at_ms", json_integer(T.synced_at_ms));
        json_object_set_new(o, "skewed", json_boolean(T.skewed));
    }
    if (T.via[0])
        json_object_set_new(o, "via", json_string(T.via));
    return o;
}
