/*
 * aligw/plugin.h — the southbound plugin ABI of aligw, the Aliyun IoT edge gateway daemon.
 *
 * A plugin is a shared object that exports exactly one symbol, a const descriptor
 *
 *     ALIGW_PLUGIN_EXPORT const struct aligw_plugin aligw_plugin = { ... };
 *
 * The daemon loads it with dlopen(RTLD_NOW | RTLD_LOCAL), checks the descriptor, then for each
 * "plugins" entry of its configuration calls create() with the entry's JSON config and the
 * devices it serves, then start(). The plugin turns field data into thing-model properties and
 * events through the host function table it received in create(), and gets property sets,
 * service calls and raw messages for its devices through its downlink entry points.
 *
 * THREADS
 *   - Every entry point of struct aligw_plugin is called on the daemon's event-loop thread, one at
 *     a time. They must not block: no device I/O, no sleeping, no waiting for a reply. Hand the
 *     work to your own thread(s) and return.
 *   - Every host function (struct aligw_host) may be called from ANY thread, including from
 *     inside the entry points, from create() until stop() has returned. They never block on the
 *     network or disk: the call is copied into a bounded queue that the loop drains. After
 *     stop() returns they fail with -ESHUTDOWN.
 *
 * LIFECYCLE   create → start → (downlinks…) → stop → destroy
 *   create   builds the instance; no thread should run yet, no device I/O needed.
 *   start    starts the plugin's threads. Failing here puts all its devices in error.
 *   stop     stops and joins every thread the plugin started. After it returns the plugin
 *            calls no host function and the host calls no downlink entry point.
 *   destroy  frees the instance. Called after stop, or after a failed create/start (then the
 *            instance is whatever create set, possibly NULL).
 *
 * DEVICES are struct aligw_device pointers owned by the host, valid from create() until
 * destroy() returns; compare them by pointer or use ->index. Pass back the exact pointer to
 * host functions (a pointer that is not one of your devices gets -ENODEV).
 *
 * OWNERSHIP  Every pointer the host passes to the plugin (strings, JSON texts, payloads) is
 * borrowed for the duration of the call only: copy what you keep. Every pointer the plugin passes
 * to a host function is borrowed for that call: the host copies it before returning. The host
 * table and the device array stay valid until destroy() returns. The descriptor and its strings
 * are the plugin's static data.
 *
 * JSON texts are UTF-8, NUL-terminated, one JSON value each (parse them with any library).
 * Floating-point values should carry a decimal point ("10.0"), as the platform requires.
 *
 * VERSIONING
 *   ALIGW_PLUGIN_ABI_MAJOR changes for any incompatible change: a field removed, moved or
 *   retyped, a semantic change. The host refuses a plugin of another major.
 *   ALIGW_PLUGIN_ABI_MINOR changes when fields are APPENDED to the end of struct aligw_plugin or
 *   struct aligw_host (never inserted). Each struct carries its own size: the host reads a
 *   plugin's descriptor only inside .size (fields beyond are treated as NULL/0) and accepts any
 *   older minor; a plugin must check host->size (or use ALIGW_HOST_HAS) before calling a host
 *   function added in a later minor than the one it needs.
 *
 *   1.0  the first version.
 *   1.1  host->post (tracked posts) with on_post_done (its completion after the SQLite commit),
 *        host->device_info (sized per-device facts); struct aligw_device is frozen (see there).
 *   1.2  on_firmware (descriptor), host->firmware_result and host->set_firmware_version,
 *        struct aligw_firmware (OTA); in process and out of process alike.
 *   1.3  the local API inside the plugin: events (descriptor: events, on_event) and requests
 *        (host->request, with on_answer). Whatever an API client on the socket sees and does
 *        for a device (docs/api.md), its plugin can: the platform's time, the device shadow,
 *        RRPC with raw payloads, remote config, and every op and event added later, with no
 *        further ABI change.
 *
 * ISOLATION  By default each plugin runs in its own process, aligw-plugin-host, which loads the
 * .so and speaks this same ABI: every call and entry point is marshalled over a socket to
 * aligwd. Nothing changes for the plugin except that (a) a crash, exit or hang takes down only
 * that process (aligwd restarts it with back-off), (b) "the loop thread" is the host process's
 * main thread, and (c) host calls validate what they can locally (device, JSON, sizes) and are
 * otherwise checked by aligwd afterwards: a tracked post reports such errors through
 * on_post_done, an untracked one in aligwd's log. With "isolation": "none" the plugin is loaded
 * into aligwd itself, as in ABI 1.0.
 *
 * ERRORS are 0 or a negative errno value (as in libuv).
 */
