/*
 * config: the daemon's configuration. A JSON file (jansson) plus an optional CSV devices file for
 * fleets, parsed into a fresh struct config and validated whole: every problem is reported as
 * "file:line:column: key: reason", all of them in one run, and a config with any error is never
 * used. Defaults are applied here, so the rest of the daemon reads resolved values only (a
 * device's host, port, TLS, keepalive... are filled from "cloud" unless the device overrides
 * them). SIGHUP reload and --check-config go through the same config_load().
 */
#ifndef ALIGW_CONFIG_H
#define ALIGW_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "sign.h"

enum reg_method {
    REG_NONE = 0, /* one device, one secret: device_secret given */
    REG_HTTPS,    /* one product, one secret, pre-registered: HTTPS /auth/register/device */
    REG_MQTT,     /* same over MQTT (authType=register) */
    REG_MQTT_NWL, /* pre-registration-free over MQTT (authType=regnwl, then connwl login) */
};

enum store_policy { STORE_DROP_OLDEST = 0, STORE_REJECT_NEW };
enum store_durability { DURABILITY_NORMAL = 0, DURABILITY_FULL };

struct device_conf {
    char *product_key, *device_name;
    char *device_secret;  /* NULL for dynamic registration */
    char *product_secret; /* only with reg != REG_NONE */
    enum reg_method reg;
    char *client_id; /* base clientId, default "${productKey}.${deviceName}" */
    char *host;      /* resolved endpoint */
    int port;
    bool tls;
    char *ca_file; /* resolved */
    bool verify_hostname;
    int securemode; /* 2 with TLS, 3 without, unless set */
    enum sign_method sign_method;
    bool timestamp; /* send a timestamp in the clientId and sign */
    int keepalive;  /* seconds, 30..1200 */
    bool clean_session;
    bool auto_reconnect;
    bool ext_rrpc; /* announce ext=3: sync calls on /ext/rrpc/<id>/..., custom RRPC topics */
    char **topics; /* extra subscriptions, placeholders already expanded */
    size_t n_topics;
    double rate;       /* uplink messages/s, 0 = unlimited */
    int64_t max_bytes; /* per-device outbox cap, 0 = none */
    bool runtime;      /* added through the API, persisted in the state database */
    /* "firmware_version": the firmware version of each module ("" = the default module) */
    char **fw_modules, **fw_versions;
    size_t n_fw;
};

struct plugin_conf {
    char *name;     /* "simulator", or a path when it contains '/' */
    char *path;     /* resolved path of the .so */
    json_t *config; /* the plugin's own JSON config (owned reference) */
    char **devices; /* "pk/dn" */
    size_t n_devices;
    bool in_process;        /* "isolation": "none" (default "process": aligw-plugin-host) */
    int heartbeat_ms;       /* a host silent this long is hung (default 5000) */
    int restart_min_ms;     /* first restart delay, doubled per crash (default 1000) */
    int restart_max_ms;     /* cap of that delay (default 60000) */
    int max_start_failures; /* failed starts in a row before it is parked (default 5) */
};

struct config {
    char *path; /* the file this came from */
    int log_level;
    char *state_dir;
    char *runtime_dir;

    struct {
        char *region;
        char *instance_id;
        char *register_url;  /* HTTPS dynamic registration endpoint */
        double connect_rate; /* sessions started per second, gateway-wide */
        int connect_burst;
        int backoff_min_ms, backoff_max_ms;
        int auth_backoff_ms;   /* first back-off after an authentication refusal */
        int kick_backoff_ms;   /* first back-off after being kicked */
        int ack_timeout_ms;    /* in flight with no PUBACK for this long: reconnect (0 = never) */
        int time_sync_s;       /* ask the platform's time this often (0 = never) */
        int max_clock_skew_ms; /* warn when the system clock is further off than this */
        bool network_watch;    /* follow routes (netwatch): no attempts while there is none */
        int devices_per_shard; /* sessions per shard process (0: all in aligwd; session.h) */
        int max_shards;        /* at most this many shards (0: two per online CPU) */
        /*
         * The per-device keys given in "cloud", applied to devices that don't override them
         * (also to devices added at runtime). Identity fields are NULL; host NULL, port 0 and
         * securemode 0 mean "derive per device" (host from instance_id or productKey + region,
         * port and securemode from tls).
         */
        struct device_conf defaults;
    } cloud;

