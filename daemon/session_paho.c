/*
 * session: Paho MQTTAsync behind a message-style interface (see session.h).
 *
 * Ownership: struct sess lives in a hash table owned by the loop thread. Paho's callbacks get a
 * pointer to an immutable struct cbctx {id, gen} (freed only after MQTTAsync_destroy, after which
 * Paho makes no more calls) or, for a publish or subscribe, a small heap context of their own that
 * the callback frees. Callbacks push a struct qev into the queue and wake the loop; the loop
 * drains it, drops events whose session is gone or was reopened (generation mismatch), and hands
 * the rest to the caller. MQTTAsync_destroy may run pending failure callbacks on the loop thread
 * itself; push() is safe there because the queue lock is never held while calling Paho.
 * Publishes are the one command made from another thread (the caller thread, below).
 */
#include "session_paho.h"

#include "errors.h"
#include "idmap.h"
#include "log.h"

#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <MQTTAsync.h>

struct cbctx {
    uint64_t id;
    uint32_t gen;
    char tls_error[160]; /* OpenSSL's reason for the current connect attempt (under L.mu) */
};

struct sess {
    uint64_t id;
    uint32_t gen;
    MQTTAsync client;
    struct cbctx *ctx;
    char *host, *ca_file, *ca_dir, *client_id, *username, *password;
    struct session_params p; /* strings point at the copies above */
    /* Publishes of this session queued for the caller thread or being handed to Paho by it;
     * closing waits for it to reach 0 (see sess_free). */
    atomic_uint queued;
    bool in_window; /* a TLS connect counted in L.handshakes */
    bool waiting;   /* in the queue of TLS connects waiting for the window */
    struct sess *wprev, *wnext;
};

struct pubctx {
    uint64_t id;
    uint32_t gen;
    uint64_t ref;
};

struct subctx {
    uint64_t id;
    uint32_t gen;
    size_t n;
};

struct qev {
    struct qev *next;
    uint32_t gen;
    struct session_event ev;
};

static struct {
    uv_loop_t *loop;
    uv_async_t async;
    session_event_cb cb;
    void *arg;
    pthread_mutex_t mu;
    struct qev *head, *tail;
    struct idmap table; /* id -> struct sess */
    uint32_t next_gen;
    MQTTAsync keeper; /* never connected: keeps Paho's threads alive between sessions */
    uv_timer_t trim;  /* heap trim after a burst of connects (below) */
    uv_work_t trim_work;
    bool trimming;                      /* trim_work queued or running */
    size_t outcomes;                    /* connect outcomes since the last trim */
    size_t handshakes;                  /* TLS connects handed to Paho, outcome not yet seen */
    struct sess *wait_head, *wait_tail; /* TLS connects waiting for the window */
    bool ready;
} L = {.mu = PTHREAD_MUTEX_INITIALIZER};

/*
 * A burst of connects (start-up, every session lost at once) leaves the heap full of holes:
 * OpenSSL's handshake temporaries, made on Paho's threads between the allocations that stay.
 * Once TRIM_AFTER connects have ended and none for TRIM_QUIET_MS, malloc_trim hands the free
 * pages back: about 8 KB of RSS per TLS device (issue 15's note). It walks every arena, taking
 * each one's lock in turn (60-200 ms with 1,000 TLS devices on the loaded test machine), so it
 * runs on the libuv pool, never on the loop.
 */
#define TRIM_AFTER 64
#define TRIM_QUIET_MS 2000

/*
 * At most TLS_WINDOW TLS connects are handed to Paho at once; the rest wait here, in order.
 * Paho starts a connect's time-out when the connect is queued, and works through handshakes one
 * packet at a time on its two threads: 10,000 connects queued at once took longer than the
 * time-out, failed, were retried and failed again (506 of 10,000 online after 500 s, issue 15's
 * note). With the window each handshake finishes well inside its time-out and none is wasted.
 * Plain TCP connects are cheap and are not held back.
 */
#define TLS_WINDOW 256

