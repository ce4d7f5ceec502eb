/*
 * ratelimit: one device's uplink token bucket, and the rate it learns from the platform's 429
 * replies. The bucket holds half a second of messages: the platform's own bucket holds a second
 * at the same rate, so the other half second absorbs network jitter (with a full second, a
 * message that arrived a few milliseconds early met an empty platform bucket and was refused).
 * A 429 halves the rate (at most once per RATELIMIT_CUT_GAP_MS, since the replies to one burst
 * come together); it grows back by 1 msg/s per RATELIMIT_RECOVER_MS without a 429, up to the
 * configured rate (additive increase, multiplicative decrease). Pure arithmetic on a caller's
 * clock (ms); no locking, one owner.
 */
#ifndef ALIGW_RATELIMIT_H
#define ALIGW_RATELIMIT_H

#include <stdbool.h>
#include <stdint.h>

#define RATELIMIT_CUT_GAP_MS 1000
#define RATELIMIT_RECOVER_MS 5000

struct ratelimit {
    double tokens;
    uint64_t tokens_at_ms;
    double rate;                    /* in force; 0 = the configured rate */
    uint64_t cut_at_ms, step_at_ms; /* last decrease; last additive step */
    bool cut_once;                  /* cut_at_ms is valid */
};

/* Starts full (half a second of conf_rate) at now. */
void ratelimit_init(struct ratelimit *rl, double conf_rate, uint64_t now);
/* The rate in force at now (msg/s), never above conf_rate; conf_rate <= 0 gives 0 (unlimited). */
double ratelimit_rate(const struct ratelimit *rl, double conf_rate, uint64_t now);
/* Takes a token: 0 when a message may go now, else the ms to wait. Always 0 for conf_rate <= 0. */
uint64_t ratelimit_take(struct ratelimit *rl, double conf_rate, uint64_t now);
/* Gives back a token taken for a message that could not go. */
void ratelimit_untake(struct ratelimit *rl);
/* A 429: halves the rate unless it was cut less than RATELIMIT_CUT_GAP_MS ago. Returns true and
 * the rates before and after when it cut. */
bool ratelimit_throttled(struct ratelimit *rl, double conf_rate, uint64_t now, double *before,
                         double *after);

#endif
