/*
 * plugins: loads southbound plugins (include/aligw/plugin.h) and is their host. It owns the
 * plugin instances (in process) or their supervised aligw-plugin-host processes (out of
 * process, the default), the device handles handed to them, the table of requests (property
 * sets, service calls) waiting for a plugin's reply, and the bounded queue through which plugin
 * calls reach the loop: a host call builds its topic and Alink payload (alink is pure), copies
 * it into the queue under a mutex and wakes the loop with one uv_async_t; the loop drains the
 * whole queue into the daemon's sink. An out-of-process plugin's calls arrive as frames on its
 * socket (plugin_wire.h) and go through the same functions on the loop thread; its downlinks
 * and post completions go back as frames. A host process that crashes, exits or stops
 * answering heartbeats is restarted with back-off and its devices show "plugin-down: <reason>";
 * one that fails before its start() returned max_start_failures times in a row is parked. A
 * plugin that fails to load, create or start in process puts its devices into the error state;
 * the daemon runs on.
 *
 * Everything here except the in-process host functions runs on the loop thread.
 */
#ifndef ALIGW_PLUGINS_H
#define ALIGW_PLUGINS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "config.h"

/* Where the daemon's messages from plugins go. Called on the loop thread only. */
struct plugins_sink {
    void *ctx;
    /* An uplink ready to queue (topic and payload built by alink, borrowed for the call).
     * Returns 0 and then calls done(arg, status, seq) exactly once after the store's commit
     * (done may be NULL), or returns a negative error without calling it. */
    int (*uplink)(void *ctx, const char *pk, const char *dn, const char *topic, const char *payload,
                  size_t len, int qos, void (*done)(void *arg, int status, int64_t seq), void *arg);
    /* The field side of pk/dn works (ok = 1) or not (ok = 0, reason says why). */
    void (*device_state)(void *ctx, const char *pk, const char *dn, int ok, const char *reason);
    /* Optional (NULL: plugins get -ENOTSUP): subscribe pk/dn's session to topic_filter, so that
     * messages on it reach plugins_message(). */
    int (*subscribe)(void *ctx, const char *pk, const char *dn, const char *topic_filter);
    /* Optional (ABI 1.2): a plugin's answer to on_firmware (see aligw_host.firmware_result). */
    void (*firmware_result)(void *ctx, const char *pk, const char *dn, int64_t job_id, int step,
                            const char *version, const char *desc);
    /* Optional (ABI 1.2): a plugin set the firmware version of pk/dn's module. */
    void (*firmware_version)(void *ctx, const char *pk, const char *dn, const char *module,
                             const char *version);
    /* Optional (ABI 1.3; NULL: answered "out of memory"): a plugin's local API request for pk/dn
     * (json, checked by plugin_request_prepare, borrowed for the call). The sink calls
     * done(arg, line, n) exactly once with the response line, now or later. */
    void (*request)(void *ctx, const char *pk, const char *dn, const char *json, size_t len,
                    void (*done)(void *arg, const char *line, size_t n), void *arg);
};

struct plugins_opts {
    size_t queue_max;       /* queued host calls, all plugins (default 100000) */
    size_t queue_max_bytes; /* bytes of queued payloads (default 64 MiB) */
    size_t pending_max;     /* unanswered requests per plugin, oldest evicted (default 1024) */
    bool ack;               /* sys.ack in posts (default true: the cloud replies) */
    const char *host_path;  /* aligw-plugin-host (NULL: next to the running aligwd, else the
                               installed one); borrowed until plugins_close */
    char *const *forbid;    /* paths out-of-process plugins must not reach (state dir, outbox
                               dir, runtime dir); borrowed for plugins_init, copied */
    size_t n_forbid;
    const char *firmware_dir; /* beneath a forbidden path, readable by out-of-process plugins
                                 (the OTA files on_firmware names); NULL: none. Copied */
};

/* Counters, for status. */
struct plugins_stats {
    unsigned long long queued, delivered, rejected_full, sink_errors;
    unsigned long long restarts; /* plugin hosts restarted after a crash, exit or hang */
};

struct plugins;

/*
 * Creates the host on loop (nothing loaded yet). sink is copied; opts may be NULL (defaults).
 * Returns 0 and sets *out, or -ENOMEM / a uv error.
 */
