/*
 * ipc_request: the local API's wire grammar, without any I/O. It owns three things: the line
 * framer (newline-delimited requests, a line longer than the limit refused without buffering it
 * whole), the request parser (one JSON object per line, validated field by field through a table
 * per op into a typed struct ipc_request) and the error vocabulary (stable machine codes such as
 * "bad_request" with a message naming the field). It is pure so the fuzz target and the unit
 * tests exercise exactly what the daemon runs; ipc.c adds the socket around it.
 */
#ifndef ALIGW_IPC_REQUEST_H
#define ALIGW_IPC_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#define IPC_PROTOCOL_VERSION 1

/* Field limits; the platform's where it has one (see reference/aliyun-protocol.md §4). */
#define IPC_PK_MAX 32     /* productKey: letters, digits, '_' and '-' */
#define IPC_DN_MAX 64     /* deviceName: letters, digits and "_-@.:" */
#define IPC_TOPIC_MAX 127 /* bytes; the LinkSDK refuses 128 and more */
#define IPC_IDENT_MAX 64  /* thing-model identifiers (property, event) */
#define IPC_MSGID_MAX 64  /* ids of downlink requests answered by "reply" */
#define IPC_ID_MAX 128    /* a client's own request id when it is a string */
#define IPC_PROPS_MAX 200 /* properties in one post: the platform answers 6106 beyond */
#define IPC_BATCH_VALUES_MAX                                                                       \
    500 /* timed values per identifier in post_batch, records in post_history */
#define IPC_SHADOW_KEYS_MAX 128 /* reported values in one shadow update (the platform's 408) */
#define IPC_TAGS_MAX 100        /* tags in one tags_update or tags_delete */
#define IPC_WATCH_DEVICES_MAX 10000
#define IPC_WATCH_TOPICS_MAX 64
#define IPC_DEFAULT_MAX_PAYLOAD (256 * 1024)
#define IPC_DEFAULT_MAX_LINE (1536 * 1024)

enum ipc_op {
    IPC_OP_HELLO,
    IPC_OP_PUBLISH,
    IPC_OP_POST_PROPERTIES,
    IPC_OP_POST_EVENT,
    IPC_OP_REPLY,
    IPC_OP_WATCH,
    IPC_OP_DEVICES,
    IPC_OP_DEVICE,
    IPC_OP_ADD_DEVICE,
    IPC_OP_REMOVE_DEVICE,
    IPC_OP_STATS,
    IPC_OP_RELOAD,
    IPC_OP_STATUS,
    IPC_OP_OTA,                  /* list OTA jobs and firmware versions */
    IPC_OP_OTA_RESULT,           /* an API client applied (or failed to apply) a firmware */
    IPC_OP_OTA_VERSION,          /* set a device module's firmware version */
    IPC_OP_OTA_CHECK,            /* ask the platform for a pending upgrade (firmware/get) */
    IPC_OP_POST_BATCH,           /* several timed values per property and event in one message */
    IPC_OP_POST_HISTORY,         /* values recorded while offline, flagged as history */
    IPC_OP_CONFIG_GET,           /* the product's remote configuration: asked, fetched, verified */
    IPC_OP_SHADOW_GET,           /* the device shadow: its document and version */
    IPC_OP_SHADOW_UPDATE,        /* report values to the shadow (with a version) */
    IPC_OP_SHADOW_CLEAR_DESIRED, /* clear the shadow's desired values */
    IPC_OP_DESIRED_GET,          /* thing.property.desired.get */
    IPC_OP_DESIRED_DELETE,       /* thing.property.desired.delete */
    IPC_OP_TAGS_UPDATE,          /* thing.deviceinfo.update */
    IPC_OP_TAGS_DELETE,          /* thing.deviceinfo.delete */
    IPC_OP_COUNT_
};

/* Stable machine codes, sent as strings ("bad_json"...). Never renumber: add at the end. */
enum ipc_err {
    IPC_ERR_BAD_JSON,
    IPC_ERR_BAD_REQUEST,
    IPC_ERR_UNKNOWN_OP,
    IPC_ERR_LINE_TOO_LONG,
    IPC_ERR_PAYLOAD_TOO_LARGE,
    IPC_ERR_NO_DEVICE,
    IPC_ERR_FORBIDDEN,
    IPC_ERR_STORE_FULL,
    IPC_ERR_UNAVAILABLE,
    IPC_ERR_TIMEOUT,
    IPC_ERR_INTERNAL,
    IPC_ERR_REFUSED, /* the platform answered with an error code (the message carries it) */
    IPC_ERR_EXISTS,  /* add_device: already configured */
    IPC_ERR_BUSY,    /* the daemon is shutting down or overloaded */
    IPC_ERR_COUNT_
};

