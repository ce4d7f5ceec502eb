/*
 * jsonpos: a position index for a JSON text (see jsonpos.h). One pass of a small recursive
 * tokenizer builds path strings as it descends and stores path → positions in an open-addressing
 * hash table whose keys live in one growing arena, so indexing a config of thousands of members
 * costs a few allocations. Key strings are decoded (escapes, \u surrogate pairs) so paths match
 * the keys jansson hands the validator.
 */
#include "jsonpos.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JSONPOS_MAX_DEPTH 4096

struct slot {
    uint32_t used;
    uint32_t hash;
    size_t off; /* path offset in the arena */
    struct jsonpos_at at;
};

struct jsonpos {
    struct slot *slots;
    size_t cap, n;
    char *arena;
    size_t arena_len, arena_cap;
};

struct tok {
    const unsigned char *p, *end;
    int line, col;
    char *path;
    size_t path_len, path_cap;
    struct jsonpos *jp;
    int depth;
    int failed;
};

static uint32_t hash_str(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 16777619u;
    }
    return h;
}

static int grow_table(struct jsonpos *jp)
{
    size_t ncap = jp->cap ? jp->cap * 2 : 64;
    struct slot *ns = calloc(ncap, sizeof(*ns));
    if (!ns)
        return -ENOMEM;
    for (size_t i = 0; i < jp->cap; i++) {
        if (!jp->slots[i].used)
            continue;
        size_t j = jp->slots[i].hash & (ncap - 1);
        while (ns[j].used)
            j = (j + 1) & (ncap - 1);
        ns[j] = jp->slots[i];
    }
    free(jp->slots);
    jp->slots = ns;
    jp->cap = ncap;
    return 0;
}

/* Makes room for need bytes in *buf, doubling its capacity *cap (from first when empty). */
static int reserve(char **buf, size_t *cap, size_t need, size_t first)
{
    if (need <= *cap)
        return 0;
    size_t ncap = *cap ? *cap * 2 : first;
    while (ncap < need)
        ncap *= 2;
    char *nb = realloc(*buf, ncap);
    if (!nb)
        return -ENOMEM;
    *buf = nb;
    *cap = ncap;
    return 0;
}

static int put(struct jsonpos *jp, const char *path, size_t len, const struct jsonpos_at *at)
{
    if ((jp->n + 1) * 2 > jp->cap && grow_table(jp) < 0)
        return -ENOMEM;
    uint32_t h = hash_str(path, len);
    size_t j = h & (jp->cap - 1);
    while (jp->slots[j].used) {
        const char *k = jp->arena + jp->slots[j].off;
        if (jp->slots[j].hash == h && strlen(k) == len && memcmp(k, path, len) == 0) {
            jp->slots[j].at = *at; /* a repeated key: the last one wins, as in jansson */
            return 0;
        }
        j = (j + 1) & (jp->cap - 1);
    }
    if (reserve(&jp->arena, &jp->arena_cap, jp->arena_len + len + 1, 1024) < 0)
        return -ENOMEM;
    memcpy(jp->arena + jp->arena_len, path, len);
    jp->arena[jp->arena_len + len] = '\0';
    jp->slots[j].used = 1;
    jp->slots[j].hash = h;
    jp->slots[j].off = jp->arena_len;
    jp->slots[j].at = *at;
    jp->arena_len += len + 1;
    jp->n++;
    return 0;
}

static void adv(struct tok *t)
{
    if (t->p >= t->end)
        return;
    if (*t->p == '\n') {
        t->line++;
        t->col = 1;
    } else if ((*t->p & 0xC0) != 0x80) {
        t->col++;
    }
    t->p++;
}

static void skip_ws(struct tok *t)
{
    while (t->p < t->end && (*t->p == ' ' || *t->p == '\t' || *t->p == '\n' || *t->p == '\r'))
        adv(t);
}

static int path_append(struct tok *t, const char *s, size_t n)
{
    if (reserve(&t->path, &t->path_cap, t->path_len + n + 1, 256) < 0)
        return -ENOMEM;
    memcpy(t->path + t->path_len, s, n);
    t->path_len += n;
    t->path[t->path_len] = '\0';
    return 0;
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int read_hex4(struct tok *t, uint32_t *out)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        if (t->p >= t->end || hexval(*t->p) < 0)
            return -1;
        v = v * 16 + (uint32_t)hexval(*t->p);
        adv(t);
    }
    *out = v;
    return 0;
}

