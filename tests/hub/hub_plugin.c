/*
 * hub_plugin: the local hub's mosquitto 2.0 plugin (plugin API v5). It makes a stock mosquitto
 * behave like the Aliyun IoT Platform towards devices: it checks logins the way the platform
 * does (clientId|k=v,...| parsing, "dn&pk" usernames, HMAC signs with and without timestamp,
 * keepalive >= 30 s, securemode 2 on TLS and 3 on plain TCP), keeps one session per device
 * (a second login kicks the first), enforces the platform's topic permissions, answers alink
 * posts and NTP requests, rate-limits each device's uplink, runs MQTT dynamic registration
 * (register, regnwl, then connwl) and keeps counters the cloud-side test user can read. For
 * firmware upgrades it answers thing.ota.firmware.get from the jobs `hubctl ota-push` stored
 * (each answer with freshly signed download URLs of the hub's HTTPS server) and records every
 * version inform and progress report in the hub's database.
 *
 * Device secrets, products, tokens and "activated" flags live in the hub's SQLite file, which
 * the launcher fills from the device table and the HTTPS registration endpoint shares; the
 * plugin keeps only runtime state (sessions, rate buckets, counters) in memory. mosquitto loads
 * the plugin once per listener (per_listener_settings), so the TLS and plain listeners get
 * their own instance (option "tls") but share this file's globals: dlopen returns one handle.
 * Everything runs on mosquitto's single thread.
 */
#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <jansson.h>
#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <openssl/rand.h>
#include <sqlite3.h>

#include "sign.h"
#include "hub_services.h"

#define HUB_EXPORT __attribute__((visibility("default")))

#define RIGHT_PUB 1
#define RIGHT_SUB 2

enum fail {
    F_CLIENT_ID,
    F_USERNAME,
    F_UNKNOWN_DEVICE,
    F_NO_SECRET,
    F_BAD_SIGN,
    F_KEEPALIVE,
    F_SECUREMODE,
    F_SIGNMETHOD,
    F_AUTH_TYPE,
    F_DYNREG_DISABLED,
    F_ALREADY_ACTIVE,
    F_DYNREG_PLAIN,
    F_BAD_TOKEN,
    F_CLOUD,
    F_COUNT
};
static const char *const fail_names[F_COUNT] = {
    "bad_client_id",  "bad_username", "unknown_device", "no_secret",     "bad_sign",
    "keepalive",      "securemode",   "signmethod",     "auth_type",     "dynreg_disabled",
    "already_active", "dynreg_plain", "bad_token",      "cloud_password"};

struct rule {
    char *cls;
    int rights;
};

struct dev {
    struct dev *next;
    char *pk, *dn;
    struct rule *rules;
    int nrules;
    char *client_id;                /* the live session's MQTT client id, or NULL */
    const struct mosquitto *client; /* the live session, compared by address only */
    double tokens;
    double last;
    unsigned long long messages, refused_pub, refused_sub, rate_limited, connects, kicked;
    struct {                  /* what the last accepted CONNECT carried (for tests) */
        char *client_id;      /* the full MQTT client id, "id|k=v,...|" */
        int keepalive;        /* seconds */
        int clean_session;    /* 0 or 1 */
        int protocol_version; /* 3, 4 (3.1.1) or 5 */
        int tls;              /* which listener */
    } seen;
};

struct inst {
    mosquitto_plugin_id_t *id;
    int tls;
};

static struct {
    int refs;
    sqlite3 *db;
    char *cloud_user, *cloud_pass;
    double rate;    /* messages per second per device; 0 = unlimited */
    int rate_reply; /* 1: reply 429 on alink topics, 0: drop silently */
    int reply_direct;
    int dynreg_plain;
    int min_keepalive;
    long long ntp_skew_ms; /* added to the times of NTP answers (hub/ctl/ntp_skew) */
    long https_port;       /* where firmware is served (for firmware/get answers) */
    struct dev **tab;
    size_t tabsize, ndev;
    unsigned long long connects, fails[F_COUNT], kicks, refused_pub, refused_sub, rate_limited,
        messages, reg_mqtt, reg_nwl;
} g;

static double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t hash2(const char *a, const char *b)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *a; a++)
        h = (h ^ (unsigned char)*a) * 1099511628211ULL;
    h = (h ^ 0xff) * 1099511628211ULL;
    for (; *b; b++)
        h = (h ^ (unsigned char)*b) * 1099511628211ULL;
    return h;
}

static void rules_free(struct dev *d)
{
    for (int i = 0; i < d->nrules; i++)
        free(d->rules[i].cls);
    free(d->rules);
    d->rules = NULL;
    d->nrules = 0;
}

/* Parses "update:pub;get:sub;data:all" into d->rules. Unknown rights mean no rights. */
static void rules_parse(struct dev *d, const char *spec)
{
    rules_free(d);
    if (!spec || !*spec)
        spec = "update:pub;update/error:pub;get:sub";
    char *copy = strdup(spec), *save = NULL;
    if (!copy)
        return;
    for (char *tok = strtok_r(copy, ";", &save); tok; tok = strtok_r(NULL, ";", &save)) {
        while (isspace((unsigned char)*tok))
            tok++;
        char *colon = strrchr(tok, ':');
        int rights = RIGHT_PUB | RIGHT_SUB;
        if (colon) {
            *colon = '\0';
            const char *r = colon + 1;
            rights = !strcmp(r, "pub")   ? RIGHT_PUB
                     : !strcmp(r, "sub") ? RIGHT_SUB
                     : !strcmp(r, "all") ? RIGHT_PUB | RIGHT_SUB
                                         : 0;
        }
        if (!*tok)
            continue;
        struct rule *nr = realloc(d->rules, (size_t)(d->nrules + 1) * sizeof(*nr));
        if (!nr)
            break;
        d->rules = nr;
        d->rules[d->nrules].cls = strdup(tok);
        d->rules[d->nrules].rights = rights;
        if (d->rules[d->nrules].cls)
            d->nrules++;
    }
    free(copy);
}

static struct dev *dev_find(const char *pk, const char *dn, int create)
{
    if (!g.tab) {
        g.tabsize = 16384;
        g.tab = calloc(g.tabsize, sizeof(*g.tab));
        if (!g.tab)
            return NULL;
    }
    size_t i = hash2(pk, dn) % g.tabsize;
    for (struct dev *d = g.tab[i]; d; d = d->next)
        if (!strcmp(d->pk, pk) && !strcmp(d->dn, dn))
            return d;
    if (!create)
        return NULL;
    struct dev *d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    d->pk = strdup(pk);
    d->dn = strdup(dn);
    d->tokens = g.rate;
    d->last = now_mono();
    rules_parse(d, NULL);
    d->next = g.tab[i];
    g.tab[i] = d;
    g.ndev++;
    return d;
}

