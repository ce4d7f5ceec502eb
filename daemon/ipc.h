/*
 * ipc: the local API's Unix socket on the daemon's loop. It owns the listening socket (created
 * 0660 with the configured group, or handed over by systemd), the peer check (SO_PEERCRED against
 * allow_users/allow_groups, admin ops against admin_users/admin_groups), every connection and
 * its bounded buffers, the newline-delimited JSON framing and the watch streams. It answers
 * "hello" and "watch" itself; every other validated request goes to the one request callback
 * with a reply handle the handler completes exactly once, now or later. Requests on a connection
 * may be answered out of order; the id correlates. Runs on the loop thread only.
 */
#ifndef ALIGW_IPC_H
#define ALIGW_IPC_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>
#include <uv.h>

#include "config.h"
#include "ipc_request.h"

struct ipc_server;
struct ipc_reply;

/* Who is on the other end of a connection (SO_PEERCRED at accept). */
struct ipc_peer {
    pid_t pid;
    uid_t uid;
    gid_t gid;
    bool admin; /* may run add_device, remove_device, reload */
};

/*
 * Called once per validated request other than hello and watch. req is owned by reply and stays
 * valid until the reply is completed (ipc_reply_ok/_error/_errno); the handler must complete
 * every reply exactly once, possibly from a later loop turn. Admin ops reach the handler only
 * from admin peers.
 */
typedef void (*ipc_request_cb)(struct ipc_server *srv, struct ipc_reply *reply,
                               const struct ipc_request *req, void *data);

struct ipc_stats {
    unsigned connections, watchers;
    uint64_t accepted, refused; /* connections */
    uint64_t requests, errors;  /* lines answered, of which with an error */
    /* The same by op ([IPC_OP_COUNT_]: lines that were no valid request) and [error]. */
    uint64_t by_op[IPC_OP_COUNT_ + 1][2];
    uint64_t events_sent, events_dropped;
};

/*
 * Creates a server for loop; copies what it needs from cfg->api (socket, group, allow and admin
 * lists resolved to uids/gids, max_line, max_payload). Nothing listens until ipc_server_start().
 * Returns 0, -ENOMEM, or -EINVAL (with a logged reason) for an unknown user or group name.
 */
int ipc_server_init(struct ipc_server **out, uv_loop_t *loop, const struct config *cfg,
                    ipc_request_cb cb, void *data);

/*
 * Starts listening: on the socket systemd passed (sd_listen_fds; one AF_UNIX stream socket) or
 * on cfg->api.socket, removing a stale socket file first only when nobody listens on it, then
 * chmod 0660 and chgrp to api.group before listen(). Returns 0, -EADDRINUSE (another daemon
 * listens there), -EEXIST (the path is not a socket), or another negative errno, all logged
 * with the path.
 */
int ipc_server_start(struct ipc_server *srv);

/*
 * Applies a reloaded config's access lists and limits to new connections and new requests
 * (existing connections keep their peer rights). The socket path and group are not changed by
 * a reload. Returns 0 or -EINVAL (unknown user or group: nothing changed).
 */
int ipc_server_set_access(struct ipc_server *srv, const struct config *cfg);

/* Write queue bound per watch connection, in bytes (default 1 MiB); for tests and tuning. */
void ipc_server_set_watch_limit(struct ipc_server *srv, size_t bytes);

/*
 * Closes the listener and every connection (pending writes are dropped), unlinks the socket
 * file it created, and calls cb(data) from the loop once every handle is closed; srv is freed
 * then. Replies still held by handlers stay valid: completing them later is a no-op.
 */
void ipc_server_close(struct ipc_server *srv, void (*cb)(void *data), void *data);

void ipc_server_stats(const struct ipc_server *srv, struct ipc_stats *out);

/*
 * Sends an event to every watcher whose filter matches kind (one enum ipc_event_kind), the
 * device key "pk/dn" (may be NULL for gateway-wide events) and topic (may be NULL: topic filters
 * then don't apply). event is borrowed; if it has no "event" member, one naming the kind is set
 * on it. The line is serialized once and shared by all watchers. A watcher whose write queue is
 * above the watch limit misses the event (counted; it gets {"event":"dropped","count":N} once it
 * catches up). Returns the number of watchers the event was queued to (0 = nobody will see it),
 * or -ENOMEM.
 */
int ipc_broadcast(struct ipc_server *srv, enum ipc_event_kind kind, const char *device_key,
                  const char *topic, json_t *event);

/* ---- reply handles, given to the request callback ---- */

/* Completes with {"id":…,"ok":true,"result":result}. result is stolen (NULL = {}). */
void ipc_reply_ok(struct ipc_reply *r, json_t *result);
/* Completes with an error; message is printf-formatted, name the field or thing concerned. */
void ipc_reply_error(struct ipc_reply *r, enum ipc_err code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/*
 * Completes with the code ipc_err_from_errno(err) picks (ALIGW_ENODEVICE -> no_device,
 * ALIGW_ESTOREFULL -> store_full, -ETIMEDOUT -> timeout...) and the message "<fmt>: <strerror>".
 */
void ipc_reply_errno(struct ipc_reply *r, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* False once the client has disconnected: the reply will be dropped, work may be skipped. */
bool ipc_reply_connected(const struct ipc_reply *r);

/* ---- requests from inside the daemon ---- */

/* A local request's response line (borrowed for the call; NULL, n 0 when out of memory). */
typedef void (*ipc_local_done)(void *arg, const char *line, size_t n);

/*
 * A request made inside the daemon for one device (a plugin's host->request): one JSON request
 * text, bound to device_key (ipc_request_bind_device: another device is "forbidden"), parsed by
 * the same grammar and served by the same request callback as a socket client's, with no admin
 * rights (admin ops, hello and watch are refused with "forbidden"). done(arg, line, n) is called
 * exactly once with the response line a client would get, now or in a later loop turn.
 */
void ipc_local_request(struct ipc_server *srv, const char *device_key, const char *line, size_t len,
                       ipc_local_done done, void *arg);

#endif
