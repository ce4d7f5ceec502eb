/*
 * Unit tests for rconfig_notice: the documented push and get_reply, Md5 and Sha256 in any case,
 * "nothing configured" and the platform's refusals, the 64 KB limit, and each bad field refused
 * with its name.
 */
#include "check.h"

#include <errno.h>
#include <string.h>

#include "rconfig_notice.h"

#define SHA "9F86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

static int push(const char *params, struct rconfig_notice *n, char *err)
{
    char buf[1024];
    snprintf(buf, sizeof(buf), "{\"id\":\"123\",\"version\":\"1.0\",\"params\":%s}", params);
    return rconfig_notice_parse(RCONFIG_PUSH, buf, strlen(buf), n, err, 200);
}

int main(void)
{
    struct rconfig_notice n;
    char err[200];
    const char *r;

    CHECK_INT(push("{\"configId\":\"cfg-1\",\"configSize\":1234,\"sign\":\"" SHA "\","
                   "\"signMethod\":\"Sha256\",\"url\":\"https://h/c\",\"getType\":\"file\"}",
                   &n, err),
              0);
    CHECK_STR(n.msg_id, "123");
    CHECK_STR(n.config_id, "cfg-1");
    CHECK_INT((int)n.size, 1234);
    CHECK_INT(n.sign_method, RCONFIG_SIGN_SHA256);
    CHECK_STR(n.digest, "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
    CHECK_STR(n.url, "https://h/c");

    r = "{\"id\":7,\"code\":200,\"data\":{\"configId\":\"a\",\"configSize\":65536,\"sign\":"
        "\"93230C3BDE425A9D7984A594AC55EA1E\",\"signMethod\":\"MD5\",\"url\":\"http://h/x\"}}";
    CHECK_INT(rconfig_notice_parse(RCONFIG_GET_REPLY, r, strlen(r), &n, err, sizeof(err)), 0);
    CHECK_STR(n.msg_id, "7");
    CHECK_INT(n.sign_method, RCONFIG_SIGN_MD5);
    CHECK_STR(n.digest, "93230c3bde425a9d7984a594ac55ea1e");

    r = "{\"id\":\"8\",\"code\":200,\"data\":{}}";
    CHECK_INT(rconfig_notice_parse(RCONFIG_GET_REPLY, r, strlen(r), &n, err, sizeof(err)), -ENOENT);
    CHECK_STR(n.msg_id, "8");
    r = "{\"id\":\"9\",\"code\":6713,\"message\":\"nope\"}";
    CHECK_INT(rconfig_notice_parse(RCONFIG_GET_REPLY, r, strlen(r), &n, err, sizeof(err)),
              -EREMOTE);
    CHECK_INT(n.code, 6713);
    CHECK(strstr(err, "6713: nope") != NULL);

    /* refusals, each naming its field; the id is still read so the push can be answered */
    CHECK_INT(push("{\"configId\":\"c\",\"configSize\":65537,\"sign\":\"" SHA "\","
                   "\"signMethod\":\"Sha256\",\"url\":\"https://h/c\"}",
                   &n, err),
              -EFBIG);
    CHECK_STR(n.msg_id, "123");
    CHECK(strstr(err, "configSize") != NULL);
    static const struct {
        const char *params, *field;
    } bad[] = {
        {"{\"configId\":\"c/d\",\"configSize\":1,\"sign\":\"" SHA "\",\"signMethod\":\"Sha256\","
         "\"url\":\"https://h\"}",
         "configId"},
        {"{\"configId\":\"c\",\"configSize\":0,\"sign\":\"" SHA "\",\"signMethod\":\"Sha256\","
         "\"url\":\"https://h\"}",
         "configSize"},
        {"{\"configId\":\"c\",\"configSize\":1,\"sign\":\"" SHA "\",\"signMethod\":\"crc\","
         "\"url\":\"https://h\"}",
         "signMethod"},
        {"{\"configId\":\"c\",\"configSize\":1,\"sign\":\"abc\",\"signMethod\":\"Sha256\","
         "\"url\":\"https://h\"}",
         "sign"},
        {"{\"configId\":\"c\",\"configSize\":1,\"sign\":\"" SHA "\",\"signMethod\":\"Sha256\","
         "\"url\":\"ftp://h\"}",
         "url"},
        {"{\"configId\":\"c\",\"configSize\":1,\"sign\":\"" SHA "\",\"signMethod\":\"Sha256\","
         "\"url\":\"https://h\",\"getType\":\"raw\"}",
         "getType"},
        {"[1]", "params"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK_INT(push(bad[i].params, &n, err), -EINVAL);
        CHECK(strstr(err, bad[i].field) != NULL);
    }
    CHECK_INT(rconfig_notice_parse(RCONFIG_PUSH, "\xff", 1, &n, err, sizeof(err)), -EINVAL);
    CHECK_INT(rconfig_notice_parse(RCONFIG_PUSH, NULL, 0, &n, err, sizeof(err)), -EINVAL);
    return check_done();
}
