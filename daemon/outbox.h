/*
 * outbox: store-and-forward. Every uplink message is appended here, committed to SQLite, and
 * only then is its producer told "accepted"; the forwarder reads a device's messages oldest
 * first (peek), and deletes them once the cloud has them (ack). An acked message is not handed
 * out again, even before its delete is committed.
 *
 * Appends made during one loop turn are committed together in one transaction at the end of the
 * turn (group commit), so throughput does not depend on one fsync per message. While messages
 * are coming in, acks (deletes) ride along with the next commit, waiting at most 50 ms for one
 * (outbox_flush commits them at the end of the turn), so at low rates a message costs one
 * transaction, not two; with no append in the last 50 ms they commit at the end of the turn. With
 * durability "full" the commit runs off the loop (libuv thread pool) on a writer connection the
 * loop never touches while a batch is in flight; peeks use a second connection (WAL lets it
 * read while the writer commits); with normal one connection holds the file's lock exclusively
 * while the store is open. The backlog lives on disk only: memory holds the batch being
 * committed and a few counters per device, never the queued messages.
 *
 * Bounds: max_bytes (whole store) and max_device_bytes (per device, 0 = none) count topic +
 * payload bytes. With reject-new an append that would pass a cap fails at once with
 * ALIGW_ESTOREFULL; with drop-oldest it is accepted and the oldest messages (of that device for
 * its own cap, of the whole store for the global cap) are deleted in the same transaction and
 * counted per device as dropped. Messages older than ttl_s are deleted by a timer and counted as
 * expired. Drops and expiries are logged at most once per device per 10 seconds with the count.
 * A full disk makes the store "full": appends fail with ALIGW_ESTOREFULL while acks, expiry and
 * peeks keep working, and are accepted again once there is room. A reserve file, <path>.reserve
 * (at most 4 MiB, real blocks), is kept next to the database and freed when SQLite runs out of
 * space, so that the deletes of delivered messages can still commit; it is allocated again when
 * room returns. Never delete it while the daemon runs; it is recreated at open if missing.
 *
 * Everything here is called on the loop thread; callbacks run on the loop thread.
 */
#ifndef ALIGW_OUTBOX_H
#define ALIGW_OUTBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "config.h"

struct outbox;

struct outbox_opts {
    const char *path; /* borrowed for the call */
    enum store_durability durability;
    int64_t max_bytes;        /* whole store; 0 = no cap */
    int64_t max_device_bytes; /* per device; 0 = no cap */
    enum store_policy policy;
    int64_t ttl_s; /* 0 = keep forever */
};

/* New committed messages exist for device_key ("pk/dn"); called once per device per commit. */
typedef void (*outbox_ready_cb)(void *arg, const char *device_key);

/*
 * Opens (creating or migrating) the store. Reads only the small device table: a store of any size
 * is ready at once. Creates or resizes the reserve file; with no room for it the store opens
 * full. ready may be NULL. Returns 0 and *out, or a db_open() error (ALIGW_ECORRUPT for a
 * damaged file, which is left untouched; -ENOTSUP for a newer schema), -ENOMEM.
 */
int outbox_open(uv_loop_t *loop, const struct outbox_opts *o, outbox_ready_cb ready, void *arg,
                struct outbox **out);

/*
 * Commits what is pending (append callbacks are called as usual), stops the timers, closes the
 * databases and then calls cb (may be NULL) from the loop. ob is freed before cb runs. No other
 * outbox call may be made after this one. The loop must keep running until cb.
 */
void outbox_close(struct outbox *ob, void (*cb)(void *arg), void *arg);

/* status is 0 (seq is the message's), ALIGW_ESTOREFULL (disk full) or another negative error. */
typedef void (*outbox_append_cb)(void *arg, int status, int64_t seq);

/*
 * Queues a message for device_key; device_key, topic and payload are copied (borrowed for the
 * call). cb (may be NULL) is called exactly once, on the loop, after the transaction holding the
 * message committed or failed (ALIGW_ESTOREFULL when the disk turned out full). Fails at once,
 * without calling cb, with -EINVAL (bad qos, empty key or topic), -EMSGSIZE (the message alone
 * exceeds a cap), ALIGW_ESTOREFULL (reject-new and a cap would be passed, or the disk is full),
 * -ENOMEM, -ESHUTDOWN (closing).
 */
int outbox_append(struct outbox *ob, const char *device_key, const char *topic, const void *payload,
                  size_t len, int qos, outbox_append_cb cb, void *arg);

/*
 * Sets the byte cap of one device (0: the store's max_device_bytes), enforced like that one from
 * the next append on (store.policy decides between dropping the device's oldest and refusing).
 * Returns 0, -EINVAL, -ENOMEM.
 */
int outbox_set_device_cap(struct outbox *ob, const char *device_key, int64_t max_bytes);

/* A message read back; free with outbox_msg_free (the struct itself is the caller's). */
struct outbox_msg {
    int64_t seq;
    char *topic;
    void *payload;
    size_t len;
    int qos;
    int64_t created_ms; /* wall clock at append, ms since the epoch */
    bool borrowed;      /* topic and payload point into the outbox's memory (see outbox_peek) */
};

