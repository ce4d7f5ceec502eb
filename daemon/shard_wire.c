/* shard_wire: session commands and events as frames (see shard_wire.h). */
#include "shard_wire.h"

#include <errno.h>
#include <string.h>

static void put_opt(struct wire_out *w, const char *s) /* NULL and "" differ */
{
    wire_u64(w, s != NULL);
    wire_str(w, s);
}

static const char *get_opt(struct wire_in *r)
{
    uint64_t has = wire_get_u64(r);
    const char *s = wire_get_str(r);
    if (has > 1)
        r->bad = true;
    return has == 1 ? s : NULL;
}

int shard_wire_open(struct wire_out *w, uint64_t id, const struct session_params *p)
{
    wire_append(w, SH_OPEN);
    wire_u64(w, id);
    wire_str(w, p->host);
    wire_i64(w, p->port);
    wire_u64(w, p->tls);
    put_opt(w, p->ca_file);
    put_opt(w, p->ca_dir);
    wire_u64(w, p->verify_hostname);
    wire_str(w, p->client_id);
    wire_str(w, p->username);
    wire_str(w, p->password);
    wire_i64(w, p->keepalive);
    wire_u64(w, p->clean_session);
    wire_i64(w, p->connect_timeout_s);
    return wire_end(w);
}

bool shard_wire_get_params(struct wire_in *r, struct session_params *p)
{
    int64_t port, keepalive, timeout;
    uint64_t tls, verify, clean;

    memset(p, 0, sizeof(*p));
    p->host = wire_get_str(r);
    port = wire_get_i64(r);
    tls = wire_get_u64(r);
    p->ca_file = get_opt(r);
    p->ca_dir = get_opt(r);
    verify = wire_get_u64(r);
    p->client_id = wire_get_str(r);
    p->username = wire_get_str(r);
    p->password = wire_get_str(r);
    keepalive = wire_get_i64(r);
    clean = wire_get_u64(r);
    timeout = wire_get_i64(r);
    if (port < 1 || port > 65535 || tls > 1 || verify > 1 || clean > 1 || keepalive < 0 ||
        keepalive > 65535 || timeout < 0 || timeout > 3600 || !p->host[0])
        r->bad = true;
    p->port = (int)port;
    p->tls = tls;
    p->verify_hostname = verify;
    p->keepalive = (int)keepalive;
    p->clean_session = clean;
    p->connect_timeout_s = (int)timeout;
    return !r->bad;
}

int shard_wire_id(struct wire_out *w, int type, uint64_t id)
{
    wire_append(w, type);
    wire_u64(w, id);
    return wire_end(w);
}

int shard_wire_publish(struct wire_out *w, uint64_t id, const char *topic, const void *payload,
                       size_t len, int qos, uint64_t ref)
{
    wire_append(w, SH_PUBLISH);
    wire_u64(w, id);
    wire_u64(w, ref);
    wire_u64(w, (uint64_t)qos);
    wire_str(w, topic);
    wire_bytes(w, payload, len);
    return wire_end(w);
}

int shard_wire_subscribe(struct wire_out *w, uint64_t id, char *const *topics, size_t n)
{
    if (n > SHARD_MAX_SUBS)
        return -E2BIG;
    wire_append(w, SH_SUBSCRIBE);
    wire_u64(w, id);
    wire_u64(w, n);
    for (size_t i = 0; i < n; i++)
        wire_str(w, topics[i]);
    return wire_end(w);
}

bool shard_wire_get_topics(struct wire_in *r, const char **topics, size_t *n)
{
    uint64_t k = wire_get_u64(r);
    *n = 0;
    if (k > SHARD_MAX_SUBS) {
        r->bad = true;
        return false;
    }
    for (uint64_t i = 0; i < k && !r->bad; i++)
        topics[i] = wire_get_str(r);
    *n = r->bad ? 0 : (size_t)k;
    return !r->bad;
}

int shard_wire_event(struct wire_out *w, const struct session_event *ev)
{
    wire_append(w, SH_EVENT);
    wire_u64(w, (uint64_t)ev->kind);
    wire_u64(w, ev->id);
    wire_i64(w, ev->code);
    wire_u64(w, ev->ref);
    wire_u64(w, ev->index);
    wire_str(w, ev->kind == SESSION_MESSAGE ? ev->topic : NULL);
    put_opt(w, ev->message);
    wire_bytes(w, ev->kind == SESSION_MESSAGE ? ev->payload : NULL,
               ev->kind == SESSION_MESSAGE ? ev->len : 0);
    return wire_end(w);
}

bool shard_wire_get_event(struct wire_in *r, struct session_event *ev)
{
    uint64_t kind;
    int64_t code;

    memset(ev, 0, sizeof(*ev));
    kind = wire_get_u64(r);
    ev->id = wire_get_u64(r);
    code = wire_get_i64(r);
    ev->ref = wire_get_u64(r);
    ev->index = (size_t)wire_get_u64(r);
    ev->topic = (char *)wire_get_str(r);
    ev->message = (char *)get_opt(r);
    ev->payload = (void *)wire_get_bytes(r, &ev->len);
    if (kind > SESSION_MESSAGE || code < INT32_MIN || code > INT32_MAX ||
        (kind == SESSION_MESSAGE && !ev->topic[0]))
        r->bad = true;
    ev->kind = (enum session_event_kind)kind;
    ev->code = (int)code;
    return !r->bad;
}
