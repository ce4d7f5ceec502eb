/*
 * rconfig: the platform's remote configuration for the devices behind the gateway (thing.config
 * .get and thing.config.push). The platform announces a product's configuration file (at most
 * 64 KB) with a URL and a digest; rconfig downloads it over HTTPS (download.c, its own small
 * downloader: two transfers at once), checks its size and digest and that the disk keeps its
 * reserve, keeps it as state_dir/config/<pk>/<dn>/config (renamed into place once verified), and
 * hands it to the device's owner as a "config" event (API watchers, and the device's plugin when
 * it lists "config"). A push is answered on thing/config/push_reply: 200 once the file is
 * verified and kept, 460 for a notice that cannot be used, 500 with the reason when the download
 * or the check fails. An API config_get waits for the platform's get_reply and the file. One
 * configuration in flight per device: a newer one replaces it. Loop thread only.
 */
#ifndef ALIGW_RCONFIG_H
#define ALIGW_RCONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

struct rconfig_opts {
    const char *dir;        /* state_dir/config; borrowed until the next set */
    const char *ca_file;    /* trust store for downloads (ota.ca_file); NULL = the system's */
    bool allow_http;        /* accept http:// URLs (ota.allow_http) */
    int64_t min_free_bytes; /* disk that must stay free after the file is stored */
};

struct rconfig_hooks {
    void *ctx;
    /* Queues an uplink for device key "pk/dn" (QoS 1). 0 or a negative error. */
    int (*uplink)(void *ctx, const char *key, const char *topic, const char *payload, size_t len);
    /* Sends a "config" event (borrowed) for key; returns how many took it. */
    int (*event)(void *ctx, const char *key, json_t *ev);
};

/*
 * The end of a config_get: status 0 with config (the "config" event, borrowed for the call), or
 * a negative errno with error text: -ENOENT (the product has no configuration), -EREMOTE (the
 * platform refused), -ETIMEDOUT, -EFBIG, -EINVAL, -ENOSPC, -EBADMSG (digest or size mismatch),
 * or a download error.
 */
typedef void (*rconfig_done_fn)(void *arg, int status, const char *error, json_t *config);

int rconfig_init(uv_loop_t *loop, const struct rconfig_opts *opts,
                 const struct rconfig_hooks *hooks);
void rconfig_set_opts(const struct rconfig_opts *opts);
/* Cancels transfers; waiting requests are told -ECANCELED. */
void rconfig_close(void);

/* A message on /sys/pk/dn/thing/config/push, or a thing/config/get_reply. */
void rconfig_on_push(const char *pk, const char *dn, const char *payload, size_t len);
void rconfig_on_get_reply(const char *pk, const char *dn, const char *payload, size_t len);

/*
 * After thing.config.get with Alink id msg_id was queued for pk/dn: done is called exactly once,
 * within timeout_ms (unless rconfig_close tells it -ECANCELED first). 0 or -ENOMEM.
 */
int rconfig_wait(const char *pk, const char *dn, const char *msg_id, int timeout_ms,
                 rconfig_done_fn done, void *arg);

/* pk/dn is being removed: its transfer stops, its waiters are told -ENODEV. */
void rconfig_device_removed(const char *pk, const char *dn);

#endif
