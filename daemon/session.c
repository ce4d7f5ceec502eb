/*
 * session: the front of the session layer (see session.h). It picks the implementation once, at
 * session_layer_init, and resolves a TLS session's trust file to its hashed CA directory before
 * either sees the session, so a shard never writes the runtime directory.
 */
#include "session.h"

#include "cadir.h"
#include "log.h"
#include "session_paho.h"
#include "shards.h"

#include <errno.h>
#include <stdbool.h>

static bool sharded;

/*
 * The hashed CA directory for ca_file, or NULL (then Paho parses the whole file into every
 * connection's SSL_CTX, as before). With the directory each SSL_CTX reads only the root the
 * server's chain needs: about 26 KB less heap per TLS device with the six-certificate trust file
 * and 35% less CPU per handshake (issue 15's note).
 */
static const char *trust_dir(const char *ca_file)
{
    static bool warned;
    const char *dir = NULL;
    int rc = cadir_get(ca_file, &dir);

    if (rc < 0 && rc != -ENOTCONN && !warned) {
        warned = true;
        log_errno(LOG_WARNING, rc,
                  "TLS: no hashed CA directory for %s, each session loads the "
                  "whole file",
                  ca_file);
    }
    return rc < 0 ? NULL : dir;
}

int session_layer_init(uv_loop_t *loop, session_event_cb cb, void *arg,
                       const struct session_layer_opts *opts)
{
    sharded = opts && opts->shards > 0;
    return sharded ? shards_init(loop, cb, arg, opts->shards) : paho_layer_init(loop, cb, arg);
}

void session_layer_close(void)
{
    if (sharded)
        shards_close();
    else
        paho_layer_close();
}

size_t session_layer_shards(struct session_shard_info *v, size_t n)
{
    return sharded ? shards_info(v, n) : 0;
}

int session_open(uint64_t id, const struct session_params *p)
{
    struct session_params q = *p;
    if (q.tls && q.ca_file && !q.ca_dir)
        q.ca_dir = trust_dir(q.ca_file);
    return sharded ? shards_open(id, &q) : paho_open(id, &q);
}

int session_connect(uint64_t id)
{
    return sharded ? shards_connect(id) : paho_connect(id);
}

void session_close(uint64_t id)
{
    if (sharded)
        shards_close_session(id);
    else
        paho_close(id);
}

int session_publish(uint64_t id, const char *topic, const void *payload, size_t len, int qos,
                    uint64_t ref)
{
    return sharded ? shards_publish(id, topic, payload, len, qos, ref)
                   : paho_publish(id, topic, payload, len, qos, ref);
}

int session_subscribe(uint64_t id, char *const *topics, size_t n)
{
    return sharded ? shards_subscribe(id, topics, n) : paho_subscribe(id, topics, n);
}
