/*
 * plugins: the real loader on a real uv loop with a recording sink. The simulator's posts and
 * replies; the modbus plugin against tests/modbus/modbus_server over loopback TCP (scaling, word
 * order, writes, a stopped and restarted server); refusals (another ABI major, no symbol, a
 * world-writable file); a plugin failing at start; the bounded queue.
 */
#include "alink.h"
#include "check.h"
#include "plugins.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

struct rec {
    char *pk, *dn, *topic, *payload;
    int qos, ok; /* ok: -1 for uplinks */
};

static struct rec recs[20000];
static size_t n_recs;
static uv_loop_t loop;

static int64_t next_seq = 1;

static int sink_uplink(void *ctx, const char *pk, const char *dn, const char *topic,
                       const char *payload, size_t len, int qos,
                       void (*done)(void *arg, int status, int64_t seq), void *arg)
{
    if (n_recs == sizeof recs / sizeof recs[0])
        return -ENOSPC;
    recs[n_recs++] =
        (struct rec){strdup(pk), strdup(dn), strdup(topic), strndup(payload, len), qos, -1};
    if (done) /* a store that commits at once */
        done(arg, 0, next_seq++);
    return 0;
}

static void sink_state(void *ctx, const char *pk, const char *dn, int ok, const char *reason)
{
    if (n_recs == sizeof recs / sizeof recs[0])
        return;
    recs[n_recs++] = (struct rec){strdup(pk), strdup(dn), NULL, strdup(reason), 0, ok};
}

static const struct plugins_sink sink = {NULL, sink_uplink, sink_state, NULL, NULL, NULL, NULL};

static void recs_clear(void)
{
    for (size_t i = 0; i < n_recs; i++) {
        free(recs[i].pk);
        free(recs[i].dn);
        free(recs[i].topic);
        free(recs[i].payload);
    }
    n_recs = 0;
}

static uint64_t now_ms(void)
{
    uv_update_time(&loop);
    return uv_now(&loop);
}

static void on_tick(uv_timer_t *t)
{
}