/* Watch event kinds, a bit mask in struct ipc_watch_filter. */
enum ipc_event_kind {
    IPC_EV_MESSAGE = 1u << 0,      /* any downlink message on a subscribed topic */
    IPC_EV_PROPERTY_SET = 1u << 1, /* thing.service.property.set, parsed */
    IPC_EV_SERVICE_CALL = 1u << 2, /* thing.service.<id> (async or RRPC), parsed */
    IPC_EV_STATE = 1u << 3,        /* a device's session state changed */
    IPC_EV_REPLY = 1u << 4,        /* the platform's _reply to an uplink */
    IPC_EV_OTA = 1u << 5,          /* an OTA job changed state, or firmware is ready to apply */
    IPC_EV_CONFIG = 1u << 6,       /* a remote configuration file was fetched and verified */
    IPC_EV_SHADOW = 1u << 7,       /* the shadow's desired values changed in the cloud (control) */
    IPC_EV_ALL_ = (1u << 8) - 1
};

/* "pk/dn" split and joined; all three NUL-terminated. */
struct ipc_device_key {
    char pk[IPC_PK_MAX + 1];
    char dn[IPC_DN_MAX + 1];
    char key[IPC_PK_MAX + IPC_DN_MAX + 2];
};

struct ipc_watch_filter {
    bool all_devices; /* "devices" absent or "*" */
    char **devices;   /* sorted "pk/dn" keys, owned */
    size_t n_devices;
    char **topics; /* MQTT patterns (+, #), owned; none = every topic */
    size_t n_topics;
    unsigned kinds; /* enum ipc_event_kind bits; absent = all */
};

/*
 * One validated request. Everything it points to is owned by it and released by
 * ipc_request_free(); json_t members hold their own reference (incref to keep one longer).
 */
struct ipc_request {
    enum ipc_op op;
    json_t *id;                /* integer or string; never NULL after a successful parse */
    struct ipc_device_key dev; /* publish, post_*, reply, device, remove_device */
    union {
        struct {
            char *client; /* optional client name, may be NULL */
        } hello;
        struct {
            char *topic;
            unsigned char *payload; /* decoded bytes, NUL-terminated for convenience */
            size_t payload_len;
            int qos; /* 0 or 1; default 1 */
        } publish;
        struct {
            json_t *params;    /* object: {"prop": value | {"value":v,"time":ms}} */
            int64_t timestamp; /* ms, 0 = none (post_properties: applied to plain values) */
            bool ack;          /* sys.ack; default true */
            bool wait_reply;   /* answer only when the platform's _reply arrives */
            char event[IPC_IDENT_MAX + 1]; /* post_event: the event identifier; else "" */
            json_t *events; /* post_batch, post_history: the events (params: the properties) */
        } post;             /* post_properties, post_event, post_batch, post_history */
        struct {
            char msg_id[IPC_MSGID_MAX + 1]; /* the downlink request's id */
            int code;                       /* 200 = success */
            json_t *data;                   /* object, may be NULL */
            char *message;                  /* optional, may be NULL */
            unsigned char *payload;         /* payload_b64 decoded: raw bytes for an RRPC request */
            size_t payload_len;
        } reply;
        struct ipc_watch_filter watch;
        struct {
            json_t *device; /* object, validated by config_device_from_json() */
        } add;
        struct {
            char *state; /* devices: optional filter by state name, may be NULL */
        } devices;
        struct {
            int64_t job;      /* ota_result: the job id from the "ota" event (required) */
            int step;         /* ota_result: 0 = applied, -1..-4 = failed (the platform's steps) */
            char module[65];  /* ota_version, ota_check: "" = the default module */
            char version[65]; /* ota_result: the version now running; ota_version: required */
            char *desc;       /* ota_result: why it failed (<= 128 bytes), may be NULL */
        } ota; /* ota (dev.key "" = every device), ota_result, ota_version, ota_check */
        struct {
            /* shadow_update: the reported values (object); desired_get: identifiers (array);
             * desired_delete: {"id": {"version": n} | {}} (object); tags_update: the platform's
             * [{"attrKey","attrValue"}]; tags_delete: [{"attrKey"}] (built from the request) */
            json_t *body;
            int64_t version; /* shadow_update, shadow_clear_desired: -1 = aligw's choice */
        } thing;
    } u;
};

