/* notify: sd_notify messages and the watchdog timer (see notify.h). */
#include "notify.h"

#include "log.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <systemd/sd-daemon.h>

#define STATUS_INTERVAL_MS 5000

static struct {
    uv_timer_t watchdog, status;
    void (*status_fn)(char *buf, size_t size);
    char last[256];
    int started;
} N;

static void on_watchdog(uv_timer_t *t)
{
    sd_notify(0, "WATCHDOG=1");
}

void notify_status(void)
{
    char buf[256], msg[300];

    if (!N.status_fn)
        return;
    N.status_fn(buf, sizeof(buf));
    if (strcmp(buf, N.last) == 0)
        return;
    snprintf(N.last, sizeof(N.last), "%s", buf);
    snprintf(msg, sizeof(msg), "STATUS=%s", buf);
    sd_notify(0, msg);
}

static void on_status(uv_timer_t *t)
{
    notify_status();
}

int notify_start(uv_loop_t *loop, void (*status_fn)(char *buf, size_t size))
{
    uint64_t usec = 0;

    N.status_fn = status_fn;
    uv_timer_init(loop, &N.watchdog);
    uv_timer_init(loop, &N.status);
    N.started = 1;
    if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
        uint64_t ms = usec / 2000; /* half the interval */
        if (ms == 0)
            ms = 1;
        uv_timer_start(&N.watchdog, on_watchdog, ms, ms);
        log_info("systemd watchdog: pinging every %llu ms", (unsigned long long)ms);
    }
    uv_timer_start(&N.status, on_status, STATUS_INTERVAL_MS, STATUS_INTERVAL_MS);
    return 0;
}

void notify_ready(void)
{
    char buf[256], msg[300];
    if (N.status_fn) {
        N.status_fn(buf, sizeof(buf));
        snprintf(N.last, sizeof(N.last), "%s", buf);
        snprintf(msg, sizeof(msg), "READY=1\nSTATUS=%s", buf);
        sd_notify(0, msg);
    } else {
        sd_notify(0, "READY=1");
    }
    on_watchdog(NULL); /* first ping right away */
}

void notify_reloading(void)
{
    sd_notify(0, "RELOADING=1");
}

void notify_stopping(void)
{
    sd_notify(0, "STOPPING=1");
}

void notify_close(void)
{
    if (!N.started)
        return;
    uv_close((uv_handle_t *)&N.watchdog, NULL);
    uv_close((uv_handle_t *)&N.status, NULL);
    N.started = 0;
}