/*
 * Reads up to max committed messages of device_key with seq > after_seq, oldest first, into
 * out[0..*n). A message acked (outbox_ack) is never returned again, even while its delete is not
 * committed yet; the others are returned each time they are asked for, so pass the last seq you
 * handed on as after_seq, and 0 to start again from the oldest unacked message (a new
 * connection). Returns 0 (*n may be 0; an unknown device has none), or -ENOMEM / a db_err()
 * code. Called from a ready callback, it may hand out the messages just committed
 * from memory instead of reading them back (write-through): those are `borrowed` and valid only
 * until that callback returns; outbox_msg_free is still to be called on every message.
 */
int outbox_peek(struct outbox *ob, const char *device_key, int64_t after_seq,
                struct outbox_msg *out, size_t max, size_t *n);
void outbox_msg_free(struct outbox_msg *m);

/*
 * The message seq of device_key (borrowed for the call) was delivered: it is deleted in the next
 * batch that commits: at the end of this turn when nothing was appended in the last 50 ms, else
 * at the latest ~50 ms from now (sooner with outbox_flush). From now on outbox_peek skips it.
 * Unknown seqs are ignored. Acks may come in any order (a QoS 0 message is "acked" when sent,
 * possibly before an older QoS 1 message's PUBACK).
 * Returns the ack's ticket (> 0, increasing with every call) or -ENOMEM / -ESHUTDOWN /
 * ALIGW_ECORRUPT. Until the delete is committed (see outbox_on_settled) the row is still there,
 * so a crash now sends the message again: callers that bound duplicates count it as in flight
 * until then.
 */
int64_t outbox_ack(struct outbox *ob, const char *device_key, int64_t seq);

/* Commits the pending acks (and whatever else is pending) at the end of this loop turn rather
 * than waiting for the ack delay: for a caller whose window is held by unsettled acks. */
void outbox_flush(struct outbox *ob);

/* The deletes of every ack with a ticket up to `ticket` are committed. */
typedef void (*outbox_settled_cb)(void *arg, int64_t ticket);
/* Sets the settled callback (cb may be NULL): called on the loop after each commit that deleted
 * acked messages. A delete that cannot commit (a full disk) is retried and settles later. */
void outbox_on_settled(struct outbox *ob, outbox_settled_cb cb, void *arg);

/*
 * Sets message seq aside as refused by the platform: in the next batch it moves, with reason
 * (copied), from the queue to the dead_letter table, is no longer counted as queued and is never
 * peeked again. Returns 0, -ENOMEM, -ESHUTDOWN, ALIGW_ECORRUPT.
 */
int outbox_dead_letter(struct outbox *ob, int64_t seq, const char *reason);

struct outbox_dead {
    int64_t count; /* dead letters of the device, all time */
    int64_t last_seq, last_ms;
    char last_topic[256], last_reason[160];
};
/* The dead letters of a device (zeros when none). Returns 0 or a db_err() code. */
int outbox_dead_letters(struct outbox *ob, const char *device_key, struct outbox_dead *out);

struct outbox_stats {
    uint64_t count, bytes;     /* committed and still queued */
    uint64_t dropped, expired; /* since the store was created */
    int64_t oldest_ms;         /* created_ms of the oldest queued message, 0 if none */
    uint64_t accepted;         /* appends committed since the store was opened */
    bool full;                 /* the disk is full: appends are refused until there is room */
};

/* Counters of one device; all zero (and 0 returned) for an unknown device. */
int outbox_device_stats(struct outbox *ob, const char *device_key, struct outbox_stats *st);
/* The same without oldest_ms (which costs a query): memory only, for a scrape of every device. */
int outbox_device_counts(struct outbox *ob, const char *device_key, struct outbox_stats *st);
/* Counters of the whole store. */
void outbox_total_stats(struct outbox *ob, struct outbox_stats *st);

/* Calls fn for every device that has queued messages (e.g. to start forwarding after open). */
void outbox_foreach_pending(struct outbox *ob, void (*fn)(void *arg, const char *device_key),
                            void *arg);

/*
 * Errors. Every failed read (peek) or commit is counted and its text kept ("what: error (SQLite:
 * message)"). A damaged file (SQLITE_CORRUPT or SQLITE_NOTADB while running) is reported once
 * through cb (loop thread; text borrowed for the call); from then on the store reads and writes
 * nothing: appends, acks and peeks fail with ALIGW_ECORRUPT and appends waiting for their commit
 * get ALIGW_ECORRUPT. cb may be NULL.
 */
typedef void (*outbox_damaged_cb)(void *arg, const char *what);
void outbox_set_damaged_cb(struct outbox *ob, outbox_damaged_cb cb, void *arg);

struct outbox_health {
    uint64_t errors;        /* failed reads and commits since open */
    bool damaged;           /* a damaged file was found */
    const char *last_error; /* "" if none; valid until the next outbox call */
};
void outbox_health(struct outbox *ob, struct outbox_health *h);

/*
 * The store's identity: a random number made when the file was created and kept in it, so that
 * a recreated (deleted, emptied) store is told from the original. 0 if it could not be recorded.
 */
int64_t outbox_identity(struct outbox *ob);
/* Every message with a seq up to this one was committed (seqs only grow, across restarts). */
int64_t outbox_committed_seq(struct outbox *ob);

#endif
