/*
 * paho_sessions: the plain-Paho peer for the session benchmarks. It opens one Aliyun-signed
 * MQTTAsync session per device of a device table (the CSV shared by aligwd and the local hub),
 * waits until every session is connected or has failed, prints one JSON line
 * {"count":N,"seconds":T,"t_online":M,"rss_kb":R,"heap_kb":H,"heap_free_kb":F,"cpu_s":C,
 *  "failed":X} (t_online is CLOCK_MONOTONIC, so a driver can line it up with its own clock) and
 * disconnects. MQTT 3.1.1, keepalive 300, no persistence, verify=1 for TLS, trace level ERROR:
 * the settings aligwd's session layer uses, so the figures compare like with like.
 *
 * --reconnect keeps the sessions up instead, like a gateway: a lost session (or a failed attempt)
 * is connected again by the main thread after aligwd's back-off (200 ms doubling to 1 s, equal
 * jitter), and each time all N are online again after losses it prints
 * {"event":"reconnected","lost":L,"attempts":A,"t_online":M,"cpu_s":C,"rss_kb":R}. It exits when
 * its standard input reaches end of file. --window N: at most N connects are handed to Paho
 * without an outcome yet (aligwd does so for TLS, 256). Counters are updated from Paho's
 * threads, hence atomics.
 */
#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <MQTTAsync.h>

#include "alink.h"
#include "paho_common.h"
#include "sign.h"

enum { ST_CONNECTING, ST_UP, ST_SUBSCRIBED, ST_DOWN, ST_NEW };

static atomic_int n_online, n_failed, n_lost;
static atomic_long n_outcomes; /* connects that succeeded or failed, for --window */

/* Per session: ST_UP once connected; the main thread then subscribes (--subscribe) and sets
 * ST_SUBSCRIBED. ST_DOWN: lost or failed, waiting for the main thread (--reconnect). */
static _Atomic unsigned char *state;

static void on_connect(void *ctx, MQTTAsync_successData *resp)
{
    (void)resp;
    atomic_store(&state[(size_t)ctx], ST_UP);
    atomic_fetch_add(&n_online, 1);
    atomic_fetch_add(&n_outcomes, 1);
}

static void on_connect_failure(void *ctx, MQTTAsync_failureData *resp)
{
    if (atomic_fetch_add(&n_failed, 1) < 5)
        fprintf(stderr, "paho_sessions: device %ld: connect failed: %d %s\n", (long)(size_t)ctx,
                resp ? resp->code : 0, resp && resp->message ? resp->message : "");
    atomic_store(&state[(size_t)ctx], ST_DOWN);
    atomic_fetch_add(&n_outcomes, 1);
}

static void on_lost(void *ctx, char *cause)
{
    (void)cause;
    atomic_fetch_sub(&n_online, 1);
    atomic_fetch_add(&n_lost, 1);
    atomic_store(&state[(size_t)ctx], ST_DOWN);
}

/* Paho refuses callbacks without messageArrived; nothing is published to the devices here. */
static int on_message(void *ctx, char *topic, int len, MQTTAsync_message *m)
{
    (void)ctx;
    (void)len;
    MQTTAsync_freeMessage(&m);
    MQTTAsync_free(topic);
    return 1;
}

/* --subscribe: the same system topics aligwd subscribes for every device, one SUBSCRIBE each
 * session, issued from the main thread as sessions come up (as aligwd does from its loop). */
static void subscribe_one(MQTTAsync client, const struct bench_device *dev)
{
    char **topics = NULL;
    size_t nt = 0;
    int qos[16];
    if (alink_system_topics(dev->pk, dev->dn, &topics, &nt) < 0 || nt > 16)
        return;
    for (size_t k = 0; k < nt; k++)
        qos[k] = 1;
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    MQTTAsync_subscribeMany(client, (int)nt, topics, qos, &ro);
    alink_topics_free(topics);
}

struct opts {
    const char *host, *ca, *capath, *devfile;
    long port, count, timeout, window;
    int tls, subscribe, reconnect;
};

static struct sign_creds *creds;