/*
 * Publishes go through one "paho caller" thread: MQTTAsync_sendMessage takes Paho's global lock,
 * which Paho's receive thread holds while it handles every packet, so calling it from the loop
 * made the loop wait. The loop queues the command (handle, topic and payload copied) and goes
 * on; the caller thread makes the Paho call and reports a failure as SESSION_PUBLISH_FAILED.
 * paho_close() takes this session's publishes that the caller thread has not picked up yet
 * back out of the queue (they were never sent; the forwarder sends them again on the next
 * connection) and waits only for the ones it is handing over at that moment, so the handle is
 * never used after MQTTAsync_destroy and the loop never waits for other devices' publishes
 * (each of which may wait on Paho's global lock). The daemon closes a session once its
 * connection is lost (devices.c), so a publish queued for one connection can never go out on
 * the next.
 */
#define CALLER_TAKE 64 /* publishes the caller thread takes from its queue at a time */

struct pubcmd {
    struct pubcmd *next;
    struct sess *owner; /* alive until owner->queued is 0 (sess_free waits) */
    MQTTAsync client;
    uint64_t id, ref;
    uint32_t gen;
    int qos;
    size_t tlen, len;
    char data[]; /* topic, NUL, payload */
};

static struct {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cond, done_cond;
    struct pubcmd *head, *tail;
    bool stop, running;
    bool idle; /* the caller thread waits on cond: a publish queued must signal it */
} P = {.mu = PTHREAD_MUTEX_INITIALIZER,
       .cond = PTHREAD_COND_INITIALIZER,
       .done_cond = PTHREAD_COND_INITIALIZER};

static struct sess *table_get(uint64_t id)
{
    return idmap_get(&L.table, id);
}

/* ---- the queue Paho's threads write into ----------------------------------------------- */

static void push(struct qev *e)
{
    e->next = NULL;
    pthread_mutex_lock(&L.mu);
    if (L.tail)
        L.tail->next = e;
    else
        L.head = e;
    L.tail = e;
    pthread_mutex_unlock(&L.mu);
    uv_async_send(&L.async);
}

static struct qev *new_ev(enum session_event_kind kind, uint64_t id, uint32_t gen)
{
    struct qev *e = calloc(1, sizeof(*e));
    if (!e) /* out of memory on a Paho thread: nothing better to do than drop it */
        return NULL;
    e->ev.kind = kind;
    e->ev.id = id;
    e->gen = gen;
    return e;
}

static void free_ev(struct qev *e)
{
    free(e->ev.topic);
    free(e->ev.message);
    free(e->ev.payload);
    free(e);
}

/* Takes every queued event at once (the queue lock is never held while calling out). */
static struct qev *take_all(void)
{
    pthread_mutex_lock(&L.mu);
    struct qev *e = L.head;
    L.head = L.tail = NULL;
    pthread_mutex_unlock(&L.mu);
    return e;
}

static void window_pump(void);

static void trim_run(uv_work_t *w) /* on a pool thread */
{
    uint64_t t0 = uv_hrtime();
    malloc_trim(0);
    *(uint64_t *)w->data = uv_hrtime() - t0;
}

static void trim_done(uv_work_t *w, int status)
{
    L.trimming = false;
    if (status == 0)
        log_debug("heap trimmed after a burst of connects in %.1f ms",
                  (double)*(uint64_t *)w->data / 1e6);
}

static void on_trim(uv_timer_t *t)
{
    static uint64_t took_ns;
    L.outcomes = 0;
    if (L.trimming)
        return;
    L.trim_work.data = &took_ns;
    if (uv_queue_work(L.loop, &L.trim_work, trim_run, trim_done) == 0)
        L.trimming = true;
}

static void drain(uv_async_t *h)
{
    struct qev *e = take_all();
    size_t outcomes = 0;

    while (e) {
        struct qev *next = e->next;
        struct sess *s = table_get(e->ev.id);
        if (e->ev.kind == SESSION_CONNECTED || e->ev.kind == SESSION_CONNECT_FAILED) {
            outcomes++;
            if (s && s->gen == e->gen && s->in_window) {
                s->in_window = false;
                L.handshakes--;
            }
        }
        if (s && s->gen == e->gen)
            L.cb(L.arg, &e->ev);
        free_ev(e);
        e = next;
    }
    window_pump();
    L.outcomes += outcomes;
    if (outcomes && L.outcomes >= TRIM_AFTER)
        uv_timer_start(&L.trim, on_trim, TRIM_QUIET_MS, 0); /* restarts while the burst lasts */
}

/* ---- Paho callbacks: copy, push, return -------------------------------------------------- */

