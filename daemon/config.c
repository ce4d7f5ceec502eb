/*
 * config: loads aligw.json and the devices file into a fresh struct config (see config.h).
 *
 * The shape: jansson parses the text (syntax errors carry jansson's own position), jsonpos
 * indexes the same text so every semantic error can name the line and column of the key or
 * value at fault, and one walk over the JSON tree checks every key against what the section
 * allows. Nothing stops at the first problem: each error is collected with its position, the
 * list is sorted by file and position at the end, and a config with any error is freed whole.
 * This file holds the sections and the whole-file flow; devices are config_devices.c, the
 * shared reporting and JSON readers config_loader.c.
 */
#include "config.h"
#include "config_loader.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "jsonpos.h"
#include "log.h"
#include "paths.h"

#ifndef ALIGW_PLUGIN_DIR
#error "ALIGW_PLUGIN_DIR must be defined by the build"
#endif

static const struct choice cfg_durability_choices[] = {
    {"normal", DURABILITY_NORMAL},
    {"full", DURABILITY_FULL},
    {NULL, 0},
};
static const struct choice cfg_policy_choices[] = {
    {"drop-oldest", STORE_DROP_OLDEST},
    {"reject-new", STORE_REJECT_NEW},
    {NULL, 0},
};

/* ---- sections ------------------------------------------------------------------------------- */

static bool region_ok(const char *s)
{
    return strlen(s) <= 32 && cfg_chars_ok(s, "-");
}

static bool instance_id_ok(const char *s)
{
    return strlen(s) <= 64 && cfg_chars_ok(s, "-_");
}

static bool url_ok(const char *s)
{
    return strncmp(s, "https://", 8) == 0 || strncmp(s, "http://", 7) == 0;
}

/* A true/false key into *out; anything else is an error naming it. */
static bool bool_key(struct loader *L, json_t *v, const char *p, bool *out)
{
    if (!json_is_boolean(v)) {
        cfg_jerr(L, p, false, "must be true or false, got %s", cfg_json_type_name(v));
        return false;
    }
    *out = json_is_true(v);
    return true;
}

static void cloud_network_watch(struct loader *L, void *ctx, json_t *v, const char *p)
{
    bool_key(L, v, p, &L->c->cloud.network_watch);
}

static const struct key cloud_keys[] = {
    {"region", K_STR, CF(cloud.region), .ok = region_ok,
     .why = "not a region id (like \"cn-shanghai\")", .quote = true},
    {"instance_id", K_STR, CF(cloud.instance_id), .ok = instance_id_ok,
     .why = "not an instance id (like \"iot-06z00ab1cd2ef3g\")"},
    {"register_url", K_STR, CF(cloud.register_url), .ok = url_ok,
     .why = "must be an https:// (or http://) URL"},
    {"connect_rate", K_NUM, CF(cloud.connect_rate), .dlo = 0.01, .dhi = 100000},
    {"connect_burst", K_INT, CF(cloud.connect_burst), .lo = 1, .hi = 100000},
    {"backoff_min_ms", K_INT, CF(cloud.backoff_min_ms), .lo = 100, .hi = 3600000},
    {"backoff_max_ms", K_INT, CF(cloud.backoff_max_ms), .lo = 100, .hi = 86400000},
    {"auth_backoff_ms", K_INT, CF(cloud.auth_backoff_ms), .lo = 1000, .hi = 86400000},
    {"kick_backoff_ms", K_INT, CF(cloud.kick_backoff_ms), .lo = 1000, .hi = 86400000},
    {"ack_timeout_ms", K_INT, CF(cloud.ack_timeout_ms), .lo = 0, .hi = 3600000},
    {"time_sync_s", K_INT, CF(cloud.time_sync_s), .lo = 0, .hi = 604800},
    {"max_clock_skew_ms", K_INT, CF(cloud.max_clock_skew_ms), .lo = 100, .hi = 86400000},
    {"network_watch", K_FN, .fn = cloud_network_watch, .restart = true},
    {"devices_per_shard", K_INT, CF(cloud.devices_per_shard), .lo = 0, .hi = 1000000,
     .restart = true},
    {"max_shards", K_INT, CF(cloud.max_shards), .lo = 0, .hi = 64, .restart = true},
    {0},
};

