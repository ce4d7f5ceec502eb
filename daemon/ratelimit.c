/* ratelimit: token bucket with a rate learnt from 429s (see ratelimit.h). */
#include "ratelimit.h"

static double burst_of(double rate)
{
    return rate / 2 > 1 ? rate / 2 : 1;
}

void ratelimit_init(struct ratelimit *rl, double conf_rate, uint64_t now)
{
    *rl = (struct ratelimit){.tokens = burst_of(conf_rate), .tokens_at_ms = now};
}

double ratelimit_rate(const struct ratelimit *rl, double conf_rate, uint64_t now)
{
    if (conf_rate <= 0)
        return 0;
    double r = rl->rate;
    if (r <= 0 || r >= conf_rate) /* never cut, or the configuration changed */
        return conf_rate;
    r += (double)((now - rl->step_at_ms) / RATELIMIT_RECOVER_MS);
    return r > conf_rate ? conf_rate : r;
}

/* Brings the stored rate up to date with the additive steps taken since the last one. */
static double settle(struct ratelimit *rl, double conf_rate, uint64_t now)
{
    double r = ratelimit_rate(rl, conf_rate, now);
    if (r != rl->rate) {
        rl->step_at_ms += (now - rl->step_at_ms) / RATELIMIT_RECOVER_MS * RATELIMIT_RECOVER_MS;
        rl->rate = r;
    }
    return r;
}

uint64_t ratelimit_take(struct ratelimit *rl, double conf_rate, uint64_t now)
{
    if (conf_rate <= 0)
        return 0;
    double rate = settle(rl, conf_rate, now);
    rl->tokens += (double)(now - rl->tokens_at_ms) * rate / 1000.0;
    rl->tokens_at_ms = now;
    if (rl->tokens > burst_of(rate))
        rl->tokens = burst_of(rate);
    if (rl->tokens < 1.0)
        return (uint64_t)((1.0 - rl->tokens) * 1000.0 / rate) + 1;
    rl->tokens -= 1.0;
    return 0;
}

void ratelimit_untake(struct ratelimit *rl)
{
    rl->tokens += 1.0;
}

bool ratelimit_throttled(struct ratelimit *rl, double conf_rate, uint64_t now, double *before,
                         double *after)
{
    if (conf_rate <= 0)
        return false;
    double old = settle(rl, conf_rate, now);
    if (rl->cut_once && now - rl->cut_at_ms < RATELIMIT_CUT_GAP_MS)
        return false;
    rl->rate = old / 2 > 1 ? old / 2 : 1;
    rl->cut_at_ms = rl->step_at_ms = now;
    rl->cut_once = true;
    if (rl->tokens > burst_of(rl->rate))
        rl->tokens = burst_of(rl->rate);
    *before = old;
    *after = rl->rate;
    return true;
}
