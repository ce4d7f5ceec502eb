/*
 * metrics: the opt-in Prometheus endpoint. With metrics.listen set, GET /metrics answers in the
 * Prometheus text format (version 0.0.4) on a TCP address or a Unix socket: the gateway's series
 * (devices by state, session and message counters, the outbox, the local API, the plugin host),
 * the standard process_* series and, with metrics.per_device, series per device labelled
 * product_key and device_name. The HTTP side is libmicrohttpd in its external epoll mode, driven
 * from the loop (one uv_poll on its epoll descriptor and one timer), so every scrape reads the
 * daemon's state on the loop thread and needs no lock. Loop thread only.
 */
#ifndef ALIGW_METRICS_H
#define ALIGW_METRICS_H

#include <stddef.h>

#include <uv.h>

#include "config.h"

struct outbox;

/*
 * Starts serving cfg->metrics.listen (nothing when it is NULL). cfg is read at every scrape
 * (metrics_apply_config() hands over a reloaded one); ob is borrowed until metrics_close().
 * Returns 0, or a negative errno when the address cannot be bound (logged).
 */
int metrics_start(uv_loop_t *loop, const struct config *cfg, struct outbox *ob);
/* A reloaded configuration is in force (per_device applies at the next scrape). */
void metrics_apply_config(const struct config *cfg);
/* Stops listening and closes the handles (the loop runs their close callbacks). */
void metrics_close(void);

/*
 * The text of one scrape into a malloc'd buffer (*out, *len; the caller frees it). For the
 * endpoint and for tests. Returns 0 or -ENOMEM.
 */
int metrics_render(char **out, size_t *len);

#endif