static const struct key store_keys[] = {
    {"path", K_PATH, CF(store.path), .restart = true},
    {"durability", K_CHOICE, CF(store.durability), .restart = true,
     .choices = cfg_durability_choices},
    {"max_bytes", K_INT, CF(store.max_bytes), .restart = true, .lo = 65536, .hi = INT64_MAX},
    {"policy", K_CHOICE, CF(store.policy), .restart = true, .choices = cfg_policy_choices},
    {"ttl", K_INT, CF(store.ttl_s), .restart = true, .lo = 0, .hi = 100LL * 365 * 86400},
    {"inflight", K_INT, CF(store.inflight), .lo = 1, .hi = 65534},
    {"inflight_total", K_INT, CF(store.inflight_total), .lo = 1, .hi = 65534},
    {0},
};

static void parse_store(struct loader *L, void *ctx, json_t *o, const char *path)
{
    struct config *c = L->c;
    if (!cfg_j_object(L, o, path))
        return;
    cfg_walk(L, o, path, store_keys, NULL, NULL);
    if (c->store.inflight > c->store.inflight_total)
        cfg_jerr(L, "store.inflight", false, "must not exceed store.inflight_total (%d)",
                 c->store.inflight_total);
}

static const struct key api_keys[] = {
    {"socket", K_PATH, CF(api.socket), .restart = true},
    {"group", K_STR, CF(api.group), .restart = true, .ok = cfg_valid_name,
     .why = "not a valid group name"},
    {"allow_users", K_NAMES, CF(api.allow_users),
     .off2 = offsetof(struct config, api.n_allow_users)},
    {"allow_groups", K_NAMES, CF(api.allow_groups),
     .off2 = offsetof(struct config, api.n_allow_groups)},
    {"admin_users", K_NAMES, CF(api.admin_users),
     .off2 = offsetof(struct config, api.n_admin_users)},
    {"admin_groups", K_NAMES, CF(api.admin_groups),
     .off2 = offsetof(struct config, api.n_admin_groups)},
    {"max_line", K_INT, CF(api.max_line), .restart = true, .lo = 4096, .hi = 64LL << 20},
    {"max_payload", K_INT, CF(api.max_payload), .restart = true, .lo = 1, .hi = 64LL << 20},
    {"service_timeout_ms", K_INT, CF(api.service_timeout_ms), .lo = 100, .hi = 600000},
    {0},
};

static void parse_api(struct loader *L, void *ctx, json_t *o, const char *path)
{
    struct config *c = L->c;
    if (!cfg_j_object(L, o, path))
        return;
    cfg_walk(L, o, path, api_keys, NULL, NULL);
    if (c->api.max_payload > c->api.max_line)
        cfg_jerr(L, "api.max_payload", false, "must not exceed api.max_line (%zu)",
                 c->api.max_line);
}

/*
 * Where a plugin given by a bare name lives: the first directory of $ALIGW_PLUGIN_PATH (a
 * colon-separated list, like PATH) that holds <name>.so, else paths_plugin_dir() (the installed
 * plugin directory, or the build's when aligwd runs from its build tree). The one place this
 * rule is applied: the config carries the resolved path.
 */
static char *plugin_file(struct loader *L, const char *name)
{
    const char *env = getenv("ALIGW_PLUGIN_PATH");
    while (env && *env) {
        size_t n = strcspn(env, ":");
        if (n) {
            char *s = cfg_lfmt(L, "%.*s/%s.so", (int)n, env, name);
            if (!s || access(s, F_OK) == 0)
                return s;
            free(s);
        }
        env += n + (env[n] == ':');
    }
    return cfg_lfmt(L, "%s/%s.so", paths_plugin_dir(), name);
}