#ifndef ALIGW_PLUGIN_H
#define ALIGW_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ALIGW_PLUGIN_ABI_MAJOR 1
#define ALIGW_PLUGIN_ABI_MINOR 3

/* Marks the one symbol a plugin exports (build with -fvisibility=hidden). */
#define ALIGW_PLUGIN_EXPORT __attribute__((visibility("default")))

/* Log levels for aligw_host.log: the syslog priorities. */
enum aligw_log_level {
    ALIGW_LOG_ERR = 3,
    ALIGW_LOG_WARNING = 4,
    ALIGW_LOG_NOTICE = 5,
    ALIGW_LOG_INFO = 6,
    ALIGW_LOG_DEBUG = 7,
};

/* Reply codes a plugin commonly passes to aligw_host.reply (any int is allowed). */
enum aligw_reply_code {
    ALIGW_REPLY_OK = 200,
    ALIGW_REPLY_BAD_PARAMS = 460,   /* unknown property, bad value, unknown service */
    ALIGW_REPLY_DEVICE_ERROR = 500, /* the field device failed or did not answer */
};

/*
 * One device served by the plugin. Owned by the host; read-only for the plugin. This struct is
 * frozen for ABI major 1 (create() receives an array of it, so its size cannot change without
 * breaking plugins that index it): facts about a device added later appear in struct
 * aligw_device_info, read through host->device_info.
 */
struct aligw_device {
    const char *product_key;
    const char *device_name;
    size_t index; /* position in the array given to create() */
};

/* Kinds of struct aligw_post (ABI 1.1). */
enum aligw_post_kind {
    ALIGW_POST_PROPERTIES = 1, /* like post_properties: params_json, time_ms */
    ALIGW_POST_EVENT = 2,      /* like post_event: event_id, params_json (value or NULL), time_ms */
    ALIGW_POST_RAW = 3,        /* like publish_raw: topic, payload, len, qos */
};

/* One tracked post (ABI 1.1), for host->post. Zero it, set .size and the fields of its kind. */
struct aligw_post {
    uint32_t size; /* sizeof(struct aligw_post) of the plugin */
    int kind;      /* enum aligw_post_kind */
    const char *params_json;
    const char *event_id;
    const char *topic;
    const void *payload;
    size_t len;
    int qos;
    int64_t time_ms;
    uint64_t cookie; /* anything: handed back to on_post_done */
};

/* Facts about one device (ABI 1.1), filled by host->device_info up to .size. */
struct aligw_device_info {
    uint32_t size; /* set by the caller: sizeof(struct aligw_device_info) */
    const char *product_key;
    const char *device_name;
    size_t index;
    const char *key; /* "pk/dn" */
    /* Later minors append here. */
};

struct aligw_host;

/*
 * ABI 1.2: firmware to apply (see on_firmware). Every pointer is borrowed for the call. The files
 * are complete, their digests verified against the platform's, and fsynced; they are deleted
 * once the job ends (after firmware_result, or when a newer job replaces this one), so copy or
 * flash them before answering. size is sizeof(struct aligw_firmware) of the host: fields may be
 * appended in later minors.
 */
struct aligw_firmware {
    uint32_t size;
    int64_t job_id;           /* pass it back to firmware_result */
    const char *module;       /* "" = the device's default module */
    const char *version;      /* the package's version */
    const char *from_version; /* the version the host knows for the module, or "" */
    size_t n_files;           /* 1 for a single-file package */
    const char *const *paths; /* n_files paths of the downloaded files */
    const char *const *names; /* n_files names from the platform ("" when it gave none) */
    int64_t total_size;       /* bytes of all files */
    int is_diff;              /* 1: a differential package (apply it on top of from_version) */
    const char *ext_data;     /* the job's extData as JSON text, or NULL */
};

/* The host functions. Any thread; never block for long; pointers borrowed for the call. */
struct aligw_host {
    uint32_t abi_major, abi_minor;
    uint32_t size; /* sizeof(struct aligw_host) of the host: see ALIGW_HOST_HAS */