/* ---- SQLite ---- */

struct devrow {
    char secret[128], token[128], token_cid[128], topics[512];
    int active, found;
};

static void col_copy(sqlite3_stmt *st, int col, char *out, size_t n)
{
    const unsigned char *t = sqlite3_column_text(st, col);
    snprintf(out, n, "%s", t ? (const char *)t : "");
}

static int db_device(const char *pk, const char *dn, struct devrow *r)
{
    memset(r, 0, sizeof(*r));
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(g.db,
                                "SELECT secret, active, token, token_client_id, topics FROM devices"
                                " WHERE pk=?1 AND dn=?2",
                                -1, &st, NULL);
    if (rc != SQLITE_OK)
        return -EIO;
    sqlite3_bind_text(st, 1, pk, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, dn, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        r->found = 1;
        col_copy(st, 0, r->secret, sizeof(r->secret));
        r->active = sqlite3_column_int(st, 1);
        col_copy(st, 2, r->token, sizeof(r->token));
        col_copy(st, 3, r->token_cid, sizeof(r->token_cid));
        col_copy(st, 4, r->topics, sizeof(r->topics));
    }
    sqlite3_finalize(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : -EIO;
}

static int db_product(const char *pk, char *secret, size_t n, char *dynreg, size_t m)
{
    sqlite3_stmt *st = NULL;
    secret[0] = dynreg[0] = '\0';
    if (sqlite3_prepare_v2(g.db, "SELECT secret, dynreg FROM products WHERE pk=?1", -1, &st,
                           NULL) != SQLITE_OK)
        return -EIO;
    sqlite3_bind_text(st, 1, pk, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        col_copy(st, 0, secret, n);
        col_copy(st, 1, dynreg, m);
    }
    sqlite3_finalize(st);
    return rc == SQLITE_ROW ? 0 : -ENOENT;
}

static int db_exec(const char *sql, const char *a, const char *b, const char *c, const char *d)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(g.db, sql, -1, &st, NULL) != SQLITE_OK) {
        mosquitto_log_printf(MOSQ_LOG_ERR, "aligw_hub: sqlite: %s", sqlite3_errmsg(g.db));
        return -EIO;
    }
    const char *v[4] = {a, b, c, d};
    for (int i = 0; i < 4; i++)
        if (v[i])
            sqlite3_bind_text(st, i + 1, v[i], -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        mosquitto_log_printf(MOSQ_LOG_ERR, "aligw_hub: sqlite: %s", sqlite3_errmsg(g.db));
        return -EIO;
    }
    return 0;
}

/* ---- helpers ---- */

