/*
 * test_outbox: the store-and-forward outbox (daemon/outbox.c) on real SQLite files in a temp
 * dir, driven by a real libuv loop, in both durability modes. The full-disk case mounts a 1 MB
 * tmpfs when running as root (and checks only SQLITE_FULL's translation otherwise).
 */
#include "check.h"
#include "db.h"
#include "errors.h"
#include "outbox.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[] = "/tmp/aligw-test-outbox-XXXXXX";
static uv_loop_t loop;

/* What the callbacks saw. */
static int64_t cb_seq[4096];
static int cb_status[4096];
static int n_cb;
static char ready_keys[64][32];
static int n_ready, cb_before_ready;

/* When cb_ack_ob is set, the next append callback acks cb_ack_seq of cb_ack_key (once). */
static struct outbox *cb_ack_ob;
static const char *cb_ack_key;
static int64_t cb_ack_seq, cb_ack_ticket;

static void on_append(void *arg, int status, int64_t seq)
{
    if (cb_ack_ob) {
        cb_ack_ticket = outbox_ack(cb_ack_ob, cb_ack_key, cb_ack_seq);
        cb_ack_ob = NULL;
    }
    if (n_cb < 4096) {
        cb_seq[n_cb] = seq;
        cb_status[n_cb] = status;
    }
    n_cb++;
    (void)arg;
}

/* Write-through: when wt_ob is set, the ready callback peeks as the forwarder does, after
 * wt_after[0] and (when >= 0) wt_after[1], and keeps copies (borrowed messages die with it). */
static struct outbox *wt_ob;
static int64_t wt_after[2];
static struct {
    size_t n;
    int64_t seq[16];
    char payload[16][16];
    bool borrowed[16];
} wt_got[2];

static void wt_peek(const char *key)
{
    struct outbox_msg m[16];
    for (int k = 0; k < 2; k++) {
        size_t n = 0;
        wt_got[k].n = 0;
        if (wt_after[k] < 0)
            continue;
        CHECK_INT(outbox_peek(wt_ob, key, wt_after[k], m, 16, &n), 0);
        wt_got[k].n = n;
        for (size_t i = 0; i < n; i++) {
            wt_got[k].seq[i] = m[i].seq;
            snprintf(wt_got[k].payload[i], sizeof(wt_got[k].payload[i]), "%.*s", (int)m[i].len,
                     (const char *)m[i].payload);
            wt_got[k].borrowed[i] = m[i].borrowed;
            outbox_msg_free(&m[i]);
        }
    }
}

static void on_ready(void *arg, const char *key)
{
    if (wt_ob)
        wt_peek(key);
    if (n_ready < 64)
        snprintf(ready_keys[n_ready], sizeof(ready_keys[0]), "%s", key);
    n_ready++;
    cb_before_ready = n_cb;
}

static int64_t settled_upto;
static void on_settled(void *arg, int64_t ticket)
{
    settled_upto = ticket;
}

static void reset_cbs(void)
{
    n_cb = n_ready = cb_before_ready = 0;
}

static bool done_flag;
static void on_closed(void *arg)
{
    *(bool *)arg = true;
}

/* Runs the loop until *n reaches want or 5 s pass. */
static void run_until(const int *n, int want)
{
    uint64_t start = uv_hrtime();
    while (*n < want && uv_hrtime() - start < 5000000000ULL)
        uv_run(&loop, UV_RUN_ONCE);
}

static void close_ob(struct outbox *ob)
{
    done_flag = false;
    outbox_close(ob, on_closed, &done_flag);
    uint64_t start = uv_hrtime();
    while (!done_flag && uv_hrtime() - start < 5000000000ULL)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK(done_flag);
}

static struct outbox *open_ob(const char *name, enum store_durability dur, int64_t max_bytes,
                              int64_t max_dev, enum store_policy pol, int64_t ttl)
{
    char path[256];
    struct outbox *ob = NULL;
    struct outbox_opts o = {.path = path,
                            .durability = dur,
                            .max_bytes = max_bytes,
                            .max_device_bytes = max_dev,
                            .policy = pol,
                            .ttl_s = ttl};
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    CHECK_INT(outbox_open(&loop, &o, on_ready, NULL, &ob), 0);
    return ob;
}

static int append(struct outbox *ob, const char *dev, const char *payload)
{
    return outbox_append(ob, dev, "/sys/pk/dn/thing/event/property/post", payload, strlen(payload),
                         1, on_append, NULL);
}