static int connect_one(MQTTAsync client, int i, const struct opts *o)
{
    MQTTAsync_connectOptions opt = MQTTAsync_connectOptions_initializer;
    MQTTAsync_SSLOptions ssl = MQTTAsync_SSLOptions_initializer;
    opt.keepAliveInterval = 300;
    opt.cleansession = 1;
    opt.MQTTVersion = MQTTVERSION_3_1_1;
    opt.username = creds[i].username;
    opt.password = creds[i].password;
    opt.connectTimeout = (int)o->timeout;
    opt.onSuccess = on_connect;
    opt.onFailure = on_connect_failure;
    opt.context = (void *)(size_t)i;
    if (o->tls) {
        ssl.trustStore = o->ca;
        ssl.CApath = o->capath;
        ssl.enableServerCertAuth = 1;
        ssl.verify = 1;
        opt.ssl = &ssl;
    }
    atomic_store(&state[i], ST_CONNECTING);
    return MQTTAsync_connect(client, &opt);
}

/* aligwd's back-off (devices.c): 200 ms doubling per failed attempt up to 1 s, equal jitter. */
static double backoff_s(int attempt)
{
    double d = 0.2;
    for (int k = 0; k < attempt && d < 1.0; k++)
        d *= 2;
    if (d > 1.0)
        d = 1.0;
    return d / 2 + ((double)rand() / RAND_MAX) * (d / 2);
}

static void usage(void)
{
    fprintf(stderr, "usage: paho_sessions --host H --port P [--tls --ca FILE | --tls --capath DIR] "
                    "--devices FILE --count N [--timeout SECONDS] [--subscribe] [--reconnect] "
                    "[--window N]\n");
    exit(2);
}

static void parse(int argc, char **argv, struct opts *o)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        if (!strcmp(a, "--tls")) {
            o->tls = 1;
            continue;
        }
        if (!strcmp(a, "--subscribe")) {
            o->subscribe = 1;
            continue;
        }
        if (!strcmp(a, "--reconnect")) {
            o->reconnect = 1;
            continue;
        }
        if (!v)
            usage();
        i++;
        if (!strcmp(a, "--host"))
            o->host = v;
        else if (!strcmp(a, "--ca"))
            o->ca = v;
        else if (!strcmp(a, "--capath"))
            o->capath = v;
        else if (!strcmp(a, "--devices"))
            o->devfile = v;
        else if (!strcmp(a, "--port"))
            o->port = strtol(v, &end, 10);
        else if (!strcmp(a, "--count"))
            o->count = strtol(v, &end, 10);
        else if (!strcmp(a, "--timeout"))
            o->timeout = strtol(v, &end, 10);
        else if (!strcmp(a, "--window"))
            o->window = strtol(v, &end, 10);
        else
            usage();
        if (end && *end)
            usage();
    }
    if (!o->devfile || o->port <= 0 || o->port > 65535 || o->count <= 0 || o->window < 0 ||
        (o->tls && !o->ca && !o->capath))
        usage();
}

/* True when standard input has reached end of file (waits up to ms for it). */
static int stdin_closed(int ms)
{
    struct pollfd p = {.fd = 0, .events = POLLIN};
    char buf[256];
    if (poll(&p, 1, ms) <= 0)
        return 0;
    return read(0, buf, sizeof(buf)) <= 0;
}

