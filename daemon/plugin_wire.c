/*
 * plugin_wire: encoding and decoding of the plugin host's frames (see plugin_wire.h).
 */
#include "plugin_wire.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static void grow(struct wire_out *w, size_t more)
{
    if (w->oom || w->len + more <= w->cap)
        return;
    size_t cap = w->cap ? w->cap : 256;
    while (cap < w->len + more)
        cap *= 2;
    char *p = realloc(w->p, cap);
    if (!p) {
        w->oom = true;
        return;
    }
    w->p = p;
    w->cap = cap;
}

static void put(struct wire_out *w, const void *p, size_t n)
{
    grow(w, n);
    if (w->oom)
        return;
    memcpy(w->p + w->len, p, n);
    w->len += n;
}

void wire_append(struct wire_out *w, int type)
{
    uint32_t zero = 0;
    uint8_t t = (uint8_t)type;
    w->oom = false;
    w->start = w->len;
    put(w, &zero, sizeof zero);
    put(w, &t, 1);
}

void wire_begin(struct wire_out *w, int type)
{
    w->len = 0;
    wire_append(w, type);
}

void wire_u64(struct wire_out *w, uint64_t v)
{
    put(w, &v, sizeof v);
}

void wire_i64(struct wire_out *w, int64_t v)
{
    put(w, &v, sizeof v);
}

void wire_bytes(struct wire_out *w, const void *p, size_t n)
{
    uint32_t len = (uint32_t)n;
    if (n > WIRE_MAX_FRAME) {
        w->oom = true;
        return;
    }
    put(w, &len, sizeof len);
    if (n)
        put(w, p, n);
    put(w, "", 1);
}

void wire_str(struct wire_out *w, const char *s)
{
    wire_bytes(w, s ? s : "", s ? strlen(s) : 0);
}

int wire_end(struct wire_out *w)
{
    int rc = w->oom ? -ENOMEM : w->len - w->start - 4 > WIRE_MAX_FRAME ? -E2BIG : 0;
    if (rc < 0) {
        w->len = w->start < w->len ? w->start : w->len;
        w->oom = false;
        return rc;
    }
    uint32_t body = (uint32_t)(w->len - w->start - 4);
    memcpy(w->p + w->start, &body, sizeof body);
    return 0;
}

void wire_free(struct wire_out *w)
{
    free(w->p);
    memset(w, 0, sizeof *w);
}

bool wire_open(struct wire_in *r, const void *body, size_t len)
{
    r->p = body;
    r->len = len;
    r->off = 1;
    r->bad = len < 1;
    r->type = len ? (uint8_t)r->p[0] : 0;
    return !r->bad;
}

static bool take(struct wire_in *r, void *out, size_t n)
{
    if (r->bad || r->len - r->off < n) {
        r->bad = true;
        memset(out, 0, n);
        return false;
    }
    memcpy(out, r->p + r->off, n);
    r->off += n;
    return true;
}

uint64_t wire_get_u64(struct wire_in *r)
{
    uint64_t v;
    take(r, &v, sizeof v);
    return v;
}

int64_t wire_get_i64(struct wire_in *r)
{
    int64_t v;
    take(r, &v, sizeof v);
    return v;
}

const char *wire_get_bytes(struct wire_in *r, size_t *len)
{
    uint32_t n;
    const char *s;
    if (len)
        *len = 0;
    if (!take(r, &n, sizeof n) || r->len - r->off < (size_t)n + 1 || r->p[r->off + n] != '\0') {
        r->bad = true;
        return "";
    }
    s = r->p + r->off;
    r->off += (size_t)n + 1;
    if (len)
        *len = n;
    return s;
}

const char *wire_get_str(struct wire_in *r)
{
    size_t n;
    const char *s = wire_get_bytes(r, &n);
    if (strlen(s) != n) { /* an embedded NUL: not a string */
        r->bad = true;
        return "";
    }
    return s;
}

int wire_frame(const void *buf, size_t n, size_t *body_len)
{
    uint32_t len;
    if (n < sizeof len)
        return 0;
    memcpy(&len, buf, sizeof len);
    if (len > WIRE_MAX_FRAME || len == 0)
        return -EPROTO;
    if (n - sizeof len < len)
        return 0;
    *body_len = len;
    return 1;
}