    struct {
        char *path; /* default state_dir/outbox.db */
        enum store_durability durability;
        int64_t max_bytes;
        enum store_policy policy;
        int64_t ttl_s; /* 0 = keep forever */
        int inflight;  /* per-device in-flight window */
        int inflight_total;
    } store;

    struct {
        char *socket; /* default runtime_dir/aligw.sock */
        char *group;  /* socket group, NULL = daemon's */
        char **allow_users, **allow_groups, **admin_users, **admin_groups;
        size_t n_allow_users, n_allow_groups, n_admin_users, n_admin_groups;
        size_t max_line;    /* bytes per request line */
        size_t max_payload; /* bytes per message payload */
        int service_timeout_ms;
    } api;

    struct {
        char *listen;    /* NULL: off; "host:port", "[v6]:port" or a Unix socket path */
        bool per_device; /* also one series per device and counter */
    } metrics;

    struct {
        double min_online; /* share of the devices that must be online to be healthy */
    } health;

    struct {
        int max_concurrent;       /* downloads at once, gateway-wide */
        int64_t max_rate;         /* bytes/s for all downloads together, 0 = unlimited */
        char *ca_file;            /* trust store for firmware downloads, NULL = the system's */
        bool allow_http;          /* accept http:// firmware URLs */
        int progress_interval_ms; /* least time between two progress reports of a job */
        int apply_timeout_s;      /* no result from the applier for this long: failed (-4) */
        int max_retries;          /* network errors in a row before a download fails (-2) */
        int64_t min_free_bytes;   /* disk that must stay free after a package is stored */
        bool pull_at_login;       /* thing.ota.firmware.get after every login */
    } ota;

    char *devices_file;
    struct device_conf *devices;
    size_t n_devices;

    struct plugin_conf *plugins;
    size_t n_plugins;

    struct config_index *index; /* private to config.c: pk/dn lookup for config_find_device */
};

/* One problem found while loading. */
struct config_error {
    char *text; /* "file:line:column: key: reason" */
};

struct config_errors {
    struct config_error *v;
    size_t n;
    size_t more; /* errors found past the listed ones (v then ends with "... and N more") */
};

/* How many errors were found, listed or not. */
static inline size_t config_errors_count(const struct config_errors *e)
{
    return e->more ? e->n - 1 + e->more : e->n;
}

/*
 * Loads and validates path. On success returns 0 and *out is a fresh config the caller frees
 * with config_free(); errs is empty. On failure returns -EINVAL (or a negative errno if the file
 * can't be read, -ENOMEM), *out is NULL and errs holds every error found (at most 1000, the last
 * line then says how many more there were), sorted by file and position. warnings (may be NULL)
 * receives warnings, such as a file holding secrets that every user can read, in both cases.
 * errs and warnings start empty ({0}) and are always the caller's to free with
 * config_errors_free().
 */
int config_load(const char *path, struct config **out, struct config_errors *errs,
                struct config_errors *warnings);
/*
 * Same from a buffer holding the JSON text (borrowed for the call); name is used in messages and
 * its directory resolves relative paths. No permission warning is given for a buffer.
 */
int config_load_buffer(const char *name, const char *text, size_t len, struct config **out,
                       struct config_errors *errs, struct config_errors *warnings);
void config_free(struct config *c);
void config_errors_free(struct config_errors *e);

/* Finds a device by key; NULL if absent. */
const struct device_conf *config_find_device(const struct config *c, const char *pk,
                                             const char *dn);

/*
 * Validates and resolves one device given as JSON (from the API's add request), applying the
 * same defaults as the file. Returns 0 and fills *out (caller frees with
 * config_device_conf_free), or -EINVAL with the reasons in errs.
 */
int config_device_from_json(const struct config *c, json_t *obj, struct device_conf *out,
                            struct config_errors *errs);
void config_device_conf_free(struct device_conf *d);
/* Deep copy. */
int config_device_conf_copy(struct device_conf *dst, const struct device_conf *src);

/*
 * Reload: the keys whose value differs between running and next but take effect only after a
 * restart (the key table marks them: the store's file and limits, the API socket and line
 * limits, state and runtime directories, plugins), as "store.max_bytes, plugins" in buf; ""
 * when every change can be applied.
 */
void config_restart_keys(const struct config *running, const struct config *next, char *buf,
                         size_t len);

#endif
