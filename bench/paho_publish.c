/*
 * paho_publish: the plain-Paho peer for bench/forward. It opens one Aliyun-signed MQTTAsync
 * session per device of a device table (the CSV shared by aligwd and the local hub), waits until
 * all are connected, then publishes M QoS 1 messages spread round-robin over the devices (message
 * i goes to device i % N, topic "/${pk}/${dn}/user/update"), keeping at most --window messages in
 * flight per client and --window-total in the whole process, and waits for every PUBACK. No
 * persistence, no offline buffering, MQTT 3.1.1, trace level ERROR: the same Paho settings
 * aligwd's session layer uses, so the figures compare like with like.
 *
 * With --anonymous it logs in without credentials as --clients plain clients instead (message i
 * goes out on client i % K, still to device i % N's topic): the producer that feeds a local
 * mosquitto for the bridge comparison.
 *
 * Prints two JSON lines on stdout: {"event":"publishing","t":MONO} when all sessions are up and
 * the first message is about to go (MONO is CLOCK_MONOTONIC in seconds, the clock Python's
 * time.monotonic() reads), then {"clients","messages","acked","failed","connect_seconds",
 * "publish_seconds","rate","rss_kb","t_end","cpu_s"}, cpu_s being this process's CPU from the first
 * publish to the last PUBACK. With --rate R message i is sent at t + i / R (paced, the same
 * schedule as api_publish --rate); --times FILE writes each message's send time (wall clock,
 * "i seconds" per line). Counters change on Paho's threads, hence atomics;
 * the publishing thread waits for window space on a condition variable that it never holds while
 * calling into Paho (Paho calls back with its own lock held).
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <MQTTAsync.h>

#include "paho_common.h"
#include "sign.h"

struct client {
    MQTTAsync h;
    atomic_int inflight;
};

static atomic_int n_connected, n_conn_failed;
static atomic_long n_acked, n_failed;
static atomic_long total_inflight;
static struct client *clients;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int waiting;

static void on_connect(void *ctx, MQTTAsync_successData *resp)
{
    atomic_fetch_add(&n_connected, 1);
}

static void on_connect_failure(void *ctx, MQTTAsync_failureData *resp)
{
    if (atomic_fetch_add(&n_conn_failed, 1) < 5)
        fprintf(stderr, "paho_publish: client %ld: connect failed: %d %s\n", (long)(size_t)ctx,
                resp ? resp->code : 0, resp && resp->message ? resp->message : "");
}

/* Frees one window slot of client c and wakes the publisher if it waits for one. */
static void release(long c)
{
    atomic_fetch_sub(&clients[c].inflight, 1);
    atomic_fetch_sub(&total_inflight, 1);
    pthread_mutex_lock(&mu);
    if (waiting)
        pthread_cond_signal(&cv);
    pthread_mutex_unlock(&mu);
}

static void on_published(void *ctx, MQTTAsync_successData *resp)
{
    atomic_fetch_add(&n_acked, 1);
    release((long)(size_t)ctx);
}

