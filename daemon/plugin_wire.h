/*
 * plugin_wire: the frames aligwd and aligw-plugin-host exchange over their socketpair. A frame is
 * a 4-byte length (host order: both ends run on one machine) followed by that many bytes: a type
 * byte and its fields, each an unsigned 64-bit integer or a counted byte string (which always
 * carries a trailing NUL, so a string field can be used in place). Pure code, no I/O: both ends
 * do their own reading and writing. A frame larger than WIRE_MAX_FRAME or one that does not
 * decode is a protocol error and ends the child.
 */
#ifndef ALIGW_PLUGIN_WIRE_H
#define ALIGW_PLUGIN_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WIRE_MAX_FRAME (4u << 20)

enum wire_type {
    /* aligwd → host */
    W_INIT = 1, /* label, config_json, forbidden paths (n, path...), n_devices, (pk, dn)...,
                   readable paths (n, path...: beneath a forbidden one, read-only) */
    W_SET,      /* dev, req_id, params_json */
    W_CALL,     /* dev, req_id, service_id, params_json */
    W_MSG,      /* dev, topic, payload */
    W_DONE,     /* dev, cookie, status, seq: a tracked post was committed (or failed) */
    W_PING,     /* n */
    W_STOP,     /* (none): stop, destroy, exit 0 */
    W_FW,       /* dev, job_id, module, version, from_version, total_size, is_diff, has_ext,
                   ext_data, n_files, (path, name)...: on_firmware */
    W_NOTICE,   /* dev, event_json: on_event (ABI 1.3) */
    W_ANSWER,   /* dev, cookie, answer_json: on_answer (ABI 1.3) */
    /* host → aligwd */
    W_STARTED = 32, /* flags (WIRE_HAS_*), name, version, events (plugin_events_join's form) */
    W_FAILED,       /* phase (0 load, 1 create, 2 start), rc, message */
    W_PONG,         /* n */
    W_PROPS,        /* dev, tracked, cookie, time_ms, params_json */
    W_EVENT,        /* dev, tracked, cookie, time_ms, event_id, has_value, value_json */
    W_RAW,          /* dev, tracked, cookie, qos, topic, payload */
    W_REPLY,        /* dev, code, req_id, has_data, data_json */
    W_STATE,        /* dev, ok, reason */
    W_LOG,          /* level, text */
    W_SUB,          /* dev, topic_filter */
    W_CALL_RC,      /* dev, rc, req_id: an entry point refused a set/call (host answers 500) */
    W_FW_RESULT,    /* dev, job_id, step, version, desc: firmware_result */
    W_FW_VERSION,   /* dev, module, version: set_firmware_version */
    W_REQUEST,      /* dev, cookie, request_json: host->request (ABI 1.3) */
};

enum {
    WIRE_HAS_SET = 1,
    WIRE_HAS_CALL = 2,
    WIRE_HAS_MSG = 4,
    WIRE_HAS_DONE = 8,
    WIRE_HAS_FW = 16,
    WIRE_HAS_EVENT = 32,  /* on_event with a non-empty events list */
    WIRE_HAS_ANSWER = 64, /* on_answer (host->request usable) */
};

/* A frame being built, or a batch of frames (wire_append). All calls are no-ops once oom is set. */
struct wire_out {
    char *p;
    size_t len, cap;
    size_t start; /* where the frame being built begins */
    bool oom;
};

void wire_begin(struct wire_out *w, int type); /* resets w (keeps its buffer) */
/* Begins another frame after those already in w (a batch sent with one write). */
void wire_append(struct wire_out *w, int type);
void wire_u64(struct wire_out *w, uint64_t v);
void wire_i64(struct wire_out *w, int64_t v);
void wire_bytes(struct wire_out *w, const void *p, size_t n);
void wire_str(struct wire_out *w, const char *s); /* NULL is sent as "" */
/* Finishes the frame: 0 and w->p[0..w->len) holds it (after the batch's earlier frames), or
 * -ENOMEM / -E2BIG, and then the frame is taken out again (the earlier ones stay). */
int wire_end(struct wire_out *w);
void wire_free(struct wire_out *w);

/* A frame being read (the body after the length). A failed get sets bad. */
struct wire_in {
    const char *p;
    size_t len, off;
    int type;
    bool bad;
};

/* Starts reading a body of len bytes; false when it has no type byte. */
bool wire_open(struct wire_in *r, const void *body, size_t len);
uint64_t wire_get_u64(struct wire_in *r);
int64_t wire_get_i64(struct wire_in *r);
/* Points into the frame (NUL-terminated); "" and bad set when missing. */
const char *wire_get_bytes(struct wire_in *r, size_t *len);
const char *wire_get_str(struct wire_in *r);

/* The length of the frame at the start of buf (n bytes available): 0 when incomplete, the body
 * length in *body_len and 1 when complete, -EPROTO when it is too large. */
int wire_frame(const void *buf, size_t n, size_t *body_len);

#endif
