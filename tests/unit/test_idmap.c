/* idmap: a random mix of puts, replaces and deletes checked against a plain array after every
 * step, with sequential and clustered ids (the backward-shift delete is where such maps break). */
#include "check.h"
#include "idmap.h"

#include <stdint.h>
#include <stdlib.h>

#define N 4096

static uint64_t rnd(void)
{
    static uint64_t s = 0x9e3779b97f4a7c15ULL;
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
}

int main(void)
{
    static int vals[N];
    static void *ref[N]; /* the expected value of id key(i), or NULL */
    struct idmap m;
    size_t count = 0;
    int bad = 0;

    idmap_init(&m);
    CHECK(idmap_get(&m, 7) == NULL);
    CHECK(idmap_del(&m, 7) == NULL);
    CHECK_INT(idmap_put(&m, 1, NULL), -22);
    for (int round = 0; round < 200000; round++) {
        size_t i = rnd() % N;
        /* ids as the daemon makes them: slot | generation << 32, dense slots */
        uint64_t id = (uint64_t)i | (uint64_t)(i % 3) << 32;
        if (rnd() % 3) {
            CHECK_INT(idmap_put(&m, id, &vals[i]), 0);
            count += ref[i] == NULL;
            ref[i] = &vals[i];
        } else {
            bad += idmap_del(&m, id) != ref[i];
            count -= ref[i] != NULL;
            ref[i] = NULL;
        }
        if (round % 997 == 0)
            for (size_t k = 0; k < N; k++)
                bad += idmap_get(&m, (uint64_t)k | (uint64_t)(k % 3) << 32) != ref[k];
    }
    CHECK_INT(bad, 0);
    CHECK_INT(m.count, count);
    /* a walk sees every value once */
    size_t seen = 0;
    for (size_t s = 0; s < m.cap; s++)
        seen += idmap_at(&m, s) != NULL;
    CHECK_INT(seen, count);
    for (size_t k = 0; k < N; k++)
        bad += idmap_del(&m, (uint64_t)k | (uint64_t)(k % 3) << 32) != ref[k];
    CHECK_INT(bad, 0);
    CHECK_INT(m.count, 0);
    idmap_free(&m);
    return check_done();
}
