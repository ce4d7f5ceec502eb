/*
 * hub_services: the shadow, desired properties and tags documents of the hub (see the .c).
 */
#ifndef ALIGW_HUB_SERVICES_H
#define ALIGW_HUB_SERVICES_H

#include <jansson.h>

/* Sends payload on topic (QoS 0) for the hub; ctx is the caller's. */
typedef void (*hub_send_fn)(void *ctx, const char *topic, const char *payload);

/* A device's publish: 1 when it was one of ours (answered through send), else 0. */
int hub_services_message(const char *pk, const char *dn, const char *topic, const void *payload,
                         int len, hub_send_fn send, void *ctx);
/* hub/ctl/shadow_desired, hub/ctl/desired_set, hub/ctl/services from the cloud user: send
 * answers the cloud, to_device (with device_ctx(pk, dn)) reaches the device. */
void hub_services_control(const char *topic, json_t *req, hub_send_fn send, void *ctx,
                          hub_send_fn to_device, void *(*device_ctx)(const char *, const char *));

#endif
