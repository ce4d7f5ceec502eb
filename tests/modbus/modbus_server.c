/*
 * modbus_server: a small Modbus TCP server on libmodbus's server API, for tests and the
 * benchmark. It serves one register map to every slave (unit) id and any number of clients.
 * With -r SLAVE it is instead an RTU slave with that id on a pseudo-terminal: it prints
 * "pty /dev/pts/N" (the path a master opens as its serial line) and answers only SLAVE.
 *
 *   modbus_server [-p PORT] [-a ADDR] [-H ADDR=VALUE,...] [-I ADDR=VALUE,...] [-C ADDR=0|1,...]
 *                 [-T ADDR:MIN_MS[:MAX_MS]] [-c ADDR] [-q] [-r SLAVE]
 *
 * Timestamps for latency measurements (bench/modbus), as uint32 in holding registers ADDR
 * (high word) and ADDR+1 (low word): the wall clock (CLOCK_REALTIME) in ms, modulo 2^32.
 *   -T ADDR:MIN_MS[:MAX_MS]  a ticker: every MIN_MS..MAX_MS ms (uniformly random, so that the
 *                            changes do not lock to a poller's phase) the registers take the
 *                            current time; "changed" this way, a poller sees a new value.
 *   -c ADDR                  a clock: the registers take the current time before every reply,
 *                            so every read returns the time it was served.
 *   -q                       quiet: no "written" lines.
 *
 * PORT 0 (default) picks a free port. When listening it prints "listening PORT". Control on
 * stdin, one command a line:
 *   set ADDR VALUE            holding register
 *   set input ADDR VALUE      input register
 *   set coil ADDR 0|1         coil (also "discrete")
 *   count                     prints "requests N": requests answered so far
 *   silent on|off             RTU: read requests but answer none (a slave gone quiet)
 *   crc on|off                RTU: answer with a corrupted CRC
 *   quit                      (EOF on stdin quits too)
 * and it prints "ok" after each command. When a client writes, it prints "written ADDR VALUE"
 * per register and "written coil ADDR VALUE" per coil. Output is line-buffered.
 */
#include <errno.h>
#include <modbus.h>
#include <pty.h>
#include <termios.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAP_SIZE 10000
#define MAX_CLIENTS 1000

static modbus_mapping_t *map;
static int silent, bad_crc;       /* RTU faults, set from stdin */
static unsigned long long served; /* requests answered, for "count" */

static double now_s(int clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Holding a, a+1 = wall-clock ms mod 2^32, high word first. */
static void put_time(int a)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint32_t ms = (uint32_t)((uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000);
    map->tab_registers[a] = (uint16_t)(ms >> 16);
    map->tab_registers[a + 1] = (uint16_t)(ms & 0xffff);
}

/* Parses "ADDR:MIN_MS[:MAX_MS]"; -1 on a bad spec. */
static int parse_ticker(const char *spec, int *addr, long *min_ms, long *max_ms)
{
    char *end;
    long a = strtol(spec, &end, 0);
    if (*end != ':' || a < 0 || a + 1 >= MAP_SIZE)
        return -1;
    *min_ms = strtol(end + 1, &end, 0);
    *max_ms = *min_ms;
    if (*end == ':')
        *max_ms = strtol(end + 1, &end, 0);
    if (*end || *min_ms < 1 || *max_ms < *min_ms)
        return -1;
    *addr = (int)a;
    return 0;
}

static int set_list(const char *list, int kind)
{
    char *copy = strdup(list), *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *end;
        long a = strtol(tok, &end, 0), v;
        if (*end != '=' || a < 0 || a >= MAP_SIZE)
            return -1;
        v = strtol(end + 1, &end, 0);
        if (*end)
            return -1;
        if (kind == 'H')
            map->tab_registers[a] = (uint16_t)v;
        else if (kind == 'I')
            map->tab_input_registers[a] = (uint16_t)v;
        else
            map->tab_bits[a] = map->tab_input_bits[a] = v ? 1 : 0;
    }
    free(copy);
    return 0;
}

static int command(char *line)
{
    char what[16];
    long a, v;
    if (strncmp(line, "quit", 4) == 0)
        return 1;
    if (strncmp(line, "count", 5) == 0) {
        printf("requests %llu\n", served);
        return 0;
    }
    if (sscanf(line, "silent %15s", what) == 1 || sscanf(line, "crc %15s", what) == 1) {
        *(line[0] == 's' ? &silent : &bad_crc) = strcmp(what, "on") == 0;
        printf("ok\n");
        return 0;
    }
    if (sscanf(line, "set %15s %ld %ld", what, &a, &v) == 3) {
        if (a < 0 || a >= MAP_SIZE)
            goto bad;
        if (strcmp(what, "input") == 0)
            map->tab_input_registers[a] = (uint16_t)v;
        else if (strcmp(what, "coil") == 0 || strcmp(what, "discrete") == 0)
            map->tab_bits[a] = map->tab_input_bits[a] = v ? 1 : 0;
        else
            goto bad;
    } else if (sscanf(line, "set %ld %ld", &a, &v) == 2 && a >= 0 && a < MAP_SIZE) {
        map->tab_registers[a] = (uint16_t)v;
    } else {
        goto bad;
    }
    printf("ok\n");
    return 0;
bad:
    printf("error: %s", line);
    return 0;
}