static void on_publish_failure(void *ctx, MQTTAsync_failureData *resp)
{
    if (atomic_fetch_add(&n_failed, 1) < 5)
        fprintf(stderr, "paho_publish: publish failed: %d %s\n", resp ? resp->code : 0,
                resp && resp->message ? resp->message : "");
    release((long)(size_t)ctx);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: paho_publish --port P [--host H] --devices FILE --count N --messages M\n"
            "       [--payload BYTES] [--window W] [--window-total T] [--qos 0|1]\n"
            "       [--anonymous --clients K] [--timeout SECONDS] [--rate R]\n"
            "       [--times FILE]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *devfile = NULL, *times_path = NULL;
    double rate = 0;
    long port = 0, count = 0, messages = 0, payload_len = 80, window = 16, window_total = 1000;
    long nclients_anon = 1, timeout = 300, qos = 1;
    int anonymous = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        if (!strcmp(a, "--anonymous")) {
            anonymous = 1;
            continue;
        }
        if (!v)
            usage();
        i++;
        if (!strcmp(a, "--host"))
            host = v;
        else if (!strcmp(a, "--devices"))
            devfile = v;
        else if (!strcmp(a, "--port"))
            port = strtol(v, &end, 10);
        else if (!strcmp(a, "--count"))
            count = strtol(v, &end, 10);
        else if (!strcmp(a, "--messages"))
            messages = strtol(v, &end, 10);
        else if (!strcmp(a, "--payload"))
            payload_len = strtol(v, &end, 10);
        else if (!strcmp(a, "--window"))
            window = strtol(v, &end, 10);
        else if (!strcmp(a, "--window-total"))
            window_total = strtol(v, &end, 10);
        else if (!strcmp(a, "--clients"))
            nclients_anon = strtol(v, &end, 10);
        else if (!strcmp(a, "--qos"))
            qos = strtol(v, &end, 10);
        else if (!strcmp(a, "--timeout"))
            timeout = strtol(v, &end, 10);
        else if (!strcmp(a, "--rate"))
            rate = strtod(v, &end);
        else if (!strcmp(a, "--times"))
            times_path = v;
        else
            usage();
        if (end && *end)
            usage();
    }
    if (!devfile || port <= 0 || port > 65535 || count <= 0 || messages <= 0 || window <= 0 ||
        window_total <= 0 || payload_len < 16 || payload_len > 65536 || nclients_anon <= 0 ||
        (qos != 0 && qos != 1) || rate < 0)
        usage();

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    struct bench_device *devs = NULL;
    bench_prog = "paho_publish";
    int n = bench_load_devices(devfile, &devs, (int)count);
    if (n < count) {
        fprintf(stderr, "paho_publish: %s has %d usable devices, %ld wanted\n", devfile,
                n < 0 ? 0 : n, count);
        return 1;
    }
    /* every message of device d goes to its own custom topic */
    char(*topics)[256] = calloc((size_t)n, sizeof(*topics));
    for (int i = 0; i < n; i++)
        snprintf(topics[i], sizeof(topics[i]), "/%s/%s/user/update", devs[i].pk, devs[i].dn);
    int nclients = anonymous ? (int)nclients_anon : n;
    MQTTAsync_setTraceLevel(MQTTASYNC_TRACE_ERROR);
    clients = calloc((size_t)nclients, sizeof(*clients));
    char uri[300];
    snprintf(uri, sizeof(uri), "tcp://%s:%ld", host, port);

    double t0 = bench_now_s();
    for (int i = 0; i < nclients; i++) {
        struct sign_creds cr;
        if (anonymous) {
            snprintf(cr.client_id, sizeof(cr.client_id), "paho-publish-%d-%d", (int)getpid(), i);
        } else {
            struct sign_login in = {.product_key = devs[i].pk,
                                    .device_name = devs[i].dn,
                                    .device_secret = devs[i].ds,
                                    .client_id = devs[i].cid,
                                    .method = SIGN_HMACSHA256,
                                    .securemode = 3,
                                    .timestamp = "2524608000000"};
            if (sign_mqtt_login(&in, &cr)) {
                fprintf(stderr, "paho_publish: cannot sign device %d\n", i);
                return 1;
            }
        }
        MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer;
        co.MQTTVersion = MQTTVERSION_3_1_1;
        /* Paho refuses sends beyond maxBufferedMessages (default 100) queued per client, even
         * while connected: let the window be the only limit. */
        co.maxBufferedMessages = (int)(window + 1);
        int rc = MQTTAsync_createWithOptions(&clients[i].h, uri, cr.client_id,
                                             MQTTCLIENT_PERSISTENCE_NONE, NULL, &co);
        if (rc != MQTTASYNC_SUCCESS) {
            fprintf(stderr, "paho_publish: create %d: %d\n", i, rc);
            return 1;
        }
        MQTTAsync_connectOptions opt = MQTTAsync_connectOptions_initializer;
        opt.keepAliveInterval = 300;
        opt.cleansession = 1;
        opt.MQTTVersion = MQTTVERSION_3_1_1;
        opt.maxInflight = (int)(window < 65535 ? window + 1 : 65535);
        if (!anonymous) {
            opt.username = cr.username;
            opt.password = cr.password;
        }
        opt.connectTimeout = (int)timeout;
        opt.onSuccess = on_connect;
        opt.onFailure = on_connect_failure;
        opt.context = (void *)(size_t)i;
        rc = MQTTAsync_connect(clients[i].h, &opt);
        if (rc != MQTTASYNC_SUCCESS) {
            atomic_fetch_add(&n_conn_failed, 1);
            fprintf(stderr, "paho_publish: connect %d: %d\n", i, rc);
        }
    }
    while (atomic_load(&n_connected) + atomic_load(&n_conn_failed) < nclients &&
           bench_now_s() - t0 < timeout)
        usleep(2000);
    double t_conn = bench_now_s() - t0;
    if (atomic_load(&n_connected) < nclients) {
        fprintf(stderr, "paho_publish: only %d of %d clients connected\n",
                atomic_load(&n_connected), nclients);
        return 1;
    }

    char *payload = malloc((size_t)payload_len + 1);
    double *times = times_path ? calloc((size_t)messages, sizeof(*times)) : NULL;
    double c1 = bench_cpu_s();
    double t1 = bench_now_s();
    printf("{\"event\":\"publishing\",\"t\":%.6f}\n", t1);
    fflush(stdout);
    long sent = 0;
    for (long i = 0; i < messages; i++) {
        long d = i % n, c = anonymous ? i % nclients : d;
        if (rate > 0)
            bench_sleep_until(t1 + (double)i / rate);
        while (atomic_load(&clients[c].inflight) >= window ||
               atomic_load(&total_inflight) >= window_total) {
            pthread_mutex_lock(&mu);
            waiting = 1;
            if (atomic_load(&clients[c].inflight) >= window ||
                atomic_load(&total_inflight) >= window_total) {
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                ts.tv_nsec += 10 * 1000 * 1000;
                if (ts.tv_nsec >= 1000000000) {
                    ts.tv_sec++;
                    ts.tv_nsec -= 1000000000;
                }
                pthread_cond_timedwait(&cv, &mu, &ts);
            }
            waiting = 0;
            pthread_mutex_unlock(&mu);
            if (bench_now_s() - t1 > timeout)
                goto done;
        }
        /* A fixed-size JSON payload padded with 'x', as the other producers send. */
        int k =
            snprintf(payload, (size_t)payload_len + 1, "{\"seq\":%ld,\"dev\":%ld,\"pad\":\"", i, d);
        for (; k < payload_len - 2; k++)
            payload[k] = 'x';
        payload[k++] = '"';
        payload[k++] = '}';
        MQTTAsync_message msg = MQTTAsync_message_initializer;
        msg.payload = payload;
        msg.payloadlen = (int)payload_len;
        msg.qos = (int)qos;
        MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
        ro.onSuccess = on_published;
        ro.onFailure = on_publish_failure;
        ro.context = (void *)(size_t)c;
        atomic_fetch_add(&clients[c].inflight, 1);
        atomic_fetch_add(&total_inflight, 1);
        if (times)
            times[i] = bench_wall_s();
        int rc = MQTTAsync_sendMessage(clients[c].h, topics[d], &msg, &ro);
        if (rc != MQTTASYNC_SUCCESS) {
            atomic_fetch_sub(&clients[c].inflight, 1);
            atomic_fetch_sub(&total_inflight, 1);
            if (atomic_fetch_add(&n_failed, 1) < 5)
                fprintf(stderr, "paho_publish: send %ld: %d\n", i, rc);
        }
        sent++;
    }
    while (atomic_load(&n_acked) + atomic_load(&n_failed) < messages &&
           bench_now_s() - t1 < timeout)
        usleep(1000);
