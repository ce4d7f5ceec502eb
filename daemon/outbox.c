/*
 * outbox: store-and-forward in SQLite (see outbox.h for the contract).
 *
 * Shape. The loop owns two batches: `cur` collects the appends and acks of the current turn;
 * an end-of-turn callback (endturn.h) hands it over as `fly` and `run_batch` commits it in
 * one transaction: insert the appends, delete the acked rows, delete expired rows, apply the
 * drop-oldest caps, write the touched devices' counters (and, once per SEQ_RESERVE seqs, the
 * seq reservation: see "Seqs" below). With durability normal this runs inline in that callback;
 * with full it runs in uv_queue_work and the loop keeps collecting into `cur`, which becomes the
 * next batch when the first one is done (one batch in flight at a time, so the writer connection is
 * only ever used by one thread). `complete` merges the batch's counter deltas into the per-device
 * counters and calls the callbacks, all on the loop. An ack also enters its device's sorted `acked`
 * list until the batch holding it commits (or gives it up): outbox_peek skips those rows, so a
 * delivered message is not handed out again while its delete waits; a failed commit puts the acks
 * back into `cur` and they stay listed.
 *
 * Sharing while a batch is in flight: the batch runner writes only the batch, the devices' d_*
 * / touched / inserted / got_append fields, and reads committed counters, `by_id` and options,
 * which the loop does not write until `complete`. The loop writes the device hash, pending_bytes,
 * `cur` and the list of devices not yet in `by_id` (indexed at the next hand-over).
 *
 * Seqs and created_ms are assigned at append, on the loop, so per-device FIFO is append order;
 * a failed batch leaves a gap in the seqs, never a reordering. Seqs only grow, across restarts
 * and an emptied store too: meta's next_seq is a reservation, every seq committed is below it or
 * still in `message`, and opening starts above both. A batch whose seqs pass the reservation
 * moves it SEQ_RESERVE ahead in the same transaction, so meta's page is written once per that
 * many seqs, not with every message (one WAL frame of the four a lone append wrote); a restart
 * skips at most SEQ_RESERVE seqs.
 *
 * Full disk. Deleting a delivered message is a write too: the WAL needs room to record it, and a
 * checkpoint needs room to grow the database by the pages the WAL added. So the outbox keeps a
 * reserve ("ballast") file next to the database, <db>.reserve, of real blocks (posix_fallocate):
 * min(4 MiB, 1/8 of the free space at open; 4 MiB rather than 1 keeps checkpoints as rare as
 * SQLite's default on a large disk). When SQLite reports SQLITE_FULL (on a commit or a
 * checkpoint) the runner frees the reserve's blocks, checkpoints, and retries the deletes, which
 * now fit. The database growth waiting in the WAL is kept under half the reserve (our own
 * checkpoint policy: SQLite's 1000 frames, fewer on a small filesystem, or earlier when the
 * growth reaches that), so the released room always covers the checkpoint; journal_size_limit
 * trims the WAL back after a checkpoint; deletes zero only what they write anyway
 * (secure_delete=FAST). Before a batch of appends the runner also checks that the filesystem has
 * room for it (WAL frames plus database growth, estimated generously); if not, the batch is
 * refused without touching SQLite. Either way the store is "full": appends fail with
 * ALIGW_ESTOREFULL (at once in outbox_append), while acks and expiry keep committing. Each batch
 * while full, and once a second, the runner looks for room again: free space for the reserve,
 * and for a batch like the last one refused (free pages of the database count for the data, the
 * reusable part of the WAL file for its frames); then the reserve is allocated again and appends
 * are accepted. Entering and leaving the full state are logged once each. The peek connection
 * never keeps a read transaction open (every statement is reset at once), so it never holds the
 * WAL back from being reused.
 *
 * Locking. With durability normal everything runs on the loop, so peeks share the writer's
 * connection and it runs in EXCLUSIVE locking mode: it takes the file's lock once and keeps it,
 * instead of taking and dropping fcntl locks and rereading the WAL index in every transaction
 * (measured: ~14 fewer system calls per message at 100 msg/s, ~28% of them; issue 14). Once
 * aligwd has written to the store no other process can read or write it until aligwd closes it
 * (SQLITE_BUSY after their busy timeout). With full, the two connections share the file the
 * usual WAL way.
 */
#include "outbox.h"

#include "db.h"
#include "endturn.h"
#include "errors.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#define LOG_EVERY_MS 10000
#define CHUNK 256              /* rows read at a time when dropping or expiring */
#define EXPIRE_PER_BATCH 50000 /* rows expired per batch; the rest in the next turn */
#define RETRY_MS 1000          /* delay before retrying acks after a failed commit */
#define SEQ_RESERVE 4096       /* seqs reserved in meta at a time (see the file comment) */
#define ACK_DELAY_MS 50        /* longest an ack waits for a commit to ride along with */
#define RESERVE_MAX (4 << 20)  /* reserve file: at most 4 MiB ... */
#define RESERVE_DIV 8          /* ... and 1/8 of the free space at open */
#define RESERVE_MIN_PAGES 4

struct odev {
    struct odev *hnext; /* hash chain */
    struct odev *nnext; /* list of devices not yet in by_id */
    int64_t id;
    char *key;
    /* Committed counters: written by the loop, only in complete(). */
    int64_t count, bytes, dropped, expired;
    bool in_db;
    /* Appended but not yet committed (loop). */
    int64_t pending_bytes;
    /* Byte cap of this device (0: the store's max_device_bytes): cap_next is the loop's, set by
     * outbox_set_device_cap; cap is the runner's copy, taken at each hand-over. */
    int64_t cap_next, cap;
    /* The running batch's deltas and flags (batch runner; merged and reset in complete()). */
    int64_t d_count, d_bytes, d_dropped, d_expired;
    bool touched, inserted, got_append;
    uint64_t accepted; /* appends committed since open (loop) */
    /* Log rate limiting (loop). */
    uint64_t unlogged_dropped, unlogged_expired;
    int64_t drop_log_ms, exp_log_ms;
    /* Write-through (loop, complete() and outbox_peek()). max_seq bounds the seqs of every
     * committed message of the device (valid when max_known); during complete() wt_head..wt_tail
     * chain the device's messages of the batch just committed and wt_prev bounds the device's
     * committed messages outside it (-1: not known yet, looked up on first need). */
    int64_t max_seq, wt_prev;
    bool max_known;
    struct pend *wt_head, *wt_tail;
    /* Acked seqs whose delete is not committed yet (loop): one entry per ack in `cur`, in `fly`
     * while it runs; sorted, so outbox_peek can skip them; NULL when none pend. */
    int64_t *acked;
    size_t n_acked, cap_acked;
};

struct pend {
    struct odev *dev;
    struct pend *dnext; /* the device's next message of the batch (write-through) */
    int64_t seq, created_ms;
    int qos;
    size_t tlen, len;
    outbox_append_cb cb;
    void *arg;
    char data[]; /* topic, NUL, payload */
};

/* A message set aside as refused by the platform (outbox_dead_letter). */
struct deadl {
    int64_t seq, at_ms;
    char reason[160];
};

/* An acked message: its device (NULL if the outbox does not know it) holds seq in `acked`. */
struct ackent {
    struct odev *dev;
    int64_t seq;
};

struct batch {
    struct pend **ap;
    size_t n_ap, cap_ap;
    struct deadl *dead;
    size_t n_dead, cap_dead;
    struct ackent *acks;
    size_t n_acks, cap_acks;
    int64_t expire_before_ms; /* 0 = no expiry in this batch */
    bool expire_more;         /* set by the runner: more rows to expire */
    int64_t next_seq;
    struct odev **touched;
    size_t n_touched, cap_touched;
    int64_t d_count, d_bytes, d_dropped, d_expired;
    int append_status, ack_status;
    int64_t ack_upto; /* every ack ticket up to this one is in this batch or an earlier one */
    bool try_restore; /* the store is full: look for room again */
    bool went_full, came_back; /* set by the runner, logged by complete() */
    bool released;             /* the runner freed the reserve in this batch */
    bool damaged;              /* copied at hand-over: the store is damaged, touch nothing */
    char errmsg[200];          /* SQLite's message for a failed transaction (runner) */
    int64_t avail;             /* free bytes seen by the runner at a transition */
};

enum {
    ST_INS_MSG,
    ST_INS_DEV,
    ST_DEL_MSG,
    ST_SEL_MSG,
    ST_UPD_DEV,
    ST_UPD_META,
    ST_OLDEST_DEV,
    ST_OLDEST_ALL,
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_FREELIST,
    ST_PAGE_COUNT,
    ST_INS_DEAD,
    ST_W_N
};
enum { RT_PEEK, RT_OLDEST_DEV, RT_OLDEST_ALL, RT_MAX_BELOW, RT_DEAD_COUNT, RT_DEAD_LAST, RT_N };