static void random_alnum(char *out, size_t len)
{
    static const char cs[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    unsigned char buf[128];
    if (len > sizeof(buf))
        len = sizeof(buf);
    if (RAND_bytes(buf, (int)len) != 1)
        for (size_t i = 0; i < len; i++)
            buf[i] = (unsigned char)rand();
    for (size_t i = 0; i < len; i++)
        out[i] = cs[buf[i] % (sizeof(cs) - 1)];
    out[len] = '\0';
}

/* Splits "dn&pk" in place. 0 or -EINVAL. */
static int split_username(char *u, char **pk, char **dn)
{
    char *amp = u ? strchr(u, '&') : NULL;
    if (!amp || amp == u || !amp[1] || strchr(amp + 1, '&'))
        return -EINVAL;
    *amp = '\0';
    *dn = u;
    *pk = amp + 1;
    return 0;
}

struct cid {
    char buf[512];
    char *client_id;
    char *keys[32], *vals[32];
    int n;
};

/* Parses "clientId|k=v,k=v|" into c. 0 or -EINVAL. */
static int cid_parse(const char *s, struct cid *c)
{
    memset(c, 0, sizeof(*c));
    if (!s || strlen(s) >= sizeof(c->buf))
        return -EINVAL;
    strcpy(c->buf, s);
    char *bar1 = strchr(c->buf, '|');
    if (!bar1)
        return -EINVAL;
    char *bar2 = strchr(bar1 + 1, '|');
    if (!bar2 || bar2[1] != '\0')
        return -EINVAL;
    *bar1 = *bar2 = '\0';
    c->client_id = c->buf;
    char *save = NULL;
    for (char *kv = strtok_r(bar1 + 1, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(kv, '=');
        if (!eq || c->n == 32)
            return -EINVAL;
        *eq = '\0';
        c->keys[c->n] = kv;
        c->vals[c->n] = eq + 1;
        c->n++;
    }
    return 0;
}

static const char *cid_get(const struct cid *c, const char *key)
{
    for (int i = 0; i < c->n; i++)
        if (!strcmp(c->keys[i], key))
            return c->vals[i];
    return NULL;
}

/* Is this client a registration session (authType=register/regnwl)? */
static int is_reg_session(const char *client_id)
{
    const char *ext = client_id ? strchr(client_id, '|') : NULL;
    return ext && (strstr(ext, "authType=register") || strstr(ext, "authType=regnwl"));
}

static int is_cloud(const struct mosquitto *client)
{
    const char *u = mosquitto_client_username(client);
    return u && g.cloud_user && !strcmp(u, g.cloud_user);
}

static struct dev *client_dev(const struct mosquitto *client)
{
    const char *u = mosquitto_client_username(client);
    char buf[256], *pk, *dn;
    if (!u || strlen(u) >= sizeof(buf))
        return NULL;
    strcpy(buf, u);
    if (split_username(buf, &pk, &dn))
        return NULL;
    return dev_find(pk, dn, 0);
}

/* Publishes a hub-generated message to a device: to its session directly or to subscribers. */
static void hub_send(const struct dev *d, const char *topic, const char *payload)
{
    const char *to = g.reply_direct && d ? d->client_id : NULL;
    int rc =
        mosquitto_broker_publish_copy(to, topic, (int)strlen(payload), payload, 0, false, NULL);
    if (rc != MOSQ_ERR_SUCCESS)
        mosquitto_log_printf(MOSQ_LOG_WARNING, "aligw_hub: publish %s failed: %d", topic, rc);
}

/* ---- authentication ---- */

static int auth_fail(enum fail f, const char *who)
{
    g.fails[f]++;
    mosquitto_log_printf(MOSQ_LOG_NOTICE, "aligw_hub: refused %s: %s", who ? who : "?",
                         fail_names[f]);
    return MOSQ_ERR_AUTH;
}

static int auth_register(struct inst *in, struct mosquitto *client, const struct cid *c,
                         const char *pk, const char *dn, const char *password, const char *type)
{
    char who[256];
    snprintf(who, sizeof(who), "%s/%s", pk, dn);
    if (!in->tls && !g.dynreg_plain)
        return auth_fail(F_DYNREG_PLAIN, who);
    const char *sm = cid_get(c, "securemode");
    if (!sm || (strcmp(sm, "2") && strcmp(sm, "-2")))
        return auth_fail(F_SECUREMODE, who);
    enum sign_method m = SIGN_HMACSHA256;
    const char *smeth = cid_get(c, "signmethod");
    if (smeth && sign_method_parse(smeth, &m))
        return auth_fail(F_SIGNMETHOD, who);
    const char *random = cid_get(c, "random");
    char psecret[128], dynreg[32];
    if (db_product(pk, psecret, sizeof(psecret), dynreg, sizeof(dynreg)) || !psecret[0])
        return auth_fail(F_DYNREG_DISABLED, who);
    char want[SIGN_HEX_MAX];
    if (!random || !password || sign_register(m, psecret, pk, dn, random, want) ||
        strcasecmp(want, password))
        return auth_fail(F_BAD_SIGN, who);
    int nwl = !strcmp(type, "regnwl");
    int allowed =
        !strcmp(dynreg, "both") || (nwl ? !strcmp(dynreg, "regnwl") : !strcmp(dynreg, "register"));
    if (!allowed)
        return auth_fail(F_DYNREG_DISABLED, who);
    struct devrow r;
    if (db_device(pk, dn, &r))
        return MOSQ_ERR_UNKNOWN;
    if (!nwl && !r.found)
        return auth_fail(F_UNKNOWN_DEVICE, who);
    if (r.found && r.active)
        return auth_fail(F_ALREADY_ACTIVE, who);

    const char *to = mosquitto_client_id(client);
    json_t *j;
    if (!nwl) {
        char secret[33];
        random_alnum(secret, 32);
        if (db_exec("UPDATE devices SET secret=?1 WHERE pk=?2 AND dn=?3", secret, pk, dn, NULL))
            return MOSQ_ERR_UNKNOWN;
        j = json_pack("{s:s,s:s,s:s}", "productKey", pk, "deviceName", dn, "deviceSecret", secret);
        g.reg_mqtt++;
    } else {
        char ncid[21], rnd[16], token[64];
        random_alnum(ncid, 20);
        random_alnum(rnd, 15);
        for (char *p = rnd; *p; p++)
            *p = "0123456789abcdef"[(unsigned char)*p % 16];
        snprintf(token, sizeof(token), "^1^%lld^%s", now_ms(), rnd);
        if (db_exec("INSERT INTO devices(pk, dn, token, token_client_id) VALUES(?1, ?2, ?3, ?4)"
                    " ON CONFLICT(pk, dn) DO UPDATE SET token=excluded.token,"
                    " token_client_id=excluded.token_client_id",
                    pk, dn, token, ncid))
            return MOSQ_ERR_UNKNOWN;
        j = json_pack("{s:s,s:s,s:s,s:s}", "clientId", ncid, "productKey", pk, "deviceName", dn,
                      "deviceToken", token);
        g.reg_nwl++;
    }
    char *payload = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!payload)
        return MOSQ_ERR_NOMEM;
    /* Delivered to this client id without any SUBSCRIBE, once the CONNACK has gone out. */
    mosquitto_broker_publish_copy(to, nwl ? "/ext/regnwl" : "/ext/register", (int)strlen(payload),
                                  payload, 0, false, NULL);
    free(payload);
    mosquitto_log_printf(MOSQ_LOG_NOTICE, "aligw_hub: %s registered %s", who, type);
    return MOSQ_ERR_SUCCESS;
}

static int cb_basic_auth(int event, void *event_data, void *userdata)
{
    struct inst *in = userdata;
    struct mosquitto_evt_basic_auth *ed = event_data;
    const char *cidstr = mosquitto_client_id(ed->client);
    const char *password = ed->password;

    if (ed->username && g.cloud_user && !strcmp(ed->username, g.cloud_user)) {
        if (!password || !g.cloud_pass || strcmp(password, g.cloud_pass))
            return auth_fail(F_CLOUD, "cloud user");
        return MOSQ_ERR_SUCCESS;
    }
    struct cid c;
    if (cid_parse(cidstr, &c))
        return auth_fail(F_CLIENT_ID, cidstr);
    char ubuf[256], *pk, *dn;
    if (!ed->username || strlen(ed->username) >= sizeof(ubuf))
        return auth_fail(F_USERNAME, cidstr);
    strcpy(ubuf, ed->username);
    if (split_username(ubuf, &pk, &dn))
        return auth_fail(F_USERNAME, cidstr);
    char who[256];
    snprintf(who, sizeof(who), "%s/%s", pk, dn);

    const char *auth_type = cid_get(&c, "authType");
    if (auth_type && (!strcmp(auth_type, "register") || !strcmp(auth_type, "regnwl")))
        return auth_register(in, ed->client, &c, pk, dn, password, auth_type);
    if (auth_type && strcmp(auth_type, "connwl"))
        return auth_fail(F_AUTH_TYPE, who);

    int ka = mosquitto_client_keepalive(ed->client);
    if (ka < g.min_keepalive)
        return auth_fail(F_KEEPALIVE, who);
    const char *sm = cid_get(&c, "securemode");
    struct devrow r;
    if (db_device(pk, dn, &r))
        return MOSQ_ERR_UNKNOWN;
    if (!r.found)
        return auth_fail(F_UNKNOWN_DEVICE, who);

    if (auth_type) { /* connwl: the token from /ext/regnwl, verbatim */
        if (!sm || strcmp(sm, "-2"))
            return auth_fail(F_SECUREMODE, who);
        if (!r.token[0] || !password || strcmp(password, r.token) ||
            strcmp(c.client_id, r.token_cid))
            return auth_fail(F_BAD_TOKEN, who);
    } else {
        if (!sm || strcmp(sm, in->tls ? "2" : "3"))
            return auth_fail(F_SECUREMODE, who);
        enum sign_method m = SIGN_HMACMD5; /* the documented default */
        const char *smeth = cid_get(&c, "signmethod");
        if (smeth && sign_method_parse(smeth, &m))
            return auth_fail(F_SIGNMETHOD, who);
        if (!r.secret[0])
            return auth_fail(F_NO_SECRET, who);
        const char *ts = cid_get(&c, "timestamp");
        char msg[1024], want[SIGN_HEX_MAX];
        int n = snprintf(msg, sizeof(msg), "clientId%sdeviceName%sproductKey%s%s%s", c.client_id,
                         dn, pk, ts ? "timestamp" : "", ts ? ts : "");
        if (n < 0 || (size_t)n >= sizeof(msg) || sign_hmac_hex(m, r.secret, msg, (size_t)n, want) ||
            !password || strcasecmp(want, password))
            return auth_fail(F_BAD_SIGN, who);
    }

    struct dev *d = dev_find(pk, dn, 1);
    if (!d)
        return MOSQ_ERR_NOMEM;
    rules_parse(d, r.topics);
    if (d->client_id) {
        /* One session per device: the older one goes, whatever its client id. */
        mosquitto_log_printf(MOSQ_LOG_NOTICE, "aligw_hub: %s logged in again, kicking %s", who,
                             d->client_id);
        g.kicks++;
        d->kicked++;
        char *old = d->client_id;
        d->client_id = NULL;
        d->client = NULL;
        mosquitto_kick_client_by_clientid(old, false);
        free(old);
    }
    d->client_id = strdup(cidstr);
    d->client = ed->client;
    d->connects++;
    free(d->seen.client_id);
    d->seen.client_id = strdup(cidstr);
    d->seen.keepalive = ka;
    d->seen.clean_session = mosquitto_client_clean_session(ed->client) ? 1 : 0;
    d->seen.protocol_version = mosquitto_client_protocol_version(ed->client);
    d->seen.tls = in->tls;
    g.connects++;
    if (!r.active)
        db_exec("UPDATE devices SET active=1 WHERE pk=?1 AND dn=?2 AND active=0", pk, dn, NULL,
                NULL);
    return MOSQ_ERR_SUCCESS;
}

static int cb_disconnect(int event, void *event_data, void *userdata)
{
    struct mosquitto_evt_disconnect *ed = event_data;
    struct dev *d = client_dev(ed->client);
    if (d && d->client == ed->client) {
        free(d->client_id);
        d->client_id = NULL;
        d->client = NULL;
    }
    return MOSQ_ERR_SUCCESS;
}

/* ---- topic permissions ---- */

/*
 * Does every topic that filter can match also match pattern? Both are MQTT filters; the
 * filter's wildcards only fit where the pattern has a wildcard at least as wide.
 */
static int filter_within(const char *pattern, const char *filter)
{
    const char *p = pattern, *f = filter;
    for (;;) {
        size_t pl = strcspn(p, "/"), fl = strcspn(f, "/");
        if (pl == 1 && p[0] == '#')
            return 1;
        if (pl == 1 && p[0] == '+') {
            if (fl == 1 && f[0] == '#')
                return 0;
        } else if (pl != fl || memcmp(p, f, pl) != 0 || (fl == 1 && (f[0] == '+' || f[0] == '#'))) {
            return 0;
        }
        p += pl;
        f += fl;
        if (!*p && !*f)
            return 1;
        if (!*f)
            return !strcmp(p, "/#");
        if (!*p)
            return 0;
        p++;
        f++;
    }
}

/* Expands {pk}, {dn} and {cls} in tmpl into out (truncating at n). */
static void pat_fill(char *out, size_t n, const char *tmpl, const struct dev *d, const char *cls)
{
    size_t o = 0;
    while (*tmpl && o + 1 < n) {
        const char *v = NULL;
        if (!strncmp(tmpl, "{pk}", 4))
            v = d->pk;
        else if (!strncmp(tmpl, "{dn}", 4))
            v = d->dn;
        else if (!strncmp(tmpl, "{cls}", 5))
            v = cls;
        if (v) {
            for (; *v && o + 1 < n; v++)
                out[o++] = *v;
            tmpl += tmpl[1] == 'c' ? 5 : 4;
        } else {
            out[o++] = *tmpl++;
        }
    }
    out[o] = '\0';
}

static int device_rights(const struct dev *d, const char *topic)
{
    char pat[512];
    static const char *const sys_pats[] = {"/sys/{pk}/{dn}/#",           "/ota/device/+/{pk}/{dn}",
                                           "/ext/ntp/{pk}/{dn}/+",       "/shadow/+/{pk}/{dn}",
                                           "/ext/error/{pk}/{dn}",       "/ext/session/{pk}/{dn}/#",
                                           "/ext/rrpc/+/sys/{pk}/{dn}/#"};
    for (size_t i = 0; i < sizeof(sys_pats) / sizeof(sys_pats[0]); i++) {
        pat_fill(pat, sizeof(pat), sys_pats[i], d, "");
        if (filter_within(pat, topic))
            return RIGHT_PUB | RIGHT_SUB;
    }
    int rights = 0;
    for (int i = 0; i < d->nrules; i++) {
        /* Custom RRPC wraps a user topic: /ext/rrpc/<id>/<topic> (the topic keeps its slash). */
        static const char *const user_pats[] = {"/{pk}/{dn}/user/{cls}",
                                                "/ext/rrpc/+//{pk}/{dn}/user/{cls}"};
        for (int k = 0; k < 2; k++) {
            pat_fill(pat, sizeof(pat), user_pats[k], d, d->rules[i].cls);
            if (!filter_within(pat, topic))
                continue;
            rights |= d->rules[i].rights;
            /* A custom RRPC is answered on its own request topic: subscribing is enough. */
            if (k == 1 && (d->rules[i].rights & RIGHT_SUB))
                rights |= RIGHT_PUB;
        }
    }
    return rights;
}

/*
 * An RRPC answer goes out on the request's own topic, which the device subscribes to: a broker
 * would hand the answer back to the device as if it were a new request, the platform does not.
 * So the last few answers a device published on /ext/rrpc/... are remembered and that device's
 * read of each is refused once (silently: not counted as a refusal).
 */
static int has_prefix(const char *s, const char *pfx);

#define OWN_ANSWERS 64
static struct {
    const struct dev *d;
    char topic[256];
} own_answers[OWN_ANSWERS];
static unsigned own_next;

static void own_answer_note(const struct dev *d, const char *topic)
{
    if (strlen(topic) >= sizeof(own_answers[0].topic))
        return;
    own_answers[own_next % OWN_ANSWERS].d = d;
    snprintf(own_answers[own_next % OWN_ANSWERS].topic, sizeof(own_answers[0].topic), "%s", topic);
    own_next++;
}

static int own_answer_take(const struct dev *d, const char *topic)
{
    for (int i = 0; i < OWN_ANSWERS; i++)
        if (own_answers[i].d == d && !strcmp(own_answers[i].topic, topic)) {
            own_answers[i].d = NULL;
            own_answers[i].topic[0] = '\0';
            return 1;
        }
    return 0;
}

static int cb_acl(int event, void *event_data, void *userdata)
{
    struct mosquitto_evt_acl_check *ed = event_data;
    if (is_cloud(ed->client))
        return MOSQ_ERR_SUCCESS;
    if (ed->access == MOSQ_ACL_UNSUBSCRIBE)
        return MOSQ_ERR_SUCCESS;
    const char *cid = mosquitto_client_id(ed->client);
    if (is_reg_session(cid)) {
        if (ed->access == MOSQ_ACL_READ &&
            (!strcmp(ed->topic, "/ext/register") || !strcmp(ed->topic, "/ext/regnwl")))
            return MOSQ_ERR_SUCCESS;
        return MOSQ_ERR_ACL_DENIED;
    }
    struct dev *d = client_dev(ed->client);
    if (!d)
        return MOSQ_ERR_ACL_DENIED;
    int need = ed->access == MOSQ_ACL_WRITE ? RIGHT_PUB : RIGHT_SUB;
    int is_rrpc = has_prefix(ed->topic, "/ext/rrpc/");
    if (is_rrpc && ed->access == MOSQ_ACL_READ && own_answer_take(d, ed->topic))
        return MOSQ_ERR_ACL_DENIED;
    if (device_rights(d, ed->topic) & need) {
        if (is_rrpc && ed->access == MOSQ_ACL_WRITE)
            own_answer_note(d, ed->topic);
        return MOSQ_ERR_SUCCESS;
    }
    if (ed->access == MOSQ_ACL_WRITE) {
        g.refused_pub++;
        d->refused_pub++;
        mosquitto_log_printf(MOSQ_LOG_NOTICE, "aligw_hub: %s/%s may not publish to %s", d->pk,
                             d->dn, ed->topic);
    } else if (ed->access == MOSQ_ACL_SUBSCRIBE) {
        g.refused_sub++;
        d->refused_sub++;
        mosquitto_log_printf(MOSQ_LOG_NOTICE, "aligw_hub: %s/%s may not subscribe to %s", d->pk,
                             d->dn, ed->topic);
    }
    return MOSQ_ERR_ACL_DENIED;
}

/* ---- messages ---- */

static const char *json_id_text(json_t *j, char *buf, size_t n)
{
    json_t *id = json_object_get(j, "id");
    if (json_is_string(id))
        snprintf(buf, n, "%s", json_string_value(id));
    else if (json_is_integer(id))
        snprintf(buf, n, "%lld", (long long)json_integer_value(id));
    else
        return NULL;
    return buf;
}

static int wants_ack(json_t *j)
{
    json_t *ack = json_object_get(json_object_get(j, "sys"), "ack");
    if (json_is_integer(ack))
        return json_integer_value(ack) != 0;
    if (json_is_string(ack))
        return strcmp(json_string_value(ack), "0") != 0;
    return 1;
}

/* Sends {"code":code,...} to topic + "_reply" for an alink request at topic. */
/* Answers req on topic_reply the platform's way; data (taken over; NULL for {}) is its data. */
static void alink_reply_data(const struct dev *d, const char *topic, json_t *req, int code,
                             const char *message, json_t *data)
{
    char id[64], rtopic[512], method[400];
    if (!json_id_text(req, id, sizeof(id))) {
        json_decref(data);
        return;
    }
    snprintf(rtopic, sizeof(rtopic), "%s_reply", topic);
    size_t skip = strlen("/sys///") + strlen(d->pk) + strlen(d->dn);
    snprintf(method, sizeof(method), "%s", strlen(topic) > skip ? topic + skip : "");
    for (char *p = method; *p; p++)
        if (*p == '/')
            *p = '.';
    json_t *r = json_pack("{s:s,s:i,s:o,s:s,s:s,s:s}", "id", id, "code", code, "data",
                          data ? data : json_object(), "message", message, "method", method,
                          "version", "1.0");
    char *s = r ? json_dumps(r, JSON_COMPACT) : NULL;
    if (s)
        hub_send(d, rtopic, s);
    free(s);
    json_decref(r);
}

static void alink_reply(const struct dev *d, const char *topic, json_t *req, int code,
                        const char *message)
{
    alink_reply_data(d, topic, req, code, message, NULL);
}

static int has_prefix(const char *s, const char *pfx)
{
    return strncmp(s, pfx, strlen(pfx)) == 0;
}

static int ends_with(const char *s, const char *sfx)
{
    size_t a = strlen(s), b = strlen(sfx);
    return a >= b && !strcmp(s + a - b, sfx);
}

static json_t *counters_json(int with_devices)
{
    json_t *fails = json_object(), *devs = json_object();
    unsigned long long total = 0, online = 0;
    for (int i = 0; i < F_COUNT; i++) {
        json_object_set_new(fails, fail_names[i], json_integer((json_int_t)g.fails[i]));
        total += g.fails[i];
    }
    for (size_t i = 0; g.tab && i < g.tabsize; i++) {
        for (struct dev *d = g.tab[i]; d; d = d->next) {
            online += d->client_id != NULL;
            if (!with_devices)
                continue;
            char key[256];
            snprintf(key, sizeof(key), "%s/%s", d->pk, d->dn);
            json_t *dj =
                json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:b}", "messages", (json_int_t)d->messages,
                          "refused_publishes", (json_int_t)d->refused_pub, "refused_subscribes",
                          (json_int_t)d->refused_sub, "rate_limited", (json_int_t)d->rate_limited,
                          "connects", (json_int_t)d->connects, "kicked", (json_int_t)d->kicked,
                          "online", d->client_id != NULL);
            if (dj && d->seen.client_id)
                json_object_set_new(
                    dj, "last_connect",
                    json_pack("{s:s,s:i,s:b,s:i,s:b}", "client_id", d->seen.client_id, "keepalive",
                              d->seen.keepalive, "clean_session", d->seen.clean_session,
                              "protocol_version", d->seen.protocol_version, "tls", d->seen.tls));
            json_object_set_new(devs, key, dj);
        }
    }
    return json_pack("{s:I,s:o,s:I,s:I,s:I,s:I,s:I,s:I,s:{s:I,s:I},s:I,s:o}", "connects",
                     (json_int_t)g.connects, "auth_failures", fails, "auth_failures_total",
                     (json_int_t)total, "kicks", (json_int_t)g.kicks, "refused_publishes",
                     (json_int_t)g.refused_pub, "refused_subscribes", (json_int_t)g.refused_sub,
                     "rate_limited", (json_int_t)g.rate_limited, "messages", (json_int_t)g.messages,
                     "registrations", "register", (json_int_t)g.reg_mqtt, "regnwl",
                     (json_int_t)g.reg_nwl, "online", (json_int_t)online, "devices", devs);
}

