/*
 * config_devices: devices, from the three places that share one validator: the inline "devices"
 * array, the CSV devices file (the format the local hub reads too, see docs/configuration.md)
 * and the API's runtime add (config_device_from_json).
 *
 * A device is parsed into a dev_build (the values it sets, with a bit per field) and then
 * resolved against the "cloud" defaults, so consumers see final values only. A field error
 * names the field the way its source does: "devices[3].port" in JSON, the column name in CSV.
 * Secrets are never part of a message. The device index (product key + device name → device)
 * is built here too.
 */
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

#include "csv.h"
#include "jsonpos.h"
#include "paths.h"

#define DEFAULT_CA_FILE paths_ca_file() /* the shipped bundle, installed or in the source tree */

static const struct choice cfg_register_choices[] = {
    {"https", REG_HTTPS},
    {"mqtt", REG_MQTT},
    {"mqtt-nwl", REG_MQTT_NWL},
    {NULL, 0},
};

/* ---- devices -------------------------------------------------------------------------------- */

enum dfield {
    DF_PK,
    DF_DN,
    DF_SECRET,
    DF_PSECRET,
    DF_REGISTER,
    DF_CLIENT_ID,
    DF_HOST,
    DF_PORT,
    DF_TLS,
    DF_CA,
    DF_VERIFY,
    DF_SECUREMODE,
    DF_SIGN,
    DF_TS,
    DF_KEEPALIVE,
    DF_CLEAN,
    DF_RECONNECT,
    DF_TOPICS,
    DF_RATE,
    DF_MAXBYTES,
    DF_FIRMWARE,
    DF_EXT_RRPC,
    DF__N
};

static const char *const dfield_name[DF__N] = {
    "product_key",
    "device_name",
    "device_secret",
    "product_secret",
    "register",
    "client_id",
    "host",
    "port",
    "tls",
    "ca_file",
    "verify_hostname",
    "securemode",
    "sign_method",
    "timestamp",
    "keepalive",
    "clean_session",
    "auto_reconnect",
    "topics",
    "rate",
    "max_bytes",
    "firmware_version",
    "ext_rrpc",
};

#define BIT(f) (1u << (f))
/* Reports a device field error and leaves the calling setter. */
#define FAIL(...)                                                                                  \
    do {                                                                                           \
        dev_err(__VA_ARGS__);                                                                      \
        return;                                                                                    \
    } while (0)
/* Keys "cloud" may set for every device. */
#define MASK_CLOUD                                                                                 \
    (BIT(DF_HOST) | BIT(DF_PORT) | BIT(DF_TLS) | BIT(DF_CA) | BIT(DF_VERIFY) |                     \
     BIT(DF_SECUREMODE) | BIT(DF_SIGN) | BIT(DF_TS) | BIT(DF_KEEPALIVE) | BIT(DF_CLEAN) |          \
     BIT(DF_RECONNECT) | BIT(DF_FIRMWARE) | BIT(DF_EXT_RRPC))
#define MASK_DEVICE (BIT(DF__N) - 1)
/* Columns of the devices file (the format shared with the local hub). */
#define MASK_CSV                                                                                   \
    (BIT(DF_PK) | BIT(DF_DN) | BIT(DF_SECRET) | BIT(DF_PSECRET) | BIT(DF_REGISTER) |               \
     BIT(DF_CLIENT_ID) | BIT(DF_KEEPALIVE) | BIT(DF_RATE) | BIT(DF_HOST) | BIT(DF_PORT) |          \
     BIT(DF_TLS) | BIT(DF_TOPICS))

static int dfield_lookup(const char *k)
{
    for (int f = 0; f < DF__N; f++)
        if (strcmp(dfield_name[f], k) == 0)
            return f;
    return -1;
}

struct dev_build {
    struct device_conf d;
    unsigned set; /* BIT(field) for each field the source gave */
    size_t topics_cap;
};

/* Where a device's fields came from, to name them in errors. */
struct dsrc {
    struct loader *L;
    const char *path; /* JSON: the device object's path ("devices[3]", "cloud", ""); NULL: CSV */
    int line;         /* CSV: the row's first line */
    int fline[DF__N], fcol[DF__N];
    bool bad;         /* any error in this device */
    unsigned errbits; /* BIT(field) for each field already reported */
};

