/*
 * test_devices: the device registry's behaviours against the session stub and a fake clock, in
 * milliseconds: the connect pacer, back-off and its jitter bounds, the longer back-off after a
 * refused login, kick inference and mass-loss detection, the kick back-off's escalation and its
 * reset after a calm session, the forwarder's window (stretched for a
 * lone busy device) and acknowledged messages keeping their window place until their delete is
 * committed, and the network watch: no attempts and no back-off growth without a route, sessions
 * closed when the route goes, the back-off reset and reconnects at once when it returns. The
 * outbox and the state database are the real ones, on temporary files. The
 * integration tests (tests/integration) prove the same against Paho and the hub.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "config.h"
#include "devices.h"
#include "errors.h"
#include "outbox.h"
#include "netwatch_stub.h"
#include "session_stub.h"
#include "statedb.h"

static uv_loop_t loop;
static struct outbox *ob;
static struct statedb *db;
static struct config *cfg;
static char dir[] = "/tmp/aligw-test-devices-XXXXXX";

static void on_ready(void *arg, const char *key)
{
    devices_outbox_ready(key);
}

static void spin(void)
{
    for (int i = 0; i < 20; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
}

/* Starts the registry with n devices dev0000.. and the given "cloud" and "store" extras. */
static void start(int n, const char *cloud, const char *store)
{
    size_t cap = 4096 + (size_t)n * 120;
    char *text = malloc(cap), path[256];
    int off = snprintf(text, cap,
                       "{\"log_level\": \"error\", \"state_dir\": \"%s\", \"cloud\": {\"host\": "
                       "\"127.0.0.1\", \"port\": 1, \"tls\": false%s%s}, \"store\": {\"path\": "
                       "\"%s/outbox.db\"%s%s}, \"devices\": [",
                       dir, cloud[0] ? ", " : "", cloud, dir, store[0] ? ", " : "", store);
    for (int i = 0; i < n; i++)
        off += snprintf(text + off, cap - (size_t)off,
                        "%s{\"product_key\": \"a1Test\", \"device_name\": \"dev%04d\", "
                        "\"device_secret\": \"s\", \"rate\": 0}",
                        i ? "," : "", i);
    snprintf(text + off, cap - (size_t)off, "]}");
    struct config_errors errs = {0}, warns = {0};
    CHECK_INT(config_load_buffer("t.json", text, strlen(text), &cfg, &errs, &warns), 0);
    for (size_t i = 0; i < errs.n; i++)
        fprintf(stderr, "config: %s\n", errs.v[i].text);
    config_errors_free(&errs);
    config_errors_free(&warns);
    free(text);
    struct outbox_opts oo = {.path = cfg->store.path, .max_bytes = 1 << 30};
    CHECK_INT(outbox_open(&loop, &oo, on_ready, NULL, &ob), 0);
    snprintf(path, sizeof(path), "%s/state.db", dir);
    CHECK_INT(statedb_open(path, &db), 0);
    struct devices_hooks hooks = {0};
    stub_n_calls = 0;
    CHECK_INT(devices_init(&loop, cfg, ob, db, &hooks), 0);
    spin();
}

