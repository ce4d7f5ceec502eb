/*
 * simulator: an aligw plugin whose devices make up their data. Each device has properties that
 * follow a generator (sine, random walk, counter, step through values, constant) and posts all
 * of them every interval_ms from one thread shared by every device. Property sets pin a value
 * (it is reported back at once and in every later post); services "reset" (back to the
 * generators) and "set_interval" ({"interval_ms": N}) are answered through host->reply, or,
 * with a host of plugin ABI 1.3 or later, taken as the API's service_call events and answered
 * with its "reply" request (that path also serves RRPC calls, service "rrpc": the parameters
 * are echoed back as {"echo": …}). A remote configuration (the API's "config" event) that is a
 * JSON object with "interval_ms" sets the interval as set_interval does. A shadow control push
 * (the "shadow" event) is applied the same way (interval_ms, other members pinned like a
 * property set), reported with shadow_update and its desired state cleared.
 * Firmware (plugin ABI 1.2, on_firmware) is "flashed" apply_ms (default 500) later on the same
 * thread: the device then runs the package's version, unless the first file starts with
 * "ALIGW-SIM-FLASH-FAIL", which fails with step -4 (for tests).
 *
 * Config (all optional):
 *   {"interval_ms": 1000,
 *    "properties": [{"id": "temperature", "kind": "sine", "min": 20, "max": 30, "period_s": 60},
 *                   {"id": "humidity", "kind": "random_walk", "min": 30, "max": 70, "step": 0.5},
 *                   {"id": "count", "kind": "counter", "start": 0, "step": 1},
 *                   {"id": "mode", "kind": "step", "values": [0, 1, 2], "period_s": 10},
 *                   {"id": "model", "kind": "constant", "value": "sim-1"}],
 *    "devices": {"pk/dn": {"interval_ms": 500, "properties": [...]}}}
 * Numbers from sine and random_walk are rounded to "decimals" (default 2) and always sent as
 * floats; counters are integers.
 */
#include <aligw/plugin.h>

#include "plugin_util.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_PROPS 200
#define MIN_INTERVAL_MS 10
#define MAX_INTERVAL_MS 3600000

enum kind { K_SINE, K_WALK, K_COUNTER, K_STEP, K_CONSTANT };

struct prop {
    char id[65];
    enum kind kind;
    double min, max, period_s, step, start, cur;
    int decimals;
    json_t *values; /* step: array; constant: [value] */
    json_t *held;   /* set by the cloud, overrides the generator */
    long n;         /* counter ticks */
};

struct sdev {
    const struct aligw_device *dev;
    struct prop *props;
    size_t n_props;
    long interval_ms;
    double next_due; /* monotonic seconds */
    /* firmware being applied (under lock) */
    bool fw_pending;
    int64_t fw_job;
    double fw_due;
    char fw_version[65];
    char fw_path[4096];
};

struct sim {
    const struct aligw_host *host;
    struct sdev *devs;
    size_t n_devs;
    pthread_t thread;
    bool started;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool stop;
    double t0;
    unsigned seed;
    long apply_ms;
};

static void props_free(struct prop *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        json_decref(p[i].values);
        json_decref(p[i].held);
    }
    free(p);
}