/* hub_services' ways out: to the cloud user, or to a device as hub_send does. */
static void services_to_cloud(void *ctx, const char *topic, const char *payload)
{
    mosquitto_broker_publish_copy(NULL, topic, (int)strlen(payload), payload, 0, false, NULL);
}

static void services_to_device(void *ctx, const char *topic, const char *payload)
{
    hub_send(ctx, topic, payload);
}

static void *services_device(const char *pk, const char *dn)
{
    return dev_find(pk, dn, 0);
}

/* Control topics for the cloud user: hub/ctl/counters, hub/ctl/kick, hub/ctl/ntp_skew,
 * hub/ctl/reset. */
static void cloud_control(struct mosquitto_evt_message *ed)
{
    json_t *req = json_loadb(ed->payload, ed->payloadlen, 0, NULL);
    if (!strcmp(ed->topic, "hub/ctl/counters")) {
        json_t *wd = json_object_get(req, "devices");
        json_t *c = counters_json(!json_is_false(wd));
        json_t *rid = json_object_get(req, "id");
        if (rid)
            json_object_set(c, "id", rid);
        char *s = json_dumps(c, JSON_COMPACT);
        if (s)
            mosquitto_broker_publish_copy(NULL, "hub/counters", (int)strlen(s), s, 0, false, NULL);
        free(s);
        json_decref(c);
    } else if (!strcmp(ed->topic, "hub/ctl/kick")) {
        const char *pk = json_string_value(json_object_get(req, "productKey"));
        const char *dn = json_string_value(json_object_get(req, "deviceName"));
        struct dev *d = pk && dn ? dev_find(pk, dn, 0) : NULL;
        if (d && d->client_id) {
            char *old = d->client_id;
            d->client_id = NULL;
            d->client = NULL;
            g.kicks++;
            d->kicked++;
            mosquitto_kick_client_by_clientid(old, false);
            free(old);
        }
    } else if (!strcmp(ed->topic, "hub/ctl/shadow_desired") ||
               !strcmp(ed->topic, "hub/ctl/desired_set") ||
               !strcmp(ed->topic, "hub/ctl/services")) {
        hub_services_control(ed->topic, req, services_to_cloud, NULL, services_to_device,
                             services_device);
    } else if (!strcmp(ed->topic, "hub/ctl/ntp_skew")) {
        /* The platform's clock this far ahead of ours (ms; negative: behind) in NTP answers. */
        g.ntp_skew_ms = json_integer_value(json_object_get(req, "ms"));
    } else if (!strcmp(ed->topic, "hub/ctl/reset")) {
        g.connects = g.kicks = g.refused_pub = g.refused_sub = g.rate_limited = g.messages = 0;
        g.reg_mqtt = g.reg_nwl = 0;
        memset(g.fails, 0, sizeof(g.fails));
        for (size_t i = 0; g.tab && i < g.tabsize; i++)
            for (struct dev *d = g.tab[i]; d; d = d->next)
                d->messages = d->refused_pub = d->refused_sub = d->rate_limited = d->connects =
                    d->kicked = 0;
    }
    json_decref(req);
}

