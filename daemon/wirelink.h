/*
 * wirelink: a stream of plugin_wire frames over one connected socket, on a libuv loop: the two
 * ends of a session shard (shards.c in aligwd, shard_main.c in the worker) each hold one.
 * Frames sent in one loop iteration are written together, right before the loop next waits
 * (one write for a burst of publishes or acknowledgements, not one per frame); frames received
 * are handed to the caller one by one. The peer is trusted no more than any input: a frame that
 * does not decode ends the link.
 */
#ifndef ALIGW_WIRELINK_H
#define ALIGW_WIRELINK_H

#include "plugin_wire.h"

#include <uv.h>

struct wirelink;

/* One complete frame, borrowed for the call. Setting r->bad (or leaving a field unread that the
 * caller's decoder then finds missing) ends the link as a protocol error. */
typedef void (*wirelink_frame_cb)(void *arg, struct wire_in *r);
/* The link ended: the peer closed it (0), an I/O error (negative errno) or a frame that did not
 * decode (-EPROTO). Called once; the link is still to be closed by wirelink_close. */
typedef void (*wirelink_end_cb)(void *arg, int err);

/* Takes fd (a connected stream socket; ownership passes, also on failure). 0 or a negative
 * errno. */
int wirelink_open(struct wirelink **out, uv_loop_t *loop, int fd, wirelink_frame_cb on_frame,
                  wirelink_end_cb on_end, void *arg);
/* The batch to add a frame to: wire_append(w, type), the fields, wire_end(w). The batch is
 * written before the loop next waits. NULL once the link has ended. */
struct wire_out *wirelink_out(struct wirelink *l);
/* Bytes waiting to be written (the batch and writes under way). */
size_t wirelink_backlog(const struct wirelink *l);
/* Writes what is batched now, blocking up to timeout_ms (shutdown paths). */
void wirelink_flush_sync(struct wirelink *l, int timeout_ms);
/* Closes the socket; no callback follows; the memory goes with the handles' close. */
void wirelink_close(struct wirelink *l);

#endif
