/*
 * errors: aligw's error space. Functions return 0 or a negative errno; conditions errno has no
 * name for get a code in a reserved range below -4000, all printable by aligw_strerror().
 * SQLite, Paho, OpenSSL and libcurl codes are translated where they enter our code.
 */
#ifndef ALIGW_ERRORS_H
#define ALIGW_ERRORS_H

enum {
    ALIGW_EAUTH = -4001,      /* the platform refused our credentials */
    ALIGW_EKICKED = -4002,    /* another login of the same device took the session */
    ALIGW_ESTOREFULL = -4003, /* the outbox reached its byte cap (reject-new) or the disk is full */
    ALIGW_ECORRUPT = -4004,   /* a database file is damaged */
    ALIGW_EPROTO = -4005,     /* the peer broke the protocol (bad CONNACK, bad JSON reply) */
    ALIGW_EREFUSED = -4006,   /* the platform refused a request (subscribe, registration) */
    ALIGW_EACTIVE = -4007, /* registration refused: device already active, reset it in the cloud */
    ALIGW_ECONFIG = -4008, /* invalid configuration */
    ALIGW_EPAHO = -4009,   /* Paho returned an error we have no better name for */
    ALIGW_ENODEVICE = -4010, /* no such device */
    ALIGW_EPLUGIN = -4011,   /* a plugin could not be loaded or refused */
    ALIGW_ETLS = -4012,      /* TLS handshake or server certificate check failed */
};

/* A message for 0, a negative errno or an ALIGW_E* code. Never NULL. */
const char *aligw_strerror(int err);

#endif
