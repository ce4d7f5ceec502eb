/*
 * alink: the Alibaba thing model on the wire. Builds the topics and Alink JSON envelopes a device
 * sends (property post, event post, service and property-set replies), classifies the topics the
 * cloud sends to a device, parses their payloads, and lists the system topics a device
 * subscribes to. Pure functions with no state and no I/O: they are safe on any thread (plugins
 * build their uplinks on their own threads) and are unit-tested in isolation.
 *
 * Every function that returns text returns heap memory the caller frees with free() (or
 * alink_msg_free()). Untrusted input (downlink topics and payloads) gets an error with a reason,
 * never a crash.
 */
#ifndef ALIGW_ALINK_H
#define ALIGW_ALINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

/* Platform limit: properties in one post (cloud answers code 6106 above it). */
#define ALINK_MAX_PROPERTIES 200
/* Longest identifier (property, event, service) we accept; TSL identifiers are ≤ 50 chars. */
#define ALINK_MAX_IDENT 64
/* jansson dump flags for every payload we build: compact, reals keep a decimal point (10.0)
 * and print without binary noise (23.6, not 23.600000000000001). */
#define ALINK_DUMP_FLAGS (JSON_COMPACT | JSON_REAL_PRECISION(16))

/* One uplink ready to queue: both strings are owned by the struct. */
struct alink_msg {
    char *topic;
    char *payload;
    size_t len; /* strlen(payload) */
};

void alink_msg_free(struct alink_msg *m);

/*
 * Property post on /sys/pk/dn/thing/event/property/post. params is an object of
 * identifier → value (borrowed). With time_ms > 0 every plain value is wrapped as
 * {"value":v,"time":time_ms}; values that already are {"value":…,"time":…} objects are kept.
 * ack selects sys.ack (1: the cloud replies on post_reply). id is the message id (the caller
 * keeps the counter). Returns 0, -EINVAL (params not an object, empty, or a bad identifier) or
 * -E2BIG (more than ALINK_MAX_PROPERTIES), -ENOMEM.
 */
int alink_property_post(const char *pk, const char *dn, uint32_t id, const json_t *params,
                        int64_t time_ms, bool ack, struct alink_msg *out);

/*
 * Event post on /sys/pk/dn/thing/event/${event_id}/post with params {"value":value,"time":ms}
 * (time omitted when time_ms <= 0). value is an object (borrowed; NULL means {}).
 * Returns 0, -EINVAL (bad event id or value not an object), -ENOMEM.
 */
int alink_event_post(const char *pk, const char *dn, uint32_t id, const char *event_id,
                     const json_t *value, int64_t time_ms, bool ack, struct alink_msg *out);

/*
 * Batch post on /sys/pk/dn/thing/event/property/batch/post: params {"properties": props,
 * "events": events}, each (borrowed, either may be NULL but not both) an object of identifier →
 * [{"value":…,"time":ms}, …] (checked by the caller: ipc_request). Its reply comes on
 * …/batch/post_reply with the same id. Returns 0, -EINVAL, -ENOMEM.
 */
int alink_batch_post(const char *pk, const char *dn, uint32_t id, const json_t *props,
                     const json_t *events, bool ack, struct alink_msg *out);

/*
 * History post (values recorded while offline) on /sys/pk/dn/thing/event/property/history/post:
 * params [{"identity":{"productKey":pk,"deviceName":dn},"properties":props,"events":events}],
 * props and events (borrowed, either may be NULL but not both) arrays of records
 * {identifier: {"value":…,"time":ms}}. Reply on …/history/post_reply. 0, -EINVAL, -ENOMEM.
 */
int alink_history_post(const char *pk, const char *dn, uint32_t id, const json_t *props,
                       const json_t *events, bool ack, struct alink_msg *out);

/*
 * Reply to a service call: topic /sys/pk/dn/thing/service/${service_id}_reply, or with rrpc_id
 * (the call came on /ext/rrpc/${rrpc_id}/sys/pk/dn/thing/service/${service_id}) that same topic.
 * req_id is the call's id echoed back (any string ≤ 20 digits); data (borrowed, NULL = {}) the
 * service's outputs. Payload {"id":…,"code":…,"data":…,"message":…,"version":"1.0"}; message
 * may be NULL ("success" for 200, omitted otherwise). Returns 0, -EINVAL, -ENOMEM.
 */
int alink_service_reply(const char *pk, const char *dn, const char *service_id, const char *rrpc_id,
                        const char *req_id, int code, const json_t *data, const char *message,
                        struct alink_msg *out);

