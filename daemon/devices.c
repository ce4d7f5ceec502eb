/*
 * devices: the device registry and each device's state machine (see devices.h).
 *
 * A device is named towards the session layer by sid = gen << 32 | slot: the slot indexes
 * R.slots, the generation changes whenever the slot is reused or the device's session is
 * replaced, so a late event or a queued pacer entry for an old incarnation is recognised and
 * dropped. The pacer and the "waiting for in-flight room" list hold sids, not pointers, for the
 * same reason.
 *
 * Forwarder: per device, messages are peeked from the outbox oldest first after the last seq
 * sent on this connection, published with ref = epoch << 48 | seq, and acked in the outbox on
 * PUBACK. A new connection bumps the epoch and starts again from the oldest unacked message
 * (the outbox no longer hands out an acked one, even while its delete waits for a commit), so
 * after any reconnect or restart the unacknowledged messages go out again in order, and only
 * those; acknowledgements from an older epoch still delete their row but no longer count against
 * the window.
 */
#include "devices.h"

#include "dynreg.h"
#include "errors.h"
#include "log.h"
#include "netwatch.h"
#include "outbox.h"
#include "ratelimit.h"
#include "session.h"
#include "sign.h"
#include "statedb.h"
#include "strmap.h"
#include "tlsprobe.h"
#include "alink.h"

#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define REG_TIMEOUT_MS 30000
#define KICK_WINDOW_MS 60000 /* two losses right after logins within this window = kicked */
#define MASS_LOSS_MS 2000    /* this many sessions lost within this time: the endpoint went away */
#define MASS_LOSS_DEVICES 3
#define AUTH_BACKOFF_CAP_MS (3600 * 1000)
#define TAKEOVER_RING 64 /* takeover times kept for the "in the last hour" count */
#define FWD_BATCH 64
#define WINDOW_STRETCH 4          /* a device's window may grow to this many times store.inflight */
#define REF_NOT_STORED UINT64_MAX /* the ref of a publish that is not from the outbox */
#define DEAD_STRIKES 3      /* sessions lost with one message alone unacknowledged: it is refused */
#define STORE_RETRY_MS 1000 /* a failed outbox read is tried again after this */
#define STORE_LOG_MS 10000  /* and logged at most this often per device */

struct device {
    struct device_conf conf;
    char key[80];
    uint32_t slot, gen;
    uint64_t serial; /* unique for the daemon's life, never reused */
    enum device_state state;
    int64_t since_ms; /* wall clock of the last state change */
    int last_error;
    char last_reason[320];
    char field_error[160];
    char platform_error[160]; /* the last notice on /ext/error */
    struct device_counters n;
    /* Refused-message detection: the first seq sent on this connection and whether a PUBACK
     * came; in probe mode the oldest message goes out alone, and strikes counts the sessions
     * lost with it alone in flight and unacknowledged. */
    int64_t conn_first_seq;
    bool conn_acked, probe;
    int64_t suspect_seq;
    int strikes;
    uint64_t store_err_log_ms; /* last logged store error (loop clock) */

    char *secret;                    /* device secret (conf or registration); wiped */
    char *nwl_client_id, *nwl_token; /* registration-free login */
    bool session_open, reg_session;  /* a session exists; it is a registration session */
    int attempt;                     /* consecutive failures, for the back-off */
    enum device_state backoff_kind;  /* of those failures (backoff, auth-refused, ...) */
    int quick_losses;                /* losses within KICK_WINDOW_MS */
    int kick_level; /* kick back-off doublings; 0 once a session outlived KICK_WINDOW_MS */
    uint64_t takeovers[TAKEOVER_RING];    /* loop clock of recent takeovers (ring) */
    unsigned n_takeovers;                 /* takeovers recorded since start */
    unsigned takeovers_added;             /* by the last kick verdict (taken back if forgiven) */
    uint64_t first_loss_ms, online_at_ms; /* loop clock */
    uint64_t ack_progress_ms;             /* last PUBACK, or when the window became non-empty */

    uv_timer_t timer;     /* back-off, registration timeout */
    uv_timer_t fwd_timer; /* rate limit and retry waits */
    int open_handles;

    char **subs;
    size_t n_subs;
    bool *sub_refused;

    uint16_t epoch;
    int64_t sent_upto;
    int inflight;        /* published on this connection, no PUBACK yet */
    int acking;          /* acknowledged, delete not yet committed (counts in the window too) */
    struct ratelimit rl; /* uplink bucket, rate learnt from 429s */
    bool waiting_room;
    uint32_t alink_id;
};

/* A FIFO of sids that grows as needed. */
struct sidq {
    uint64_t *v;
    size_t cap, head, len;
};

/* Acknowledgements whose deletes are not committed yet, in ticket order: n acks of the device
 * with this serial (in this slot) up to ticket. Not a sid: the acks outlive the session. */
struct ackrun {
    int64_t ticket;
    uint64_t serial;
    uint32_t slot;
    int n;
};
struct ackq {
    struct ackrun *v;
    size_t cap, head, len;
};

static struct {
    uv_loop_t *loop;
    struct outbox *ob;
    struct statedb *db;
    struct devices_hooks hooks;
    /* settings copied from the config in force */
    char *instance_id, *register_url;
    int backoff_min_ms, backoff_max_ms, auth_backoff_ms, kick_backoff_ms;
    int window, inflight_total;
    int ack_timeout_ms;
    uv_timer_t ack_timer; /* looks for devices whose PUBACKs stopped coming */
    struct device **slots;
    uint32_t *gens; /* last generation used per slot */
    size_t n_slots, cap_slots;
    struct strmap by_key;
    size_t count, online;
    struct device_counters gone; /* the counters of the devices removed since the start */
    int total_inflight;
    int busy;              /* devices with messages in flight */
    uint64_t losses_at_ms; /* start of the current MASS_LOSS_MS window of session losses */
    struct {
        uint64_t serial;
        uint32_t slot;
    } first_lost[MASS_LOSS_DEVICES - 1]; /* the window's losses before it was seen as mass */
    int losses;                          /* sessions lost in it */
    /* connect pacer */
    struct sidq pace;
    uv_timer_t pace_timer;
    bool pace_running;
    double pace_rate, pace_tokens;
    int pace_burst;
    uint64_t pace_at_ms;
    struct sidq room;   /* devices waiting for in-flight room */
    struct ackq acking; /* acks waiting for their deletes to commit */
    uint64_t serials;   /* the last device serial given */
    uint64_t rng;       /* back-off jitter: per-process state seeded from the kernel */
    bool ready;
    /* Descriptors: each session holds a socket. max_sessions (0 = no limit) is what the
     * open-file limit leaves after the daemon's own files and the API's reserve (main.c). */
    size_t n_sessions, max_sessions;
    unsigned long long fd_limit;
} R;

static void session_event(void *arg, const struct session_event *ev);
static void forward(struct device *d);
static bool is_throttle_reply(const char *topic, const void *payload, size_t len);
static void throttled(struct device *d);
static void close_session(struct device *d);
static void dead_letter(struct device *d, int64_t seq, const char *topic, const char *reason);

/* ---- small helpers ----------------------------------------------------------------------- */

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t sid_of(const struct device *d)
{
    return (uint64_t)d->gen << 32 | d->slot;
}

static struct device *by_sid(uint64_t sid)
{
    uint32_t slot = (uint32_t)sid;
    struct device *d = slot < R.n_slots ? R.slots[slot] : NULL;
    return d && d->gen == (uint32_t)(sid >> 32) ? d : NULL;
}

static void wipe_free(char *s)
{
    if (s) {
        memset(s, 0, strlen(s));
        free(s);
    }
}

/* Makes room in a full ring buffer (elements of size es): twice the capacity, unrolled so that
 * the oldest element is at 0. 0 or -ENOMEM. */
static int ring_grow(void **v, size_t es, size_t *cap, size_t *head, size_t len)
{
    size_t ncap = *cap ? *cap * 2 : 256;
    char *nv = malloc(ncap * es);
    if (!nv)
        return -ENOMEM;
    for (size_t i = 0; i < len; i++)
        memcpy(nv + i * es, (char *)*v + ((*head + i) % *cap) * es, es);
    free(*v);
    *v = nv;
    *cap = ncap;
    *head = 0;
    return 0;
}

static int sidq_push(struct sidq *q, uint64_t sid)
{
    if (q->len == q->cap && ring_grow((void **)&q->v, sizeof(*q->v), &q->cap, &q->head, q->len) < 0)
        return -ENOMEM;
    q->v[(q->head + q->len) % q->cap] = sid;
    q->len++;
    return 0;
}

static bool sidq_pop(struct sidq *q, uint64_t *sid)
{
    if (!q->len)
        return false;
    *sid = q->v[q->head];
    q->head = (q->head + 1) % q->cap;
    q->len--;
    return true;
}

/* Records an ack of device d with ticket; a run of one device's acks is one entry. */
static int ackq_push(struct ackq *q, const struct device *d, int64_t ticket)
{
    if (q->len) {
        struct ackrun *last = &q->v[(q->head + q->len - 1) % q->cap];
        if (last->serial == d->serial) {
            last->ticket = ticket;
            last->n++;
            return 0;
        }
    }
    if (q->len == q->cap && ring_grow((void **)&q->v, sizeof(*q->v), &q->cap, &q->head, q->len) < 0)
        return -ENOMEM;
    q->v[(q->head + q->len) % q->cap] = (struct ackrun){ticket, d->serial, d->slot, 1};
    q->len++;
    return 0;
}

