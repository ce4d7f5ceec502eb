/*
 * sign: Aliyun IoT credential construction (see sign.h). Every function writes into caller-owned
 * buffers and reports truncation instead of silently cutting a credential short.
 */
#include "sign.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

static const char *const method_names[] = {"hmacsha256", "hmacsha1", "hmacmd5"};

int sign_method_parse(const char *name, enum sign_method *out)
{
    for (size_t i = 0; name && i < sizeof(method_names) / sizeof(method_names[0]); i++) {
        if (strcasecmp(name, method_names[i]) == 0) {
            *out = (enum sign_method)i;
            return 0;
        }
    }
    return -EINVAL;
}

const char *sign_method_name(enum sign_method m)
{
    return (unsigned)m < 3 ? method_names[m] : "?";
}

int sign_hmac_hex(enum sign_method m, const char *key, const char *msg, size_t msglen,
                  char out[SIGN_HEX_MAX])
{
    const EVP_MD *md = m == SIGN_HMACSHA256 ? EVP_sha256()
                       : m == SIGN_HMACSHA1 ? EVP_sha1()
                       : m == SIGN_HMACMD5  ? EVP_md5()
                                            : NULL;
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    static const char hex[] = "0123456789ABCDEF";

    if (!md || !key || !msg)
        return -EINVAL;
    if (!HMAC(md, key, (int)strlen(key), (const unsigned char *)msg, msglen, mac, &maclen))
        return -EINVAL;
    for (unsigned int i = 0; i < maclen; i++) {
        out[2 * i] = hex[mac[i] >> 4];
        out[2 * i + 1] = hex[mac[i] & 15];
    }
    out[2 * maclen] = '\0';
    return 0;
}

/* snprintf that reports truncation as -ENAMETOOLONG. */
static int fmt(char *buf, size_t size, const char *f, ...) __attribute__((format(printf, 3, 4)));
static int fmt(char *buf, size_t size, const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    int n = vsnprintf(buf, size, f, ap);
    va_end(ap);
    return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

static int empty(const char *s)
{
    return !s || !*s;
}

int sign_mqtt_login(const struct sign_login *in, struct sign_creds *out)
{
    char base[160], msg[512];
    int has_ts = !empty(in->timestamp);
    int rc;

    if (empty(in->product_key) || empty(in->device_name) || empty(in->device_secret))
        return -EINVAL;
    if (empty(in->client_id))
        rc = fmt(base, sizeof(base), "%s.%s", in->product_key, in->device_name);
    else
        rc = fmt(base, sizeof(base), "%s", in->client_id);
    if (rc < 0)
        return rc;
    if (strchr(base, '|'))
        return -EINVAL;

    rc = fmt(msg, sizeof(msg), "clientId%sdeviceName%sproductKey%s%s%s", base, in->device_name,
             in->product_key, has_ts ? "timestamp" : "", has_ts ? in->timestamp : "");
    if (rc < 0 ||
        (rc = sign_hmac_hex(in->method, in->device_secret, msg, strlen(msg), out->password)) < 0)
        return rc;
    rc = fmt(out->client_id, sizeof(out->client_id), "%s|securemode=%d,signmethod=%s%s%s%s%s|",
             base, in->securemode, sign_method_name(in->method), has_ts ? ",timestamp=" : "",
             has_ts ? in->timestamp : "", empty(in->ext) ? "" : ",", empty(in->ext) ? "" : in->ext);
    if (rc < 0)
        return rc;
    return fmt(out->username, sizeof(out->username), "%s&%s", in->device_name, in->product_key);
}

int sign_register(enum sign_method m, const char *product_secret, const char *product_key,
                  const char *device_name, const char *random, char out[SIGN_HEX_MAX])
{
    char msg[256];
    int rc;

    if (empty(product_secret) || empty(product_key) || empty(device_name) || empty(random))
        return -EINVAL;
    rc =
        fmt(msg, sizeof(msg), "deviceName%sproductKey%srandom%s", device_name, product_key, random);
    if (rc < 0)
        return rc;
    return sign_hmac_hex(m, product_secret, msg, strlen(msg), out);
}

int sign_mqtt_register(const char *product_key, const char *device_name, const char *product_secret,
                       const char *auth_type, const char *random, enum sign_method m,
                       const char *instance_id, struct sign_creds *out)
{
    int rc = sign_register(m, product_secret, product_key, device_name, random, out->password);

    if (rc < 0)
        return rc;
    if (empty(auth_type))
        return -EINVAL;
    rc = fmt(out->client_id, sizeof(out->client_id),
             "%s.%s|securemode=%s,authType=%s,random=%s,signmethod=%s%s%s|", product_key,
             device_name, empty(instance_id) ? "2" : "-2", auth_type, random, sign_method_name(m),
             empty(instance_id) ? "" : ",instanceId=", empty(instance_id) ? "" : instance_id);
    if (rc < 0)
        return rc;
    return fmt(out->username, sizeof(out->username), "%s&%s", device_name, product_key);
}

int sign_mqtt_connwl(const char *product_key, const char *device_name, const char *client_id,
                     const char *device_token, const char *ext, struct sign_creds *out)
{
    int rc;

    if (empty(product_key) || empty(device_name) || empty(client_id) || empty(device_token))
        return -EINVAL;
    rc = fmt(out->client_id, sizeof(out->client_id), "%s|authType=connwl,securemode=-2,_ss=1%s%s|",
             client_id, empty(ext) ? "" : ",", empty(ext) ? "" : ext);
    if (rc < 0 || (rc = fmt(out->password, sizeof(out->password), "%s", device_token)) < 0)
        return rc;
    return fmt(out->username, sizeof(out->username), "%s&%s", device_name, product_key);
}
