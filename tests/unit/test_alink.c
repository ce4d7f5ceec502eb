/* alink: topics and envelopes built, downlink topics classified, bad payloads refused. */
#include "alink.h"
#include "check.h"

#include <errno.h>
#include <stdlib.h>

static void property_post(void)
{
    struct alink_msg m;
    json_t *p = json_loads("{\"temp\":10.0,\"hum\":23.6,\"on\":1,\"s\":\"x\"}", 0, NULL);
    CHECK_INT(alink_property_post("pk1", "dev1", 42, p, 0, true, &m), 0);
    CHECK_STR(m.topic, "/sys/pk1/dev1/thing/event/property/post");
    CHECK_STR(m.payload,
              "{\"id\":\"42\",\"version\":\"1.0\",\"params\":{\"temp\":10.0,\"hum\":23.6,"
              "\"on\":1,\"s\":\"x\"},\"sys\":{\"ack\":1}}");
    CHECK_INT(m.len, strlen(m.payload));
    alink_msg_free(&m);

    CHECK_INT(alink_property_post("pk1", "dev1", 4294967295u, p, 1524448722000, false, &m), 0);
    CHECK_STR(m.payload,
              "{\"id\":\"4294967295\",\"version\":\"1.0\",\"params\":{\"temp\":{\"value\":10.0,"
              "\"time\":1524448722000},\"hum\":{\"value\":23.6,\"time\":1524448722000},\"on\":{"
              "\"value\":1,\"time\":1524448722000},\"s\":{\"value\":\"x\",\"time\":1524448722000}},"
              "\"sys\":{\"ack\":0}}");
    alink_msg_free(&m);
    json_decref(p);

    /* already-timed values are kept */
    p = json_loads("{\"a\":{\"value\":1.5,\"time\":7}}", 0, NULL);
    CHECK_INT(alink_property_post("pk1", "dev1", 1, p, 99, true, &m), 0);
    CHECK(strstr(m.payload, "\"a\":{\"value\":1.5,\"time\":7}") != NULL);
    alink_msg_free(&m);
    json_decref(p);

    /* limits and bad input */
    p = json_object();
    CHECK_INT(alink_property_post("pk1", "dev1", 1, p, 0, true, &m), -EINVAL);
    for (int i = 0; i < 201; i++) {
        char k[16];
        snprintf(k, sizeof k, "p%d", i);
        json_object_set_new(p, k, json_integer(i));
        if (i == 199) {
            CHECK_INT(alink_property_post("pk1", "dev1", 1, p, 0, true, &m), 0);
            alink_msg_free(&m);
        }
    }
    CHECK_INT(alink_property_post("pk1", "dev1", 1, p, 0, true, &m), -E2BIG);
    CHECK(m.topic == NULL && m.payload == NULL);
    json_decref(p);
    p = json_loads("{\"bad key\":1}", 0, NULL);
    CHECK_INT(alink_property_post("pk1", "dev1", 1, p, 0, true, &m), -EINVAL);
    json_decref(p);
    p = json_loads("[1]", 0, NULL);
    CHECK_INT(alink_property_post("pk1", "dev1", 1, p, 0, true, &m), -EINVAL);
    CHECK_INT(alink_property_post("pk/x", "dev1", 1, p, 0, true, &m), -EINVAL);
    json_decref(p);
}

