/*
 * plugin_util: helpers the bundled plugins (simulator, modbus) share: a monotonic clock and
 * condition variables that wait on it, the check_config error text, typed reads of optional
 * config members, and per-device log lines. It is an internal static library linked into each
 * plugin with hidden visibility: not part of the plugin ABI (include/aligw/plugin.h), never
 * installed, and no plugin exports any of it.
 */
#ifndef ALIGW_PLUGIN_UTIL_H
#define ALIGW_PLUGIN_UTIL_H

#include <aligw/plugin.h>

#include <jansson.h>
#include <pthread.h>
#include <stddef.h>

/* Seconds on CLOCK_MONOTONIC. */
double plugin_now_s(void);

/* Initializes cond to time its waits on CLOCK_MONOTONIC. Returns 0 or a positive errno. */
int plugin_cond_init(pthread_cond_t *cond);
/* Waits on cond (from plugin_cond_init; lock held) for at most seconds, or not at all if <= 0. */
void plugin_cond_wait_s(pthread_cond_t *cond, pthread_mutex_t *lock, double seconds);

/*
 * Formats a config problem into err[0..len) (either may be 0/NULL: nothing is written) and
 * returns -EINVAL, so a check can `return plugin_fail(err, len, ...)`.
 */
int plugin_fail(char *err, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/*
 * Optional members of a config object o (o may be NULL: every member is then absent). Absent:
 * *out = def and 0. Present but not a number, or not an integer in lo..hi: the reason goes to
 * err as "<where>: \"<key>\" must be ..." and they return -EINVAL.
 */
int plugin_get_num(json_t *o, const char *key, double def, double *out, const char *where,
                   char *err, size_t len);
int plugin_get_int(json_t *o, const char *key, long def, long lo, long hi, long *out,
                   const char *where, char *err, size_t len);

/* Logs one line through host->log about dev, prefixed "productKey/deviceName: ". */
void plugin_log_dev(const struct aligw_host *host, int level, const struct aligw_device *dev,
                    const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#endif