/* Runs the loop until pred() or timeout_ms; returns pred(). */
static bool run_until(bool (*pred)(void), int timeout_ms)
{
    uv_timer_t t;
    uint64_t end = now_ms() + (uint64_t)timeout_ms;
    bool ok;
    uv_timer_init(&loop, &t);
    uv_timer_start(&t, on_tick, 10, 10);
    while (!(ok = pred()) && now_ms() < end)
        uv_run(&loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    return ok;
}

/* Search state for predicates. */
static const char *want_topic, *want_text, *want_dn;
static int want_ok, want_count;

static size_t count_matching(void)
{
    size_t n = 0;
    for (size_t i = 0; i < n_recs; i++) {
        struct rec *r = &recs[i];
        if (want_dn && strcmp(r->dn, want_dn) != 0)
            continue;
        if (want_topic) {
            if (!r->topic || strcmp(r->topic, want_topic) != 0)
                continue;
        } else if (r->topic || r->ok != want_ok) {
            continue;
        }
        if (want_text && !strstr(r->payload, want_text))
            continue;
        n++;
    }
    return n;
}

static bool have_enough(void)
{
    return count_matching() >= (size_t)want_count;
}

static bool wait_for(const char *dn, const char *topic, const char *text, int count, int ms)
{
    want_dn = dn;
    want_topic = topic;
    want_text = text;
    want_count = count;
    return run_until(have_enough, ms);
}

static bool wait_state(const char *dn, int ok, const char *text, int ms)
{
    want_dn = dn;
    want_topic = NULL;
    want_text = text;
    want_ok = ok;
    want_count = 1;
    return run_until(have_enough, ms);
}

static const struct rec *last_on(const char *topic)
{
    for (size_t i = n_recs; i-- > 0;)
        if (recs[i].topic && strcmp(recs[i].topic, topic) == 0)
            return &recs[i];
    return NULL;
}

static struct plugin_conf conf(const char *path, const char *config, char **devs, size_t n)
{
    struct plugin_conf c = {0};
    c.name = (char *)path;
    c.config = config ? json_loads(config, 0, NULL) : NULL;
    c.devices = devs;
    c.n_devices = n;
    c.in_process = true; /* these tests drive the in-process host; out of process: integration */
    return c;
}

static void simulator(void)
{
    struct plugins *ps;
    char *devs[] = {"pk1/sim1", "pk1/sim2"};
    struct plugin_conf c =
        conf(PLUGIN_BUILD_DIR "/simulator.so",
             "{\"interval_ms\":100,\"properties\":[{\"id\":\"temp\",\"kind\":\"sine\",\"min\":"
             "10,\"max\":20,\"period_s\":5},{\"id\":\"count\",\"kind\":\"counter\"},{\"id\":"
             "\"mode\",\"kind\":\"step\",\"values\":[\"a\",\"b\"],\"period_s\":1}]}",
             devs, 2);
    const char *post = "/sys/pk1/sim1/thing/event/property/post";

    CHECK_INT(plugins_init(&ps, &loop, &sink, NULL), 0);
    CHECK_INT(plugins_start(ps, &c, 1), 0);
    CHECK(plugins_serves(ps, "pk1", "sim2"));
    CHECK(!plugins_serves(ps, "pk1", "nope"));
    CHECK(wait_for("sim1", post, "\"count\":2", 1, 3000));
    CHECK(wait_for("sim2", "/sys/pk1/sim2/thing/event/property/post", "\"count\":2", 1, 3000));
    const struct rec *r = last_on(post);
    struct alink_payload p;
    char err[100];
    CHECK(r && alink_parse(r->payload, strlen(r->payload), &p, err, sizeof err) == 0);
    if (r && p.root) {
        json_t *t = json_object_get(p.params, "temp");
        CHECK(json_is_real(t) && json_real_value(t) >= 10 && json_real_value(t) <= 20);
        CHECK(json_is_string(json_object_get(p.params, "mode")));
        CHECK_INT(r->qos, 1);
        alink_payload_free(&p);
    }

    /* a property set is answered and reported back */
    CHECK_INT(plugins_property_set(ps, "pk1", "sim1", "1001", "{\"temp\":42.5,\"extra\":10.0}"), 0);
    CHECK(wait_for("sim1", "/sys/pk1/sim1/thing/service/property/set_reply", "\"id\":\"1001\"", 1,
                   2000));
    r = last_on("/sys/pk1/sim1/thing/service/property/set_reply");
    CHECK(r && strstr(r->payload, "\"code\":200"));
    CHECK(wait_for("sim1", post, "\"temp\":42.5", 1, 2000));
    CHECK(wait_for("sim1", post, "\"extra\":10.0", 1, 2000));

    /* services */
    CHECK_INT(plugins_service_call(ps, "pk1", "sim1", "1002", "set_interval", NULL,
                                   "{\"interval_ms\":50}"),
              0);
    CHECK(wait_for("sim1", "/sys/pk1/sim1/thing/service/set_interval_reply",
                   "\"data\":{\"interval_ms\":50}", 1, 2000));
    CHECK_INT(plugins_service_call(ps, "pk1", "sim1", "1003", "nosuch", "77", "{}"), 0);
    CHECK(wait_for("sim1", "/ext/rrpc/77/sys/pk1/sim1/thing/service/nosuch", "\"code\":460", 1,
                   2000));
    r = last_on("/ext/rrpc/77/sys/pk1/sim1/thing/service/nosuch");
    CHECK(r && r->qos == 0);
    CHECK_INT(plugins_service_call(ps, "pk1", "sim1", "1004", "reset", NULL, NULL), 0);
    CHECK(wait_for("sim1", "/sys/pk1/sim1/thing/service/reset_reply", "\"code\":200", 1, 2000));
    CHECK(wait_for("sim1", post, "\"count\":0", 1, 2000));

    CHECK_INT(plugins_property_set(ps, "pk9", "x", "1", "{}"), -ENODEV);
    CHECK_INT(plugins_property_set(ps, "pk1", "sim1", "1x", "{}"), -EINVAL);
    CHECK_INT(plugins_service_call(ps, "pk1", "sim1", "1", "a/b", NULL, "{}"), -EINVAL);

    /* stop delivers what was queued, then nothing more arrives */
    plugins_stop(ps);
    size_t n = n_recs;
    CHECK(!run_until(have_enough, 300) || n_recs == n);
    CHECK_INT(n_recs, n);
    plugins_close(ps);
    uv_run(&loop, UV_RUN_DEFAULT);
    json_decref(c.config);
    recs_clear();
}

static void refusals(void)
{
    struct plugins *ps;
    char *d1[] = {"pk3/abi"}, *d2[] = {"pk3/fail"}, *d3[] = {"pk3/nosym"}, *d4[] = {"pk3/ww"},
         *d5[] = {"pk3/missing"};
    char tmpl[] = "/tmp/aligw-plugtest-XXXXXX", ww[128], cmd[1024];
    CHECK(mkdtemp(tmpl) != NULL);
    snprintf(ww, sizeof ww, "%s/simulator.so", tmpl);
    snprintf(cmd, sizeof cmd, "cp %s/simulator.so %s && chmod 0666 %s", PLUGIN_BUILD_DIR, ww, ww);
    CHECK_INT(system(cmd), 0);
    struct plugin_conf c[] = {
        conf(TEST_PLUGIN_DIR "/testplug_badabi.so", NULL, d1, 1),
        conf(TEST_PLUGIN_DIR "/testplug_failstart.so", NULL, d2, 1),
        conf(TEST_PLUGIN_DIR "/testplug_nosym.so", NULL, d3, 1),
        conf(ww, NULL, d4, 1),
        conf(TEST_PLUGIN_DIR "/nonexistent.so", NULL, d5, 1),
    };

    CHECK_INT(plugins_init(&ps, &loop, &sink, NULL), 0);
    CHECK_INT(plugins_start(ps, c, 5), 5);
    CHECK(wait_state("abi", 0, "testplug_badabi.so: built for plugin ABI 2.", 100));
    CHECK(wait_state("fail", 0, "testplug about to fail", 100)); /* its own report came first */
    CHECK(wait_state("fail", 0, "testplug_failstart.so): start failed", 100));
    CHECK(wait_state("nosym", 0, "testplug_nosym.so: no symbol \"aligw_plugin\"", 100));
    CHECK(wait_state("ww", 0, "is writable by group or others (mode 0666)", 100));
    CHECK(wait_state("missing", 0, "nonexistent.so", 100));
    /* the failed plugin's device is answered by the host */
    CHECK_INT(plugins_service_call(ps, "pk3", "fail", "5", "x", NULL, "{}"), 0);
    const struct rec *r = last_on("/sys/pk3/fail/thing/service/x_reply");
    CHECK(r && strstr(r->payload, "\"code\":500"));

    /* --check-config */
    char err[300];
    struct plugin_conf sim = conf(PLUGIN_BUILD_DIR "/simulator.so", "{\"interval_ms\":1}", NULL, 0);
    CHECK(plugins_check_config(&sim, err, sizeof err) < 0);
    CHECK(strstr(err, "interval_ms") != NULL);
    json_decref(sim.config);
    sim = conf(PLUGIN_BUILD_DIR "/simulator.so", "{\"interval_ms\":500}", NULL, 0);
    CHECK_INT(plugins_check_config(&sim, err, sizeof err), 0);
    json_decref(sim.config);
    CHECK(plugins_check_config(&c[0], err, sizeof err) < 0);
    CHECK(strstr(err, "testplug_badabi.so") != NULL);

    plugins_close(ps);
    uv_run(&loop, UV_RUN_DEFAULT);
    recs_clear();
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpl);
    CHECK_INT(system(cmd), 0);
}

