/*
 * netwatch: route verdicts from the kernel, renewed on NETLINK_ROUTE events (see netwatch.h).
 *
 * The socket joins the link, address and route groups of IPv4 and IPv6. Messages are not
 * interpreted beyond "something changed": a verdict asks the kernel again rather than mirroring
 * its tables here, so policy routing, VRFs and namespaces are judged exactly as a connect()
 * would be. An overrun (ENOBUFS: events were lost) counts as a change. The settle timer runs
 * from the first event of a burst, so a route replaced (deleted, then added) within it changes
 * nothing, and a storm of events still ends in a verdict within NETWATCH_SETTLE_MS.
 */
#include "netwatch.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define CACHE_SLOTS 16

struct verdict {
    char host[256];
    uint64_t gen; /* the generation it was judged in (0 = empty) */
    bool reachable;
};

static struct {
    netwatch_changed_fn changed;
    void *arg;
    int fd;
    uv_poll_t poll;
    uv_timer_t settle;
    bool running, settling;
    uint64_t gen, changes;
    struct verdict cache[CACHE_SLOTS];
    unsigned next_slot;
} N = {.fd = -1};

static bool probe(int family, const void *addr)
{
    struct sockaddr_storage ss;
    socklen_t len;

    memset(&ss, 0, sizeof(ss));
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_port = htons(443);
        memcpy(&a->sin_addr, addr, sizeof(a->sin_addr));
        len = sizeof(*a);
    } else {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(443);
        memcpy(&a->sin6_addr, addr, sizeof(a->sin6_addr));
        len = sizeof(*a);
    }
    int s = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        /* No socket to ask with: EMFILE is not the network's fault; without IPv6 the answer is
         * that family's "no". */
        return family == AF_INET || errno != EAFNOSUPPORT;
    int rc = connect(s, (struct sockaddr *)&ss, len), err = errno;
    close(s);
    return rc == 0 || (err != ENETUNREACH && err != EHOSTUNREACH && err != EADDRNOTAVAIL);
}

static bool judge(const char *host)
{
    unsigned char a[16];

    if (strcmp(host, "localhost") == 0)
        host = "127.0.0.1";
    if (inet_pton(AF_INET, host, a) == 1)
        return probe(AF_INET, a);
    if (inet_pton(AF_INET6, host, a) == 1)
        return probe(AF_INET6, a);
    /* A name: a route to the public internet, of either family. The addresses asked about
     * are AliDNS's public resolvers (nothing is sent to them): a LAN-only box has no route
     * there, while documentation prefixes may be a lab's own LAN (this project's CI network
     * is 192.0.2.0/24). */
    inet_pton(AF_INET, "223.5.5.5", a);
    if (probe(AF_INET, a))
        return true;
    inet_pton(AF_INET6, "2400:3200::1", a);
    return probe(AF_INET6, a);
}

bool netwatch_reachable(const char *host)
{
    if (!N.running || !host || !*host)
        return true;
    for (unsigned i = 0; i < CACHE_SLOTS; i++)
        if (N.cache[i].gen == N.gen && strcmp(N.cache[i].host, host) == 0)
            return N.cache[i].reachable;
    struct verdict *v = &N.cache[N.next_slot++ % CACHE_SLOTS];
    snprintf(v->host, sizeof(v->host), "%s", host);
    v->gen = N.gen;
    v->reachable = judge(host);
    return v->reachable;
}

static void on_settled(uv_timer_t *t)
{
    (void)t;
    N.settling = false;
    N.gen++; /* every cached verdict is stale */
    N.changes++;
    if (N.changed)
        N.changed(N.arg);
}

static void on_readable(uv_poll_t *p, int status, int events)
{
    char buf[16384] __attribute__((aligned(NLMSG_ALIGNTO)));
    bool changed = false;

    (void)p;
    (void)events;
    if (status < 0)
        return;
    for (;;) {
        ssize_t n = recv(N.fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n < 0) {
            if (errno == ENOBUFS)
                changed = true; /* the kernel dropped events: judge again */
            else if (errno == EINTR)
                continue;
            break;
        }
        if (n == 0)
            break;
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n);
             h = NLMSG_NEXT(h, n)) {
            switch (h->nlmsg_type) {
            case RTM_NEWLINK:
            case RTM_DELLINK:
            case RTM_NEWADDR:
            case RTM_DELADDR:
            case RTM_NEWROUTE:
            case RTM_DELROUTE:
                changed = true;
                break;
            default:
                break;
            }
        }
    }
    if (changed && !N.settling) {
        N.settling = true;
        uv_timer_start(&N.settle, on_settled, NETWATCH_SETTLE_MS, 0);
    }
}

int netwatch_start(uv_loop_t *loop, netwatch_changed_fn changed, void *arg)
{
    struct sockaddr_nl sa;
    int fd, rc;

    if (N.running)
        return 0;
    fd = socket(AF_NETLINK, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0)
        return -errno;
    memset(&sa, 0, sizeof(sa));
    sa.nl_family = AF_NETLINK;
    sa.nl_groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE |
                   RTMGRP_IPV6_ROUTE;
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        rc = -errno;
        close(fd);
        return rc;
    }
    memset(N.cache, 0, sizeof(N.cache));
    N.changed = changed;
    N.arg = arg;
    N.fd = fd;
    N.gen = 1;
    N.changes = 0;
    N.settling = false;
    if ((rc = uv_poll_init(loop, &N.poll, fd)) < 0) {
        close(fd);
        N.fd = -1;
        return rc;
    }
    uv_timer_init(loop, &N.settle);
    uv_unref((uv_handle_t *)&N.settle);
    uv_poll_start(&N.poll, UV_READABLE, on_readable);
    uv_unref((uv_handle_t *)&N.poll);
    N.running = true;
    return 0;
}

static void on_poll_closed(uv_handle_t *h)
{
    (void)h;
    if (N.fd >= 0)
        close(N.fd);
    N.fd = -1;
}

void netwatch_stop(void)
{
    if (!N.running)
        return;
    N.running = false;
    uv_timer_stop(&N.settle);
    uv_close((uv_handle_t *)&N.settle, NULL);
    uv_poll_stop(&N.poll);
    uv_close((uv_handle_t *)&N.poll, on_poll_closed);
}

bool netwatch_running(void)
{
    return N.running;
}

uint64_t netwatch_changes(void)
{
    return N.changes;
}
