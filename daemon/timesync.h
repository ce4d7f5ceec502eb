/*
 * timesync: the platform's time over MQTT (aliyun-protocol.md §3.5). One request at a time for
 * the whole gateway, not one per device: when the first device comes online, and then every
 * interval, the gateway asks through one online device (again every few seconds until a first
 * answer) ({"deviceSendTime"} on
 * /ext/ntp/pk/dn/request, QoS 0, never stored: a late request is worthless) and computes the
 * system clock's offset from the four timestamps of the answer. An offset beyond max_skew_ms is
 * logged once as a warning (TLS certificate checks and signed login timestamps depend on the
 * clock) and again when it is back within. Loop thread only.
 */
#ifndef ALIGW_TIMESYNC_H
#define ALIGW_TIMESYNC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

/* Sends payload on topic at QoS 0 through device pk/dn's session now; 0 or a negative error. */
typedef int (*timesync_send_fn)(void *ctx, const char *pk, const char *dn, const char *topic,
                                const char *payload);

struct timesync_opts {
    int interval_s;  /* 0: never ask */
    int max_skew_ms; /* warn above this offset */
    timesync_send_fn send;
    void *ctx;
};

int timesync_start(uv_loop_t *loop, const struct timesync_opts *o);
/* New settings (a reload); the next request follows the new interval. */
void timesync_apply(int interval_s, int max_skew_ms);
void timesync_stop(void);

/* Device pk/dn came online / went away: the gateway asks through an online device. */
void timesync_online(const char *pk, const char *dn);
void timesync_offline(const char *pk, const char *dn);
/* An answer on /ext/ntp/pk/dn/response (untrusted bytes). */
void timesync_response(const char *pk, const char *dn, const void *payload, size_t len);

/* {"synced", "offset_ms", "rtt_ms", "synced_at_ms", "via", "requests", "bad_answers"}; new ref. */
json_t *timesync_status(void);
/* The offset of the system clock from the platform's (platform = system + offset), and
 * whether it is known. */
bool timesync_offset(int64_t *offset_ms);

#endif
