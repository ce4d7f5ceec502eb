/*
 * test_ipc_request: every op parsed from a valid line into its typed struct, the main invalid
 * cases of each with the field named in the error, the framer (split lines, oversized lines
 * dropped without keeping them, the id recovered from a long line), topic matching and the
 * response lines.
 */
#include "ipc_request.h"

#include "check.h"
#include "errors.h"

#include <errno.h>
#include <stdlib.h>

static struct ipc_limits lim = {.max_payload = 64, .now_ms = 1700000000000LL};

static int parse(const char *s, struct ipc_request *r, struct ipc_error *e)
{
    return ipc_request_parse(s, strlen(s), &lim, r, e);
}

/* Expects a failure with code and a message containing want. */
static void bad(const char *line, enum ipc_err code, const char *want)
{
    struct ipc_request r;
    struct ipc_error e;
    int rc = parse(line, &r, &e);
    CHECK_INT(rc, -EINVAL);
    if (rc == 0) {
        fprintf(stderr, "  accepted: %s\n", line);
        ipc_request_free(&r);
        return;
    }
    CHECK_STR(ipc_err_name(e.code), ipc_err_name(code));
    if (!strstr(e.message, want)) {
        fprintf(stderr, "  message \"%s\" lacks \"%s\" (line %s)\n", e.message, want, line);
        CHECK(0);
    }
    ipc_error_free(&e);
}

