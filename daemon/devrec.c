/*
 * devrec: per-device records of a loop module (see devrec.h). The strmap indexes the records by
 * their own key string, which lives as long as the record.
 */
#include "devrec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void devrec_set_init(struct devrec_set *s)
{
    memset(s, 0, sizeof(*s));
    strmap_init(&s->map);
}

void *devrec_get(struct devrec_set *s, const char *pk, const char *dn, size_t size, bool *created)
{
    if (created)
        *created = false;
    char key[sizeof(((struct devrec *)0)->key)];
    snprintf(key, sizeof(key), "%s/%s", pk, dn);
    struct devrec *r = strmap_get(&s->map, key);
    if (r || size < sizeof(*r))
        return r;
    if (!(r = calloc(1, size)))
        return NULL;
    snprintf(r->key, sizeof(r->key), "%s", key);
    snprintf(r->pk, sizeof(r->pk), "%s", pk);
    snprintf(r->dn, sizeof(r->dn), "%s", dn);
    if (strmap_put(&s->map, r->key, r) < 0) {
        free(r);
        return NULL;
    }
    r->next = s->head;
    s->head = r;
    if (created)
        *created = true;
    return r;
}

void devrec_set_free(struct devrec_set *s, void (*fini)(void *rec))
{
    for (struct devrec *r = s->head, *next; r; r = next) {
        next = r->next;
        if (fini)
            fini(r);
        free(r);
    }
    s->head = NULL;
    strmap_free(&s->map);
}
