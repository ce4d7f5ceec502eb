/*
 * session_stub: the session layer's interface (daemon/session.h) without Paho, for unit tests of
 * the modules above it (devices.c). Every command is recorded in stub_calls (kind, session id,
 * publish ref/topic, at which fake time); the test plays the cloud by calling stub_event(),
 * which delivers a SESSION_* event to the registered callback exactly as the real layer does
 * from its queue (on the loop thread, for an open session only).
 */
#include "session_stub.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct stub_call stub_calls[STUB_MAX_CALLS];
size_t stub_n_calls;

static session_event_cb stub_cb;
static void *stub_arg;
static uint64_t open_ids[4096];
static size_t n_open;

static void record(enum stub_kind k, uint64_t id, uint64_t ref, const char *topic)
{
    if (stub_n_calls == STUB_MAX_CALLS)
        return;
    struct stub_call *c = &stub_calls[stub_n_calls++];
    memset(c, 0, sizeof(*c));
    c->kind = k;
    c->id = id;
    c->ref = ref;
    c->at_ms = uv_now(NULL);
    if (topic)
        strncpy(c->topic, topic, sizeof(c->topic) - 1);
}

static long find_open(uint64_t id)
{
    for (size_t i = 0; i < n_open; i++)
        if (open_ids[i] == id)
            return (long)i;
    return -1;
}

bool stub_is_open(uint64_t id)
{
    return find_open(id) >= 0;
}

int session_layer_init(uv_loop_t *loop, session_event_cb cb, void *arg,
                       const struct session_layer_opts *opts)
{
    stub_cb = cb;
    stub_arg = arg;
    n_open = 0;
    return 0;
}

void session_layer_close(void)
{
    n_open = 0;
}

size_t session_layer_shards(struct session_shard_info *v, size_t n)
{
    return 0;
}

int session_open(uint64_t id, const struct session_params *p)
{
    if (find_open(id) >= 0)
        return -EEXIST;
    if (n_open == sizeof(open_ids) / sizeof(open_ids[0]))
        return -ENOMEM;
    open_ids[n_open++] = id;
    record(STUB_OPEN, id, 0, p->client_id);
    return 0;
}

int session_connect(uint64_t id)
{
    if (find_open(id) < 0)
        return -ENOENT;
    record(STUB_CONNECT, id, 0, NULL);
    return 0;
}

void session_close(uint64_t id)
{
    long i = find_open(id);
    if (i < 0)
        return;
    open_ids[i] = open_ids[--n_open];
    record(STUB_CLOSE, id, 0, NULL);
}

int session_publish(uint64_t id, const char *topic, const void *payload, size_t len, int qos,
                    uint64_t ref)
{
    if (find_open(id) < 0)
        return -ENOENT;
    record(STUB_PUBLISH, id, ref, topic);
    return 0;
}

int session_subscribe(uint64_t id, char *const *topics, size_t n)
{
    if (find_open(id) < 0)
        return -ENOENT;
    record(STUB_SUBSCRIBE, id, n, NULL);
    return 0;
}

void stub_event(enum session_event_kind kind, uint64_t id, int code, uint64_t ref)
{
    struct session_event ev = {.kind = kind, .id = id, .code = code, .ref = ref};
    if (find_open(id) >= 0)
        stub_cb(stub_arg, &ev);
}

size_t stub_count(enum stub_kind k, uint64_t id)
{
    size_t n = 0;
    for (size_t i = 0; i < stub_n_calls; i++)
        if (stub_calls[i].kind == k && (id == 0 || stub_calls[i].id == id))
            n++;
    return n;
}

const struct stub_call *stub_last(enum stub_kind k, uint64_t id)
{
    for (size_t i = stub_n_calls; i-- > 0;)
        if (stub_calls[i].kind == k && (id == 0 || stub_calls[i].id == id))
            return &stub_calls[i];
    return NULL;
}
