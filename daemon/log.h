/*
 * log: the daemon's only way to say something. Lines go to stderr with a "<N>" syslog priority
 * prefix that journald understands. The level check happens before any formatting, so a debug
 * line costs one comparison when debug is off. Lines about one device name it "pk/dn" through
 * log_dev(). Never pass a secret to any of these.
 */
#ifndef ALIGW_LOG_H
#define ALIGW_LOG_H

#include <syslog.h>

extern int log_level; /* LOG_ERR .. LOG_DEBUG; default LOG_INFO */

void log_write(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Same, appending ": strerror(-err)" when err < 0. */
void log_write_err(int prio, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Parses "error", "warning", "notice", "info", "debug". Returns the level or -1. */
int log_level_parse(const char *name);

#define log_at(prio, ...)                                                                          \
    do {                                                                                           \
        if ((prio) <= log_level)                                                                   \
            log_write((prio), __VA_ARGS__);                                                        \
    } while (0)
#define log_error(...) log_at(LOG_ERR, __VA_ARGS__)
#define log_warn(...) log_at(LOG_WARNING, __VA_ARGS__)
#define log_notice(...) log_at(LOG_NOTICE, __VA_ARGS__)
#define log_info(...) log_at(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_at(LOG_DEBUG, __VA_ARGS__)
/* err is 0 or a negative errno / ALIGW_E* code (see errors.h). */
#define log_errno(prio, err, ...)                                                                  \
    do {                                                                                           \
        if ((prio) <= log_level)                                                                   \
            log_write_err((prio), (err), __VA_ARGS__);                                             \
    } while (0)
/* A line about one device: "pk/dn: message". */
#define log_dev(prio, pk, dn, fmt, ...)                                                            \
    do {                                                                                           \
        if ((prio) <= log_level)                                                                   \
            log_write((prio), "%s/%s: " fmt, (pk), (dn), ##__VA_ARGS__);                           \
    } while (0)

#endif