static const char *const wsql[ST_W_N] = {
    [ST_INS_MSG] = "INSERT INTO message(seq, device_id, created_ms, qos, size, topic, payload) "
                   "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    [ST_INS_DEV] = "INSERT OR IGNORE INTO device(id, key) VALUES (?1, ?2)",
    /* Not DELETE ... RETURNING: SQLite runs that through a temporary table, 3x the work of
     * this pair (callgrind: ~30k instructions per delete, the costliest step per message). */
    [ST_DEL_MSG] = "DELETE FROM message WHERE seq = ?1",
    [ST_SEL_MSG] = "SELECT device_id, size FROM message WHERE seq = ?1",
    [ST_UPD_DEV] = "UPDATE device SET count = ?2, bytes = ?3, dropped = ?4, expired = ?5 "
                   "WHERE id = ?1",
    [ST_UPD_META] = "UPDATE meta SET value = ?1 WHERE key = 'next_seq'",
    [ST_OLDEST_DEV] = "SELECT seq, created_ms FROM message WHERE device_id = ?1 ORDER BY seq "
                      "LIMIT ?2",
    [ST_OLDEST_ALL] = "SELECT seq, created_ms FROM message ORDER BY seq LIMIT ?1",
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_FREELIST] = "PRAGMA freelist_count",
    [ST_PAGE_COUNT] = "PRAGMA page_count",
    [ST_INS_DEAD] = "INSERT OR IGNORE INTO dead_letter(seq, device_id, created_ms, qos, topic, "
                    "payload, reason, dead_ms) SELECT seq, device_id, created_ms, qos, topic, "
                    "payload, ?2, ?3 FROM message WHERE seq = ?1",
};
static const char *const rsql[RT_N] = {
    [RT_PEEK] = "SELECT seq, topic, payload, qos, created_ms FROM message "
                "WHERE device_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    [RT_OLDEST_DEV] = "SELECT created_ms FROM message WHERE device_id = ?1 ORDER BY seq LIMIT 1",
    [RT_OLDEST_ALL] = "SELECT created_ms FROM message ORDER BY seq LIMIT 1",
    [RT_MAX_BELOW] = "SELECT max(seq) FROM message WHERE device_id = ?1 AND seq < ?2",
    [RT_DEAD_COUNT] = "SELECT count(*) FROM dead_letter WHERE device_id = ?1",
    [RT_DEAD_LAST] = "SELECT seq, topic, reason, dead_ms FROM dead_letter WHERE device_id = ?1 "
                     "ORDER BY seq DESC LIMIT 1",
};

struct outbox {
    uv_loop_t *loop;
    char *path;
    struct outbox_opts o;
    outbox_ready_cb ready;
    void *ready_arg;
    outbox_settled_cb settled;
    void *settled_arg;
    int64_t ack_ticket; /* the last ticket handed out by outbox_ack */

    sqlite3 *wdb, *rdb;
    sqlite3_stmt *w[ST_W_N], *r[RT_N];

    struct odev **buckets;
    size_t n_buckets, n_devs;
    struct odev **by_id; /* indexed by device id, for rows found by the runner */
    size_t by_id_len;
    struct odev *unindexed;
    int64_t next_dev_id;

    int64_t count, bytes, dropped, expired; /* committed totals */
    uint64_t accepted;                      /* appends committed since open */
    int64_t pending_bytes;
    int64_t next_seq;
    int64_t committed_seq; /* every seq up to this one was committed (loop) */
    int64_t seq_reserved;  /* meta's next_seq as committed: seqs below it are taken (runner) */
    int64_t identity;      /* random, kept in meta: tells this store from a recreated one */

    struct batch b[2];
    struct batch *cur, *fly;
    bool inflight, expire_due, closing;
    bool wt_on; /* in complete()'s ready callbacks: peeks may serve the batch from memory */
    int64_t fail_log_ms, ack_log_ms;
    uint64_t fail_unlogged;

    /* Full disk. The runner owns these while a batch is in flight; the loop reads them only
     * from complete() and dispatch(). */
    char *res_path, *wal_path;
    int res_fd;           /* -1 when the reserve file could not be opened */
    int64_t res_size;     /* its size when held */
    bool res_held;        /* its blocks are allocated */
    bool rt_full;         /* the runner's view: appends are refused */
    int64_t page_size;    /* of the database */
    int64_t wal_budget;   /* half the reserve: database growth held in the WAL, room wanted */
    int64_t ckpt_frames;  /* frames that trigger a checkpoint in any case */
    int64_t wal_frames;   /* frames in the WAL after the last commit (WAL hook) */
    int ckpt_err;         /* result of the last checkpoint made by the WAL hook */
    int64_t wal_used;     /* bytes of the WAL file the next commit cannot reuse */
    int64_t db_file_size; /* of the database file as last seen, -1 = to be read (runner) */
    int64_t want_room;    /* what the last refused batch needed (capped) */
    int64_t avail_left;   /* free space last seen, less what batches may have used since */
    uint64_t avail_ns;    /* when it was seen (uv_hrtime), 0 = not known */
    /* The loop's view. */
    bool full, restore_due;
    /* Errors (loop): every failed read or commit is counted and its SQLite message kept; a
     * damaged file (SQLITE_CORRUPT/NOTADB) makes the store refuse everything from then on. */
    uint64_t errors;
    char last_error[256];
    bool damaged;
    outbox_damaged_cb damaged_cb;
    void *damaged_arg;
    uint64_t full_refused; /* appends refused while full, for the log line */

    struct endturn endturn; /* the group commit */
    uv_timer_t ttl_timer, retry_timer, ack_timer;
    uint64_t append_ms; /* uv_now() of the last append */
    uv_work_t work;
    int open_handles;
    void (*close_cb)(void *arg);
    void *close_arg;
};

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * Records a failed read or commit (loop): counted, its text kept for status, and a damaged file
 * (ALIGW_ECORRUPT) reported once through the damage callback; the store then touches the file
 * no more. sqlmsg may be NULL.
 */
static void note_error(struct outbox *ob, int err, const char *what, const char *sqlmsg)
{
    ob->errors++;
    snprintf(ob->last_error, sizeof(ob->last_error), "%s: %s%s%s", what, aligw_strerror(err),
             sqlmsg && *sqlmsg ? " (SQLite: " : "", sqlmsg && *sqlmsg ? sqlmsg : "");
    if (sqlmsg && *sqlmsg)
        strncat(ob->last_error, ")", sizeof(ob->last_error) - strlen(ob->last_error) - 1);
    if (err == ALIGW_ECORRUPT && !ob->damaged) {
        ob->damaged = true;
        log_error("%s: the outbox is damaged (%s); it is no longer read or written", ob->path,
                  ob->last_error);
        if (ob->damaged_cb)
            ob->damaged_cb(ob->damaged_arg, ob->last_error);
    }
}

/* Devices: key hash and id index. */

static uint64_t hash_key(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static struct odev *dev_find(struct outbox *ob, const char *key)
{
    struct odev *d = ob->buckets[hash_key(key) & (ob->n_buckets - 1)];
    while (d && strcmp(d->key, key) != 0)
        d = d->hnext;
    return d;
}

static int dev_rehash(struct outbox *ob)
{
    size_t n = ob->n_buckets ? ob->n_buckets * 2 : 64;
    struct odev **nb = calloc(n, sizeof(*nb));
    if (!nb)
        return -ENOMEM;
    for (size_t i = 0; i < ob->n_buckets; i++) {
        struct odev *d = ob->buckets[i], *next;
        for (; d; d = next) {
            next = d->hnext;
            size_t j = hash_key(d->key) & (n - 1);
            d->hnext = nb[j];
            nb[j] = d;
        }
    }
    free(ob->buckets);
    ob->buckets = nb;
    ob->n_buckets = n;
    return 0;
}

/* Adds a device to the hash; it joins by_id at the next hand-over (dev_index). */
static struct odev *dev_add(struct outbox *ob, int64_t id, const char *key)
{
    struct odev *d;
    if (ob->n_devs >= ob->n_buckets && dev_rehash(ob) < 0)
        return NULL;
    if (!(d = calloc(1, sizeof(*d))) || !(d->key = strdup(key))) {
        free(d);
        return NULL;
    }
    d->id = id;
    d->drop_log_ms = d->exp_log_ms = INT64_MIN / 2;
    d->max_known = true; /* a new device has no message; load() says otherwise */
    size_t j = hash_key(key) & (ob->n_buckets - 1);
    d->hnext = ob->buckets[j];
    ob->buckets[j] = d;
    ob->n_devs++;
    if (id >= ob->next_dev_id)
        ob->next_dev_id = id + 1;
    d->nnext = ob->unindexed;
    ob->unindexed = d;
    return d;
}

/* Moves the devices created since the last hand-over into by_id. Loop, nothing in flight. */
static int dev_index(struct outbox *ob)
{
    if ((size_t)ob->next_dev_id > ob->by_id_len) {
        size_t n = ob->by_id_len ? ob->by_id_len : 64;
        while (n < (size_t)ob->next_dev_id)
            n *= 2;
        struct odev **v = realloc(ob->by_id, n * sizeof(*v));
        if (!v)
            return -ENOMEM;
        memset(v + ob->by_id_len, 0, (n - ob->by_id_len) * sizeof(*v));
        ob->by_id = v;
        ob->by_id_len = n;
    }
    for (struct odev *d = ob->unindexed; d; d = d->nnext)
        ob->by_id[d->id] = d;
    ob->unindexed = NULL;
    return 0;
}

static struct odev *dev_by_id(struct outbox *ob, int64_t id)
{
    return id >= 0 && (size_t)id < ob->by_id_len ? ob->by_id[id] : NULL;
}

/* The batch runner: runs on the loop (normal) or a pool thread (full). */

static int touch(struct batch *b, struct odev *d)
{
    if (d->touched)
        return 0;
    if (b->n_touched == b->cap_touched) {
        size_t n = b->cap_touched ? b->cap_touched * 2 : 64;
        struct odev **v = realloc(b->touched, n * sizeof(*v));
        if (!v)
            return -ENOMEM;
        b->touched = v;
        b->cap_touched = n;
    }
    b->touched[b->n_touched++] = d;
    d->touched = true;
    return 0;
}

static void undo_deltas(struct batch *b)
{
    for (size_t i = 0; i < b->n_touched; i++) {
        struct odev *d = b->touched[i];
        d->d_count = d->d_bytes = d->d_dropped = d->d_expired = 0;
        d->touched = d->inserted = d->got_append = false;
    }
    b->n_touched = 0;
    b->d_count = b->d_bytes = b->d_dropped = b->d_expired = 0;
}

static int step_done(struct outbox *ob, sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : db_err(ob->wdb, rc);
}

enum del_kind { DEL_ACK, DEL_DROP, DEL_EXPIRE };

/* Deletes one message and accounts for it. A seq already gone is not an error. */
static int delete_msg(struct outbox *ob, struct batch *b, int64_t seq, enum del_kind kind)
{
    sqlite3_stmt *st = ob->w[ST_SEL_MSG];
    int rc, err = 0;

    sqlite3_bind_int64(st, 1, seq);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        struct odev *d = dev_by_id(ob, sqlite3_column_int64(st, 0));
        int64_t size = sqlite3_column_int64(st, 1);
        sqlite3_reset(st);
        st = ob->w[ST_DEL_MSG];
        sqlite3_bind_int64(st, 1, seq);
        rc = sqlite3_step(st);
        if (rc != SQLITE_DONE)
            goto out;
        if (d && (err = touch(b, d)) == 0) {
            d->d_count--;
            d->d_bytes -= size;
            if (kind == DEL_DROP)
                d->d_dropped++;
            else if (kind == DEL_EXPIRE)
                d->d_expired++;
        }
        b->d_count--;
        b->d_bytes -= size;
        if (kind == DEL_DROP)
            b->d_dropped++;
        else if (kind == DEL_EXPIRE)
            b->d_expired++;
    }
out:
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return db_err(ob->wdb, rc);
    return err;
}

