/*
 * testplug: a plugin built several ways to exercise the host's refusals and failure paths.
 *   (default)   a well-behaved plugin: services "flood" (posts 50 times at once, counting
 *               refusals) and "report" (replies {"accepted":N,"rejected":N}); logs on create
 *   BAD_ABI     claims ABI major + 1
 *   FAIL_START  start() fails after reporting a device state
 *   NO_SYMBOL   exports no aligw_plugin symbol
 *   API_EVENTS  ABI 1.3's API inside the plugin: asks for "state" and "service_call" events (and
 *               a malformed kind, which the host skips); when its device comes online it makes
 *               requests and logs each answer as "answer C: JSON" (C the cookie): 1 status (its
 *               "time"), 2 reload (forbidden to plugins), 3 device (its own); a request naming
 *               another device logs "other device: RC". It answers every service call event
 *               with {"op":"reply",...,"data":{"via":"event","service":S}}
 * The default build also misbehaves on request, through its config (for the plugin host tests):
 *   {"crash": "segv"}   a thread posts {"tick":n} every 50 ms and segfaults after 300 ms
 *   {"crash": "exit"}   the same thread calls exit(7) after 300 ms
 *   {"crash": "start"}  start() segfaults
 *   {"crash": "hang"}   start() never returns
 *   {"track": N}        posts N tracked properties {"n":i} (cookie i) for device 0 from a thread
 *                       and logs "stored n=i seq=S status=E" from on_post_done
 *   {"subscribe": "user/cmd"}  subscribes device 0 to /pk/dn/user/cmd; every message on it is
 *                       published back on /pk/dn/user/echo as "echo:" + payload
 *   {"probe": "/some/path"}    start() opens the path and logs "probe PATH: ok" or the error
 *   {"flood": N}        a thread waits 1.5 s, then posts N properties as fast as it can, each
 *                       once, counting -EAGAIN (service "report" answers the counts)
 */
#include <aligw/plugin.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct inst {
    const struct aligw_host *host;
    const struct aligw_device *devs;
    atomic_int accepted, rejected;
    char crash[16], sub[128], probe[512];
    long track, flood;
    pthread_t thread;
    bool has_thread;
    atomic_bool stop;
};

/* A real invalid store, not raise(); not NULL, so that UBSan lets it reach the MMU. */
static int *volatile nowhere = (int *)16;

/* Reads "key": "value" or "key": number from the config (a test plugin: no JSON library). */
static void cfg_str(const char *cfg, const char *key, char *out, size_t len)
{
    char pat[64];
    const char *s;
    snprintf(pat, sizeof pat, "\"%s\":\"", key);
    out[0] = '\0';
    if ((s = strstr(cfg, pat))) {
        s += strlen(pat);
        size_t n = strcspn(s, "\"");
        snprintf(out, len, "%.*s", (int)(n < len ? n : len - 1), s);
    }
}