static void dev_err(struct dsrc *s, int f, long idx, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void dev_err(struct dsrc *s, int f, long idx, const char *fmt, ...)
{
    va_list ap;
    s->bad = true;
    s->errbits |= BIT(f);
    va_start(ap, fmt);
    if (s->path) {
        char *p = idx >= 0 ? cfg_lfmt(s->L, "%s%s%s[%ld]", s->path, s->path[0] ? "." : "",
                                      dfield_name[f], idx)
                           : cfg_jpath(s->L, s->path, dfield_name[f]);
        if (p)
            cfg_vjerr(s->L, p, false, fmt, ap);
        free(p);
    } else {
        bool have = s->fline[f] > 0;
        cfg_vreport(s->L, &s->L->errs, SRC_DEVICES, have ? s->fline[f] : s->line,
                    have ? s->fcol[f] : 1, dfield_name[f], fmt, ap);
    }
    va_end(ap);
}

static char **str_field(struct device_conf *d, int f)
{
    switch (f) {
    case DF_PK:
        return &d->product_key;
    case DF_DN:
        return &d->device_name;
    case DF_SECRET:
        return &d->device_secret;
    case DF_PSECRET:
        return &d->product_secret;
    case DF_CLIENT_ID:
        return &d->client_id;
    case DF_HOST:
        return &d->host;
    case DF_CA:
        return &d->ca_file;
    default:
        return NULL;
    }
}

static void set_str(struct dsrc *s, struct dev_build *b, int f, const char *v)
{
    size_t n = strlen(v);
    switch (f) {
    case DF_PK:
        if (n < 1 || n > 32)
            FAIL(s, f, -1, "must be 1 to 32 characters, got %zu", n);
        if (!cfg_chars_ok(v, "_-"))
            FAIL(s, f, -1, "may contain only letters, digits, '_' and '-'");
        break;
    case DF_DN:
        if (n < 4 || n > 32)
            FAIL(s, f, -1, "must be 4 to 32 characters, got %zu", n);
        if (!cfg_chars_ok(v, "_-.@:"))
            FAIL(s, f, -1, "may contain only letters, digits and the characters _ - . @ :");
        break;
    case DF_SECRET:
    case DF_PSECRET:
        if (n < 1)
            FAIL(s, f, -1, "must not be empty");
        if (n > 64)
            FAIL(s, f, -1, "too long (%zu characters, at most 64)", n);
        break;
    case DF_CLIENT_ID: {
        const char *why = cfg_placeholder_problem(v);
        if (n < 1)
            FAIL(s, f, -1, "must not be empty");
        if (strchr(v, '|'))
            FAIL(s, f, -1, "must not contain '|'");
        if (why)
            FAIL(s, f, -1, "%s", why);
        break;
    }
    case DF_HOST:
        if (n < 1 || n > 253)
            FAIL(s, f, -1, "must be 1 to 253 characters, got %zu", n);
        if (!cfg_chars_ok(v, ".-_:[]"))
            FAIL(s, f, -1, "not a host name or address: \"%s\"", v);
        break;
    case DF_CA:
        if (n < 1)
            FAIL(s, f, -1, "must not be empty");
        break;
    default:
        return;
    }
    char **dst = str_field(&b->d, f);
    free(*dst);
    *dst = f == DF_CA ? cfg_resolve_path(s->L, v) : cfg_ldup(s->L, v);
    b->set |= BIT(f);
}

static void set_int(struct dsrc *s, struct dev_build *b, int f, long long v)
{
    switch (f) {
    case DF_PORT:
        if (v < 1 || v > 65535)
            FAIL(s, f, -1, "must be between 1 and 65535, got %lld", v);
        b->d.port = (int)v;
        break;
    case DF_KEEPALIVE:
        if (v < 30 || v > 1200)
            FAIL(s, f, -1, "must be between 30 and 1200 seconds, got %lld", v);
        b->d.keepalive = (int)v;
        break;
    case DF_SECUREMODE:
        if (v != 2 && v != 3)
            FAIL(s, f, -1, "must be 2 (TLS) or 3 (plain TCP), got %lld", v);
        b->d.securemode = (int)v;
        break;
    case DF_MAXBYTES:
        if (v < 0)
            FAIL(s, f, -1, "must be 0 (no cap) or more, got %lld", v);
        b->d.max_bytes = v;
        break;
    default:
        return;
    }
    b->set |= BIT(f);
}

static void set_rate(struct dsrc *s, struct dev_build *b, double v)
{
    if (!(v >= 0 && v <= 1e6))
        FAIL(s, DF_RATE, -1, "must be between 0 (unlimited) and 1000000, got %g", v);
    b->d.rate = v;
    b->set |= BIT(DF_RATE);
}

static void set_bool(struct dsrc *s, struct dev_build *b, int f, bool v)
{
    switch (f) {
    case DF_TLS:
        b->d.tls = v;
        break;
    case DF_VERIFY:
        b->d.verify_hostname = v;
        break;
    case DF_TS:
        b->d.timestamp = v;
        break;
    case DF_CLEAN:
        b->d.clean_session = v;
        break;
    case DF_RECONNECT:
        b->d.auto_reconnect = v;
        break;
    case DF_EXT_RRPC:
        b->d.ext_rrpc = v;
        break;
    default:
        return;
    }
    b->set |= BIT(f);
}

static void set_enum(struct dsrc *s, struct dev_build *b, int f, const char *v)
{
    if (f == DF_REGISTER) {
        int reg;
        char names[256];
        if (!cfg_choice_find(cfg_register_choices, v, &reg)) {
            cfg_choice_names(cfg_register_choices, names, sizeof(names));
            FAIL(s, f, -1, "must be %s, got \"%s\"", names, v);
        }
        b->d.reg = (enum reg_method)reg;
    } else if (f == DF_SIGN) {
        if (sign_method_parse(v, &b->d.sign_method) < 0)
            FAIL(s, f, -1, "must be \"hmacsha256\", \"hmacsha1\" or \"hmacmd5\", got \"%s\"", v);
    } else {
        return;
    }
    b->set |= BIT(f);
}

static void add_topic(struct dsrc *s, struct dev_build *b, long idx, const char *v)
{
    const char *why = cfg_placeholder_problem(v);
    if (v[0] != '/')
        FAIL(s, DF_TOPICS, idx, "must start with '/': \"%s\"", v);
    if (strlen(v) > 1024)
        FAIL(s, DF_TOPICS, idx, "too long (at most 1024 bytes)");
    if (why)
        FAIL(s, DF_TOPICS, idx, "%s: \"%s\"", why, v);
    if (b->d.n_topics == b->topics_cap) {
        size_t ncap = b->topics_cap ? b->topics_cap * 2 : 4;
        char **nv = realloc(b->d.topics, ncap * sizeof(*nv));
        if (!nv) {
            s->L->oom = true;
            return;
        }
        b->d.topics = nv;
        b->topics_cap = ncap;
    }
    char *t = cfg_ldup(s->L, v);
    if (t)
        b->d.topics[b->d.n_topics++] = t;
    b->set |= BIT(DF_TOPICS);
}

/* One module's firmware version ("" = default module): 1-64 printable bytes each. */
static void add_firmware(struct dsrc *s, struct dev_build *b, const char *module, const char *v)
{
    size_t n = strlen(v), m = strlen(module);
    char **nm, **nv;
    if (n < 1 || n > 64 || m > 64)
        FAIL(s, DF_FIRMWARE, -1, "versions are 1-64 characters and modules at most 64");
    for (const char *p = v; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            FAIL(s, DF_FIRMWARE, -1, "must not contain control characters");
    nm = realloc(b->d.fw_modules, (b->d.n_fw + 1) * sizeof(*nm));
    if (nm)
        b->d.fw_modules = nm;
    nv = realloc(b->d.fw_versions, (b->d.n_fw + 1) * sizeof(*nv));
    if (nv)
        b->d.fw_versions = nv;
    if (!nm || !nv) {
        s->L->oom = true;
        return;
    }
    b->d.fw_modules[b->d.n_fw] = cfg_ldup(s->L, strcmp(module, "default") ? module : "");
    b->d.fw_versions[b->d.n_fw] = cfg_ldup(s->L, v);
    b->d.n_fw++;
    b->set |= BIT(DF_FIRMWARE);
}

/* A device being read from a JSON object (or the per-device keys of "cloud"). */
struct dev_walk {
    struct dsrc *s;
    struct dev_build *b;
    unsigned mask; /* BIT(field) for each field the object may set */
};

/* One member of a device object (an other_fn, ctx a dev_walk). false when k is not a field. */
static bool dev_json_member(struct loader *L, void *ctx, const char *k, json_t *v, const char *path)
{
    struct dev_walk *w = ctx;
    struct dsrc *s = w->s;
    struct dev_build *b = w->b;
    int f = dfield_lookup(k);
    if (f < 0 || !(w->mask & BIT(f)))
        return false;
    switch (f) {
    case DF_PK:
    case DF_DN:
    case DF_SECRET:
    case DF_PSECRET:
    case DF_CLIENT_ID:
    case DF_HOST:
    case DF_CA:
    case DF_REGISTER:
    case DF_SIGN:
        if (!json_is_string(v)) {
            dev_err(s, f, -1, "must be a string, got %s", cfg_json_type_name(v));
        } else if (strlen(json_string_value(v)) != json_string_length(v)) {
            dev_err(s, f, -1, "must not contain NUL characters");
        } else if (f == DF_REGISTER || f == DF_SIGN) {
            set_enum(s, b, f, json_string_value(v));
        } else {
            set_str(s, b, f, json_string_value(v));
            if (f == DF_SECRET || f == DF_PSECRET)
                s->L->secrets_inline = true;
        }
        break;
    case DF_PORT:
    case DF_KEEPALIVE:
    case DF_SECUREMODE:
    case DF_MAXBYTES:
        if (json_is_real(v))
            dev_err(s, f, -1, "must be an integer, got %g", json_real_value(v));
        else if (!json_is_integer(v))
            dev_err(s, f, -1, "must be an integer, got %s", cfg_json_type_name(v));
        else
            set_int(s, b, f, json_integer_value(v));
        break;
    case DF_RATE:
        if (!json_is_number(v))
            dev_err(s, f, -1, "must be a number, got %s", cfg_json_type_name(v));
        else
            set_rate(s, b, json_number_value(v));
        break;
    case DF_TLS:
    case DF_VERIFY:
    case DF_TS:
    case DF_CLEAN:
    case DF_RECONNECT:
    case DF_EXT_RRPC:
        if (!json_is_boolean(v))
            dev_err(s, f, -1, "must be true or false, got %s", cfg_json_type_name(v));
        else
            set_bool(s, b, f, json_is_true(v));
        break;
    case DF_FIRMWARE: {
        const char *mk;
        json_t *mv;
        if (json_is_string(v)) {
            add_firmware(s, b, "", json_string_value(v));
            break;
        }
        if (!json_is_object(v)) {
            dev_err(s, f, -1,
                    "must be a version string or an object {\"module\": \"version\"}, got %s",
                    cfg_json_type_name(v));
            break;
        }
        json_object_foreach(v, mk, mv)
        {
            if (!json_is_string(mv)) {
                dev_err(s, f, -1, "module \"%.64s\": the version must be a string", mk);
                break;
            }
            add_firmware(s, b, mk, json_string_value(mv));
        }
        break;
    }
    case DF_TOPICS: {
        size_t i;
        json_t *el;
        if (!json_is_array(v)) {
            dev_err(s, f, -1, "must be an array of strings, got %s", cfg_json_type_name(v));
            break;
        }
        b->set |= BIT(DF_TOPICS);
        json_array_foreach(v, i, el)
        {
            if (!json_is_string(el) || strlen(json_string_value(el)) != json_string_length(el))
                dev_err(s, f, (long)i, "must be a string, got %s", cfg_json_type_name(el));
            else
                add_topic(s, b, (long)i, json_string_value(el));
        }
        break;
    }
    default:
        return false;
    }
    return true;
}

/* The built-in per-device defaults, before "cloud" applies its keys. */
static void defaults_init(struct device_conf *d)
{
    memset(d, 0, sizeof(*d));
    d->tls = true;
    d->verify_hostname = true;
    d->sign_method = SIGN_HMACSHA256;
    d->timestamp = true;
    d->keepalive = 300;
    d->clean_session = false;
    d->auto_reconnect = true;
    d->rate = 30;
}

/*
 * Checks a parsed device as a whole and resolves every field not given against def (the cloud
 * defaults). Returns true when the device is valid; b->d then owns resolved values.
 */
static bool dev_finish(struct dsrc *s, struct dev_build *b, const struct config *c,
                       const struct device_conf *def)
{
    struct loader *L = s->L;
    struct device_conf *d = &b->d;
    unsigned set = b->set;
    bool has_ds = set & BIT(DF_SECRET), has_ps = set & BIT(DF_PSECRET);

    if (!(set & BIT(DF_PK)) && !(s->errbits & BIT(DF_PK)))
        dev_err(s, DF_PK, -1, "missing");
    if (!(set & BIT(DF_DN)) && !(s->errbits & BIT(DF_DN)))
        dev_err(s, DF_DN, -1, "missing");
    if (!(set & BIT(DF_REGISTER)))
        d->reg = REG_NONE;
    unsigned combo = BIT(DF_SECRET) | BIT(DF_PSECRET) | BIT(DF_REGISTER);
    if (s->errbits & combo) {
        /* One of them was already reported: the combination can't be judged. */
    } else if (has_ds && d->reg != REG_NONE)
        dev_err(s, DF_REGISTER, -1,
                "device_secret and register exclude each other: give device_secret, or "
                "product_secret with register");
    else if (!has_ds && !has_ps && d->reg == REG_NONE)
        dev_err(s, DF_SECRET, -1,
                "missing: give device_secret, or product_secret with register "
                "(https, mqtt or mqtt-nwl)");
    else if (has_ps && !has_ds && d->reg == REG_NONE)
        dev_err(s, DF_REGISTER, -1,
                "missing: product_secret needs register (https, mqtt or "
                "mqtt-nwl)");
    else if (d->reg != REG_NONE && !has_ps)
        dev_err(s, DF_PSECRET, -1, "missing: register needs product_secret");
    if (s->bad)
        return false;
    if (has_ds && has_ps) {
        free(d->product_secret); /* unused: the device already has its own secret */
        d->product_secret = NULL;
    }

    if (!(set & BIT(DF_TLS)))
        d->tls = def->tls;
    if (!(set & BIT(DF_PORT)))
        d->port = def->port ? def->port : (d->tls ? 8883 : 1883);
    if (!(set & BIT(DF_SECUREMODE)))
        d->securemode = def->securemode ? def->securemode : (d->tls ? 2 : 3);
    if (!(set & BIT(DF_VERIFY)))
        d->verify_hostname = def->verify_hostname;
    if (!(set & BIT(DF_SIGN)))
        d->sign_method = def->sign_method;
    if (!(set & BIT(DF_TS)))
        d->timestamp = def->timestamp;
    if (!(set & BIT(DF_KEEPALIVE)))
        d->keepalive = def->keepalive;
    if (!(set & BIT(DF_CLEAN)))
        d->clean_session = def->clean_session;
    if (!(set & BIT(DF_RECONNECT)))
        d->auto_reconnect = def->auto_reconnect;
    if (!(set & BIT(DF_EXT_RRPC)))
        d->ext_rrpc = def->ext_rrpc;
    if (!(set & BIT(DF_RATE)))
        d->rate = 30;
    if (!(set & BIT(DF_MAXBYTES)))
        d->max_bytes = 0;
    if (!(set & BIT(DF_FIRMWARE)) && def->n_fw) {
        d->fw_modules = calloc(def->n_fw, sizeof(char *));
        d->fw_versions = calloc(def->n_fw, sizeof(char *));
        if (!d->fw_modules || !d->fw_versions) {
            L->oom = true;
            return false;
        }
        for (size_t i = 0; i < def->n_fw; i++) {
            d->fw_modules[i] = cfg_ldup(L, def->fw_modules[i]);
            d->fw_versions[i] = cfg_ldup(L, def->fw_versions[i]);
            d->n_fw++;
        }
    }
    if (!(set & BIT(DF_CA)))
        d->ca_file = cfg_ldup(L, def->ca_file ? def->ca_file : DEFAULT_CA_FILE);
    if (!(set & BIT(DF_HOST))) {
        if (def->host)
            d->host = cfg_ldup(L, def->host);
        else if (c && c->cloud.instance_id)
            d->host = cfg_lfmt(L, "%s.mqtt.iothub.aliyuncs.com", c->cloud.instance_id);
        else
            d->host = cfg_lfmt(L, "%s.iot-as-mqtt.%s.aliyuncs.com", d->product_key,
                               c && c->cloud.region ? c->cloud.region : "cn-shanghai");
    }
    if (set & BIT(DF_CLIENT_ID)) {
        char *x = cfg_expand(L, d->client_id, d->product_key, d->device_name);
        free(d->client_id);
        d->client_id = x;
        if (x && strlen(x) > 64) {
            dev_err(s, DF_CLIENT_ID, -1, "too long after expansion (%zu characters, at most 64)",
                    strlen(x));
            return false;
        }
    } else {
        d->client_id = cfg_lfmt(L, "%s.%s", d->product_key, d->device_name);
    }
    for (size_t i = 0; i < d->n_topics; i++) {
        char *x = cfg_expand(L, d->topics[i], d->product_key, d->device_name);
        if (x) {
            free(d->topics[i]);
            d->topics[i] = x;
        }
    }
    return !L->oom;
}

void config_device_conf_free(struct device_conf *d)
{
    if (!d)
        return;
    free(d->product_key);
    free(d->device_name);
    free(d->device_secret);
    free(d->product_secret);
    free(d->client_id);
    free(d->host);
    free(d->ca_file);
    cfg_free_strv(d->topics, d->n_topics);
    cfg_free_strv(d->fw_modules, d->n_fw);
    cfg_free_strv(d->fw_versions, d->n_fw);
    memset(d, 0, sizeof(*d));
}

static int dup_opt(char **dst, const char *src)
{
    *dst = NULL;
    if (src && !(*dst = strdup(src)))
        return -ENOMEM;
    return 0;
}

int config_device_conf_copy(struct device_conf *dst, const struct device_conf *src)
{
    *dst = *src;
    dst->product_key = dst->device_name = dst->device_secret = dst->product_secret = NULL;
    dst->client_id = dst->host = dst->ca_file = NULL;
    dst->topics = NULL;
    dst->n_topics = 0;
    dst->fw_modules = dst->fw_versions = NULL;
    dst->n_fw = 0;
    if (dup_opt(&dst->product_key, src->product_key) < 0 ||
        dup_opt(&dst->device_name, src->device_name) < 0 ||
        dup_opt(&dst->device_secret, src->device_secret) < 0 ||
        dup_opt(&dst->product_secret, src->product_secret) < 0 ||
        dup_opt(&dst->client_id, src->client_id) < 0 || dup_opt(&dst->host, src->host) < 0 ||
        dup_opt(&dst->ca_file, src->ca_file) < 0)
        goto fail;
    if (src->n_topics) {
        dst->topics = calloc(src->n_topics, sizeof(*dst->topics));
        if (!dst->topics)
            goto fail;
        for (size_t i = 0; i < src->n_topics; i++) {
            if (dup_opt(&dst->topics[i], src->topics[i]) < 0)
                goto fail;
            dst->n_topics++;
        }
    }
    if (src->n_fw) {
        dst->fw_modules = calloc(src->n_fw, sizeof(char *));
        dst->fw_versions = calloc(src->n_fw, sizeof(char *));
        if (!dst->fw_modules || !dst->fw_versions) {
            free(dst->fw_modules);
            free(dst->fw_versions);
            dst->fw_modules = dst->fw_versions = NULL;
            goto fail;
        }
        for (size_t i = 0; i < src->n_fw; i++) {
            dst->n_fw++;
            if (dup_opt(&dst->fw_modules[i], src->fw_modules[i]) < 0 ||
                dup_opt(&dst->fw_versions[i], src->fw_versions[i]) < 0)
                goto fail;
        }
    }
    return 0;
fail:
    config_device_conf_free(dst);
    return -ENOMEM;
}

/* ---- the device index ----------------------------------------------------------------------- */

static uint32_t dev_hash(const char *pk, const char *dn)
{
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)pk; *p; p++)
        h = (h ^ *p) * 16777619u;
    h = (h ^ '/') * 16777619u;
    for (const unsigned char *p = (const unsigned char *)dn; *p; p++)
        h = (h ^ *p) * 16777619u;
    return h;
}

