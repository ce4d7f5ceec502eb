/* devrec: records created once at their size, found again, walked, and finished with fini. */
#include "check.h"
#include "devrec.h"

#include <stdio.h>
#include <string.h>

struct rec {
    struct devrec rec;
    int value;
    char tail[200]; /* a record larger than the header: the set must allocate all of it */
};

static int finished;

static void fini(void *p)
{
    struct rec *r = p;
    finished += r->value;
}

int main(void)
{
    struct devrec_set s;
    bool created = true;
    char dn[16];

    devrec_set_init(&s);
    CHECK(devrec_get(&s, "a1P", "d0", 0, &created) == NULL);
    CHECK(!created);
    for (int i = 0; i < 300; i++) {
        snprintf(dn, sizeof(dn), "d%d", i);
        struct rec *r = devrec_get(&s, "a1P", dn, sizeof(*r), &created);
        CHECK(r != NULL && created);
        CHECK(r->value == 0 && r->tail[199] == 0);
        CHECK(strcmp(r->rec.key, "a1P/") > 0 && strcmp(r->rec.pk, "a1P") == 0);
        CHECK(strcmp(r->rec.dn, dn) == 0);
        r->value = i + 1;
        memset(r->tail, 'x', sizeof(r->tail)); /* ASan: the whole size is ours */
    }
    struct rec *again = devrec_get(&s, "a1P", "d17", sizeof(*again), &created);
    CHECK(again != NULL && !created && again->value == 18);
    CHECK(devrec_get(&s, "a1P", "d17", 0, NULL) == again);
    CHECK(strcmp(again->rec.key, "a1P/d17") == 0);
    CHECK(devrec_get(&s, "a1Q", "d17", 0, NULL) == NULL);
    int n = 0, sum = 0;
    for (struct devrec *e = s.head; e; e = e->next) {
        n++;
        sum += ((struct rec *)e)->value;
    }
    CHECK_INT(n, 300);
    CHECK_INT(sum, 300 * 301 / 2);
    CHECK(((struct rec *)s.head)->value == 300); /* newest first */
    devrec_set_free(&s, fini);
    CHECK_INT(finished, 300 * 301 / 2);
    CHECK(s.head == NULL);
    return check_done();
}
