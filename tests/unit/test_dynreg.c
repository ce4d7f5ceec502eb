/* dynreg: parsing what the platform answers to a registration (HTTPS body, MQTT pushes). */
#include "check.h"
#include "dynreg.h"
#include "errors.h"

static void https_replies(void)
{
    struct dynreg_result r;
    CHECK_INT(
        dynreg_parse_https_reply("{\"code\":200,\"data\":{\"productKey\":\"pk\",\"deviceName\":"
                                 "\"dn\",\"deviceSecret\":\"S3cr3t\"},\"message\":\"success\"}",
                                 &r),
        0);
    CHECK_STR(r.device_secret, "S3cr3t");
    CHECK_INT(dynreg_parse_https_reply("{\"code\":6289,\"message\":\"device already active\"}", &r),
              ALIGW_EACTIVE);
    CHECK_INT(r.platform_code, 6289);
    CHECK_STR(r.message, "device already active");
    CHECK_INT(dynreg_parse_https_reply("{\"code\":6600,\"message\":\"sign check failed\"}", &r),
              ALIGW_EAUTH);
    CHECK_INT(dynreg_parse_https_reply("{\"code\":\"6288\",\"message\":\"not enabled\"}", &r),
              ALIGW_EREFUSED);
    CHECK_INT(r.platform_code, 6288);
    /* 200 without a secret, a secret too long, not JSON, not an object: protocol errors */
    CHECK_INT(dynreg_parse_https_reply("{\"code\":200,\"data\":{}}", &r), ALIGW_EPROTO);
    CHECK_INT(dynreg_parse_https_reply("<html>502</html>", &r), ALIGW_EPROTO);
    CHECK_INT(dynreg_parse_https_reply("[1,2]", &r), ALIGW_EPROTO);
    char big[300];
    snprintf(big, sizeof(big), "{\"code\":200,\"data\":{\"deviceSecret\":\"%0200d\"}}", 7);
    CHECK_INT(dynreg_parse_https_reply(big, &r), ALIGW_EPROTO);
}

static void mqtt_replies(void)
{
    struct dynreg_result r;
    const char *reg = "{\"productKey\":\"pk\",\"deviceName\":\"dn\",\"deviceSecret\":\"abc\"}";
    CHECK_INT(dynreg_parse_mqtt_reply("/ext/register", reg, strlen(reg), &r), 0);
    CHECK_STR(r.device_secret, "abc");
    const char *nwl = "{\"clientId\":\"cid1\",\"productKey\":\"pk\",\"deviceName\":\"dn\","
                      "\"deviceToken\":\"^1^1700000000000^abc\"}";
    CHECK_INT(dynreg_parse_mqtt_reply("/ext/regnwl", nwl, strlen(nwl), &r), 0);
    CHECK_STR(r.client_id, "cid1");
    CHECK_STR(r.device_token, "^1^1700000000000^abc");
    CHECK_INT(dynreg_parse_mqtt_reply("/ext/regnwl", reg, strlen(reg), &r), ALIGW_EPROTO);
    CHECK_INT(dynreg_parse_mqtt_reply("/ext/other", reg, strlen(reg), &r), ALIGW_EPROTO);
    CHECK_INT(dynreg_parse_mqtt_reply("/ext/register", "{\"deviceSecret\":", 16, &r), ALIGW_EPROTO);
    /* not NUL-terminated input is read only within len */
    char buf[64];
    memcpy(buf, "{\"deviceSecret\":\"xy\"}garbage", 28);
    CHECK_INT(dynreg_parse_mqtt_reply("/ext/register", buf, 21, &r), 0);
    CHECK_STR(r.device_secret, "xy");
}

static void random_is_hex_and_varies(void)
{
    char a[17], b[17];
    dynreg_random(a);
    dynreg_random(b);
    CHECK_INT(strlen(a), 16);
    CHECK(strspn(a, "0123456789abcdef") == 16);
    CHECK(strcmp(a, b) != 0);
}

int main(void)
{
    https_replies();
    mqtt_replies();
    random_is_hex_and_varies();
    return check_done();
}
