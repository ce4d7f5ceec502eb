/*
 * ota: firmware upgrades of the devices behind the gateway, each over its own session. It owns
 * every device module's firmware version (reported on /ota/device/inform after each login and
 * each upgrade), the upgrade jobs and their state machine
 *
 *     offered → downloading → verifying → ready → applying → done | failed
 *
 * (one job per device and module; a newer job replaces the older one), their persistence in the
 * state database (a restart resumes a job from the bytes on disk), the firmware files under
 * state_dir/ota/, progress reports (/ota/device/progress, rate-limited; −1..−4 with a reason on
 * failure), pulls (thing.ota.firmware.get at login, on demand, and for a fresh URL when a
 * pre-signed one has expired), and the hand-off of verified firmware to whoever applies it: the
 * device's plugin (on_firmware) or an API client (an "ota" watch event answered by
 * "ota_result"). Downloads go through download.c on the loop. Loop thread only.
 */
#ifndef ALIGW_OTA_H
#define ALIGW_OTA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

struct statedb;
struct device;

struct ota_opts {
    const char *dir;          /* where firmware files go (state_dir/ota); borrowed until next set */
    int max_concurrent;       /* downloads at once, gateway-wide */
    int64_t max_rate;         /* bytes/s, gateway-wide; 0 = unlimited */
    const char *ca_file;      /* trust store for downloads; NULL = the system's */
    bool allow_http;          /* accept http:// firmware URLs (refused by default) */
    int progress_interval_ms; /* least time between two progress reports of a job (10 % steps
                                 are always reported) */
    int apply_timeout_s;      /* applying with no result for this long: failed (−4) */
    int max_retries;          /* network errors in a row before the download fails (−2) */
    int64_t min_free_bytes;   /* disk that must stay free after the package is stored */
    bool pull_at_login;       /* send thing.ota.firmware.get after each login */
};

/* What ota hands to whoever applies firmware (all borrowed for the call). */
struct ota_apply {
    int64_t job_id;
    const char *module, *version, *from_version; /* from_version may be "" */
    size_t n_files;
    const char *const *paths; /* verified files, fsynced */
    const char *const *names;
    int64_t total_size;
    bool is_diff;
    const char *ext_data; /* JSON text or NULL */
};

struct ota_hooks {
    void *ctx;
    /* Queues an uplink for device key "pk/dn" (QoS 1). 0 or a negative error. */
    int (*uplink)(void *ctx, const char *key, const char *topic, const char *payload, size_t len);
    /* Hands firmware to the plugin serving pk/dn: 0 taken, -ENODEV no plugin serves the device,
     * -ENOTSUP its plugin has no on_firmware, another negative errno: the plugin refused. */
    int (*apply_plugin)(void *ctx, const char *pk, const char *dn, const struct ota_apply *a);
    /* Sends an "ota" event (borrowed) to API watchers of key; returns how many got it. */
    int (*event)(void *ctx, const char *key, json_t *ev);
};

/* Loads versions and jobs from db (borrowed until ota_close). Jobs resume at ota_start(). */
int ota_init(uv_loop_t *loop, struct statedb *db, const struct ota_opts *opts,
             const struct ota_hooks *hooks);
/* Resumes stored jobs: downloads restart from the files' bytes, ready firmware is handed off. */
void ota_start(void);
/* New options (reload); opts's strings must stay valid until the next call. */
void ota_set_opts(const struct ota_opts *opts);
/* Cancels downloads (partial files stay for the next start) and frees everything. */
void ota_close(void);

/* A version from the configuration (module "" = default). Stored unless a plugin, the API or an
 * upgrade set one since. */
void ota_config_version(const char *pk, const char *dn, const char *module, const char *version);
/* d has logged in: inform its versions, pull pending jobs if configured. */
void ota_device_online(struct device *d);
/* A message on /ota/device/upgrade/pk/dn (push) or a firmware/get_reply (pull answer). */
void ota_on_push(struct device *d, const char *payload, size_t len);
void ota_on_get_reply(struct device *d, const char *payload, size_t len);
/* d is being removed: its downloads stop (its rows stay). */
void ota_device_removed(const char *pk, const char *dn);

/*
 * Outcome of applying job job_id of pk/dn: step 0 = applied (version = what runs now; NULL or ""
 * = the package's version), −1..−4 = failed with desc (may be NULL). Returns 0, -ENOENT (no such
 * job for the device), -EALREADY (the job is not being applied: finished or not ready yet),
 * -EINVAL (bad step).
 */
int ota_result(const char *pk, const char *dn, int64_t job_id, int step, const char *version,
               const char *desc);
/* Sets a module's version (source "plugin" or "api") and informs the platform if it changed. */
int ota_set_version(const char *pk, const char *dn, const char *module, const char *version,
                    const char *source);
/* Sends thing.ota.firmware.get for pk/dn's module now. 0, ALIGW_ENODEVICE, or an outbox error. */
int ota_check(const char *pk, const char *dn, const char *module);

/* {"jobs":[…],"versions":[…]} for one device (key "pk/dn") or all (key NULL). New reference. */
json_t *ota_json(const char *key);
/* Calls fn once per job state (offered ... failed) with the number of jobs in it. */
void ota_count_by_state(void (*fn)(void *arg, const char *state, size_t n), void *arg);

#endif