/* What a failed parse reports. id is the request's id when it could be read, else NULL. */
struct ipc_error {
    enum ipc_err code;
    json_t *id; /* owned reference or NULL */
    char message[256];
};

struct ipc_limits {
    size_t max_payload; /* bytes; 0 = IPC_DEFAULT_MAX_PAYLOAD */
    int64_t now_ms;     /* wall clock for the "24 h in the future" check; 0 = skip it */
};

/*
 * Parses one line (no newline, not NUL-terminated). Returns 0 and fills *req (free with
 * ipc_request_free), or -EINVAL with *err filled (free with ipc_error_free): bad_json,
 * bad_request (the message names the field), unknown_op or payload_too_large. On failure *req
 * holds nothing to free.
 */
int ipc_request_parse(const char *line, size_t len, const struct ipc_limits *lim,
                      struct ipc_request *req, struct ipc_error *err);
void ipc_request_free(struct ipc_request *req);
void ipc_error_free(struct ipc_error *err);

/* True for ops that need admin rights when admin_users/admin_groups are set. */
bool ipc_op_is_admin(enum ipc_op op);
/*
 * A request made for one device (a plugin's): when root's op takes a "device", sets it to
 * device_key if absent; a "device" naming another device is -EPERM. -ENOMEM. Ops without a
 * device field are left as they are.
 */
int ipc_request_bind_device(json_t *root, const char *device_key);
const char *ipc_op_name(enum ipc_op op);
const char *ipc_err_name(enum ipc_err code);
/* Maps 0/negative errno/ALIGW_E* to the closest code (ALIGW_ENODEVICE -> no_device...). */
enum ipc_err ipc_err_from_errno(int err);
const char *ipc_event_kind_name(enum ipc_event_kind kind);

/* Splits and validates "pk/dn". Returns 0 or -EINVAL with a reason in why (static text). */
int ipc_device_key_parse(const char *s, struct ipc_device_key *out, const char **why);
/* MQTT topic filter match: '+' one level, '#' the rest (also the parent level). */
bool ipc_topic_match(const char *pattern, const char *topic);
/* True when the filter lets an event of this kind, device and topic (may be NULL) through. */
bool ipc_watch_matches(const struct ipc_watch_filter *f, unsigned kind, const char *device_key,
                       const char *topic);

/*
 * Builds a response line: {"id":…,"ok":true,"result":…} (result stolen; NULL = {}) or
 * {"id":…,"ok":false,"error":{"code":…,"message":…}}, each ending in '\n'. id is borrowed and
 * may be NULL (sent as null). Return a malloc'd string (length in *len) or NULL on ENOMEM.
 */
char *ipc_response_ok(json_t *id, json_t *result, size_t *len);
char *ipc_response_error(json_t *id, enum ipc_err code, const char *message, size_t *len);

/*
 * Best effort: the id of a request of which only the first bytes are known (a line that was too
 * long). Recognises {"id": <integer or short string> as the first member. New reference or NULL.
 */
json_t *ipc_request_peek_id(const char *head, size_t len);

/*
 * The line framer. Feed it bytes as they arrive; it calls cb once per complete line (without the
 * newline and a trailing '\r'; blank lines skipped). A line that grows past max_line is not kept:
 * its first bytes are remembered, the rest discarded up to the next newline, and cb is called
 * with too_long = true and line/len = those first bytes. Memory held: at most max_line bytes.
 */
#define IPC_FRAMER_HEAD 96
typedef void (*ipc_line_cb)(void *ctx, const char *line, size_t len, bool too_long);

struct ipc_framer {
    char *buf; /* the partial line */
    size_t len, cap, max_line;
    bool discarding;
    char head[IPC_FRAMER_HEAD];
    size_t head_len;
};

void ipc_framer_init(struct ipc_framer *f, size_t max_line);
/* Returns 0, or -ENOMEM (the partial line is then dropped as if too long). */
int ipc_framer_feed(struct ipc_framer *f, const char *data, size_t n, ipc_line_cb cb, void *ctx);
void ipc_framer_free(struct ipc_framer *f);

#endif