/* "127.0.0.1:9469", "[::1]:9469", ":9469" (every address) or an absolute Unix socket path. */
static bool listen_ok(const char *s)
{
    if (s[0] == '/')
        return strlen(s) <= 107;
    const char *colon = strrchr(s, ':');
    if (!colon || (s[0] == '[' && (colon == s || colon[-1] != ']')))
        return false;
    char *end;
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    return colon[1] && *end == '\0' && errno == 0 && port >= 1 && port <= 65535;
}

static void metrics_per_device(struct loader *L, void *ctx, json_t *v, const char *p)
{
    if (!json_is_boolean(v))
        cfg_jerr(L, p, false, "must be true or false");
    else
        L->c->metrics.per_device = json_is_true(v);
}

static const struct key metrics_keys[] = {
    {"listen", K_STR, CF(metrics.listen), .restart = true, .ok = listen_ok,
     .why = "must be HOST:PORT (\"127.0.0.1:9469\", \"[::1]:9469\", \":9469\") or an absolute "
            "Unix socket path of at most 107 bytes",
     .quote = true},
    {"per_device", K_FN, .fn = metrics_per_device},
    {0},
};

static void parse_metrics(struct loader *L, void *ctx, json_t *o, const char *path)
{
    if (cfg_j_object(L, o, path))
        cfg_walk(L, o, path, metrics_keys, NULL, NULL);
}

static const struct key health_keys[] = {
    {"min_online", K_NUM, CF(health.min_online), .dlo = 0, .dhi = 1},
    {0},
};

static void parse_health(struct loader *L, void *ctx, json_t *o, const char *path)
{
    if (cfg_j_object(L, o, path))
        cfg_walk(L, o, path, health_keys, NULL, NULL);
}

/* One entry of "plugins" being read (the ctx of its key handlers). */
struct plugin_walk {
    struct plugin_conf *pc;
    size_t i; /* its index in "plugins" */
    bool named;
};

static void plugin_name(struct loader *L, void *ctx, json_t *v, const char *p)
{
    struct plugin_walk *w = ctx;
    struct plugin_conf *pc = w->pc;
    const char *str;
    w->named = true;
    if (!cfg_j_nonempty(L, v, p, &str))
        return;
    if (strchr(str, '/')) {
        pc->name = cfg_ldup(L, str);
        pc->path = cfg_resolve_path(L, str);
    } else if (strlen(str) > 64 || !cfg_chars_ok(str, "_-")) {
        cfg_jerr(L, p, false,
                 "a plugin name may contain only letters, digits, '_' and '-' (or "
                 "give a path containing '/')");
    } else {
        pc->name = cfg_ldup(L, str);
        pc->path = plugin_file(L, str);
    }
}

static void plugin_config(struct loader *L, void *ctx, json_t *v, const char *p)
{
    struct plugin_walk *w = ctx;
    if (cfg_j_object(L, v, p))
        w->pc->config = json_incref(v);
}

/* The plugin's devices: each one configured, and owned by no other plugin. */
static void plugin_devices(struct loader *L, void *ctx, json_t *v, const char *p)
{
    struct plugin_walk *w = ctx;
    struct plugin_conf *pc = w->pc;
    struct config *c = L->c;
    const char *str;
    if (!json_is_array(v)) {
        cfg_jerr(L, p, false, "must be an array of \"productKey/deviceName\" strings");
        return;
    }
    pc->devices = calloc(json_array_size(v) + 1, sizeof(*pc->devices));
    if (!pc->devices) {
        L->oom = true;
        return;
    }
    size_t j;
    json_t *el;
    json_array_foreach(v, j, el)
    {
        char ep[128];
        snprintf(ep, sizeof(ep), "%s[%zu]", p, j);
        if (!cfg_j_str(L, el, ep, &str))
            continue;
        const char *slash = strchr(str, '/');
        if (!slash || slash == str || !slash[1]) {
            cfg_jerr(L, ep, false, "must be \"productKey/deviceName\", got \"%s\"", str);
            continue;
        }
        char *pk = strndup(str, (size_t)(slash - str));
        if (!pk) {
            L->oom = true;
            continue;
        }
        const struct device_conf *d = config_find_device(c, pk, slash + 1);
        long di = d ? d - c->devices : -1;
        free(pk);
        if (!d) {
            cfg_jerr(L, ep, false, "no such device \"%s\" (not in devices or devices_file)", str);
            continue;
        }
        if (L->owner[di] >= 0) {
            cfg_jerr(L, ep, false, "device %s already belongs to plugins[%d]", str, L->owner[di]);
            continue;
        }
        L->owner[di] = (int)w->i;
        pc->devices[pc->n_devices++] = cfg_ldup(L, str);
    }
}