static void on_connect_ok(void *context, MQTTAsync_successData *r)
{
    struct cbctx *c = context;
    struct qev *e = new_ev(SESSION_CONNECTED, c->id, c->gen);
    if (e)
        push(e);
}

/*
 * Paho's ssl_error_cb: OpenSSL's error queue, one line per error, when a TLS call fails (not
 * when its own host name check after the handshake fails). Keeps the first reason of the attempt,
 * "certificate verify failed" out of "error:0A000086:SSL routines:<func>:certificate verify
 * failed:<file>:<line>:".
 */
static int on_ssl_error(const char *str, size_t len, void *u)
{
    struct cbctx *c = u;
    char line[256];
    const char *reason = line;

    snprintf(line, sizeof(line), "%.*s", (int)(len < sizeof(line) ? len : sizeof(line) - 1), str);
    line[strcspn(line, "\r\n")] = '\0';
    if (strncmp(line, "error:", 6) == 0) { /* error:<code>:<lib>:<func>:<reason>[:file:line:] */
        const char *p = line;
        for (int i = 0; i < 4 && p; i++)
            p = strchr(p + 1, ':');
        if (p && p[1])
            reason = p + 1;
    }
    pthread_mutex_lock(&L.mu);
    if (!c->tls_error[0]) {
        size_t n = strcspn(reason, ":");
        snprintf(c->tls_error, sizeof(c->tls_error), "%.*s", (int)n, reason);
    }
    pthread_mutex_unlock(&L.mu);
    return 1;
}

static void on_connect_fail(void *context, MQTTAsync_failureData *r)
{
    struct cbctx *c = context;
    struct qev *e = new_ev(SESSION_CONNECT_FAILED, c->id, c->gen);
    char tls[sizeof(c->tls_error)];
    if (!e)
        return;
    pthread_mutex_lock(&L.mu);
    memcpy(tls, c->tls_error, sizeof(tls));
    pthread_mutex_unlock(&L.mu);
    /* Paho reports a refused CONNACK by its return code (1..5), other failures as negatives:
     * translated here, where they enter, with the detail as text. One that OpenSSL explained
     * is a TLS failure. */
    static const char *const connack[] = {NULL,
                                          "CONNACK 1: unacceptable protocol version",
                                          "CONNACK 2: identifier rejected",
                                          "CONNACK 3: server unavailable",
                                          "CONNACK 4: bad user name or password",
                                          "CONNACK 5: not authorized"};
    int rc = r ? r->code : 0;
    const char *text = r && r->message ? r->message : NULL;
    if (rc == 2 || rc == 4 || rc == 5)
        e->ev.code = ALIGW_EAUTH; /* the platform refused the identity or its credentials */
    else if (rc == 3)
        e->ev.code = -EAGAIN;
    else if (rc == 1)
        e->ev.code = ALIGW_EPROTO;
    else
        e->ev.code = tls[0] ? ALIGW_ETLS : -ECONNREFUSED;
    if (rc >= 1 && rc <= 5)
        text = connack[rc];
    if (e->ev.code == ALIGW_ETLS) {
        if (asprintf(&e->ev.message, "%s (OpenSSL: %s)", text ? text : "TLS connect failure", tls) <
            0)
            e->ev.message = NULL;
    } else if (text) {
        e->ev.message = strdup(text);
    }
    push(e);
}

static void on_lost(void *context, char *cause)
{
    struct cbctx *c = context;
    struct qev *e = new_ev(SESSION_LOST, c->id, c->gen);
    if (e) {
        e->ev.code = -ECONNRESET;
        if (cause)
            e->ev.message = strdup(cause);
        push(e);
    }
    if (cause)
        MQTTAsync_free(cause);
}

static int on_message(void *context, char *topic, int topic_len, MQTTAsync_message *m)
{
    struct cbctx *c = context;
    struct qev *e = new_ev(SESSION_MESSAGE, c->id, c->gen);
    if (e) {
        size_t tl = topic_len > 0 ? (size_t)topic_len : strlen(topic);
        e->ev.topic = malloc(tl + 1);
        e->ev.payload = malloc((size_t)m->payloadlen + 1);
        if (e->ev.topic && e->ev.payload) {
            memcpy(e->ev.topic, topic, tl);
            e->ev.topic[tl] = '\0';
            memcpy(e->ev.payload, m->payload, (size_t)m->payloadlen);
            ((char *)e->ev.payload)[m->payloadlen] = '\0';
            e->ev.len = (size_t)m->payloadlen;
            e->ev.code = m->qos;
            push(e);
        } else {
            free_ev(e);
        }
    }
    MQTTAsync_freeMessage(&m);
    MQTTAsync_free(topic);
    return 1; /* always accept: returning 0 makes Paho queue it without bound */
}