    /*
     * Posts properties of dev: params_json is an object {"identifier": value, ...} (at most 200
     * members), values either plain or {"value": v, "time": ms}. time_ms > 0 stamps every plain
     * value with that time (ms since the epoch); 0 sends no time. Returns 0 when queued (the
     * daemon then writes it to its store and forwards it), -EINVAL (bad JSON, not an object,
     * bad identifier), -E2BIG (more than 200 properties or too large), -ENODEV (not your device),
     * -EAGAIN (queue full: retry later or drop), -ESHUTDOWN (after stop), -ENOMEM.
     * 0 means queued, not stored: a crash before the commit loses it. Use host->post (1.1) to
     * learn when it is stored.
     *
     * -EAGAIN is back-pressure, never a permanent error. In process ("isolation": "none") the
     * queue between plugin threads and the loop holds at most 100,000 calls and 64 MiB of
     * payload, shared by all in-process plugins. Out of process each plugin host has its own
     * queue of 10,000 frames and 16 MiB towards aligwd; aligwd stops reading a host's socket
     * while its own queue is over three quarters full, so the host's queue fills and its calls
     * get -EAGAIN instead of memory growing anywhere.
     */
    int (*post_properties)(const struct aligw_host *host, const struct aligw_device *dev,
                           const char *params_json, int64_t time_ms);

    /* Posts event event_id of dev with params {"value": value_json, "time": time_ms}.
     * value_json is an object or NULL ({}). Errors as post_properties. */
    int (*post_event)(const struct aligw_host *host, const struct aligw_device *dev,
                      const char *event_id, const char *value_json, int64_t time_ms);

    /*
     * Answers a property set or a service call received through on_property_set /
     * on_service_call: request_id as received, code (200 = success), data_json an object
     * (service outputs) or NULL. Each request is answered once; the host remembers the topic to
     * use. Returns 0, -ENOENT (no such pending request, or already answered or expired),
     * -EINVAL, -EAGAIN, -ESHUTDOWN.
     */
    int (*reply)(const struct aligw_host *host, const struct aligw_device *dev,
                 const char *request_id, int code, const char *data_json);

    /* Publishes raw bytes on a topic of dev: one the platform lets dev publish on, with its pk
     * and dn at their fixed places (/pk/dn/user/..., /sys/pk/dn/..., /ota/device/<kind>/pk/dn,
     * /shadow/<kind>/pk/dn, /ext/<kind>/pk/dn/...; -EINVAL otherwise). qos 0 or 1. Errors as
     * post_properties. */
    int (*publish_raw)(const struct aligw_host *host, const struct aligw_device *dev,
                       const char *topic, const void *payload, size_t len, int qos);

    /*
     * Reports whether the field side of dev works (ok = 1) or not (ok = 0, reason a short text
     * such as "modbus slave 3 not answering: Connection timed out"). Shown in status; a device
     * starts ok. Report changes only. Returns 0, -ENODEV, -EAGAIN, -ESHUTDOWN.
     */
    int (*set_device_state)(const struct aligw_host *host, const struct aligw_device *dev, int ok,
                            const char *reason);

