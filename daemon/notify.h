/*
 * notify: the daemon's conversation with systemd through sd_notify: READY=1 once up, STATUS=
 * with a one-line summary, WATCHDOG=1 from a loop timer at half of WATCHDOG_USEC (so a stuck
 * loop stops the pings and systemd restarts us), RELOADING=1 and STOPPING=1. Without
 * NOTIFY_SOCKET every call is a cheap no-op.
 */
#ifndef ALIGW_NOTIFY_H
#define ALIGW_NOTIFY_H

#include <uv.h>

/* Starts the watchdog and status timers. status_fn writes the STATUS= text into buf. */
int notify_start(uv_loop_t *loop, void (*status_fn)(char *buf, size_t size));
void notify_ready(void);
void notify_reloading(void);
void notify_stopping(void);
/* Sends STATUS= now (also sent every few seconds by the timer). */
void notify_status(void);
void notify_close(void);

#endif