static void flood(void)
{
    struct plugins *ps;
    char *devs[] = {"pk4/fl"};
    struct plugin_conf c = conf(TEST_PLUGIN_DIR "/testplug_ok.so", "{\"x\":1}", devs, 1);
    struct plugins_opts o = {.queue_max = 10, .ack = false};
    struct plugins_stats st;

    CHECK_INT(plugins_init(&ps, &loop, &sink, &o), 0);
    CHECK_INT(plugins_start(ps, &c, 1), 0);
    CHECK_INT(plugins_service_call(ps, "pk4", "fl", "1", "flood", NULL, "{}"), 0);
    CHECK(wait_for("fl", "/sys/pk4/fl/thing/event/property/post", "\"ack\":0", 9, 1000));
    CHECK_INT(plugins_service_call(ps, "pk4", "fl", "2", "report", NULL, "{}"), 0);
    CHECK(wait_for("fl", "/sys/pk4/fl/thing/service/report_reply",
                   "{\"accepted\":9,\"rejected\":41}", 1, 1000));
    plugins_get_stats(ps, &st);
    CHECK_INT(st.rejected_full, 41);
    /* a reply to an unknown request is not sent */
    size_t n = n_recs;
    CHECK_INT(plugins_service_call(ps, "pk4", "fl", "2", "report", NULL, "{}"), 0);
    CHECK(wait_for("fl", "/sys/pk4/fl/thing/service/report_reply", NULL, 2, 1000));
    CHECK_INT(n_recs, n + 1);
    plugins_close(ps);
    uv_run(&loop, UV_RUN_DEFAULT);
    json_decref(c.config);
    recs_clear();
}