static int index_grow(struct config_index *ix)
{
    size_t ncap = ix->cap ? ix->cap * 2 : 256;
    struct islot *ns = calloc(ncap, sizeof(*ns));
    if (!ns)
        return -ENOMEM;
    for (size_t i = 0; i < ix->cap; i++) {
        if (!ix->slots[i].idx1)
            continue;
        size_t j = ix->slots[i].hash & (ncap - 1);
        while (ns[j].idx1)
            j = (j + 1) & (ncap - 1);
        ns[j] = ix->slots[i];
    }
    free(ix->slots);
    ix->slots = ns;
    ix->cap = ncap;
    return 0;
}

static long index_find(const struct config_index *ix, const struct device_conf *devs,
                       const char *pk, const char *dn, uint32_t h)
{
    if (!ix->cap)
        return -1;
    for (size_t j = h & (ix->cap - 1); ix->slots[j].idx1; j = (j + 1) & (ix->cap - 1)) {
        const struct device_conf *d = &devs[ix->slots[j].idx1 - 1];
        if (ix->slots[j].hash == h && strcmp(d->product_key, pk) == 0 &&
            strcmp(d->device_name, dn) == 0)
            return (long)(ix->slots[j].idx1 - 1);
    }
    return -1;
}

/*
 * Adds devs[i] to the index. Returns -1 when added, or the index of an earlier device with the
 * same key (the new one is then not indexed).
 */
