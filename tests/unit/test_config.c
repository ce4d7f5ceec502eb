/*
 * test_config: the config module against real files. Each class of error is checked with the
 * line and column it must name; a config with three mistakes must report all three; the devices
 * file is read with quotes, CRLF, a BOM, comments and hub_ columns; defaults are resolved (host
 * from region or instance_id, port and securemode from TLS); placeholders are expanded; a
 * world-readable file with secrets draws a warning; and conf/aligw.example.json is valid. Data
 * files live in tests/unit/data/config/ (the test runs from tests/unit).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "config.h"

#define DATA "data/config/"

static struct config_errors errs, warns;

static void reset(void)
{
    config_errors_free(&errs);
    config_errors_free(&warns);
}

/* True when some error is exactly text. */
static bool has(const struct config_errors *e, const char *text)
{
    for (size_t i = 0; i < e->n; i++)
        if (strcmp(e->v[i].text, text) == 0)
            return true;
    fprintf(stderr, "missing: %s\n  got:\n", text);
    for (size_t i = 0; i < e->n; i++)
        fprintf(stderr, "    %s\n", e->v[i].text);
    return false;
}

static struct config *load_buf(const char *text)
{
    struct config *c = NULL;
    reset();
    config_load_buffer("t.json", text, strlen(text), &c, &errs, &warns);
    return c;
}

/* Loads text, expects failure, and checks that one of the errors is want. */
static void expect_error(const char *text, const char *want)
{
    struct config *c = load_buf(text);
    CHECK(c == NULL);
    CHECK(has(&errs, want));
    config_free(c);
}

static const char *DEV = "\"product_key\": \"a1B2c3D4e5F\", \"device_name\": \"pump-0001\", "
                         "\"device_secret\": \"s3cret\"";