static void test_valid(void)
{
    struct ipc_request r;
    struct ipc_error e;

    CHECK_INT(parse("{\"id\":1,\"op\":\"hello\",\"client\":\"plc\"}", &r, &e), 0);
    CHECK_INT(r.op, IPC_OP_HELLO);
    CHECK_INT(json_integer_value(r.id), 1);
    CHECK_STR(r.u.hello.client, "plc");
    ipc_request_free(&r);

    CHECK_INT(parse("{\"id\":\"a\",\"op\":\"publish\",\"device\":\"pk1/dev-1\",\"topic\":"
                    "\"/pk1/dev-1/user/up\",\"payload\":\"hello\"}",
                    &r, &e),
              0);
    CHECK_INT(r.op, IPC_OP_PUBLISH);
    CHECK_STR(json_string_value(r.id), "a");
    CHECK_STR(r.dev.pk, "pk1");
    CHECK_STR(r.dev.dn, "dev-1");
    CHECK_STR(r.dev.key, "pk1/dev-1");
    CHECK_STR(r.u.publish.topic, "/pk1/dev-1/user/up");
    CHECK_INT(r.u.publish.payload_len, 5);
    CHECK_STR((char *)r.u.publish.payload, "hello");
    CHECK_INT(r.u.publish.qos, 1); /* default */
    ipc_request_free(&r);

    CHECK_INT(parse("{\"id\":2,\"op\":\"publish\",\"device\":\"pk/dn\",\"topic\":"
                    "\"/sys/pk/dn/thing/model/up_raw\",\"payload_b64\":\"AAEC/w==\",\"qos\":0}",
                    &r, &e),
              0);
    CHECK_INT(r.u.publish.payload_len, 4);
    CHECK(memcmp(r.u.publish.payload, "\x00\x01\x02\xff", 4) == 0);
    CHECK_INT(r.u.publish.qos, 0);
    ipc_request_free(&r);

    CHECK_INT(parse("{\"id\":3,\"op\":\"post_properties\",\"device\":\"pk/dn\",\"params\":"
                    "{\"Temp\":21.5,\"Power\":{\"value\":\"on\",\"time\":1690000000000}},"
                    "\"timestamp\":1690000000000,\"ack\":false,\"wait_reply\":true}",
                    &r, &e),
              0);
    CHECK_INT(r.op, IPC_OP_POST_PROPERTIES);
    CHECK_INT(json_object_size(r.u.post.params), 2);
    CHECK_INT(r.u.post.timestamp, 1690000000000LL);
    CHECK(!r.u.post.ack);
    CHECK(r.u.post.wait_reply);
    ipc_request_free(&r);

    CHECK_INT(parse("{\"id\":4,\"op\":\"post_event\",\"device\":\"pk/dn\",\"event\":\"Alarm\","
                    "\"params\":{\"level\":2}}",
                    &r, &e),
              0);
    CHECK_STR(r.u.post.event, "Alarm");
    CHECK(r.u.post.ack); /* default */
    CHECK(!r.u.post.wait_reply);
    ipc_request_free(&r);

    CHECK_INT(parse("{\"id\":5,\"op\":\"reply\",\"device\":\"pk/dn\",\"request_id\":\"123\","
                    "\"code\":200,\"data\":{\"x\":1}}",
                    &r, &e),
              0);
    CHECK_STR(r.u.reply.msg_id, "123");
    CHECK_INT(r.u.reply.code, 200);
    CHECK(json_is_object(r.u.reply.data));
    ipc_request_free(&r);
    CHECK_INT(parse("{\"id\":5,\"op\":\"reply\",\"device\":\"pk/dn\",\"request_id\":77,\"code\":"
                    "460}",
                    &r, &e),
              0);
    CHECK_STR(r.u.reply.msg_id, "77");
    CHECK(r.u.reply.data == NULL);
    CHECK(r.u.reply.payload == NULL);
    ipc_request_free(&r);
    /* raw bytes for an RRPC request */
    CHECK_INT(parse("{\"id\":5,\"op\":\"reply\",\"device\":\"pk/dn\",\"request_id\":\"9\",\"code\":"
                    "200,\"payload_b64\":\"AP9vaw==\"}",
                    &r, &e),
              0);
    CHECK_INT((int)r.u.reply.payload_len, 4);
    CHECK(memcmp(r.u.reply.payload, "\x00\xffok", 4) == 0);
    ipc_request_free(&r);

    CHECK_INT(parse("{\"id\":6,\"op\":\"watch\",\"devices\":[\"pk/b\",\"pk/a\"],\"topics\":"
                    "[\"/sys/+/+/thing/#\"],\"kinds\":[\"message\",\"service_call\"]}",
                    &r, &e),
              0);
    CHECK(!r.u.watch.all_devices);
    CHECK_INT(r.u.watch.n_devices, 2);
    CHECK_STR(r.u.watch.devices[0], "pk/a"); /* sorted */
    CHECK_INT(r.u.watch.kinds, IPC_EV_MESSAGE | IPC_EV_SERVICE_CALL);
    CHECK(ipc_watch_matches(&r.u.watch, IPC_EV_MESSAGE, "pk/a", "/sys/pk/a/thing/x"));
    CHECK(!ipc_watch_matches(&r.u.watch, IPC_EV_MESSAGE, "pk/c", "/sys/pk/c/thing/x"));
    CHECK(!ipc_watch_matches(&r.u.watch, IPC_EV_MESSAGE, "pk/a", "/pk/a/user/x"));
    CHECK(!ipc_watch_matches(&r.u.watch, IPC_EV_STATE, "pk/a", NULL));
    ipc_request_free(&r);
    CHECK_INT(parse("{\"id\":6,\"op\":\"watch\",\"devices\":\"*\"}", &r, &e), 0);
    CHECK(r.u.watch.all_devices);
    CHECK_INT(r.u.watch.kinds, IPC_EV_ALL_);
    CHECK(ipc_watch_matches(&r.u.watch, IPC_EV_STATE, "x/y", NULL));
    ipc_request_free(&r);

    const char *simple[] = {"{\"id\":7,\"op\":\"devices\"}",
                            "{\"id\":8,\"op\":\"stats\"}",
                            "{\"id\":9,\"op\":\"reload\"}",
                            "{\"id\":10,\"op\":\"status\"}",
                            "{\"id\":11,\"op\":\"device\",\"device\":\"pk/dn\"}",
                            "{\"id\":12,\"op\":\"remove_device\",\"device\":\"pk/dn\"}",
                            "{\"id\":13,\"op\":\"devices\",\"state\":\"offline\"}"};
    enum ipc_op ops[] = {IPC_OP_DEVICES, IPC_OP_STATS,         IPC_OP_RELOAD, IPC_OP_STATUS,
                         IPC_OP_DEVICE,  IPC_OP_REMOVE_DEVICE, IPC_OP_DEVICES};
    for (size_t i = 0; i < sizeof(simple) / sizeof(*simple); i++) {
        CHECK_INT(parse(simple[i], &r, &e), 0);
        CHECK_INT(r.op, ops[i]);
        ipc_request_free(&r);
    }
    CHECK_INT(
        parse("{\"id\":14,\"op\":\"add_device\",\"device\":{\"product_key\":\"pk\"}}", &r, &e), 0);
    CHECK(json_is_object(r.u.add.device));
    CHECK(ipc_op_is_admin(r.op));
    ipc_request_free(&r);
}

