/*
 * sign: Aliyun IoT credentials. Builds the MQTT clientId, username and password a device presents
 * for "one device, one secret" logins (securemode 2/3, hmacsha256/sha1/md5, with or without a
 * timestamp), the sign used for "one product, one secret" registration over HTTPS and MQTT, and
 * the MQTT credentials for the registration and the registration-free (connwl) logins. Pure
 * functions over OpenSSL's HMAC: no state, thread-safe, no logging (secrets never leave here
 * except in the output buffers the caller owns). See shared/reference/aliyun-protocol.md §1-§2.
 */
#ifndef ALIGW_SIGN_H
#define ALIGW_SIGN_H

#include <stddef.h>

enum sign_method { SIGN_HMACSHA256 = 0, SIGN_HMACSHA1, SIGN_HMACMD5 };

/* Longest hex sign (SHA-256) plus NUL. */
#define SIGN_HEX_MAX 65

struct sign_creds {
    char client_id[320]; /* "clientId|k=v,...|" */
    char username[160];  /* "deviceName&productKey" */
    char password[160];  /* upper-case hex HMAC, or the deviceToken for connwl */
};

/* Parses "hmacsha256" / "hmacsha1" / "hmacmd5" (case-insensitive). 0 or -EINVAL. */
int sign_method_parse(const char *name, enum sign_method *out);
const char *sign_method_name(enum sign_method m);

/* Upper-case hex HMAC of msg under key. out must hold SIGN_HEX_MAX bytes. 0 or -EINVAL. */
int sign_hmac_hex(enum sign_method m, const char *key, const char *msg, size_t msglen,
                  char out[SIGN_HEX_MAX]);

/*
 * Credentials for a one-device-one-secret login. client_id NULL means "${pk}.${dn}"; timestamp
 * NULL or "" leaves the timestamp out of both the clientId and the signed text; ext (may be
 * NULL) is appended to the clientId's k=v list unsigned, e.g. "_v=aligw-0.1". 0, or -EINVAL when
 * a field is missing or -ENAMETOOLONG when the result does not fit.
 */
struct sign_login {
    const char *product_key, *device_name, *device_secret;
    const char *client_id;
    enum sign_method method;
    int securemode;
    const char *timestamp;
    const char *ext;
};
int sign_mqtt_login(const struct sign_login *in, struct sign_creds *out);

/* The registration sign: hex(HMAC(productSecret, "deviceName"dn"productKey"pk"random"random)). */
int sign_register(enum sign_method m, const char *product_secret, const char *product_key,
                  const char *device_name, const char *random, char out[SIGN_HEX_MAX]);

/*
 * MQTT dynamic registration credentials. auth_type is "register" or "regnwl"; instance_id NULL
 * for legacy instances (securemode=2), otherwise securemode=-2 and instanceId is added.
 */
int sign_mqtt_register(const char *product_key, const char *device_name, const char *product_secret,
                       const char *auth_type, const char *random, enum sign_method m,
                       const char *instance_id, struct sign_creds *out);

/* Registration-free login with the clientId and deviceToken the platform returned. */
int sign_mqtt_connwl(const char *product_key, const char *device_name, const char *client_id,
                     const char *device_token, const char *ext, struct sign_creds *out);

#endif