static long cfg_long(const char *cfg, const char *key)
{
    char pat[64];
    const char *s;
    snprintf(pat, sizeof pat, "\"%s\":", key);
    return (s = strstr(cfg, pat)) ? strtol(s + strlen(pat), NULL, 10) : 0;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

__attribute__((unused)) static void *run(void *arg)
{
    struct inst *t = arg;
    if (t->flood) {
        sleep_ms(1500);
        for (long i = 0; i < t->flood && !t->stop; i++) {
            char params[64];
            snprintf(params, sizeof params, "{\"f\":%ld}", i);
            int rc = t->host->post_properties(t->host, &t->devs[0], params, 0);
            if (rc == 0)
                t->accepted++;
            else if (rc == -EAGAIN)
                t->rejected++;
        }
        return NULL;
    }
    if (t->track) {
        for (long i = 1; i <= t->track && !t->stop;) {
            char params[64];
            snprintf(params, sizeof params, "{\"n\":%ld}", i);
            struct aligw_post p = {.size = sizeof p,
                                   .kind = ALIGW_POST_PROPERTIES,
                                   .params_json = params,
                                   .cookie = (uint64_t)i};
            int rc = t->host->post(t->host, &t->devs[0], &p);
            if (rc == -EAGAIN) {
                sleep_ms(5);
                continue;
            }
            if (rc < 0)
                t->host->log(t->host, ALIGW_LOG_ERR, "post n=%ld refused: %d", i, rc);
            i++;
        }
        return NULL;
    }
    for (long n = 0; !t->stop; n++) {
        char params[64];
        snprintf(params, sizeof params, "{\"tick\":%ld}", n);
        t->host->post_properties(t->host, &t->devs[0], params, 0);
        sleep_ms(50);
        if (n == 6 && !strcmp(t->crash, "segv"))
            *nowhere = 1;
        if (n == 6 && !strcmp(t->crash, "exit"))
            exit(7);
    }
    return NULL;
}

static int tp_create(const struct aligw_host *host, const char *config_json,
                     const struct aligw_device *devices, size_t n, void **instance)
{
    struct inst *t = calloc(1, sizeof *t);
    if (!t)
        return -ENOMEM;
    t->host = host;
    t->devs = devices;
    cfg_str(config_json, "crash", t->crash, sizeof t->crash);
    cfg_str(config_json, "subscribe", t->sub, sizeof t->sub);
    cfg_str(config_json, "probe", t->probe, sizeof t->probe);
    t->track = cfg_long(config_json, "track");
    t->flood = cfg_long(config_json, "flood");
    host->log(host, ALIGW_LOG_INFO, "created with %zu device(s), config %s", n, config_json);
    *instance = t;
    return 0;
}

static int tp_start(void *inst)
{
    struct inst *t = inst;
#ifdef FAIL_START
    t->host->set_device_state(t->host, &t->devs[0], 0, "testplug about to fail");
    return -EIO;
#else
    if (!strcmp(t->crash, "start"))
        *nowhere = 1;
    while (!strcmp(t->crash, "hang"))
        pause();
    if (t->probe[0]) {
        int fd = open(t->probe, O_RDONLY);
        t->host->log(t->host, ALIGW_LOG_NOTICE, "probe %s: %s", t->probe,
                     fd < 0 ? strerror(errno) : "ok");
        if (fd >= 0)
            close(fd);
    }
    if (t->sub[0]) {
        char topic[300];
        snprintf(topic, sizeof topic, "/%s/%s/%s", t->devs[0].product_key, t->devs[0].device_name,
                 t->sub);
        int rc = t->host->subscribe(t->host, &t->devs[0], topic);
        t->host->log(t->host, ALIGW_LOG_NOTICE, "subscribe %s: %d", topic, rc);
    }
    if (t->crash[0] || t->track || t->flood) {
        if (pthread_create(&t->thread, NULL, run, t) != 0)
            return -EAGAIN;
        t->has_thread = true;
    }
    return 0;
#endif
}

static void tp_stop(void *inst)
{
    struct inst *t = inst;
    t->stop = true;
    if (t->has_thread)
        pthread_join(t->thread, NULL);
}

static void tp_post_done(void *inst, const struct aligw_device *dev, uint64_t cookie, int status,
                         int64_t seq)
{
    struct inst *t = inst;
    t->host->log(t->host, ALIGW_LOG_NOTICE, "stored n=%llu seq=%lld status=%d",
                 (unsigned long long)cookie, (long long)seq, status);
}

static int tp_message(void *inst, const struct aligw_device *dev, const char *topic,
                      const void *payload, size_t len)
{
    struct inst *t = inst;
    char echo[300], body[600];
    snprintf(echo, sizeof echo, "/%s/%s/user/echo", dev->product_key, dev->device_name);
    int n = snprintf(body, sizeof body, "echo:%.*s", (int)(len < 500 ? len : 500),
                     (const char *)payload);
    return t->host->publish_raw(t->host, dev, echo, body, (size_t)n, 1);
}

static void tp_destroy(void *inst)
{
    free(inst);
}

static int tp_service(void *inst, const struct aligw_device *dev, const char *req_id,
                      const char *service_id, const char *params_json)
{
    struct inst *t = inst;
    char data[64];
    if (service_id[0] == 'f') { /* flood */
        t->host->reply(t->host, dev, req_id, 200, NULL);
        for (int i = 0; i < 50; i++) {
            int rc = t->host->post_properties(t->host, dev, "{\"i\":1}", 0);
            if (rc == 0)
                t->accepted++;
            else if (rc == -EAGAIN)
                t->rejected++;
        }
        return 0;
    }
    snprintf(data, sizeof data, "{\"accepted\":%d,\"rejected\":%d}", (int)t->accepted,
             (int)t->rejected);
    return t->host->reply(t->host, dev, req_id, 200, data);
}

#ifdef API_EVENTS
/* The value of "key":"value" in a JSON text (a test plugin: no JSON library). */
static void json_str(const char *json, const char *key, char *out, size_t len)
{
    cfg_str(json, key, out, len);
}

static void tp_event(void *inst, const struct aligw_device *dev, const char *event_json)
{
    struct inst *t = inst;
    char ev[32], state[32], id[64], svc[64], req[512];
    json_str(event_json, "event", ev, sizeof ev);
    if (!strcmp(ev, "state")) {
        json_str(event_json, "state", state, sizeof state);
        if (strcmp(state, "online"))
            return;
        t->host->request(t->host, dev, "{\"op\":\"status\"}", 1);
        t->host->request(t->host, dev, "{\"op\":\"reload\"}", 2);
        t->host->request(t->host, dev, "{\"op\":\"device\"}", 3);
        int rc = t->host->request(t->host, dev, "{\"op\":\"device\",\"device\":\"x/y\"}", 4);
        t->host->log(t->host, ALIGW_LOG_NOTICE, "other device: %d", rc);
    } else if (!strcmp(ev, "service_call")) {
        json_str(event_json, "id", id, sizeof id);
        json_str(event_json, "service", svc, sizeof svc);
        snprintf(req, sizeof req,
                 "{\"op\":\"reply\",\"request_id\":\"%s\",\"code\":200,"
                 "\"data\":{\"via\":\"event\",\"service\":\"%s\"}}",
                 id, svc);
        t->host->request(t->host, dev, req, 10);
    }
}

static void tp_answer(void *inst, const struct aligw_device *dev, uint64_t cookie,
                      const char *answer_json)
{
    struct inst *t = inst;
    t->host->log(t->host, ALIGW_LOG_NOTICE, "answer %llu: %.600s", (unsigned long long)cookie,
                 answer_json);
}

static const char *const tp_events[] = {"state", "service_call", "Not-A-Kind", NULL};
#endif

#ifdef NO_SYMBOL
#define DESCRIPTOR aligw_plugin_misspelled /* exported under the wrong name */
#else
#define DESCRIPTOR aligw_plugin
#endif
ALIGW_PLUGIN_EXPORT const struct aligw_plugin DESCRIPTOR = {
#ifdef BAD_ABI
    .abi_major = ALIGW_PLUGIN_ABI_MAJOR + 1,
#else
    .abi_major = ALIGW_PLUGIN_ABI_MAJOR,
#endif
    .abi_minor = ALIGW_PLUGIN_ABI_MINOR,
    .size = sizeof(struct aligw_plugin),
    .name = "testplug",
    .version = "0",
    .create = tp_create,
    .start = tp_start,
    .stop = tp_stop,
    .destroy = tp_destroy,
    .on_service_call = tp_service,
    .on_message = tp_message,
    .on_post_done = tp_post_done,
#ifdef API_EVENTS
    .events = tp_events,
    .on_event = tp_event,
    .on_answer = tp_answer,
#endif
};