static int parse_props(json_t *arr, struct prop **out, size_t *n_out, const char *where, char *err,
                       size_t len)
{
    struct prop *v;
    size_t n = json_array_size(arr), i;
    json_t *o;
    char w[160];

    if (!json_is_array(arr) || n == 0 || n > MAX_PROPS)
        return plugin_fail(err, len, "%s: \"properties\" must be an array of 1..%d objects", where,
                           MAX_PROPS);
    v = calloc(n, sizeof *v);
    if (!v)
        return -ENOMEM;
    json_array_foreach(arr, i, o)
    {
        struct prop *p = &v[i];
        const char *id = json_string_value(json_object_get(o, "id"));
        const char *kind = json_string_value(json_object_get(o, "kind"));
        double d = 2;
        snprintf(w, sizeof w, "%s: properties[%zu]", where, i);
        if (!json_is_object(o) || !id || !*id || strlen(id) >= sizeof p->id)
            goto bad_id;
        snprintf(p->id, sizeof p->id, "%s", id);
        if (!kind || strcmp(kind, "sine") == 0)
            p->kind = K_SINE;
        else if (strcmp(kind, "random_walk") == 0)
            p->kind = K_WALK;
        else if (strcmp(kind, "counter") == 0)
            p->kind = K_COUNTER;
        else if (strcmp(kind, "step") == 0)
            p->kind = K_STEP;
        else if (strcmp(kind, "constant") == 0)
            p->kind = K_CONSTANT;
        else {
            plugin_fail(err, len,
                        "%s: \"kind\" must be sine, random_walk, counter, step or constant", w);
            goto out;
        }
        if (plugin_get_num(o, "min", 0, &p->min, w, err, len) ||
            plugin_get_num(o, "max", 100, &p->max, w, err, len) ||
            plugin_get_num(o, "period_s", 60, &p->period_s, w, err, len) ||
            plugin_get_num(o, "step", p->kind == K_WALK ? 0.5 : 1, &p->step, w, err, len) ||
            plugin_get_num(o, "start", 0, &p->start, w, err, len) ||
            plugin_get_num(o, "decimals", 2, &d, w, err, len))
            goto out;
        if (p->max < p->min || p->period_s <= 0 || d < 0 || d > 10) {
            plugin_fail(err, len, "%s: need min <= max, period_s > 0, 0 <= decimals <= 10", w);
            goto out;
        }
        p->decimals = (int)d;
        p->cur = p->kind == K_WALK ? (p->min + p->max) / 2 : p->start;
        if (p->kind == K_STEP) {
            p->values = json_incref(json_object_get(o, "values"));
            if (!json_is_array(p->values) || json_array_size(p->values) == 0) {
                plugin_fail(err, len, "%s: step needs a non-empty \"values\" array", w);
                goto out;
            }
        } else if (p->kind == K_CONSTANT) {
            json_t *val = json_object_get(o, "value");
            if (!val) {
                plugin_fail(err, len, "%s: constant needs \"value\"", w);
                goto out;
            }
            p->values = json_pack("[O]", val);
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(v[j].id, p->id) == 0) {
                plugin_fail(err, len, "%s: duplicate id \"%s\"", w, p->id);
                goto out;
            }
    }
    *out = v;
    *n_out = n;
    return 0;
bad_id:
    plugin_fail(err, len, "%s: \"id\" must be a non-empty string of at most 64 characters", w);
out:
    props_free(v, n);
    return -EINVAL;
}

static const char *default_props =
    "[{\"id\":\"temperature\",\"kind\":\"sine\",\"min\":20,\"max\":30,\"period_s\":60},"
    "{\"id\":\"humidity\",\"kind\":\"random_walk\",\"min\":30,\"max\":70,\"step\":0.5},"
    "{\"id\":\"count\",\"kind\":\"counter\"}]";

/* The interval_ms member of o (config or a device entry), def when absent. */
static int interval(json_t *o, long def, long *out, const char *where, char *err, size_t len)
{
    return plugin_get_int(o, "interval_ms", def, MIN_INTERVAL_MS, MAX_INTERVAL_MS, out, where, err,
                          len);
}