static void event_and_replies(void)
{
    struct alink_msg m;
    json_t *v = json_loads("{\"level\":3,\"t\":40.0}", 0, NULL);
    CHECK_INT(alink_event_post("pk", "dn", 7, "overheat", v, 1000, true, &m), 0);
    CHECK_STR(m.topic, "/sys/pk/dn/thing/event/overheat/post");
    CHECK_STR(m.payload, "{\"id\":\"7\",\"version\":\"1.0\",\"params\":{\"value\":{\"level\":3,"
                         "\"t\":40.0},\"time\":1000},\"sys\":{\"ack\":1}}");
    alink_msg_free(&m);
    CHECK_INT(alink_event_post("pk", "dn", 8, "boot", NULL, 0, false, &m), 0);
    CHECK_STR(m.payload,
              "{\"id\":\"8\",\"version\":\"1.0\",\"params\":{\"value\":{}},\"sys\":{\"ack\":0}}");
    alink_msg_free(&m);
    CHECK_INT(alink_event_post("pk", "dn", 8, "a/b", NULL, 0, false, &m), -EINVAL);
    CHECK_INT(alink_event_post("pk", "dn", 8, "property", NULL, 0, false, &m), -EINVAL);

    CHECK_INT(alink_service_reply("pk", "dn", "reset", NULL, "123", 200, v, NULL, &m), 0);
    CHECK_STR(m.topic, "/sys/pk/dn/thing/service/reset_reply");
    CHECK_STR(m.payload, "{\"id\":\"123\",\"code\":200,\"data\":{\"level\":3,\"t\":40.0},"
                         "\"message\":\"success\",\"version\":\"1.0\"}");
    alink_msg_free(&m);
    CHECK_INT(alink_service_reply("pk", "dn", "reset", "rr9", "5", 460, NULL, "bad", &m), 0);
    CHECK_STR(m.topic, "/ext/rrpc/rr9/sys/pk/dn/thing/service/reset");
    CHECK_STR(m.payload,
              "{\"id\":\"5\",\"code\":460,\"data\":{},\"message\":\"bad\",\"version\":\"1.0\"}");
    alink_msg_free(&m);
    CHECK_INT(alink_service_reply("pk", "dn", "reset", NULL, "12a", 200, NULL, NULL, &m), -EINVAL);
    CHECK_INT(alink_rrpc_response("pk", "dn", "888", NULL, v, NULL, 0, &m), 0);
    CHECK_STR(m.topic, "/sys/pk/dn/rrpc/response/888");
    CHECK_STR(m.payload, "{\"level\":3,\"t\":40.0}");
    alink_msg_free(&m);
    CHECK_INT(alink_rrpc_response("pk", "dn", "a/b", NULL, NULL, NULL, 0, &m), -EINVAL);
    /* raw bytes, and the custom form answered on its own topic */
    CHECK_INT(alink_rrpc_response("pk", "dn", "77", "user/get", NULL, "\x00\xffok", 4, &m), 0);
    CHECK_STR(m.topic, "/ext/rrpc/77//pk/dn/user/get");
    CHECK_INT((int)m.len, 4);
    CHECK(memcmp(m.payload, "\x00\xffok", 4) == 0);
    alink_msg_free(&m);
    CHECK_INT(alink_rrpc_response("pk", "dn", "77", "thing/x", NULL, NULL, 0, &m), -EINVAL);
    CHECK_INT(alink_rrpc_response("pk", "dn", "77", "user/+", NULL, NULL, 0, &m), -EINVAL);
    CHECK_INT(alink_property_set_reply("pk", "dn", "99", 200, NULL, NULL, &m), 0);
    CHECK_STR(m.topic, "/sys/pk/dn/thing/service/property/set_reply");
    CHECK_STR(
        m.payload,
        "{\"id\":\"99\",\"code\":200,\"data\":{},\"message\":\"success\",\"version\":\"1.0\"}");
    alink_msg_free(&m);
    json_decref(v);
}