static void test_error_classes(void)
{
    char buf[1024];
    /* Syntax errors keep jansson's position. */
    expect_error("{\n  \"log_level\": \"info\",\n}",
                 "t.json:3:1: syntax: string or '}' expected near '}'");
    /* Unknown keys point at the key, at every level. */
    expect_error("{\n  \"log_levle\": \"info\"\n}", "t.json:2:3: log_levle: unknown key");
    expect_error("{\"cloud\": {\"prot\": 1883}}", "t.json:1:12: cloud.prot: unknown key");
    /* Wrong type, at the value. */
    expect_error("{\"cloud\": {\"port\": \"8883\"}}",
                 "t.json:1:20: cloud.port: must be an integer, got a string");
    expect_error("{\"cloud\": {\"tls\": 1}}",
                 "t.json:1:19: cloud.tls: must be true or false, got an integer");
    expect_error("{\"cloud\": {\"network_watch\": \"no\"}}",
                 "t.json:1:29: cloud.network_watch: must be true or false, got a string");
    /* Integers must be integers; ranges are checked. */
    expect_error("{\"cloud\": {\"keepalive\": 300.5}}",
                 "t.json:1:25: cloud.keepalive: must be an integer, got 300.5");
    expect_error("{\"cloud\": {\"keepalive\": 29}}",
                 "t.json:1:25: cloud.keepalive: must be between 30 and 1200 seconds, got 29");
    snprintf(buf, sizeof(buf), "{\"devices\": [\n {%s,\n  \"keepalive\": 1201}]}", DEV);
    expect_error(
        buf, "t.json:3:16: devices[0].keepalive: must be between 30 and 1200 seconds, got 1201");
    expect_error("{\"cloud\": {\"devices_per_shard\": -1}}",
                 "t.json:1:33: cloud.devices_per_shard: must be between 0 and 1000000, got -1");
    expect_error("{\"cloud\": {\"max_shards\": 65}}",
                 "t.json:1:26: cloud.max_shards: must be between 0 and 64, got 65");
    expect_error("{\"store\": {\"inflight_total\": 65535}}",
                 "t.json:1:30: store.inflight_total: must be between 1 and 65534, got 65535");
    /* Bad enum strings. */
    expect_error("{\"log_level\": \"loud\"}",
                 "t.json:1:15: log_level: must be \"error\", \"warning\", \"notice\", \"info\" or "
                 "\"debug\", got \"loud\"");
    expect_error("{\"store\": {\"policy\": \"drop-newest\"}}",
                 "t.json:1:22: store.policy: must be \"drop-oldest\" or \"reject-new\", got "
                 "\"drop-newest\"");
    expect_error("{\"cloud\": {\"sign_method\": \"hmacsha512\"}}",
                 "t.json:1:27: cloud.sign_method: must be \"hmacsha256\", \"hmacsha1\" or "
                 "\"hmacmd5\", got \"hmacsha512\"");
    /* A missing secret is reported at the device object. */
    expect_error(
        "{\"devices\": [\n  {\"product_key\": \"a1B2c3D4e5F\", \"device_name\": \"pump-0001\"}]}",
        "t.json:2:3: devices[0].device_secret: missing: give device_secret, or "
        "product_secret with register (https, mqtt or mqtt-nwl)");
    expect_error(
        "{\"devices\": [{\"product_key\": \"a1B2c3D4e5F\", \"device_name\": \"pump-0001\", "
        "\"product_secret\": \"p\", \"register\": \"coap\"}]}",
        "t.json:1:108: devices[0].register: must be \"https\", \"mqtt\" or \"mqtt-nwl\", got "
        "\"coap\"");
    /* Identities follow Aliyun's rules. */
    expect_error(
        "{\"devices\": [{\"product_key\": \"a1B2!\", \"device_name\": \"pump-0001\", "
        "\"device_secret\": \"s\"}]}",
        "t.json:1:30: devices[0].product_key: may contain only letters, digits, '_' and '-'");
    expect_error("{\"devices\": [{\"product_key\": \"a1B2\", \"device_name\": \"abc\", "
                 "\"device_secret\": \"s\"}]}",
                 "t.json:1:53: devices[0].device_name: must be 4 to 32 characters, got 3");
    snprintf(buf, sizeof(buf), "{\"devices\": [{%s, \"client_id\": \"gw|1\"}]}", DEV);
    expect_error(buf, "t.json:1:113: devices[0].client_id: must not contain '|'");
    snprintf(buf, sizeof(buf),
             "{\"devices\": [{%s,\n \"topics\": [\"/ok\", \"x/y\", \"/${nope}\"]}]}", DEV);
    expect_error(buf, "t.json:2:20: devices[0].topics[1]: must start with '/': \"x/y\"");
    CHECK(has(&errs, "t.json:2:27: devices[0].topics[2]: unknown placeholder (only ${productKey} "
                     "and ${deviceName}): \"/${nope}\""));
    /* Duplicate devices name both places. */
    snprintf(buf, sizeof(buf), "{\"devices\": [\n{%s},\n{%s}]}", DEV, DEV);
    expect_error(buf, "t.json:3:47: devices[1].device_name: duplicate device a1B2c3D4e5F/pump-0001 "
                      "(first defined at t.json:2:47)");
    /* Plugins: a name is required, devices must exist. */
    expect_error("{\"plugins\": [{\"config\": {}}]}",
                 "t.json:1:14: plugins[0]: a plugin needs a \"name\"");
    expect_error("{\"plugins\": [{\"name\": \"sim\", \"devices\": [\"pk1/ghost-01\"]}]}",
                 "t.json:1:42: plugins[0].devices[0]: no such device \"pk1/ghost-01\" (not in "
                 "devices or devices_file)");
}