/* ---- OTA ---- */

/* Replaces every string "hub:<name>" in v with a fresh download URL (a new token). */
static void ota_sign_urls(json_t *v, long long ttl_s)
{
    const char *k;
    json_t *x;
    size_t i;
    if (json_is_object(v)) {
        json_object_foreach(v, k, x)
        {
            if (json_is_string(x) && has_prefix(json_string_value(x), "hub:")) {
                char token[25], url[256];
                sqlite3_stmt *st;
                random_alnum(token, 24);
                if (sqlite3_prepare_v2(g.db,
                                       "INSERT INTO ota_tokens(token, name, expires_at) "
                                       "VALUES (?1, ?2, ?3)",
                                       -1, &st, NULL) == SQLITE_OK) {
                    sqlite3_bind_text(st, 1, token, -1, SQLITE_STATIC);
                    sqlite3_bind_text(st, 2, json_string_value(x) + 4, -1, SQLITE_TRANSIENT);
                    sqlite3_bind_double(st, 3, now_ms() / 1000.0 + (double)ttl_s);
                    sqlite3_step(st);
                    sqlite3_finalize(st);
                }
                snprintf(url, sizeof(url), "https://127.0.0.1:%ld/ota/%s", g.https_port, token);
                json_object_set_new(v, k, json_string(url));
            } else {
                ota_sign_urls(x, ttl_s);
            }
        }
    } else if (json_is_array(v)) {
        json_array_foreach(v, i, x) ota_sign_urls(x, ttl_s);
    }
}