static void classify(void)
{
    struct alink_topic t;
    CHECK_INT(alink_classify("pk", "dn", "/sys/pk/dn/thing/service/property/set", &t), 0);
    CHECK_INT(t.kind, ALINK_PROPERTY_SET);
    CHECK_INT(alink_classify("pk", "dn", "/sys/pk/dn/thing/service/reset", &t), 0);
    CHECK_INT(t.kind, ALINK_SERVICE_CALL);
    CHECK_STR(t.name, "reset");
    CHECK_STR(t.rrpc_id, "");
    CHECK_INT(alink_classify("pk", "dn", "/ext/rrpc/1234/sys/pk/dn/thing/service/toggle", &t), 0);
    CHECK_INT(t.kind, ALINK_SERVICE_CALL);
    CHECK_STR(t.name, "toggle");
    CHECK_STR(t.rrpc_id, "1234");
    CHECK_INT(alink_classify("pk", "dn", "/sys/pk/dn/thing/event/property/post_reply", &t), 0);
    CHECK_INT(t.kind, ALINK_POST_REPLY);
    CHECK_STR(t.name, "property");
    CHECK_INT(alink_classify("pk", "dn", "/sys/pk/dn/thing/event/alarm/post_reply", &t), 0);
    CHECK_INT(t.kind, ALINK_POST_REPLY);
    CHECK_STR(t.name, "alarm");
    CHECK_INT(alink_classify("pk", "dn", "/sys/pk/dn/thing/config/get_reply", &t), 0);
    CHECK_INT(t.kind, ALINK_REPLY);
    CHECK_STR(t.name, "thing/config/get");
    CHECK_INT(alink_classify("pk", "dn", "/sys/pk/dn/rrpc/request/888", &t), 0);
    CHECK_INT(t.kind, ALINK_RRPC_REQUEST);
    CHECK_STR(t.rrpc_id, "888");
    CHECK_INT(alink_classify("pk", "dn", "/ext/rrpc/4242//pk/dn/user/get", &t), 0);
    CHECK_INT(t.kind, ALINK_RRPC_REQUEST);
    CHECK_STR(t.rrpc_id, "4242");
    CHECK_STR(t.name, "user/get");
    CHECK_INT(alink_classify("pk", "dn", "/ext/rrpc/4242//pk/dn/thing/x", &t), 0);
    CHECK_INT(t.kind, ALINK_OTHER);
    CHECK_INT(alink_classify("pk", "dn", "/ext/rrpc/4242//pk/dn2/user/get", &t), 0);
    CHECK_INT(t.kind, ALINK_NOT_MINE);
    CHECK_INT(alink_classify("pk", "dn", "/ext/rrpc//pk/dn/user/get", &t), 0);
    CHECK(t.kind != ALINK_RRPC_REQUEST);
    CHECK_INT(alink_classify("pk", "dn", "/ota/device/upgrade/pk/dn", &t), 0);
    CHECK_INT(t.kind, ALINK_OTA_UPGRADE);
    CHECK_INT(alink_classify("pk", "dn", "/ext/ntp/pk/dn/response", &t), 0);
    CHECK_INT(t.kind, ALINK_NTP_RESPONSE);
    CHECK_INT(alink_classify("pk", "dn", "/sys/pk/dn/thing/event/property/batch/post_reply", &t),
              0);
    CHECK_INT(t.kind, ALINK_REPLY);
    CHECK_STR(t.name, "thing/event/property/batch/post");
    CHECK_INT(alink_classify("pk", "dn", "/ext/error/pk/dn", &t), 0);
    CHECK_INT(t.kind, ALINK_EXT_ERROR);
    CHECK_INT(alink_classify("pk", "dn", "/ext/error/pk/other", &t), 0);
    CHECK(t.kind != ALINK_EXT_ERROR);
    CHECK_INT(alink_classify("pk", "dn", "/sys/pk/dn/thing/config/push", &t), 0);
    CHECK_INT(t.kind, ALINK_CONFIG_PUSH);
    CHECK_INT(alink_classify("pk", "dn", "/pk/dn/user/get/x", &t), 0);
    CHECK_INT(t.kind, ALINK_CUSTOM);
    CHECK_STR(t.name, "get/x");
    CHECK_INT(alink_classify("pk", "dn", "/shadow/get/pk/dn", &t), 0);
    CHECK_INT(t.kind, ALINK_SHADOW);
    CHECK_INT(alink_classify("pk", "dn", "/shadow/get/pk/dn/x", &t), 0);
    CHECK(t.kind != ALINK_SHADOW);
    CHECK_INT(alink_classify("pk", "dn", "/shadow/update/pk/dn", &t), 0);
    CHECK(t.kind != ALINK_SHADOW);
    CHECK_INT(alink_classify("pk", "dn", "/sys/pk/dn/thing/whatever", &t), 0);
    CHECK_INT(t.kind, ALINK_OTHER);
    /* other devices, prefixes of names */
    CHECK_INT(alink_classify("pk", "dn", "/sys/pk/dn2/thing/service/property/set", &t), 0);
    CHECK_INT(t.kind, ALINK_NOT_MINE);
    CHECK_INT(alink_classify("pk", "dn", "/sys/pk2/dn/thing/service/property/set", &t), 0);
    CHECK_INT(t.kind, ALINK_NOT_MINE);
    CHECK_INT(alink_classify("pk", "dn", "/ota/device/upgrade/pk/dnx", &t), 0);
    CHECK_INT(t.kind, ALINK_NOT_MINE);
    CHECK_INT(alink_classify("pk", "dn", "", &t), 0);
    CHECK_INT(t.kind, ALINK_NOT_MINE);
    /* hostile input: too long, odd shapes */
    char big[600];
    memset(big, 'a', sizeof big);
    big[sizeof big - 1] = '\0';
    memcpy(big, "/sys/pk/dn/thing/service/", 25);
    CHECK_INT(alink_classify("pk", "dn", big, &t), 0); /* not an identifier */
    CHECK_INT(t.kind, ALINK_OTHER);
    memcpy(big, "/pk/dn/user/", 12);
    CHECK_INT(alink_classify("pk", "dn", big, &t), -EINVAL); /* does not fit */
    CHECK_INT(t.kind, ALINK_OTHER);
    CHECK_STR(t.name, "");
    CHECK_INT(alink_classify("pk", "dn", "/ext/rrpc//sys/pk/dn/thing/service/x", &t), 0);
    CHECK_INT(t.kind, ALINK_NOT_MINE);
    CHECK_INT(alink_classify("pk", "dn", "/sys/pk/dn/thing/event//post_reply", &t), 0);
    CHECK_INT(t.kind, ALINK_OTHER);
    CHECK_STR(alink_kind_name(ALINK_SERVICE_CALL), "service_call");
}