int plugins_init(struct plugins **out, uv_loop_t *loop, const struct plugins_sink *sink,
                 const struct plugins_opts *opts);

/*
 * Loads, creates and starts one plugin per entry of confs[0..n) (borrowed for the call; the
 * host copies what it keeps). The .so is conf->path (the config resolves a bare name, see
 * docs/plugins.md), else conf->name when it contains '/'. An entry that fails is logged with
 * the file named, and each of its devices gets
 * sink->device_state(ok = 0, reason); the others go on. Returns the number of entries that
 * failed (0 = all running), or -ENOMEM.
 */
int plugins_start(struct plugins *ps, const struct plugin_conf *confs, size_t n);

/* True if a plugin (running or failed) serves pk/dn. */
bool plugins_serves(const struct plugins *ps, const char *pk, const char *dn);

/*
 * Downlinks, routed to the plugin serving pk/dn; all strings borrowed for the call.
 * The plugin's entry point runs on the loop thread and must not block. The host answers by
 * itself (through sink->uplink) when the plugin has no entry point (460), returned an error
 * (500) or is not running (500). Return 0 when handled (answered or handed to the plugin),
 * -ENODEV when no plugin serves pk/dn (nothing is answered: the caller decides), -EINVAL for a
 * bad request id or service id.
 * params_json is the Alink "params" as JSON text.
 */
int plugins_property_set(struct plugins *ps, const char *pk, const char *dn, const char *req_id,
                         const char *params_json);
/* rrpc_id: set when the call came as /ext/rrpc/<id>/... (the reply goes to that topic, QoS 0);
 * NULL or "" otherwise. */
int plugins_service_call(struct plugins *ps, const char *pk, const char *dn, const char *req_id,
                         const char *service_id, const char *rrpc_id, const char *params_json);
/* A raw message: delivered if the plugin subscribed a filter matching topic for pk/dn.
 * Returns 0 if delivered, -ENOENT if no plugin asked for it, -ENODEV if no plugin serves pk/dn. */
int plugins_message(struct plugins *ps, const char *pk, const char *dn, const char *topic,
                    const void *payload, size_t len);

/*
 * ABI 1.3: an API event (event_json, the object a watcher gets, borrowed) of kind (its "event"
 * name) for pk/dn, to the plugin serving it if that plugin asked for the kind. Returns 0 when
 * delivered, -ENOENT (not asked for, or its plugin not running), -ENODEV (no plugin serves
 * pk/dn). plugins_wants_event says beforehand, so the caller can skip building the text.
 */
bool plugins_wants_event(const struct plugins *ps, const char *pk, const char *dn,
                         const char *kind);
int plugins_event(struct plugins *ps, const char *pk, const char *dn, const char *kind,
                  const char *event_json);

struct aligw_firmware;
/*
 * Hands verified firmware to the plugin serving pk/dn (fw borrowed for the call). Returns 0 when
 * the plugin took it, -ENODEV (no running plugin serves pk/dn), -ENOTSUP (its plugin has no
 * on_firmware: ABI 1.0 or not implemented), or the plugin's negative errno.
 */
int plugins_firmware(struct plugins *ps, const char *pk, const char *dn,
                     const struct aligw_firmware *fw);

/*
 * Stops every plugin (stop, then destroy), delivers what they queued before stopping, then
 * dlcloses them. Idempotent. After it, host calls return -ESHUTDOWN.
 */
void plugins_stop(struct plugins *ps);

/* Stops if needed and frees ps once its uv handle is closed (run the loop to finish). */
void plugins_close(struct plugins *ps);

void plugins_get_stats(const struct plugins *ps, struct plugins_stats *st);

/* One object per plugin entry: name, isolation, state ("running", "starting", "restarting",
 * "parked", "failed", "stopped"), pid, restarts, last_error. A new reference. */
json_t *plugins_status(const struct plugins *ps);

/*
 * --check-config: loads the plugin of conf (same checks as plugins_start) and runs its
 * check_config on conf->config, then unloads it. Returns 0, or a negative error with a message
 * naming the file or the key in err.
 */
int plugins_check_config(const struct plugin_conf *conf, char *err, size_t err_len);

#endif
