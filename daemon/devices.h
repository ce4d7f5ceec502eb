/*
 * devices: the registry of device identities and each one's life: registration (one product, one
 * secret), login through the gateway-wide connect pacer, subscriptions, reconnection with
 * back-off and jitter (far longer after an authentication refusal or a kick), the forwarder that
 * drains the device's outbox queue oldest first within its in-flight window and rate limit, and
 * the status the API and STATUS= report. Loop thread only. A device's trouble only ever touches
 * that device's timers and state: nothing here waits.
 */
#ifndef ALIGW_DEVICES_H
#define ALIGW_DEVICES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

#include "config.h"

struct outbox;
struct statedb;
struct device;

enum device_state {
    DEV_OFFLINE = 0,  /* not started, or stopped */
    DEV_REGISTERING,  /* one-product-one-secret registration in progress */
    DEV_CONNECTING,   /* waiting for the pacer or for CONNACK */
    DEV_ONLINE,       /* session up, subscriptions sent */
    DEV_BACKOFF,      /* waiting to reconnect after a network error */
    DEV_AUTH_REFUSED, /* the platform refused the credentials; long back-off */
    DEV_KICKED,       /* another login of the same device took the session; long back-off */
    DEV_NEEDS_RESET,  /* registration refused: device already active on the platform */
    DEV_TLS_FAILED,   /* the TLS handshake or the server's certificate failed; long back-off */
    DEV_NO_NETWORK,   /* no route to its endpoint: no attempts until netwatch sees one */
    DEV_STATE_COUNT
};

/* A device's counters since it was started (the daemon's start, or its addition). */
struct device_counters {
    uint64_t connects, disconnects;
    uint64_t msgs_in;   /* downlink messages received */
    uint64_t msgs_sent; /* uplink messages handed to the session (resends count again) */
    uint64_t msgs_out;  /* uplink messages the platform acknowledged (or QoS 0 sent) */
    uint64_t auth_failures, kicks, sub_refused, ack_timeouts;
    uint64_t store_errors; /* failed outbox reads on the delivery path */
    uint64_t dead_letters; /* messages set aside as refused by the platform */
    uint64_t throttled;    /* 429 replies received */
};

/* The gateway's sums: counters of every device since the start (removed ones included), the
 * messages in flight now and the devices in each state now. */
struct device_totals {
    struct device_counters c;
    uint64_t inflight;
    size_t by_state[DEV_STATE_COUNT];
};

const char *device_state_name(enum device_state s);

/* What the rest of the daemon hears from the registry (all on the loop thread). */
struct devices_hooks {
    void *ctx;
    /* A message arrived for device d (topic and payload borrowed for the call). */
    void (*downlink)(void *ctx, struct device *d, const char *topic, const void *payload,
                     size_t len);
    /* d changed state (also called for online → offline). */
    void (*state_changed)(void *ctx, struct device *d, enum device_state old);
    /* d is about to be freed (removed at runtime or on reload). */
    void (*removed)(void *ctx, struct device *d);
};

/* Starts the registry with the devices in c (c is borrowed; devices copy what they need). */
int devices_init(uv_loop_t *loop, const struct config *c, struct outbox *ob, struct statedb *db,
                 const struct devices_hooks *hooks);
/* Applies a new config: starts new devices, stops removed ones, restarts changed ones. */
int devices_apply(const struct config *c);
/* Adds one device at runtime. 0, -EEXIST or a negative error. */
int devices_add(const struct device_conf *dc);
/* Stops and removes a device. 0 or ALIGW_ENODEVICE. */
int devices_remove(const char *key);
/* Stops every session and frees the registry; devices_release_memory() after the loop ran the
 * close callbacks. */
void devices_close(void);
void devices_release_memory(void);

struct device *devices_find(const char *key); /* key "pk/dn" */
struct device *devices_find2(const char *pk, const char *dn);
size_t devices_count(void);
size_t devices_online(void);
/*
 * At most max_sessions sessions at once (0 = no limit): what the open-file limit fd_limit leaves
 * for device sockets. A device beyond waits in back-off with last_error "too many open files".
 */
void devices_set_session_limit(size_t max_sessions, unsigned long long fd_limit);
/* The limit set above (0 = none); *fd_limit (may be NULL) gets the open-file limit. */
size_t devices_session_limit(unsigned long long *fd_limit);
/* Calls fn for every device, in configuration order. */
void devices_foreach(void (*fn)(struct device *d, void *arg), void *arg);

const char *device_key(const struct device *d);
const struct device_conf *device_conf(const struct device *d);
enum device_state device_state(const struct device *d);
/* A new Alink message id for this device (string of a uint32). */
uint32_t device_next_alink_id(struct device *d);
void device_get_counters(const struct device *d, struct device_counters *out, int *inflight);
void devices_get_totals(struct device_totals *t);
/* The status object the API returns (never contains a secret). full adds counters and errors. */
json_t *device_status_json(const struct device *d, bool full);
/* Records the platform's last error notice about d (/ext/error), shown in its status; true
 * when it differs from the one before. */
bool device_set_platform_error(struct device *d, const char *text);
/* Adds topic filter to pk/dn's subscriptions: subscribed now when online, and after every
 * reconnection. A filter already there is not added twice. Returns 0, ALIGW_ENODEVICE, -ENOMEM
 * or a session_subscribe() error. The caller checks that the filter is one of the device's. */
int devices_subscribe(const char *pk, const char *dn, const char *filter);
/* Marks an error reported by the device's southbound plugin (NULL reason clears it). */
void device_set_field_error(struct device *d, const char *reason);

/*
 * Publishes payload (a string) on topic at QoS 0 on d's session now, bypassing the outbox: for
 * what is worthless once late (a time request). 0, -ENOTCONN when d is not online, or a
 * session_publish error.
 */
int devices_publish_now(struct device *d, const char *topic, const char *payload);

/* The outbox has committed messages for key: wake its forwarder. */
void devices_outbox_ready(const char *key);

#endif