static void plugin_isolation(struct loader *L, void *ctx, json_t *v, const char *p)
{
    static const struct choice modes[] = {{"process", 0}, {"none", 1}, {NULL, 0}};
    struct plugin_walk *w = ctx;
    int ch;
    if (cfg_j_choice(L, v, p, modes, &ch))
        w->pc->in_process = ch == 1;
}

/* The supervision numbers of an out-of-process plugin: key name → field and range. */
static void plugin_number(struct loader *L, void *ctx, json_t *v, const char *p)
{
    struct plugin_walk *w = ctx;
    const char *k = strrchr(p, '.') ? strrchr(p, '.') + 1 : p;
    long long x;
    int *dst = !strcmp(k, "heartbeat_ms")     ? &w->pc->heartbeat_ms
               : !strcmp(k, "restart_min_ms") ? &w->pc->restart_min_ms
               : !strcmp(k, "restart_max_ms") ? &w->pc->restart_max_ms
                                              : &w->pc->max_start_failures;
    long long lo = dst == &w->pc->max_start_failures ? 1 : (dst == &w->pc->heartbeat_ms ? 100 : 10);
    long long hi = dst == &w->pc->max_start_failures ? 1000 : 86400000;
    if (cfg_j_int(L, v, p, lo, hi, &x))
        *dst = (int)x;
}

static const struct key plugin_keys[] = {
    {"name", K_FN, .fn = plugin_name},
    {"config", K_FN, .fn = plugin_config},
    {"devices", K_FN, .fn = plugin_devices},
    {"isolation", K_FN, .fn = plugin_isolation},
    {"heartbeat_ms", K_FN, .fn = plugin_number},
    {"restart_min_ms", K_FN, .fn = plugin_number},
    {"restart_max_ms", K_FN, .fn = plugin_number},
    {"max_start_failures", K_FN, .fn = plugin_number},
    {0},
};

static void parse_plugins(struct loader *L, json_t *arr)
{
    struct config *c = L->c;
    if (!json_is_array(arr)) {
        cfg_jerr(L, "plugins", false, "must be an array of plugin objects, got %s",
                 cfg_json_type_name(arr));
        return;
    }
    c->plugins = calloc(json_array_size(arr) + 1, sizeof(*c->plugins));
    if (!c->plugins) {
        L->oom = true;
        return;
    }
    size_t i;
    json_t *o;
    json_array_foreach(arr, i, o)
    {
        char path[48];
        snprintf(path, sizeof(path), "plugins[%zu]", i);
        if (!cfg_j_object(L, o, path))
            continue;
        struct plugin_walk w = {.pc = &c->plugins[c->n_plugins++], .i = i};
        w.pc->heartbeat_ms = 5000;
        w.pc->restart_min_ms = 1000;
        w.pc->restart_max_ms = 60000;
        w.pc->max_start_failures = 5;
        cfg_walk(L, o, path, plugin_keys, NULL, &w);
        if (w.pc->restart_max_ms < w.pc->restart_min_ms)
            cfg_jerr(L, path, false, "restart_max_ms must not be below restart_min_ms");
        if (!w.named)
            cfg_jerr(L, path, false, "a plugin needs a \"name\"");
        if (!w.pc->config)
            w.pc->config = json_object();
    }
}

/* ---- the whole file ------------------------------------------------------------------------- */

