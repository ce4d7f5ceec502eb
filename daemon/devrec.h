/*
 * devrec: the per-device records a loop module keeps for itself (the shadow's queue, remote
 * config's transfer): found by pk/dn, created on first use, walked as a list, freed together.
 * A module's record type starts with a struct devrec; the set allocates the whole record,
 * zeroed, at the size the module gives. Loop thread only, like strmap underneath.
 */
#ifndef ALIGW_DEVREC_H
#define ALIGW_DEVREC_H

#include "strmap.h"

#include <stdbool.h>
#include <stddef.h>

struct devrec {
    char key[112], pk[40], dn[70]; /* key is "pk/dn" */
    struct devrec *next;           /* the set's list, newest first */
};

struct devrec_set {
    struct strmap map;
    struct devrec *head;
};

void devrec_set_init(struct devrec_set *s);
/* The record of pk/dn; when absent and size > 0 (at least sizeof(struct devrec)), a new zeroed
 * record of size bytes, and *created (when not NULL) says so. NULL when absent (size 0) or out
 * of memory. */
void *devrec_get(struct devrec_set *s, const char *pk, const char *dn, size_t size, bool *created);
/* Calls fini (if not NULL) on every record, frees them and the set's index. */
void devrec_set_free(struct devrec_set *s, void (*fini)(void *rec));

#endif