static void test_three_mistakes(void)
{
    struct config *c = NULL;
    reset();
    int r = config_load(DATA "three_mistakes.json", &c, &errs, &warns);
    CHECK_INT(r, -EINVAL);
    CHECK(c == NULL);
    CHECK_INT(errs.n, 3);
    if (errs.n == 3) {
        CHECK_STR(errs.v[0].text,
                  DATA "three_mistakes.json:2:16: log_level: must be \"error\", "
                       "\"warning\", \"notice\", \"info\" or \"debug\", got \"verbose\"");
        CHECK_STR(errs.v[1].text, DATA "three_mistakes.json:4:18: cloud.keepalive: must be between "
                                       "30 and 1200 seconds, got 20");
        CHECK_STR(errs.v[2].text,
                  DATA "three_mistakes.json:7:5: devices[0].device_secret: missing: "
                       "give device_secret, or product_secret with register "
                       "(https, mqtt or mqtt-nwl)");
    }
    /* A file with many mistakes reports every one, sorted by position. */
    reset();
    r = config_load(DATA "many_errors.json", &c, &errs, &warns);
    CHECK_INT(r, -EINVAL);
    CHECK_INT(errs.n, 23);
    CHECK(has(&errs, DATA "many_errors.json:2:3: log_levl: unknown key"));
    CHECK(has(&errs, DATA "many_errors.json:21:30: devices[6].color: unknown key"));
    CHECK(has(&errs,
              DATA "many_errors.json:26:33: plugins[2].config: must be an object, got an array"));
    for (size_t i = 1; i < errs.n; i++) {
        int l0 = 0, l1 = 0;
        sscanf(strchr(errs.v[i - 1].text, ':') + 1, "%d", &l0);
        sscanf(strchr(errs.v[i].text, ':') + 1, "%d", &l1);
        CHECK(l0 <= l1);
    }
}

static void test_defaults(void)
{
    char buf[2048];
    snprintf(buf, sizeof(buf), "{\"devices\": [{%s}]}", DEV);
    struct config *c = load_buf(buf);
    CHECK(c != NULL);
    if (!c)
        return;
    const struct device_conf *d = config_find_device(c, "a1B2c3D4e5F", "pump-0001");
    CHECK(d != NULL);
    CHECK(config_find_device(c, "a1B2c3D4e5F", "pump-0002") == NULL);
    CHECK_STR(d->host, "a1B2c3D4e5F.iot-as-mqtt.cn-shanghai.aliyuncs.com");
    CHECK_INT(d->port, 8883);
    CHECK(d->tls);
    CHECK_INT(d->securemode, 2);
    CHECK_INT(d->keepalive, 300);
    CHECK_STR(d->client_id, "a1B2c3D4e5F.pump-0001");
    CHECK_STR(d->ca_file, ALIGW_DATA_DIR "/aliyun-ca-bundle.pem");
    CHECK(d->verify_hostname && d->timestamp && d->auto_reconnect && !d->clean_session);
    CHECK_INT(d->sign_method, SIGN_HMACSHA256);
    CHECK_INT(d->reg, REG_NONE);
    CHECK(d->rate == 30);
    CHECK_INT(c->log_level, LOG_INFO);
    CHECK_STR(c->state_dir, "/var/lib/aligw");
    CHECK_STR(c->store.path, "/var/lib/aligw/outbox.db");
    CHECK_STR(c->api.socket, "/run/aligw/aligw.sock");
    CHECK_STR(c->cloud.register_url,
              "https://iot-auth.cn-shanghai.aliyuncs.com/auth/register/device");
    CHECK_INT(c->store.inflight, 32);
    CHECK_INT(c->store.inflight_total, 2048);
    CHECK_INT(c->store.ttl_s, 7 * 86400);
    CHECK_INT(c->store.max_bytes, 1 << 30);
    CHECK_INT(c->api.max_line, 1 << 20);
    CHECK_INT(c->api.max_payload, 256 << 10);
    CHECK_INT(c->cloud.connect_burst, 50);
    CHECK(c->cloud.network_watch);
    CHECK_INT(c->cloud.devices_per_shard, 250);
    CHECK_INT(c->cloud.max_shards, 0);
    config_free(c);

    /* instance_id picks the new endpoint; TLS off gives 1883 and securemode 3. */
    snprintf(buf, sizeof(buf),
             "{\"cloud\": {\"instance_id\": \"iot-06z00abc\", \"tls\": false, \"region\": "
             "\"ap-southeast-1\"}, \"state_dir\": \"state\", \"devices\": [{%s}, {\"product_key\": "
             "\"a1B2c3D4e5F\", \"device_name\": \"pump-0002\", \"device_secret\": \"s\", \"tls\": "
             "true}]}",
             DEV);
    c = load_buf(buf);
    CHECK(c != NULL);
    if (!c)
        return;
    CHECK_STR(c->devices[0].host, "iot-06z00abc.mqtt.iothub.aliyuncs.com");
    CHECK_INT(c->devices[0].port, 1883);
    CHECK_INT(c->devices[0].securemode, 3);
    CHECK_INT(c->devices[1].port, 8883);
    CHECK_INT(c->devices[1].securemode, 2);
    CHECK(c->cloud.network_watch);
    CHECK_STR(c->cloud.register_url,
              "https://iot-auth.ap-southeast-1.aliyuncs.com/auth/register/device");
    /* Relative paths are relative to the config file's directory (here the cwd). */
    char cwd[1024], want[1200];
    CHECK(getcwd(cwd, sizeof(cwd)) != NULL);
    snprintf(want, sizeof(want), "%s/state/outbox.db", cwd);
    CHECK_STR(c->store.path, want);
    config_free(c);

    /* cloud.port and cloud.host apply to every device unless it overrides them. */
    snprintf(
        buf, sizeof(buf),
        "{\"cloud\": {\"host\": \"127.0.0.1\", \"port\": 18883, \"keepalive\": 60}, "
        "\"devices\": [{%s, \"client_id\": \"${deviceName}@gw\", \"topics\": "
        "[\"/${productKey}/${deviceName}/user/get\"]}, {\"product_key\": \"a1B2c3D4e5F\", "
        "\"device_name\": \"pump-0002\", \"product_secret\": \"p\", \"register\": \"mqtt-nwl\", "
        "\"port\": 443, \"keepalive\": 90}]}",
        DEV);
    c = load_buf(buf);
    CHECK(c != NULL);
    if (!c)
        return;
    CHECK_STR(c->devices[0].host, "127.0.0.1");
    CHECK_INT(c->devices[0].port, 18883);
    CHECK_INT(c->devices[0].keepalive, 60);
    CHECK_STR(c->devices[0].client_id, "pump-0001@gw");
    CHECK_INT(c->devices[0].n_topics, 1);
    CHECK_STR(c->devices[0].topics[0], "/a1B2c3D4e5F/pump-0001/user/get");
    CHECK_INT(c->devices[1].port, 443);
    CHECK_INT(c->devices[1].keepalive, 90);
    CHECK_INT(c->devices[1].reg, REG_MQTT_NWL);
    CHECK(c->devices[1].device_secret == NULL);
    CHECK_STR(c->devices[1].product_secret, "p");
    config_free(c);
}