static int append_utf8(struct tok *t, uint32_t cp)
{
    char b[4];
    size_t n;
    if (cp < 0x80) {
        b[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        b[0] = (char)(0xC0 | (cp >> 6));
        b[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        b[0] = (char)(0xE0 | (cp >> 12));
        b[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        b[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        b[0] = (char)(0xF0 | (cp >> 18));
        b[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        b[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        b[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    return path_append(t, b, n);
}

/* At an opening quote: skips the string, appending its decoded text to the path if decode. */
static int string(struct tok *t, int decode)
{
    adv(t); /* the quote */
    while (t->p < t->end && *t->p != '"') {
        if (*t->p == '\\') {
            adv(t);
            if (t->p >= t->end)
                return -1;
            unsigned char e = *t->p;
            if (e == 'u') {
                adv(t);
                uint32_t cp, lo;
                if (read_hex4(t, &cp) < 0)
                    return -1;
                if (cp >= 0xD800 && cp < 0xDC00 && t->end - t->p >= 6 && t->p[0] == '\\' &&
                    t->p[1] == 'u') {
                    adv(t);
                    adv(t);
                    if (read_hex4(t, &lo) < 0)
                        return -1;
                    if (lo >= 0xDC00 && lo < 0xE000)
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                }
                if (decode && append_utf8(t, cp) < 0)
                    return -1;
                continue;
            }
            char c;
            switch (e) {
            case 'b':
                c = '\b';
                break;
            case 'f':
                c = '\f';
                break;
            case 'n':
                c = '\n';
                break;
            case 'r':
                c = '\r';
                break;
            case 't':
                c = '\t';
                break;
            default:
                c = (char)e;
                break;
            }
            if (decode && path_append(t, &c, 1) < 0)
                return -1;
            adv(t);
            continue;
        }
        if (decode && path_append(t, (const char *)t->p, 1) < 0)
            return -1;
        adv(t);
    }
    if (t->p >= t->end)
        return -1;
    adv(t); /* the closing quote */
    return 0;
}

static int value(struct tok *t);

static int record(struct tok *t, int key_line, int key_col)
{
    struct jsonpos_at at = {key_line, key_col, t->line, t->col};
    return put(t->jp, t->path, t->path_len, &at);
}

/* At a member's key: appends ".key" ("key" at the root) to the path and steps past the colon. */
static int member_key(struct tok *t, size_t base)
{
    if (*t->p != '"')
        return -1;
    if (base > 0 && path_append(t, ".", 1) < 0)
        return -1;
    if (string(t, 1) < 0)
        return -1;
    skip_ws(t);
    if (t->p >= t->end || *t->p != ':')
        return -1;
    adv(t);
    skip_ws(t);
    return 0;
}

/* At an array element: appends "[i]" to the path. */
static int element_index(struct tok *t, size_t i)
{
    char idx[32];
    int n = snprintf(idx, sizeof(idx), "[%zu]", i);
    return path_append(t, idx, (size_t)n);
}

/*
 * At '{' or '[': reads the members or elements up to the closing bracket, recording each one's
 * path and position before descending into its value. Objects and arrays differ only in how an
 * entry extends the path.
 */
static int container(struct tok *t)
{
    unsigned char close = *t->p == '{' ? '}' : ']';
    adv(t);
    size_t base = t->path_len;
    for (size_t i = 0;; i++) {
        skip_ws(t);
        if (t->p >= t->end)
            return -1;
        if (*t->p == close) {
            adv(t);
            return 0;
        }
        int kl = t->line, kc = t->col;
        if ((close == '}' ? member_key(t, base) : element_index(t, i)) < 0)
            return -1;
        if (record(t, kl, kc) < 0 || value(t) < 0)
            return -1;
        t->path_len = base;
        t->path[base] = '\0';
        skip_ws(t);
        if (t->p >= t->end || (*t->p != ',' && *t->p != close))
            return -1;
        if (*t->p == ',')
            adv(t); /* a closing bracket is read at the top of the loop */
    }
}

static int value(struct tok *t)
{
    int r;
    skip_ws(t);
    if (t->p >= t->end)
        return -1;
    if (++t->depth > JSONPOS_MAX_DEPTH)
        return -1;
    switch (*t->p) {
    case '{':
    case '[':
        r = container(t);
        break;
    case '"':
        r = string(t, 0);
        break;
    default: {
        const unsigned char *start = t->p;
        while (t->p < t->end && *t->p != ',' && *t->p != '}' && *t->p != ']' && *t->p != ' ' &&
               *t->p != '\t' && *t->p != '\n' && *t->p != '\r')
            adv(t);
        r = t->p > start ? 0 : -1;
        break;
    }
    }
    t->depth--;
    return r;
}

struct jsonpos *jsonpos_build(const char *text, size_t len)
{
    struct jsonpos *jp = calloc(1, sizeof(*jp));
    if (!jp)
        return NULL;
    struct tok t = {.p = (const unsigned char *)text,
                    .end = (const unsigned char *)text + len,
                    .line = 1,
                    .col = 1,
                    .jp = jp};
    if (path_append(&t, "", 0) < 0 || grow_table(jp) < 0) {
        free(t.path);
        jsonpos_free(jp);
        return NULL;
    }
    /* A leading UTF-8 BOM is not a character of the document. */
    if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0)
        t.p += 3;
    skip_ws(&t);
    if (t.p < t.end && record(&t, t.line, t.col) == 0)
        (void)value(&t); /* positions recorded before a syntax problem stay usable */
    free(t.path);
    return jp;
}

void jsonpos_free(struct jsonpos *jp)
{
    if (!jp)
        return;
    free(jp->slots);
    free(jp->arena);
    free(jp);
}

int jsonpos_find(const struct jsonpos *jp, const char *path, struct jsonpos_at *out)
{
    if (!jp || !jp->cap)
        return -ENOENT;
    size_t len = strlen(path);
    uint32_t h = hash_str(path, len);
    size_t j = h & (jp->cap - 1);
    while (jp->slots[j].used) {
        const char *k = jp->arena + jp->slots[j].off;
        if (jp->slots[j].hash == h && strcmp(k, path) == 0) {
            *out = jp->slots[j].at;
            return 0;
        }
        j = (j + 1) & (jp->cap - 1);
    }
    return -ENOENT;
}
