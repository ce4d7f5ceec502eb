/*
 * shadow: the device shadow of each device (reference/aliyun-protocol.md §3.6). The platform's
 * shadow replies on /shadow/get/pk/dn carry no request id, so each device's shadow requests go
 * out one at a time, in order: a get, an update of reported values, or the clearing of desired
 * values; the next is sent when the reply comes (or after SHADOW_TIMEOUT_MS). The shadow's
 * version is tracked per device from every reply and control push. An update without a version
 * takes the known version + 1; when none is known a get goes first; a version conflict (409)
 * answered with the current version is retried once with that version + 1 when the version was
 * aligw's choice, and reported to the caller when it was the caller's. "control" pushes (desired
 * values set in the cloud) become "shadow" events for the device's owner. Loop thread only.
 */
#ifndef ALIGW_SHADOW_H
#define ALIGW_SHADOW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

#define SHADOW_TIMEOUT_MS 10000

enum shadow_op { SHADOW_GET, SHADOW_UPDATE, SHADOW_CLEAR_DESIRED };

struct shadow_hooks {
    void *ctx;
    /* Queues an uplink for device key "pk/dn" (QoS 1). 0 or a negative error. */
    int (*uplink)(void *ctx, const char *key, const char *topic, const char *payload, size_t len);
    /* Sends a "shadow" event (borrowed) for key; returns how many took it. */
    int (*event)(void *ctx, const char *key, json_t *ev);
};

/*
 * The end of a request: status 0 with result (borrowed: {"version":N} and, for a get,
 * "reported", "desired", "timestamp"), or a negative errno with error text: -EREMOTE (the
 * platform answered an error: its code and message in the text; 409 is a version conflict),
 * -ETIMEDOUT, -ENODEV (device removed), -ECANCELED (stopping), -ENOMEM.
 */
typedef void (*shadow_done_fn)(void *arg, int status, const char *error, json_t *result);

void shadow_init(uv_loop_t *loop, const struct shadow_hooks *hooks);
void shadow_close(void);

/* Queues op for pk/dn; reported (borrowed) for SHADOW_UPDATE; version < 0 = aligw's choice.
 * done is called exactly once. 0 or -ENOMEM / -EINVAL. */
int shadow_request(const char *pk, const char *dn, enum shadow_op op, const json_t *reported,
                   int64_t version, shadow_done_fn done, void *arg);
/* A message on /shadow/get/pk/dn (untrusted). */
void shadow_on_message(const char *pk, const char *dn, const void *payload, size_t len);
/* The last shadow version seen for pk/dn, or -1. */
int64_t shadow_version(const char *pk, const char *dn);
void shadow_device_removed(const char *pk, const char *dn);

#endif