static void test_basic(enum store_durability dur)
{
    char name[32];
    struct outbox_msg m[16];
    struct outbox_stats st;
    size_t n;
    struct outbox *ob;

    snprintf(name, sizeof(name), "basic%d.db", (int)dur);
    ob = open_ob(name, dur, 0, 0, STORE_DROP_OLDEST, 0);
    if (!ob)
        return;
    reset_cbs();
    /* Interleaved devices; nothing is visible or called back before the commit. */
    CHECK_INT(append(ob, "pk/a", "a1"), 0);
    CHECK_INT(append(ob, "pk/b", "b1"), 0);
    CHECK_INT(append(ob, "pk/a", "a2"), 0);
    CHECK_INT(append(ob, "pk/a", "a3"), 0);
    CHECK_INT(append(ob, "pk/b", "b2"), 0);
    CHECK_INT(n_cb, 0);
    CHECK_INT(outbox_peek(ob, "pk/a", 0, m, 16, &n), 0);
    CHECK_INT(n, 0);
    CHECK_INT(outbox_append(ob, "pk/a", "t", "x", 1, 2, on_append, NULL), -EINVAL);
    CHECK_INT(outbox_append(ob, "", "t", "x", 1, 1, on_append, NULL), -EINVAL);
    run_until(&n_ready, 2);
    CHECK_INT(n_cb, 5);
    for (int i = 0; i < 5 && i < n_cb; i++) {
        CHECK_INT(cb_status[i], 0);
        if (i)
            CHECK(cb_seq[i] > cb_seq[i - 1]);
    }
    /* Ready after every append callback of the batch, once per device. */
    CHECK_INT(n_ready, 2);
    CHECK_INT(cb_before_ready, 5);
    CHECK((strcmp(ready_keys[0], "pk/a") == 0 && strcmp(ready_keys[1], "pk/b") == 0) ||
          (strcmp(ready_keys[0], "pk/b") == 0 && strcmp(ready_keys[1], "pk/a") == 0));

    CHECK_INT(outbox_peek(ob, "pk/a", 0, m, 16, &n), 0);
    CHECK_INT(n, 3);
    if (n == 3) {
        CHECK_INT(m[0].len, 2);
        CHECK(memcmp(m[0].payload, "a1", 2) == 0);
        CHECK(memcmp(m[1].payload, "a2", 2) == 0);
        CHECK(memcmp(m[2].payload, "a3", 2) == 0);
        CHECK_STR(m[0].topic, "/sys/pk/dn/thing/event/property/post");
        CHECK_INT(m[0].qos, 1);
        CHECK_INT(m[0].seq, cb_seq[0]);
        CHECK(m[0].created_ms > 1600000000000LL);
    }
    int64_t a2 = n == 3 ? m[1].seq : 0, a1 = n == 3 ? m[0].seq : 0;
    for (size_t i = 0; i < n; i++)
        outbox_msg_free(&m[i]);
    /* after_seq and max. */
    CHECK_INT(outbox_peek(ob, "pk/a", a1, m, 1, &n), 0);
    CHECK_INT(n, 1);
    CHECK_INT(n ? m[0].seq : 0, a2);
    for (size_t i = 0; i < n; i++)
        outbox_msg_free(&m[i]);
    CHECK_INT(outbox_peek(ob, "pk/b", 0, m, 16, &n), 0);
    CHECK_INT(n, 2);
    if (n == 2) {
        CHECK(memcmp(m[0].payload, "b1", 2) == 0);
        CHECK(memcmp(m[1].payload, "b2", 2) == 0);
    }
    for (size_t i = 0; i < n; i++)
        outbox_msg_free(&m[i]);
    CHECK_INT(outbox_peek(ob, "pk/none", 0, m, 16, &n), 0);
    CHECK_INT(n, 0);

    size_t msz = strlen("/sys/pk/dn/thing/event/property/post") + 2;
    outbox_device_stats(ob, "pk/a", &st);
    CHECK_INT(st.count, 3);
    CHECK_INT(st.bytes, 3 * msz);
    CHECK(st.oldest_ms > 0);
    outbox_total_stats(ob, &st);
    CHECK_INT(st.count, 5);

    /* Ack a1: gone after the next batch; the others stay. The acks' tickets grow, and the
     * settled callback reports them once the deletes are committed, not before. */
    settled_upto = 0;
    outbox_on_settled(ob, on_settled, NULL);
    int64_t t1 = outbox_ack(ob, "pk/a", a1);
    int64_t t2 = outbox_ack(ob, "pk/a", 999999); /* unknown: ignored */
    CHECK(t1 > 0 && t2 > t1);
    CHECK_INT(settled_upto, 0);
    reset_cbs();
    CHECK_INT(append(ob, "pk/b", "b3"), 0); /* drives one more batch */
    run_until(&n_cb, 1);
    CHECK_INT(settled_upto, t2);
    CHECK_INT(outbox_peek(ob, "pk/a", 0, m, 16, &n), 0);
    CHECK_INT(n, 2);
    CHECK_INT(n ? m[0].seq : 0, a2);
    for (size_t i = 0; i < n; i++)
        outbox_msg_free(&m[i]);
    outbox_device_stats(ob, "pk/a", &st);
    CHECK_INT(st.count, 2);
    CHECK_INT(st.bytes, 2 * msz);
    close_ob(ob);

    /* Reopen: unacked messages still there, in order, counters intact, seqs keep growing. */
    ob = open_ob(name, dur, 0, 0, STORE_DROP_OLDEST, 0);
    if (!ob)
        return;
    outbox_total_stats(ob, &st);
    CHECK_INT(st.count, 5);
    CHECK_INT(outbox_peek(ob, "pk/b", 0, m, 16, &n), 0);
    CHECK_INT(n, 3);
    if (n == 3) {
        CHECK(memcmp(m[2].payload, "b3", 2) == 0);
        CHECK(m[0].seq < m[1].seq && m[1].seq < m[2].seq);
    }
    int64_t last = n == 3 ? m[2].seq : 0;
    for (size_t i = 0; i < n; i++)
        outbox_msg_free(&m[i]);
    /* Acks on close are flushed, not lost. */
    CHECK(outbox_ack(ob, "pk/a", a2) > 0);
    reset_cbs();
    CHECK_INT(append(ob, "pk/b", "b4"), 0);
    close_ob(ob); /* the pending append is committed and called back during close */
    CHECK_INT(n_cb, 1);
    CHECK_INT(cb_status[0], 0);
    CHECK(cb_seq[0] > last);

    ob = open_ob(name, dur, 0, 0, STORE_DROP_OLDEST, 0);
    if (!ob)
        return;
    outbox_device_stats(ob, "pk/a", &st);
    CHECK_INT(st.count, 1);
    outbox_device_stats(ob, "pk/b", &st);
    CHECK_INT(st.count, 4);
    close_ob(ob);
}

