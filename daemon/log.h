/*
 * log: the daemon's only way to say something. Lines go to stderr with a "<N>" syslog priority
 * prefix that journald understands; when stderr is the journal itself (JOURNAL_STREAM names it,
 * as systemd sets it for a service), entries go to journald with sd_journal_send and structured
 * fields instead: DEVICE=pk/dn, PRODUCT_KEY=, DEVICE_NAME=, PLUGIN=, ALIGW_EVENT= (online,
 * kicked, auth_refused, ...), so `journalctl -u aligwd DEVICE=pk/dn` works. The level check
 * happens before any formatting, so a debug line costs one comparison when debug is off. Lines
 * about one device name it "pk/dn" through log_dev()/log_event(); those are rate-limited per
 * device and kind (the event, or else the format): at most LOG_BURST lines per LOG_WINDOW_MS,
 * then one "pk/dn: N similar messages suppressed" once the window has passed (at the next such
 * line, or from log_flush_suppressed(), which main calls every few seconds). Thread-safe. Never
 * pass a secret to any of these.
 */
#ifndef ALIGW_LOG_H
#define ALIGW_LOG_H

#include <stdbool.h>
#include <syslog.h>

#define LOG_BURST 5
#define LOG_WINDOW_MS 10000

extern int log_level; /* LOG_ERR .. LOG_DEBUG; default LOG_INFO */

/* Looks at JOURNAL_STREAM and stderr: journal mode on when they match. Call once, first. */
void log_init(void);
/* True when entries go to journald. */
bool log_to_journal(void);

void log_write(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Same, appending ": strerror(-err)" when err < 0. */
void log_write_err(int prio, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* A line about device pk/dn (either may be NULL), of event kind event (may be NULL), rate
 * limited. fmt must be a literal: its address is the kind when event is NULL. */
void log_write_dev(int prio, const char *pk, const char *dn, const char *event, const char *fmt,
                   ...) __attribute__((format(printf, 5, 6)));
/* A line from plugin name (PLUGIN=name in the journal). */
void log_write_plugin(int prio, const char *plugin, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Reports the suppressed counts of the windows that have passed. */
void log_flush_suppressed(void);
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
            log_write_dev((prio), (pk), (dn), NULL, fmt, ##__VA_ARGS__);                           \
    } while (0)
/* The same, for one of the device's life events (ALIGW_EVENT=event). */
#define log_event(prio, pk, dn, event, fmt, ...)                                                   \
    do {                                                                                           \
        if ((prio) <= log_level)                                                                   \
            log_write_dev((prio), (pk), (dn), (event), fmt, ##__VA_ARGS__);                        \
    } while (0)

#endif
