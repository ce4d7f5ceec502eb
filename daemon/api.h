/*
 * api: what the daemon does with requests and where messages go. It owns the routing between
 * the parts: local API requests (ipc) become outbox appends, registry queries and management
 * actions; plugin uplinks become outbox appends; downlinks from the registry are classified
 * (alink) and handed to the plugin serving the device and to API watchers; the platform's
 * _reply to a post is matched by id to the requester waiting for it; a property set or service
 * call nobody answers in time is answered with an error. Loop thread only.
 */
#ifndef ALIGW_API_H
#define ALIGW_API_H

#include <uv.h>

#include "config.h"

struct outbox;
struct statedb;

/*
 * The API's "reload" op: reloads the configuration file; 0 or -EINVAL (errors were logged). The
 * changed keys that need a restart are named in restart ("" when none), len bytes.
 */
typedef int (*api_reload_fn)(char *restart, size_t len);

/* Starts the device registry (with the runtime-added devices from db), plugins and the socket. */
int api_start(uv_loop_t *loop, const struct config *cfg, struct outbox *ob, struct statedb *db,
              api_reload_fn reload);
/* A reloaded config is in force (cfg stays valid until the next call or api_close). */
void api_apply_config(const struct config *cfg);
/* Stops plugins and closes the socket; pending requests are answered "unavailable". */
void api_close(void);

struct ipc_stats;
struct plugins_stats;
/* The local API's and the plugin host's counters (zeros before api_start). */
void api_get_stats(struct ipc_stats *is, struct plugins_stats *ps);

#endif