/* Parses config; with sim != NULL fills its devices (pk/dn from sim->devs[i].dev). */
static int parse(const char *text, struct sim *sim, char *err, size_t len)
{
    json_error_t je;
    json_t *root = json_loads(text, 0, &je), *defs, *devs, *dflt = NULL;
    long iv;
    int rc = -EINVAL;

    if (!root)
        return plugin_fail(err, len, "config: invalid JSON at line %d: %s", je.line, je.text);
    if (!json_is_object(root)) {
        plugin_fail(err, len, "config: must be an object");
        goto out;
    }
    if (interval(root, 1000, &iv, "config", err, len))
        goto out;
    long apply_ms;
    if (plugin_get_int(root, "apply_ms", 500, 0, 3600000, &apply_ms, "config", err, len))
        goto out;
    if (sim)
        sim->apply_ms = apply_ms;
    defs = json_object_get(root, "properties");
    if (!defs)
        defs = dflt = json_loads(default_props, 0, NULL);
    devs = json_object_get(root, "devices");
    if (devs && !json_is_object(devs)) {
        plugin_fail(err, len, "config: \"devices\" must be an object keyed by \"pk/dn\"");
        goto out;
    }
    { /* validate every device entry, even those not served */
        const char *k;
        json_t *d;
        json_object_foreach(devs, k, d)
        {
            char w[200];
            struct prop *p;
            size_t n;
            long div;
            snprintf(w, sizeof w, "config: devices.%s", k);
            if (!json_is_object(d)) {
                plugin_fail(err, len, "%s: must be an object", w);
                goto out;
            }
            if (interval(d, iv, &div, w, err, len))
                goto out;
            if (json_object_get(d, "properties")) {
                if (parse_props(json_object_get(d, "properties"), &p, &n, w, err, len))
                    goto out;
                props_free(p, n);
            }
        }
    }
    {
        struct prop *p;
        size_t n;
        if (parse_props(defs, &p, &n, "config", err, len))
            goto out;
        props_free(p, n);
    }
    for (size_t i = 0; sim && i < sim->n_devs; i++) {
        struct sdev *sd = &sim->devs[i];
        char key[256];
        json_t *d;
        snprintf(key, sizeof key, "%s/%s", sd->dev->product_key, sd->dev->device_name);
        d = json_object_get(devs, key);
        interval(d, iv, &sd->interval_ms, key, err, len);
        if (parse_props(json_object_get(d, "properties") ? json_object_get(d, "properties") : defs,
                        &sd->props, &sd->n_props, key, err, len))
            goto out;
    }
    rc = 0;
out:
    json_decref(dflt);
    json_decref(root);
    return rc;
}

static int sim_check_config(const char *config_json, char *err, size_t err_len)
{
    return parse(config_json, NULL, err, err_len);
}

static double round_to(double v, int decimals)
{
    double f = pow(10, decimals);
    return round(v * f) / f;
}

/* Under sim->lock. Returns the params object for sd at time t. */
static json_t *sample(struct sim *s, struct sdev *sd, double t)
{
    json_t *o = json_object();
    for (size_t i = 0; i < sd->n_props; i++) {
        struct prop *p = &sd->props[i];
        json_t *v;
        if (p->held) {
            v = json_incref(p->held);
        } else {
            switch (p->kind) {
            case K_SINE:
                v = json_real(round_to(p->min + (p->max - p->min) *
                                                    (0.5 + 0.5 * sin(2 * M_PI * t / p->period_s)),
                                       p->decimals));
                break;
            case K_WALK:
                p->cur += p->step * ((double)rand_r(&s->seed) / RAND_MAX * 2 - 1);
                if (p->cur < p->min)
                    p->cur = p->min;
                if (p->cur > p->max)
                    p->cur = p->max;
                v = json_real(round_to(p->cur, p->decimals));
                break;
            case K_COUNTER:
                v = json_integer((json_int_t)(p->start + p->step * (double)p->n++));
                break;
            case K_STEP: {
                size_t k = (size_t)(t / p->period_s) % json_array_size(p->values);
                v = json_incref(json_array_get(p->values, k));
                break;
            }
            default:
                v = json_incref(json_array_get(p->values, 0));
                break;
            }
        }
        json_object_set_new(o, p->id, v);
    }
    return o;
}

#define FLASH_FAIL_MAGIC "ALIGW-SIM-FLASH-FAIL"

/* Applies sd's pending firmware (called unlocked, on the plugin thread). */
static void flash(struct sim *s, struct sdev *sd, int64_t job, const char *version,
                  const char *path)
{
    char head[sizeof(FLASH_FAIL_MAGIC)] = "";
    FILE *f = fopen(path, "rb");
    int step = 0;
    const char *desc = NULL;

    if (!f) {
        step = -4;
        desc = "firmware file missing";
    } else {
        size_t n = fread(head, 1, sizeof(head) - 1, f);
        head[n] = '\0';
        fclose(f);
        if (strcmp(head, FLASH_FAIL_MAGIC) == 0) {
            step = -4;
            desc = "simulated flash failure";
        }
    }
    plugin_log_dev(s->host, ALIGW_LOG_NOTICE, sd->dev, "firmware %s %s", version,
                   step ? "failed to flash" : "flashed");
    s->host->firmware_result(s->host, sd->dev, job, step, step ? NULL : version, desc);
}

