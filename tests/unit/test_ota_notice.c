/*
 * Unit tests for ota_notice: every field variant of the platform's OTA messages (code "1000"
 * and 200, sign and md5, MD5/Md5/SHA256/Sha256, module, extData, isDiff, files), the two
 * "nothing to do" answers (a get_reply with empty data, the MQTT stream variant) and each bad
 * input refused with the right progress step.
 */
#include "check.h"

#include <errno.h>
#include <string.h>

#include "ota_notice.h"

#define MD5 "93230C3BDE425A9D7984A594AC55EA1E"
#define SHA "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

static int parse(const char *s, enum ota_notice_kind k, struct ota_notice *n, char *err)
{
    return ota_notice_parse(s, strlen(s), k, n, err, 200);
}

static void variants(void)
{
    struct ota_notice n;
    char err[200];

    /* the documented push: code "1000", sign + md5, MD5, module, extData, isDiff */
    CHECK_INT(
        parse("{\"code\":\"1000\",\"data\":{\"size\":432945,\"version\":\"2.0.0\",\"isDiff\":1,"
              "\"url\":\"https://h/f\",\"md5\":\"" MD5 "\",\"sign\":\"" MD5 "\","
              "\"signMethod\":\"MD5\",\"module\":\"MCU\",\"extData\":{\"a\":[1]}},"
              "\"id\":1626969597470,\"message\":\"success\"}",
              OTA_NOTICE_PUSH, &n, err),
        0);
    CHECK_STR(n.version, "2.0.0");
    CHECK_STR(n.module, "MCU");
    CHECK(n.is_diff);
    CHECK_STR(n.ext_data, "{\"a\":[1]}");
    CHECK_INT(n.n_files, 1);
    CHECK_INT(n.total_size, 432945);
    CHECK_INT(n.files[0].sign_method, OTA_SIGN_MD5);
    CHECK_STR(n.files[0].digest, "93230c3bde425a9d7984a594ac55ea1e"); /* lowercased */
    CHECK_STR(n.msg_id, "1626969597470");
    ota_notice_free(&n);

    /* code 200, Sha256, string size, module "default" = the default module */
    CHECK_INT(
        parse("{\"code\":200,\"data\":{\"size\":\"10\",\"version\":\"3\",\"url\":\"https://h/f\","
              "\"sign\":\"" SHA "\",\"signMethod\":\"Sha256\",\"module\":\"default\"}}",
              OTA_NOTICE_PUSH, &n, err),
        0);
    CHECK_INT(n.files[0].sign_method, OTA_SIGN_SHA256);
    CHECK_STR(n.module, "");
    CHECK_INT(n.total_size, 10);
    ota_notice_free(&n);

    /* iotkit 3: md5 only, no signMethod */
    CHECK_INT(
        parse("{\"code\":\"1000\",\"data\":{\"size\":5,\"version\":\"4\",\"url\":\"http://h/f\","
              "\"md5\":\"" MD5 "\"}}",
              OTA_NOTICE_PUSH, &n, err),
        0);
    CHECK_INT(n.files[0].sign_method, OTA_SIGN_MD5);
    ota_notice_free(&n);

    /* multi-file, both spellings of the file fields */
    CHECK_INT(
        parse("{\"code\":\"1000\",\"data\":{\"version\":\"5\",\"signMethod\":\"Md5\",\"files\":["
              "{\"fileName\":\"a\",\"fileSize\":100,\"fileUrl\":\"https://h/a\",\"fileMd5\":\"" MD5
              "\"},{\"name\":\"b\",\"size\":200,\"url\":\"https://h/b\",\"sign\":\"" MD5 "\"}]}}",
              OTA_NOTICE_PUSH, &n, err),
        0);
    CHECK_INT(n.n_files, 2);
    CHECK_INT(n.total_size, 300);
    CHECK_STR(n.files[0].name, "a");
    CHECK_STR(n.files[1].url, "https://h/b");
    ota_notice_free(&n);

    /* a get_reply with a job, and one with none */
    CHECK_INT(parse("{\"id\":\"9\",\"code\":200,\"data\":{\"size\":1,\"version\":\"6\",\"url\":"
                    "\"https://h/f\",\"sign\":\"" SHA "\",\"signMethod\":\"SHA256\"}}",
                    OTA_NOTICE_GET_REPLY, &n, err),
              0);
    ota_notice_free(&n);
    CHECK_INT(parse("{\"id\":\"10\",\"code\":200,\"data\":{}}", OTA_NOTICE_GET_REPLY, &n, err),
              -ENOENT);
    CHECK_STR(n.msg_id, "10");
    /* the MQTT stream download */
    CHECK_INT(
        parse("{\"code\":\"1000\",\"data\":{\"size\":1,\"version\":\"7\",\"dProtocol\":\"mqtt\","
              "\"streamId\":1,\"streamFileId\":1}}",
              OTA_NOTICE_PUSH, &n, err),
        -ENOTSUP);
}