static void config_defaults(struct config *c)
{
    c->log_level = LOG_INFO;
    c->cloud.connect_rate = 50;
    c->cloud.backoff_min_ms = 1000;
    c->cloud.network_watch = true;
    c->cloud.devices_per_shard = 250;
    c->cloud.backoff_max_ms = 120000;
    c->cloud.auth_backoff_ms = 300000;
    c->cloud.kick_backoff_ms = 60000;
    c->cloud.ack_timeout_ms = 30000;
    c->cloud.time_sync_s = 3600;
    c->cloud.max_clock_skew_ms = 5000;
    c->store.durability = DURABILITY_NORMAL;
    c->store.max_bytes = (int64_t)1 << 30;
    c->store.policy = STORE_DROP_OLDEST;
    c->store.ttl_s = 7 * 86400;
    c->store.inflight = 32;
    c->store.inflight_total = 2048;
    c->api.max_line = 1 << 20;
    c->api.max_payload = 256 << 10;
    c->api.service_timeout_ms = 8000;
    c->health.min_online = 0.5;
    c->ota.max_concurrent = 4;
    c->ota.progress_interval_ms = 3000;
    c->ota.apply_timeout_s = 600;
    c->ota.max_retries = 10;
    c->ota.min_free_bytes = 16 << 20;
    c->ota.pull_at_login = true;
}

static void check_private(struct loader *L, const char *display, const struct stat *st)
{
    if (st->st_mode & S_IROTH)
        cfg_warn(L,
                 "%s: holds secrets and every user can read it (mode %04o); run chmod 640 %s (or "
                 "600), owned by root and the aligw group",
                 display, (unsigned)(st->st_mode & 07777), display);
}

static void load_devices_file(struct loader *L, const char *given)
{
    struct config *c = L->c;
    c->devices_file = cfg_resolve_path(L, given);
    if (!c->devices_file)
        return;
    /* Messages name the file as the config does, relative to the config's own name. */
    const char *slash = L->name ? strrchr(L->name, '/') : NULL;
    if (given[0] == '/' || !slash)
        L->dev_display = cfg_ldup(L, given);
    else
        L->dev_display = cfg_lfmt(L, "%.*s/%s", (int)(slash - L->name), L->name, given);
    if (!L->dev_display)
        return;
    char *buf = NULL;
    size_t len;
    struct stat st;
    int r = cfg_read_file(c->devices_file, &buf, &len, &st);
    if (r < 0) {
        cfg_jerr(L, "devices_file", false, "cannot read %s: %s", c->devices_file,
                 cfg_file_error(r));
        return;
    }
    cfg_parse_devices_file(L, buf, len);
    free(buf);
    if (L->secrets_file)
        check_private(L, L->dev_display, &st);
}

static void root_log_level(struct loader *L, void *ctx, json_t *v, const char *p)
{
    const char *str;
    if (!cfg_j_str(L, v, p, &str))
        return;
    int lv = log_level_parse(str);
    if (lv < 0)
        cfg_jerr(L, p, false,
                 "must be \"error\", \"warning\", \"notice\", \"info\" or \"debug\", got \"%s\"",
                 str);
    else
        L->c->log_level = lv;
}

static bool plugins_same(const struct config *a, const struct config *b)
{
    if (a->n_plugins != b->n_plugins)
        return false;
    for (size_t i = 0; i < a->n_plugins; i++) {
        const struct plugin_conf *x = &a->plugins[i], *y = &b->plugins[i];
        bool same_config =
            x->config == y->config || (x->config && y->config && json_equal(x->config, y->config));
        if (strcmp(x->name, y->name) != 0 || x->n_devices != y->n_devices || !same_config ||
            x->in_process != y->in_process || x->heartbeat_ms != y->heartbeat_ms ||
            x->restart_min_ms != y->restart_min_ms || x->restart_max_ms != y->restart_max_ms ||
            x->max_start_failures != y->max_start_failures)
            return false;
        for (size_t k = 0; k < x->n_devices; k++)
            if (strcmp(x->devices[k], y->devices[k]) != 0)
                return false;
    }
    return true;
}

static void ota_allow_http(struct loader *L, void *ctx, json_t *v, const char *p)
{
    bool_key(L, v, p, &L->c->ota.allow_http);
}

