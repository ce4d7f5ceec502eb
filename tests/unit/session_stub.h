/*
 * session_stub: a recording stand-in for the session layer (see session_stub.c), and the fake
 * clock it runs under (fake_clock.c): uv_now, uv_timer_start and uv_timer_stop are wrapped at
 * link time (-Wl,--wrap) so that timers fire only when the test advances the clock.
 */
#ifndef ALIGW_SESSION_STUB_H
#define ALIGW_SESSION_STUB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "session.h"

enum stub_kind { STUB_OPEN, STUB_CONNECT, STUB_CLOSE, STUB_PUBLISH, STUB_SUBSCRIBE };

struct stub_call {
    enum stub_kind kind;
    uint64_t id;
    uint64_t ref; /* publish: the ref; subscribe: the topic count */
    uint64_t at_ms;
    char topic[160]; /* publish: the topic; open: the client id */
};

#define STUB_MAX_CALLS 200000
extern struct stub_call stub_calls[STUB_MAX_CALLS];
extern size_t stub_n_calls;

/* Delivers an event for session id, as the real layer would (dropped if id is not open). */
void stub_event(enum session_event_kind kind, uint64_t id, int code, uint64_t ref);
bool stub_is_open(uint64_t id);
/* Calls of kind k (for session id, or any when id is 0); the last one or NULL. */
size_t stub_count(enum stub_kind k, uint64_t id);
const struct stub_call *stub_last(enum stub_kind k, uint64_t id);

/* ---- the fake clock ---- */

/* The fake time in ms (starts at 1,000,000). */
uint64_t fake_now(void);
/* Moves the clock forward by ms, firing the due timers in order (repeating ones again). */
void fake_advance(uint64_t ms);
/* When a started timer h fires next, or 0 when it is not started. */
uint64_t fake_due(const uv_timer_t *h);

#endif
