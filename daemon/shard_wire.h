/*
 * shard_wire: the frames between aligwd and a session shard (aligw-session-shard), in
 * plugin_wire's encoding. Commands carry session.h's calls, events its events, field for field,
 * so a session behaves the same whether its Paho client runs in aligwd or in a shard. Pure code:
 * the links (wirelink.h) do the I/O; the decoders are fuzzed (fuzz/fuzz_shard_wire.c).
 */
#ifndef ALIGW_SHARD_WIRE_H
#define ALIGW_SHARD_WIRE_H

#include "plugin_wire.h"
#include "session.h"

enum shard_frame {
    /* aligwd → shard */
    SH_OPEN = 1,  /* id, session_params (shard_wire_put_params) */
    SH_CONNECT,   /* id */
    SH_CLOSE,     /* id */
    SH_PUBLISH,   /* id, ref, qos, topic, payload */
    SH_SUBSCRIBE, /* id, n, topic... */
    SH_PING,      /* n: answered by SH_PONG n from the shard's loop */
    /* shard → aligwd */
    SH_EVENT = 32, /* kind, id, code, ref, index, topic, has_message, message, payload; a
                      command the shard's layer refused at once comes back as the event that
                      stands for it (SESSION_CONNECT_FAILED, SESSION_PUBLISH_FAILED, ...) */
    SH_PONG,       /* n */
};

#define SHARD_MAX_SUBS 64 /* session_subscribe's own limit */

/* Appends one frame to w (a link's batch): 0, or a negative errno when it did not fit. */
int shard_wire_open(struct wire_out *w, uint64_t id, const struct session_params *p);
int shard_wire_id(struct wire_out *w, int type, uint64_t id); /* SH_CONNECT, SH_CLOSE */
int shard_wire_publish(struct wire_out *w, uint64_t id, const char *topic, const void *payload,
                       size_t len, int qos, uint64_t ref);
int shard_wire_subscribe(struct wire_out *w, uint64_t id, char *const *topics, size_t n);
int shard_wire_event(struct wire_out *w, const struct session_event *ev);

/* Decoders: the fields after the type byte. Strings point into the frame. false (and r->bad)
 * when the frame is short, has a field out of range or an unknown event kind. */
bool shard_wire_get_params(struct wire_in *r, struct session_params *p);
bool shard_wire_get_event(struct wire_in *r, struct session_event *ev);
/* topics: room for SHARD_MAX_SUBS pointers into the frame. */
bool shard_wire_get_topics(struct wire_in *r, const char **topics, size_t *n);

#endif