static void ota_pull_at_login(struct loader *L, void *ctx, json_t *v, const char *p)
{
    bool_key(L, v, p, &L->c->ota.pull_at_login);
}

/* Firmware upgrades: every key applies on reload (to downloads started afterwards). */
static const struct key ota_keys[] = {
    {"max_concurrent", K_INT, CF(ota.max_concurrent), .lo = 1, .hi = 10000},
    {"max_rate", K_INT, CF(ota.max_rate), .lo = 0, .hi = INT64_MAX},
    {"ca_file", K_PATH, CF(ota.ca_file)},
    {"allow_http", K_FN, .fn = ota_allow_http},
    {"progress_interval_ms", K_INT, CF(ota.progress_interval_ms), .lo = 100, .hi = 3600000},
    {"apply_timeout_s", K_INT, CF(ota.apply_timeout_s), .lo = 1, .hi = 7 * 86400},
    {"max_retries", K_INT, CF(ota.max_retries), .lo = 0, .hi = 1000},
    {"min_free_bytes", K_INT, CF(ota.min_free_bytes), .lo = 0, .hi = INT64_MAX},
    {"pull_at_login", K_FN, .fn = ota_pull_at_login},
    {0},
};

static void parse_ota(struct loader *L, void *ctx, json_t *o, const char *path)
{
    if (!cfg_j_object(L, o, path))
        return;
    cfg_walk(L, o, path, ota_keys, NULL, NULL);
}

/* The top level. The keys read after the walk are those whose order matters. */
static const struct key root_keys[] = {
    {.name = "cloud", .kind = K_SKIP},
    {.name = "devices", .kind = K_SKIP},
    {.name = "devices_file", .kind = K_SKIP},
    {.name = "plugins", .kind = K_SKIP, .restart = true, .same = plugins_same},
    {"log_level", K_FN, .fn = root_log_level},
    {"state_dir", K_PATH, CF(state_dir), .restart = true},
    {"runtime_dir", K_PATH, CF(runtime_dir), .restart = true},
    {"store", K_FN, .fn = parse_store, .sub = store_keys},
    {"api", K_FN, .fn = parse_api, .sub = api_keys},
    {"metrics", K_FN, .fn = parse_metrics, .sub = metrics_keys},
    {"health", K_FN, .fn = parse_health, .sub = health_keys},
    {"ota", K_FN, .fn = parse_ota, .sub = ota_keys},
    {0},
};

static void parse_root(struct loader *L, json_t *root)
{
    struct config *c = L->c;
    const char *str;
    json_t *cloud = json_object_get(root, "cloud");

    /* "cloud" first: devices resolve against it wherever it stands in the file. */
    if (cloud)
        cfg_parse_cloud(L, cloud, cloud_keys);
    else
        cfg_parse_cloud(L, NULL, cloud_keys);
    if (!c->cloud.region)
        c->cloud.region = cfg_ldup(L, "cn-shanghai");

    cfg_walk(L, root, "", root_keys, NULL, NULL);

    json_t *devs = json_object_get(root, "devices");
    if (devs)
        cfg_parse_inline_devices(L, devs);
    json_t *df = json_object_get(root, "devices_file");
    if (df && cfg_j_nonempty(L, df, "devices_file", &str))
        load_devices_file(L, str);

    L->owner = malloc((c->n_devices + 1) * sizeof(*L->owner));
    if (!L->owner) {
        L->oom = true;
        return;
    }
    for (size_t i = 0; i < c->n_devices; i++)
        L->owner[i] = -1;
    json_t *plugins = json_object_get(root, "plugins");
    if (plugins)
        parse_plugins(L, plugins);

    /* Defaults that depend on other keys. */
    if (!c->state_dir)
        c->state_dir = cfg_ldup(L, "/var/lib/aligw");
    if (!c->runtime_dir)
        c->runtime_dir = cfg_ldup(L, "/run/aligw");
    if (!c->store.path && c->state_dir)
        c->store.path = cfg_lfmt(L, "%s/outbox.db", c->state_dir);
    if (!c->api.socket && c->runtime_dir)
        c->api.socket = cfg_lfmt(L, "%s/aligw.sock", c->runtime_dir);
    if (c->api.socket && strlen(c->api.socket) > 107)
        cfg_jerr(L, json_object_get(json_object_get(root, "api"), "socket") ? "api.socket" : "api",
                 false, "socket path too long (%zu bytes, a Unix socket allows 107): %s",
                 strlen(c->api.socket), c->api.socket);
    if (!c->cloud.register_url && c->cloud.region)
        c->cloud.register_url =
            cfg_lfmt(L, "https://iot-auth.%s.aliyuncs.com/auth/register/device", c->cloud.region);
    if (!c->cloud.connect_burst)
        c->cloud.connect_burst = c->cloud.connect_rate < 1 ? 1 : (int)ceil(c->cloud.connect_rate);
    if (c->cloud.backoff_max_ms < c->cloud.backoff_min_ms)
        cfg_jerr(L, "cloud.backoff_max_ms", false, "must not be below cloud.backoff_min_ms (%d)",
                 c->cloud.backoff_min_ms);
}