/* thing.ota.firmware.get: the stored job of the module with fresh URLs, or data {}. */
static void ota_get(const struct dev *d, const char *topic, json_t *req)
{
    char id[64];
    const char *module = "";
    json_t *m = json_object_get(json_object_get(req, "params"), "module"), *data = NULL;
    sqlite3_stmt *st;

    if (!json_id_text(req, id, sizeof(id)))
        return;
    if (json_is_string(m))
        module = json_string_value(m);
    if (sqlite3_prepare_v2(g.db,
                           "SELECT data, ttl FROM ota_jobs WHERE pk=?1 AND dn=?2 AND module=?3", -1,
                           &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, d->pk, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, d->dn, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, module, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW) {
            data = json_loads((const char *)sqlite3_column_text(st, 0), 0, NULL);
            if (data)
                ota_sign_urls(data, sqlite3_column_int64(st, 1));
        }
        sqlite3_finalize(st);
    }
    alink_reply_data(d, topic, req, 200, "success", data);
}

/*
 * thing.config.get: the product's configuration (configs table, URL signed) as the platform
 * answers it, 460 unless it asks for the product's file configuration, data {} when there is
 * none.
 */
static void config_get(const struct dev *d, const char *topic, json_t *req)
{
    json_t *params = json_object_get(req, "params"), *data = NULL;
    const char *scope = json_string_value(json_object_get(params, "configScope"));
    const char *type = json_string_value(json_object_get(params, "getType"));
    char id[64];
    sqlite3_stmt *st;

    if (!json_id_text(req, id, sizeof(id)))
        return;
    if (!scope || strcmp(scope, "product") != 0 || !type || strcmp(type, "file") != 0) {
        alink_reply(d, topic, req, 460, "request parameter error");
        return;
    }
    if (sqlite3_prepare_v2(g.db, "SELECT data FROM configs WHERE pk=?1", -1, &st, NULL) ==
        SQLITE_OK) {
        sqlite3_bind_text(st, 1, d->pk, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW) {
            data = json_loads((const char *)sqlite3_column_text(st, 0), 0, NULL);
            if (data)
                ota_sign_urls(data, 3600);
        }
        sqlite3_finalize(st);
    }
    alink_reply_data(d, topic, req, 200, "success", data);
}