/* Reply to a property set on /sys/pk/dn/thing/service/property/set_reply. As above. */
int alink_property_set_reply(const char *pk, const char *dn, const char *req_id, int code,
                             const json_t *data, const char *message, struct alink_msg *out);

/* Answer to a configuration push: /sys/pk/dn/thing/config/push_reply, data {}. As above. */
int alink_config_push_reply(const char *pk, const char *dn, const char *req_id, int code,
                            const char *message, struct alink_msg *out);
/* thing.config.get for the product's file configuration on /sys/pk/dn/thing/config/get. */
int alink_config_get(const char *pk, const char *dn, uint32_t id, struct alink_msg *out);

/*
 * Answer to a synchronous call: on /sys/pk/dn/rrpc/response/${rrpc_id} for a call on
 * /sys/pk/dn/rrpc/request/${rrpc_id}, or, for the custom form (custom = "user/…", the call came
 * on /ext/rrpc/${rrpc_id}//pk/dn/user/…), on that same topic. Sent at QoS 0. The payload is raw
 * (raw_len bytes, when raw is not NULL: the form carries bytes, not Alink JSON) or data as JSON
 * (borrowed; NULL = {}). Returns 0, -EINVAL (bad segment or custom topic), -ENOMEM.
 */
int alink_rrpc_response(const char *pk, const char *dn, const char *rrpc_id, const char *custom,
                        const json_t *data, const void *raw, size_t raw_len, struct alink_msg *out);

/*
 * A thing-model request on /sys/pk/dn/thing/${path} ("property/desired/get", "deviceinfo/update",
 * …) with method "thing.${path with dots}", params borrowed (object or array), sys.ack 1: the
 * platform answers on ${path}_reply. Returns 0, -EINVAL (bad segment or path), -ENOMEM.
 */
int alink_thing_request(const char *pk, const char *dn, uint32_t id, const char *path,
                        const json_t *params, struct alink_msg *out);

/*
 * The device shadow's uplinks on /shadow/update/pk/dn: {"method":"get"} (reported NULL and
 * get true), {"method":"update","state":{"reported":…},"version":N}, or with reported NULL and
 * get false the clearing of desired: {"method":"update","state":{"desired":"null"},"version":N}.
 */
int alink_shadow_request(const char *pk, const char *dn, bool get, const json_t *reported,
                         int64_t version, struct alink_msg *out);

/* A message on /shadow/get/pk/dn, parsed. */
struct alink_shadow {
    bool control;      /* "control" (the cloud's desired state), else "reply" */
    bool ok;           /* reply: status "success" */
    int errorcode;     /* reply with status "error": content.errorcode (0 if unreadable) */
    char message[128]; /* …and content.errormessage */
    int64_t version;   /* -1 when absent */
    int64_t timestamp; /* 0 when absent */
    json_t *state;     /* payload.state (desired/reported), borrowed from root; may be NULL */
    json_t *root;      /* owned: free with alink_shadow_free */
};
/* 0, or -EINVAL with a reason in err (not JSON, no or unknown method, no payload). */
int alink_shadow_parse(const void *payload, size_t len, struct alink_shadow *out, char *err,
                       size_t errlen);
void alink_shadow_free(struct alink_shadow *s);

/* What a downlink topic is, for one device. */
enum alink_kind {
    ALINK_OTHER = 0,    /* for this device but not understood here */
    ALINK_PROPERTY_SET, /* /sys/pk/dn/thing/service/property/set */
    ALINK_SERVICE_CALL, /* /sys/pk/dn/thing/service/${name}; rrpc_id set for /ext/rrpc/ calls */
    ALINK_POST_REPLY,   /* /sys/pk/dn/thing/event/${name}/post_reply; name "property" or event */
    ALINK_REPLY,        /* any other /sys/pk/dn/…_reply; name = the path after pk/dn/ */
    ALINK_RRPC_REQUEST, /* /sys/pk/dn/rrpc/request/${rrpc_id}, or the custom form
                         * /ext/rrpc/${rrpc_id}//pk/dn/user/… (name = "user/…") */
    ALINK_OTA_UPGRADE,  /* /ota/device/upgrade/pk/dn */
    ALINK_NTP_RESPONSE, /* /ext/ntp/pk/dn/response */
    ALINK_CONFIG_PUSH,  /* /sys/pk/dn/thing/config/push */
    ALINK_EXT_ERROR,    /* /ext/error/pk/dn: the platform reports a problem with this device */
    ALINK_CUSTOM,       /* /pk/dn/user/${name}; name = what follows user/ */
    ALINK_SHADOW,       /* /shadow/get/pk/dn: the shadow's replies and control pushes */
    ALINK_NOT_MINE,     /* not a topic of this device */
};