/* The absolute directory of name (the current directory when name has none). */
static char *abs_dir(const char *name)
{
    char cwd[PATH_MAX];
    const char *slash = strrchr(name, '/');
    if (name[0] == '/')
        return strndup(name, slash == name ? 1 : (size_t)(slash - name));
    if (!getcwd(cwd, sizeof(cwd)))
        return NULL;
    char *out = NULL;
    int r = slash ? asprintf(&out, "%s/%.*s", cwd, (int)(slash - name), name)
                  : asprintf(&out, "%s", cwd);
    return r < 0 ? NULL : out;
}

static void loader_done(struct loader *L, struct config_errors *errs,
                        struct config_errors *warnings)
{
    cfg_elist_export(L, &L->errs, errs, true);
    cfg_elist_export(L, &L->warns, warnings, false);
    jsonpos_free(L->jp);
    free(L->dir);
    free(L->dev_display);
    free(L->orig);
    free(L->owner);
}

static int load_text(const char *name, const char *text, size_t len, const struct stat *st,
                     struct config **out, struct config_errors *errs,
                     struct config_errors *warnings)
{
    struct loader L = {.name = name};
    int r = -EINVAL;
    json_t *root = NULL;
    json_error_t jerror;
    struct config *c = calloc(1, sizeof(*c));

    *out = NULL;
    if (c)
        c->index = calloc(1, sizeof(*c->index));
    L.dir = abs_dir(name);
    if (c)
        c->path = strdup(name);
    if (!c || !c->index || !L.dir || !c->path) {
        L.oom = true;
        goto out;
    }
    L.c = c;
    config_defaults(c);

    if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0) {
        text += 3;
        len -= 3;
    }
    L.text = text;
    L.len = len;
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerror);
    if (!root) {
        cfg_report(&L, SRC_CONFIG, jerror.line > 0 ? jerror.line : 0,
                   jerror.column > 0 ? jerror.column : 0, "syntax", "%s", jerror.text);
        goto out;
    }
    L.jp = jsonpos_build(text, len);
    if (!L.jp) {
        L.oom = true;
        goto out;
    }
    if (!json_is_object(root)) {
        cfg_jerr(&L, "", false, "the configuration must be a JSON object, got %s",
                 cfg_json_type_name(root));
        goto out;
    }
    parse_root(&L, root);
    if (L.secrets_inline && st)
        check_private(&L, name, st);
    if (!L.oom && L.errs.n == 0)
        r = 0;
out:
    json_decref(root);
    if (L.oom)
        r = -ENOMEM;
    if (r < 0 && L.oom)
        cfg_report(&L, SRC_CONFIG, 0, 0, "(config)", "out of memory");
    loader_done(&L, errs, warnings);
    if (r == 0) {
        *out = c;
    } else {
        config_free(c);
    }
    return r;
}

int config_load_buffer(const char *name, const char *text, size_t len, struct config **out,
                       struct config_errors *errs, struct config_errors *warnings)
{
    return load_text(name ? name : "(buffer)", text, len, NULL, out, errs, warnings);
}