/* Records a version inform or a progress report. */
static void ota_record(const struct dev *d, const char *kind, const void *payload, int len)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(g.db,
                           "INSERT INTO ota_reports(ts, pk, dn, kind, payload) "
                           "VALUES (?1, ?2, ?3, ?4, ?5)",
                           -1, &st, NULL) != SQLITE_OK)
        return;
    sqlite3_bind_double(st, 1, now_ms() / 1000.0);
    sqlite3_bind_text(st, 2, d->pk, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, d->dn, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, kind, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, payload, len, SQLITE_TRANSIENT);
    sqlite3_step(st);
    sqlite3_finalize(st);
}

/* Every member of o (an object) an array of timed values {"value":…,"time":ms}. */
static int timed_arrays(const json_t *o)
{
    const char *k;
    json_t *a, *tv;
    size_t i;
    if (!json_is_object(o))
        return 0;
    json_object_foreach((json_t *)o, k, a)
    {
        if (!json_is_array(a) || json_array_size(a) == 0)
            return 0;
        json_array_foreach(a, i, tv) if (!json_is_object(tv) || !json_object_get(tv, "value") ||
                                         !json_is_integer(json_object_get(tv, "time"))) return 0;
    }
    return 1;
}

/* Every element of a (an array) an object of timed values {"ident":{"value":…,"time":ms}}. */
static int timed_records(const json_t *a)
{
    const char *k;
    json_t *rec, *tv;
    size_t i;
    if (!json_is_array(a) || json_array_size(a) == 0)
        return 0;
    json_array_foreach(a, i, rec)
    {
        if (!json_is_object(rec) || json_object_size(rec) == 0)
            return 0;
        json_object_foreach(rec, k, tv) if (!json_is_object(tv) || !json_object_get(tv, "value") ||
                                            !json_is_integer(json_object_get(tv, "time"))) return 0;
    }
    return 1;
}

/*
 * The platform's check of a post's params: batch posts {"properties":{id:[timed]},"events":…},
 * history posts [{"identity":{"productKey","deviceName"},"properties":[{id:timed}],"events":…}]
 * with the sender's own identity (the hub has no sub-devices). 200, or 460 (bad params).
 */
static int post_shape(const struct dev *d, const char *topic, const json_t *params)
{
    if (ends_with(topic, "/property/batch/post")) {
        const json_t *p = json_object_get(params, "properties"),
                     *e = json_object_get(params, "events");
        if (!json_is_object(params) || (!p && !e) || (p && !timed_arrays(p)) ||
            (e && !timed_arrays(e)))
            return 460;
    } else if (ends_with(topic, "/property/history/post")) {
        size_t i;
        json_t *rec;
        if (!json_is_array(params) || json_array_size(params) == 0)
            return 460;
        json_array_foreach((json_t *)params, i, rec)
        {
            const json_t *id = json_object_get(rec, "identity");
            const char *pk = json_string_value(json_object_get(id, "productKey"));
            const char *dn = json_string_value(json_object_get(id, "deviceName"));
            const json_t *p = json_object_get(rec, "properties"),
                         *e = json_object_get(rec, "events");
            if (!pk || !dn || strcmp(pk, d->pk) || strcmp(dn, d->dn) || (!p && !e) ||
                (p && !timed_records(p)) || (e && !timed_records(e)))
                return 460;
        }
    }
    return 200;
}

static int cb_message(int event, void *event_data, void *userdata)
{
    struct mosquitto_evt_message *ed = event_data;
    if (is_cloud(ed->client)) {
        if (has_prefix(ed->topic, "hub/ctl/"))
            cloud_control(ed);
        return MOSQ_ERR_SUCCESS;
    }
    struct dev *d = client_dev(ed->client);
    if (!d)
        return MOSQ_ERR_SUCCESS;

    if (g.rate > 0) {
        double t = now_mono();
        d->tokens += (t - d->last) * g.rate;
        d->last = t;
        if (d->tokens > g.rate)
            d->tokens = g.rate;
        if (d->tokens < 1.0) {
            g.rate_limited++;
            d->rate_limited++;
            if (g.rate_reply && has_prefix(ed->topic, "/sys/") && !ends_with(ed->topic, "_reply")) {
                json_t *req = json_loadb(ed->payload, ed->payloadlen, 0, NULL);
                if (req)
                    alink_reply(d, ed->topic, req, 429, "request too frequent, throttled");
                json_decref(req);
            }
            return MOSQ_ERR_ACL_DENIED; /* dropped; QoS 1 still gets its PUBACK */
        }
        d->tokens -= 1.0;
    }
    g.messages++;
    d->messages++;

    if (hub_services_message(d->pk, d->dn, ed->topic, ed->payload, (int)ed->payloadlen,
                             services_to_device, d))
        return MOSQ_ERR_SUCCESS;
    char pfx[300];
    snprintf(pfx, sizeof(pfx), "/sys/%s/%s/thing/ota/firmware/get", d->pk, d->dn);
    if (!strcmp(ed->topic, pfx)) {
        json_t *req = json_loadb(ed->payload, ed->payloadlen, 0, NULL);
        if (json_is_object(req))
            ota_get(d, ed->topic, req);
        json_decref(req);
        return MOSQ_ERR_SUCCESS;
    }
    snprintf(pfx, sizeof(pfx), "/sys/%s/%s/thing/config/get", d->pk, d->dn);
    if (!strcmp(ed->topic, pfx)) {
        json_t *req = json_loadb(ed->payload, ed->payloadlen, 0, NULL);
        if (json_is_object(req))
            config_get(d, ed->topic, req);
        json_decref(req);
        return MOSQ_ERR_SUCCESS;
    }
    snprintf(pfx, sizeof(pfx), "/ota/device/inform/%s/%s", d->pk, d->dn);
    if (!strcmp(ed->topic, pfx)) {
        ota_record(d, "inform", ed->payload, (int)ed->payloadlen);
        return MOSQ_ERR_SUCCESS;
    }
    snprintf(pfx, sizeof(pfx), "/ota/device/progress/%s/%s", d->pk, d->dn);
    if (!strcmp(ed->topic, pfx)) {
        ota_record(d, "progress", ed->payload, (int)ed->payloadlen);
        return MOSQ_ERR_SUCCESS;
    }
    snprintf(pfx, sizeof(pfx), "/sys/%s/%s/thing/event/", d->pk, d->dn);
    if (has_prefix(ed->topic, pfx) && ends_with(ed->topic, "/post")) {
        json_t *req = json_loadb(ed->payload, ed->payloadlen, 0, NULL);
        if (json_is_object(req) && wants_ack(req)) {
            int code = post_shape(d, ed->topic, json_object_get(req, "params"));
            alink_reply(d, ed->topic, req, code,
                        code == 200 ? "success" : "request parameter error");
        }
        json_decref(req);
        return MOSQ_ERR_SUCCESS;
    }
    snprintf(pfx, sizeof(pfx), "/ext/ntp/%s/%s/request", d->pk, d->dn);
    if (!strcmp(ed->topic, pfx)) {
        long long recv = now_ms() + g.ntp_skew_ms;
        json_t *req = json_loadb(ed->payload, ed->payloadlen, 0, NULL);
        json_t *dst = json_object_get(req, "deviceSendTime");
        char rt[32], st[32], topic[300];
        snprintf(rt, sizeof(rt), "%lld", recv);
        snprintf(st, sizeof(st), "%lld", now_ms() + g.ntp_skew_ms);
        json_t *r = json_pack("{s:O?,s:s,s:s}", "deviceSendTime", dst, "serverRecvTime", rt,
                              "serverSendTime", st);
        char *s = r ? json_dumps(r, JSON_COMPACT) : NULL;
        snprintf(topic, sizeof(topic), "/ext/ntp/%s/%s/response", d->pk, d->dn);
        if (s)
            hub_send(d, topic, s);
        free(s);
        json_decref(r);
        json_decref(req);
    }
    return MOSQ_ERR_SUCCESS;
}