static void test_many(enum store_durability dur)
{
    /* Many appends across turns: every one is called back, FIFO per device holds. */
    char name[32];
    struct outbox_msg m[600];
    size_t n;
    snprintf(name, sizeof(name), "many%d.db", (int)dur);
    struct outbox *ob = open_ob(name, dur, 0, 0, STORE_DROP_OLDEST, 0);
    if (!ob)
        return;
    reset_cbs();
    int rounds = 0;
    for (int r = 0; r < 10; r++) {
        for (int i = 0; i < 100; i++) {
            char p[32];
            snprintf(p, sizeof(p), "%d", r * 100 + i);
            append(ob, (i & 1) ? "pk/odd" : "pk/even", p);
        }
        uv_run(&loop, UV_RUN_NOWAIT);
        rounds++;
    }
    run_until(&n_cb, 1000);
    CHECK_INT(n_cb, 1000);
    bool ordered = true;
    for (int i = 1; i < 1000; i++)
        ordered = ordered && cb_seq[i] > cb_seq[i - 1] && cb_status[i] == 0;
    CHECK(ordered);
    CHECK_INT(outbox_peek(ob, "pk/odd", 0, m, 600, &n), 0);
    CHECK_INT(n, 500);
    ordered = true;
    for (size_t i = 0; i < n; i++) {
        char want[32];
        snprintf(want, sizeof(want), "%zu", i * 2 + 1);
        ordered = ordered && m[i].len == strlen(want) && memcmp(m[i].payload, want, m[i].len) == 0;
        outbox_msg_free(&m[i]);
    }
    CHECK(ordered);
    close_ob(ob);
}