    /* Logs one line through the daemon's log, prefixed with the plugin name. */
    void (*log)(const struct aligw_host *host, int level, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

    /*
     * Asks for raw messages on topic_filter (MQTT filter, may use + and #) for dev; they arrive
     * through on_message. The filter must be one dev may subscribe to on the platform, with its
     * pk and dn at their fixed positions ('+' and '#' only as whole levels after them). The
     * device's MQTT session subscribes now if it is online, and again after every reconnection.
     * Property sets and service calls are always delivered to their own entry points without
     * subscribing. At most 64 filters per plugin. Returns 0, -EINVAL (not a topic of dev, empty,
     * longer than 512), -ENODEV, -ENOSPC (64 filters already), -EAGAIN, -ESHUTDOWN. A subscription
     * the platform refuses is logged by aligwd.
     */
    int (*subscribe)(const struct aligw_host *host, const struct aligw_device *dev,
                     const char *topic_filter);

    /* ABI 1.0 ends here. */

    /*
     * 1.1: a tracked post. post->kind says which of post_properties, post_event or publish_raw
     * it is, with the same arguments and the same immediate errors. When it returns 0, the
     * plugin's on_post_done is called exactly once with post->cookie: status 0 and seq (> 0,
     * the message's sequence in aligwd's store) once the message is committed to SQLite —
     * from then on it survives kill -9 of aligwd and a crash of the plugin — or a negative
     * status when it was not stored: -ENOSPC (store full, reject-new policy or disk full),
     * -ENODEV (the device was removed), -EINVAL (checked by aligwd: e.g. a topic not of this
     * device when running out of process), -EMSGSIZE, -EIO. If the plugin stops (or its
     * process dies) first, on_post_done is not called: treat the post as not stored. A plugin
     * without on_post_done gets -ENOTSUP. Needs host->size to cover it (ALIGW_HOST_HAS).
     */
    int (*post)(const struct aligw_host *host, const struct aligw_device *dev,
                const struct aligw_post *post);

    /* 1.1: fills info (up to info->size bytes) about dev; strings valid like dev. 0, -ENODEV,
     * -EINVAL (info NULL or info->size smaller than 1.1's fields). */
    int (*device_info)(const struct aligw_host *host, const struct aligw_device *dev,
                       struct aligw_device_info *info);

    /*
     * ABI 1.2. Answers on_firmware for job job_id of dev: step 0 = applied, version = what the
     * device runs now (NULL: the package's version); or step -1 (upgrade failed), -2 (download
     * failed), -3 (verify failed), -4 (flash failed) with desc saying why (<= 128 bytes, may be
     * NULL). The host records the version, reports it to the platform (which judges the upgrade
     * by it) and removes the files. Returns 0 when queued, -EINVAL (bad step), -ENODEV,
     * -EAGAIN, -ESHUTDOWN. An unknown or finished job is logged by the host.
     */
    int (*firmware_result)(const struct aligw_host *host, const struct aligw_device *dev,
                           int64_t job_id, int step, const char *version, const char *desc);

    /*
     * ABI 1.2. Tells the host the firmware version of dev's module (NULL or "" = default module),
     * e.g. read from the field device at start: it is reported to the platform after every login
     * and whenever it changes. version: 1-64 printable bytes. Returns 0, -EINVAL, -ENODEV,
     * -EAGAIN, -ESHUTDOWN.
     */
    int (*set_firmware_version)(const struct aligw_host *host, const struct aligw_device *dev,
                                const char *module, const char *version);

    /* ABI 1.2 ends here. */

    /*
     * ABI 1.3. Makes a local API request for dev (docs/api.md, "Requests"): request_json is one
     * request object without "id"; its "device" is set to dev (a request naming another device
     * gets -EPERM). Ops that need admin rights, "hello" and "watch" are refused (as an answer
     * with error "forbidden"). The answer — the response object an API client would get,
     * {"ok":true,"result":…} or {"ok":false,"error":{"code":…,"message":…}} — comes exactly once
     * through on_answer with this cookie, on the loop thread, possibly much later (an op with
     * "wait_reply" waits for the platform). Requires on_answer (-ENOTSUP without it). Returns 0
     * when queued, -EINVAL (not one JSON object, larger than 1 MiB), -EPERM, -ENODEV, -EAGAIN,
     * -ESHUTDOWN, -ENOMEM. If the plugin stops (or its process dies) first, the answer is lost.
     * Examples: {"op":"status"} (its "time" is the platform's time as the gateway learnt it),
     * {"op":"reply","request_id":"123","code":200,"data":{}} (answers an event's call).
     */
    int (*request)(const struct aligw_host *host, const struct aligw_device *dev,
                   const char *request_json, uint64_t cookie);

    /* ABI 1.3 ends here. Later minors append below. */
};

/* True if host provides member (appended in some minor): check before calling it. */
#define ALIGW_HOST_HAS(host, member)                                                               \
    ((host)->size >= offsetof(struct aligw_host, member) + sizeof((host)->member) &&               \
     (host)->member != NULL)

/* The descriptor. Required fields are marked; optional ones may be NULL. */
struct aligw_plugin {
    uint32_t abi_major; /* required: ALIGW_PLUGIN_ABI_MAJOR */
    uint32_t abi_minor; /* required: ALIGW_PLUGIN_ABI_MINOR */
    uint32_t size;      /* required: sizeof(struct aligw_plugin) */
    const char *name;   /* required: short name, e.g. "modbus" */
    const char *version;
    const char *description;