done:;
    double t2 = bench_now_s();
    double cpu = bench_cpu_s() - c1;
    long acked = atomic_load(&n_acked);
    printf("{\"clients\":%d,\"messages\":%ld,\"sent\":%ld,\"acked\":%ld,\"failed\":%ld,"
           "\"connect_seconds\":%.3f,\"publish_seconds\":%.3f,\"rate\":%.0f,\"rss_kb\":%ld,"
           "\"t_end\":%.6f,\"cpu_s\":%.3f}\n",
           nclients, messages, sent, acked, atomic_load(&n_failed), t_conn, t2 - t1,
           (double)acked / (t2 - t1), bench_rss_kb(), t2, cpu);
    if (times_path && bench_write_times(times_path, times, messages, 0) < 0)
        fprintf(stderr, "paho_publish: cannot write %s\n", times_path);
    fflush(stdout);

    for (int i = 0; i < nclients; i++) {
        MQTTAsync_disconnectOptions dopt = MQTTAsync_disconnectOptions_initializer;
        dopt.timeout = 0;
        MQTTAsync_disconnect(clients[i].h, &dopt);
    }
    for (int i = 0; i < nclients; i++)
        MQTTAsync_destroy(&clients[i].h);
    bench_free_devices(devs, n);
    free(topics);
    free(clients);
    free(payload);
    free(times);
    return acked == messages ? 0 : 1;
}