static void test_devices_file(void)
{
    struct config *c = NULL;
    reset();
    int r = config_load(DATA "devices_ok.json", &c, &errs, &warns);
    CHECK_INT(r, 0);
    CHECK_INT(errs.n, 0);
    if (!c)
        return;
    CHECK_INT(c->n_devices, 4); /* inline-01, pump-0001, pump-0002, pump-0004 (0003 is a comment) */
    CHECK_STR(c->devices[0].device_name, "inline-01");
    const struct device_conf *d = config_find_device(c, "a1B2c3D4e5F", "pump-0001");
    CHECK(d && strcmp(d->device_secret, "s3cret1") == 0 && d->keepalive == 300);
    d = config_find_device(c, "a1B2c3D4e5F", "pump-0002");
    CHECK(d != NULL);
    if (d) {
        CHECK(!d->tls);
        CHECK_INT(d->port, 1883);
        CHECK_INT(d->keepalive, 60);
        CHECK(d->rate == 0);
        CHECK_INT(d->n_topics, 2);
        if (d->n_topics == 2) {
            CHECK_STR(d->topics[0], "/a1B2c3D4e5F/pump-0002/user/a");
            CHECK_STR(d->topics[1], "/a1B2c3D4e5F/x");
        }
    }
    CHECK(config_find_device(c, "a1B2c3D4e5F", "pump-0003") == NULL);
    d = config_find_device(c, "a1B2c3D4e5F", "pump-0004");
    CHECK(d && d->port == 443 && d->tls && d->rate == 12.5 &&
          strcmp(d->device_secret, "s3cret4") == 0);
    config_free(c);

    reset();
    r = config_load(DATA "devices_unknown_column.json", &c, &errs, &warns);
    CHECK_INT(r, -EINVAL);
    CHECK(has(&errs, DATA "devices_unknown_column.csv:1:39: colour: unknown column (columns: "
                          "product_key, device_name, device_secret, product_secret, register, "
                          "client_id, keepalive, rate, host, port, tls, topics, hub_*)"));

    reset();
    r = config_load(DATA "devices_errors.json", &c, &errs, &warns);
    CHECK_INT(r, -EINVAL);
    CHECK_INT(errs.n, 7);
    const char *F = DATA "devices_errors.csv";
    char want[512];
#define WANT(...)                                                                                  \
    do {                                                                                           \
        snprintf(want, sizeof(want), __VA_ARGS__);                                                 \
        CHECK(has(&errs, want));                                                                   \
    } while (0)
    WANT("%s:2:25: keepalive: must be between 30 and 1200 seconds, got 20", F);
    WANT("%s:3:25: keepalive: must be an integer, got \"abc\"", F);
    WANT("%s:4:1: keepalive: row has 3 fields, the header has 5", F);
    WANT("%s:5:15: device_name: a quote inside an unquoted field (quote the whole field)", F);
    WANT("%s:6:26: register: device_secret and register exclude each other: give device_secret, "
         "or product_secret with register",
         F);
    WANT("%s:7:13: device_name: duplicate device a1B2c3D4e5F/inline-01 (first defined at "
         "%sdevices_errors.json:4:52)",
         F, DATA);
    WANT("%s:9:13: device_name: duplicate device a1B2c3D4e5F/pump-0006 (first defined at %s:8:13)",
         F, F);
}

