/* Signing vectors from shared/reference/aliyun-protocol.md §1.4 and §2.1. */
#include "check.h"
#include "sign.h"

#include <errno.h>

static void doc_vector(void)
{
    struct sign_creds c;
    struct sign_login in = {.product_key = "pk",
                            .device_name = "device",
                            .device_secret = "secret",
                            .client_id = "12345",
                            .method = SIGN_HMACSHA1,
                            .securemode = 3,
                            .timestamp = "789"};
    CHECK_INT(sign_mqtt_login(&in, &c), 0);
    CHECK_STR(c.client_id, "12345|securemode=3,signmethod=hmacsha1,timestamp=789|");
    CHECK_STR(c.username, "device&pk");
    CHECK_STR(c.password, "FAFD82A3D602B37FB0FA8B7892F24A477F851A14");
}

static void sdk_vectors(void)
{
    static const struct {
        enum sign_method m;
        const char *pw;
    } v[] = {
        {SIGN_HMACSHA256, "B8CE8F1D706DD3C61D13BFD9855DEF7E321B785084CA9C93F0169A2B46785DD2"},
        {SIGN_HMACSHA1, "B2C9AF96273C92315CC9EB431ED90573A6850105"},
        {SIGN_HMACMD5, "7E2C52953F3DCFBBC313DE587AD83F74"},
    };
    for (size_t i = 0; i < 3; i++) {
        struct sign_creds c;
        struct sign_login in = {.product_key = "a1X2bEnP82z",
                                .device_name = "example1",
                                .device_secret = "ga7XA6KdlEeiPXQPpRbAjOZXwG8ydgSe",
                                .method = v[i].m,
                                .securemode = 2,
                                .timestamp = "2524608000000"};
        CHECK_INT(sign_mqtt_login(&in, &c), 0);
        CHECK_STR(c.password, v[i].pw);
        CHECK_STR(c.username, "example1&a1X2bEnP82z");
    }
    struct sign_creds c;
    struct sign_login in = {.product_key = "a1X2bEnP82z",
                            .device_name = "example1",
                            .device_secret = "ga7XA6KdlEeiPXQPpRbAjOZXwG8ydgSe",
                            .method = SIGN_HMACSHA256,
                            .securemode = 2,
                            .timestamp = "2524608000000"};
    CHECK_INT(sign_mqtt_login(&in, &c), 0);
    /* §1.4 #3: the minimal clientId is 80 bytes. */
    CHECK_STR(c.client_id, "a1X2bEnP82z.example1|securemode=2,signmethod=hmacsha256,"
                           "timestamp=2524608000000|");
    CHECK_INT(strlen(c.client_id), 80);
}

static void without_timestamp(void)
{
    /* No timestamp: neither in the clientId nor in the signed text. */
    struct sign_creds c;
    char expect[SIGN_HEX_MAX];
    const char *msg = "clientIda1X2bEnP82z.example1deviceNameexample1productKeya1X2bEnP82z";
    struct sign_login in = {.product_key = "a1X2bEnP82z",
                            .device_name = "example1",
                            .device_secret = "ga7XA6KdlEeiPXQPpRbAjOZXwG8ydgSe",
                            .method = SIGN_HMACSHA256,
                            .securemode = 2,
                            .ext = "_v=aligw"};
    CHECK_INT(sign_mqtt_login(&in, &c), 0);
    CHECK_INT(sign_hmac_hex(SIGN_HMACSHA256, in.device_secret, msg, strlen(msg), expect), 0);
    CHECK_STR(c.password, expect);
    CHECK_STR(c.client_id, "a1X2bEnP82z.example1|securemode=2,signmethod=hmacsha256,_v=aligw|");
    CHECK(strcmp(c.password, "B8CE8F1D706DD3C61D13BFD9855DEF7E321B785084CA9C93F0169A2B46785DD2"));
}

static void register_vector(void)
{
    char out[SIGN_HEX_MAX];
    CHECK_INT(sign_register(SIGN_HMACSHA256, "7jluWm1zql7bt8qK", "a1X2bEnP82z", "example1",
                            "8Ygb7ULYh53B6OA", out),
              0);
    CHECK_STR(out, "37C9D9C4DCAB7FC75D65D25547A4E11080E59DD82F3255AAFC90D83498480E88");

    struct sign_creds c;
    CHECK_INT(sign_mqtt_register("a1X2bEnP82z", "example1", "7jluWm1zql7bt8qK", "register",
                                 "8Ygb7ULYh53B6OA", SIGN_HMACSHA256, NULL, &c),
              0);
    CHECK_STR(c.password, "37C9D9C4DCAB7FC75D65D25547A4E11080E59DD82F3255AAFC90D83498480E88");
    CHECK_STR(c.client_id, "a1X2bEnP82z.example1|securemode=2,authType=register,"
                           "random=8Ygb7ULYh53B6OA,signmethod=hmacsha256|");
    CHECK_INT(sign_mqtt_register("pk", "dn", "ps", "regnwl", "1", SIGN_HMACSHA256, "iot-06z", &c),
              0);
    CHECK_STR(
        c.client_id,
        "pk.dn|securemode=-2,authType=regnwl,random=1,signmethod=hmacsha256,instanceId=iot-06z|");

    CHECK_INT(sign_mqtt_connwl("pk", "dn", "cid123", "^1^1700000000000^abc", NULL, &c), 0);
    CHECK_STR(c.client_id, "cid123|authType=connwl,securemode=-2,_ss=1|");
    CHECK_STR(c.password, "^1^1700000000000^abc");
}

static void bad_input(void)
{
    struct sign_creds c;
    enum sign_method m;
    struct sign_login in = {.product_key = "pk", .device_name = "dn", .device_secret = ""};
    CHECK_INT(sign_mqtt_login(&in, &c), -EINVAL);
    in.device_secret = "s";
    in.client_id = "a|b";
    CHECK_INT(sign_mqtt_login(&in, &c), -EINVAL);
    char longid[400];
    memset(longid, 'x', sizeof(longid) - 1);
    longid[sizeof(longid) - 1] = 0;
    in.client_id = longid;
    CHECK_INT(sign_mqtt_login(&in, &c), -ENAMETOOLONG);
    CHECK_INT(sign_method_parse("HMACSHA1", &m), 0);
    CHECK_INT(m, SIGN_HMACSHA1);
    CHECK_INT(sign_method_parse("sha512", &m), -EINVAL);
}

int main(void)
{
    doc_vector();
    sdk_vectors();
    without_timestamp();
    register_vector();
    bad_input();
    return check_done();
}
