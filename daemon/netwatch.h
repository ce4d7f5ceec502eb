/*
 * netwatch: whether this box can route to an endpoint at all, kept current from the kernel's
 * routing events. A NETLINK_ROUTE socket on the loop hears links, addresses and routes come
 * and go; a burst of such events is settled for NETWATCH_SETTLE_MS, then the verdicts are
 * renewed and the owner is called back once. A verdict is the kernel's own route lookup: a UDP
 * socket connect()ed to the address (no packet leaves), which fails with ENETUNREACH when no
 * route matches. An IP literal is looked up as itself; a host name (not resolved here: DNS
 * needs the network being judged) by a route to the public internet of either family. Loop thread
 * only.
 */
#ifndef ALIGW_NETWATCH_H
#define ALIGW_NETWATCH_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#define NETWATCH_SETTLE_MS 300

typedef void (*netwatch_changed_fn)(void *arg);

/* Starts watching; changed is called on the loop after each settled burst of events. 0, or a
 * negative errno when the socket cannot be had (a sandbox without AF_NETLINK): then every
 * endpoint counts as reachable, as before netwatch. */
int netwatch_start(uv_loop_t *loop, netwatch_changed_fn changed, void *arg);
void netwatch_stop(void);
bool netwatch_running(void);
/* Whether the kernel has a route to host now (true when not running). Cached per host until
 * the next settled change. */
bool netwatch_reachable(const char *host);
/* Settled changes seen since the start. */
uint64_t netwatch_changes(void);

#endif