static void parse(void)
{
    struct alink_payload p;
    char err[128];
    const char *s = "{\"id\":\"123\",\"version\":\"1.0\",\"params\":{\"a\":1},"
                    "\"method\":\"thing.service.property.set\"}";
    CHECK_INT(alink_parse(s, strlen(s), &p, err, sizeof err), 0);
    CHECK_STR(p.id, "123");
    CHECK(json_integer_value(json_object_get(p.params, "a")) == 1);
    CHECK_STR(p.method, "thing.service.property.set");
    CHECK(!p.has_code);
    alink_payload_free(&p);

    s = "{\"code\":\"1000\",\"data\":{\"version\":\"2.0.0\"},\"id\":1626969597470,"
        "\"message\":\"success\"}";
    CHECK_INT(alink_parse(s, strlen(s), &p, err, sizeof err), 0);
    CHECK_STR(p.id, "1626969597470");
    CHECK(p.has_code && p.code == 1000);
    CHECK_STR(p.message, "success");
    CHECK(p.data != NULL);
    alink_payload_free(&p);

    s = "{\"id\":\"1\",\"code\":6106,\"message\":\"too many\"}";
    CHECK_INT(alink_parse(s, strlen(s), &p, err, sizeof err), 0);
    CHECK_INT(p.code, 6106);
    alink_payload_free(&p);

    /* not NUL-terminated: only len bytes are read */
    CHECK_INT(alink_parse("{\"id\":\"5\"}garbage", 10, &p, err, sizeof err), 0);
    CHECK_STR(p.id, "5");
    alink_payload_free(&p);

    static const struct {
        const char *in, *why;
    } bad[] = {
        {"", "invalid JSON"},
        {"{\"id\":", "invalid JSON"},
        {"[1,2]", "not a JSON object"},
        {"{\"id\":\"12x\"}", "\"id\""},
        {"{\"id\":-1}", "\"id\""},
        {"{\"id\":\"123456789012345678901\"}", "\"id\""},
        {"{\"id\":[1]}", "\"id\""},
        {"{\"params\":5}", "\"params\""},
        {"{\"code\":\"abc\"}", "\"code\""},
        {"{\"code\":99999999999}", "\"code\""},
        {"{\"code\":{}}", "\"code\""},
        {"{\"id\":\"1\",\"id\":\"2\"}", "invalid JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        CHECK_INT(alink_parse(bad[i].in, strlen(bad[i].in), &p, err, sizeof err), -EINVAL);
        CHECK(strstr(err, bad[i].why) != NULL);
        CHECK(p.root == NULL);
    }
    CHECK_INT(alink_parse(NULL, 0, &p, NULL, 0), -EINVAL);
}

static void topics(void)
{
    char **t;
    size_t n;
    CHECK_INT(alink_system_topics("pk", "dn", &t, &n), 0);
    CHECK(n >= 7);
    CHECK_STR(t[0], "/sys/pk/dn/thing/service/property/set");
    int seen = 0;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(t[i], "/sys/pk/dn/thing/service/+") == 0 ||
            strcmp(t[i], "/sys/pk/dn/thing/event/+/post_reply") == 0 ||
            strcmp(t[i], "/sys/pk/dn/rrpc/request/+") == 0 ||
            strcmp(t[i], "/ota/device/upgrade/pk/dn") == 0 ||
            strcmp(t[i], "/ext/ntp/pk/dn/response") == 0 || strcmp(t[i], "/ext/error/pk/dn") == 0 ||
            strcmp(t[i], "/sys/pk/dn/thing/event/property/batch/post_reply") == 0 ||
            strcmp(t[i], "/sys/pk/dn/thing/event/property/history/post_reply") == 0)
            seen++;
    }
    CHECK_INT(seen, 8);
    CHECK(t[n] == NULL);
    alink_topics_free(t);
    CHECK_INT(alink_system_topics("p+k", "dn", &t, &n), -EINVAL);
    /* ext_rrpc: the sync calls' topic, then the custom form of the device's own custom topics */
    char *user[] = {"/pk/dn/user/get", "/other/dn/user/x", "/sys/pk/dn/thing/x", "/pk/dn/user/#"};
    CHECK_INT(alink_ext_rrpc_topics("pk", "dn", user, 4, &t, &n), 0);
    CHECK_INT((int)n, 3);
    CHECK_STR(t[0], "/ext/rrpc/+/sys/pk/dn/thing/service/+");
    CHECK_STR(t[1], "/ext/rrpc/+//pk/dn/user/get");
    CHECK_STR(t[2], "/ext/rrpc/+//pk/dn/user/#");
    CHECK(t[3] == NULL);
    for (size_t i = 0; i < n; i++)
        CHECK(alink_topic_owned("pk", "dn", t[i], ALINK_SUBSCRIBE));
    alink_topics_free(t);
}

