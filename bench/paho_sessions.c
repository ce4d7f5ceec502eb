/*
 * paho_sessions: the plain-Paho peer for the session benchmarks. It opens one Aliyun-signed
 * MQTTAsync session per device of a device table (the CSV shared by aligwd and the local hub),
 * waits until every session is connected or has failed, prints one JSON line
 * {"count":N,"seconds":T,"rss_kb":R,"failed":F} and disconnects. MQTT 3.1.1, keepalive 300,
 * no persistence, verify=1 for TLS, trace level ERROR: the settings aligwd's session layer uses,
 * so the figures compare like with like. Counters are updated from Paho's threads, hence atomics.
 */
#include <errno.h>
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

static atomic_int n_connected, n_failed;

/* 1 once a session is connected; the main thread then subscribes (--subscribe) and sets 2. */
static atomic_char *state;

static void on_connect(void *ctx, MQTTAsync_successData *resp)
{
    atomic_store(&state[(size_t)ctx], 1);
    atomic_fetch_add(&n_connected, 1);
}

/* --subscribe: the same system topics aligwd subscribes for every device, one SUBSCRIBE each
 * session, issued from the main thread as sessions come up (as aligwd does from its loop). */
static void subscribe_new(MQTTAsync *clients, const struct bench_device *devs, int n)
{
    for (int i = 0; i < n; i++) {
        if (atomic_load(&state[i]) != 1)
            continue;
        atomic_store(&state[i], 2);
        char **topics = NULL;
        size_t nt = 0;
        int qos[16];
        if (alink_system_topics(devs[i].pk, devs[i].dn, &topics, &nt) < 0 || nt > 16)
            continue;
        for (size_t k = 0; k < nt; k++)
            qos[k] = 1;
        MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
        MQTTAsync_subscribeMany(clients[i], (int)nt, topics, qos, &ro);
        alink_topics_free(topics);
    }
}

static void on_connect_failure(void *ctx, MQTTAsync_failureData *resp)
{
    if (atomic_fetch_add(&n_failed, 1) < 5)
        fprintf(stderr, "paho_sessions: device %ld: connect failed: %d %s\n", (long)(size_t)ctx,
                resp ? resp->code : 0, resp && resp->message ? resp->message : "");
}

static void usage(void)
{
    fprintf(stderr, "usage: paho_sessions --host H --port P [--tls --ca FILE] --devices FILE "
                    "--count N [--timeout SECONDS] [--subscribe]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *ca = NULL, *devfile = NULL;
    long port = 0, count = 0, timeout = 300;
    int tls = 0, subscribe = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        if (!strcmp(a, "--tls")) {
            tls = 1;
            continue;
        }
        if (!strcmp(a, "--subscribe")) {
            subscribe = 1;
            continue;
        }
        if (!v)
            usage();
        i++;
        if (!strcmp(a, "--host"))
            host = v;
        else if (!strcmp(a, "--ca"))
            ca = v;
        else if (!strcmp(a, "--devices"))
            devfile = v;
        else if (!strcmp(a, "--port"))
            port = strtol(v, &end, 10);
        else if (!strcmp(a, "--count"))
            count = strtol(v, &end, 10);
        else if (!strcmp(a, "--timeout"))
            timeout = strtol(v, &end, 10);
        else
            usage();
        if (end && *end)
            usage();
    }
    if (!devfile || port <= 0 || port > 65535 || count <= 0 || (tls && !ca))
        usage();

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    struct bench_device *devs = NULL;
    bench_prog = "paho_sessions";
    int n = bench_load_devices(devfile, &devs, (int)count);
    if (n < count) {
        fprintf(stderr, "paho_sessions: %s has %d usable devices, %ld wanted\n", devfile,
                n < 0 ? 0 : n, count);
        return 1;
    }
    MQTTAsync_setTraceLevel(MQTTASYNC_TRACE_ERROR);
    MQTTAsync *clients = calloc((size_t)n, sizeof(*clients));
    state = calloc((size_t)n, sizeof(*state));
    char uri[300];
    snprintf(uri, sizeof(uri), "%s://%s:%ld", tls ? "ssl" : "tcp", host, port);

    double t0 = bench_now_s();
    for (int i = 0; i < n; i++) {
        struct sign_creds cr;
        struct sign_login in = {.product_key = devs[i].pk,
                                .device_name = devs[i].dn,
                                .device_secret = devs[i].ds,
                                .client_id = devs[i].cid,
                                .method = SIGN_HMACSHA256,
                                .securemode = tls ? 2 : 3,
                                .timestamp = "2524608000000"};
        if (sign_mqtt_login(&in, &cr)) {
            fprintf(stderr, "paho_sessions: cannot sign device %d\n", i);
            return 1;
        }
        MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer;
        co.MQTTVersion = MQTTVERSION_3_1_1;
        int rc = MQTTAsync_createWithOptions(&clients[i], uri, cr.client_id,
                                             MQTTCLIENT_PERSISTENCE_NONE, NULL, &co);
        if (rc != MQTTASYNC_SUCCESS) {
            fprintf(stderr, "paho_sessions: create %d: %d\n", i, rc);
            return 1;
        }
        MQTTAsync_connectOptions opt = MQTTAsync_connectOptions_initializer;
        MQTTAsync_SSLOptions ssl = MQTTAsync_SSLOptions_initializer;
        opt.keepAliveInterval = 300;
        opt.cleansession = 1;
        opt.MQTTVersion = MQTTVERSION_3_1_1;
        opt.username = cr.username;
        opt.password = cr.password;
        opt.connectTimeout = (int)timeout;
        opt.onSuccess = on_connect;
        opt.onFailure = on_connect_failure;
        opt.context = (void *)(size_t)i;
        if (tls) {
            ssl.trustStore = ca;
            ssl.enableServerCertAuth = 1;
            ssl.verify = 1;
            opt.ssl = &ssl;
        }
        rc = MQTTAsync_connect(clients[i], &opt);
        if (rc != MQTTASYNC_SUCCESS) {
            atomic_fetch_add(&n_failed, 1);
            fprintf(stderr, "paho_sessions: connect %d: %d\n", i, rc);
        }
    }
    while (atomic_load(&n_connected) + atomic_load(&n_failed) < n && bench_now_s() - t0 < timeout) {
        if (subscribe)
            subscribe_new(clients, devs, n);
        usleep(5000);
    }
    double secs = bench_now_s() - t0;
    int failed = n - atomic_load(&n_connected);
    printf("{\"count\":%d,\"seconds\":%.3f,\"rss_kb\":%ld,\"failed\":%d}\n", n, secs,
           bench_rss_kb(), failed);
    fflush(stdout);

    for (int i = 0; i < n; i++) {
        MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer;
        d.timeout = 0;
        MQTTAsync_disconnect(clients[i], &d);
    }
    for (int i = 0; i < n; i++)
        MQTTAsync_destroy(&clients[i]);
    bench_free_devices(devs, n);
    free(clients);
    return failed ? 1 : 0;
}
