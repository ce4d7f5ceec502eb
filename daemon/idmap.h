/*
 * idmap: a hash map from 64-bit ids to borrowed pointers (open addressing, linear probing,
 * deletion by backward shift, so a map that sees millions of opens and closes never fills with
 * tombstones). The session layers name a session by the caller's 64-bit id and find it here on
 * every command and event. Not thread-safe: one thread owns a map.
 */
#ifndef ALIGW_IDMAP_H
#define ALIGW_IDMAP_H

#include <stddef.h>
#include <stdint.h>

struct idmap {
    struct idmap_slot *slots;
    size_t cap, count;
};

void idmap_init(struct idmap *m);
void idmap_free(struct idmap *m); /* the values are the caller's */
void *idmap_get(const struct idmap *m, uint64_t id);
/* Inserts or replaces; value must not be NULL. 0 or -ENOMEM. */
int idmap_put(struct idmap *m, uint64_t id, void *value);
/* Removes and returns the value, or NULL. */
void *idmap_del(struct idmap *m, uint64_t id);
/* The value in slot i (0 <= i < m->cap), or NULL: a walk over every value. Changing the map
 * during a walk moves values between slots; collect first, then change. */
void *idmap_at(const struct idmap *m, size_t i);

#endif