static void write_file(const char *path, const char *text, mode_t mode)
{
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (!f)
        return;
    fputs(text, f);
    fclose(f);
    chmod(path, mode);
}

static void test_permissions_and_speed(void)
{
    char dir[] = "/tmp/test_config.XXXXXX", cfg[256], csv[256];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(cfg, sizeof(cfg), "%s/aligw.json", dir);
    snprintf(csv, sizeof(csv), "%s/devices.csv", dir);
    struct config *c = NULL;
    char text[1024];
    snprintf(text, sizeof(text), "{\"devices\": [{%s}]}", DEV);

    write_file(cfg, text, 0644);
    reset();
    CHECK_INT(config_load(cfg, &c, &errs, &warns), 0);
    config_free(c);
    CHECK_INT(warns.n, 1);
    if (warns.n == 1) {
        CHECK(strstr(warns.v[0].text, cfg) != NULL);
        CHECK(strstr(warns.v[0].text, "chmod 640") != NULL);
    }
    chmod(cfg, 0640);
    reset();
    CHECK_INT(config_load(cfg, &c, &errs, &warns), 0);
    config_free(c);
    CHECK_INT(warns.n, 0);

    /* 10,000 and 100,000 devices from a file: well under a second. */
    static const int sizes[] = {10000, 100000};
    for (int k = 0; k < 2; k++) {
        FILE *f = fopen(csv, "w");
        CHECK(f != NULL);
        if (!f)
            break;
        fprintf(f, "product_key,device_name,device_secret,keepalive,hub_note\n");
        for (int i = 0; i < sizes[k]; i++)
            fprintf(f, "a1B2c3D4e5F,dev-%06d,0123456789abcdef0123456789abcd%02d,%d,n\n", i, i % 100,
                    60 + i % 600);
        fclose(f);
        chmod(csv, 0600);
        write_file(cfg, "{\"devices_file\": \"devices.csv\"}", 0600);
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        reset();
        int r = config_load(cfg, &c, &errs, &warns);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
        printf("devices file with %d devices loaded in %.1f ms\n", sizes[k], ms);
        CHECK_INT(r, 0);
        CHECK(c && c->n_devices == (size_t)sizes[k]);
        CHECK(config_find_device(c, "a1B2c3D4e5F", "dev-000042") != NULL);
        config_free(c);
    }
    unlink(cfg);
    unlink(csv);
    rmdir(dir);
}