/* Sets the device's last error text (cut short if it does not fit). */
static void set_reason(struct device *d, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void set_reason(struct device *d, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->last_reason, sizeof(d->last_reason), fmt, ap);
    va_end(ap);
}

const char *device_state_name(enum device_state s)
{
    static const char *const names[] = {"offline",    "registering",  "connecting", "online",
                                        "backoff",    "auth-refused", "kicked",     "needs-reset",
                                        "tls-failed", "no-network"};
    return (unsigned)s < sizeof(names) / sizeof(names[0]) ? names[s] : "?";
}

static void set_state(struct device *d, enum device_state s, int err, const char *reason)
{
    enum device_state old = d->state;

    if (err || reason) {
        d->last_error = err;
        set_reason(d, "%s%s%s", reason ? reason : "", reason && err ? ": " : "",
                   err ? aligw_strerror(err) : "");
    }
    if (old == s)
        return;
    d->state = s;
    d->since_ms = wall_ms();
    if (old == DEV_ONLINE)
        R.online--;
    if (s == DEV_ONLINE)
        R.online++;
    if (R.hooks.state_changed)
        R.hooks.state_changed(R.hooks.ctx, d, old);
}

/* ---- connect pacer ----------------------------------------------------------------------- */

static void do_connect(struct device *d);

static void pace_tick(uv_timer_t *t)
{
    uint64_t now = uv_now(R.loop), sid;

    R.pace_tokens += (double)(now - R.pace_at_ms) * R.pace_rate / 1000.0;
    if (R.pace_tokens > R.pace_burst)
        R.pace_tokens = R.pace_burst;
    R.pace_at_ms = now;
    while (R.pace_tokens >= 1.0 && sidq_pop(&R.pace, &sid)) {
        struct device *d = by_sid(sid);
        if (!d || d->state != DEV_CONNECTING)
            continue; /* removed or restarted meanwhile */
        R.pace_tokens -= 1.0;
        do_connect(d);
    }
    if (!R.pace.len) {
        uv_timer_stop(&R.pace_timer);
        R.pace_running = false;
    }
}

static void pace_enqueue(struct device *d)
{
    set_state(d, DEV_CONNECTING, 0, NULL);
    if (sidq_push(&R.pace, sid_of(d)) < 0) {
        log_dev(LOG_ERR, d->conf.product_key, d->conf.device_name, "out of memory queuing connect");
        return;
    }
    if (!R.pace_running) {
        /* The bucket filled while the pacer was idle (pace_tick counts from its last run, from
         * 0 at start-up): connect_burst sessions may start at once. */
        R.pace_running = true;
        uv_timer_start(&R.pace_timer, pace_tick, 0, 10);
    }
}

static void set_connect_rate(double per_second, int burst)
{
    R.pace_rate = per_second > 0 ? per_second : 1;
    R.pace_burst = burst > 0 ? burst : 1;
    if (R.pace_tokens > R.pace_burst)
        R.pace_tokens = R.pace_burst;
}

/* ---- back-off ---------------------------------------------------------------------------- */

/*
 * Jitter only spreads a fleet if every process draws a different sequence: rand() unseeded gave
 * every aligwd the same delays, so gateways restarted together by a power cut retried in
 * lock-step. The state is seeded from getrandom() (pid and clock if that fails) and stepped with
 * splitmix64; it is not for secrets.
 */
static void jitter_seed(void)
{
    uint64_t seed = 0;
    if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) != (ssize_t)sizeof(seed)) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        seed = (uint64_t)getpid() << 32 ^ (uint64_t)ts.tv_nsec ^ (uint64_t)ts.tv_sec << 20;
    }
    R.rng = seed;
}

