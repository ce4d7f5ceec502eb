/*
 * fake_clock: uv_now, uv_timer_start and uv_timer_stop replaced (ld --wrap) by a clock the test
 * moves by hand. Timer handles are still initialised and closed with libuv, so the code under
 * test is unchanged; only when they fire is decided here.
 */
#include <stdlib.h>

#include "session_stub.h"

#define MAX_TIMERS 8192

struct ftimer {
    uv_timer_t *h;
    uv_timer_cb cb;
    uint64_t due, repeat;
};

static struct ftimer timers[MAX_TIMERS];
static size_t n_timers;
static uint64_t now_ms = 1000000;

uint64_t __wrap_uv_now(const uv_loop_t *loop);
int __wrap_uv_timer_start(uv_timer_t *h, uv_timer_cb cb, uint64_t timeout, uint64_t repeat);
int __wrap_uv_timer_stop(uv_timer_t *h);

uint64_t __wrap_uv_now(const uv_loop_t *loop)
{
    return now_ms;
}

uint64_t fake_now(void)
{
    return now_ms;
}

static long find(const uv_timer_t *h)
{
    for (size_t i = 0; i < n_timers; i++)
        if (timers[i].h == h)
            return (long)i;
    return -1;
}

int __wrap_uv_timer_stop(uv_timer_t *h)
{
    long i = find(h);
    if (i >= 0)
        timers[i] = timers[--n_timers];
    return 0;
}

int __wrap_uv_timer_start(uv_timer_t *h, uv_timer_cb cb, uint64_t timeout, uint64_t repeat)
{
    long i = find(h);
    if (i < 0) {
        if (n_timers == MAX_TIMERS)
            abort();
        i = (long)n_timers++;
    }
    timers[i] = (struct ftimer){h, cb, now_ms + timeout, repeat};
    return 0;
}

uint64_t fake_due(const uv_timer_t *h)
{
    long i = find(h);
    return i >= 0 ? timers[i].due : 0;
}

void fake_advance(uint64_t ms)
{
    uint64_t end = now_ms + ms;
    for (;;) {
        long next = -1;
        for (size_t i = 0; i < n_timers; i++)
            if (timers[i].due <= end && (next < 0 || timers[i].due < timers[next].due))
                next = (long)i;
        if (next < 0)
            break;
        struct ftimer t = timers[next];
        if (t.due > now_ms)
            now_ms = t.due;
        if (t.repeat)
            timers[next].due = now_ms + t.repeat;
        else
            timers[next] = timers[--n_timers];
        t.cb(t.h);
    }
    now_ms = end;
}