static long index_add(struct loader *L, struct config_index *ix, const struct device_conf *devs,
                      size_t i)
{
    uint32_t h = dev_hash(devs[i].product_key, devs[i].device_name);
    long prev = index_find(ix, devs, devs[i].product_key, devs[i].device_name, h);
    if (prev >= 0)
        return prev;
    if ((ix->n + 1) * 2 > ix->cap && index_grow(ix) < 0) {
        L->oom = true;
        return -1;
    }
    size_t j = h & (ix->cap - 1);
    while (ix->slots[j].idx1)
        j = (j + 1) & (ix->cap - 1);
    ix->slots[j] = (struct islot){h, i + 1};
    ix->n++;
    return -1;
}

const struct device_conf *config_find_device(const struct config *c, const char *pk, const char *dn)
{
    if (!c || !pk || !dn)
        return NULL;
    if (c->index && c->index->n == c->n_devices) {
        long i = index_find(c->index, c->devices, pk, dn, dev_hash(pk, dn));
        return i >= 0 ? &c->devices[i] : NULL;
    }
    for (size_t i = 0; i < c->n_devices; i++)
        if (strcmp(c->devices[i].product_key, pk) == 0 &&
            strcmp(c->devices[i].device_name, dn) == 0)
            return &c->devices[i];
    return NULL;
}