/* A uniform double in [0, 1). */
static double jitter_next(void)
{
    uint64_t z = (R.rng += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return (double)(z >> 11) / (double)(1ULL << 53);
}

static void begin(struct device *d);

/* The next attempt, now: a registration when one is still needed, else a paced connect. */
static void retry_now(struct device *d)
{
    if (d->conf.reg != REG_NONE && !d->secret && !d->nwl_token)
        begin(d);
    else
        pace_enqueue(d);
}

static void on_backoff_timer(uv_timer_t *t)
{
    retry_now(t->data);
}

/* ---- the network ------------------------------------------------------------------------- */

/* Whether d's endpoint can be routed to now (always, without netwatch). */
static bool net_ok(const struct device *d)
{
    return netwatch_reachable(d->conf.host);
}

/* No route to d's endpoint: no attempt, no back-off step, no timer; on_network_changed
 * resumes it with its back-off reset. */
static void wait_for_network(struct device *d)
{
    uv_timer_stop(&d->timer);
    if (d->state == DEV_NO_NETWORK)
        return;
    d->last_error = -ENETUNREACH;
    set_reason(d, "no route to %s: waiting for the network", d->conf.host);
    log_event(LOG_INFO, d->conf.product_key, d->conf.device_name, "no_network", "%s",
              d->last_reason);
    set_state(d, DEV_NO_NETWORK, 0, NULL);
}

/*
 * netwatch settled a change: devices waiting for a route that now has one start over (back-off
 * reset, through the pacer at once); devices of an endpoint that lost its route stop trying,
 * and their sessions (online or connecting) are closed: their packets cannot leave, and
 * keepalive would take up to 1.5 keepalives to notice. The outbox resends what was in flight.
 */
static void on_network_changed(void *arg)
{
    size_t resumed = 0, waiting = 0, dropped = 0;
    (void)arg;
    for (size_t i = 0; i < R.n_slots; i++) {
        struct device *d = R.slots[i];
        if (!d)
            continue;
        if (net_ok(d)) {
            if (d->state == DEV_NO_NETWORK) {
                d->attempt = 0;
                retry_now(d);
                resumed++;
            }
            continue;
        }
        switch (d->state) {
        case DEV_ONLINE:
            d->n.disconnects++;
            /* fall through */
        case DEV_CONNECTING:
            if (!d->session_open || d->reg_session) {
                waiting++; /* in the pacer's queue: do_connect will see it */
                break;
            }
            close_session(d);
            d->epoch++;
            dropped++;
            /* fall through */
        case DEV_BACKOFF:
        case DEV_NO_NETWORK:
            wait_for_network(d);
            waiting++;
            break;
        default:
            break;
        }
    }
    if (waiting)
        log_write(LOG_WARNING,
                  "network: %zu device(s) have no route to their endpoint (%zu session(s) closed); "
                  "no attempts until one returns",
                  waiting, dropped);
    if (resumed)
        log_write(LOG_NOTICE, "network: a route is back: %zu device(s) reconnecting", resumed);
}

/*
 * Schedules the next attempt after base doubled n times, at most cap, with jitter. Returns the
 * delay in ms, or 0 when the device stays down (auto_reconnect off).
 */
static uint64_t backoff_n(struct device *d, enum device_state s, int base_ms, int cap_ms, int n)
{
    uint64_t delay = (uint64_t)base_ms;

    if (!d->conf.auto_reconnect && d->n.connects > 0) {
        /* Like setMqtt(reconn=False): after a session existed, stay down until restarted. */
        close_session(d);
        set_state(d, DEV_OFFLINE, 0, NULL);
        log_dev(LOG_NOTICE, d->conf.product_key, d->conf.device_name,
                "auto_reconnect is off: staying offline (%s)", d->last_reason);
        return 0;
    }

    for (int i = 0; i < n && delay < (uint64_t)cap_ms; i++)
        delay *= 2;
    if (delay > (uint64_t)cap_ms)
        delay = (uint64_t)cap_ms;
    /* "Equal jitter": half fixed, half random, so a fleet spreads out but never retries early. */
    delay = delay / 2 + (uint64_t)(jitter_next() * (double)(delay / 2));
    set_state(d, s, 0, NULL);
    uv_timer_start(&d->timer, on_backoff_timer, delay, 0);
    log_event(LOG_INFO, d->conf.product_key, d->conf.device_name, "retry",
              "%s, next attempt in %.3f s", device_state_name(s), (double)delay / 1000.0);
    return delay;
}

/* The doubling count of a failure of kind s: consecutive failures of one kind double; a failure
 * of another kind starts its own doubling (a refused login after network trouble waits
 * auth_backoff_ms, not auth_backoff_ms times the network's count). */
static int next_attempt(struct device *d, enum device_state s)
{
    if (s != d->backoff_kind) {
        d->backoff_kind = s;
        d->attempt = 0;
    }
    return d->attempt++;
}

/* Schedules the next attempt: base doubles per consecutive failure of the same kind (s) up to
 * cap, with jitter. */
static void backoff(struct device *d, enum device_state s, int base_ms, int cap_ms)
{
    if (s == DEV_BACKOFF && !net_ok(d) && (d->conf.auto_reconnect || d->n.connects == 0)) {
        wait_for_network(d); /* a network failure with no network: no step up */
        return;
    }
    backoff_n(d, s, base_ms, cap_ms, next_attempt(d, s));
}

/* ---- sessions ---------------------------------------------------------------------------- */

/* Changes a device's in-flight count and the totals that follow it. */
static void inflight_add(struct device *d, int delta)
{
    if (d->inflight == 0 && delta > 0) {
        R.busy++;
        d->ack_progress_ms = uv_now(R.loop);
    }
    d->inflight += delta;
    R.total_inflight += delta;
    if (d->inflight == 0 && delta < 0)
        R.busy--;
}

/* A device's window: store.inflight, or its fair share of store.inflight_total among the busy
 * devices (those with messages in flight) when that is larger, up to WINDOW_STRETCH times
 * store.inflight. A lone busy device is then not held to a round-trip-bound rate, while many busy
 * devices keep the per-device window (and Paho's per-client lists, scanned on every PUBACK)
 * short. After a crash a device may see up to this many messages twice. */
static int window_of(const struct device *d)
{
    if (d->probe)
        return 1; /* finding out whether the oldest message is what the platform refuses */
    int busy = R.busy + (d->inflight == 0);
    int share = R.inflight_total / (busy > 0 ? busy : 1);
    int max = R.window * WINDOW_STRETCH;
    if (share > max)
        share = max;
    return share > R.window ? share : R.window;
}

static void close_session(struct device *d)
{
    if (d->session_open) {
        session_close(sid_of(d));
        d->session_open = false;
        R.n_sessions--;
    }
    inflight_add(d, -d->inflight);
    d->reg_session = false;
}

static void fill_params(const struct device *d, struct session_params *p, struct sign_creds *c)
{
    memset(p, 0, sizeof(*p));
    p->host = d->conf.host;
    p->port = d->conf.port;
    p->tls = d->conf.tls;
    p->ca_file = d->conf.ca_file;
    p->verify_hostname = d->conf.verify_hostname;
    p->client_id = c->client_id;
    p->username = c->username;
    p->password = c->password;
    p->keepalive = d->conf.keepalive;
    p->clean_session = d->conf.clean_session;
}

/*
 * Whether one more session fits in the open-file limit. When not, the device says so (its
 * last_error is "too many open files", not the connect failure it would otherwise end in) and
 * tries again after the longest back-off: a session that ends frees a place.
 */
static bool fd_room(struct device *d)
{
    if (!R.max_sessions || d->session_open || R.n_sessions < R.max_sessions)
        return true;
    d->last_error = -EMFILE;
    set_reason(d,
               "too many open files: the open-file limit (%llu) serves %zu device sessions and "
               "all are in use; raise LimitNOFILE (systemd) or ulimit -n",
               R.fd_limit, R.max_sessions);
    log_dev(LOG_WARNING, d->conf.product_key, d->conf.device_name, "%s", d->last_reason);
    backoff(d, DEV_BACKOFF, R.backoff_max_ms, R.backoff_max_ms);
    return false;
}

static void do_connect(struct device *d)
{
    struct session_params p;
    struct sign_creds c;
    char ts[24];
    int rc;

    if (!net_ok(d)) {
        wait_for_network(d);
        return;
    }
    if (!fd_room(d))
        return;

    if (d->session_open) {
        rc = session_connect(sid_of(d));
    } else {
        if (d->nwl_token) {
            rc = sign_mqtt_connwl(d->conf.product_key, d->conf.device_name, d->nwl_client_id,
                                  d->nwl_token, "_v=aligw-" ALIGW_VERSION, &c);
        } else {
            struct sign_login in = {.product_key = d->conf.product_key,
                                    .device_name = d->conf.device_name,
                                    .device_secret = d->secret,
                                    .client_id = d->conf.client_id,
                                    .method = d->conf.sign_method,
                                    .securemode = d->conf.securemode,
                                    .ext = d->conf.ext_rrpc ? "ext=3,_v=aligw-" ALIGW_VERSION
                                                            : "_v=aligw-" ALIGW_VERSION};
            if (d->conf.timestamp) {
                snprintf(ts, sizeof(ts), "%" PRId64, wall_ms());
                in.timestamp = ts;
            }
            rc = sign_mqtt_login(&in, &c);
        }
        if (rc == 0) {
            fill_params(d, &p, &c);
            d->gen++; /* a new session incarnation: stale events of the old one are dropped */
            R.gens[d->slot] = d->gen;
            rc = session_open(sid_of(d), &p);
            d->session_open = rc == 0;
            R.n_sessions += rc == 0;
        }
        memset(&c, 0, sizeof(c));
    }
    if (rc < 0) {
        log_dev(LOG_WARNING, d->conf.product_key, d->conf.device_name, "cannot start session: %s",
                aligw_strerror(rc));
        d->last_error = rc;
        backoff(d, DEV_BACKOFF, R.backoff_min_ms, R.backoff_max_ms);
    }
}

/* ---- registration ------------------------------------------------------------------------ */

static void registered(struct device *d, const struct dynreg_result *r)
{
    int rc;

    struct statedb_reg sr = {.device_secret = r->device_secret[0] ? (char *)r->device_secret : NULL,
                             .client_id = r->client_id[0] ? (char *)r->client_id : NULL,
                             .device_token = r->device_token[0] ? (char *)r->device_token : NULL,
                             .registered_at = wall_ms() / 1000};
    rc = statedb_reg_put(R.db, d->conf.product_key, d->conf.device_name, &sr);
    if (rc < 0) {
        /* Never log in with a secret we could not store: we could not log in after a restart. */
        log_dev(LOG_ERR, d->conf.product_key, d->conf.device_name,
                "registration succeeded but storing its result failed: %s", aligw_strerror(rc));
        backoff(d, DEV_BACKOFF, R.backoff_min_ms, R.backoff_max_ms);
        return;
    }
    if (r->device_secret[0]) {
        d->secret = strdup(r->device_secret);
    } else {
        d->nwl_client_id = strdup(r->client_id);
        d->nwl_token = strdup(r->device_token);
    }
    log_dev(LOG_NOTICE, d->conf.product_key, d->conf.device_name,
            "registered (%s); credentials stored", d->conf.reg == REG_HTTPS ? "https" : "mqtt");
    d->attempt = 0;
    pace_enqueue(d);
}

static void registration_failed(struct device *d, int err, const struct dynreg_result *r)
{
    char why[192] = "registration failed";

    if (r && r->platform_code)
        snprintf(why, sizeof(why), "registration refused with code %d%s%s", r->platform_code,
                 r->message[0] ? " " : "", r->message);
    log_dev(LOG_WARNING, d->conf.product_key, d->conf.device_name, "%s: %s", why,
            aligw_strerror(err));
    d->last_error = err;
    set_reason(d, "%s: %s", why, aligw_strerror(err));
    if (err == ALIGW_EACTIVE)
        backoff(d, DEV_NEEDS_RESET, R.auth_backoff_ms, AUTH_BACKOFF_CAP_MS);
    else if (err == ALIGW_EAUTH)
        backoff(d, DEV_AUTH_REFUSED, R.auth_backoff_ms, AUTH_BACKOFF_CAP_MS);
    else
        backoff(d, DEV_BACKOFF, R.backoff_min_ms, R.backoff_max_ms);
}

static void https_registered(void *arg, int status, const struct dynreg_result *r)
{
    struct device *d = by_sid((uint64_t)(uintptr_t)arg);

    if (!d || d->state != DEV_REGISTERING)
        return; /* removed meanwhile */
    if (status < 0)
        registration_failed(d, status, r);
    else
        registered(d, r);
}

static void on_reg_timeout(uv_timer_t *t)
{
    struct device *d = t->data;
    close_session(d);
    registration_failed(d, -ETIMEDOUT, NULL);
}

static void start_mqtt_registration(struct device *d)
{
    struct session_params p;
    struct sign_creds c;
    char random[17];
    int rc;

    if (!net_ok(d)) {
        wait_for_network(d);
        return;
    }
    if (!fd_room(d))
        return;
    dynreg_random(random);
    rc = sign_mqtt_register(d->conf.product_key, d->conf.device_name, d->conf.product_secret,
                            d->conf.reg == REG_MQTT ? "register" : "regnwl", random,
                            d->conf.sign_method, R.instance_id, &c);
    if (rc == 0) {
        fill_params(d, &p, &c);
        p.clean_session = true;
        p.keepalive = 60;
        d->gen++;
        R.gens[d->slot] = d->gen;
        rc = session_open(sid_of(d), &p);
        d->session_open = rc == 0;
        d->reg_session = rc == 0;
        R.n_sessions += rc == 0;
    }
    memset(&c, 0, sizeof(c));
    if (rc < 0) {
        registration_failed(d, rc, NULL);
        return;
    }
    uv_timer_start(&d->timer, on_reg_timeout, REG_TIMEOUT_MS, 0);
}

/* Loads stored credentials, or registers, or goes straight to the pacer. */
static void begin(struct device *d)
{
    if (d->conf.reg == REG_NONE) {
        pace_enqueue(d);
        return;
    }
    if (!d->secret && !d->nwl_token) {
        struct statedb_reg sr;
        if (statedb_reg_get(R.db, d->conf.product_key, d->conf.device_name, &sr) == 0) {
            if (sr.device_secret && sr.device_secret[0]) {
                d->secret = strdup(sr.device_secret);
            } else if (sr.client_id && sr.device_token) {
                d->nwl_client_id = strdup(sr.client_id);
                d->nwl_token = strdup(sr.device_token);
            }
            statedb_reg_free(&sr);
            log_dev(LOG_INFO, d->conf.product_key, d->conf.device_name,
                    "using stored registration");
        }
    }
    if (d->secret || d->nwl_token) {
        pace_enqueue(d);
        return;
    }
    set_state(d, DEV_REGISTERING, 0, NULL);
    if (d->conf.reg == REG_HTTPS) {
        struct dynreg_request req = {.url = R.register_url,
                                     .ca_file = d->conf.ca_file,
                                     .verify_hostname = d->conf.verify_hostname,
                                     .product_key = d->conf.product_key,
                                     .device_name = d->conf.device_name,
                                     .product_secret = d->conf.product_secret,
                                     .method = d->conf.sign_method};
        int rc = dynreg_https_start(R.loop, &req, https_registered, (void *)(uintptr_t)sid_of(d));
        if (rc < 0)
            registration_failed(d, rc, NULL);
    } else {
        start_mqtt_registration(d);
    }
}

/* ---- session events ---------------------------------------------------------------------- */

/* Takeovers of d's session by another login within the last hour. */
static unsigned takeovers_last_hour(const struct device *d)
{
    uint64_t now = uv_now(R.loop);
    unsigned n = 0, kept = d->n_takeovers < TAKEOVER_RING ? d->n_takeovers : TAKEOVER_RING;
    for (unsigned i = 0; i < kept; i++)
        if (now - d->takeovers[i] < 3600 * 1000)
            n++;
    return n;
}

static void record_takeover(struct device *d, uint64_t at)
{
    d->takeovers[d->n_takeovers++ % TAKEOVER_RING] = at;
    d->takeovers_added++;
}

/* A session that stays up for the kick window ends the kick back-off's escalation. */
static void on_kick_calm(uv_timer_t *t)
{
    struct device *d = t->data;
    if (d->state != DEV_ONLINE || !d->kick_level)
        return;
    log_dev(LOG_NOTICE, d->conf.product_key, d->conf.device_name,
            "session up for %d s: no other login took it; kick back-off reset",
            KICK_WINDOW_MS / 1000);
    d->kick_level = 0;
}

static void on_connected(struct device *d)
{
    int rc;

    if (d->reg_session)
        return; /* the platform pushes the registration reply; the timer guards it */
    d->n.connects++;
    d->attempt = 0;
    d->online_at_ms = uv_now(R.loop);
    d->last_error = 0;
    d->last_reason[0] = '\0';
    set_state(d, DEV_ONLINE, 0, NULL);
    log_event(LOG_INFO, d->conf.product_key, d->conf.device_name, "online", "online");
    if (d->kick_level) /* the back-off timer is idle while online */
        uv_timer_start(&d->timer, on_kick_calm, KICK_WINDOW_MS, 0);
    memset(d->sub_refused, 0, d->n_subs * sizeof(*d->sub_refused));
    for (size_t i = 0; i < d->n_subs; i += 64) {
        size_t n = d->n_subs - i < 64 ? d->n_subs - i : 64;
        rc = session_subscribe(sid_of(d), d->subs + i, n);
        if (rc < 0)
            log_dev(LOG_WARNING, d->conf.product_key, d->conf.device_name, "subscribe failed: %s",
                    aligw_strerror(rc));
    }
    d->epoch++;
    d->sent_upto = 0;
    d->conn_first_seq = 0;
    d->conn_acked = false;
    inflight_add(d, -d->inflight);
    forward(d);
}

/* A connect that failed before any CONNACK, on the network: the usual short back-off. */
static void connect_failed_network(struct device *d, int code, const char *msg)
{
    d->last_error = code;
    set_reason(d, "connect failed: %s%s%s",
               code == -EAGAIN ? "server unavailable" : aligw_strerror(code), msg ? ": " : "",
               msg ? msg : "");
    log_event(LOG_INFO, d->conf.product_key, d->conf.device_name, "connect_failed", "%s",
              d->last_reason);
    backoff(d, DEV_BACKOFF, R.backoff_min_ms, R.backoff_max_ms);
}

/*
 * What tlsprobe found for a TLS device whose connect failed before CONNACK. A certificate or
 * handshake failure does not fix itself in a second (a wrong CA file or host name, a proxy or
 * captive portal in the path): it is logged as a warning and backs off from where network
 * failures stop (backoff_max_ms), doubling to an hour, in state tls-failed.
 */
static void tls_verdict(struct device *d, int code, const char *msg,
                        const struct tlsprobe_result *r)
{
    if (r->status == ALIGW_ETLS) {
        d->last_error = ALIGW_ETLS;
        set_reason(d, "TLS: %s", r->reason);
        uint64_t delay = backoff_n(d, DEV_TLS_FAILED, R.backoff_max_ms, AUTH_BACKOFF_CAP_MS,
                                   next_attempt(d, DEV_TLS_FAILED));
        log_dev(LOG_WARNING, d->conf.product_key, d->conf.device_name, "%s; next attempt in %.1f s",
                d->last_reason, (double)delay / 1000.0);
    } else if (r->status < 0) {
        connect_failed_network(d, r->status, r->reason);
    } else {
        connect_failed_network(d, code, msg); /* TLS is fine: Paho's own words */
    }
}

struct tls_wait {
    uint64_t sid;
    int code;
    char msg[200];
};

static void tls_probed(void *arg, const struct tlsprobe_result *r)
{
    struct tls_wait *w = arg;
    struct device *d = by_sid(w->sid);
    if (d && d->state == DEV_CONNECTING) /* not removed or restarted meanwhile */
        tls_verdict(d, w->code, w->msg[0] ? w->msg : NULL, r);
    free(w);
}

static void diagnose_tls(struct device *d, int code, const char *msg)
{
    struct tlsprobe_target t = {.host = d->conf.host,
                                .port = d->conf.port,
                                .ca_file = d->conf.ca_file,
                                .verify_hostname = d->conf.verify_hostname,
                                .timeout_ms = 5000};
    struct tlsprobe_result r;
    struct tls_wait *w;

    if (tlsprobe_cached(R.loop, &t, &r)) {
        tls_verdict(d, code, msg, &r);
        return;
    }
    w = calloc(1, sizeof(*w));
    if (w) {
        w->sid = sid_of(d);
        w->code = code;
        snprintf(w->msg, sizeof(w->msg), "%s", msg ? msg : "");
        if (tlsprobe_start(R.loop, &t, tls_probed, w) == 0)
            return; /* stays "connecting" until the probe answers (at most ~10 s) */
        free(w);
    }
    connect_failed_network(d, code, msg);
}

static void on_connect_failed(struct device *d, int code, const char *msg)
{
    uv_timer_stop(&d->timer);
    if (d->reg_session) {
        close_session(d);
        registration_failed(d, code == ALIGW_EAUTH ? ALIGW_EAUTH : -ECONNREFUSED, NULL);
        return;
    }
    if (code == ALIGW_EAUTH) {
        d->n.auth_failures++;
        d->last_error = ALIGW_EAUTH;
        set_reason(d, "login refused (%s); check the device secret", msg ? msg : "refused");
        log_event(LOG_WARNING, d->conf.product_key, d->conf.device_name, "auth_refused", "%s",
                  d->last_reason);
        /* A fresh session next time: the clientId and password may change (timestamp). */
        close_session(d);
        backoff(d, DEV_AUTH_REFUSED, R.auth_backoff_ms, AUTH_BACKOFF_CAP_MS);
        return;
    }
    d->quick_losses = 0; /* the endpoint was away: the last loss was not a kick */
    if (d->conf.tls && (code == -ECONNREFUSED || code == ALIGW_ETLS)) {
        diagnose_tls(d, code, msg);
        return;
    }
    connect_failed_network(d, code, msg);
}

/*
 * A mass loss is known only at its MASS_LOSS_DEVICES-th session: the devices lost before it in
 * the same window were judged alone. Their loss does not count towards a kick after all, and
 * one already called kicked for it goes back to the ordinary back-off.
 */
static void forgive_first_losses(void)
{
    for (int i = 0; i < MASS_LOSS_DEVICES - 1; i++) {
        uint32_t slot = R.first_lost[i].slot;
        struct device *d = slot < R.n_slots ? R.slots[slot] : NULL;
        if (!d || d->serial != R.first_lost[i].serial)
            continue;
        d->quick_losses = 0;
        if (d->state == DEV_KICKED) {
            d->n.kicks--;
            if (d->kick_level)
                d->kick_level--;
            d->n_takeovers -=
                d->takeovers_added < d->n_takeovers ? d->takeovers_added : d->n_takeovers;
            d->takeovers_added = 0;
            d->last_error = -ECONNRESET;
            set_reason(d, "connection lost (with other devices at the same time)");
            uv_timer_stop(&d->timer);
            d->attempt = 0;
            backoff(d, DEV_BACKOFF, R.backoff_min_ms, R.backoff_max_ms);
        }
    }
}

static void on_lost(struct device *d, const char *cause)
{
    uint64_t now = uv_now(R.loop);

    if (d->reg_session) {
        uv_timer_stop(&d->timer);
        close_session(d);
        registration_failed(d, -ECONNRESET, NULL);
        return;
    }
    d->n.disconnects++;
    int inflight = d->inflight;
    /*
     * The next login gets a new Paho client. Reusing this one is not safe with clean_session
     * off: Paho keeps the lost connection's publishes awaiting PUBACK, drops their messages when
     * the server has no session (sessionPresent 0) but not their completion records, and can
     * then give a new publish the same packet id; that PUBACK completed the old record, so a
     * message never sent was deleted from the outbox (seen with bench/soak, broker restarts).
     */
    close_session(d);
    d->epoch++;
    /*
     * MQTT 3.1.1 gives no reason when the platform closes a session, so a kick is inferred: the
     * session was taken away twice within a minute, each time after a login had been accepted,
     * with no refused connect in between (see on_connect_failed). Losses of many devices at
     * once are the endpoint going away (a restart, a network fault), not a kick, and a network
     * fault shows as failed connects, which back off normally.
     */
    if (R.losses_at_ms + MASS_LOSS_MS < now) {
        R.losses_at_ms = now;
        R.losses = 0;
    }
    bool mass = ++R.losses >= MASS_LOSS_DEVICES;
    if (!mass) {
        R.first_lost[R.losses - 1].serial = d->serial;
        R.first_lost[R.losses - 1].slot = d->slot;
    } else if (R.losses == MASS_LOSS_DEVICES) {
        forgive_first_losses();
    }
    uint64_t up_ms = now - d->online_at_ms;
    uv_timer_stop(&d->timer); /* the kick-calm timer, if it was running */
    if (d->kick_level && (mass || up_ms >= KICK_WINDOW_MS))
        d->kick_level = 0; /* the last session outlived the window: not kicked any more */
    if (mass || !d->quick_losses || now - d->first_loss_ms > KICK_WINDOW_MS) {
        d->quick_losses = 0;
        d->first_loss_ms = now;
    }
    /*
     * A message the platform refuses shows as the session closed right after it (MQTT 3.1.1 has
     * no negative PUBACK): a session lost with messages in flight and none acknowledged puts the
     * device in probe mode, where the oldest message goes out alone; DEAD_STRIKES sessions lost
     * with it alone unacknowledged and it is set aside, so it cannot block the queue for ever.
     * A kick or a network fault lands with one message in flight for a few milliseconds at most,
     * so it rarely strikes, and any PUBACK clears the count.
     */
    bool strike = false, others = mass;
    if (mass) { /* a "mass" loss made of this device's own quick losses is not the endpoint */
        others = false;
        for (int i = 0; i < MASS_LOSS_DEVICES - 1; i++)
            if (R.first_lost[i].slot != d->slot || R.first_lost[i].serial != d->serial)
                others = true;
    }
    if (!others && inflight > 0 && !d->conn_acked && d->conn_first_seq > 0) {
        if (d->probe && d->suspect_seq == d->conn_first_seq) {
            strike = true;
            if (++d->strikes >= DEAD_STRIKES) {
                char topic[128] = "?";
                struct outbox_msg m;
                size_t n = 0;
                if (outbox_peek(R.ob, d->key, d->suspect_seq - 1, &m, 1, &n) == 0 && n == 1) {
                    if (m.seq == d->suspect_seq) /* not when it was acked meanwhile */
                        snprintf(topic, sizeof(topic), "%s", m.topic);
                    outbox_msg_free(&m);
                }
                dead_letter(d, d->suspect_seq, topic,
                            "the platform closed the session right after it, 3 times with it "
                            "alone in flight (a topic or payload it refuses)");
                d->probe = false;
                d->strikes = 0;
                d->suspect_seq = 0;
            }
        } else {
            strike = true; /* not a kick either: the message is the suspect */
            d->probe = true;
            d->suspect_seq = d->conn_first_seq;
            d->strikes = 0;
        }
    }
    if (!mass && !strike)
        d->quick_losses++;
    /*
     * Kicked: two quick losses, or, once kicked, any session that did not outlive the window.
     * The back-off keeps doubling from kick_backoff_ms (to an hour) until one does; resetting it
     * at every login, as before, let a rival that logs in again after each loss hold aligwd to a
     * fixed rate of takeovers for ever.
     */
    if (d->quick_losses >= 2 || (d->kick_level && !mass && !strike)) {
        d->takeovers_added = 0;
        if (!d->kick_level)
            record_takeover(d, d->first_loss_ms);
        record_takeover(d, now);
        d->n.kicks++;
        d->last_error = ALIGW_EKICKED;
        set_reason(d,
                   "session taken over %u time(s) in the last hour, the last after %.1f s online: "
                   "another client is probably logged in as this device",
                   takeovers_last_hour(d), (double)up_ms / 1000.0);
        d->quick_losses = 0;
        d->backoff_kind = DEV_KICKED;
        d->attempt = 0;
        uint64_t delay =
            backoff_n(d, DEV_KICKED, R.kick_backoff_ms, AUTH_BACKOFF_CAP_MS, d->kick_level++);
        log_event(LOG_WARNING, d->conf.product_key, d->conf.device_name, "kicked",
                  "%s; kick back-off %d: next login in %.1f s", d->last_reason, d->kick_level,
                  (double)delay / 1000.0);
        return;
    }
    d->last_error = -ECONNRESET;
    set_reason(d, "connection lost%s%s", cause ? ": " : "", cause ? cause : "");
    log_event(LOG_INFO, d->conf.product_key, d->conf.device_name, "lost", "%s", d->last_reason);
    backoff(d, DEV_BACKOFF, R.backoff_min_ms, R.backoff_max_ms);
}

static void on_message(struct device *d, const char *topic, const void *payload, size_t len)
{
    if (d->reg_session) {
        struct dynreg_result r;
        int rc = dynreg_parse_mqtt_reply(topic, payload, len, &r);
        if (rc < 0) {
            log_dev(LOG_WARNING, d->conf.product_key, d->conf.device_name,
                    "unexpected message on %s during registration", topic);
            return;
        }
        uv_timer_stop(&d->timer);
        close_session(d);
        registered(d, &r);
        memset(&r, 0, sizeof(r));
        return;
    }
    d->n.msgs_in++;
    if (is_throttle_reply(topic, payload, len))
        throttled(d);
    if (R.hooks.downlink)
        R.hooks.downlink(R.hooks.ctx, d, topic, payload, len);
}

static void wake_room_waiters(void)
{
    uint64_t sid;
    size_t n = R.room.len;

    while (n-- && R.total_inflight < R.inflight_total && sidq_pop(&R.room, &sid)) {
        struct device *d = by_sid(sid);
        if (!d)
            continue;
        d->waiting_room = false;
        forward(d);
    }
}

static void on_published(struct device *d, uint64_t ref, bool ok)
{
    if (ref == REF_NOT_STORED)
        return; /* devices_publish_now: nothing to acknowledge */
    int64_t seq = (int64_t)(ref & 0xffffffffffffULL);
    bool current = (uint16_t)(ref >> 48) == d->epoch;

    if (ok) {
        /* The message keeps its place in the window until its delete is committed: a crash
         * before that sends it again, and the window is what bounds those duplicates. */
        int64_t ticket = outbox_ack(R.ob, d->key, seq);
        if (ticket > 0 && ackq_push(&R.acking, d, ticket) == 0)
            d->acking++;
        /* The outbox holds deletes back briefly to commit them with the next appends; once a
         * quarter of the window waits for its delete, the refill waits for it: commit now. */
        if (d->acking >= (window_of(d) + 3) / 4)
            outbox_flush(R.ob);
        d->n.msgs_out++;
    }
    if (!current)
        return;
    inflight_add(d, -1);
    if (ok) {
        d->ack_progress_ms = uv_now(R.loop);
        d->conn_acked = true;
        d->probe = false;
        d->strikes = 0;
    } else {
        /* Not delivered on a live connection: start again from the oldest unacked message. */
        d->epoch++;
        d->sent_upto = 0;
        inflight_add(d, -d->inflight);
    }
    forward(d);
    if (R.room.len)
        wake_room_waiters();
}

/* The outbox committed the deletes of every ack up to ticket: their window places are free. */
static void on_settled(void *arg, int64_t ticket)
{
    struct ackq *q = &R.acking;
    while (q->len && q->v[q->head].ticket <= ticket) {
        struct ackrun r = q->v[q->head];
        q->head = (q->head + 1) % q->cap;
        q->len--;
        struct device *d = r.slot < R.n_slots ? R.slots[r.slot] : NULL;
        if (!d || d->serial != r.serial)
            continue; /* removed since */
        d->acking -= r.n;
        forward(d);
    }
}

/*
 * The acknowledgement watchdog. A connection that answers pings but stops acknowledging
 * publishes (a platform-side throttle or fault) would keep a device's window, and its share of
 * store.inflight_total, in flight for ever, so other devices could wait for room. A device with
 * messages in flight and no PUBACK for cloud.ack_timeout_ms gets its session closed and opened
 * again after the usual back-off; the unacknowledged messages are sent again, in order.
 */
static void ack_timed_out(struct device *d)
{
    int n = d->inflight;
    d->n.ack_timeouts++;
    d->last_error = -ETIMEDOUT;
    set_reason(d, "%d message(s) in flight and no acknowledgement for %.1f s: reconnecting", n,
               R.ack_timeout_ms / 1000.0);
    log_dev(LOG_WARNING, d->conf.product_key, d->conf.device_name, "%s", d->last_reason);
    close_session(d); /* releases the window */
    d->epoch++;
    backoff(d, DEV_BACKOFF, R.backoff_min_ms, R.backoff_max_ms);
}

static void on_ack_timer(uv_timer_t *t)
{
    uint64_t now = uv_now(R.loop);
    bool released = false;

    for (size_t i = 0; i < R.n_slots; i++) {
        struct device *d = R.slots[i];
        if (d && d->state == DEV_ONLINE && d->inflight > 0 &&
            now - d->ack_progress_ms >= (uint64_t)R.ack_timeout_ms) {
            ack_timed_out(d);
            released = true;
        }
    }
    if (released && R.room.len)
        wake_room_waiters();
}

static void set_ack_timeout(int ms)
{
    R.ack_timeout_ms = ms;
    if (ms <= 0) {
        uv_timer_stop(&R.ack_timer);
        return;
    }
    uint64_t every = (uint64_t)ms / 4;
    every = every < 100 ? 100 : every > 5000 ? 5000 : every;
    uv_timer_start(&R.ack_timer, on_ack_timer, every, every);
}

static void session_event(void *arg, const struct session_event *ev)
{
    struct device *d = by_sid(ev->id);

    if (!d)
        return;
    switch (ev->kind) {
    case SESSION_CONNECTED:
        on_connected(d);
        break;
    case SESSION_CONNECT_FAILED:
        on_connect_failed(d, ev->code, ev->message);
        break;
    case SESSION_LOST:
        on_lost(d, ev->message);
        break;
    case SESSION_PUBLISHED:
    case SESSION_PUBLISH_FAILED:
        on_published(d, ev->ref, ev->kind == SESSION_PUBLISHED);
        break;
    case SESSION_SUBSCRIBED:
        if (ev->code < 0 && ev->index < d->n_subs) {
            d->sub_refused[ev->index] = true;
            d->n.sub_refused++;
            log_dev(LOG_WARNING, d->conf.product_key, d->conf.device_name,
                    "subscription to %s refused by the platform", d->subs[ev->index]);
        }
        break;
    case SESSION_MESSAGE:
        on_message(d, ev->topic, ev->payload, ev->len);
        break;
    }
}

/* ---- forwarder --------------------------------------------------------------------------- */

static void on_fwd_timer(uv_timer_t *t)
{
    forward(t->data);
}

/* Takes a token of the device's bucket; false (and a timer to try again) when it must wait. */
static bool take_token(struct device *d)
{
    uint64_t wait = ratelimit_take(&d->rl, d->conf.rate, uv_now(R.loop));
    if (wait)
        uv_timer_start(&d->fwd_timer, on_fwd_timer, wait, 0);
    return wait == 0;
}

/*
 * An outbox read failed: never a silent stall. Counted, shown as the device's last error, logged
 * (at most every STORE_LOG_MS per device) and tried again shortly. A damaged outbox stops the
 * daemon through the outbox's damage callback (main.c); nothing is retried then.
 */
static void store_failed(struct device *d, int rc)
{
    struct outbox_health h;
    uint64_t now = uv_now(R.loop);

    outbox_health(R.ob, &h);
    d->n.store_errors++;
    d->last_error = rc;
    set_reason(d, "cannot read queued messages from the outbox: %s",
               h.last_error[0] ? h.last_error : aligw_strerror(rc));
    if (d->n.store_errors == 1 || now - d->store_err_log_ms >= STORE_LOG_MS) {
        log_dev(LOG_ERR, d->conf.product_key, d->conf.device_name, "%s (%llu time(s))",
                d->last_reason, (unsigned long long)d->n.store_errors);
        d->store_err_log_ms = now;
    }
    if (!h.damaged)
        uv_timer_start(&d->fwd_timer, on_fwd_timer, STORE_RETRY_MS, 0);
}

/* Sets message seq aside (the outbox keeps it with the reason; status shows it) and goes on. */
static void dead_letter(struct device *d, int64_t seq, const char *topic, const char *reason)
{
    int rc = outbox_dead_letter(R.ob, seq, reason);
    if (rc < 0) {
        log_dev(LOG_ERR, d->conf.product_key, d->conf.device_name,
                "cannot set message %lld aside: %s", (long long)seq, aligw_strerror(rc));
        return;
    }
    d->n.dead_letters++;
    set_reason(d, "message %lld on %.80s set aside as a dead letter: %s", (long long)seq, topic,
               reason);
    log_dev(LOG_ERR, d->conf.product_key, d->conf.device_name, "%s", d->last_reason);
}

/*
 * The platform refused an uplink with code 429 (over its per-device limit): halve the device's
 * rate (ratelimit.h), so a limit lower than configured is learnt. The
 * refused message itself is gone: the platform acknowledged it before refusing it.
 */
static void throttled(struct device *d)
{
    double before, after;
    d->n.throttled++;
    if (ratelimit_throttled(&d->rl, d->conf.rate, uv_now(R.loop), &before, &after))
        log_dev(LOG_NOTICE, d->conf.product_key, d->conf.device_name,
                "the platform throttled this device (code 429): uplink rate %.1f -> %.1f msg/s "
                "(configured %.1f; +1 msg/s every %d s without a 429)",
                before, after, d->conf.rate, RATELIMIT_RECOVER_MS / 1000);
}

/* Whether a downlink is a /sys/…_reply with code 429 (parsed only when it may be one). */
static bool is_throttle_reply(const char *topic, const void *payload, size_t len)
{
    size_t tl = strlen(topic);
    if (strncmp(topic, "/sys/", 5) != 0 || tl < 6 || strcmp(topic + tl - 6, "_reply") != 0 ||
        !memmem(payload, len, "429", 3))
        return false;
    json_t *root = json_loadb(payload, len, 0, NULL);
    json_t *code = json_object_get(root, "code");
    bool yes = (json_is_integer(code) && json_integer_value(code) == 429) ||
               (json_is_string(code) && strcmp(json_string_value(code), "429") == 0);
    json_decref(root);
    return yes;
}

static void forward(struct device *d)
{
    struct outbox_msg m[FWD_BATCH];
    size_t n, i;
    int rc;

    /* Refill the window in batches, once a quarter of it is acknowledged: one outbox read per
     * quarter window instead of one per PUBACK, while most of the window stays in flight. */
    int win = window_of(d);
    if (d->inflight + d->acking > win - (win + 3) / 4)
        return;
    while (d->state == DEV_ONLINE && d->inflight + d->acking < win) {
        if (R.total_inflight >= R.inflight_total) {
            if (!d->waiting_room && sidq_push(&R.room, sid_of(d)) == 0)
                d->waiting_room = true;
            return;
        }
        size_t want = (size_t)(win - d->inflight - d->acking);
        if (want > FWD_BATCH)
            want = FWD_BATCH;
        rc = outbox_peek(R.ob, d->key, d->sent_upto, m, want, &n);
        if (rc < 0) {
            store_failed(d, rc);
            return;
        }
        if (n == 0)
            return;
        for (i = 0; i < n; i++) {
            if (!alink_topic_owned(d->conf.product_key, d->conf.device_name, m[i].topic,
                                   ALINK_PUBLISH)) {
                /* Queued before the topic check existed, or by a path that skipped it: the
                 * platform would close the session on it, every time. */
                dead_letter(d, m[i].seq, m[i].topic,
                            "not a topic this device may publish on (platform topic grammar)");
                d->sent_upto = m[i].seq;
                continue;
            }
            if (d->state != DEV_ONLINE || !take_token(d))
                break;
            uint64_t ref = (uint64_t)d->epoch << 48 | (uint64_t)m[i].seq;
            rc = session_publish(sid_of(d), m[i].topic, m[i].payload, m[i].len, m[i].qos, ref);
            if (rc < 0) { /* not queued (out of memory): try again shortly */
                ratelimit_untake(&d->rl);
                uv_timer_start(&d->fwd_timer, on_fwd_timer, 100, 0);
                break;
            }
            d->sent_upto = m[i].seq;
            if (!d->conn_first_seq)
                d->conn_first_seq = m[i].seq;
            d->n.msgs_sent++;
            inflight_add(d, 1);
        }
        bool stopped = i < n;
        for (size_t k = 0; k < n; k++)
            outbox_msg_free(&m[k]);
        if (stopped)
            return;
    }
}

int devices_publish_now(struct device *d, const char *topic, const char *payload)
{
    if (d->state != DEV_ONLINE)
        return -ENOTCONN;
    return session_publish(sid_of(d), topic, payload, strlen(payload), 0, REF_NOT_STORED);
}

void devices_outbox_ready(const char *key)
{
    struct device *d = strmap_get(&R.by_key, key);
    if (d)
        forward(d);
}

/* ---- registry ---------------------------------------------------------------------------- */

/* The system topics, the RRPC forms announced with ext_rrpc, then the device's own topics. */
static int build_subscriptions(struct device *d)
{
    char **sys = NULL, **rrpc = NULL;
    size_t n_sys = 0, n_rrpc = 0;
    int rc = alink_system_topics(d->conf.product_key, d->conf.device_name, &sys, &n_sys);

    if (rc == 0 && d->conf.ext_rrpc)
        rc = alink_ext_rrpc_topics(d->conf.product_key, d->conf.device_name, d->conf.topics,
                                   d->conf.n_topics, &rrpc, &n_rrpc);
    if (rc < 0) {
        alink_topics_free(sys);
        return rc;
    }
    d->n_subs = n_sys + n_rrpc + d->conf.n_topics;
    d->subs = calloc(d->n_subs ? d->n_subs : 1, sizeof(*d->subs));
    d->sub_refused = calloc(d->n_subs ? d->n_subs : 1, sizeof(*d->sub_refused));
    if (!d->subs || !d->sub_refused) {
        alink_topics_free(sys);
        alink_topics_free(rrpc);
        return -ENOMEM;
    }
    for (size_t i = 0; i < n_sys; i++)
        d->subs[i] = sys[i];
    for (size_t i = 0; i < n_rrpc; i++)
        d->subs[n_sys + i] = rrpc[i];
    free(sys);
    free(rrpc);
    for (size_t i = 0; i < d->conf.n_topics; i++) {
        d->subs[n_sys + n_rrpc + i] = strdup(d->conf.topics[i]);
        if (!d->subs[n_sys + n_rrpc + i])
            return -ENOMEM;
    }
    return 0;
}

static void device_free(struct device *d)
{
    for (size_t i = 0; i < d->n_subs; i++)
        free(d->subs[i]);
    free(d->subs);
    free(d->sub_refused);
    wipe_free(d->secret);
    wipe_free(d->nwl_client_id);
    wipe_free(d->nwl_token);
    config_device_conf_free(&d->conf);
    free(d);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct device *d = h->data;
    if (--d->open_handles == 0)
        device_free(d);
}

static int slot_alloc(struct device *d)
{
    for (size_t i = 0; i < R.n_slots; i++) {
        if (!R.slots[i]) {
            d->slot = (uint32_t)i;
            goto found;
        }
    }
    if (R.n_slots == R.cap_slots) {
        size_t ncap = R.cap_slots ? R.cap_slots * 2 : 1024;
        struct device **ns = realloc(R.slots, ncap * sizeof(*ns));
        if (!ns)
            return -ENOMEM;
        R.slots = ns;
        uint32_t *ng = realloc(R.gens, ncap * sizeof(*ng));
        if (!ng)
            return -ENOMEM;
        R.gens = ng;
        R.cap_slots = ncap;
    }
    d->slot = (uint32_t)R.n_slots;
    R.gens[R.n_slots] = 0;
    R.slots[R.n_slots++] = NULL;
found:
    d->serial = ++R.serials;
    d->gen = ++R.gens[d->slot];
    R.slots[d->slot] = d;
    return 0;
}

static int device_new(const struct device_conf *dc, struct device **out)
{
    struct device *d = calloc(1, sizeof(*d));
    int rc;

    if (!d)
        return -ENOMEM;
    rc = config_device_conf_copy(&d->conf, dc);
    if (rc < 0) {
        free(d);
        return rc;
    }
    snprintf(d->key, sizeof(d->key), "%s/%s", dc->product_key, dc->device_name);
    if (dc->device_secret && !(d->secret = strdup(dc->device_secret)))
        rc = -ENOMEM;
    if (rc == 0)
        rc = build_subscriptions(d);
    if (rc == 0)
        rc = slot_alloc(d);
    if (rc < 0) {
        device_free(d);
        return rc;
    }
    ratelimit_init(&d->rl, d->conf.rate, uv_now(R.loop));
    d->since_ms = wall_ms();
    uv_timer_init(R.loop, &d->timer);
    uv_timer_init(R.loop, &d->fwd_timer);
    d->timer.data = d->fwd_timer.data = d;
    d->open_handles = 2;
    strmap_put(&R.by_key, d->key, d);
    outbox_set_device_cap(R.ob, d->key, d->conf.max_bytes); /* its share of the outbox */
    R.count++;
    *out = d;
    return 0;
}

static void counters_add(struct device_counters *to, const struct device_counters *c)
{
    to->connects += c->connects;
    to->disconnects += c->disconnects;
    to->msgs_in += c->msgs_in;
    to->msgs_sent += c->msgs_sent;
    to->msgs_out += c->msgs_out;
    to->auth_failures += c->auth_failures;
    to->kicks += c->kicks;
    to->sub_refused += c->sub_refused;
    to->ack_timeouts += c->ack_timeouts;
    to->store_errors += c->store_errors;
    to->dead_letters += c->dead_letters;
    to->throttled += c->throttled;
}

static void device_stop(struct device *d)
{
    if (R.hooks.removed)
        R.hooks.removed(R.hooks.ctx, d);
    counters_add(&R.gone, &d->n);
    close_session(d);
    if (d->state == DEV_ONLINE)
        R.online--;
    d->state = DEV_OFFLINE;
    strmap_del(&R.by_key, d->key);
    R.slots[d->slot] = NULL;
    R.count--;
    /* uv_close stops them too, but inside libuv, out of sight of test_devices' fake clock */
    uv_timer_stop(&d->timer);
    uv_timer_stop(&d->fwd_timer);
    uv_close((uv_handle_t *)&d->timer, on_handle_closed);
    uv_close((uv_handle_t *)&d->fwd_timer, on_handle_closed);
}

static void copy_settings(const struct config *c)
{
    free(R.instance_id);
    free(R.register_url);
    R.instance_id =
        c->cloud.instance_id && *c->cloud.instance_id ? strdup(c->cloud.instance_id) : NULL;
    R.register_url = c->cloud.register_url ? strdup(c->cloud.register_url) : NULL;
    R.backoff_min_ms = c->cloud.backoff_min_ms;
    R.backoff_max_ms = c->cloud.backoff_max_ms;
    R.auth_backoff_ms = c->cloud.auth_backoff_ms;
    R.kick_backoff_ms = c->cloud.kick_backoff_ms;
    R.window = c->store.inflight > 0 ? c->store.inflight : 32;
    R.inflight_total = c->store.inflight_total > 0 ? c->store.inflight_total : 2048;
    set_connect_rate(c->cloud.connect_rate, c->cloud.connect_burst);
    set_ack_timeout(c->cloud.ack_timeout_ms);
}

/*
 * Session shards for the configured fleet: none while it fits one shard (a small gateway keeps
 * one process), else enough for cloud.devices_per_shard each, at most cloud.max_shards (by
 * default two per online CPU: each shard carries its own Paho, threads and heap, about 7 MB, and
 * more shards than cores buy little CPU; bench/README.md). Fixed until a restart: devices added
 * by a reload are spread over the shards there are.
 */
static unsigned shards_for(const struct config *c)
{
    size_t per = (size_t)c->cloud.devices_per_shard;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    size_t max =
        c->cloud.max_shards ? (size_t)c->cloud.max_shards : (size_t)(cpus > 0 ? cpus : 1) * 2;
    if (!per || c->n_devices <= per || max < 2)
        return 0;
    size_t n = (c->n_devices + per - 1) / per;
    return n > max ? (unsigned)max : (unsigned)n;
}

int devices_init(uv_loop_t *loop, const struct config *c, struct outbox *ob, struct statedb *db,
                 const struct devices_hooks *hooks)
{
    int rc;

    memset(&R, 0, sizeof(R));
    R.loop = loop;
    R.ob = ob;
    outbox_on_settled(ob, on_settled, NULL);
    R.db = db;
    R.hooks = *hooks;
    strmap_init(&R.by_key);
    jitter_seed();
    uv_timer_init(loop, &R.pace_timer);
    uv_timer_init(loop, &R.ack_timer);
    struct session_layer_opts so = {.shards = shards_for(c)};
    rc = session_layer_init(loop, session_event, NULL, &so);
    if (rc < 0)
        return rc;
    if (c->cloud.network_watch && (rc = netwatch_start(loop, on_network_changed, NULL)) < 0)
        log_write(LOG_WARNING,
                  "network: cannot watch routes (%s): devices try to connect without a route",
                  strerror(-rc));
    R.ready = true;
    return devices_apply(c);
}

static bool str_eq(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* Whether a running device must be restarted to pick up dc. */
static bool conf_changed(const struct device_conf *a, const struct device_conf *b)
{
    if (!str_eq(a->device_secret, b->device_secret) ||
        !str_eq(a->product_secret, b->product_secret) || a->reg != b->reg ||
        !str_eq(a->client_id, b->client_id) || !str_eq(a->host, b->host) || a->port != b->port ||
        a->tls != b->tls || !str_eq(a->ca_file, b->ca_file) ||
        a->verify_hostname != b->verify_hostname || a->securemode != b->securemode ||
        a->sign_method != b->sign_method || a->timestamp != b->timestamp ||
        a->keepalive != b->keepalive || a->clean_session != b->clean_session ||
        a->ext_rrpc != b->ext_rrpc || a->n_topics != b->n_topics)
        return true;
    for (size_t i = 0; i < a->n_topics; i++)
        if (strcmp(a->topics[i], b->topics[i]) != 0)
            return true;
    return false;
}

static int start_new(const struct device_conf *dc)
{
    struct device *d;
    int rc = device_new(dc, &d);
    if (rc < 0) {
        log_dev(LOG_ERR, dc->product_key, dc->device_name, "cannot add device: %s",
                aligw_strerror(rc));
        return rc;
    }
    begin(d);
    return 0;
}

int devices_apply(const struct config *c)
{
    struct strmap keep;
    char key[80];
    size_t added = 0, removed = 0, restarted = 0;

    copy_settings(c);
    strmap_init(&keep);
    for (size_t i = 0; i < c->n_devices; i++) {
        const struct device_conf *dc = &c->devices[i];
        snprintf(key, sizeof(key), "%s/%s", dc->product_key, dc->device_name);
        struct device *d = strmap_get(&R.by_key, key);
        bool restart = d && conf_changed(&d->conf, dc);
        if (restart) {
            device_stop(d);
            d = NULL;
        }
        if (!d) {
            if (start_new(dc) == 0) {
                if (restart)
                    restarted++;
                else
                    added++;
            }
            d = strmap_get(&R.by_key, key);
        } else {
            d->conf.rate = dc->rate; /* applied without a restart */
            d->conf.max_bytes = dc->max_bytes;
            outbox_set_device_cap(R.ob, d->key, d->conf.max_bytes);
        }
        if (d)
            strmap_put(&keep, d->key, d);
    }
    /* Stop configured devices that are gone; runtime-added ones stay. */
    for (size_t i = 0; i < R.n_slots; i++) {
        struct device *d = R.slots[i];
        if (d && !d->conf.runtime && !strmap_get(&keep, d->key)) {
            struct outbox_stats st;
            if (outbox_device_stats(R.ob, d->key, &st) == 0 && st.count > 0)
                log_notice("%s: removed from the configuration; its %llu queued message(s) are "
                           "kept and delivered if it is configured again",
                           d->key, (unsigned long long)st.count);
            device_stop(d);
            removed++;
        }
    }
    strmap_free(&keep);
    if (added || removed || restarted)
        log_info("devices: %zu added, %zu removed, %zu restarted, %zu in all", added, removed,
                 restarted, R.count);
    return 0;
}

int devices_add(const struct device_conf *dc)
{
    char key[80];
    snprintf(key, sizeof(key), "%s/%s", dc->product_key, dc->device_name);
    if (strmap_get(&R.by_key, key))
        return -EEXIST;
    return start_new(dc);
}

int devices_remove(const char *key)
{
    struct device *d = strmap_get(&R.by_key, key);
    if (!d)
        return ALIGW_ENODEVICE;
    device_stop(d);
    return 0;
}

void devices_close(void)
{
    if (!R.ready)
        return;
    netwatch_stop();
    for (size_t i = 0; i < R.n_slots; i++)
        if (R.slots[i])
            device_stop(R.slots[i]);
    session_layer_close();
    outbox_on_settled(R.ob, NULL, NULL); /* the outbox commits once more while it closes */
    tlsprobe_close();
    uv_close((uv_handle_t *)&R.pace_timer, NULL);
    uv_close((uv_handle_t *)&R.ack_timer, NULL);
    strmap_free(&R.by_key);
    free(R.pace.v);
    free(R.room.v);
    free(R.acking.v);
    memset(&R.acking, 0, sizeof(R.acking));
    free(R.instance_id);
    free(R.register_url);
    R.ready = false;
    /* R.slots and R.gens are freed after the loop has closed the device timers. */
}

void devices_release_memory(void)
{
    free(R.slots);
    free(R.gens);
    R.slots = NULL;
    R.gens = NULL;
    R.n_slots = R.cap_slots = 0;
}

struct device *devices_find(const char *key)
{
    return strmap_get(&R.by_key, key);
}

struct device *devices_find2(const char *pk, const char *dn)
{
    char key[80];
    snprintf(key, sizeof(key), "%s/%s", pk, dn);
    return devices_find(key);
}

size_t devices_count(void)
{
    return R.count;
}

void devices_set_session_limit(size_t max_sessions, unsigned long long fd_limit)
{
    R.max_sessions = max_sessions;
    R.fd_limit = fd_limit;
}

size_t devices_session_limit(unsigned long long *fd_limit)
{
    if (fd_limit)
        *fd_limit = R.fd_limit;
    return R.max_sessions;
}

size_t devices_online(void)
{
    return R.online;
}

void devices_foreach(void (*fn)(struct device *d, void *arg), void *arg)
{
    for (size_t i = 0; i < R.n_slots; i++)
        if (R.slots[i])
            fn(R.slots[i], arg);
}

const char *device_key(const struct device *d)
{
    return d->key;
}

const struct device_conf *device_conf(const struct device *d)
{
    return &d->conf;
}

enum device_state device_state(const struct device *d)
{
    return d->state;
}

uint32_t device_next_alink_id(struct device *d)
{
    return ++d->alink_id;
}

bool device_set_platform_error(struct device *d, const char *text)
{
    if (strncmp(d->platform_error, text, sizeof(d->platform_error) - 1) == 0)
        return false;
    snprintf(d->platform_error, sizeof(d->platform_error), "%s", text);
    return true;
}

int devices_subscribe(const char *pk, const char *dn, const char *filter)
{
    struct device *d = devices_find2(pk, dn);
    char **subs, *copy;
    bool *refused;

    if (!d)
        return ALIGW_ENODEVICE;
    for (size_t i = 0; i < d->n_subs; i++)
        if (strcmp(d->subs[i], filter) == 0)
            return 0;
    subs = realloc(d->subs, (d->n_subs + 1) * sizeof(*subs));
    if (!subs)
        return -ENOMEM;
    d->subs = subs;
    refused = realloc(d->sub_refused, (d->n_subs + 1) * sizeof(*refused));
    if (!refused)
        return -ENOMEM;
    d->sub_refused = refused;
    if (!(copy = strdup(filter)))
        return -ENOMEM;
    d->subs[d->n_subs] = copy;
    d->sub_refused[d->n_subs] = false;
    d->n_subs++;
    if (d->state == DEV_ONLINE)
        return session_subscribe(sid_of(d), &d->subs[d->n_subs - 1], 1);
    return 0; /* subscribed with the others on the next connection */
}

void device_set_field_error(struct device *d, const char *reason)
{
    snprintf(d->field_error, sizeof(d->field_error), "%s", reason ? reason : "");
}

json_t *device_status_json(const struct device *d, bool full)
{
    struct outbox_stats st;
    json_t *o = json_pack("{s:s, s:s, s:I}", "device", d->key, "state", device_state_name(d->state),
                          "since_ms", (json_int_t)d->since_ms);
    if (!o)
        return NULL;
    if (outbox_device_stats(R.ob, d->key, &st) == 0) {
        json_object_set_new(o, "queued", json_integer((json_int_t)st.count));
        json_object_set_new(o, "queued_bytes", json_integer((json_int_t)st.bytes));
        json_object_set_new(o, "accepted", json_integer((json_int_t)st.accepted));
        if (full) {
            json_object_set_new(o, "oldest_ms", json_integer(st.oldest_ms));
            json_object_set_new(o, "dropped", json_integer((json_int_t)st.dropped));
            json_object_set_new(o, "expired", json_integer((json_int_t)st.expired));
        }
    }
    struct outbox_dead dl;
    if (outbox_dead_letters(R.ob, d->key, &dl) == 0 && dl.count > 0) {
        json_object_set_new(o, "dead_letters", json_integer((json_int_t)dl.count));
        if (full)
            json_object_set_new(o, "last_dead_letter",
                                json_pack("{s:I,s:s,s:s,s:I}", "seq", (json_int_t)dl.last_seq,
                                          "topic", dl.last_topic, "reason", dl.last_reason, "at_ms",
                                          (json_int_t)dl.last_ms));
    }
    json_object_set_new(o, "messages_out", json_integer((json_int_t)d->n.msgs_out));
    json_object_set_new(o, "messages_in", json_integer((json_int_t)d->n.msgs_in));
    if (d->field_error[0])
        json_object_set_new(o, "field_error", json_string(d->field_error));
    if (d->platform_error[0])
        json_object_set_new(o, "platform_error", json_string(d->platform_error));
    if (d->last_reason[0])
        json_object_set_new(o, "last_error", json_string(d->last_reason));
    unsigned takeovers = takeovers_last_hour(d);
    if (takeovers || full)
        json_object_set_new(o, "takeovers_last_hour", json_integer(takeovers));
    if (full) {
        json_t *refused = json_array();
        for (size_t i = 0; i < d->n_subs; i++)
            if (d->sub_refused[i])
                json_array_append_new(refused, json_string(d->subs[i]));
        json_object_set_new(o, "refused_topics", refused);
        json_object_set_new(o, "host", json_string(d->conf.host));
        json_object_set_new(o, "port", json_integer(d->conf.port));
        json_object_set_new(o, "tls", json_boolean(d->conf.tls));
        json_object_set_new(o, "inflight", json_integer(d->inflight));
        /* the uplink rate now (msg/s; lower than configured after 429s), 0 = unlimited */
        json_object_set_new(o, "rate",
                            json_real(ratelimit_rate(&d->rl, d->conf.rate, uv_now(R.loop))));
        json_object_set_new(o, "rate_configured", json_real(d->conf.rate));
        json_object_set_new(
            o, "counters",
            json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "connects",
                      (json_int_t)d->n.connects, "disconnects", (json_int_t)d->n.disconnects,
                      "messages_in", (json_int_t)d->n.msgs_in, "messages_out",
                      (json_int_t)d->n.msgs_out, "auth_failures", (json_int_t)d->n.auth_failures,
                      "kicks", (json_int_t)d->n.kicks, "subscriptions_refused",
                      (json_int_t)d->n.sub_refused, "ack_timeouts", (json_int_t)d->n.ack_timeouts,
                      "store_errors", (json_int_t)d->n.store_errors, "dead_letters",
                      (json_int_t)d->n.dead_letters, "throttled", (json_int_t)d->n.throttled));
        if (d->conf.reg != REG_NONE)
            json_object_set_new(o, "registration",
                                json_string(d->secret || d->nwl_token ? "stored" : "pending"));
    }
    return o;
}

void device_get_counters(const struct device *d, struct device_counters *out, int *inflight)
{
    *out = d->n;
    if (inflight)
        *inflight = d->inflight;
}

void devices_get_totals(struct device_totals *t)
{
    memset(t, 0, sizeof(*t));
    t->c = R.gone;
    for (size_t i = 0; i < R.n_slots; i++) {
        const struct device *d = R.slots[i];
        if (!d)
            continue;
        counters_add(&t->c, &d->n);
        t->inflight += d->inflight;
        if (d->state < DEV_STATE_COUNT)
            t->by_state[d->state]++;
    }
}