#ifdef MODBUS_SERVER
struct server {
    pid_t pid;
    FILE *in, *out;
    int port;
};

static bool server_line(struct server *s, char *buf, size_t len, int ms)
{
    struct pollfd pfd = {fileno(s->out), POLLIN, 0};
    if (poll(&pfd, 1, ms) <= 0)
        return false;
    return fgets(buf, (int)len, s->out) != NULL;
}

static bool server_start(struct server *s, int port, const char *holding, const char *input,
                         const char *coils)
{
    int in[2], out[2];
    char ps[16], line[128];
    if (pipe(in) < 0 || pipe(out) < 0)
        return false;
    snprintf(ps, sizeof ps, "%d", port);
    s->pid = fork();
    if (s->pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        close(in[1]);
        close(out[0]);
        execl(MODBUS_SERVER, "modbus_server", "-p", ps, "-H", holding, "-I", input, "-C", coils,
              (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    s->in = fdopen(in[1], "w");
    s->out = fdopen(out[0], "r");
    setvbuf(s->in, NULL, _IOLBF, 0);
    if (!server_line(s, line, sizeof line, 3000) || sscanf(line, "listening %d", &s->port) != 1)
        return false;
    return true;
}

static void server_stop(struct server *s)
{
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    fclose(s->in);
    fclose(s->out);
}

static void modbus(void)
{
    struct server srv;
    struct plugins *ps;
    char *devs[] = {"pk2/mb1"};
    char cfg[2048], line[128];
    const char *post = "/sys/pk2/mb1/thing/event/property/post";

    /* reg0 = -50 (int16, x0.1), reg2..3 = 65538 as CDAB, reg4..5 = 23.5f ABCD, reg10 = 20 */
    CHECK(server_start(&srv, 0, "0=65486,2=2,3=1,4=0x41BC,5=0,10=20", "0=7", "0=1"));
    snprintf(cfg, sizeof cfg,
             "{\"buses\":{\"plc\":{\"type\":\"tcp\",\"host\":\"127.0.0.1\",\"port\":%d,"
             "\"timeout_ms\":300,\"reconnect_min_ms\":100,\"reconnect_max_ms\":300}},"
             "\"devices\":{\"pk2/mb1\":{\"bus\":\"plc\",\"slave\":1,\"interval_ms\":100,"
             "\"registers\":["
             "{\"id\":\"t\",\"address\":0,\"type\":\"int16\",\"scale\":0.1},"
             "{\"id\":\"u\",\"address\":2,\"type\":\"uint32\",\"word_order\":\"CDAB\"},"
             "{\"id\":\"f\",\"address\":4,\"type\":\"float32\"},"
             "{\"id\":\"sp\",\"address\":10,\"scale\":0.5,\"offset\":10,\"writable\":true},"
             "{\"id\":\"in\",\"address\":0,\"function\":\"input\"},"
             "{\"id\":\"on\",\"address\":0,\"function\":\"coil\",\"writable\":true}]}}}",
             srv.port);
    struct plugin_conf c = conf(PLUGIN_BUILD_DIR "/modbus.so", cfg, devs, 1);
    CHECK(c.config != NULL);
    CHECK_INT(plugins_init(&ps, &loop, &sink, NULL), 0);
    CHECK_INT(plugins_start(ps, &c, 1), 0);
    CHECK(wait_for("mb1", post, "\"t\":-5.0,\"u\":65538,\"f\":23.5,\"sp\":20.0,\"in\":7,\"on\":1",
                   1, 3000));

    /* a change on the server is reported, alone ("change" reporting), floats keep ".0" */
    fprintf(srv.in, "set 0 100\n");
    CHECK(server_line(&srv, line, sizeof line, 2000) && strncmp(line, "ok", 2) == 0);
    CHECK(wait_for("mb1", post, "\"params\":{\"t\":10.0}", 1, 3000));

    /* a property set writes the register with inverse scaling */
    CHECK_INT(plugins_property_set(ps, "pk2", "mb1", "300", "{\"sp\":30.0}"), 0);
    CHECK(server_line(&srv, line, sizeof line, 3000));
    CHECK_STR(line, "written 10 40\n");
    CHECK(
        wait_for("mb1", "/sys/pk2/mb1/thing/service/property/set_reply", "\"code\":200", 1, 3000));
    CHECK(wait_for("mb1", post, "\"sp\":30.0", 1, 3000));
    CHECK_INT(plugins_property_set(ps, "pk2", "mb1", "301", "{\"on\":false}"), 0);
    CHECK(server_line(&srv, line, sizeof line, 3000));
    CHECK_STR(line, "written coil 0 0\n");
    /* not writable / unknown / out of range: 460, nothing written */
    CHECK_INT(plugins_property_set(ps, "pk2", "mb1", "302", "{\"in\":1}"), 0);
    CHECK_INT(plugins_property_set(ps, "pk2", "mb1", "303", "{\"sp\":1e9}"), 0);
    CHECK(
        wait_for("mb1", "/sys/pk2/mb1/thing/service/property/set_reply", "\"code\":460", 2, 1000));

    /* a stopped server puts the device in error; a restarted one clears it */
    int port = srv.port;
    server_stop(&srv);
    uint64_t t0 = now_ms();
    CHECK(wait_state("mb1", 0, "modbus", 3000));
    printf("error state after %llu ms\n", (unsigned long long)(now_ms() - t0));
    CHECK(server_start(&srv, port, "0=1", "0=7", "0=1"));
    t0 = now_ms();
    CHECK(wait_state("mb1", 1, "answering", 3000));
    printf("recovered after %llu ms\n", (unsigned long long)(now_ms() - t0));
    CHECK(wait_for("mb1", post, "\"t\":0.1", 1, 3000)); /* everything reported again */

    plugins_close(ps);
    uv_run(&loop, UV_RUN_DEFAULT);
    server_stop(&srv);
    json_decref(c.config);
    recs_clear();
}
#endif

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&loop);
    simulator();
    refusals();
    flood();
#ifdef MODBUS_SERVER
    modbus();
#endif
    uv_loop_close(&loop);
    return check_done();
}