static void origin_text(struct loader *L, const struct origin *o, char *buf, size_t n)
{
    snprintf(buf, n, "%s:%d:%d", o->src == SRC_DEVICES ? L->dev_display : L->name, o->line, o->col);
}

/* Takes a finished device into the config, or reports it as a duplicate. */
static void dev_commit(struct loader *L, struct dsrc *s, struct dev_build *b, struct origin o)
{
    struct config *c = L->c;
    if (c->n_devices == L->dev_cap) {
        size_t ncap = L->dev_cap ? L->dev_cap * 2 : 16;
        struct device_conf *nd = realloc(c->devices, ncap * sizeof(*nd));
        struct origin *no = nd ? realloc(L->orig, ncap * sizeof(*no)) : NULL;
        if (nd)
            c->devices = nd;
        if (!nd || !no) {
            L->oom = true;
            config_device_conf_free(&b->d);
            return;
        }
        L->orig = no;
        L->dev_cap = ncap;
    }
    c->devices[c->n_devices] = b->d;
    long prev = index_add(L, c->index, c->devices, c->n_devices);
    if (prev >= 0) {
        char where[512];
        origin_text(L, &L->orig[prev], where, sizeof(where));
        dev_err(s, DF_DN, -1, "duplicate device %s/%s (first defined at %s)", b->d.product_key,
                b->d.device_name, where);
        config_device_conf_free(&b->d);
        return;
    }
    L->orig[c->n_devices] = o;
    c->n_devices++;
    memset(&b->d, 0, sizeof(b->d));
}