static void *run(void *arg)
{
    struct sim *s = arg;
    pthread_mutex_lock(&s->lock);
    while (!s->stop) {
        double t = plugin_now_s(), next = t + 3600;
        for (size_t i = 0; i < s->n_devs; i++) {
            struct sdev *sd = &s->devs[i];
            if (sd->fw_pending && sd->fw_due <= t) {
                char version[65], path[4096];
                int64_t job = sd->fw_job;
                sd->fw_pending = false;
                memcpy(version, sd->fw_version, sizeof(version));
                memcpy(path, sd->fw_path, sizeof(path));
                pthread_mutex_unlock(&s->lock);
                flash(s, sd, job, version, path);
                pthread_mutex_lock(&s->lock);
                if (s->stop)
                    break;
            }
            if (sd->fw_pending && sd->fw_due < next)
                next = sd->fw_due;
            if (sd->next_due <= t) {
                json_t *params = sample(s, sd, t - s->t0);
                char *text = json_dumps(params, JSON_COMPACT | JSON_REAL_PRECISION(16));
                json_decref(params);
                sd->next_due += sd->interval_ms / 1000.0;
                if (sd->next_due < t)
                    sd->next_due = t + sd->interval_ms / 1000.0;
                pthread_mutex_unlock(&s->lock);
                if (text) {
                    int rc = s->host->post_properties(s->host, sd->dev, text, 0);
                    if (rc < 0 && rc != -EAGAIN)
                        plugin_log_dev(s->host, ALIGW_LOG_WARNING, sd->dev, "post failed: %s",
                                       strerror(-rc));
                }
                free(text);
                pthread_mutex_lock(&s->lock);
                if (s->stop)
                    break;
            }
            if (sd->next_due < next)
                next = sd->next_due;
        }
        if (s->stop)
            break;
        plugin_cond_wait_s(&s->cond, &s->lock, next - plugin_now_s());
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

static void sim_destroy(void *inst)
{
    struct sim *s = inst;
    if (!s)
        return;
    for (size_t i = 0; i < s->n_devs; i++)
        props_free(s->devs[i].props, s->devs[i].n_props);
    free(s->devs);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

static int sim_create(const struct aligw_host *host, const char *config_json,
                      const struct aligw_device *devices, size_t n_devices, void **instance)
{
    struct sim *s = calloc(1, sizeof *s);
    char err[256];

    *instance = NULL;
    if (!s)
        return -ENOMEM;
    s->host = host;
    s->n_devs = n_devices;
    s->devs = calloc(n_devices ? n_devices : 1, sizeof *s->devs);
    pthread_mutex_init(&s->lock, NULL);
    plugin_cond_init(&s->cond);
    if (!s->devs) {
        sim_destroy(s);
        return -ENOMEM;
    }
    for (size_t i = 0; i < n_devices; i++)
        s->devs[i].dev = &devices[i];
    if (parse(config_json, s, err, sizeof err) < 0) {
        host->log(host, ALIGW_LOG_ERR, "%s", err);
        sim_destroy(s);
        return -EINVAL;
    }
    s->seed = (unsigned)time(NULL);
    *instance = s;
    return 0;
}

static int sim_start(void *inst)
{
    struct sim *s = inst;
    double t = plugin_now_s();
    s->t0 = t;
    for (size_t i = 0; i < s->n_devs; i++)
        s->devs[i].next_due = t + 0.05 * (double)i / (s->n_devs ? s->n_devs : 1);
    if (pthread_create(&s->thread, NULL, run, s) != 0)
        return -EAGAIN;
    s->started = true;
    return 0;
}

static void sim_stop(void *inst)
{
    struct sim *s = inst;
    if (!s->started)
        return;
    pthread_mutex_lock(&s->lock);
    s->stop = true;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
    pthread_join(s->thread, NULL);
    s->started = false;
}

static struct prop *find_prop(struct sdev *sd, const char *id)
{
    for (size_t i = 0; i < sd->n_props; i++)
        if (strcmp(sd->props[i].id, id) == 0)
            return &sd->props[i];
    return NULL;
}

/* Pins the values of params (an object) on sd's properties, adding constants for new ids
 * (MAX_PROPS at most); a report goes out at once. Under s->lock. OK, or BAD_PARAMS when a value
 * found no property. */
static int hold_values(struct sim *s, struct sdev *sd, json_t *params)
{
    json_t *v;
    const char *k;
    int code = ALIGW_REPLY_OK;

    json_object_foreach(params, k, v)
    {
        struct prop *p = find_prop(sd, k);
        if (!p && sd->n_props < MAX_PROPS && strlen(k) < sizeof p->id) {
            struct prop *np = realloc(sd->props, (sd->n_props + 1) * sizeof *np);
            if (np) {
                sd->props = np;
                p = &np[sd->n_props++];
                memset(p, 0, sizeof *p);
                snprintf(p->id, sizeof p->id, "%s", k);
                p->kind = K_CONSTANT;
                p->values = json_pack("[O]", v);
            }
        }
        if (!p) {
            code = ALIGW_REPLY_BAD_PARAMS;
            continue;
        }
        json_decref(p->held);
        p->held = json_incref(v);
    }
    sd->next_due = 0; /* report back now */
    pthread_cond_signal(&s->cond);
    return code;
}

static int sim_property_set(void *inst, const struct aligw_device *dev, const char *request_id,
                            const char *params_json)
{
    struct sim *s = inst;
    struct sdev *sd = &s->devs[dev->index];
    json_t *params = json_loads(params_json, 0, NULL);
    int code;

    if (!json_is_object(params)) {
        json_decref(params);
        return s->host->reply(s->host, dev, request_id, ALIGW_REPLY_BAD_PARAMS, NULL);
    }
    pthread_mutex_lock(&s->lock);
    code = hold_values(s, sd, params);
    pthread_mutex_unlock(&s->lock);
    json_decref(params);
    return s->host->reply(s->host, dev, request_id, code, NULL);
}

/* A service: "reset", "set_interval", and (ABI 1.3, as an event) "rrpc", a synchronous call
 * whose parameters are echoed back. The answer's code; *data (malloc'd JSON) its outputs. */
static int serve_call(struct sim *s, const struct aligw_device *dev, const char *service_id,
                      const char *params_json, char **data)
{
    struct sdev *sd = &s->devs[dev->index];
    char buf[64] = "{}";
    int code = ALIGW_REPLY_OK;

    if (strcmp(service_id, "rrpc") == 0) {
        json_t *params = json_loads(params_json ? params_json : "{}", JSON_DECODE_ANY, NULL);
        json_t *o = json_pack("{s:o}", "echo", params ? params : json_null());
        *data = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        return ALIGW_REPLY_OK;
    }
    pthread_mutex_lock(&s->lock);
    if (strcmp(service_id, "reset") == 0) {
        for (size_t i = 0; i < sd->n_props; i++) {
            struct prop *p = &sd->props[i];
            json_decref(p->held);
            p->held = NULL;
            p->n = 0;
            p->cur = p->kind == K_WALK ? (p->min + p->max) / 2 : p->start;
        }
        sd->next_due = 0;
    } else if (strcmp(service_id, "set_interval") == 0) {
        json_t *params = json_loads(params_json, 0, NULL);
        json_t *v = json_object_get(params, "interval_ms");
        if (json_is_integer(v) && json_integer_value(v) >= MIN_INTERVAL_MS &&
            json_integer_value(v) <= MAX_INTERVAL_MS) {
            sd->interval_ms = (long)json_integer_value(v);
            sd->next_due = plugin_now_s() + sd->interval_ms / 1000.0;
            snprintf(buf, sizeof buf, "{\"interval_ms\":%ld}", sd->interval_ms);
        } else {
            code = ALIGW_REPLY_BAD_PARAMS;
        }
        json_decref(params);
    } else {
        code = ALIGW_REPLY_BAD_PARAMS;
    }
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
    *data = strdup(buf);
    return code;
}

static int sim_service_call(void *inst, const struct aligw_device *dev, const char *request_id,
                            const char *service_id, const char *params_json)
{
    struct sim *s = inst;
    char *data = NULL;
    int code = serve_call(s, dev, service_id, params_json, &data);
    int rc = s->host->reply(s->host, dev, request_id, code, data);
    free(data);
    return rc;
}

/*
 * A shadow control push: the desired state applied the way the platform documents it. Its
 * "interval_ms" sets the interval (as set_interval), every other member pins the property of
 * that id (as a property set); what now holds is reported with shadow_update and the desired
 * state cleared with shadow_clear_desired (aligw sends the two in order). A desired state with
 * nothing the simulator can apply is left as it is.
 */
static void shadow_control(struct sim *s, const struct aligw_device *dev, json_t *ev)
{
    struct sdev *sd = &s->devs[dev->index];
    json_t *desired = json_object_get(ev, "desired"), *reported = json_object(), *v;
    const char *k;

    if (!json_is_object(desired) || !reported)
        goto out;
    json_object_foreach(desired, k, v)
    {
        if (strcmp(k, "interval_ms") == 0) {
            char *text = json_dumps(desired, JSON_COMPACT), *data = NULL;
            if (text && serve_call(s, dev, "set_interval", text, &data) == ALIGW_REPLY_OK)
                json_object_set(reported, k, v);
            free(text);
            free(data);
        } else if (!json_is_null(v)) {
            json_t *one = json_pack("{s:O}", k, v);
            pthread_mutex_lock(&s->lock);
            if (one && hold_values(s, sd, one) == ALIGW_REPLY_OK)
                json_object_set(reported, k, v);
            pthread_mutex_unlock(&s->lock);
            json_decref(one);
        }
    }
    if (!json_object_size(reported)) {
        plugin_log_dev(s->host, ALIGW_LOG_WARNING, dev,
                       "shadow version %lld: nothing in the desired state applies here",
                       (long long)json_integer_value(json_object_get(ev, "version")));
        goto out;
    }
    json_t *upd = json_pack("{s:s,s:O}", "op", "shadow_update", "reported", reported);
    char *text = upd ? json_dumps(upd, JSON_COMPACT) : NULL;
    if (text)
        s->host->request(s->host, dev, text, 0);
    free(text);
    json_decref(upd);
    s->host->request(s->host, dev, "{\"op\":\"shadow_clear_desired\"}", 0);
    char *what = json_dumps(reported, JSON_COMPACT);
    plugin_log_dev(s->host, ALIGW_LOG_INFO, dev, "shadow version %lld applied: %s",
                   (long long)json_integer_value(json_object_get(ev, "version")),
                   what ? what : "?");
    free(what);
out:
    json_decref(reported);
}

/*
 * ABI 1.3: the API's events for our devices (the kinds in sim_events). A service call comes
 * this way when the host is 1.3 or later (on_service_call otherwise) and is answered with the
 * API's "reply" request.
 */
static void sim_event(void *inst, const struct aligw_device *dev, const char *event_json)
{
    struct sim *s = inst;
    json_t *ev = json_loads(event_json, 0, NULL);
    const char *kind = json_string_value(json_object_get(ev, "event"));

    if (kind && strcmp(kind, "service_call") == 0) {
        const char *id = json_string_value(json_object_get(ev, "id"));
        const char *svc = json_string_value(json_object_get(ev, "service"));
        char *params = json_dumps(json_object_get(ev, "params"), JSON_COMPACT | JSON_ENCODE_ANY);
        char *data = NULL;
        int code = id && svc ? serve_call(s, dev, svc, params, &data) : ALIGW_REPLY_BAD_PARAMS;
        json_t *req = json_pack("{s:s,s:s?,s:i}", "op", "reply", "request_id", id, "code", code);
        json_t *d = data ? json_loads(data, 0, NULL) : NULL;
        if (req && id) {
            if (json_is_object(d))
                json_object_set(req, "data", d);
            char *text = json_dumps(req, JSON_COMPACT);
            if (text)
                s->host->request(s->host, dev, text, 0);
            free(text);
        }
        json_decref(d);
        json_decref(req);
        free(data);
        free(params);
    } else if (kind && strcmp(kind, "config") == 0) {
        /* A remote configuration: a JSON object whose "interval_ms" we apply like set_interval. */
        const char *content = json_string_value(json_object_get(ev, "content"));
        const char *cid = json_string_value(json_object_get(ev, "config_id"));
        json_t *c = content ? json_loads(content, 0, NULL) : NULL;
        char *data = NULL;
        int code = json_is_object(c) && json_object_get(c, "interval_ms")
                       ? serve_call(s, dev, "set_interval", content, &data)
                       : ALIGW_REPLY_BAD_PARAMS;
        plugin_log_dev(s->host, code == ALIGW_REPLY_OK ? ALIGW_LOG_INFO : ALIGW_LOG_WARNING, dev,
                       "configuration %s %s", cid ? cid : "?",
                       code == ALIGW_REPLY_OK ? data : "not applied: no valid interval_ms");
        free(data);
        json_decref(c);
    } else if (kind && strcmp(kind, "shadow") == 0) {
        shadow_control(s, dev, ev);
    }
    json_decref(ev);
}

/* ABI 1.3: the answers to our requests; a refusal is logged. */
static void sim_answer(void *inst, const struct aligw_device *dev, uint64_t cookie,
                       const char *answer_json)
{
    struct sim *s = inst;
    json_t *a = json_loads(answer_json, 0, NULL);
    if (!json_is_true(json_object_get(a, "ok")))
        plugin_log_dev(s->host, ALIGW_LOG_WARNING, dev, "request %llu refused: %.300s",
                       (unsigned long long)cookie, answer_json);
    json_decref(a);
}

static const char *const sim_events[] = {"service_call", "config", "shadow", NULL};

static int sim_firmware(void *inst, const struct aligw_device *dev, const struct aligw_firmware *fw)
{
    struct sim *s = inst;
    struct sdev *sd = &s->devs[dev->index];

    if (!ALIGW_HOST_HAS(s->host, firmware_result))
        return -ENOTSUP;
    if (fw->n_files < 1 || strlen(fw->paths[0]) >= sizeof(sd->fw_path) ||
        strlen(fw->version) >= sizeof(sd->fw_version))
        return -EINVAL;
    pthread_mutex_lock(&s->lock);
    sd->fw_pending = true;
    sd->fw_job = fw->job_id;
    snprintf(sd->fw_version, sizeof(sd->fw_version), "%s", fw->version);
    snprintf(sd->fw_path, sizeof(sd->fw_path), "%s", fw->paths[0]);
    sd->fw_due = plugin_now_s() + s->apply_ms / 1000.0;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
    plugin_log_dev(s->host, ALIGW_LOG_NOTICE, dev, "flashing firmware %s (job %lld)", fw->version,
                   (long long)fw->job_id);
    return 0;
}

ALIGW_PLUGIN_EXPORT const struct aligw_plugin aligw_plugin = {
    .abi_major = ALIGW_PLUGIN_ABI_MAJOR,
    .abi_minor = ALIGW_PLUGIN_ABI_MINOR,
    .size = sizeof(struct aligw_plugin),
    .name = "simulator",
    .version = "1.0",
    .description = "devices with generated properties (sine, random walk, counter, step)",
    .check_config = sim_check_config,
    .create = sim_create,
    .start = sim_start,
    .stop = sim_stop,
    .destroy = sim_destroy,
    .on_property_set = sim_property_set,
    .on_service_call = sim_service_call,
    .on_firmware = sim_firmware,
    .events = sim_events,
    .on_event = sim_event,
    .on_answer = sim_answer,
};