static void refusals(void)
{
    static const struct {
        const char *json;
        int step;
        const char *why;
    } bad[] = {
        {"[1]", -1, "not a JSON object"},
        {"{\"code\":\"1000\"", -1, "bad JSON"},
        {"{\"code\":\"6100\",\"data\":{}}", -1, "code: 6100"},
        {"{\"code\":\"1000\"}", -1, "data: missing"},
        {"{\"code\":\"1000\",\"data\":{\"size\":1,\"url\":\"https://h\",\"sign\":\"" MD5 "\"}}", -1,
         "data.version"},
        {"{\"code\":\"1000\",\"data\":{\"version\":\"1\",\"size\":1,\"url\":\"https://"
         "h\",\"sign\":\"" MD5 "\",\"signMethod\":\"CRC\"}}",
         -3, "signMethod"},
        {"{\"code\":\"1000\",\"data\":{\"version\":\"1\",\"size\":1,\"url\":\"https://"
         "h\",\"sign\":\"" MD5 "\",\"signMethod\":\"SHA256\"}}",
         -3, "64 hex digits"},
        {"{\"code\":\"1000\",\"data\":{\"version\":\"1\",\"size\":1,\"url\":\"https://"
         "h\",\"sign\":\"z"
         "3230c3bde425a9d7984a594ac55ea1e\",\"signMethod\":\"Md5\"}}",
         -3, "not hexadecimal"},
        {"{\"code\":\"1000\",\"data\":{\"version\":\"1\",\"size\":0,\"url\":\"https://"
         "h\",\"md5\":\"" MD5 "\"}}",
         -2, "size"},
        {"{\"code\":\"1000\",\"data\":{\"version\":\"1\",\"size\":1,\"url\":\"ftp://"
         "h\",\"md5\":\"" MD5 "\"}}",
         -2, "not an http(s) URL"},
        {"{\"code\":\"1000\",\"data\":{\"version\":\"1\",\"module\":\"M\",\"size\":1,\"url\":"
         "\"https://h\"}}",
         -3, "sign: missing"},
        {"{\"code\":\"1000\",\"data\":{\"version\":\"1\",\"files\":[]}}", -1, "data.files"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct ota_notice n;
        char err[200] = "";
        int rc = parse(bad[i].json, OTA_NOTICE_PUSH, &n, err);
        CHECK_INT(rc, -EINVAL);
        CHECK_INT(n.fail_step, bad[i].step);
        if (!strstr(err, bad[i].why))
            fprintf(stderr, "case %zu: \"%s\" lacks \"%s\"\n", i, err, bad[i].why);
        CHECK(strstr(err, bad[i].why) != NULL);
    }
    /* the module of a refused notice is kept, to report the failure for it */
    struct ota_notice n;
    char err[200];
    parse("{\"code\":\"1000\",\"data\":{\"version\":\"1\",\"module\":\"M\",\"size\":1,\"url\":"
          "\"https://h\"}}",
          OTA_NOTICE_PUSH, &n, err);
    CHECK_STR(n.module, "M");
}

int main(void)
{
    variants();
    refusals();
    return check_done();
}