void cfg_parse_inline_devices(struct loader *L, json_t *arr)
{
    if (!json_is_array(arr)) {
        cfg_jerr(L, "devices", false, "must be an array of device objects, got %s",
                 cfg_json_type_name(arr));
        return;
    }
    size_t i;
    json_t *o;
    json_array_foreach(arr, i, o)
    {
        char path[48];
        snprintf(path, sizeof(path), "devices[%zu]", i);
        if (!cfg_j_object(L, o, path))
            continue;
        struct dsrc s = {.L = L, .path = path};
        struct dev_build b = {0};
        struct dev_walk w = {&s, &b, MASK_DEVICE};
        if (!cfg_walk(L, o, path, NULL, dev_json_member, &w))
            s.bad = true;
        if (!dev_finish(&s, &b, L->c, &L->c->cloud.defaults)) {
            config_device_conf_free(&b.d);
            continue;
        }
        struct origin org = {SRC_CONFIG, 0, 0};
        char *dp = cfg_lfmt(L, "%s.device_name", path);
        if (dp)
            cfg_json_pos(L, dp, false, &org.line, &org.col);
        free(dp);
        dev_commit(L, &s, &b, org);
    }
}

/* "cloud": its own keys, and the per-device keys it sets for every device. o may be NULL. */
void cfg_parse_cloud(struct loader *L, json_t *o, const struct key *cloud_keys)
{
    struct dsrc s = {.L = L, .path = "cloud"};
    struct dev_build b = {0};
    struct dev_walk w = {&s, &b, MASK_CLOUD};

    defaults_init(&b.d);
    if (o && cfg_j_object(L, o, "cloud"))
        cfg_walk(L, o, "cloud", cloud_keys, dev_json_member, &w);
    if (!(b.set & BIT(DF_CA)))
        b.d.ca_file = cfg_ldup(L, DEFAULT_CA_FILE);
    /* host, port and securemode stay 0/NULL unless given: they are derived per device. */
    L->c->cloud.defaults = b.d;
}