    /*
     * Optional: validates config_json without touching any device (aligwd --check-config).
     * Returns 0 if valid; otherwise a negative errno and a message in err (err_len bytes, NUL-
     * terminated; name the offending key). Called on the loop thread, possibly without create.
     */
    int (*check_config)(const char *config_json, char *err, size_t err_len);

    /*
     * Required: creates an instance serving devices[0..n_devices) with its config_json ("{}"
     * when the config gives none). host is valid until destroy() returns. Sets *instance and
     * returns 0, or returns a negative errno (log the reason through host->log first).
     */
    int (*create)(const struct aligw_host *host, const char *config_json,
                  const struct aligw_device *devices, size_t n_devices, void **instance);

    /* Required: starts the plugin's threads. 0 or a negative errno; on failure it must leave no
     * thread running (the host then calls destroy, not stop, and unloads the plugin). */
    int (*start)(void *instance);

    /* Required: stops and joins the plugin's threads. After it returns, no host calls. */
    void (*stop)(void *instance);

    /* Required: frees the instance (instance may be NULL after a failed create). */
    void (*destroy)(void *instance);

    /*
     * Optional: the cloud sets properties of dev. params_json is the object of identifier →
     * value. Answer later (any thread) with host->reply(request_id, ...). A NULL entry point
     * makes the host answer 460 itself. Return 0, or a negative errno to make the host answer
     * 500 (then do not reply yourself).
     */
    int (*on_property_set)(void *instance, const struct aligw_device *dev, const char *request_id,
                           const char *params_json);

    /* Optional: the cloud calls service service_id of dev; like on_property_set. */
    int (*on_service_call)(void *instance, const struct aligw_device *dev, const char *request_id,
                           const char *service_id, const char *params_json);

    /*
     * Optional: a raw message on a topic the plugin subscribed to for dev (payload not
     * NUL-terminated, borrowed for the call). Return 0; the value is reserved and ignored by
     * this version of aligwd (a negative value is only logged at debug level).
     */
    int (*on_message)(void *instance, const struct aligw_device *dev, const char *topic,
                      const void *payload, size_t len);

    /* ABI 1.0 ends here. */

    /*
     * 1.1, optional (required to use host->post): the completion of a tracked post, called once
     * per post that host->post accepted, on the loop thread (see host->post for status/seq).
     */
    void (*on_post_done)(void *instance, const struct aligw_device *dev, uint64_t cookie,
                         int status, int64_t seq);

    /*
     * ABI 1.2, optional: verified firmware for dev (see struct aligw_firmware). Start applying it
     * on your own thread and answer later with host->firmware_result (any thread); the host
     * fails the job with -4 if no answer comes within ota.apply_timeout_s. Return 0 when taken,
     * or a negative errno to refuse it (the job fails with -4). A NULL entry point (or a plugin
     * built for ABI 1.0) leaves the firmware to API clients ("ota" watch events).
     */
    int (*on_firmware)(void *instance, const struct aligw_device *dev,
                       const struct aligw_firmware *fw);

    /* ABI 1.2 ends here. */

    /*
     * ABI 1.3, optional: the API event kinds (docs/api.md, "Events": "state", "service_call",
     * "property_set", "message", "reply", "ota", and the kinds later versions add) this plugin
     * wants for its devices through on_event: a NULL-terminated array of names, static data.
     * Unknown or malformed names are logged and skipped. A listed kind comes only as events: with
     * "property_set" listed, on_property_set is not called (likewise "service_call" and
     * on_service_call). RRPC requests with a raw payload (service "rrpc") come only as
     * "service_call" events.
     */
    const char *const *events;

    /*
     * ABI 1.3, optional (required with events): one event for dev, as the JSON object an API
     * watcher would get (borrowed for the call). A call carried by an event (a service_call,
     * say) counts as handed to a handler: answer it with host->request {"op":"reply",…} before
     * api.service_timeout_ms, or the host answers the platform with an error.
     */
    void (*on_event)(void *instance, const struct aligw_device *dev, const char *event_json);

    /* ABI 1.3, optional (required to use host->request): the answer to host->request (see
     * there), borrowed for the call. */
    void (*on_answer)(void *instance, const struct aligw_device *dev, uint64_t cookie,
                      const char *answer_json);

    /* ABI 1.3 ends here. Later minors append below. */
};

#ifdef __cplusplus
}
#endif

#endif
