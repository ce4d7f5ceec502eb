/* strmap: string-keyed open-addressing hash map with tombstones (see strmap.h). */
#include "strmap.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct strmap_slot {
    const char *key; /* NULL = empty; value NULL with key set = tombstone */
    void *value;
    uint64_t hash;
};

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    while (*s) {
        h ^= (unsigned char)*s++;
        h *= 1099511628211ULL;
    }
    return h;
}

void strmap_init(struct strmap *m)
{
    memset(m, 0, sizeof(*m));
}

void strmap_free(struct strmap *m)
{
    free(m->slots);
    memset(m, 0, sizeof(*m));
}

static struct strmap_slot *find(const struct strmap *m, const char *key, uint64_t h)
{
    if (!m->cap)
        return NULL;
    for (size_t i = h & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        struct strmap_slot *s = &m->slots[i];
        if (!s->key)
            return NULL;
        if (s->value && s->hash == h && strcmp(s->key, key) == 0)
            return s;
    }
}

void *strmap_get(const struct strmap *m, const char *key)
{
    struct strmap_slot *s = find(m, key, hash_str(key));
    return s ? s->value : NULL;
}

static void insert(struct strmap *m, const char *key, void *value, uint64_t h)
{
    size_t i = h & (m->cap - 1);
    while (m->slots[i].key && m->slots[i].value)
        i = (i + 1) & (m->cap - 1);
    if (!m->slots[i].key)
        m->used++;
    m->slots[i] = (struct strmap_slot){key, value, h};
    m->count++;
}

int strmap_put(struct strmap *m, const char *key, void *value)
{
    uint64_t h = hash_str(key);
    struct strmap_slot *s = find(m, key, h);

    if (s) {
        s->key = key;
        s->value = value;
        return 0;
    }
    if ((m->used + 1) * 2 > m->cap) {
        size_t ncap = m->cap ? m->cap * 2 : 64;
        struct strmap_slot *old = m->slots;
        size_t ocap = m->cap;
        /* Shrinking back is not needed; tombstones are dropped by the rehash. */
        while (ncap / 2 < m->count + 1)
            ncap *= 2;
        m->slots = calloc(ncap, sizeof(*m->slots));
        if (!m->slots) {
            m->slots = old;
            return -ENOMEM;
        }
        m->cap = ncap;
        m->used = m->count = 0;
        for (size_t i = 0; i < ocap; i++)
            if (old[i].key && old[i].value)
                insert(m, old[i].key, old[i].value, old[i].hash);
        free(old);
    }
    insert(m, key, value, h);
    return 0;
}

void *strmap_del(struct strmap *m, const char *key)
{
    struct strmap_slot *s = find(m, key, hash_str(key));
    void *v;

    if (!s)
        return NULL;
    v = s->value;
    s->value = NULL; /* tombstone: key stays set so probing continues past it */
    m->count--;
    return v;
}