/* ---- the devices file (CSV) ----------------------------------------------------------------- */

static bool parse_ll(const char *s, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end)
        return false;
    *out = v;
    return true;
}

static int parse_bool_text(const char *s)
{
    if (!strcasecmp(s, "true") || !strcmp(s, "1") || !strcasecmp(s, "yes"))
        return 1;
    if (!strcasecmp(s, "false") || !strcmp(s, "0") || !strcasecmp(s, "no"))
        return 0;
    return -1;
}

static void csv_row(struct loader *L, const int *colmap, size_t ncols, const char *const *names,
                    const struct csv_field *fv, size_t nf, int row_line)
{
    struct dsrc s = {.L = L, .path = NULL, .line = row_line};
    struct dev_build b = {0};
    if (nf != ncols) {
        if (nf < ncols)
            cfg_report(L, SRC_DEVICES, row_line, 1, names[nf],
                       "row has %zu fields, the header has %zu", nf, ncols);
        else
            cfg_report(L, SRC_DEVICES, fv[ncols].line, fv[ncols].col, "(extra field)",
                       "row has %zu fields, the header has %zu", nf, ncols);
        return;
    }
    for (size_t i = 0; i < nf; i++) {
        int f = colmap[i];
        if (f >= 0) {
            s.fline[f] = fv[i].line;
            s.fcol[f] = fv[i].col;
        }
    }
    for (size_t i = 0; i < nf; i++) {
        int f = colmap[i];
        const char *v = fv[i].s;
        long long x;
        if (f < 0 || !v[0])
            continue; /* a hub_ column, or empty: not set */
        switch (f) {
        case DF_SECRET:
        case DF_PSECRET:
            L->secrets_file = true;
            /* fall through */
        case DF_PK:
        case DF_DN:
        case DF_CLIENT_ID:
        case DF_HOST:
            set_str(&s, &b, f, v);
            break;
        case DF_REGISTER:
            set_enum(&s, &b, f, v);
            break;
        case DF_KEEPALIVE:
        case DF_PORT:
            if (!parse_ll(v, &x))
                dev_err(&s, f, -1, "must be an integer, got \"%s\"", v);
            else
                set_int(&s, &b, f, x);
            break;
        case DF_RATE: {
            char *end;
            double r = strtod(v, &end);
            if (end == v || *end)
                dev_err(&s, f, -1, "must be a number, got \"%s\"", v);
            else
                set_rate(&s, &b, r);
            break;
        }
        case DF_TLS: {
            int t = parse_bool_text(v);
            if (t < 0)
                dev_err(&s, f, -1, "must be true or false, got \"%s\"", v);
            else
                set_bool(&s, &b, f, t);
            break;
        }
        case DF_TOPICS: {
            char *p = fv[i].s;
            for (;;) {
                char *semi = strchr(p, ';');
                if (semi)
                    *semi = '\0';
                if (*p)
                    add_topic(&s, &b, -1, p);
                if (!semi)
                    break;
                p = semi + 1;
            }
            break;
        }
        default:
            break;
        }
    }
    if (!dev_finish(&s, &b, L->c, &L->c->cloud.defaults)) {
        config_device_conf_free(&b.d);
        return;
    }
    int dl = s.fline[DF_DN], dc = s.fcol[DF_DN];
    dev_commit(L, &s, &b, (struct origin){SRC_DEVICES, dl, dc});
}

