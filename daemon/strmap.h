/*
 * strmap: a string-keyed hash map (open addressing, linear probing) holding borrowed keys and
 * values. The caller owns both and must keep a key alive while it is in the map. Used for the
 * device registry ("pk/dn" → device). Not thread-safe: loop thread only.
 */
#ifndef ALIGW_STRMAP_H
#define ALIGW_STRMAP_H

#include <stddef.h>

struct strmap {
    struct strmap_slot *slots;
    size_t cap, used, count;
};

void strmap_init(struct strmap *m);
void strmap_free(struct strmap *m);
void *strmap_get(const struct strmap *m, const char *key);
/* Inserts or replaces. 0 or -ENOMEM. */
int strmap_put(struct strmap *m, const char *key, void *value);
/* Removes and returns the value, or NULL. */
void *strmap_del(struct strmap *m, const char *key);

#endif