static void stop(void)
{
    devices_close();
    outbox_close(ob, NULL, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    devices_release_memory();
    statedb_close(db);
    config_free(cfg);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -f %s/*", dir);
    CHECK_INT(system(cmd), 0);
}

/* The session id of device dev<i> (its last open), or 0. */
static uint64_t sid(int i)
{
    char dn[32];
    snprintf(dn, sizeof(dn), "dev%04d", i);
    for (size_t k = stub_n_calls; k-- > 0;)
        if (stub_calls[k].kind == STUB_OPEN && strstr(stub_calls[k].topic, dn))
            return stub_calls[k].id;
    return 0;
}

static const char *state(int i)
{
    char key[48];
    snprintf(key, sizeof(key), "a1Test/dev%04d", i);
    struct device *d = devices_find(key);
    return d ? device_state_name(device_state(d)) : "(none)";
}

/* Device i's session is accepted. */
static void online(int i)
{
    stub_event(SESSION_CONNECTED, sid(i), 0, 0);
    spin();
}

/* The connect pacer: connect_burst sessions at once, then connect_rate per second. */
static void test_pacer(void)
{
    start(40, "\"connect_rate\": 10, \"connect_burst\": 5", "");
    fake_advance(0);
    CHECK_INT(stub_count(STUB_OPEN, 0), 5);
    fake_advance(1000);
    size_t n = stub_count(STUB_OPEN, 0);
    CHECK(n >= 14 && n <= 16);
    fake_advance(3000);
    CHECK_INT(stub_count(STUB_OPEN, 0), 40);
    stop();
}

static uint64_t backoff_due(int i)
{
    /* The device's back-off timer is the one that fires its next open or connect. */
    uint64_t before = stub_n_calls, t0 = fake_now();
    for (uint64_t step = 50; step < 4000000; step += 50) {
        fake_advance(50);
        if (stub_n_calls > before) {
            const struct stub_call *c = &stub_calls[stub_n_calls - 1];
            if (c->kind == STUB_OPEN || c->kind == STUB_CONNECT)
                return c->at_ms - t0;
        }
    }
    return 0;
}

/* Device i comes online, stays up_ms, loses its session and is then in state expect: returns
 * the wait until its next attempt. */
static uint64_t up_then_lost(int i, uint64_t up_ms, const char *expect)
{
    online(i);
    fake_advance(up_ms);
    stub_event(SESSION_LOST, sid(i), -ECONNRESET, 0);
    CHECK_STR(state(i), expect);
    return backoff_due(i);
}

/* Back-off: "equal jitter" within [delay/2, delay], doubling to backoff_max_ms; a refused login
 * waits auth_backoff_ms instead. */
static void test_backoff(void)
{
    start(1,
          "\"connect_rate\": 1000, \"backoff_min_ms\": 1000, \"backoff_max_ms\": 8000, "
          "\"auth_backoff_ms\": 600000",
          "");
    fake_advance(0);
    uint64_t waits[6];
    for (int k = 0; k < 6; k++) {
        stub_event(SESSION_CONNECT_FAILED, sid(0), -ECONNREFUSED, 0);
        CHECK_STR(state(0), "backoff");
        waits[k] = backoff_due(0);
    }
    CHECK(waits[0] >= 500 && waits[0] <= 1050);
    CHECK(waits[1] >= 1000 && waits[1] <= 2050);
    CHECK(waits[2] >= 2000 && waits[2] <= 4050);
    for (int k = 3; k < 6; k++) /* capped at backoff_max_ms */
        CHECK(waits[k] >= 4000 && waits[k] <= 8050);
    /* A refused login: auth-refused, and a wait of at least half of auth_backoff_ms. */
    stub_event(SESSION_CONNECT_FAILED, sid(0), ALIGW_EAUTH, 0);
    CHECK_STR(state(0), "auth-refused");
    uint64_t w = backoff_due(0);
    CHECK(w >= 300000 && w <= 600050);
    /* Online again: the doubling starts over. */
    online(0);
    CHECK_STR(state(0), "online");
    stub_event(SESSION_CONNECT_FAILED, sid(0), -ECONNREFUSED, 0);
    w = backoff_due(0);
    CHECK(w >= 500 && w <= 1050);
    stop();
}

/* Two losses of an accepted session within a minute are a kick; many devices lost together are
 * the endpoint going away, not a kick. */
static void test_kick_and_mass_loss(void)
{
    start(4,
          "\"connect_rate\": 1000, \"backoff_min_ms\": 100, \"backoff_max_ms\": 200, "
          "\"kick_backoff_ms\": 60000",
          "");
    fake_advance(0);
    for (int i = 0; i < 4; i++)
        online(i);
    /* Device 0 alone: lost, back online, lost again within the window: kicked. */
    stub_event(SESSION_LOST, sid(0), -ECONNRESET, 0);
    CHECK_STR(state(0), "backoff");
    backoff_due(0);
    uint64_t w = up_then_lost(0, 5000, "kicked");
    CHECK(w >= 30000);
    /* Devices 1-3 lost together, twice: the endpoint went away; none is called kicked. */
    fake_advance(10000);
    for (int round = 0; round < 2; round++) {
        for (int i = 1; i < 4; i++)
            stub_event(SESSION_LOST, sid(i), -ECONNRESET, 0);
        for (int i = 1; i < 4; i++)
            CHECK_STR(state(i), "backoff");
        fake_advance(500);
        for (int i = 1; i < 4; i++)
            online(i);
        fake_advance(3000);
    }
    for (int i = 1; i < 4; i++)
        CHECK_STR(state(i), "online");
    stop();
}

/* The kick back-off doubles with each session taken over again (issue 12: a rival that logs in
 * again right after each loss traded the session for ever) and starts over only once a session
 * has stayed up for the kick window. Waits are "equal jitter": [d/2, d] for d = kick_backoff_ms
 * doubled per level. */
static void test_kick_backoff_escalates_and_calms(void)
{
    start(1,
          "\"connect_rate\": 1000, \"backoff_min_ms\": 100, \"backoff_max_ms\": 200, "
          "\"kick_backoff_ms\": 10000",
          "");
    fake_advance(0);
    up_then_lost(0, 0, "backoff");
    uint64_t lo = 5000, hi = 10050;
    for (int level = 0; level < 3; level++, lo *= 2, hi = hi * 2) {
        uint64_t w = up_then_lost(0, 5000, "kicked");
        if (w < lo || w > hi)
            fprintf(stderr, "kick level %d: waited %llu ms, expected [%llu, %llu]\n", level,
                    (unsigned long long)w, (unsigned long long)lo, (unsigned long long)hi);
        CHECK(w >= lo && w <= hi);
    }
    /* A session that outlives the window ends the escalation: the next loss is an ordinary one,
     * and a kick after that waits kick_backoff_ms again, not 80 s. */
    up_then_lost(0, 61000, "backoff");
    uint64_t w = up_then_lost(0, 5000, "kicked");
    CHECK(w >= 5000 && w <= 10050);
    stop();
}

static int appended;
static void on_appended(void *arg, int status, int64_t seq)
{
    if (status == 0)
        appended++;
}

/* Publishes to device 0's current session so far. */
static size_t published(void)
{
    return stub_count(STUB_PUBLISH, sid(0));
}

/* The window: store.inflight stretched for a lone busy device (up to 4x, within
 * inflight_total); a PUBACK frees a place only once the delete is committed. */
static void test_window(void)
{
    start(1, "\"connect_rate\": 1000", "\"inflight\": 4, \"inflight_total\": 100");
    fake_advance(0);
    online(0);
    appended = 0;
    for (int i = 0; i < 60; i++)
        CHECK_INT(outbox_append(ob, "a1Test/dev0000", "/a1Test/dev0000/user/update", "x", 1, 1,
                                on_appended, NULL),
                  0);
    spin();
    CHECK_INT(appended, 60);
    CHECK_INT(published(), 16); /* 4 x 4: alone and busy */
    /* Acknowledge 8 without letting the outbox commit: the places stay taken. */
    uint64_t id = sid(0);
    size_t first = 0;
    while (stub_calls[first].kind != STUB_PUBLISH || stub_calls[first].id != id)
        first++;
    for (size_t k = first, n = 0; n < 8; k++)
        if (stub_calls[k].kind == STUB_PUBLISH && stub_calls[k].id == id) {
            stub_event(SESSION_PUBLISHED, id, 0, stub_calls[k].ref);
            n++;
        }
    CHECK_INT(published(), 16);
    /* The deletes commit at the end of the loop turn: now the window refills. */
    spin();
    CHECK_INT(published(), 24);
    /* A lost connection: everything unacknowledged goes again, in order, on the next one. */
    stub_event(SESSION_LOST, id, -ECONNRESET, 0);
    backoff_due(0);
    online(0);
    const struct stub_call *c = NULL;
    for (size_t k = 0; k < stub_n_calls; k++)
        if (stub_calls[k].kind == STUB_PUBLISH && stub_calls[k].id == sid(0)) {
            c = &stub_calls[k];
            break;
        }
    CHECK(c != NULL &&
          (c->ref & 0xffffffffffffULL) == (stub_calls[first].ref & 0xffffffffffffULL) + 8);
    /* Three acknowledged on this connection, their deletes not committed yet (no loop turn),
     * when it is lost: the next one starts after them, it does not send them again. */
    id = sid(0);
    for (size_t k = c ? (size_t)(c - stub_calls) : stub_n_calls, n = 0; n < 3 && k < stub_n_calls;
         k++)
        if (stub_calls[k].kind == STUB_PUBLISH && stub_calls[k].id == id) {
            stub_event(SESSION_PUBLISHED, id, 0, stub_calls[k].ref);
            n++;
        }
    stub_event(SESSION_LOST, id, -ECONNRESET, 0);
    backoff_due(0);
    size_t mark = stub_n_calls;
    online(0);
    const struct stub_call *c2 = NULL;
    for (size_t k = mark; k < stub_n_calls; k++)
        if (stub_calls[k].kind == STUB_PUBLISH && stub_calls[k].id == sid(0)) {
            c2 = &stub_calls[k];
            break;
        }
    CHECK(c != NULL && c2 != NULL &&
          (c2->ref & 0xffffffffffffULL) == (c->ref & 0xffffffffffffULL) + 3);
    /* An ack whose delete commits only while the outbox closes, after the registry is gone. */
    stub_event(SESSION_PUBLISHED, sid(0), 0, c2 ? c2->ref : 0);
    stop();
}

/* Without a route: no-network instead of attempts, and no step up of the back-off; online
 * sessions closed when the route goes; all back (reset back-off, paced at once) when it
 * returns. A device of an endpoint that still has its route is left alone. */
static void test_network(void)
{
    start(3,
          "\"connect_rate\": 1000, \"connect_burst\": 10, \"backoff_min_ms\": 1000, "
          "\"backoff_max_ms\": 64000",
          "");
    fake_advance(0);
    online(0);
    online(1);
    /* dev2 has failed a few times: its back-off has grown */
    for (int k = 0; k < 4; k++)
        stub_event(SESSION_CONNECT_FAILED, sid(2), -ECONNREFUSED, 0);
    CHECK_STR(state(2), "backoff");
    uint64_t s0 = sid(0), s2 = sid(2);
    size_t closes0 = stub_count(STUB_CLOSE, s0), calls = stub_n_calls;

    stub_net_set(false);
    spin();
    CHECK_STR(state(0), "no-network");
    CHECK_STR(state(1), "no-network");
    CHECK_STR(state(2), "no-network");
    CHECK(stub_count(STUB_CLOSE, s0) > closes0); /* the session went with the route */
    /* an hour without a route: not one attempt */
    size_t opens = 0;
    for (int k = 0; k < 3600; k++)
        fake_advance(1000);
    for (size_t k = calls; k < stub_n_calls; k++)
        opens += stub_calls[k].kind == STUB_OPEN || stub_calls[k].kind == STUB_CONNECT;
    CHECK_INT((int)opens, 0);
    struct device *d2 = devices_find("a1Test/dev0002");
    CHECK(d2 != NULL);
    json_t *st = device_status_json(d2, true);
    const char *why = json_string_value(json_object_get(st, "last_error"));
    CHECK(why && strstr(why, "no route to 127.0.0.1") != NULL);
    json_decref(st);

    /* the route is back: every device through the pacer at once, dev2's back-off reset */
    calls = stub_n_calls;
    stub_net_set(true);
    fake_advance(50);
    spin();
    opens = 0;
    for (size_t k = calls; k < stub_n_calls; k++)
        opens += stub_calls[k].kind == STUB_OPEN || stub_calls[k].kind == STUB_CONNECT;
    CHECK_INT((int)opens, 3);
    CHECK(sid(2) != s2 || stub_count(STUB_CONNECT, s2) > 0);
    stub_event(SESSION_CONNECT_FAILED, sid(2), -ECONNREFUSED, 0);
    uint64_t w = backoff_due(2);
    CHECK(w >= 500 && w <= 1050); /* the first step again, not the fifth */

    /* a failure while the route is gone: waiting, not a back-off step */
    online(0);
    stub_net_up = false; /* not yet announced: the next failure finds out by itself */
    stub_event(SESSION_LOST, sid(0), -ECONNRESET, 0);
    spin();
    CHECK_STR(state(0), "no-network");
    stub_net_set(true);
    fake_advance(50);
    spin();
    CHECK_STR(state(0), "connecting");

    /* one endpoint without its route: only its devices wait */
    stub_net_down_host = "127.0.0.1";
    stub_net_set(true);
    spin();
    CHECK_STR(state(1), "no-network");
    stub_net_down_host = NULL;
    stub_net_set(true);
    stop();
}

int main(void)
{
    CHECK(mkdtemp(dir) != NULL);
    uv_loop_init(&loop);
    test_pacer();
    test_backoff();
    test_kick_and_mass_loss();
    test_kick_backoff_escalates_and_calms();
    test_window();
    test_network();
    uv_loop_close(&loop);
    rmdir(dir);
    return check_done();
}
