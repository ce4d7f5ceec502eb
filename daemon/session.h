/*
 * session: MQTT sessions to the platform, one per device identity, behind a message-style
 * interface. Commands go in (open, connect, publish with the caller's reference, subscribe,
 * close); events come out on the loop thread (connected, connect failed, lost, publish done or
 * failed, subscription result, message arrived). Nothing is shared by pointer with the rest of
 * the daemon: a session is named by the caller's 64-bit id, and every event carries that id.
 *
 * Two implementations stand behind it, chosen at session_layer_init: the sessions' Paho clients
 * in this process (session_paho.c), or spread over worker processes, the session shards
 * (shards.c), each running session_paho.c for its part of the fleet. Paho scans every client of
 * its process for each packet under one global lock, so its cost per message grows with the
 * clients in one process; shards divide that. A shard that dies is started again and its
 * sessions are reported lost (or their connects failed), exactly as a dropped connection is:
 * the outbox sends again what was not acknowledged. This file's front (session.c) also resolves
 * each TLS trust file to its hashed CA directory (cadir.h) once, for either implementation.
 */
#ifndef ALIGW_SESSION_H
#define ALIGW_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

struct session_params {
    const char *host;
    int port;
    bool tls;
    const char *ca_file; /* PEM trust store; NULL = system default */
    const char *ca_dir;  /* its hashed CA directory, or NULL (filled in by session_open) */
    bool verify_hostname;
    const char *client_id; /* the full MQTT clientId ("id|k=v,...|") */
    const char *username;
    const char *password;
    int keepalive;
    bool clean_session;
    int connect_timeout_s;
};

enum session_event_kind {
    SESSION_CONNECTED,      /* CONNACK accepted */
    SESSION_CONNECT_FAILED, /* code: ALIGW_EAUTH (CONNACK 2, 4, 5: the identity or its
                               credentials refused), -EAGAIN (CONNACK 3), ALIGW_EPROTO (1), or a
                               negative errno; message: the detail */
    SESSION_LOST,           /* an established connection dropped; message: the cause if known */
    SESSION_PUBLISHED,      /* ref: PUBACK received (QoS 1) or written to the socket (QoS 0) */
    SESSION_PUBLISH_FAILED, /* ref: the message was not delivered; keep it and send again */
    SESSION_SUBSCRIBED,     /* index: topic index of the last session_subscribe; code 0 or -1 */
    SESSION_MESSAGE,        /* topic, payload, len */
};

struct session_event {
    enum session_event_kind kind;
    uint64_t id; /* the caller's session id */
    int code;
    uint64_t ref;  /* publish reference */
    size_t index;  /* subscription index */
    char *topic;   /* SESSION_MESSAGE: borrowed for the callback */
    char *message; /* SESSION_CONNECT_FAILED, SESSION_LOST: text for people, or NULL */
    void *payload;
    size_t len;
};

/* Called on the loop thread for each event; the event and its buffers are borrowed. */
typedef void (*session_event_cb)(void *arg, const struct session_event *ev);

struct session_layer_opts {
    unsigned shards; /* worker processes; 0: every session in this process */
};

/* Sets up the layer on loop (opts NULL: in process). 0 or a negative error. One layer per
 * process. */
int session_layer_init(uv_loop_t *loop, session_event_cb cb, void *arg,
                       const struct session_layer_opts *opts);

struct session_shard_info {
    int pid;         /* 0 while it is being started again */
    size_t sessions; /* open sessions placed on it */
    unsigned restarts;
};
/* The shards (none when sessions run in process): fills up to n entries, returns how many
 * shards there are. */
size_t session_layer_shards(struct session_shard_info *v, size_t n);
/* Destroys every open session and closes the loop handles; events still queued are dropped. */
void session_layer_close(void);

/*
 * Creates the session id with params (copied) and starts connecting. Returns 0 (an event
 * follows), -EEXIST if id is open, or a negative error (no event follows).
 */
int session_open(uint64_t id, const struct session_params *p);
/* Starts connecting an open session again after SESSION_CONNECT_FAILED or SESSION_LOST. */
int session_connect(uint64_t id);
/* Disconnects and destroys; no further events for id. Unknown ids are ignored. */
void session_close(uint64_t id);

/*
 * Queues a publish; ref comes back in SESSION_PUBLISHED or SESSION_PUBLISH_FAILED (also when
 * Paho refused it: not connected, no message id). topic and payload are copied. Returns 0, or
 * -ENOENT / -ENOMEM, and then no event follows. The Paho call itself is made by the layer's
 * caller thread, so the loop never waits on Paho's global lock.
 */
int session_publish(uint64_t id, const char *topic, const void *payload, size_t len, int qos,
                    uint64_t ref);
/* Subscribes to n topics (QoS 1); one SESSION_SUBSCRIBED event per topic. */
int session_subscribe(uint64_t id, char *const *topics, size_t n);

#endif