void cfg_parse_devices_file(struct loader *L, char *buf, size_t len)
{
    struct csv_reader rd;
    struct csv_row row;
    int *colmap = NULL;
    const char **names = NULL;
    size_t ncols = 0;
    bool have_header = false;
    int r;

    csv_init(&rd, buf, len);
    while ((r = csv_next(&rd, &row)) > 0) {
        if (row.error) {
            size_t k = row.err_field;
            cfg_report(L, SRC_DEVICES, row.err_line, row.err_col,
                       have_header && k < ncols ? names[k] : "(field)", "%s", row.error);
            if (row.fatal)
                goto out;
            continue;
        }
        if (!have_header) {
            have_header = true;
            ncols = row.n;
            colmap = malloc(ncols * sizeof(*colmap));
            names = malloc(ncols * sizeof(*names));
            if (!colmap || !names) {
                L->oom = true;
                goto out;
            }
            bool seen[DF__N] = {0}, hdr_bad = false;
            for (size_t i = 0; i < row.n; i++) {
                const struct csv_field *fd = &row.f[i];
                names[i] = fd->s;
                int f = dfield_lookup(fd->s);
                colmap[i] = -1;
                if (strncmp(fd->s, "hub_", 4) == 0)
                    continue;
                if (f < 0 || !(MASK_CSV & BIT(f))) {
                    cfg_report(L, SRC_DEVICES, fd->line, fd->col, fd->s[0] ? fd->s : "\"\"",
                               "unknown column (columns: product_key, device_name, device_secret, "
                               "product_secret, register, client_id, keepalive, rate, host, port, "
                               "tls, topics, hub_*)");
                    hdr_bad = true;
                } else if (seen[f]) {
                    cfg_report(L, SRC_DEVICES, fd->line, fd->col, fd->s, "duplicate column");
                    hdr_bad = true;
                } else {
                    seen[f] = true;
                    colmap[i] = f;
                }
            }
            if (!seen[DF_PK] || !seen[DF_DN]) {
                cfg_report(L, SRC_DEVICES, row.line, 1,
                           !seen[DF_PK] ? "product_key" : "device_name",
                           "required column missing from the header line");
                hdr_bad = true;
            }
            if (hdr_bad)
                goto out; /* rows can't be read reliably against a bad header */
            continue;
        }
        csv_row(L, colmap, ncols, names, row.f, row.n, row.line);
    }
    if (r < 0)
        L->oom = true;
    else if (!have_header)
        cfg_report(L, SRC_DEVICES, 0, 0, "(header)",
                   "no header line (product_key,device_name,...)");
out:
    csv_free(&rd);
    free(colmap);
    free(names);
}

int config_device_from_json(const struct config *c, json_t *obj, struct device_conf *out,
                            struct config_errors *errs)
{
    struct loader L = {.name = NULL};
    struct dsrc s = {.L = &L, .path = ""};
    struct dev_build b = {0};
    struct dev_walk w = {&s, &b, MASK_DEVICE};
    struct device_conf builtin;
    int r = -EINVAL;

    memset(out, 0, sizeof(*out));
    defaults_init(&builtin);
    if (!json_is_object(obj)) {
        cfg_report(&L, SRC_CONFIG, 0, 0, "device", "must be a JSON object");
        goto out;
    }
    if (!cfg_walk(&L, obj, "", NULL, dev_json_member, &w))
        s.bad = true;
    if (dev_finish(&s, &b, c, c ? &c->cloud.defaults : &builtin) && L.errs.n == 0) {
        b.d.runtime = true;
        *out = b.d;
        memset(&b.d, 0, sizeof(b.d));
        r = 0;
    }
out:
    config_device_conf_free(&b.d);
    if (L.oom)
        r = -ENOMEM;
    cfg_elist_export(&L, &L.errs, errs, false);
    return r;
}