int main(int argc, char **argv)
{
    struct opts o = {.host = "127.0.0.1", .timeout = 300};
    parse(argc, argv, &o);

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    struct bench_device *devs = NULL;
    bench_prog = "paho_sessions";
    int n = bench_load_devices(o.devfile, &devs, (int)o.count);
    if (n < o.count) {
        fprintf(stderr, "paho_sessions: %s has %d usable devices, %ld wanted\n", o.devfile,
                n < 0 ? 0 : n, o.count);
        return 1;
    }
    srand((unsigned)getpid());
    MQTTAsync_setTraceLevel(MQTTASYNC_TRACE_ERROR);
    MQTTAsync *clients = calloc((size_t)n, sizeof(*clients));
    state = calloc((size_t)n, sizeof(*state));
    creds = calloc((size_t)n, sizeof(*creds));
    double *retry_at = calloc((size_t)n, sizeof(*retry_at));
    int *attempt = calloc((size_t)n, sizeof(*attempt));
    if (!clients || !state || !creds || !retry_at || !attempt)
        return 1;
    char uri[300];
    snprintf(uri, sizeof(uri), "%s://%s:%ld", o.tls ? "ssl" : "tcp", o.host, o.port);

    double t0 = bench_now_s();
    for (int i = 0; i < n; i++) {
        struct sign_login in = {.product_key = devs[i].pk,
                                .device_name = devs[i].dn,
                                .device_secret = devs[i].ds,
                                .client_id = devs[i].cid,
                                .method = SIGN_HMACSHA256,
                                .securemode = o.tls ? 2 : 3,
                                .timestamp = "2524608000000"};
        if (sign_mqtt_login(&in, &creds[i])) {
            fprintf(stderr, "paho_sessions: cannot sign device %d\n", i);
            return 1;
        }
        MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer;
        co.MQTTVersion = MQTTVERSION_3_1_1;
        int rc = MQTTAsync_createWithOptions(&clients[i], uri, creds[i].client_id,
                                             MQTTCLIENT_PERSISTENCE_NONE, NULL, &co);
        if (rc != MQTTASYNC_SUCCESS) {
            fprintf(stderr, "paho_sessions: create %d: %d\n", i, rc);
            return 1;
        }
        if (o.reconnect && MQTTAsync_setCallbacks(clients[i], (void *)(size_t)i, on_lost,
                                                  on_message, NULL) != MQTTASYNC_SUCCESS) {
            fprintf(stderr, "paho_sessions: setCallbacks %d failed\n", i);
            return 1;
        }
        atomic_store(&state[i], ST_NEW); /* connected below, --window at a time */
    }

    /* One pass over the sessions: connect the new ones (at most --window connects without an
     * outcome yet), subscribe the connected ones, reconnect the due ones. */
    long attempts = 0, started = 0;
    double t_end = t0 + (double)o.timeout;
    int first = 1, announced = 0;
    for (;;) {
        double now = bench_now_s();
        for (int i = 0; i < n; i++) {
            unsigned char st = atomic_load(&state[i]);
            int room = !o.window || started - atomic_load(&n_outcomes) < o.window;
            if (st == ST_NEW && room) {
                int rc = connect_one(clients[i], i, &o);
                if (rc == MQTTASYNC_SUCCESS) {
                    started++;
                } else {
                    atomic_fetch_add(&n_failed, 1);
                    atomic_store(&state[i], ST_DOWN);
                    fprintf(stderr, "paho_sessions: connect %d: %d\n", i, rc);
                }
            } else if (st == ST_UP) {
                attempt[i] = 0;
                retry_at[i] = 0;
                atomic_store(&state[i], ST_SUBSCRIBED);
                if (o.subscribe)
                    subscribe_one(clients[i], &devs[i]);
            } else if (st == ST_DOWN && o.reconnect) {
                if (retry_at[i] == 0) {
                    retry_at[i] = now + backoff_s(attempt[i]++);
                } else if (now >= retry_at[i] && room) {
                    retry_at[i] = 0;
                    attempts++;
                    if (connect_one(clients[i], i, &o) == MQTTASYNC_SUCCESS)
                        started++;
                    else
                        atomic_store(&state[i], ST_DOWN);
                }
            }
        }
        int up = atomic_load(&n_online);
        if (first && (up + (o.reconnect ? 0 : atomic_load(&n_failed)) >= n || now > t_end)) {
            long heap, heap_free;
            bench_heap_kb(&heap, &heap_free);
            printf("{\"count\":%d,\"seconds\":%.3f,\"t_online\":%.6f,\"rss_kb\":%ld,"
                   "\"heap_kb\":%ld,\"heap_free_kb\":%ld,\"cpu_s\":%.3f,\"failed\":%d}\n",
                   n, now - t0, now, bench_rss_kb(), heap, heap_free, bench_cpu_s(), n - up);
            fflush(stdout);
            first = 0;
            atomic_store(&n_lost, 0);
            attempts = 0;
            if (!o.reconnect)
                break;
        }
        if (!first) {
            int lost = atomic_load(&n_lost);
            if (lost && up < n)
                announced = 0;
            if (lost && up >= n && !announced) {
                printf("{\"event\":\"reconnected\",\"lost\":%d,\"attempts\":%ld,"
                       "\"t_online\":%.6f,\"cpu_s\":%.3f,\"rss_kb\":%ld}\n",
                       lost, attempts, now, bench_cpu_s(), bench_rss_kb());
                fflush(stdout);
                announced = 1;
                atomic_store(&n_lost, 0);
                attempts = 0;
            }
            if (stdin_closed(10))
                break;
        } else {
            usleep(5000);
        }
    }
    int failed = n - atomic_load(&n_online);

    for (int i = 0; i < n; i++) {
        MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer;
        d.timeout = 0;
        MQTTAsync_disconnect(clients[i], &d);
    }
    for (int i = 0; i < n; i++)
        MQTTAsync_destroy(&clients[i]);
    bench_free_devices(devs, n);
    free(clients);
    free(creds);
    free(retry_at);
    free(attempt);
    return failed ? 1 : 0;
}
