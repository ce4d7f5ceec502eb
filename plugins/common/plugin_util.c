/*
 * plugin_util: the helpers the bundled plugins share (see plugin_util.h). Everything here runs
 * on a plugin's own threads or inside its host calls, and keeps no state.
 */
#include "plugin_util.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

double plugin_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int plugin_cond_init(pthread_cond_t *cond)
{
    pthread_condattr_t ca;
    int rc = pthread_condattr_init(&ca);
    if (rc)
        return rc;
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* fails only for an unknown clock */
    rc = pthread_cond_init(cond, &ca);
    pthread_condattr_destroy(&ca);
    return rc;
}

void plugin_cond_wait_s(pthread_cond_t *cond, pthread_mutex_t *lock, double seconds)
{
    struct timespec ts;
    if (seconds <= 0)
        return;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += (time_t)seconds;
    ts.tv_nsec += (long)((seconds - (double)(time_t)seconds) * 1e9);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(cond, lock, &ts);
}

int plugin_fail(char *err, size_t len, const char *fmt, ...)
{
    va_list ap;
    if (err && len) {
        va_start(ap, fmt);
        vsnprintf(err, len, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

int plugin_get_num(json_t *o, const char *key, double def, double *out, const char *where,
                   char *err, size_t len)
{
    json_t *v = json_object_get(o, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!json_is_number(v))
        return plugin_fail(err, len, "%s: \"%s\" must be a number", where, key);
    *out = json_number_value(v);
    return 0;
}

int plugin_get_int(json_t *o, const char *key, long def, long lo, long hi, long *out,
                   const char *where, char *err, size_t len)
{
    json_t *v = json_object_get(o, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return plugin_fail(err, len, "%s: \"%s\" must be an integer %ld..%ld", where, key, lo, hi);
    *out = (long)json_integer_value(v);
    return 0;
}

void plugin_log_dev(const struct aligw_host *host, int level, const struct aligw_device *dev,
                    const char *fmt, ...)
{
    va_list ap;
    char *msg = NULL;
    va_start(ap, fmt);
    int n = vasprintf(&msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    host->log(host, level, "%s/%s: %s", dev->product_key, dev->device_name, msg);
    free(msg);
}