/* Issue 13: the PK/DN pair counts only at its fixed position in the platform's grammar. */
static void ownership(void)
{
    const char *pk = "a1Acl", *dn = "dev0001";
    static const char *const yes[] = {
        "/a1Acl/dev0001/user/update",
        "/a1Acl/dev0001/user/a/b/c",
        "/sys/a1Acl/dev0001/thing/event/property/post",
        "/sys/a1Acl/dev0001/rrpc/response/123",
        "/ota/device/inform/a1Acl/dev0001",
        "/ota/device/progress/a1Acl/dev0001",
        "/shadow/update/a1Acl/dev0001",
        "/ext/ntp/a1Acl/dev0001/request",
        "/ext/rrpc/99/sys/a1Acl/dev0001/thing/service/Reboot",
        "/ext/rrpc/99/a1Acl/dev0001/user/x",
    };
    static const char *const no[] = {
        /* what the adversarial test got answered "ok" */
        "/a1Acl/dev0002/user/update/a1Acl/dev0001",
        "/evil/a1Acl/dev0001",
        "/sys/a1Acl/dev0002/thing/event/a1Acl/dev0001",
        /* and more */
        "/a1Acl/dev0001",
        "/a1Acl/dev0001/user",
        "/a1Acl/dev0001/user/",
        "/a1Acl/dev0001//user/x",
        "/a1Acl/dev0001/other/x",
        "/sys/a1Acl/dev0001",
        "/sys/a1Acl/dev00011/thing/x",
        "/ota/device/inform/a1Acl/dev0001/x",
        "/ota/x/inform/a1Acl/dev0001",
        "/shadow/update/a1Acl/dev0002",
        "/ext/rrpc/99/evil/a1Acl/dev0001",
        "/ext/rrpc/1/ext/rrpc/2/sys/a1Acl/dev0001/x",
        "/broadcast/a1Acl/x",
        "/a1Acl/dev0001/user/+",
        "/a1Acl/dev0001/user/#",
        "a1Acl/dev0001/user/x",
        "",
    };
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        if (!alink_topic_owned(pk, dn, yes[i], ALINK_PUBLISH))
            fprintf(stderr, "should be owned: %s\n", yes[i]);
        CHECK(alink_topic_owned(pk, dn, yes[i], ALINK_PUBLISH));
    }
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
        if (alink_topic_owned(pk, dn, no[i], ALINK_PUBLISH))
            fprintf(stderr, "should not be owned: %s\n", no[i]);
        CHECK(!alink_topic_owned(pk, dn, no[i], ALINK_PUBLISH));
    }
    CHECK(alink_topic_owned(pk, dn, "/a1Acl/dev0001/user/#", ALINK_SUBSCRIBE));
    CHECK(alink_topic_owned(pk, dn, "/sys/a1Acl/dev0001/thing/service/+", ALINK_SUBSCRIBE));
    CHECK(alink_topic_owned(pk, dn, "/broadcast/a1Acl/x", ALINK_SUBSCRIBE));
    CHECK(!alink_topic_owned(pk, dn, "/+/dev0001/user/#", ALINK_SUBSCRIBE));
    CHECK(!alink_topic_owned(pk, dn, "/a1Acl/dev0001/user/#/x", ALINK_SUBSCRIBE));
    CHECK(!alink_topic_owned(pk, dn, "/a1Acl/dev0001/user/a+", ALINK_SUBSCRIBE));
    CHECK(!alink_topic_owned(pk, dn, "#", ALINK_SUBSCRIBE));
    /* RRPC: the custom form keeps its slash; '+' stands for the id only when subscribing */
    CHECK(alink_topic_owned(pk, dn, "/ext/rrpc/55//a1Acl/dev0001/user/get", ALINK_PUBLISH));
    CHECK(alink_topic_owned(pk, dn, "/ext/rrpc/+//a1Acl/dev0001/user/get", ALINK_SUBSCRIBE));
    CHECK(!alink_topic_owned(pk, dn, "/ext/rrpc/+//a1Acl/dev0001/user/get", ALINK_PUBLISH));
    CHECK(!alink_topic_owned(pk, dn, "/ext/rrpc/55//a1Acl/dev0002/user/get", ALINK_PUBLISH));
    CHECK(!alink_topic_owned(pk, dn, "/ext/rrpc/55//sys/a1Acl/dev0001/thing/x", ALINK_PUBLISH));
    CHECK(!alink_topic_owned(pk, dn, "/ext/rrpc///a1Acl/dev0001/user/get", ALINK_PUBLISH));
    CHECK(alink_topic_owned(pk, dn, "/ext/rrpc/+/sys/a1Acl/dev0001/thing/service/+",
                            ALINK_SUBSCRIBE));
    CHECK(!alink_topic_owned(NULL, dn, "/a1Acl/dev0001/user/x", ALINK_PUBLISH));
}