int config_load(const char *path, struct config **out, struct config_errors *errs,
                struct config_errors *warnings)
{
    char *buf = NULL;
    size_t len;
    struct stat st;
    *out = NULL;
    int r = cfg_read_file(path, &buf, &len, &st);
    if (r < 0) {
        struct loader L = {.name = path};
        cfg_report(&L, SRC_CONFIG, 0, 0, "(file)", "cannot read: %s", cfg_file_error(r));
        cfg_elist_export(&L, &L.errs, errs, false);
        return r;
    }
    r = load_text(path, buf, len, &st, out, errs, warnings);
    free(buf);
    return r;
}

/* ---- reload: which changed keys need a restart ----------------------------------------------- */

static bool opt_str_same(const char *x, const char *y)
{
    return x == y || (x && y && strcmp(x, y) == 0);
}

static bool field_same(const struct key *e, const struct config *a, const struct config *b)
{
    const char *fa = (const char *)a + e->off, *fb = (const char *)b + e->off;
    switch (e->kind) {
    case K_STR:
    case K_PATH:
        return opt_str_same(*(char *const *)fa, *(char *const *)fb);
    case K_INT:
    case K_NUM:
    case K_CHOICE:
        return memcmp(fa, fb, e->size) == 0;
    case K_NAMES: {
        size_t na = *(const size_t *)((const char *)a + e->off2);
        size_t nb = *(const size_t *)((const char *)b + e->off2);
        char **va, **vb;
        memcpy(&va, fa, sizeof(va));
        memcpy(&vb, fb, sizeof(vb));
        if (na != nb)
            return false;
        for (size_t i = 0; i < na; i++)
            if (strcmp(va[i], vb[i]) != 0)
                return false;
        return true;
    }
    default:
        return true;
    }
}

static void restart_keys(const struct key *keys, const char *prefix, const struct config *a,
                         const struct config *b, char *buf, size_t len)
{
    for (const struct key *e = keys; e->name; e++) {
        char name[128];
        snprintf(name, sizeof(name), "%s%s%s", prefix, prefix[0] ? "." : "", e->name);
        if (e->sub) {
            restart_keys(e->sub, name, a, b, buf, len);
            continue;
        }
        if (!e->restart || (e->same ? e->same(a, b) : field_same(e, a, b)))
            continue;
        size_t used = strlen(buf);
        snprintf(buf + used, len - used, "%s%s", used ? ", " : "", name);
    }
}

void config_restart_keys(const struct config *running, const struct config *next, char *buf,
                         size_t len)
{
    if (len == 0)
        return;
    buf[0] = '\0';
    restart_keys(root_keys, "", running, next, buf, len);
}

void config_free(struct config *c)
{
    if (!c)
        return;
    free(c->path);
    free(c->state_dir);
    free(c->runtime_dir);
    free(c->cloud.region);
    free(c->cloud.instance_id);
    free(c->cloud.register_url);
    config_device_conf_free(&c->cloud.defaults);
    free(c->store.path);
    free(c->api.socket);
    free(c->metrics.listen);
    free(c->api.group);
    free(c->ota.ca_file);
    cfg_free_strv(c->api.allow_users, c->api.n_allow_users);
    cfg_free_strv(c->api.allow_groups, c->api.n_allow_groups);
    cfg_free_strv(c->api.admin_users, c->api.n_admin_users);
    cfg_free_strv(c->api.admin_groups, c->api.n_admin_groups);
    free(c->devices_file);
    for (size_t i = 0; i < c->n_devices; i++)
        config_device_conf_free(&c->devices[i]);
    free(c->devices);
    for (size_t i = 0; i < c->n_plugins; i++) {
        free(c->plugins[i].name);
        free(c->plugins[i].path);
        json_decref(c->plugins[i].config);
        cfg_free_strv(c->plugins[i].devices, c->plugins[i].n_devices);
    }
    free(c->plugins);
    if (c->index)
        free(c->index->slots);
    free(c->index);
    free(c);
}