static void on_pub_ok(void *context, MQTTAsync_successData *r)
{
    struct pubctx *p = context;
    struct qev *e = new_ev(SESSION_PUBLISHED, p->id, p->gen);
    if (e) {
        e->ev.ref = p->ref;
        push(e);
    }
    free(p);
}

static void on_pub_fail(void *context, MQTTAsync_failureData *r)
{
    struct pubctx *p = context;
    struct qev *e = new_ev(SESSION_PUBLISH_FAILED, p->id, p->gen);
    if (e) {
        e->ev.ref = p->ref;
        e->ev.code = r ? r->code : -1;
        push(e);
    }
    log_debug("session %llu: publish failed: %d %s", (unsigned long long)p->id, r ? r->code : -1,
              r && r->message ? r->message : "");
    free(p);
}

static void push_sub_results(struct subctx *s, const int *granted, int single, int all_fail)
{
    for (size_t i = 0; i < s->n; i++) {
        struct qev *e = new_ev(SESSION_SUBSCRIBED, s->id, s->gen);
        if (!e)
            break;
        int q = all_fail ? 0x80 : s->n == 1 ? single : granted ? granted[i] : 0x80;
        e->ev.index = i;
        e->ev.code = q == 0x80 ? -1 : 0;
        push(e);
    }
}

static void on_sub_ok(void *context, MQTTAsync_successData *r)
{
    struct subctx *s = context;
    push_sub_results(s, r ? r->alt.qosList : NULL, r ? r->alt.qos : 0x80, r == NULL);
    free(s);
}

static void on_sub_fail(void *context, MQTTAsync_failureData *r)
{
    struct subctx *s = context;
    push_sub_results(s, NULL, 0x80, 1);
    free(s);
}

static void push(struct qev *e);
static struct qev *new_ev(enum session_event_kind kind, uint64_t id, uint32_t gen);

static void caller_send(struct pubcmd *c)
{
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    MQTTAsync_message m = MQTTAsync_message_initializer;
    struct pubctx *pc = malloc(sizeof(*pc));
    int rc = MQTTASYNC_FAILURE;

    if (pc) {
        pc->id = c->id;
        pc->gen = c->gen;
        pc->ref = c->ref;
        m.payload = c->data + c->tlen + 1;
        m.payloadlen = (int)c->len;
        m.qos = c->qos;
        ro.onSuccess = on_pub_ok;
        ro.onFailure = on_pub_fail;
        ro.context = pc;
        rc = MQTTAsync_sendMessage(c->client, c->data, &m, &ro);
        if (rc != MQTTASYNC_SUCCESS)
            free(pc);
    }
    if (rc != MQTTASYNC_SUCCESS) { /* not handed over: the forwarder sends it again */
        log_debug("session %llu: publish not handed to Paho: %d", (unsigned long long)c->id, rc);
        struct qev *e = new_ev(SESSION_PUBLISH_FAILED, c->id, c->gen);
        if (e) {
            e->ev.ref = c->ref;
            e->ev.code = rc == MQTTASYNC_DISCONNECTED ? -ENOTCONN : -EAGAIN;
            push(e);
        }
    }
}