static void shadow_and_thing_requests(void)
{
    struct alink_msg m = {0};
    struct alink_shadow sh;
    char err[128];
    json_t *rep = json_pack("{s:i}", "interval", 5);
    json_t *ids = json_pack("[s,s]", "power", "temp");

    CHECK_INT(alink_shadow_request("pk", "dn", true, NULL, -1, &m), 0);
    CHECK_STR(m.topic, "/shadow/update/pk/dn");
    CHECK_STR(m.payload, "{\"method\":\"get\"}");
    alink_msg_free(&m);
    CHECK_INT(alink_shadow_request("pk", "dn", false, rep, 7, &m), 0);
    CHECK_STR(m.payload,
              "{\"method\":\"update\",\"state\":{\"reported\":{\"interval\":5}},\"version\":7}");
    alink_msg_free(&m);
    CHECK_INT(alink_shadow_request("pk", "dn", false, NULL, 8, &m), 0);
    CHECK_STR(m.payload, "{\"method\":\"update\",\"state\":{\"desired\":\"null\"},\"version\":8}");
    alink_msg_free(&m);
    CHECK_INT(alink_shadow_request("pk", "dn", false, rep, -1, &m), -EINVAL);

    CHECK_INT(alink_thing_request("pk", "dn", 9, "property/desired/get", ids, &m), 0);
    CHECK_STR(m.topic, "/sys/pk/dn/thing/property/desired/get");
    CHECK(strstr(m.payload, "\"method\":\"thing.property.desired.get\"") != NULL);
    CHECK(strstr(m.payload, "\"params\":[\"power\",\"temp\"]") != NULL);
    CHECK(strstr(m.payload, "\"id\":\"9\"") != NULL);
    alink_msg_free(&m);
    CHECK_INT(alink_thing_request("pk", "dn", 9, "a/+", ids, &m), -EINVAL);
    CHECK_INT(alink_thing_request("pk", "dn", 9, "/abs", ids, &m), -EINVAL);

    const char *ok = "{\"method\":\"reply\",\"payload\":{\"status\":\"success\",\"state\":"
                     "{\"reported\":{\"a\":1}}},\"version\":4,\"timestamp\":1700000000000}";
    CHECK_INT(alink_shadow_parse(ok, strlen(ok), &sh, err, sizeof err), 0);
    CHECK(sh.ok && !sh.control);
    CHECK_INT((int)sh.version, 4);
    CHECK(json_is_object(json_object_get(sh.state, "reported")));
    alink_shadow_free(&sh);
    const char *conflict = "{\"method\":\"reply\",\"payload\":{\"status\":\"error\",\"content\":"
                           "{\"errorcode\":\"409\",\"errormessage\":\"version conflict\"}},"
                           "\"version\":6}";
    CHECK_INT(alink_shadow_parse(conflict, strlen(conflict), &sh, err, sizeof err), 0);
    CHECK(!sh.ok);
    CHECK_INT(sh.errorcode, 409);
    CHECK_STR(sh.message, "version conflict");
    alink_shadow_free(&sh);
    const char *ctl = "{\"method\":\"control\",\"payload\":{\"state\":{\"desired\":{\"b\":2}}},"
                      "\"version\":7}";
    CHECK_INT(alink_shadow_parse(ctl, strlen(ctl), &sh, err, sizeof err), 0);
    CHECK(sh.control);
    alink_shadow_free(&sh);
    CHECK_INT(alink_shadow_parse("{\"method\":\"nope\",\"payload\":{}}", 30, &sh, err, sizeof err),
              -EINVAL);
    CHECK_INT(alink_shadow_parse("[]", 2, &sh, err, sizeof err), -EINVAL);
    json_decref(rep);
    json_decref(ids);
}

int main(void)
{
    shadow_and_thing_requests();
    ownership();
    property_post();
    event_and_replies();
    classify();
    parse();
    topics();
    return check_done();
}