/* Prints what a write request (function 5, 6, 15, 16) is about to change. */
static void report_write(const uint8_t *q, int hl)
{
    int fn = q[hl], addr = q[hl + 1] << 8 | q[hl + 2];
    if (fn == 6) {
        printf("written %d %d\n", addr, q[hl + 3] << 8 | q[hl + 4]);
    } else if (fn == 16) {
        int n = q[hl + 3] << 8 | q[hl + 4];
        for (int i = 0; i < n && i < 123; i++)
            printf("written %d %d\n", addr + i, q[hl + 6 + 2 * i] << 8 | q[hl + 7 + 2 * i]);
    } else if (fn == 5) {
        printf("written coil %d %d\n", addr, q[hl + 3] == 0xff ? 1 : 0);
    } else if (fn == 15) {
        int n = q[hl + 3] << 8 | q[hl + 4];
        for (int i = 0; i < n && i < 1968; i++)
            printf("written coil %d %d\n", addr + i, (q[hl + 6 + i / 8] >> (i % 8)) & 1);
    }
}

/* Slave id `slave` on a pseudo-terminal: the master side is ours, the slave side is the line. */
static int serve_rtu(int slave, int quiet)
{
    int master, pts;
    char name[256], line[256];
    uint8_t query[MODBUS_RTU_MAX_ADU_LENGTH];
    struct termios tio;
    modbus_t *ctx;

    if (openpty(&master, &pts, name, NULL, NULL) < 0) {
        fprintf(stderr, "modbus_server: openpty: %s\n", strerror(errno));
        return 1;
    }
    /* raw line until the master configures it; pts stays open so the master side never sees a
     * hang-up between the client's opens */
    tcgetattr(pts, &tio);
    cfmakeraw(&tio);
    tcsetattr(pts, TCSANOW, &tio);
    ctx = modbus_new_rtu("/dev/null", 9600, 'N', 8, 1); /* a frame codec: we own the fd */
    if (!ctx)
        return 1;
    modbus_set_slave(ctx, slave);
    modbus_set_socket(ctx, master);
    printf("pty %s\n", name);
    for (;;) {
        fd_set rd;
        FD_ZERO(&rd);
        FD_SET(master, &rd);
        FD_SET(STDIN_FILENO, &rd);
        if (select(master + 1, &rd, NULL, NULL, NULL) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (FD_ISSET(STDIN_FILENO, &rd) && (!fgets(line, sizeof line, stdin) || command(line)))
            break;
        if (!FD_ISSET(master, &rd))
            continue;
        int n = modbus_receive(ctx, query);
        if (n == 0) {
            /* another slave's request: libmodbus then ignores the next frame as that slave's
             * answer, but no other slave lives on this line: start afresh */
            modbus_free(ctx);
            if (!(ctx = modbus_new_rtu("/dev/null", 9600, 'N', 8, 1)))
                return 1;
            modbus_set_slave(ctx, slave);
            modbus_set_socket(ctx, master);
            continue;
        }
        if (n < 0) { /* a bad frame, or a timeout mid-frame */
            modbus_flush(ctx);
            continue;
        }
        if (silent)
            continue;
        if (bad_crc) { /* a reply of the right length whose CRC cannot match */
            uint8_t r[MODBUS_RTU_MAX_ADU_LENGTH] = {query[0], query[1]};
            int fn = query[1], count = query[4] << 8 | query[5], len;
            if (fn == 3 || fn == 4 || fn == 1 || fn == 2) {
                r[2] = (uint8_t)(fn <= 2 ? (count + 7) / 8 : 2 * count);
                len = 3 + r[2];
            } else { /* writes echo address and value/count */
                memcpy(r, query, 6);
                len = 6;
            }
            r[len] = 0xde;
            r[len + 1] = 0xad;
            if (write(master, r, (size_t)len + 2) < 0)
                break;
            continue;
        }
        if (!quiet)
            report_write(query, modbus_get_header_length(ctx));
        modbus_reply(ctx, query, n, map);
    }
    modbus_free(ctx);
    close(pts);
    close(master);
    return 0;
}

int main(int argc, char **argv)
{
    const char *addr = "127.0.0.1";
    int port = 0, opt, server, maxfd, tick_addr = -1, clock_addr = -1, quiet = 0, rtu_slave = 0;
    long tick_min = 0, tick_max = 0;
    double next_tick = 0;
    modbus_t *ctx;
    fd_set all;
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    uint8_t query[MODBUS_TCP_MAX_ADU_LENGTH];
    char line[256];

    setvbuf(stdout, NULL, _IOLBF, 0);
    map = modbus_mapping_new(MAP_SIZE, MAP_SIZE, MAP_SIZE, MAP_SIZE);
    if (!map)
        return 1;
    while ((opt = getopt(argc, argv, "p:a:H:I:C:T:c:qr:")) != -1) {
        switch (opt) {
        case 'r':
            rtu_slave = atoi(optarg);
            if (rtu_slave < 1 || rtu_slave > 247) {
                fprintf(stderr, "modbus_server: bad slave id %s\n", optarg);
                return 2;
            }
            break;
        case 'p':
            port = atoi(optarg);
            break;
        case 'a':
            addr = optarg;
            break;
        case 'H':
        case 'I':
        case 'C':
            if (set_list(optarg, opt) < 0) {
                fprintf(stderr, "modbus_server: bad list %s\n", optarg);
                return 2;
            }
            break;
        case 'T':
            if (parse_ticker(optarg, &tick_addr, &tick_min, &tick_max) < 0) {
                fprintf(stderr, "modbus_server: bad ticker %s (ADDR:MIN_MS[:MAX_MS])\n", optarg);
                return 2;
            }
            break;
        case 'c':
            clock_addr = atoi(optarg);
            if (clock_addr < 0 || clock_addr + 1 >= MAP_SIZE) {
                fprintf(stderr, "modbus_server: bad clock address %s\n", optarg);
                return 2;
            }
            break;
        case 'q':
            quiet = 1;
            break;
        default:
            fprintf(stderr, "usage: modbus_server [-p PORT] [-a ADDR] [-H|-I|-C ADDR=VALUE,...] "
                            "[-T ADDR:MIN_MS[:MAX_MS]] [-c ADDR] [-q]\n");
            return 2;
        }
    }
    if (rtu_slave > 0)
        return serve_rtu(rtu_slave, quiet);
    ctx = modbus_new_tcp(addr, port);
    if (!ctx)
        return 1;
    server = modbus_tcp_listen(ctx, 64);
    if (server < 0 || getsockname(server, (struct sockaddr *)&sa, &sl) < 0) {
        fprintf(stderr, "modbus_server: listen: %s\n", modbus_strerror(errno));
        return 1;
    }
    printf("listening %d\n", ntohs(sa.sin_port));
    srand((unsigned)getpid());
    if (tick_addr >= 0) {
        put_time(tick_addr);
        next_tick = now_s(CLOCK_MONOTONIC) + tick_min / 1e3;
    }

    FD_ZERO(&all);
    FD_SET(server, &all);
    FD_SET(STDIN_FILENO, &all);
    maxfd = server;
    for (;;) {
        fd_set rd = all;
        struct timeval tv, *tvp = NULL;
        if (tick_addr >= 0) {
            double t = now_s(CLOCK_MONOTONIC);
            if (t >= next_tick) {
                put_time(tick_addr);
                next_tick = t + (tick_min + (tick_max > tick_min ? (double)(rand() % 1000) / 1000 *
                                                                       (double)(tick_max - tick_min)
                                                                 : 0)) /
                                    1e3;
            }
            double w = next_tick - t;
            if (w < 0)
                w = 0;
            tv.tv_sec = (time_t)w;
            tv.tv_usec = (suseconds_t)((w - (double)tv.tv_sec) * 1e6);
            tvp = &tv;
        }
        if (select(maxfd + 1, &rd, NULL, NULL, tvp) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (FD_ISSET(STDIN_FILENO, &rd)) {
            if (!fgets(line, sizeof line, stdin) || command(line))
                break;
        }
        for (int fd = 0; fd <= maxfd; fd++) {
            if (fd == STDIN_FILENO || !FD_ISSET(fd, &rd))
                continue;
            if (fd == server) {
                int c = accept(server, NULL, NULL);
                if (c >= 0 && c < FD_SETSIZE) {
                    FD_SET(c, &all);
                    if (c > maxfd)
                        maxfd = c;
                } else if (c >= 0) {
                    close(c);
                }
                continue;
            }
            modbus_set_socket(ctx, fd);
            int n = modbus_receive(ctx, query);
            if (n > 0) {
                if (!quiet)
                    report_write(query, modbus_get_header_length(ctx));
                if (clock_addr >= 0)
                    put_time(clock_addr);
                modbus_reply(ctx, query, n, map);
                served++;
            } else if (n < 0) {
                close(fd);
                FD_CLR(fd, &all);
            }
        }
    }
    close(server);
    modbus_free(ctx);
    modbus_mapping_free(map);
    return 0;
}