static void test_invalid(void)
{
    bad("{\"id\":1,\"op\":", IPC_ERR_BAD_JSON, "invalid JSON");
    bad("[1]", IPC_ERR_BAD_REQUEST, "JSON object");
    bad("{\"op\":\"hello\"}", IPC_ERR_BAD_REQUEST, "id: missing");
    bad("{\"id\":1.5,\"op\":\"hello\"}", IPC_ERR_BAD_REQUEST, "id:");
    bad("{\"id\":1}", IPC_ERR_BAD_REQUEST, "op: missing");
    bad("{\"id\":1,\"op\":\"frobnicate\"}", IPC_ERR_UNKNOWN_OP, "frobnicate");
    bad("{\"id\":1,\"op\":\"stats\",\"verbose\":true}", IPC_ERR_BAD_REQUEST,
        "unknown field \"verbose\"");
    bad("{\"id\":1,\"id\":2,\"op\":\"stats\"}", IPC_ERR_BAD_JSON, "duplicate");
    /* publish */
    const char *pub = "{\"id\":1,\"op\":\"publish\",\"device\":\"pk/dn\",";
    char line[512];
#define PUB(rest) (snprintf(line, sizeof(line), "%s%s}", pub, rest), line)
    bad(PUB("\"topic\":\"/pk/dn/user/x\""), IPC_ERR_BAD_REQUEST, "payload: missing");
    bad(PUB("\"payload\":\"x\""), IPC_ERR_BAD_REQUEST, "topic: missing");
    bad(PUB("\"topic\":\"pk/dn/user/x\",\"payload\":\"x\""), IPC_ERR_BAD_REQUEST,
        "topic: must start with '/'");
    bad(PUB("\"topic\":\"/pk/dn/user/#\",\"payload\":\"x\""), IPC_ERR_BAD_REQUEST,
        "topic: wildcards");
    bad(PUB("\"topic\":\"/pk/dn/user/x\",\"payload\":\"x\",\"payload_b64\":\"eA==\""),
        IPC_ERR_BAD_REQUEST, "payload: give either");
    bad(PUB("\"topic\":\"/pk/dn/user/x\",\"payload_b64\":\"e!==\""), IPC_ERR_BAD_REQUEST,
        "payload_b64: is not valid base64");
    bad(PUB("\"topic\":\"/pk/dn/user/x\",\"payload\":\"x\",\"qos\":2"), IPC_ERR_BAD_REQUEST,
        "qos: must be 0 or 1");
    bad(PUB("\"topic\":\"/pk/dn/user/x\",\"payload\":"
            "\"0123456789012345678901234567890123456789012345678901234567890123456789\""),
        IPC_ERR_PAYLOAD_TOO_LARGE, "payload: 70 bytes");
    bad("{\"id\":1,\"op\":\"publish\",\"device\":\"pkdn\",\"topic\":\"/x\",\"payload\":\"\"}",
        IPC_ERR_BAD_REQUEST, "device: must be \"productKey/deviceName\"");
    bad("{\"id\":1,\"op\":\"publish\",\"device\":\"pk/d n\",\"topic\":\"/x\",\"payload\":\"\"}",
        IPC_ERR_BAD_REQUEST, "device: deviceName");
    bad("{\"id\":1,\"op\":\"publish\",\"device\":7,\"topic\":\"/x\",\"payload\":\"\"}",
        IPC_ERR_BAD_REQUEST, "device: must be a string");
    /* post_properties */
    bad("{\"id\":1,\"op\":\"post_properties\",\"device\":\"pk/dn\",\"params\":{}}",
        IPC_ERR_BAD_REQUEST, "params: must name at least one");
    bad("{\"id\":1,\"op\":\"post_properties\",\"device\":\"pk/dn\",\"params\":[1]}",
        IPC_ERR_BAD_REQUEST, "params: must be an object");
    bad("{\"id\":1,\"op\":\"post_properties\",\"device\":\"pk/dn\",\"params\":{\"a b\":1}}",
        IPC_ERR_BAD_REQUEST, "params: property \"a b\"");
    bad("{\"id\":1,\"op\":\"post_properties\",\"device\":\"pk/dn\",\"params\":{\"T\":{\"value\":1,"
        "\"time\":\"x\"}}}",
        IPC_ERR_BAD_REQUEST, "params.T.time");
    bad("{\"id\":1,\"op\":\"post_properties\",\"device\":\"pk/dn\",\"params\":{\"T\":1},"
        "\"timestamp\":1800000000000}",
        IPC_ERR_BAD_REQUEST, "timestamp: more than 24 h in the future");
    bad("{\"id\":1,\"op\":\"post_properties\",\"device\":\"pk/dn\",\"params\":{\"T\":1},\"ack\":1}",
        IPC_ERR_BAD_REQUEST, "ack: must be true or false");
    bad("{\"id\":1,\"op\":\"post_properties\",\"device\":\"pk/dn\",\"params\":{\"T\":\""
        "0123456789012345678901234567890123456789012345678901234567890123456789\"}}",
        IPC_ERR_PAYLOAD_TOO_LARGE, "params:");
    /* post_event */
    bad("{\"id\":1,\"op\":\"post_event\",\"device\":\"pk/dn\",\"params\":{}}", IPC_ERR_BAD_REQUEST,
        "event: missing");
    bad("{\"id\":1,\"op\":\"post_event\",\"device\":\"pk/dn\",\"event\":\"a/b\",\"params\":{}}",
        IPC_ERR_BAD_REQUEST, "event: identifiers");
    /* reply */
    bad("{\"id\":1,\"op\":\"reply\",\"device\":\"pk/dn\",\"code\":200}", IPC_ERR_BAD_REQUEST,
        "request_id: missing");
    bad("{\"id\":1,\"op\":\"reply\",\"device\":\"pk/dn\",\"request_id\":\"1\",\"code\":\"ok\"}",
        IPC_ERR_BAD_REQUEST, "code: must be an integer");
    bad("{\"id\":1,\"op\":\"reply\",\"device\":\"pk/dn\",\"request_id\":\"1\",\"code\":200,"
        "\"data\":3}",
        IPC_ERR_BAD_REQUEST, "data: must be an object");
    bad("{\"id\":1,\"op\":\"reply\",\"device\":\"pk/dn\",\"request_id\":\"1\",\"code\":200,"
        "\"data\":{},\"payload_b64\":\"AA==\"}",
        IPC_ERR_BAD_REQUEST, "payload_b64: give either data or payload_b64");
    bad("{\"id\":1,\"op\":\"reply\",\"device\":\"pk/dn\",\"request_id\":\"1\",\"code\":200,"
        "\"payload_b64\":\"!!\"}",
        IPC_ERR_BAD_REQUEST, "payload_b64: is not valid base64");
    /* watch */
    bad("{\"id\":1,\"op\":\"watch\",\"devices\":[\"nokey\"]}", IPC_ERR_BAD_REQUEST,
        "devices: element 0");
    bad("{\"id\":1,\"op\":\"watch\",\"topics\":[\"/a/b#\"]}", IPC_ERR_BAD_REQUEST,
        "topics: element 0");
    bad("{\"id\":1,\"op\":\"watch\",\"kinds\":[\"message\",\"gossip\"]}", IPC_ERR_BAD_REQUEST,
        "kinds: element 1");
    /* management */
    bad("{\"id\":1,\"op\":\"device\"}", IPC_ERR_BAD_REQUEST, "device: missing");
    bad("{\"id\":1,\"op\":\"add_device\",\"device\":\"pk/dn\"}", IPC_ERR_BAD_REQUEST,
        "device: must be a device object");
    /* the id is still echoed when a later field is wrong */
    struct ipc_request r;
    struct ipc_error e;
    CHECK_INT(parse("{\"id\":\"req-9\",\"op\":\"device\",\"device\":1}", &r, &e), -EINVAL);
    CHECK_STR(json_string_value(e.id), "req-9");
    ipc_error_free(&e);
}

