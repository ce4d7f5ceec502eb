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
#include "sign.h"

struct device {
    char *pk, *dn, *ds, *cid;
};

static atomic_int n_connected, n_failed;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static long rss_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof(line), f))
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb;
}

/* Splits one CSV record (RFC 4180 quoting, no embedded newlines) into at most max fields. */
static int csv_split(char *line, char **fields, int max)
{
    int n = 0;
    char *r = line, *w = line;
    for (;;) {
        if (n == max)
            return -1;
        fields[n++] = w;
        if (*r == '"') {
            r++;
            for (;;) {
                if (*r == '\0')
                    return -1;
                if (*r == '"' && r[1] == '"') {
                    *w++ = '"';
                    r += 2;
                } else if (*r == '"') {
                    r++;
                    break;
                } else {
                    *w++ = *r++;
                }
            }
        }
        while (*r && *r != ',')
            *w++ = *r++;
        if (*r == '\0') {
            *w = '\0';
            return n;
        }
        *w++ = '\0';
        r++;
        w = r;
    }
}

static int load_devices(const char *path, struct device **out, int want)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "paho_sessions: %s: %s\n", path, strerror(errno));
        return -1;
    }
    char line[4096];
    char *fields[32];
    int col_pk = -1, col_dn = -1, col_ds = -1, col_cid = -1, have_header = 0, n = 0;
    struct device *devs = calloc((size_t)want, sizeof(*devs));
    while (devs && n < want && fgets(line, sizeof(line), f)) {
        char *s = line;
        if (!strncmp(s, "\xEF\xBB\xBF", 3))
            s += 3;
        s[strcspn(s, "\r\n")] = '\0';
        if (s[0] == '\0' || s[0] == '#')
            continue;
        int nf = csv_split(s, fields, 32);
        if (nf < 0) {
            fprintf(stderr, "paho_sessions: %s: bad CSV line\n", path);
            break;
        }
        if (!have_header) {
            for (int i = 0; i < nf; i++) {
                col_pk = !strcmp(fields[i], "product_key") ? i : col_pk;
                col_dn = !strcmp(fields[i], "device_name") ? i : col_dn;
                col_ds = !strcmp(fields[i], "device_secret") ? i : col_ds;
                col_cid = !strcmp(fields[i], "client_id") ? i : col_cid;
            }
            have_header = 1;
            if (col_pk < 0 || col_dn < 0 || col_ds < 0) {
                fprintf(stderr,
                        "paho_sessions: %s: need product_key, device_name, "
                        "device_secret columns\n",
                        path);
                break;
            }
            continue;
        }
        if (col_pk >= nf || col_dn >= nf || col_ds >= nf || !fields[col_ds][0])
            continue;
        devs[n].pk = strdup(fields[col_pk]);
        devs[n].dn = strdup(fields[col_dn]);
        devs[n].ds = strdup(fields[col_ds]);
        devs[n].cid =
            col_cid >= 0 && col_cid < nf && fields[col_cid][0] ? strdup(fields[col_cid]) : NULL;
        n++;
    }
    fclose(f);
    *out = devs;
    return n;
}

/* 1 once a session is connected; the main thread then subscribes (--subscribe) and sets 2. */
static atomic_char *state;

static void on_connect(void *ctx, MQTTAsync_successData *resp)
{
    atomic_store(&state[(size_t)ctx], 1);
    atomic_fetch_add(&n_connected, 1);
}

/* --subscribe: the same system topics aligwd subscribes for every device, one SUBSCRIBE each
 * session, issued from the main thread as sessions come up (as aligwd does from its loop). */
static void subscribe_new(MQTTAsync *clients, const struct device *devs, int n)
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
    struct device *devs = NULL;
    int n = load_devices(devfile, &devs, (int)count);
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

    double t0 = now_s();
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
    while (atomic_load(&n_connected) + atomic_load(&n_failed) < n && now_s() - t0 < timeout) {
        if (subscribe)
            subscribe_new(clients, devs, n);
        usleep(5000);
    }
    double secs = now_s() - t0;
    int failed = n - atomic_load(&n_connected);
    printf("{\"count\":%d,\"seconds\":%.3f,\"rss_kb\":%ld,\"failed\":%d}\n", n, secs, rss_kb(),
           failed);
    fflush(stdout);

    for (int i = 0; i < n; i++) {
        MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer;
        d.timeout = 0;
        MQTTAsync_disconnect(clients[i], &d);
    }
    for (int i = 0; i < n; i++)
        MQTTAsync_destroy(&clients[i]);
    for (int i = 0; i < n; i++) {
        free(devs[i].pk);
        free(devs[i].dn);
        free(devs[i].ds);
        free(devs[i].cid);
    }
    free(devs);
    free(clients);
    return failed ? 1 : 0;
}
