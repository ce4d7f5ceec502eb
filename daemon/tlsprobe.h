/*
 * tlsprobe: finds out why a TLS connection to an MQTT endpoint failed. Paho reports every
 * failure before CONNACK as "TCP/TLS connect failure", and checks the host name after the
 * handshake without saying so, so a wrong CA file, a wrong host name or a captive portal looked
 * like a closed port. A probe opens its own TCP connection and TLS handshake with the same trust
 * store and host name check, reads OpenSSL's verify result and the certificate the server
 * presented, and closes: it never sends an MQTT byte. It runs on libuv's thread pool (blocking
 * connect with a timeout), and probes of one endpoint are shared: devices that fail against the
 * same host, port and CA file at once wait for one probe, and its result is reused for
 * TLSPROBE_TTL_MS. Loop thread only.
 */
#ifndef ALIGW_TLSPROBE_H
#define ALIGW_TLSPROBE_H

#include <stdbool.h>

#include <uv.h>

#define TLSPROBE_TTL_MS 30000

struct tlsprobe_target {
    const char *host;
    int port;
    const char *ca_file; /* NULL = the system's default trust store */
    bool verify_hostname;
    int timeout_ms; /* for the TCP connect and for the handshake */
};

struct tlsprobe_result {
    /*
     * 0: the handshake and the certificate check pass (the failure was something else);
     * ALIGW_ETLS: the handshake or the certificate check fails, reason says why and what the
     * server presented; a negative errno: the TCP connection itself fails (reason says how).
     */
    int status;
    char reason[384];
};

/* Called on the loop thread; r is borrowed for the call. */
typedef void (*tlsprobe_cb)(void *arg, const struct tlsprobe_result *r);

/* Copies a result for t no older than TLSPROBE_TTL_MS into *r; false if there is none. */
bool tlsprobe_cached(uv_loop_t *loop, const struct tlsprobe_target *t, struct tlsprobe_result *r);

/*
 * Probes t (strings copied), or joins a probe of the same endpoint already running. Returns 0
 * and calls cb(arg, result) once, later, on the loop thread; or a negative error (-ENOMEM, or
 * libuv's) and never calls back.
 */
int tlsprobe_start(uv_loop_t *loop, const struct tlsprobe_target *t, tlsprobe_cb cb, void *arg);

/* Drops every waiter (no more callbacks) and frees cached results once their probes finish. */
void tlsprobe_close(void);

/*
 * The probe itself, blocking (exposed for tests): connects to t and fills *r.
 */
void tlsprobe_run_blocking(const struct tlsprobe_target *t, struct tlsprobe_result *r);

#endif
