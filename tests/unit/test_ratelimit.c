/* ratelimit: half a second of burst, the steady rate, AIMD on 429s, a changed configuration. */
#include "ratelimit.h"
#include "check.h"

/* Messages the bucket lets through from t0 to t1 (ms), trying every ms. */
static int sent_between(struct ratelimit *rl, double conf, uint64_t t0, uint64_t t1)
{
    int n = 0;
    for (uint64_t t = t0; t < t1; t++)
        while (ratelimit_take(rl, conf, t) == 0)
            n++;
    return n;
}

int main(void)
{
    struct ratelimit rl;

    /* unlimited */
    ratelimit_init(&rl, 0, 0);
    CHECK_INT(ratelimit_take(&rl, 0, 0), 0);
    CHECK(ratelimit_rate(&rl, 0, 0) == 0);

    /* 30/s: a burst of 15 (half a second), then 30 per second, never more than 15 + 30 t */
    ratelimit_init(&rl, 30, 1000);
    CHECK_INT(sent_between(&rl, 30, 1000, 1001), 15);
    uint64_t wait = ratelimit_take(&rl, 30, 1001);
    CHECK(wait >= 30 && wait <= 35);
    int n = sent_between(&rl, 30, 1001, 11001);
    CHECK(n >= 298 && n <= 300);
    CHECK(ratelimit_rate(&rl, 30, 11001) == 30);

    /* a 429 halves the rate; a second one within a second does not */
    double before = 0, after = 0;
    CHECK(ratelimit_throttled(&rl, 30, 20000, &before, &after));
    CHECK(before == 30 && after == 15);
    CHECK(!ratelimit_throttled(&rl, 30, 20500, &before, &after));
    CHECK(ratelimit_rate(&rl, 30, 20500) == 15);
    CHECK(ratelimit_throttled(&rl, 30, 21000, &before, &after));
    CHECK(before == 15 && after == 7.5);
    /* the bucket follows: at 7.5/s, 10 s let through about 75 (plus what was left) */
    n = sent_between(&rl, 30, 21000, 24999);
    CHECK(n >= 28 && n <= 34);
    /* +1 msg/s per 5 s without a 429, up to the configured rate */
    CHECK(ratelimit_rate(&rl, 30, 21000 + 4999) == 7.5);
    CHECK(ratelimit_rate(&rl, 30, 21000 + 5000) == 8.5);
    CHECK(ratelimit_rate(&rl, 30, 21000 + 50000) == 17.5);
    CHECK(ratelimit_rate(&rl, 30, 21000 + 500000) == 30);
    /* never below 1 msg/s */
    ratelimit_init(&rl, 1, 0);
    CHECK(ratelimit_throttled(&rl, 1, 5000, &before, &after));
    CHECK(after == 1);
    /* a configuration lowered below the learnt rate wins at once */
    ratelimit_init(&rl, 30, 0);
    CHECK(ratelimit_throttled(&rl, 30, 1000, &before, &after));
    CHECK(ratelimit_rate(&rl, 10, 1000) == 10);
    CHECK(ratelimit_rate(&rl, 100, 1000) == 15);
    return check_done();
}
