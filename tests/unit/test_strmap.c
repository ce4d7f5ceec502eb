/* strmap: insert, replace, delete with tombstones, growth, and lookups after all of it. */
#include "check.h"
#include "strmap.h"

#include <stdio.h>
#include <stdlib.h>

#define N 20000

int main(void)
{
    static char keys[N][24];
    static int vals[N];
    struct strmap m;
    int bad = 0;

    strmap_init(&m);
    CHECK(strmap_get(&m, "nothing") == NULL);
    CHECK(strmap_del(&m, "nothing") == NULL);
    for (int i = 0; i < N; i++) {
        snprintf(keys[i], sizeof(keys[i]), "a1Prod/dev%05d", i);
        vals[i] = i;
        CHECK_INT(strmap_put(&m, keys[i], &vals[i]), 0);
    }
    CHECK_INT(m.count, N);
    for (int i = 0; i < N; i++)
        bad += strmap_get(&m, keys[i]) != &vals[i];
    CHECK_INT(bad, 0);
    /* delete the even ones; the odd ones stay reachable past the tombstones */
    for (int i = 0; i < N; i += 2)
        CHECK(strmap_del(&m, keys[i]) == &vals[i]);
    CHECK_INT(m.count, N / 2);
    bad = 0;
    for (int i = 0; i < N; i++)
        bad += strmap_get(&m, keys[i]) != (i % 2 ? &vals[i] : NULL);
    CHECK_INT(bad, 0);
    /* replacing keeps the count; re-inserting reuses tombstones */
    int other = -1;
    CHECK_INT(strmap_put(&m, keys[1], &other), 0);
    CHECK(strmap_get(&m, keys[1]) == &other);
    CHECK_INT(m.count, N / 2);
    for (int i = 0; i < N; i += 2)
        CHECK_INT(strmap_put(&m, keys[i], &vals[i]), 0);
    CHECK_INT(m.count, N);
    bad = 0;
    for (int i = 2; i < N; i++)
        bad += strmap_get(&m, keys[i]) != &vals[i];
    CHECK_INT(bad, 0);
    strmap_free(&m);
    return check_done();
}