static void *caller_main(void *arg)
{
    pthread_mutex_lock(&P.mu);
    for (;;) {
        while (!P.head && !P.stop) {
            P.idle = true;
            pthread_cond_wait(&P.cond, &P.mu);
            P.idle = false;
        }
        if (!P.head && P.stop)
            break;
        /* A few at a time: a closing session waits at most for the publishes taken with its
         * own (caller_forget takes the rest back). */
        struct pubcmd *list = P.head, *last = P.head;
        for (int k = 1; k < CALLER_TAKE && last->next; k++)
            last = last->next;
        P.head = last->next;
        if (!P.head)
            P.tail = NULL;
        last->next = NULL;
        pthread_mutex_unlock(&P.mu);
        while (list) {
            struct pubcmd *next = list->next;
            struct sess *owner = list->owner;
            caller_send(list);
            free(list);
            /* A session's last queued publish: a loop closing it may be waiting (caller_forget);
             * owner may be freed at once, so it is not read after this. */
            if (atomic_fetch_sub(&owner->queued, 1) == 1) {
                pthread_mutex_lock(&P.mu);
                pthread_cond_broadcast(&P.done_cond);
                pthread_mutex_unlock(&P.mu);
            }
            list = next;
        }
        pthread_mutex_lock(&P.mu);
    }
    pthread_mutex_unlock(&P.mu);
    return NULL;
}

/*
 * Before a destroy: takes s's publishes that the caller thread has not picked up out of its
 * queue, then waits for those it is handing to Paho right now (none, usually).
 */
static void caller_forget(struct sess *s)
{
    struct pubcmd **pp, *c, *prev = NULL;

    pthread_mutex_lock(&P.mu);
    for (pp = &P.head; (c = *pp) != NULL;) {
        if (c->owner != s) {
            prev = c;
            pp = &c->next;
            continue;
        }
        *pp = c->next;
        if (P.tail == c)
            P.tail = prev;
        free(c);
        atomic_fetch_sub(&s->queued, 1);
    }
    while (atomic_load(&s->queued) > 0)
        pthread_cond_wait(&P.done_cond, &P.mu);
    pthread_mutex_unlock(&P.mu);
}

/* ---- commands from the loop -------------------------------------------------------------- */

static void sess_free(struct sess *s)
{
    if (s->client) {
        caller_forget(s);
        MQTTAsync_destroy(&s->client);
    }
    free(s->ctx);
    free(s->host);
    free(s->ca_file);
    free(s->ca_dir);
    free(s->client_id);
    free(s->username);
    if (s->password) {
        memset(s->password, 0, strlen(s->password));
        free(s->password);
    }
    free(s);
}

int paho_layer_init(uv_loop_t *loop, session_event_cb cb, void *arg)
{
    MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer;
    int rc;

    L.loop = loop;
    L.cb = cb;
    L.arg = arg;
    rc = uv_async_init(loop, &L.async, drain);
    if (rc < 0)
        return rc;
    uv_timer_init(loop, &L.trim);
    uv_unref((uv_handle_t *)&L.trim);
    L.outcomes = 0;
    MQTTAsync_setTraceLevel(MQTTASYNC_TRACE_ERROR);
    co.MQTTVersion = MQTTVERSION_3_1_1;
    if (MQTTAsync_createWithOptions(&L.keeper, "tcp://127.0.0.1:1", "aligw-keeper",
                                    MQTTCLIENT_PERSISTENCE_NONE, NULL, &co) != MQTTASYNC_SUCCESS) {
        uv_close((uv_handle_t *)&L.trim, NULL);
        uv_close((uv_handle_t *)&L.async, NULL);
        return ALIGW_EPAHO;
    }
    P.stop = false;
    if (pthread_create(&P.thread, NULL, caller_main, NULL) != 0) {
        MQTTAsync_destroy(&L.keeper);
        uv_close((uv_handle_t *)&L.trim, NULL);
        uv_close((uv_handle_t *)&L.async, NULL);
        return -EAGAIN;
    }
    P.running = true;
    L.ready = true;
    return 0;
}