static void test_example_and_api(void)
{
    struct config *c = NULL;
    reset();
    int r = config_load(ALIGW_SOURCE_DIR "/conf/aligw.example.json", &c, &errs, &warns);
    CHECK_INT(r, 0);
    for (size_t i = 0; i < errs.n; i++)
        fprintf(stderr, "example: %s\n", errs.v[i].text);
    if (!c)
        return;
    CHECK(c->n_devices >= 2); /* the inline example and the devices file */
    CHECK(c->devices[0].tls && c->devices[0].keepalive == 300);
    CHECK_STR(c->state_dir, "/var/lib/aligw");
    CHECK(c->devices_file && strstr(c->devices_file, "devices.example.csv"));

    /* The API's runtime add: same rules, cloud defaults applied. */
    json_error_t je;
    json_t *o = json_loads("{\"product_key\": \"a1B2c3D4e5F\", \"device_name\": \"new-0001\", "
                           "\"device_secret\": \"s\", \"topics\": [\"/${deviceName}/t\"]}",
                           0, &je);
    struct device_conf d, d2;
    struct config_errors e = {0};
    CHECK_INT(config_device_from_json(c, o, &d, &e), 0);
    CHECK_INT(e.n, 0);
    CHECK(d.runtime);
    CHECK_INT(d.keepalive, 300);
    CHECK_STR(d.topics[0], "/new-0001/t");
    CHECK_INT(config_device_conf_copy(&d2, &d), 0);
    CHECK(d2.host != d.host);
    CHECK_STR(d2.host, d.host);
    CHECK_STR(d2.topics[0], "/new-0001/t");
    config_device_conf_free(&d);
    config_device_conf_free(&d2);
    json_decref(o);

    o = json_loads("{\"product_key\": \"a1B2c3D4e5F\", \"device_name\": \"x\", \"keepalive\": 5, "
                   "\"bogus\": 1}",
                   0, &je);
    CHECK_INT(config_device_from_json(c, o, &d, &e), -EINVAL);
    CHECK(has(&e, "device_name: must be 4 to 32 characters, got 1"));
    CHECK(has(&e, "keepalive: must be between 30 and 1200 seconds, got 5"));
    CHECK(has(&e, "bogus: unknown key"));
    CHECK(has(&e, "device_secret: missing: give device_secret, or product_secret with register "
                  "(https, mqtt or mqtt-nwl)"));
    config_errors_free(&e);
    json_decref(o);
    config_free(c);
}

/* A bare plugin name: the first directory of $ALIGW_PLUGIN_PATH holding <name>.so, else the
 * installed plugin directory; a name with '/' is a path. */
static void test_plugin_path(void)
{
    char dir[] = "/tmp/aligw-plugpath-XXXXXX", so[300], text[1200];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(so, sizeof(so), "%s/mine.so", dir);
    write_file(so, "", 0644);
    snprintf(text, sizeof(text),
             "{\"devices\": [{%s}], \"plugins\": [{\"name\": \"mine\"}, {\"name\": "
             "\"simulator\"}, {\"name\": \"./rel/x.so\"}]}",
             DEV);
    setenv("ALIGW_PLUGIN_PATH", "/nonexistent::/tmp", 1);
    struct config *c = load_buf(text);
    CHECK(c != NULL);
    if (c) {
        CHECK_STR(c->plugins[0].path, ALIGW_PLUGIN_DIR "/mine.so"); /* not in the list: default */
        config_free(c);
    }
    char env[400];
    snprintf(env, sizeof(env), "/nonexistent:%s", dir);
    setenv("ALIGW_PLUGIN_PATH", env, 1);
    c = load_buf(text);
    CHECK(c != NULL);
    if (c) {
        CHECK_STR(c->plugins[0].path, so);
        CHECK_STR(c->plugins[1].path, ALIGW_PLUGIN_DIR "/simulator.so");
        CHECK(strstr(c->plugins[2].path, "/rel/x.so") != NULL && c->plugins[2].path[0] == '/');
        config_free(c);
    }
    unsetenv("ALIGW_PLUGIN_PATH");
    unlink(so);
    rmdir(dir);
}

int main(void)
{
    test_error_classes();
    test_three_mistakes();
    test_defaults();
    test_devices_file();
    test_permissions_and_speed();
    test_example_and_api();
    test_plugin_path();
    reset();
    return check_done();
}
