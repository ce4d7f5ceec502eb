/*
 * loopstat: the loop's busy time per turn (see loopstat.h). A uv_check handle runs once per
 * turn, after the I/O callbacks; the wall time since the previous check minus the idle time
 * libuv counted in poll in between is that turn's busy time.
 */
#include "loopstat.h"

#include <stdbool.h>

static struct {
    uv_loop_t *loop;
    uv_check_t check;
    bool on;
    uint64_t last_ns, last_idle_ns;
    uint64_t turns, max_ns, busy_ns;
} S;

static void on_check(uv_check_t *h)
{
    uint64_t now = uv_hrtime(), idle = uv_metrics_idle_time(S.loop);
    uint64_t wall = now - S.last_ns, waited = idle - S.last_idle_ns;
    uint64_t busy = wall > waited ? wall - waited : 0;
    S.last_ns = now;
    S.last_idle_ns = idle;
    S.turns++;
    S.busy_ns += busy;
    if (busy > S.max_ns)
        S.max_ns = busy;
}

int loopstat_start(uv_loop_t *loop)
{
    int rc = uv_loop_configure(loop, UV_METRICS_IDLE_TIME);
    if (rc < 0)
        return rc;
    S.loop = loop;
    uv_check_init(loop, &S.check);
    uv_unref((uv_handle_t *)&S.check); /* never keeps the loop alive by itself */
    S.last_ns = uv_hrtime();
    S.last_idle_ns = uv_metrics_idle_time(loop);
    S.on = true;
    return uv_check_start(&S.check, on_check);
}

void loopstat_stop(void)
{
    if (S.on) {
        uv_close((uv_handle_t *)&S.check, NULL);
        S.on = false;
    }
}

void loopstat_take(struct loopstat *out)
{
    out->turns = S.turns;
    out->max_turn_ms = (double)S.max_ns / 1e6;
    out->total_busy_ms = (double)S.busy_ns / 1e6;
    S.max_ns = 0;
}
