/*
 * fuzz_alink: the Alink downlink path as api.c runs it on what the cloud sends: the topic is
 * classified for the device (property set, service call, RRPC, OTA, replies, custom), the
 * payload parsed, and the reply the daemon would send built from what was parsed; the topic also
 * goes through the ownership check. Input: topic bytes, a NUL, payload bytes. Checks beyond "no
 * crash": a parsed id is at most 20 digits, params is an object or array when present, an error
 * always has a reason, a classified topic's names are NUL-terminated within their fields, a
 * reply built for a call is valid JSON echoing the id, and an RRPC request's answer carries the
 * bytes unchanged on a topic the device owns (the custom form's: the request's own topic).
 */
#include "alink.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char PK[] = "a1FuzzPk", DN[] = "dev-1";

static void check_reply(const struct alink_msg *m, const char *id)
{
    json_t *j = json_loadb(m->payload, m->len, 0, NULL);
    if (!j || !json_is_object(j) || strcmp(json_string_value(json_object_get(j, "id")), id) != 0)
        abort();
    json_decref(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    size_t tlen = nul ? (size_t)(nul - data) : size;
    char *topic = malloc(tlen + 1);
    if (!topic)
        return 0;
    memcpy(topic, data, tlen);
    topic[tlen] = '\0';
    const char *payload = nul ? (const char *)nul + 1 : "";
    size_t plen = nul ? size - tlen - 1 : 0;

    struct alink_topic t;
    alink_classify(PK, DN, topic, &t);
    if (memchr(t.name, 0, sizeof(t.name)) == NULL ||
        memchr(t.rrpc_id, 0, sizeof(t.rrpc_id)) == NULL)
        abort();
    (void)alink_kind_name(t.kind);
    alink_topic_owned(PK, DN, topic, ALINK_PUBLISH);
    alink_topic_owned(PK, DN, topic, ALINK_SUBSCRIBE);

    if (t.kind == ALINK_RRPC_REQUEST) {
        /* The answer to a raw RRPC carries the bytes; the custom form's goes on its own topic. */
        struct alink_msg m = {0};
        if (alink_rrpc_response(PK, DN, t.rrpc_id, t.name[0] ? t.name : NULL, NULL, payload, plen,
                                &m) != 0 ||
            m.len != plen || memcmp(m.payload, payload, plen) != 0 ||
            (t.name[0] && strcmp(m.topic, topic) != 0) ||
            !alink_topic_owned(PK, DN, m.topic, ALINK_PUBLISH))
            abort();
        alink_msg_free(&m);
    }

    struct alink_payload p;
    char err[160];
    err[0] = '\0';
    if (alink_parse(payload, plen, &p, err, sizeof(err)) == 0) {
        if (strlen(p.id) > 20 ||
            (p.params && !json_is_object(p.params) && !json_is_array(p.params)))
            abort();
        struct alink_msg m = {0};
        const char *id = p.id[0] ? p.id : "0";
        int rc = -1;
        if (t.kind == ALINK_PROPERTY_SET)
            rc = alink_property_set_reply(PK, DN, id, 200, p.params, NULL, &m);
        else if (t.kind == ALINK_SERVICE_CALL)
            rc = alink_service_reply(PK, DN, t.name, t.rrpc_id[0] ? t.rrpc_id : NULL, id, 200,
                                     json_is_object(p.params) ? p.params : NULL, NULL, &m);
        if (rc == 0) {
            check_reply(&m, id);
            alink_msg_free(&m);
        }
        alink_payload_free(&p);
    } else if (!err[0]) {
        abort();
    }
    if (t.kind == ALINK_SHADOW) {
        /* The shadow's replies and control pushes: parsed or refused with a reason; a parsed
         * one has a version of -1 or above, and its state (if any) is an object in the root. */
        struct alink_shadow sh;
        err[0] = '\0';
        if (alink_shadow_parse(payload, plen, &sh, err, sizeof(err)) == 0) {
            if (sh.version < -1 || !sh.root || (sh.state && !json_is_object(sh.state)) ||
                strnlen(sh.message, sizeof(sh.message)) == sizeof(sh.message))
                abort();
            alink_shadow_free(&sh);
        } else if (!err[0]) {
            abort();
        }
    }
    free(topic);
    return 0;
}
