/* idmap: 64-bit id → pointer, open addressing with backward-shift deletion (see idmap.h). */
#include "idmap.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct idmap_slot {
    uint64_t id;
    void *value; /* NULL = empty */
};

static size_t home(uint64_t id, size_t cap)
{
    id ^= id >> 33; /* the finaliser of MurmurHash3: ids are often sequential or slot|gen */
    id *= 0xff51afd7ed558ccdULL;
    id ^= id >> 33;
    return (size_t)id & (cap - 1);
}

void idmap_init(struct idmap *m)
{
    memset(m, 0, sizeof(*m));
}

void idmap_free(struct idmap *m)
{
    free(m->slots);
    memset(m, 0, sizeof(*m));
}

static size_t find(const struct idmap *m, uint64_t id)
{
    for (size_t i = home(id, m->cap);; i = (i + 1) & (m->cap - 1))
        if (!m->slots[i].value || m->slots[i].id == id)
            return i;
}

void *idmap_get(const struct idmap *m, uint64_t id)
{
    return m->cap ? m->slots[find(m, id)].value : NULL;
}

static int grow(struct idmap *m)
{
    size_t ncap = m->cap ? m->cap * 2 : 64;
    struct idmap_slot *old = m->slots, *n = calloc(ncap, sizeof(*n));
    size_t ocap = m->cap;

    if (!n)
        return -ENOMEM;
    m->slots = n;
    m->cap = ncap;
    for (size_t i = 0; i < ocap; i++)
        if (old[i].value)
            m->slots[find(m, old[i].id)] = old[i];
    free(old);
    return 0;
}

int idmap_put(struct idmap *m, uint64_t id, void *value)
{
    if (!value)
        return -EINVAL;
    if ((m->count + 1) * 4 > m->cap * 3) { /* load factor below 3/4 */
        int rc = grow(m);
        if (rc < 0)
            return rc;
    }
    size_t i = find(m, id);
    if (!m->slots[i].value)
        m->count++;
    m->slots[i].id = id;
    m->slots[i].value = value;
    return 0;
}

void *idmap_del(struct idmap *m, uint64_t id)
{
    if (!m->cap)
        return NULL;
    size_t i = find(m, id), mask = m->cap - 1;
    void *v = m->slots[i].value;
    if (!v)
        return NULL;
    /* Backward shift: pull later members of the run into the hole when their home allows. */
    for (size_t j = (i + 1) & mask; m->slots[j].value; j = (j + 1) & mask) {
        size_t h = home(m->slots[j].id, m->cap);
        /* j may move to i when h is not cyclically within (i, j] */
        if ((j > i && (h <= i || h > j)) || (j < i && h <= i && h > j)) {
            m->slots[i] = m->slots[j];
            i = j;
        }
    }
    m->slots[i].value = NULL;
    m->count--;
    return v;
}

void *idmap_at(const struct idmap *m, size_t i)
{
    return i < m->cap ? m->slots[i].value : NULL;
}