struct lines {
    int n, too_long;
    char last[256];
};

static void on_line(void *ctx, const char *line, size_t len, bool too_long)
{
    struct lines *l = ctx;
    if (too_long)
        l->too_long++;
    else
        l->n++;
    snprintf(l->last, sizeof(l->last), "%.*s", (int)len, line);
}

static void test_framer(void)
{
    struct ipc_framer f;
    struct lines l = {0};
    ipc_framer_init(&f, 32);
    ipc_framer_feed(&f, "{\"a\":1}\n{\"b\"", 12, on_line, &l);
    CHECK_INT(l.n, 1);
    CHECK_STR(l.last, "{\"a\":1}");
    ipc_framer_feed(&f, ":2}\r\n\n  \n", 9, on_line, &l);
    CHECK_INT(l.n, 2); /* blank lines skipped, \r stripped */
    CHECK_STR(l.last, "{\"b\":2}");
    /* a long line, fed in pieces, never held whole */
    ipc_framer_feed(&f, "{\"id\":42,\"op\":\"publish\",", 24, on_line, &l);
    for (int i = 0; i < 1000; i++)
        ipc_framer_feed(&f, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", 40, on_line, &l);
    CHECK(f.cap <= 32);
    CHECK_INT(l.too_long, 0);
    ipc_framer_feed(&f, "yyy\n{\"c\":3}\n", 12, on_line, &l);
    CHECK_INT(l.too_long, 1);
    CHECK_INT(l.n, 3);
    CHECK_STR(l.last, "{\"c\":3}");
    json_t *id = ipc_request_peek_id("{\"id\":42,\"op\":\"publish\",xxxx", 28);
    CHECK(id && json_integer_value(id) == 42);
    json_decref(id);
    id = ipc_request_peek_id("{ \"id\" : \"abc\" ,", 16);
    CHECK_STR(json_string_value(id), "abc");
    json_decref(id);
    CHECK(ipc_request_peek_id("{\"op\":\"x\",\"id\":1", 16) == NULL);
    CHECK(ipc_request_peek_id("{\"id\":12", 8) == NULL); /* number may continue */
    ipc_framer_free(&f);
}

static void test_misc(void)
{
    CHECK(ipc_topic_match("/sys/+/+/thing/#", "/sys/pk/dn/thing/service/property/set"));
    CHECK(ipc_topic_match("/a/#", "/a"));
    CHECK(ipc_topic_match("#", "/a/b"));
    CHECK(ipc_topic_match("/a/+", "/a/"));
    CHECK(!ipc_topic_match("/a/+", "/a/b/c"));
    CHECK(!ipc_topic_match("/a/b", "/a/bc"));
    CHECK(!ipc_topic_match("/a/b/c", "/a/b"));

    size_t n;
    json_t *id = json_integer(5);
    char *s = ipc_response_ok(id, json_pack("{s:i}", "x", 1), &n);
    CHECK_STR(s, "{\"id\":5,\"ok\":true,\"result\":{\"x\":1}}\n");
    CHECK_INT(n, strlen(s));
    free(s);
    s = ipc_response_error(NULL, IPC_ERR_LINE_TOO_LONG, "too \"long\"\n", &n);
    CHECK_STR(s, "{\"id\":null,\"ok\":false,\"error\":{\"code\":\"line_too_long\",\"message\":"
                 "\"too \\\"long\\\"\\n\"}}\n");
    free(s);
    json_decref(id);

    CHECK_INT(ipc_err_from_errno(ALIGW_ENODEVICE), IPC_ERR_NO_DEVICE);
    CHECK_INT(ipc_err_from_errno(ALIGW_ESTOREFULL), IPC_ERR_STORE_FULL);
    CHECK_INT(ipc_err_from_errno(-ETIMEDOUT), IPC_ERR_TIMEOUT);
    CHECK_STR(ipc_err_name(IPC_ERR_PAYLOAD_TOO_LARGE), "payload_too_large");
    CHECK_STR(ipc_event_kind_name(IPC_EV_SERVICE_CALL), "service_call");

    struct ipc_device_key k;
    const char *why;
    CHECK_INT(ipc_device_key_parse("a1B2c3D4e5F/sensor_01@x.y:z", &k, &why), 0);
    CHECK_INT(ipc_device_key_parse("/dn", &k, &why), -EINVAL);
    CHECK_INT(ipc_device_key_parse("pk/", &k, &why), -EINVAL);
    CHECK_INT(ipc_device_key_parse("pk/a/b", &k, &why), -EINVAL);
}

/* A plugin's request is bound to its device: set when the op takes one, refused for another. */
static void test_bind_device(void)
{
    json_t *j = json_pack("{s:s}", "op", "device");
    CHECK_INT(ipc_request_bind_device(j, "pk/dn"), 0);
    CHECK_STR(json_string_value(json_object_get(j, "device")), "pk/dn");
    CHECK_INT(ipc_request_bind_device(j, "pk/dn"), 0); /* its own device, given */
    CHECK_INT(ipc_request_bind_device(j, "pk/other"), -EPERM);
    json_decref(j);
    j = json_pack("{s:s}", "op", "status"); /* no device field: left alone */
    CHECK_INT(ipc_request_bind_device(j, "pk/dn"), 0);
    CHECK(json_object_get(j, "device") == NULL);
    json_decref(j);
    j = json_pack("{s:s,s:i}", "op", "publish", "device", 3);
    CHECK_INT(ipc_request_bind_device(j, "pk/dn"), -EPERM);
    json_decref(j);
    j = json_pack("{s:s}", "op", "no_such_op");
    CHECK_INT(ipc_request_bind_device(j, "pk/dn"), 0);
    CHECK(json_object_get(j, "device") == NULL);
    json_decref(j);
}

int main(void)
{
    test_bind_device();
    test_valid();
    test_invalid();
    test_framer();
    test_misc();
    return check_done();
}
