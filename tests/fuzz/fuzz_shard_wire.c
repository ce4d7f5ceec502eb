/*
 * fuzz_shard_wire: arbitrary bytes as the stream a session shard and aligwd read from each other
 * (the frames of shard_wire.h). The stream is split the way wirelink does it; each frame goes to
 * the decoder of its type. A frame that decodes must re-encode to a frame that decodes to the
 * same fields (nothing the decoder accepts is lost or changed on the way back), and every string
 * it hands out must lie inside the frame and be NUL-terminated there.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "shard_wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void inside(const struct wire_in *r, const char *s)
{
    if (s && *s &&
        (s < r->p || s >= r->p + r->len || !memchr(s, '\0', (size_t)(r->p + r->len - s))))
        abort();
}

static bool same(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static void open_frame(struct wire_out *w, struct wire_in *r)
{
    size_t body;
    if (wire_frame(w->p, w->len, &body) != 1 || !wire_open(r, w->p + 4, body))
        abort();
}

static void check_params(struct wire_in *r)
{
    uint64_t id = wire_get_u64(r);
    struct session_params p, q;
    if (!shard_wire_get_params(r, &p))
        return;
    inside(r, p.host);
    inside(r, p.ca_file);
    inside(r, p.ca_dir);
    inside(r, p.client_id);
    inside(r, p.password);
    struct wire_out w = {0};
    struct wire_in r2;
    if (shard_wire_open(&w, id, &p) == 0) {
        open_frame(&w, &r2);
        if (wire_get_u64(&r2) != id || !shard_wire_get_params(&r2, &q))
            abort();
        if (!same(p.host, q.host) || p.port != q.port || p.tls != q.tls ||
            !same(p.ca_file, q.ca_file) || !same(p.ca_dir, q.ca_dir) ||
            p.verify_hostname != q.verify_hostname || !same(p.client_id, q.client_id) ||
            !same(p.username, q.username) || !same(p.password, q.password) ||
            p.keepalive != q.keepalive || p.clean_session != q.clean_session ||
            p.connect_timeout_s != q.connect_timeout_s)
            abort();
    }
    wire_free(&w);
}

static void check_event(struct wire_in *r)
{
    struct session_event e, f;
    if (!shard_wire_get_event(r, &e))
        return;
    inside(r, e.topic);
    inside(r, e.message);
    struct wire_out w = {0};
    struct wire_in r2;
    if (shard_wire_event(&w, &e) == 0) {
        open_frame(&w, &r2);
        if (!shard_wire_get_event(&r2, &f))
            abort();
        if (e.kind != f.kind || e.id != f.id || e.code != f.code || e.ref != f.ref ||
            e.index != f.index || !same(e.message, f.message))
            abort();
        if (e.kind == SESSION_MESSAGE &&
            (strcmp(e.topic, f.topic) || e.len != f.len || memcmp(e.payload, f.payload, e.len)))
            abort();
    }
    wire_free(&w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t off = 0, body;
    int rc;
    while ((rc = wire_frame(data + off, size - off, &body)) == 1) {
        struct wire_in r;
        if (!wire_open(&r, data + off + 4, body))
            break;
        switch (r.type) {
        case SH_OPEN:
            check_params(&r);
            break;
        case SH_EVENT:
            check_event(&r);
            break;
        case SH_SUBSCRIBE: {
            const char *t[SHARD_MAX_SUBS];
            size_t n;
            wire_get_u64(&r);
            if (shard_wire_get_topics(&r, t, &n)) {
                if (n > SHARD_MAX_SUBS)
                    abort();
                for (size_t i = 0; i < n; i++)
                    inside(&r, t[i]);
            }
            break;
        }
        default:
            break;
        }
        off += 4 + body;
    }
    return 0;
}
