/*
 * loopstat: how long the loop's turns keep it busy. Every turn, the time spent not waiting in
 * poll (timers, I/O callbacks, end-of-turn work) is measured with libuv's idle-time metric; the
 * longest such turn since the last read is what a stall looks like from outside (the API and
 * every device wait that long). Loop thread only.
 */
#ifndef ALIGW_LOOPSTAT_H
#define ALIGW_LOOPSTAT_H

#include <stdint.h>

#include <uv.h>

/* Call before the loop runs (it enables UV_METRICS_IDLE_TIME). 0 or a negative errno. */
int loopstat_start(uv_loop_t *loop);
void loopstat_stop(void);

struct loopstat {
    uint64_t turns;
    double max_turn_ms;   /* the longest busy turn since the last loopstat_take */
    double total_busy_ms; /* since start */
};

/* Reads the figures and starts a new "longest turn" period. */
void loopstat_take(struct loopstat *out);

#endif
