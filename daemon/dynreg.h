/*
 * dynreg: one-product-one-secret registration. The HTTPS variant POSTs the signed form to
 * /auth/register/device with libcurl on a libuv worker thread (never on the loop) and reports
 * back on the loop; the MQTT variants (register, regnwl) run over an ordinary session driven by
 * devices.c, and only their reply payloads are parsed here. What the platform returned is handed
 * to the caller, which stores it durably before the first login.
 */
#ifndef ALIGW_DYNREG_H
#define ALIGW_DYNREG_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "sign.h"

struct dynreg_result {
    char device_secret[80]; /* register / HTTPS */
    char client_id[80];     /* regnwl */
    char device_token[160]; /* regnwl */
    int platform_code;      /* the reply's code when refused */
    char message[128];      /* the reply's message when refused */
};

struct dynreg_request {
    const char *url; /* https://host:port/auth/register/device */
    const char *ca_file;
    bool verify_hostname;
    const char *product_key, *device_name, *product_secret;
    enum sign_method method;
};

/*
 * Called on the loop with 0 and the result, or a negative error: ALIGW_EACTIVE (already active:
 * needs a reset on the platform), ALIGW_EAUTH (sign refused), ALIGW_EREFUSED (other refusal,
 * code and message in r), -ECONNREFUSED / -ETIMEDOUT / ALIGW_EPROTO for transport trouble.
 */
typedef void (*dynreg_cb)(void *arg, int status, const struct dynreg_result *r);

/* Starts an HTTPS registration. 0 (cb follows exactly once) or a negative error (no cb). */
int dynreg_https_start(uv_loop_t *loop, const struct dynreg_request *req, dynreg_cb cb, void *arg);

/* Parses the HTTPS reply body. 0 with device_secret set, or an error as for dynreg_cb. */
int dynreg_parse_https_reply(const char *body, struct dynreg_result *out);

/*
 * Parses what the platform pushes on /ext/register (device_secret) or /ext/regnwl (client_id and
 * device_token). 0 or ALIGW_EPROTO.
 */
int dynreg_parse_mqtt_reply(const char *topic, const char *payload, size_t len,
                            struct dynreg_result *out);

/* A random string for the sign (hex of 8 random bytes). */
void dynreg_random(char out[17]);

#endif