/* ---- plugin entry points ---- */

HUB_EXPORT int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
    for (int i = 0; i < supported_version_count; i++)
        if (supported_versions[i] == 5)
            return 5;
    return -1;
}

static int opt_int(const char *v, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi)
        return -EINVAL;
    *out = x;
    return 0;
}

HUB_EXPORT int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
                                     struct mosquitto_opt *options, int option_count)
{
    struct inst *in = calloc(1, sizeof(*in));
    if (!in)
        return MOSQ_ERR_NOMEM;
    in->id = identifier;
    const char *dbpath = NULL;
    if (g.refs == 0) {
        g.rate = 30;
        g.rate_reply = 1;
        g.min_keepalive = 30;
    }
    for (int i = 0; i < option_count; i++) {
        const char *k = options[i].key, *v = options[i].value;
        long x;
        int bad = 0;
        if (!strcmp(k, "tls"))
            bad = opt_int(v, 0, 1, &x) || ((in->tls = (int)x), 0);
        else if (!strcmp(k, "hub_db"))
            dbpath = v;
        else if (!strcmp(k, "cloud_username")) {
            free(g.cloud_user);
            g.cloud_user = strdup(v);
        } else if (!strcmp(k, "cloud_password")) {
            free(g.cloud_pass);
            g.cloud_pass = strdup(v);
        } else if (!strcmp(k, "rate"))
            bad = opt_int(v, 0, 1000000, &x) || ((g.rate = (double)x), 0);
        else if (!strcmp(k, "rate_mode")) {
            bad = strcmp(v, "reply") && strcmp(v, "drop");
            g.rate_reply = !strcmp(v, "reply");
        } else if (!strcmp(k, "reply_delivery")) {
            bad = strcmp(v, "direct") && strcmp(v, "subscribed");
            g.reply_direct = !strcmp(v, "direct");
        } else if (!strcmp(k, "dynreg_plain"))
            bad = opt_int(v, 0, 1, &x) || ((g.dynreg_plain = (int)x), 0);
        else if (!strcmp(k, "min_keepalive"))
            bad = opt_int(v, 0, 65535, &x) || ((g.min_keepalive = (int)x), 0);
        else if (!strcmp(k, "https_port"))
            bad = opt_int(v, 0, 65535, &g.https_port);
        else {
            mosquitto_log_printf(MOSQ_LOG_ERR, "aligw_hub: unknown option plugin_opt_%s", k);
            bad = 1;
        }
        if (bad) {
            mosquitto_log_printf(MOSQ_LOG_ERR, "aligw_hub: bad value for plugin_opt_%s", k);
            free(in);
            return MOSQ_ERR_INVAL;
        }
    }
    if (!g.db) {
        if (!dbpath) {
            mosquitto_log_printf(MOSQ_LOG_ERR, "aligw_hub: plugin_opt_hub_db is required");
            free(in);
            return MOSQ_ERR_INVAL;
        }
        if (sqlite3_open_v2(dbpath, &g.db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
            mosquitto_log_printf(MOSQ_LOG_ERR, "aligw_hub: cannot open %s: %s", dbpath,
                                 g.db ? sqlite3_errmsg(g.db) : "out of memory");
            sqlite3_close(g.db);
            g.db = NULL;
            free(in);
            return MOSQ_ERR_INVAL;
        }
        sqlite3_busy_timeout(g.db, 5000);
        sqlite3_exec(g.db, "PRAGMA synchronous=NORMAL", NULL, NULL, NULL);
    }
    g.refs++;
    *userdata = in;
    mosquitto_callback_register(identifier, MOSQ_EVT_BASIC_AUTH, cb_basic_auth, NULL, in);
    mosquitto_callback_register(identifier, MOSQ_EVT_ACL_CHECK, cb_acl, NULL, in);
    mosquitto_callback_register(identifier, MOSQ_EVT_MESSAGE, cb_message, NULL, in);
    mosquitto_callback_register(identifier, MOSQ_EVT_DISCONNECT, cb_disconnect, NULL, in);
    mosquitto_log_printf(MOSQ_LOG_NOTICE, "aligw_hub: listener instance ready (tls=%d, rate=%g/s)",
                         in->tls, g.rate);
    return MOSQ_ERR_SUCCESS;
}

HUB_EXPORT int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options,
                                        int option_count)
{
    struct inst *in = userdata;
    if (in) {
        mosquitto_callback_unregister(in->id, MOSQ_EVT_BASIC_AUTH, cb_basic_auth, NULL);
        mosquitto_callback_unregister(in->id, MOSQ_EVT_ACL_CHECK, cb_acl, NULL);
        mosquitto_callback_unregister(in->id, MOSQ_EVT_MESSAGE, cb_message, NULL);
        mosquitto_callback_unregister(in->id, MOSQ_EVT_DISCONNECT, cb_disconnect, NULL);
        free(in);
    }
    if (--g.refs > 0)
        return MOSQ_ERR_SUCCESS;
    for (size_t i = 0; g.tab && i < g.tabsize; i++) {
        struct dev *d = g.tab[i];
        while (d) {
            struct dev *next = d->next;
            rules_free(d);
            free(d->pk);
            free(d->dn);
            free(d->client_id);
            free(d->seen.client_id);
            free(d);
            d = next;
        }
    }
    free(g.tab);
    free(g.cloud_user);
    free(g.cloud_pass);
    sqlite3_close(g.db);
    memset(&g, 0, sizeof(g));
    return MOSQ_ERR_SUCCESS;
}