struct alink_topic {
    enum alink_kind kind;
    char name[128];   /* service id, event id, "property", custom suffix, reply path */
    char rrpc_id[64]; /* RRPC message id, or "" */
};

/* Name of a kind, e.g. "property_set". Never NULL. */
const char *alink_kind_name(enum alink_kind k);

/*
 * Classifies topic for the device pk/dn. Always fills *out (ALINK_NOT_MINE when the topic does
 * not belong to this device). Returns 0, or -EINVAL for a NULL argument or a topic segment that
 * does not fit out's fields (kind is then ALINK_OTHER).
 */
int alink_classify(const char *pk, const char *dn, const char *topic, struct alink_topic *out);

/* A parsed downlink payload. */
struct alink_payload {
    json_t *root;   /* the whole document (owned) */
    char id[24];    /* "id" as a string ("" if absent); numbers are converted */
    json_t *params; /* "params" (borrowed from root) or NULL */
    json_t *data;   /* "data" (borrowed from root) or NULL */
    bool has_code;
    int code;            /* "code", number or numeric string (OTA sends "1000") */
    const char *message; /* "message" (borrowed from root) or NULL */
    const char *method;  /* "method" (borrowed from root) or NULL */
};

/*
 * Parses an Alink payload (untrusted bytes, need not be NUL-terminated). Requires a JSON
 * object; "id" must be a string of at most 20 digits or a non-negative integer when present;
 * "params" when present must be an object or an array; "code" a number or numeric string.
 * On error returns -EINVAL and writes a reason into err (err may be NULL). On success the caller
 * frees with alink_payload_free().
 */
int alink_parse(const char *payload, size_t len, struct alink_payload *out, char *err,
                size_t err_len);
void alink_payload_free(struct alink_payload *p);

/*
 * The system topics a device subscribes to after connecting (property set, service calls, post
 * replies incl. batch and history posts, RRPC, OTA upgrade, NTP response, config push, the
 * platform's error notices), expanded for pk/dn. *out is a
 * NULL-terminated array of strings; free it with alink_topics_free(). Returns 0 or -ENOMEM.
 */
int alink_system_topics(const char *pk, const char *dn, char ***out, size_t *n);
/*
 * With ext_rrpc (ext=3 announced in the clientId): the synchronous service calls' topic
 * /ext/rrpc/+/sys/pk/dn/thing/service/+ and, for each of the device's custom topics
 * (/pk/dn/user/…), the custom RRPC form /ext/rrpc/+//pk/dn/user/…. Free with
 * alink_topics_free(). Returns 0, -EINVAL, -ENOMEM.
 */
int alink_ext_rrpc_topics(const char *pk, const char *dn, char *const *user_topics, size_t n_user,
                          char ***out, size_t *n);
void alink_topics_free(char **topics);

/* What a topic is checked for: a topic to publish on, or a filter to subscribe with. */
enum alink_use { ALINK_PUBLISH, ALINK_SUBSCRIBE };

/*
 * True when the device pk/dn may use topic on the platform: the platform's topic grammar with pk
 * and dn at their fixed positions, every level non-empty:
 *   /pk/dn/user/...                 custom topics
 *   /sys/pk/dn/...                  thing model, RRPC
 *   /ota/device/<word>/pk/dn        OTA inform, progress, request
 *   /shadow/<word>/pk/dn            device shadow
 *   /ext/rrpc/<id>/<owned topic>    RRPC replies on the request's own topic (custom topics
 *                                   keep their slash: /ext/rrpc/<id>//pk/dn/user/…)
 *   /ext/<word>/pk/dn[/...]         ntp, session, error and the other extensions
 *   /broadcast/pk/...               (subscribe only) product broadcasts
 * For ALINK_PUBLISH no '+' or '#' may appear; for ALINK_SUBSCRIBE they may stand as whole levels
 * after pk and dn ('#' last). This one function is what the API and the plugin host check.
 */
bool alink_topic_owned(const char *pk, const char *dn, const char *topic, enum alink_use use);

/* True if s is a valid thing-model identifier (letters, digits, '_', '-', ≤ ALINK_MAX_IDENT). */
bool alink_ident_ok(const char *s);

#endif