void paho_layer_close(void)
{
    if (!L.ready)
        return;
    for (size_t i = 0; i < L.table.cap; i++) {
        struct sess *s = idmap_at(&L.table, i);
        if (s)
            sess_free(s); /* the map is not changed during the walk */
    }
    idmap_free(&L.table);
    L.wait_head = L.wait_tail = NULL;
    L.handshakes = 0;
    if (P.running) {
        pthread_mutex_lock(&P.mu);
        P.stop = true;
        pthread_cond_signal(&P.cond);
        pthread_mutex_unlock(&P.mu);
        pthread_join(P.thread, NULL);
        P.running = false;
    }
    MQTTAsync_destroy(&L.keeper); /* the last client: Paho stops its threads */
    struct qev *e = take_all();
    while (e) {
        struct qev *n = e->next;
        free_ev(e);
        e = n;
    }
    uv_close((uv_handle_t *)&L.trim, NULL);
    uv_close((uv_handle_t *)&L.async, NULL);
    L.ready = false;
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

int paho_open(uint64_t id, const struct session_params *p)
{
    MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer;
    char uri[300];
    struct sess *s;
    int rc;

    if (!L.ready)
        return -EINVAL;
    if (table_get(id))
        return -EEXIST;
    if (!p->host || !p->client_id || !p->username || !p->password)
        return -EINVAL;
    if (snprintf(uri, sizeof(uri), "%s://%s:%d", p->tls ? "ssl" : "tcp", p->host, p->port) >=
        (int)sizeof(uri))
        return -ENAMETOOLONG;

    s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->id = id;
    s->gen = ++L.next_gen;
    s->p = *p;
    s->host = strdup(p->host);
    s->ca_file = dup_or_null(p->ca_file);
    s->ca_dir = dup_or_null(p->ca_dir);
    s->client_id = strdup(p->client_id);
    s->username = strdup(p->username);
    s->password = strdup(p->password);
    s->ctx = calloc(1, sizeof(*s->ctx));
    if (!s->host || !s->client_id || !s->username || !s->password || !s->ctx ||
        (p->ca_file && !s->ca_file) || (p->ca_dir && !s->ca_dir)) {
        sess_free(s);
        return -ENOMEM;
    }
    s->p.host = s->host;
    s->p.ca_file = s->ca_file;
    s->p.ca_dir = s->ca_dir;
    s->p.client_id = s->client_id;
    s->p.username = s->username;
    s->p.password = s->password;
    s->ctx->id = id;
    s->ctx->gen = s->gen;

    co.MQTTVersion = MQTTVERSION_3_1_1;
    co.sendWhileDisconnected = 0;
    /* Paho applies this cap while connected too: past it, a publish is refused while the next
     * one may be taken, which would let it overtake the refused one. The forwarder's window
     * (store.inflight, stretched at most 4x) is what bounds a client's queue. */
    co.maxBufferedMessages = 65535;
    if (MQTTAsync_createWithOptions(&s->client, uri, s->client_id, MQTTCLIENT_PERSISTENCE_NONE,
                                    NULL, &co) != MQTTASYNC_SUCCESS) {
        s->client = NULL;
        sess_free(s);
        return ALIGW_EPAHO;
    }
    if (MQTTAsync_setCallbacks(s->client, s->ctx, on_lost, on_message, NULL) != MQTTASYNC_SUCCESS) {
        sess_free(s);
        return ALIGW_EPAHO;
    }
    rc = idmap_put(&L.table, id, s);
    if (rc < 0) {
        sess_free(s);
        return rc;
    }
    rc = paho_connect(id);
    if (rc < 0) {
        idmap_del(&L.table, id);
        sess_free(s);
    }
    return rc;
}

static int start_connect(struct sess *s)
{
    MQTTAsync_connectOptions o = MQTTAsync_connectOptions_initializer;
    MQTTAsync_SSLOptions ssl = MQTTAsync_SSLOptions_initializer;
    int rc;

    o.keepAliveInterval = s->p.keepalive;
    o.cleansession = s->p.clean_session;
    o.username = s->p.username;
    o.password = s->p.password;
    o.connectTimeout = s->p.connect_timeout_s > 0 ? s->p.connect_timeout_s : 20;
    o.MQTTVersion = MQTTVERSION_3_1_1;
    o.automaticReconnect = 0;
    o.maxInflight = 65535; /* our forwarder keeps the real window far below this */
    o.onSuccess = on_connect_ok;
    o.onFailure = on_connect_fail;
    o.context = s->ctx;
    if (s->p.tls) {
        pthread_mutex_lock(&L.mu);
        s->ctx->tls_error[0] = '\0'; /* a new attempt */
        pthread_mutex_unlock(&L.mu);
        ssl.ssl_error_cb = on_ssl_error;
        ssl.ssl_error_context = s->ctx;
        ssl.trustStore = s->p.ca_dir ? NULL : s->p.ca_file;
        ssl.CApath = s->p.ca_dir;
        ssl.enableServerCertAuth = 1;
        ssl.verify = s->p.verify_hostname ? 1 : 0;
        o.ssl = &ssl;
    }
    rc = MQTTAsync_connect(s->client, &o);
    if (rc != MQTTASYNC_SUCCESS)
        return ALIGW_EPAHO;
    if (s->p.tls && !s->in_window) {
        s->in_window = true;
        L.handshakes++;
    }
    return 0;
}

static void wait_unlink(struct sess *s)
{
    if (s->wprev)
        s->wprev->wnext = s->wnext;
    else
        L.wait_head = s->wnext;
    if (s->wnext)
        s->wnext->wprev = s->wprev;
    else
        L.wait_tail = s->wprev;
    s->wprev = s->wnext = NULL;
    s->waiting = false;
}

/* Starts waiting TLS connects while the window has room; a refused start becomes its event. */
static void window_pump(void)
{
    while (L.handshakes < TLS_WINDOW && L.wait_head) {
        struct sess *s = L.wait_head;
        wait_unlink(s);
        int rc = start_connect(s);
        if (rc < 0) {
            struct qev *e = new_ev(SESSION_CONNECT_FAILED, s->id, s->gen);
            if (e) {
                e->ev.code = rc;
                push(e);
            }
        }
    }
}

int paho_connect(uint64_t id)
{
    struct sess *s = table_get(id);

    if (!s)
        return -ENOENT;
    if (s->waiting)
        return 0; /* already waiting: its outcome will come */
    if (s->p.tls && (L.handshakes >= TLS_WINDOW || L.wait_head)) {
        s->waiting = true;
        s->wprev = L.wait_tail;
        if (L.wait_tail)
            L.wait_tail->wnext = s;
        else
            L.wait_head = s;
        L.wait_tail = s;
        return 0;
    }
    return start_connect(s);
}

void paho_close(uint64_t id)
{
    struct sess *s = table_get(id);
    if (!s)
        return;
    idmap_del(&L.table, id);
    if (s->waiting)
        wait_unlink(s);
    if (s->in_window)
        L.handshakes--;
    sess_free(s); /* destroy closes the socket; queued events for it are dropped by gen */
    window_pump();
}

int paho_publish(uint64_t id, const char *topic, const void *payload, size_t len, int qos,
                 uint64_t ref)
{
    struct sess *s = table_get(id);
    size_t tlen = strlen(topic);
    struct pubcmd *c;
    bool wake;

    if (!s)
        return -ENOENT;
    c = malloc(sizeof(*c) + tlen + 1 + len);
    if (!c)
        return -ENOMEM;
    c->next = NULL;
    c->owner = s;
    c->client = s->client;
    c->id = id;
    c->gen = s->gen;
    c->ref = ref;
    c->qos = qos;
    c->tlen = tlen;
    c->len = len;
    memcpy(c->data, topic, tlen + 1);
    if (len)
        memcpy(c->data + tlen + 1, payload, len);
    atomic_fetch_add(&s->queued, 1);
    pthread_mutex_lock(&P.mu);
    if (P.tail)
        P.tail->next = c;
    else
        P.head = c;
    P.tail = c;
    wake = P.idle;
    P.idle = false; /* one signal is enough until it waits again */
    pthread_mutex_unlock(&P.mu);
    /* After the unlock: signalled under the lock, the caller thread woke only to block on the
     * mutex the loop still held (two context switches per publish instead of one). */
    if (wake)
        pthread_cond_signal(&P.cond);
    return 0;
}

int paho_subscribe(uint64_t id, char *const *topics, size_t n)
{
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    struct sess *s = table_get(id);
    struct subctx *sc;
    int qos[64];
    int rc;

    if (!s)
        return -ENOENT;
    if (n == 0)
        return 0;
    if (n > 64)
        return -E2BIG;
    sc = malloc(sizeof(*sc));
    if (!sc)
        return -ENOMEM;
    sc->id = id;
    sc->gen = s->gen;
    sc->n = n;
    for (size_t i = 0; i < n; i++)
        qos[i] = 1;
    ro.onSuccess = on_sub_ok;
    ro.onFailure = on_sub_fail;
    ro.context = sc;
    rc = MQTTAsync_subscribeMany(s->client, (int)n, (char *const *)topics, qos, &ro);
    if (rc == MQTTASYNC_SUCCESS)
        return 0;
    free(sc);
    return rc == MQTTASYNC_DISCONNECTED ? -ENOTCONN : ALIGW_EPAHO;
}