/*
 * Reads up to CHUNK oldest seqs (of device d, or of the whole store when d is NULL) into seqs,
 * stopping at the first created_ms >= before_ms when before_ms > 0.
 */
static int oldest(struct outbox *ob, struct odev *d, int64_t before_ms, int64_t *seqs, int *n)
{
    sqlite3_stmt *st = ob->w[d ? ST_OLDEST_DEV : ST_OLDEST_ALL];
    int rc;

    *n = 0;
    if (d) {
        sqlite3_bind_int64(st, 1, d->id);
        sqlite3_bind_int(st, 2, CHUNK);
    } else {
        sqlite3_bind_int(st, 1, CHUNK);
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (before_ms > 0 && sqlite3_column_int64(st, 1) >= before_ms) {
            rc = SQLITE_DONE;
            break;
        }
        seqs[(*n)++] = sqlite3_column_int64(st, 0);
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : db_err(ob->wdb, rc);
}

/* Drops oldest messages of d (or of the store) until its bytes are within cap. */
static int enforce_cap(struct outbox *ob, struct batch *b, struct odev *d, int64_t cap)
{
    int64_t seqs[CHUNK];
    int n, err;

    for (;;) {
        int64_t used = d ? d->bytes + d->d_bytes : ob->bytes + b->d_bytes;
        if (used <= cap)
            return 0;
        if ((err = oldest(ob, d, 0, seqs, &n)) < 0)
            return err;
        if (n == 0)
            return 0; /* counters say over, table says empty: nothing more to drop */
        for (int i = 0; i < n; i++) {
            used = d ? d->bytes + d->d_bytes : ob->bytes + b->d_bytes;
            if (used <= cap)
                return 0;
            if ((err = delete_msg(ob, b, seqs[i], DEL_DROP)) < 0)
                return err;
        }
    }
}

static int expire(struct outbox *ob, struct batch *b)
{
    int64_t seqs[CHUNK];
    int n, err;
    size_t done = 0;

    for (;;) {
        if ((err = oldest(ob, NULL, b->expire_before_ms, seqs, &n)) < 0)
            return err;
        for (int i = 0; i < n; i++)
            if ((err = delete_msg(ob, b, seqs[i], DEL_EXPIRE)) < 0)
                return err;
        done += (size_t)n;
        if (n < CHUNK)
            return 0;
        if (done >= EXPIRE_PER_BATCH) {
            b->expire_more = true;
            return 0;
        }
    }
}

static int insert_append(struct outbox *ob, struct batch *b, struct pend *p)
{
    struct odev *d = p->dev;
    sqlite3_stmt *st;
    int err;

    if ((err = touch(b, d)) < 0)
        return err;
    if (!d->in_db && !d->inserted) {
        st = ob->w[ST_INS_DEV];
        sqlite3_bind_int64(st, 1, d->id);
        sqlite3_bind_text(st, 2, d->key, -1, SQLITE_STATIC);
        if ((err = step_done(ob, st)) < 0)
            return err;
        d->inserted = true;
    }
    st = ob->w[ST_INS_MSG];
    sqlite3_bind_int64(st, 1, p->seq);
    sqlite3_bind_int64(st, 2, d->id);
    sqlite3_bind_int64(st, 3, p->created_ms);
    sqlite3_bind_int(st, 4, p->qos);
    sqlite3_bind_int64(st, 5, (int64_t)(p->tlen + p->len));
    sqlite3_bind_text(st, 6, p->data, (int)p->tlen, SQLITE_STATIC);
    sqlite3_bind_blob(st, 7, p->data + p->tlen + 1, (int)p->len, SQLITE_STATIC);
    if ((err = step_done(ob, st)) < 0)
        return err;
    d->d_count++;
    d->d_bytes += (int64_t)(p->tlen + p->len);
    d->got_append = true;
    b->d_count++;
    b->d_bytes += (int64_t)(p->tlen + p->len);
    return 0;
}

static void maybe_checkpoint(struct outbox *ob);

static int run_txn(struct outbox *ob, struct batch *b, bool with_appends)
{
    int err;
    int64_t reserve = 0;

    if ((err = step_done(ob, ob->w[ST_BEGIN])) < 0)
        return err;
    if (with_appends)
        for (size_t i = 0; i < b->n_ap; i++)
            if ((err = insert_append(ob, b, b->ap[i])) < 0)
                goto fail;
    for (size_t i = 0; i < b->n_dead; i++) {
        sqlite3_stmt *st = ob->w[ST_INS_DEAD];
        sqlite3_bind_int64(st, 1, b->dead[i].seq);
        sqlite3_bind_text(st, 2, b->dead[i].reason, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, b->dead[i].at_ms);
        if ((err = step_done(ob, st)) < 0 || (err = delete_msg(ob, b, b->dead[i].seq, DEL_ACK)) < 0)
            goto fail;
    }
    for (size_t i = 0; i < b->n_acks; i++)
        if ((err = delete_msg(ob, b, b->acks[i].seq, DEL_ACK)) < 0)
            goto fail;
    if (b->expire_before_ms > 0 && (err = expire(ob, b)) < 0)
        goto fail;
    if (with_appends && b->n_ap && ob->o.policy == STORE_DROP_OLDEST) {
        for (size_t i = 0; i < b->n_touched; i++) {
            struct odev *d = b->touched[i];
            int64_t cap = d->cap > 0 ? d->cap : ob->o.max_device_bytes;
            if (cap > 0 && d->got_append && (err = enforce_cap(ob, b, d, cap)) < 0)
                goto fail;
        }
        if (ob->o.max_bytes > 0 && (err = enforce_cap(ob, b, NULL, ob->o.max_bytes)) < 0)
            goto fail;
    }
    for (size_t i = 0; i < b->n_touched; i++) {
        struct odev *d = b->touched[i];
        sqlite3_stmt *st = ob->w[ST_UPD_DEV];
        if (!d->in_db && !d->inserted)
            continue;
        sqlite3_bind_int64(st, 1, d->id);
        sqlite3_bind_int64(st, 2, d->count + d->d_count);
        sqlite3_bind_int64(st, 3, d->bytes + d->d_bytes);
        sqlite3_bind_int64(st, 4, d->dropped + d->d_dropped);
        sqlite3_bind_int64(st, 5, d->expired + d->d_expired);
        if ((err = step_done(ob, st)) < 0)
            goto fail;
    }
    if (with_appends && b->n_ap && b->next_seq > ob->seq_reserved) {
        reserve = b->next_seq + SEQ_RESERVE;
        sqlite3_bind_int64(ob->w[ST_UPD_META], 1, reserve);
        if ((err = step_done(ob, ob->w[ST_UPD_META])) < 0)
            goto fail;
    }
    if ((err = step_done(ob, ob->w[ST_COMMIT])) < 0)
        goto fail;
    if (reserve)
        ob->seq_reserved = reserve;
    maybe_checkpoint(ob);
    return 0;
fail:
    snprintf(b->errmsg, sizeof(b->errmsg), "%s", sqlite3_errmsg(ob->wdb));
    if (!sqlite3_get_autocommit(ob->wdb))
        step_done(ob, ob->w[ST_ROLLBACK]);
    undo_deltas(b);
    b->expire_more = false; /* the TTL timer tries again */
    return err;
}

/*
 * Full disk (runner). See the file comment. fs_avail() counts blocks an unprivileged writer may
 * use; the reserve's blocks, while held, are not among them.
 */

static int64_t fs_avail(const char *path)
{
    struct statvfs sv;
    if (statvfs(path, &sv) != 0)
        return -1;
    return (int64_t)sv.f_bavail * (int64_t)sv.f_frsize;
}

/* Bytes of the WAL file a new write transaction can overwrite without growing it. */
static int64_t wal_free(struct outbox *ob)
{
    struct stat st;
    int64_t alloc;
    if (stat(ob->wal_path, &st) != 0)
        return 0;
    alloc = (int64_t)st.st_blocks * 512;
    if (alloc > (int64_t)st.st_size)
        alloc = (int64_t)st.st_size;
    return alloc > ob->wal_used ? alloc - ob->wal_used : 0;
}

static int64_t free_pages_bytes(struct outbox *ob)
{
    sqlite3_stmt *st = ob->w[ST_FREELIST];
    int64_t n = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_reset(st);
    return n * ob->page_size;
}

/* WAL hook: replaces SQLite's auto-checkpoint; maybe_checkpoint() acts on what it records. */
static int wal_hook(void *arg, sqlite3 *db, const char *name, int frames)
{
    struct outbox *ob = arg;
    ob->wal_frames = frames;
    return SQLITE_OK;
}

/* Bytes the database file must grow by when the WAL is copied into it. Only checkpoints change
 * the file's size (WAL mode, one connection), so it is read again only after one. */
static int64_t db_growth(struct outbox *ob)
{
    sqlite3_stmt *st = ob->w[ST_PAGE_COUNT];
    struct stat sb;
    int64_t pages = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_reset(st);
    if (ob->db_file_size < 0) {
        if (stat(ob->path, &sb) != 0)
            return 0;
        ob->db_file_size = sb.st_size;
    }
    return pages * ob->page_size > ob->db_file_size ? pages * ob->page_size - ob->db_file_size : 0;
}

/*
 * After a commit: checkpoint (passive) when the WAL holds ckpt_frames frames, as SQLite would,
 * or earlier when copying it would grow the database by more than the WAL budget (half the
 * reserve), so that the released reserve always covers the checkpoint on a full disk.
 */
static void maybe_checkpoint(struct outbox *ob)
{
    int log = (int)ob->wal_frames, done = 0;
    bool due = ob->wal_frames >= ob->ckpt_frames;

    if (!due && ob->wal_frames * ob->page_size >= ob->wal_budget)
        due = db_growth(ob) >= ob->wal_budget;
    if (due) {
        int rc = sqlite3_wal_checkpoint_v2(ob->wdb, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &done);
        ob->db_file_size = -1;
        ob->ckpt_err = rc == SQLITE_BUSY ? 0 : db_err(ob->wdb, rc);
    }
    /* Fully copied: the next writer starts over at the beginning of the WAL file. */
    ob->wal_used = done > 0 && done == log ? 0 : (int64_t)log * (ob->page_size + 24) + 32;
}

/* Copies the whole WAL into the database so its file can be reused from the start. */
static int checkpoint(struct outbox *ob)
{
    int log = 0, done = 0;
    int rc = sqlite3_wal_checkpoint_v2(ob->wdb, NULL, SQLITE_CHECKPOINT_RESTART, &log, &done);
    ob->db_file_size = -1;
    if (rc == SQLITE_OK)
        ob->wal_used = 0;
    return db_err(ob->wdb, rc);
}

/* Frees the reserve's blocks for the deletes and checkpoints that need them. */
static void reserve_release(struct outbox *ob, struct batch *b)
{
    if (!ob->res_held)
        return;
    if (ftruncate(ob->res_fd, 0) != 0)
        return; /* nothing was freed: keep holding it (logged by the caller's failure) */
    ob->res_held = false;
    b->released = true;
}

/* Allocates the reserve's blocks again. Returns false when there is no room. */
static bool reserve_take(struct outbox *ob)
{
    if (ob->res_held || ob->res_fd < 0)
        return true;
    if (posix_fallocate(ob->res_fd, 0, ob->res_size) != 0) {
        if (ftruncate(ob->res_fd, 0) != 0) {
            /* whatever was allocated stays allocated; the next try starts from it */
        }
        return false;
    }
    ob->res_held = true;
    return true;
}

/*
 * A generous estimate of the WAL bytes a batch's appends take: two per byte of row (a row just
 * over half a page fills a page alone), plus the frame headers, plus four pages for the index,
 * the device and meta rows.
 */
static int64_t batch_estimate(struct outbox *ob, const struct batch *b)
{
    int64_t rows = 0, frame = ob->page_size + 24;
    for (size_t i = 0; i < b->n_ap; i++)
        rows += 2 * (int64_t)(b->ap[i]->tlen + b->ap[i]->len + 64);
    return rows / ob->page_size * frame + rows % ob->page_size + 4 * frame;
}

/*
 * Whether est bytes of new messages fit, keeping `keep` bytes of free space aside: their WAL
 * frames (beyond what the WAL file can reuse) and the database growth at the next checkpoint
 * (beyond its free pages) must both come from the free space.
 */
/*
 * fs_avail() for a batch of appends: one system call per batch is a tenth of what a message costs
 * at low rates, so with far more room than any batch needs (AVAIL_SLACK) a figure up to
 * AVAIL_TTL_NS old will do, less twice the estimate of every batch since.
 */
#define AVAIL_SLACK ((int64_t)64 << 20)
#define AVAIL_TTL_NS (250 * 1000000ULL)
static int64_t fs_avail_batch(struct outbox *ob, int64_t est)
{
    uint64_t now = uv_hrtime();
    if (ob->avail_ns && now - ob->avail_ns < AVAIL_TTL_NS &&
        ob->avail_left - 2 * est >= AVAIL_SLACK) {
        ob->avail_left -= 2 * est;
        return ob->avail_left;
    }
    ob->avail_left = fs_avail(ob->path);
    ob->avail_ns = ob->avail_left >= AVAIL_SLACK ? now : 0;
    return ob->avail_left;
}

static bool fits(struct outbox *ob, int64_t est, int64_t keep, int64_t *avail, bool batch)
{
    int64_t wal, pages, need;

    *avail = batch ? fs_avail_batch(ob, est) : fs_avail(ob->path);
    if (*avail < 0)
        return true; /* cannot tell: let SQLite find out */
    if (*avail - keep >= 2 * est)
        return true;
    wal = wal_free(ob);
    pages = free_pages_bytes(ob);
    need = (est > wal ? est - wal : 0) + (est > pages ? est - pages : 0);
    return *avail - keep >= need;
}

static void enter_full(struct outbox *ob, struct batch *b, int64_t avail)
{
    ob->avail_ns = 0; /* look again next time */
    if (ob->rt_full)
        return;
    ob->rt_full = true;
    b->went_full = true;
    b->avail = avail;
}

/* While full: room for the reserve and for a batch like the one refused? Then take it back. */
static void try_restore(struct outbox *ob, struct batch *b)
{
    int64_t avail, keep = ob->res_held || ob->res_fd < 0 ? 0 : ob->res_size;
    int64_t want = ob->want_room > ob->wal_budget ? ob->want_room : ob->wal_budget;

    if (want > 2 * ob->wal_budget)
        want = 2 * ob->wal_budget;
    if (!fits(ob, want, keep, &avail, false) || !reserve_take(ob))
        return;
    ob->rt_full = false;
    ob->want_room = 0;
    b->came_back = true;
    b->avail = avail - keep;
}

static void run_batch(struct outbox *ob, struct batch *b)
{
    bool appends = b->n_ap > 0, dels = b->n_acks > 0 || b->n_dead > 0 || b->expire_before_ms > 0;
    int64_t avail = 0;

    b->append_status = b->ack_status = 0;
    b->expire_more = b->went_full = b->came_back = b->released = false;
    b->errmsg[0] = '\0';
    ob->ckpt_err = 0;
    if (b->damaged) {
        b->append_status = b->n_ap ? ALIGW_ECORRUPT : 0;
        b->ack_status = b->n_acks || b->n_dead ? ALIGW_ECORRUPT : 0;
        return;
    }
    if (ob->rt_full && (b->try_restore || dels)) {
        /* Deletes first: what they free may be the room that was missing. Appends that were
         * already queued when the store became full are refused rather than run in a second
         * transaction after the deletes (a failure there would undo the deletes' counters). */
        if (dels) {
            b->ack_status = run_txn(ob, b, false);
            dels = false;
            appends = false;
            if (b->ack_status == 0)
                checkpoint(ob);
        }
        if (b->ack_status == 0)
            try_restore(ob, b);
    }
    if (appends && !ob->rt_full) {
        int64_t est = batch_estimate(ob, b);
        if (!fits(ob, est, 0, &avail, true)) {
            enter_full(ob, b, avail);
            ob->want_room = est;
        }
    }
    if (b->n_ap && (ob->rt_full || !appends)) {
        b->append_status = ALIGW_ESTOREFULL;
        appends = false;
    }
    if (appends) {
        b->append_status = run_txn(ob, b, true);
        if (b->append_status < 0 && dels)
            b->ack_status = run_txn(ob, b, false); /* a full disk: deletes may still fit */
    } else if (dels) {
        b->ack_status = run_txn(ob, b, false);
    }
    if (b->append_status == ALIGW_ESTOREFULL || b->ack_status == ALIGW_ESTOREFULL ||
        ob->ckpt_err == ALIGW_ESTOREFULL) {
        /* SQLite itself ran out of room: free the reserve, move the WAL into the database (its
         * growth fits in what was freed), and let the deletes commit. */
        enter_full(ob, b, fs_avail(ob->path));
        reserve_release(ob, b);
        ob->ckpt_err = 0;
        checkpoint(ob);
        if (b->ack_status == ALIGW_ESTOREFULL) {
            b->ack_status = run_txn(ob, b, false);
            if (b->ack_status == 0)
                checkpoint(ob);
        }
    }
}

static void work_cb(uv_work_t *w)
{
    struct outbox *ob = w->data;
    run_batch(ob, ob->fly);
}

/* Back on the loop. */

static void schedule(struct outbox *ob);
static void maybe_finish(struct outbox *ob);
static void retry_cb(uv_timer_t *t);
static void ack_cb(uv_timer_t *t);

static bool batch_empty(struct outbox *ob, const struct batch *b)
{
    return b->n_ap == 0 && b->n_acks == 0 && b->n_dead == 0 && !ob->expire_due && !ob->restore_due;
}

static int push_dead(struct batch *b, const struct deadl *x)
{
    if (b->n_dead == b->cap_dead) {
        size_t n = b->cap_dead ? b->cap_dead * 2 : 16;
        struct deadl *v = realloc(b->dead, n * sizeof(*v));
        if (!v)
            return -ENOMEM;
        b->dead = v;
        b->cap_dead = n;
    }
    b->dead[b->n_dead++] = *x;
    return 0;
}

static int push_ack(struct batch *b, struct ackent a)
{
    if (b->n_acks == b->cap_acks) {
        size_t n = b->cap_acks ? b->cap_acks * 2 : 256;
        struct ackent *v = realloc(b->acks, n * sizeof(*v));
        if (!v)
            return -ENOMEM;
        b->acks = v;
        b->cap_acks = n;
    }
    b->acks[b->n_acks++] = a;
    return 0;
}

/*
 * Pending acks of a device (loop). Acks mostly come in seq order, so an insertion from the back
 * is cheap, and the oldest settle first, so a removal searches from the front. A seq acked twice
 * (a resend's PUBACK) is held twice, once per entry in the batches.
 */
static int acked_add(struct odev *d, int64_t seq)
{
    size_t i;
    if (d->n_acked == d->cap_acked) {
        size_t n = d->cap_acked ? d->cap_acked * 2 : 16;
        int64_t *v = realloc(d->acked, n * sizeof(*v));
        if (!v)
            return -ENOMEM;
        d->acked = v;
        d->cap_acked = n;
    }
    for (i = d->n_acked; i > 0 && d->acked[i - 1] > seq; i--)
        d->acked[i] = d->acked[i - 1];
    d->acked[i] = seq;
    d->n_acked++;
    return 0;
}

static void acked_remove(struct odev *d, int64_t seq)
{
    size_t i = 0;
    while (i < d->n_acked && d->acked[i] != seq)
        i++;
    if (i == d->n_acked)
        return;
    memmove(d->acked + i, d->acked + i + 1, (d->n_acked - i - 1) * sizeof(*d->acked));
    if (--d->n_acked == 0) {
        free(d->acked);
        d->acked = NULL;
        d->cap_acked = 0;
    }
}

/* The first pending ack of d above seq (n_acked if none). */
static size_t acked_above(const struct odev *d, int64_t seq)
{
    size_t lo = 0, hi = d->n_acked;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (d->acked[mid] <= seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static bool acked_has(const struct odev *d, int64_t seq)
{
    size_t i = acked_above(d, seq);
    return i > 0 && d->acked[i - 1] == seq;
}

static void log_counts(struct odev *d, int64_t now)
{
    if (d->d_dropped) {
        d->unlogged_dropped += (uint64_t)d->d_dropped;
        if (now - d->drop_log_ms >= LOG_EVERY_MS) {
            log_warn("%s: outbox cap reached: dropped %llu oldest message(s) (%lld in total)",
                     d->key, (unsigned long long)d->unlogged_dropped,
                     (long long)(d->dropped + d->d_dropped));
            d->unlogged_dropped = 0;
            d->drop_log_ms = now;
        }
    }
    if (d->d_expired) {
        d->unlogged_expired += (uint64_t)d->d_expired;
        if (now - d->exp_log_ms >= LOG_EVERY_MS) {
            log_warn("%s: outbox TTL: expired %llu undelivered message(s) (%lld in total)", d->key,
                     (unsigned long long)d->unlogged_expired,
                     (long long)(d->expired + d->d_expired));
            d->unlogged_expired = 0;
            d->exp_log_ms = now;
        }
    }
}

/* Entering and leaving the full state: one line each. Loop, from complete(). */
static void log_full(struct outbox *ob, struct batch *b)
{
    if (b->went_full)
        log_warn("%s: disk full (%lld bytes free): new messages are refused (store full); "
                 "queued messages are still delivered",
                 ob->path, (long long)(b->avail > 0 ? b->avail : 0));
    if (b->released)
        log_notice("%s: released the %lld-byte reserve (%s) so that deliveries can be recorded",
                   ob->path, (long long)ob->res_size, ob->res_path);
    if (b->came_back) {
        log_notice("%s: disk space returned (%lld bytes free); accepting new messages again "
                   "(%llu refused while full)",
                   ob->path, (long long)b->avail, (unsigned long long)ob->full_refused);
        ob->full_refused = 0;
    }
    ob->full = ob->rt_full;
}

static void complete(struct outbox *ob, struct batch *b)
{
    int64_t now = uv_now(ob->loop);
    bool ok = b->append_status == 0;
    bool more = !batch_empty(ob, ob->cur); /* not counting acks put back below */
    /* The batch's messages are all still in the table unless it dropped or expired some. */
    bool wt = ok && b->d_dropped == 0 && b->d_expired == 0;
    size_t kept = 0; /* acks put back into cur */

    ob->inflight = false;
    for (size_t i = 0; i < b->n_touched; i++) {
        struct odev *d = b->touched[i];
        log_counts(d, now);
        d->count += d->d_count;
        d->bytes += d->d_bytes;
        d->dropped += d->d_dropped;
        d->expired += d->d_expired;
        if (d->inserted)
            d->in_db = true;
        d->d_count = d->d_bytes = d->d_dropped = d->d_expired = 0;
        d->touched = d->inserted = false;
    }
    if (ok && b->n_ap)
        ob->committed_seq = b->next_seq - 1;
    ob->count += b->d_count;
    ob->bytes += b->d_bytes;
    ob->dropped += b->d_dropped;
    ob->expired += b->d_expired;
    b->d_count = b->d_bytes = b->d_dropped = b->d_expired = 0;
    if (b->expire_more && !ob->closing)
        ob->expire_due = true;

    if (!b->damaged && b->append_status < 0 && b->n_ap && b->append_status != ALIGW_ESTOREFULL)
        note_error(ob, b->append_status, "committing new messages", b->errmsg);
    if (!b->damaged && b->ack_status < 0 && (b->n_acks || b->n_dead))
        note_error(ob, b->ack_status, "deleting delivered messages", b->errmsg);
    if (b->went_full || b->came_back || b->released)
        log_full(ob, b);
    if (!ok && b->n_ap && b->append_status == ALIGW_ESTOREFULL && ob->rt_full) {
        ob->full_refused += b->n_ap; /* reported when space returns */
    } else if (!ok && b->n_ap) {
        ob->fail_unlogged += b->n_ap;
        if (now - ob->fail_log_ms >= LOG_EVERY_MS || ob->fail_log_ms == 0) {
            log_errno(LOG_ERR, b->append_status,
                      "%s: outbox commit failed, %llu message(s) refused", ob->path,
                      (unsigned long long)ob->fail_unlogged);
            ob->fail_unlogged = 0;
            ob->fail_log_ms = now;
        }
    }
    if (b->ack_status < 0 && (b->n_acks || b->n_dead) && !ob->damaged) {
        if (now - ob->ack_log_ms >= LOG_EVERY_MS || ob->ack_log_ms == 0) {
            log_errno(LOG_WARNING, b->ack_status,
                      "%s: could not delete %zu delivered message(s) yet, retrying every %d ms",
                      ob->path, b->n_acks, RETRY_MS);
            ob->ack_log_ms = now;
        }
        for (kept = 0; kept < b->n_acks && !ob->closing; kept++)
            if (push_ack(ob->cur, b->acks[kept]) < 0)
                break;
        for (size_t i = 0; i < b->n_dead && !ob->closing; i++)
            if (push_dead(ob->cur, &b->dead[i]) < 0)
                break;
        if (!ob->closing)
            uv_timer_start(&ob->retry_timer, retry_cb, RETRY_MS, 0);
    } else if (ob->full && !ob->closing && !uv_is_active((uv_handle_t *)&ob->retry_timer)) {
        uv_timer_start(&ob->retry_timer, retry_cb, RETRY_MS, 0); /* look for room again */
    }
    bool settled = b->ack_status == 0 && b->n_acks > 0;
    /* Acks that are no longer in a batch (committed, or given up: damaged, closing, out of
     * memory) no longer hold their rows back from outbox_peek; those put back into cur do. */
    for (size_t i = kept; i < b->n_acks; i++)
        if (b->acks[i].dev)
            acked_remove(b->acks[i].dev, b->acks[i].seq);
    b->n_acks = 0;
    b->n_dead = 0;
    b->try_restore = false;
    b->expire_before_ms = 0;
    if (settled && ob->settled)
        ob->settled(ob->settled_arg, b->ack_upto);

    /* Producers first, then the forwarder. Callbacks may append (into cur) but never free ob.
     * The committed messages are chained per device so that the forwarder's peeks from the
     * ready callbacks can be served from memory (see outbox_peek); freed after those. */
    for (size_t i = 0; i < b->n_ap; i++) {
        struct pend *p = b->ap[i];
        struct odev *d = p->dev;
        size_t size = p->tlen + p->len;
        d->pending_bytes -= (int64_t)size;
        ob->pending_bytes -= (int64_t)size;
        if (ok) {
            d->accepted++;
            ob->accepted++;
            p->dnext = NULL;
            if (!d->wt_head) {
                d->wt_head = p;
                d->wt_prev = d->max_known ? d->max_seq : -1;
            } else {
                d->wt_tail->dnext = p;
            }
            d->wt_tail = p;
            d->max_seq = p->seq;
            d->max_known = true;
        }
        if (p->cb)
            p->cb(p->arg, b->append_status, ok ? p->seq : 0);
    }
    ob->wt_on = wt;
    for (size_t i = 0; i < b->n_touched; i++) {
        struct odev *d = b->touched[i];
        bool fire = ok && d->got_append;
        d->got_append = false;
        if (fire && ob->ready)
            ob->ready(ob->ready_arg, d->key);
    }
    ob->wt_on = false;
    for (size_t i = 0; i < b->n_ap; i++) {
        b->ap[i]->dev->wt_head = b->ap[i]->dev->wt_tail = NULL;
        free(b->ap[i]);
        b->ap[i] = NULL;
    }
    b->n_ap = 0;
    b->n_touched = 0;
    if (more || ob->expire_due || ob->closing || ob->cur->n_ap)
        schedule(ob);
}

static void after_work_cb(uv_work_t *w, int status)
{
    struct outbox *ob = w->data;
    complete(ob, ob->fly);
}

static void dispatch(struct outbox *ob)
{
    struct batch *b;

    if (ob->inflight)
        return; /* complete() schedules the next one */
    if (batch_empty(ob, ob->cur)) {
        maybe_finish(ob);
        return;
    }
    if (dev_index(ob) < 0) {
        schedule(ob); /* out of memory: try again next turn */
        return;
    }
    b = ob->cur;
    ob->cur = ob->fly;
    ob->fly = b;
    uv_timer_stop(&ob->ack_timer); /* every pending ack is in this batch */
    b->next_seq = ob->next_seq;
    b->ack_upto = ob->ack_ticket;
    if (ob->expire_due) {
        b->expire_before_ms = wall_ms() - ob->o.ttl_s * 1000;
        ob->expire_due = false;
    }
    b->try_restore = ob->restore_due;
    b->damaged = ob->damaged;
    for (size_t i = 0; i < b->n_ap; i++)
        b->ap[i]->dev->cap = b->ap[i]->dev->cap_next;
    ob->restore_due = false;
    ob->inflight = true;
    if (ob->o.durability == DURABILITY_FULL) {
        ob->work.data = ob;
        if (uv_queue_work(ob->loop, &ob->work, work_cb, after_work_cb) == 0)
            return;
    }
    run_batch(ob, b);
    complete(ob, b);
}

static void on_endturn(void *data)
{
    dispatch(data);
}

/* Commits at the end of this loop turn. */
static void schedule(struct outbox *ob)
{
    endturn_arm(&ob->endturn);
}

static void ttl_cb(uv_timer_t *t)
{
    struct outbox *ob = t->data;
    if (ob->closing)
        return;
    ob->expire_due = true;
    schedule(ob);
}

static void ack_cb(uv_timer_t *t)
{
    struct outbox *ob = t->data;
    if (!ob->closing)
        schedule(ob);
}

static void retry_cb(uv_timer_t *t)
{
    struct outbox *ob = t->data;
    if (ob->closing)
        return;
    if (ob->full)
        ob->restore_due = true;
    schedule(ob);
}

/* Open and close. */

/*
 * Sizes the reserve (min(4 MiB, 1/8 of the free space, counting what the reserve file already
 * holds), at least a few pages) and the WAL budget (half of it), and allocates the reserve. With
 * no room for it the store opens full. A reserve file that cannot be opened is logged and done
 * without.
 */
static int reserve_open(struct outbox *ob)
{
    size_t n = strlen(ob->path);
    struct stat st;
    sqlite3_stmt *q;
    int64_t avail, have = 0, size;
    int err;

    if (!(ob->res_path = malloc(n + sizeof(".reserve"))) ||
        !(ob->wal_path = malloc(n + sizeof("-wal"))))
        return -ENOMEM;
    snprintf(ob->res_path, n + sizeof(".reserve"), "%s.reserve", ob->path);
    snprintf(ob->wal_path, n + sizeof("-wal"), "%s-wal", ob->path);

    if ((err = db_prepare(ob->wdb, "PRAGMA page_size", &q)) < 0)
        return err;
    ob->page_size = sqlite3_step(q) == SQLITE_ROW ? sqlite3_column_int64(q, 0) : 4096;
    sqlite3_finalize(q);
    if (ob->page_size < 512)
        ob->page_size = 4096;

    ob->res_fd = open(ob->res_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (ob->res_fd < 0)
        log_errno(LOG_WARNING, -errno,
                  "%s: cannot open the reserve file; on a full disk deliveries may stall",
                  ob->res_path);
    else if (fstat(ob->res_fd, &st) == 0)
        have = (int64_t)st.st_blocks * 512;
    avail = fs_avail(ob->path);
    size = ((avail < 0 ? (int64_t)RESERVE_MAX * RESERVE_DIV : avail) + have) / RESERVE_DIV;
    if (size > RESERVE_MAX)
        size = RESERVE_MAX;
    size -= size % ob->page_size;
    if (size < RESERVE_MIN_PAGES * ob->page_size)
        size = RESERVE_MIN_PAGES * ob->page_size;
    ob->res_size = size;
    ob->wal_budget = size / 2;
    /* SQLite's 1000 frames, fewer on a small filesystem (the WAL at most 1/16 of it). */
    ob->ckpt_frames = ((avail < 0 ? 0 : avail) + have) / 16 / (ob->page_size + 24);
    if (avail < 0 || ob->ckpt_frames > 1000)
        ob->ckpt_frames = 1000;
    if (ob->ckpt_frames < 2)
        ob->ckpt_frames = 2;

    /* The WAL file keeps what one checkpoint interval needs and gives the rest back. Deleted
     * messages are zeroed only where that costs no extra write: Debian builds SQLite with
     * secure_delete on, which writes every freed page to the WAL and makes the deletes of a
     * full disk too big to fit. */
    char sql[96];
    snprintf(sql, sizeof(sql), "PRAGMA journal_size_limit=%lld; PRAGMA secure_delete=FAST",
             (long long)(ob->ckpt_frames * (ob->page_size + 24) + 32));
    if ((err = db_exec(ob->wdb, sql)) < 0)
        return err;
    sqlite3_wal_hook(ob->wdb, wal_hook, ob);

    if (ob->res_fd < 0)
        return 0;
    if (have > size && ftruncate(ob->res_fd, size) != 0)
        log_errno(LOG_WARNING, -errno, "%s: cannot shrink the reserve file", ob->res_path);
    if (posix_fallocate(ob->res_fd, 0, size) == 0) {
        ob->res_held = true;
    } else {
        if (ftruncate(ob->res_fd, 0) != 0) {
            /* keep whatever it holds; the next attempt starts from there */
        }
        ob->rt_full = ob->full = true;
        log_warn("%s: disk full (%lld bytes free, no room for the %lld-byte reserve): new "
                 "messages are refused (store full) until there is room",
                 ob->path, (long long)(avail > 0 ? avail : 0), (long long)size);
    }
    return 0;
}

static void free_ob(struct outbox *ob)
{
    for (int i = 0; i < ST_W_N; i++)
        sqlite3_finalize(ob->w[i]);
    for (int i = 0; i < RT_N; i++)
        sqlite3_finalize(ob->r[i]);
    if (ob->rdb != ob->wdb)
        db_close(ob->rdb);
    db_close(ob->wdb);
    for (size_t i = 0; i < ob->n_buckets; i++) {
        struct odev *d = ob->buckets[i], *next;
        for (; d; d = next) {
            next = d->hnext;
            free(d->acked);
            free(d->key);
            free(d);
        }
    }
    free(ob->buckets);
    free(ob->by_id);
    for (int i = 0; i < 2; i++) {
        for (size_t j = 0; j < ob->b[i].n_ap; j++)
            free(ob->b[i].ap[j]);
        free(ob->b[i].ap);
        free(ob->b[i].acks);
        free(ob->b[i].dead);
        free(ob->b[i].touched);
    }
    if (ob->res_fd >= 0)
        close(ob->res_fd);
    free(ob->res_path);
    free(ob->wal_path);
    free(ob->path);
    free(ob);
}

static void handle_closed(uv_handle_t *h)
{
    struct outbox *ob = h->data;
    if (--ob->open_handles > 0)
        return;
    void (*cb)(void *) = ob->close_cb;
    void *arg = ob->close_arg;
    free_ob(ob);
    if (cb)
        cb(arg);
}

static void maybe_finish(struct outbox *ob)
{
    if (!ob->closing || ob->inflight || ob->open_handles != 5)
        return;
    endturn_close(&ob->endturn, handle_closed);
    uv_close((uv_handle_t *)&ob->ttl_timer, handle_closed);
    uv_close((uv_handle_t *)&ob->retry_timer, handle_closed);
    uv_close((uv_handle_t *)&ob->ack_timer, handle_closed);
}

static int load(struct outbox *ob)
{
    sqlite3_stmt *st;
    int rc, err;

    if ((err = db_prepare(ob->rdb, "SELECT id, key, count, bytes, dropped, expired FROM device",
                          &st)) < 0)
        return err;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct odev *d =
            dev_add(ob, sqlite3_column_int64(st, 0), (const char *)sqlite3_column_text(st, 1));
        if (!d) {
            sqlite3_finalize(st);
            return -ENOMEM;
        }
        d->in_db = true;
        d->max_known = false;
        d->count = sqlite3_column_int64(st, 2);
        d->bytes = sqlite3_column_int64(st, 3);
        d->dropped = sqlite3_column_int64(st, 4);
        d->expired = sqlite3_column_int64(st, 5);
        ob->count += d->count;
        ob->bytes += d->bytes;
        ob->dropped += d->dropped;
        ob->expired += d->expired;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE)
        return db_err(ob->rdb, rc);
    if ((err = dev_index(ob)) < 0)
        return err;

    if ((err = db_prepare(ob->rdb,
                          "SELECT max((SELECT value FROM meta WHERE key = 'next_seq'), "
                          "coalesce((SELECT max(seq) FROM message), 0) + 1)",
                          &st)) < 0)
        return err;
    rc = sqlite3_step(st);
    ob->next_seq = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 1;
    ob->committed_seq = ob->next_seq - 1;
    ob->seq_reserved = ob->next_seq; /* the first batch of appends writes a reservation */
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW)
        return db_err(ob->rdb, rc);

    /* The identity is made once, when the store is new (or older than identities). */
    if ((err = db_exec(ob->wdb, "INSERT OR IGNORE INTO meta(key, value) VALUES ('identity', "
                                "(random() & 9223372036854775807) | 1)")) < 0)
        log_errno(LOG_WARNING, err, "%s: cannot record the store's identity", ob->path);
    if ((err = db_prepare(ob->rdb, "SELECT value FROM meta WHERE key = 'identity'", &st)) < 0)
        return err;
    if (sqlite3_step(st) == SQLITE_ROW)
        ob->identity = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return 0;
}

int outbox_open(uv_loop_t *loop, const struct outbox_opts *o, outbox_ready_cb ready, void *arg,
                struct outbox **out)
{
    struct outbox *ob;
    int err;
    unsigned flags = o->durability == DURABILITY_FULL ? DB_SYNC_FULL : 0;

    *out = NULL;
    if (!o->path || o->max_bytes < 0 || o->max_device_bytes < 0 || o->ttl_s < 0)
        return -EINVAL;
    if (!(ob = calloc(1, sizeof(*ob))) || !(ob->path = strdup(o->path))) {
        free(ob);
        return -ENOMEM;
    }
    ob->loop = loop;
    ob->o = *o;
    ob->o.path = ob->path;
    ob->ready = ready;
    ob->ready_arg = arg;
    ob->cur = &ob->b[0];
    ob->fly = &ob->b[1];
    ob->next_dev_id = 1;
    ob->res_fd = -1;
    ob->db_file_size = -1;
    if ((err = dev_rehash(ob)) < 0)
        goto fail;
    if ((err = db_open(o->path, &db_schema_outbox, flags, &ob->wdb)) < 0)
        goto fail;
    if (o->durability == DURABILITY_FULL) {
        if ((err = db_open(o->path, &db_schema_outbox, flags | DB_NO_MIGRATE, &ob->rdb)) < 0)
            goto fail;
    } else {
        /* Everything runs on the loop: one connection holding the file's lock for good (see
         * the file comment), so a commit takes no fcntl lock and rereads nothing. */
        ob->rdb = ob->wdb;
        if ((err = sqlite3_exec(ob->wdb, "PRAGMA locking_mode=EXCLUSIVE", NULL, NULL, NULL)) !=
            SQLITE_OK) {
            err = db_err(ob->wdb, err);
            goto fail;
        }
    }
    for (int i = 0; i < ST_W_N; i++)
        if ((err = db_prepare(ob->wdb, wsql[i], &ob->w[i])) < 0)
            goto fail;
    for (int i = 0; i < RT_N; i++)
        if ((err = db_prepare(ob->rdb, rsql[i], &ob->r[i])) < 0)
            goto fail;
    if ((err = load(ob)) < 0) {
        log_errno(LOG_ERR, err, "%s: cannot load the outbox", o->path);
        goto fail;
    }
    if ((err = reserve_open(ob)) < 0)
        goto fail;

    endturn_init(&ob->endturn, loop, on_endturn, ob);
    uv_timer_init(loop, &ob->ttl_timer);
    uv_timer_init(loop, &ob->retry_timer);
    uv_timer_init(loop, &ob->ack_timer);
    ob->ttl_timer.data = ob->retry_timer.data = ob->ack_timer.data = ob;
    ob->open_handles = 5;
    if (o->ttl_s > 0) {
        uint64_t every = (uint64_t)o->ttl_s * 250;
        every = every < 200 ? 200 : every > 60000 ? 60000 : every;
        uv_timer_start(&ob->ttl_timer, ttl_cb, 0, every);
    }
    if (ob->full)
        uv_timer_start(&ob->retry_timer, retry_cb, RETRY_MS, 0);
    log_info("%s: outbox open: %lld message(s), %lld bytes, %zu device(s)", o->path,
             (long long)ob->count, (long long)ob->bytes, ob->n_devs);
    *out = ob;
    return 0;
fail:
    free_ob(ob);
    return err;
}

void outbox_close(struct outbox *ob, void (*cb)(void *arg), void *arg)
{
    ob->closing = true;
    ob->close_cb = cb;
    ob->close_arg = arg;
    ob->expire_due = false;
    uv_timer_stop(&ob->ttl_timer);
    uv_timer_stop(&ob->retry_timer);
    uv_timer_stop(&ob->ack_timer);
    schedule(ob);
}

int outbox_append(struct outbox *ob, const char *device_key, const char *topic, const void *payload,
                  size_t len, int qos, outbox_append_cb cb, void *arg)
{
    struct batch *b = ob->cur;
    struct odev *d;
    struct pend *p;
    size_t tlen, size;

    if (ob->closing)
        return -ESHUTDOWN;
    if (ob->damaged)
        return ALIGW_ECORRUPT;
    if (!device_key || !*device_key || !topic || !*topic || (qos != 0 && qos != 1) ||
        (len && !payload))
        return -EINVAL;
    tlen = strlen(topic);
    size = tlen + len;
    d = dev_find(ob, device_key);
    int64_t dcap = d && d->cap_next > 0 ? d->cap_next : ob->o.max_device_bytes;
    if (len > INT32_MAX || (ob->o.max_bytes > 0 && (int64_t)size > ob->o.max_bytes) ||
        (dcap > 0 && (int64_t)size > dcap))
        return -EMSGSIZE;
    if (ob->full) {
        ob->full_refused++;
        return ALIGW_ESTOREFULL;
    }
    if (ob->o.policy == STORE_REJECT_NEW) {
        if (ob->o.max_bytes > 0 && ob->bytes + ob->pending_bytes + (int64_t)size > ob->o.max_bytes)
            return ALIGW_ESTOREFULL;
        if (d && dcap > 0 && d->bytes + d->pending_bytes + (int64_t)size > dcap)
            return ALIGW_ESTOREFULL;
    }
    if (!d && !(d = dev_add(ob, ob->next_dev_id, device_key)))
        return -ENOMEM;
    if (b->n_ap == b->cap_ap) {
        size_t n = b->cap_ap ? b->cap_ap * 2 : 256;
        struct pend **v = realloc(b->ap, n * sizeof(*v));
        if (!v)
            return -ENOMEM;
        b->ap = v;
        b->cap_ap = n;
    }
    if (!(p = malloc(sizeof(*p) + tlen + 1 + len)))
        return -ENOMEM;
    p->dev = d;
    p->seq = ob->next_seq++;
    p->created_ms = wall_ms();
    p->qos = qos;
    p->tlen = tlen;
    p->len = len;
    p->cb = cb;
    p->arg = arg;
    memcpy(p->data, topic, tlen + 1);
    if (len)
        memcpy(p->data + tlen + 1, payload, len);
    b->ap[b->n_ap++] = p;
    d->pending_bytes += (int64_t)size;
    ob->pending_bytes += (int64_t)size;
    ob->append_ms = uv_now(ob->loop);
    schedule(ob);
    return 0;
}

int64_t outbox_ack(struct outbox *ob, const char *device_key, int64_t seq)
{
    struct ackent a = {.dev = dev_find(ob, device_key), .seq = seq};
    int err;
    if (ob->closing)
        return -ESHUTDOWN;
    if (ob->damaged)
        return ALIGW_ECORRUPT;
    if ((err = push_ack(ob->cur, a)) < 0)
        return err;
    if (a.dev && (err = acked_add(a.dev, seq)) < 0) {
        ob->cur->n_acks--;
        return err;
    }
    /* While messages are coming in, the delete rides along with the next commit (this turn's,
     * if anything else is pending), or the ack timer's: at low rates one transaction per message
     * instead of two. With no append for ACK_DELAY_MS (draining a backlog) nothing would come to
     * ride along with: commit at the end of this turn. */
    if (uv_now(ob->loop) - ob->append_ms >= ACK_DELAY_MS)
        schedule(ob);
    else if (!uv_is_active((uv_handle_t *)&ob->ack_timer))
        uv_timer_start(&ob->ack_timer, ack_cb, ACK_DELAY_MS, 0);
    return ++ob->ack_ticket;
}

void outbox_flush(struct outbox *ob)
{
    if (!ob->closing && !batch_empty(ob, ob->cur))
        schedule(ob);
}

void outbox_on_settled(struct outbox *ob, outbox_settled_cb cb, void *arg)
{
    ob->settled = cb;
    ob->settled_arg = arg;
}

void outbox_msg_free(struct outbox_msg *m)
{
    if (!m)
        return;
    if (!m->borrowed) {
        free(m->topic);
        free(m->payload);
    }
    m->topic = NULL;
    m->payload = NULL;
}

/*
 * Write-through: from a ready callback, when every committed message of d after after_seq is in
 * the batch just committed (none of its older ones is newer than after_seq), they are handed out
 * from the batch's memory instead of being read back. Returns false to read the table instead.
 * The batch's messages are pending acks only if someone acked a seq between its commit and the
 * ready callback (the forwarder's acks come from PUBACKs, a later turn): the table then.
 */
static bool peek_batch(struct outbox *ob, struct odev *d, int64_t after_seq, struct outbox_msg *out,
                       size_t max, size_t *n)
{
    if (!ob->wt_on || !d->wt_head)
        return false;
    if (d->n_acked && d->acked[d->n_acked - 1] >= d->wt_head->seq)
        return false;
    if (d->wt_prev < 0) {
        sqlite3_stmt *st = ob->r[RT_MAX_BELOW];
        int rc;
        sqlite3_bind_int64(st, 1, d->id);
        sqlite3_bind_int64(st, 2, d->wt_head->seq);
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
            d->wt_prev = sqlite3_column_int64(st, 0); /* NULL (none) reads as 0 */
        sqlite3_reset(st);
        if (rc != SQLITE_ROW)
            return false;
    }
    if (after_seq < d->wt_prev)
        return false;
    for (struct pend *p = d->wt_head; p && *n < max; p = p->dnext) {
        if (p->seq <= after_seq)
            continue;
        struct outbox_msg *m = &out[(*n)++];
        m->seq = p->seq;
        m->topic = p->data;
        m->payload = p->data + p->tlen + 1;
        m->len = p->len;
        m->qos = p->qos;
        m->created_ms = p->created_ms;
        m->borrowed = true;
    }
    return true;
}

int outbox_peek(struct outbox *ob, const char *device_key, int64_t after_seq,
                struct outbox_msg *out, size_t max, size_t *n)
{
    struct odev *d = dev_find(ob, device_key);
    sqlite3_stmt *st = ob->r[RT_PEEK];
    int rc, err = 0;

    *n = 0;
    if (ob->damaged)
        return ALIGW_ECORRUPT;
    if (!d || !d->in_db || max == 0)
        return 0;
    /* Everything committed was handed on already (the forwarder asks again after every settled
     * ack): no query. */
    if (d->max_known && after_seq >= d->max_seq)
        return 0;
    if (peek_batch(ob, d, after_seq, out, max, n))
        return 0;
    /* Acked rows whose delete is not committed yet are skipped: reading that many more rows
     * still finds max others when there are. */
    size_t skip = d->n_acked ? d->n_acked - acked_above(d, after_seq) : 0;
    size_t limit = max + skip;
    sqlite3_bind_int64(st, 1, d->id);
    sqlite3_bind_int64(st, 2, after_seq);
    sqlite3_bind_int64(st, 3, limit > INT32_MAX ? INT32_MAX : (int64_t)limit);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct outbox_msg *m = &out[*n];
        int64_t seq = sqlite3_column_int64(st, 0);
        if (skip && acked_has(d, seq))
            continue;
        const void *pl = sqlite3_column_blob(st, 2);
        m->borrowed = false;
        size_t len = (size_t)sqlite3_column_bytes(st, 2);
        m->seq = seq;
        m->topic = strdup((const char *)sqlite3_column_text(st, 1));
        m->payload = malloc(len ? len : 1);
        if (!m->topic || !m->payload) {
            outbox_msg_free(m);
            err = -ENOMEM;
            break;
        }
        if (len)
            memcpy(m->payload, pl, len);
        m->len = len;
        m->qos = sqlite3_column_int(st, 3);
        m->created_ms = sqlite3_column_int64(st, 4);
        if (++*n == max) {
            rc = SQLITE_DONE; /* the rest were over-read for skipped rows */
            break;
        }
    }
    if (!err && rc != SQLITE_DONE)
        err = db_err(ob->rdb, rc);
    if (err < 0 && err != -ENOMEM) {
        char what[160];
        snprintf(what, sizeof(what), "reading the messages of %s", device_key);
        note_error(ob, err, what, sqlite3_errmsg(ob->rdb));
    }
    sqlite3_reset(st);
    if (err < 0) {
        for (size_t i = 0; i < *n; i++)
            outbox_msg_free(&out[i]);
        *n = 0;
    }
    return err;
}

static int64_t oldest_ms(struct outbox *ob, struct odev *d)
{
    sqlite3_stmt *st = ob->r[d ? RT_OLDEST_DEV : RT_OLDEST_ALL];
    int64_t v = 0;
    if (d)
        sqlite3_bind_int64(st, 1, d->id);
    if (sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return v;
}

static int device_stats(struct outbox *ob, const char *device_key, struct outbox_stats *st,
                        bool oldest)
{
    struct odev *d = dev_find(ob, device_key);
    memset(st, 0, sizeof(*st));
    if (!d)
        return 0;
    st->count = (uint64_t)d->count;
    st->bytes = (uint64_t)d->bytes;
    st->dropped = (uint64_t)d->dropped;
    st->expired = (uint64_t)d->expired;
    st->accepted = d->accepted;
    st->full = ob->full;
    if (oldest && d->count > 0 && d->in_db)
        st->oldest_ms = oldest_ms(ob, d);
    return 0;
}

int outbox_device_stats(struct outbox *ob, const char *device_key, struct outbox_stats *st)
{
    return device_stats(ob, device_key, st, true);
}

int outbox_device_counts(struct outbox *ob, const char *device_key, struct outbox_stats *st)
{
    return device_stats(ob, device_key, st, false);
}

void outbox_total_stats(struct outbox *ob, struct outbox_stats *st)
{
    memset(st, 0, sizeof(*st));
    st->count = (uint64_t)ob->count;
    st->bytes = (uint64_t)ob->bytes;
    st->dropped = (uint64_t)ob->dropped;
    st->expired = (uint64_t)ob->expired;
    st->accepted = ob->accepted;
    st->full = ob->full;
    if (ob->count > 0)
        st->oldest_ms = oldest_ms(ob, NULL);
}

void outbox_foreach_pending(struct outbox *ob, void (*fn)(void *arg, const char *device_key),
                            void *arg)
{
    for (size_t i = 0; i < ob->n_buckets; i++)
        for (struct odev *d = ob->buckets[i]; d; d = d->hnext)
            if (d->count > 0)
                fn(arg, d->key);
}

void outbox_set_damaged_cb(struct outbox *ob, outbox_damaged_cb cb, void *arg)
{
    ob->damaged_cb = cb;
    ob->damaged_arg = arg;
}

void outbox_health(struct outbox *ob, struct outbox_health *h)
{
    h->errors = ob->errors;
    h->damaged = ob->damaged;
    h->last_error = ob->last_error;
}

int64_t outbox_identity(struct outbox *ob)
{
    return ob->identity;
}

int64_t outbox_committed_seq(struct outbox *ob)
{
    return ob->committed_seq;
}

int outbox_dead_letter(struct outbox *ob, int64_t seq, const char *reason)
{
    struct deadl x = {.seq = seq, .at_ms = wall_ms()};
    int err;

    if (ob->closing)
        return -ESHUTDOWN;
    if (ob->damaged)
        return ALIGW_ECORRUPT;
    snprintf(x.reason, sizeof(x.reason), "%s", reason ? reason : "refused");
    if ((err = push_dead(ob->cur, &x)) < 0)
        return err;
    schedule(ob);
    return 0;
}

int outbox_dead_letters(struct outbox *ob, const char *device_key, struct outbox_dead *out)
{
    struct odev *d = dev_find(ob, device_key);
    sqlite3_stmt *st;
    int rc;

    memset(out, 0, sizeof(*out));
    if (!d || !d->in_db || ob->damaged)
        return 0;
    st = ob->r[RT_DEAD_COUNT];
    sqlite3_bind_int64(st, 1, d->id);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        out->count = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    if (rc != SQLITE_ROW)
        return db_err(ob->rdb, rc);
    if (out->count == 0)
        return 0;
    st = ob->r[RT_DEAD_LAST];
    sqlite3_bind_int64(st, 1, d->id);
    if ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        out->last_seq = sqlite3_column_int64(st, 0);
        snprintf(out->last_topic, sizeof(out->last_topic), "%s",
                 (const char *)sqlite3_column_text(st, 1));
        snprintf(out->last_reason, sizeof(out->last_reason), "%s",
                 (const char *)sqlite3_column_text(st, 2));
        out->last_ms = sqlite3_column_int64(st, 3);
    }
    sqlite3_reset(st);
    return 0;
}

int outbox_set_device_cap(struct outbox *ob, const char *device_key, int64_t max_bytes)
{
    struct odev *d = dev_find(ob, device_key);
    if (max_bytes < 0)
        return -EINVAL;
    if (!d && max_bytes == 0)
        return 0;
    if (!d && !(d = dev_add(ob, ob->next_dev_id, device_key)))
        return -ENOMEM;
    d->cap_next = max_bytes;
    return 0;
}