static void test_caps(void)
{
    struct outbox_stats st;
    struct outbox_msg m[64];
    size_t n;
    const size_t tl = strlen("/sys/pk/dn/thing/event/property/post");
    const int64_t msz = (int64_t)tl + 10;

    /* drop-oldest, global cap of 10 messages. */
    struct outbox *ob = open_ob("drop.db", DURABILITY_NORMAL, 10 * msz, 0, STORE_DROP_OLDEST, 0);
    if (!ob)
        return;
    reset_cbs();
    for (int i = 0; i < 15; i++) {
        char p[16];
        snprintf(p, sizeof(p), "msg-%06d", i);
        CHECK_INT(append(ob, (i % 3) ? "pk/x" : "pk/y", p), 0);
    }
    run_until(&n_cb, 15);
    for (int i = 0; i < n_cb; i++)
        CHECK_INT(cb_status[i], 0);
    outbox_total_stats(ob, &st);
    CHECK_INT(st.count, 10);
    CHECK_INT(st.bytes, 10 * msz);
    CHECK_INT(st.dropped, 5);
    /* The 5 oldest (0..4) went: 0 and 3 from y, 1, 2, 4 from x. */
    struct outbox_stats sx, sy;
    outbox_device_stats(ob, "pk/x", &sx);
    outbox_device_stats(ob, "pk/y", &sy);
    CHECK_INT(sx.dropped, 3);
    CHECK_INT(sy.dropped, 2);
    CHECK_INT(sx.count + sy.count, 10);
    CHECK_INT(outbox_peek(ob, "pk/x", 0, m, 64, &n), 0);
    CHECK(n > 0 && memcmp(m[0].payload, "msg-000005", 10) == 0);
    for (size_t i = 0; i < n; i++)
        outbox_msg_free(&m[i]);
    /* A message bigger than the cap on its own. */
    char big[2000];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = 0;
    CHECK_INT(append(ob, "pk/x", big), -EMSGSIZE);
    close_ob(ob);

    /* Counters survive a reopen. */
    ob = open_ob("drop.db", DURABILITY_NORMAL, 10 * msz, 0, STORE_DROP_OLDEST, 0);
    if (!ob)
        return;
    outbox_device_stats(ob, "pk/x", &sx);
    CHECK_INT(sx.dropped, 3);
    close_ob(ob);

    /* drop-oldest with a per-device cap of 3: only the noisy device loses messages. */
    ob = open_ob("devcap.db", DURABILITY_NORMAL, 0, 3 * msz, STORE_DROP_OLDEST, 0);
    if (!ob)
        return;
    reset_cbs();
    for (int i = 0; i < 8; i++)
        CHECK_INT(append(ob, "pk/noisy", "0123456789"), 0);
    CHECK_INT(append(ob, "pk/quiet", "0123456789"), 0);
    run_until(&n_cb, 9);
    outbox_device_stats(ob, "pk/noisy", &st);
    CHECK_INT(st.count, 3);
    CHECK_INT(st.dropped, 5);
    outbox_device_stats(ob, "pk/quiet", &st);
    CHECK_INT(st.count, 1);
    CHECK_INT(st.dropped, 0);
    close_ob(ob);

    /* reject-new: the append that would pass the cap fails at once and never calls back. */
    ob = open_ob("reject.db", DURABILITY_NORMAL, 4 * msz, 0, STORE_REJECT_NEW, 0);
    if (!ob)
        return;
    reset_cbs();
    for (int i = 0; i < 4; i++)
        CHECK_INT(append(ob, "pk/r", "0123456789"), 0);
    CHECK_INT(append(ob, "pk/r", "0123456789"), ALIGW_ESTOREFULL); /* pending counts too */
    run_until(&n_cb, 4);
    CHECK_INT(append(ob, "pk/other", "0123456789"), ALIGW_ESTOREFULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    CHECK_INT(n_cb, 4);
    outbox_total_stats(ob, &st);
    CHECK_INT(st.count, 4);
    CHECK_INT(st.dropped, 0);
    /* Deliver one: room for one more. */
    CHECK_INT(outbox_peek(ob, "pk/r", 0, m, 1, &n), 0);
    CHECK_INT(n, 1);
    CHECK(outbox_ack(ob, "pk/r", m[0].seq) > 0);
    outbox_msg_free(&m[0]);
    outbox_flush(ob);
    for (int i = 0; i < 10 && st.count == 4; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        outbox_total_stats(ob, &st);
    }
    CHECK_INT(st.count, 3);
    CHECK_INT(append(ob, "pk/other", "0123456789"), 0);
    run_until(&n_cb, 5);
    CHECK_INT(cb_status[4], 0);
    close_ob(ob);
}

static void test_ttl(void)
{
    struct outbox_stats st;
    struct outbox *ob = open_ob("ttl.db", DURABILITY_NORMAL, 0, 0, STORE_DROP_OLDEST, 1);
    if (!ob)
        return;
    reset_cbs();
    for (int i = 0; i < 20; i++)
        CHECK_INT(append(ob, (i & 1) ? "pk/t1" : "pk/t2", "old"), 0);
    run_until(&n_cb, 20);
    outbox_total_stats(ob, &st);
    CHECK_INT(st.count, 20);
    /* Wait until they are older than 1 s, add a fresh one, and let the timer run. */
    usleep(1100 * 1000);
    CHECK_INT(append(ob, "pk/t1", "fresh"), 0);
    run_until(&n_cb, 21);
    uint64_t start = uv_hrtime();
    do {
        uv_run(&loop, UV_RUN_ONCE);
        outbox_total_stats(ob, &st);
    } while (st.expired < 20 && uv_hrtime() - start < 3000000000ULL);
    CHECK_INT(st.expired, 20);
    CHECK_INT(st.count, 1);
    struct outbox_stats s1;
    outbox_device_stats(ob, "pk/t1", &s1);
    CHECK_INT(s1.expired, 10);
    CHECK_INT(s1.count, 1);
    struct outbox_msg m;
    size_t n;
    CHECK_INT(outbox_peek(ob, "pk/t1", 0, &m, 1, &n), 0);
    CHECK(n == 1 && m.len == 5 && memcmp(m.payload, "fresh", 5) == 0);
    if (n)
        outbox_msg_free(&m);
    close_ob(ob);
}

static void test_corrupt(void)
{
    char path[256], before[4096], after[4096];
    struct outbox *ob = NULL;
    struct outbox_opts o = {.path = path};
    snprintf(path, sizeof(path), "%s/garbage.db", dir);
    for (size_t i = 0; i < sizeof(before); i++)
        before[i] = (char)((i * 131 + 7) & 0xff);
    FILE *f = fopen(path, "wb");
    fwrite(before, 1, sizeof(before), f);
    fclose(f);
    CHECK_INT(outbox_open(&loop, &o, NULL, NULL, &ob), ALIGW_ECORRUPT);
    CHECK(ob == NULL);
    f = fopen(path, "rb");
    size_t n = fread(after, 1, sizeof(after), f);
    CHECK_INT(fgetc(f), EOF);
    fclose(f);
    CHECK_INT(n, sizeof(before));
    CHECK(memcmp(before, after, sizeof(before)) == 0);
}

/* Acks every queued message of dev, 10 per loop turn as the forwarder would, and runs the loop
 * until the device's count is 0 or 5 s pass. Returns the count left. */
static uint64_t ack_all(struct outbox *ob, const char *dev)
{
    struct outbox_msg m[10];
    struct outbox_stats st;
    int64_t after = 0;
    size_t n;
    uint64_t start = uv_hrtime();

    do {
        n = 0;
        CHECK_INT(outbox_peek(ob, dev, after, m, 10, &n), 0);
        for (size_t i = 0; i < n; i++) {
            CHECK(outbox_ack(ob, dev, m[i].seq) > 0);
            after = m[i].seq;
            outbox_msg_free(&m[i]);
        }
        uv_run(&loop, n ? UV_RUN_NOWAIT : UV_RUN_ONCE);
        outbox_device_stats(ob, dev, &st);
    } while (st.count > 0 && uv_hrtime() - start < 5000000000ULL);
    return st.count;
}

/* Appends 2 KB messages, 20 per turn, until the store is full: an append refused at once or
 * a commit failing. Returns how many were committed; *last_seq is the last committed seq. */
static int fill(struct outbox *ob, const char *payload, size_t len, int64_t *last_seq)
{
    int committed = 0, refused_at_once = 0, failed = 0;
    *last_seq = 0;
    for (int turn = 0; turn < 300 && !refused_at_once && !failed; turn++) {
        int queued = 0;
        reset_cbs();
        for (int i = 0; i < 20; i++) {
            int rc = outbox_append(ob, "pk/full", "t", payload, len, 1, on_append, NULL);
            if (rc == ALIGW_ESTOREFULL) {
                refused_at_once++;
                break;
            }
            CHECK_INT(rc, 0);
            queued++;
        }
        run_until(&n_cb, queued);
        for (int i = 0; i < n_cb && i < 4096; i++) {
            if (cb_status[i] == 0) {
                committed++;
                *last_seq = cb_seq[i];
            } else {
                CHECK_INT(cb_status[i], ALIGW_ESTOREFULL);
                failed++;
            }
        }
    }
    CHECK(refused_at_once || failed);
    return committed;
}

/*
 * A full filesystem: a 1 MB tmpfs (root) or SQLite's page limit (fallback). Once it is full,
 * appends are refused with ALIGW_ESTOREFULL while the acks of delivered messages still commit;
 * when the deletes made room, appends are accepted again; the database file is never replaced.
 */
static void test_full_disk(enum store_durability dur)
{
    char mnt[256];
    snprintf(mnt, sizeof(mnt), "%s/small%d", dir, (int)dur);
    mkdir(mnt, 0700);
    if (mount("tmpfs", mnt, "tmpfs", 0, "size=1m") != 0) {
        /* No tmpfs: at least check that SQLITE_FULL becomes ALIGW_ESTOREFULL. */
        char path[300];
        sqlite3 *db;
        snprintf(path, sizeof(path), "%s/pages.db", dir);
        CHECK_INT(db_open(path, &db_schema_outbox, 0, &db), 0);
        CHECK_INT(db_exec(db, "PRAGMA max_page_count = 20; CREATE TABLE f(x)"), 0);
        int err = 0;
        for (int i = 0; i < 100 && !err; i++)
            err = db_exec(db, "INSERT INTO f VALUES (randomblob(4000))");
        CHECK_INT(err, ALIGW_ESTOREFULL);
        db_close(db);
        printf("full-disk test: no tmpfs (not root?), checked SQLITE_FULL translation only\n");
        return;
    }
    char path[300], res[310];
    struct stat db_st, st_now, res_st;
    struct outbox_stats st;
    snprintf(path, sizeof(path), "%s/outbox.db", mnt);
    snprintf(res, sizeof(res), "%s.reserve", path);
    struct outbox *ob = NULL;
    struct outbox_opts o = {.path = path, .durability = dur};
    CHECK_INT(outbox_open(&loop, &o, on_ready, NULL, &ob), 0);
    if (!ob)
        goto out;
    CHECK_INT(stat(path, &db_st), 0);
    /* The reserve: real blocks, small next to the filesystem (1/8 of 1 MB at most). */
    CHECK_INT(stat(res, &res_st), 0);
    CHECK(res_st.st_size >= 16384 && res_st.st_size <= 131072);
    CHECK((int64_t)res_st.st_blocks * 512 >= (int64_t)res_st.st_size);

    char payload[2048];
    memset(payload, 'p', sizeof(payload));
    int64_t last_seq;
    int stored = fill(ob, payload, sizeof(payload), &last_seq);
    CHECK(stored > 100); /* most of the 1 MB holds messages */
    int first_stored = stored;
    outbox_device_stats(ob, "pk/full", &st);
    CHECK_INT(st.count, (uint64_t)stored); /* exactly the committed ones */

    /* Full: refused at once, never called back. */
    reset_cbs();
    CHECK_INT(outbox_append(ob, "pk/full", "t", payload, sizeof(payload), 1, on_append, NULL),
              ALIGW_ESTOREFULL);
    CHECK_INT(outbox_append(ob, "pk/other", "t", "x", 1, 1, on_append, NULL), ALIGW_ESTOREFULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    CHECK_INT(n_cb, 0);

    /* The forwarder delivers everything and acks it: the deletes commit on the full disk. */
    CHECK_INT(ack_all(ob, "pk/full"), 0);
    outbox_total_stats(ob, &st);
    CHECK_INT(st.count, 0);

    /* The deletes made room inside the database: appends are accepted again (the store looks
     * for room at least once a second), and the reserve holds its blocks again. */
    int rc = ALIGW_ESTOREFULL;
    uint64_t start = uv_hrtime();
    while (rc == ALIGW_ESTOREFULL && uv_hrtime() - start < 3000000000ULL) {
        uv_run(&loop, UV_RUN_ONCE);
        rc = outbox_append(ob, "pk/full", "t", payload, sizeof(payload), 1, NULL, NULL);
    }
    CHECK_INT(rc, 0);
    /* 20 more, 5 per turn as a producer waiting for its answers would send them: they go into
     * the pages the deletes freed. */
    bool all_ok = true;
    for (int turn = 0; turn < 4; turn++) {
        reset_cbs();
        for (int i = 0; i < 5; i++)
            CHECK_INT(
                outbox_append(ob, "pk/full", "t", payload, sizeof(payload), 1, on_append, NULL), 0);
        run_until(&n_cb, 5);
        all_ok = all_ok && n_cb == 5;
        for (int i = 0; i < n_cb; i++)
            all_ok = all_ok && cb_status[i] == 0 && cb_seq[i] > last_seq;
    }
    CHECK(all_ok);
    CHECK_INT(stat(res, &res_st), 0);
    CHECK(res_st.st_size >= 16384 && (int64_t)res_st.st_blocks * 512 >= (int64_t)res_st.st_size);

    /* Full again, then the filesystem grows: appends come back without any ack. */
    stored = fill(ob, payload, sizeof(payload), &last_seq);
    CHECK_INT(outbox_append(ob, "pk/full", "t", "x", 1, 1, NULL, NULL), ALIGW_ESTOREFULL);
    CHECK_INT(mount("tmpfs", mnt, "tmpfs", MS_REMOUNT, "size=8m"), 0);
    rc = ALIGW_ESTOREFULL;
    start = uv_hrtime();
    while (rc == ALIGW_ESTOREFULL && uv_hrtime() - start < 3000000000ULL) {
        uv_run(&loop, UV_RUN_ONCE);
        rc = outbox_append(ob, "pk/full", "t", "back", 4, 1, on_append, NULL);
    }
    CHECK_INT(rc, 0);
    outbox_device_stats(ob, "pk/full", &st);
    uint64_t before_close = st.count;
    close_ob(ob);

    /* Same database file throughout; everything committed is there after a reopen. */
    CHECK_INT(stat(path, &st_now), 0);
    CHECK(st_now.st_ino == db_st.st_ino);
    CHECK_INT(outbox_open(&loop, &o, on_ready, NULL, &ob), 0);
    if (!ob)
        goto out;
    outbox_device_stats(ob, "pk/full", &st);
    CHECK_INT(st.count, before_close + 1);
    printf("full-disk (durability %s): %d messages of 2 KB filled 1 MB; acks committed while "
           "full; %lld-byte reserve\n",
           dur == DURABILITY_FULL ? "full" : "normal", first_stored, (long long)res_st.st_size);
    close_ob(ob);
out:
    CHECK_INT(umount(mnt), 0);
}

/*
 * Write-through: from the ready callback, a device with nothing older after the given seq gets
 * the committed batch from memory; with older messages (a resend from the start, or messages
 * from before a restart) it gets the table's rows, oldest first.
 */
static void test_write_through(enum store_durability dur)
{
    char name[32];
    struct outbox *ob;
    int64_t s2;

    snprintf(name, sizeof(name), "wt%d.db", (int)dur);
    ob = open_ob(name, dur, 0, 0, STORE_DROP_OLDEST, 0);
    if (!ob)
        return;
    wt_ob = ob;
    reset_cbs();
    wt_after[0] = 0;
    wt_after[1] = -1;
    CHECK_INT(append(ob, "pk/w", "w1"), 0);
    CHECK_INT(append(ob, "pk/w", "w2"), 0);
    run_until(&n_ready, 1);
    CHECK_INT(wt_got[0].n, 2);
    CHECK_STR(wt_got[0].payload[0], "w1");
    CHECK_STR(wt_got[0].payload[1], "w2");
    CHECK(wt_got[0].borrowed[0] && wt_got[0].borrowed[1]);
    CHECK(wt_got[0].seq[0] < wt_got[0].seq[1]);
    s2 = wt_got[0].seq[1];

    /* w1 and w2 were never sent: after 0 they come first, read back; after w2, w3 alone. */
    reset_cbs();
    wt_after[0] = 0;
    wt_after[1] = s2;
    CHECK_INT(append(ob, "pk/w", "w3"), 0);
    run_until(&n_ready, 1);
    CHECK_INT(wt_got[0].n, 3);
    CHECK_STR(wt_got[0].payload[0], "w1");
    CHECK_STR(wt_got[0].payload[2], "w3");
    CHECK(!wt_got[0].borrowed[0]);
    CHECK_INT(wt_got[1].n, 1);
    CHECK_STR(wt_got[1].payload[0], "w3");
    CHECK(wt_got[1].borrowed[0]);
    int64_t s3 = wt_got[1].seq[0];
    wt_ob = NULL;
    close_ob(ob);

    /* After a restart the older messages are found in the table before the new one. */
    ob = open_ob(name, dur, 0, 0, STORE_DROP_OLDEST, 0);
    if (!ob)
        return;
    wt_ob = ob;
    reset_cbs();
    wt_after[0] = 0;
    wt_after[1] = s3;
    CHECK_INT(append(ob, "pk/w", "w4"), 0);
    run_until(&n_ready, 1);
    CHECK_INT(wt_got[0].n, 4);
    CHECK_STR(wt_got[0].payload[0], "w1");
    CHECK_STR(wt_got[0].payload[3], "w4");
    CHECK_INT(wt_got[1].n, 1);
    CHECK_STR(wt_got[1].payload[0], "w4");
    CHECK(wt_got[1].borrowed[0]);
    /* Outside the callback nothing is borrowed. */
    struct outbox_msg m[8];
    size_t n = 0;
    CHECK_INT(outbox_peek(ob, "pk/w", s3, m, 8, &n), 0);
    CHECK_INT(n, 1);
    if (n == 1) {
        CHECK(!m[0].borrowed);
        outbox_msg_free(&m[0]);
    }
    wt_ob = NULL;
    close_ob(ob);
}

/*
 * Deletes wait for a commit to ride along with: an ack alone is not committed in the turn it was
 * made, but by the ack timer (~50 ms) at the latest; an append commits the pending acks with it
 * in one transaction; outbox_flush commits them at the end of the turn.
 */
static void test_deferred_acks(enum store_durability dur)
{
    char name[32];
    struct outbox_msg m[4];
    struct outbox_stats st;
    size_t n = 0;
    struct outbox *ob;

    snprintf(name, sizeof(name), "defer-%d.db", (int)dur);
    if (!(ob = open_ob(name, dur, 0, 0, STORE_DROP_OLDEST, 0)))
        return;
    reset_cbs();
    for (int i = 0; i < 4; i++)
        CHECK_INT(append(ob, "pk/d", "x"), 0);
    run_until(&n_cb, 4);
    CHECK_INT(outbox_peek(ob, "pk/d", 0, m, 4, &n), 0);
    CHECK_INT(n, 4);
    if (n != 4)
        return;
    settled_upto = 0;
    outbox_on_settled(ob, on_settled, NULL);

    /* alone, right after an append: not in this turn, by the timer */
    reset_cbs();
    uv_update_time(&loop);
    uint64_t t0 = uv_now(&loop);
    CHECK_INT(append(ob, "pk/d", "w"), 0);
    run_until(&n_cb, 1);
    int64_t t1 = outbox_ack(ob, "pk/d", m[0].seq);
    for (int i = 0; i < 3; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    if (uv_now(&loop) - t0 < 40) /* a loaded machine may have taken the time: then skip */
        CHECK_INT(settled_upto, 0);
    uint64_t start = uv_hrtime();
    while (settled_upto < t1 && uv_hrtime() - start < 5000000000ULL)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK_INT(settled_upto, t1);
    CHECK(uv_now(&loop) - t0 >= 45);

    /* with an append: one batch */
    int64_t t2 = outbox_ack(ob, "pk/d", m[1].seq);
    reset_cbs();
    CHECK_INT(append(ob, "pk/d", "y"), 0);
    run_until(&n_cb, 1);
    CHECK_INT(settled_upto, t2);

    /* flushed: at the end of this turn (with full, the commit then runs on the thread pool) */
    int64_t t3 = outbox_ack(ob, "pk/d", m[2].seq);
    outbox_flush(ob);
    uv_run(&loop, UV_RUN_NOWAIT);
    if (dur == DURABILITY_NORMAL)
        CHECK_INT(settled_upto, t3);
    start = uv_hrtime();
    while (settled_upto < t3 && uv_hrtime() - start < 5000000000ULL)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK_INT(settled_upto, t3);
    outbox_device_stats(ob, "pk/d", &st);
    CHECK_INT(st.count, 3); /* m[3], w and y */

    /* no append for longer than the ack delay (a backlog draining): at the end of this turn */
    usleep(60 * 1000);
    uv_update_time(&loop);
    int64_t t4 = outbox_ack(ob, "pk/d", m[3].seq);
    uv_run(&loop, UV_RUN_NOWAIT);
    if (dur == DURABILITY_NORMAL)
        CHECK_INT(settled_upto, t4);
    start = uv_hrtime();
    while (settled_upto < t4 && uv_hrtime() - start < 5000000000ULL)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK_INT(settled_upto, t4);

    /* pending at close: committed, not lost */
    struct outbox_msg w;
    size_t nw = 0;
    reset_cbs();
    CHECK_INT(append(ob, "pk/d", "v"), 0);
    run_until(&n_cb, 1);
    CHECK_INT(outbox_peek(ob, "pk/d", m[3].seq, &w, 1, &nw), 0);
    CHECK_INT(nw, 1);
    if (nw == 1) {
        CHECK(outbox_ack(ob, "pk/d", w.seq) > 0); /* "w", right after an append: deferred */
        outbox_msg_free(&w);
    }
    close_ob(ob);
    ob = open_ob(name, dur, 0, 0, STORE_DROP_OLDEST, 0);
    if (!ob)
        return;
    outbox_device_stats(ob, "pk/d", &st);
    CHECK_INT(st.count, 2); /* y, v */
    for (size_t i = 0; i < n; i++)
        outbox_msg_free(&m[i]);
    close_ob(ob);
}

/* Peeks every message of dev after after_seq (up to 8, max at a time) into seqs; returns n. */
static size_t peek_seqs(struct outbox *ob, const char *dev, int64_t after_seq, size_t max,
                        int64_t *seqs)
{
    struct outbox_msg m[8];
    size_t n = 0;
    CHECK_INT(outbox_peek(ob, dev, after_seq, m, max, &n), 0);
    for (size_t i = 0; i < n; i++) {
        seqs[i] = m[i].seq;
        outbox_msg_free(&m[i]);
    }
    return n;
}

/*
 * An acked message is not handed out again while its delete waits for a commit (in the batch
 * collecting this turn, in the one being committed, or after it): a new connection, which peeks
 * from the start, sends only what was not acknowledged. Acks may come out of order (QoS 0).
 */
static void test_acked_not_resent(enum store_durability dur)
{
    char name[32];
    int64_t s[4], got[8];
    struct outbox_stats st;
    size_t n;
    struct outbox *ob;

    snprintf(name, sizeof(name), "acked-%d.db", (int)dur);
    if (!(ob = open_ob(name, dur, 0, 0, STORE_DROP_OLDEST, 0)))
        return;
    reset_cbs();
    for (int i = 0; i < 3; i++)
        CHECK_INT(append(ob, "pk/k", "k"), 0);
    CHECK_INT(append(ob, "pk/other", "o"), 0);
    run_until(&n_cb, 4);
    CHECK_INT(peek_seqs(ob, "pk/k", 0, 8, s), 3);
    settled_upto = 0;
    outbox_on_settled(ob, on_settled, NULL);

    /* The middle one first, then the oldest; no loop turn yet: the acks are in `cur`. */
    CHECK(outbox_ack(ob, "pk/k", s[1]) > 0);
    n = peek_seqs(ob, "pk/k", 0, 8, got);
    CHECK_INT(n, 2);
    CHECK(n == 2 && got[0] == s[0] && got[1] == s[2]);
    int64_t t = outbox_ack(ob, "pk/k", s[0]);
    CHECK(t > 0);
    n = peek_seqs(ob, "pk/k", 0, 8, got);
    CHECK_INT(n, 1);
    CHECK_INT(n ? got[0] : 0, s[2]);
    /* max counts usable rows, not the skipped ones. */
    n = peek_seqs(ob, "pk/k", 0, 1, got);
    CHECK_INT(n, 1);
    CHECK_INT(n ? got[0] : 0, s[2]);
    CHECK_INT(peek_seqs(ob, "pk/k", s[2], 8, got), 0);
    CHECK_INT(peek_seqs(ob, "pk/other", 0, 8, got), 1); /* another device's rows are untouched */

    /* Being committed (with full, on the thread pool after this turn), then committed. */
    outbox_flush(ob);
    uv_run(&loop, UV_RUN_NOWAIT);
    n = peek_seqs(ob, "pk/k", 0, 8, got);
    CHECK_INT(n, 1);
    CHECK_INT(n ? got[0] : 0, s[2]);
    uint64_t start = uv_hrtime();
    while (settled_upto < t && uv_hrtime() - start < 5000000000ULL)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK_INT(settled_upto, t);
    n = peek_seqs(ob, "pk/k", 0, 8, got);
    CHECK_INT(n, 1);
    CHECK_INT(n ? got[0] : 0, s[2]);
    outbox_device_stats(ob, "pk/k", &st);
    CHECK_INT(st.count, 1);

    /* An ack made after a batch of appends committed, before the ready callbacks (here from the
     * append callback): the ready callback's peek from the start (a resend) gets only the new
     * message, read back; after the acked one it gets it from memory. */
    wt_ob = ob;
    wt_after[0] = 0;
    wt_after[1] = s[2];
    cb_ack_ob = ob;
    cb_ack_key = "pk/k";
    cb_ack_seq = s[2];
    cb_ack_ticket = 0;
    reset_cbs();
    CHECK_INT(append(ob, "pk/k", "k4"), 0);
    run_until(&n_ready, 1);
    wt_ob = NULL;
    CHECK(cb_ack_ticket > 0);
    CHECK(wt_got[0].n && !wt_got[0].borrowed[0]);
    CHECK_INT(wt_got[0].n, 1);
    CHECK_STR(wt_got[0].n ? wt_got[0].payload[0] : "", "k4");
    CHECK_INT(wt_got[1].n, 1);
    CHECK(wt_got[1].n && wt_got[1].borrowed[0]);
    s[3] = wt_got[1].n ? wt_got[1].seq[0] : 0;
    n = peek_seqs(ob, "pk/k", 0, 8, got);
    CHECK_INT(n, 1);
    CHECK_INT(n ? got[0] : 0, s[3]);

    /* The last one acked and committed: nothing left, nothing pending. */
    CHECK(outbox_ack(ob, "pk/k", s[3]) > 0);
    CHECK_INT(peek_seqs(ob, "pk/k", 0, 8, got), 0);
    t = outbox_ack(ob, "pk/k", s[3]); /* acked twice (a resend's PUBACK): harmless */
    CHECK_INT(peek_seqs(ob, "pk/k", 0, 8, got), 0);
    outbox_flush(ob);
    start = uv_hrtime();
    while (settled_upto < t && uv_hrtime() - start < 5000000000ULL)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK_INT(settled_upto, t);
    CHECK_INT(peek_seqs(ob, "pk/k", 0, 8, got), 0);
    outbox_device_stats(ob, "pk/k", &st);
    CHECK_INT(st.count, 0);

    /* Acks pending at close are committed, and a reopened store has none pending. */
    reset_cbs();
    CHECK_INT(append(ob, "pk/k", "k5"), 0);
    CHECK_INT(append(ob, "pk/k", "k6"), 0);
    run_until(&n_cb, 2);
    CHECK_INT(peek_seqs(ob, "pk/k", 0, 8, s), 2);
    CHECK(outbox_ack(ob, "pk/k", s[0]) > 0);
    close_ob(ob);
    if (!(ob = open_ob(name, dur, 0, 0, STORE_DROP_OLDEST, 0)))
        return;
    n = peek_seqs(ob, "pk/k", 0, 8, got);
    CHECK_INT(n, 1);
    CHECK_INT(n ? got[0] : 0, s[1]);
    close_ob(ob);
}

/* Bytes of a store's WAL file (0 when there is none). */
static int64_t wal_bytes(const char *name)
{
    char path[300];
    struct stat sb;
    snprintf(path, sizeof(path), "%s/%s-wal", dir, name);
    return stat(path, &sb) == 0 ? (int64_t)sb.st_size : 0;
}

/*
 * Seqs never go back: not when the newest messages were delivered and the store reopened, not
 * when it was emptied, not across many reservations. And a lone append to a known device writes
 * three pages (its row, the index entry, the device's counters): the seq bound in meta is
 * reserved ahead, not written with every message.
 */
static void test_seq_reservation(void)
{
    const char *name = "seqres.db";
    struct outbox *ob = open_ob(name, DURABILITY_NORMAL, 0, 0, STORE_DROP_OLDEST, 0);
    int64_t top = 0;
    if (!ob)
        return;
    for (int round = 0; round < 3; round++) {
        reset_cbs();
        for (int i = 0; i < 3; i++)
            CHECK_INT(append(ob, "pk/a", "x"), 0);
        run_until(&n_cb, 3);
        CHECK_INT(n_cb, 3);
        for (int i = 0; i < 3 && i < n_cb; i++) {
            CHECK(cb_seq[i] > top);
            top = cb_seq[i];
        }
        /* round 0 delivers only the newest, round 1 everything, round 2 nothing */
        if (round == 0)
            CHECK(outbox_ack(ob, "pk/a", top) > 0);
        if (round == 1)
            for (int i = 0; i < 3; i++)
                CHECK(outbox_ack(ob, "pk/a", cb_seq[i]) > 0);
        close_ob(ob);
        ob = open_ob(name, DURABILITY_NORMAL, 0, 0, STORE_DROP_OLDEST, 0);
        if (!ob)
            return;
    }

    /* Pages per append, as WAL frames: the first append after open takes the reservation. */
    int64_t page = 0, before;
    reset_cbs();
    CHECK_INT(append(ob, "pk/a", "warm"), 0);
    run_until(&n_cb, 1);
    {
        /* the page size is bytes 16-17 of the database header, big-endian */
        char path[300];
        unsigned char hdr[18];
        snprintf(path, sizeof(path), "%s/%s", dir, name);
        FILE *f = fopen(path, "rb");
        if (f && fread(hdr, 1, sizeof(hdr), f) == sizeof(hdr))
            page = hdr[16] << 8 | hdr[17];
        if (f)
            fclose(f);
    }
    CHECK(page > 0);
    for (int i = 0; i < 5; i++) {
        before = wal_bytes(name);
        reset_cbs();
        CHECK_INT(append(ob, "pk/a", "one more"), 0);
        run_until(&n_cb, 1);
        CHECK_INT(n_cb, 1);
        CHECK(cb_seq[0] > top);
        top = cb_seq[0];
        CHECK_INT(wal_bytes(name) - before, 3 * (page + 24));
    }
    close_ob(ob);
}

int main(void)
{
    char cmd[300];
    if (!mkdtemp(dir))
        return 2;
    uv_loop_init(&loop);
    test_basic(DURABILITY_NORMAL);
    test_basic(DURABILITY_FULL);
    test_many(DURABILITY_NORMAL);
    test_many(DURABILITY_FULL);
    test_write_through(DURABILITY_NORMAL);
    test_write_through(DURABILITY_FULL);
    test_deferred_acks(DURABILITY_NORMAL);
    test_deferred_acks(DURABILITY_FULL);
    test_acked_not_resent(DURABILITY_NORMAL);
    test_acked_not_resent(DURABILITY_FULL);
    test_seq_reservation();
    test_caps();
    test_ttl();
    test_corrupt();
    test_full_disk(DURABILITY_NORMAL);
    test_full_disk(DURABILITY_FULL);
    CHECK_INT(uv_loop_close(&loop), 0);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    CHECK_INT(system(cmd), 0);
    return check_done();
}
