/*
 * test_ipc: the socket server on a real libuv loop with a real Unix socket in a temp dir, driven
 * by plain client sockets: socket mode, hello, pipelined requests answered out of order, an
 * oversized line refused while the connection survives, bad JSON, a late reply after the client
 * left, watch filters, a watcher that does not read (events dropped, bounded, then the notice),
 * and, when run as root, peers refused or denied admin ops by SO_PEERCRED.
 */
#include "ipc.h"

#include "check.h"
#include "errors.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uv_loop_t *loop;
static struct ipc_server *srv;
static char dir[64], sock[128];
static struct ipc_reply *deferred[16];
static int n_deferred;

static void handler(struct ipc_server *s, struct ipc_reply *r, const struct ipc_request *req,
                    void *data)
{
    switch (req->op) {
    case IPC_OP_STATUS: /* answered later, like a request waiting for a commit */
        deferred[n_deferred++] = r;
        break;
    case IPC_OP_DEVICE:
        ipc_reply_ok(r, json_pack("{s:s}", "device", req->dev.key));
        break;
    case IPC_OP_RELOAD:
        ipc_reply_ok(r, NULL);
        break;
    default:
        ipc_reply_errno(r, ALIGW_ENODEVICE, "%s", req->dev.key);
    }
}

static int client(void)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strcpy(sa.sun_path, sock);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        perror("connect");
        close(fd);
        return -1;
    }
    fcntl(fd, F_SETFL, O_NONBLOCK);
    return fd;
}

static void pump(int ms)
{
    for (int i = 0; i < ms; i++) {
        uv_run(loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
}

static void send_all(int fd, const char *s, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w > 0) {
            s += w;
            n -= (size_t)w;
        } else {
            uv_run(loop, UV_RUN_NOWAIT);
        }
    }
}

static void send_str(int fd, const char *s)
{
    send_all(fd, s, strlen(s));
}

/* Reads one line (up to 2 s), pumping the loop. Returns a parsed object (caller decrefs). */
static char pending[1 << 20];
static size_t pending_len;
static int pending_fd = -1;

static json_t *read_line(int fd)
{
    if (pending_fd != fd) {
        pending_len = 0;
        pending_fd = fd;
    }
    for (int i = 0; i < 2000; i++) {
        char *nl = memchr(pending, '\n', pending_len);
        if (nl) {
            size_t n = (size_t)(nl - pending);
            json_t *j = json_loadb(pending, n, 0, NULL);
            memmove(pending, nl + 1, pending_len - n - 1);
            pending_len -= n + 1;
            return j;
        }
        uv_run(loop, UV_RUN_NOWAIT);
        ssize_t r = read(fd, pending + pending_len, sizeof(pending) - pending_len);
        if (r > 0)
            pending_len += (size_t)r;
        else if (r == 0)
            return NULL;
        else
            usleep(1000);
    }
    return NULL;
}

static long long id_of(json_t *j)
{
    return json_integer_value(json_object_get(j, "id"));
}

static const char *err_code(json_t *j)
{
    return json_string_value(json_object_get(json_object_get(j, "error"), "code"));
}

static void test_basics(void)
{
    struct stat st;
    CHECK_INT(stat(sock, &st), 0);
    CHECK(S_ISSOCK(st.st_mode));
    CHECK_INT(st.st_mode & 0777, 0660);

    int fd = client();
    CHECK(fd >= 0);
    send_str(fd, "{\"id\":1,\"op\":\"hello\"}\n");
    json_t *j = read_line(fd);
    CHECK_INT(id_of(j), 1);
    CHECK(json_is_true(json_object_get(j, "ok")));
    CHECK_INT(json_integer_value(json_object_get(json_object_get(j, "result"), "protocol")), 1);
    json_decref(j);

    /* pipelined: the deferred status (2) is answered after 3 and 4 */
    send_str(fd, "{\"id\":2,\"op\":\"status\"}\n{\"id\":3,\"op\":\"device\",\"device\":\"pk/a\"}"
                 "\n{\"id\":4,\"op\":\"stats\"}\n");
    j = read_line(fd);
    CHECK_INT(id_of(j), 3);
    CHECK_STR(json_string_value(json_object_get(json_object_get(j, "result"), "device")), "pk/a");
    json_decref(j);
    j = read_line(fd);
    CHECK_INT(id_of(j), 4);
    CHECK_STR(err_code(j), "no_device");
    json_decref(j);
    CHECK_INT(n_deferred, 1);
    ipc_reply_ok(deferred[--n_deferred], json_pack("{s:s}", "state", "fine"));
    j = read_line(fd);
    CHECK_INT(id_of(j), 2);
    CHECK(json_is_true(json_object_get(j, "ok")));
    json_decref(j);

    /* an oversized line (max_line 1024) is refused, the connection survives */
    size_t big = 200000;
    char *line = malloc(big + 2);
    memset(line, 'x', big);
    memcpy(line, "{\"id\":77,\"op\":\"publish\",\"payload\":\"", 36);
    line[big] = '\n';
    send_all(fd, line, big + 1);
    free(line);
    send_str(fd, "{\"id\":78,\"op\":\"device\",\"device\":\"pk/b\"}\n");
    j = read_line(fd);
    CHECK_INT(id_of(j), 77);
    CHECK_STR(err_code(j), "line_too_long");
    json_decref(j);
    j = read_line(fd);
    CHECK_INT(id_of(j), 78);
    CHECK(json_is_true(json_object_get(j, "ok")));
    json_decref(j);

    /* bad JSON, then an invalid field: both answered, the connection survives */
    send_str(fd, "{\"id\":5,\"op\n{\"id\":6,\"op\":\"device\",\"device\":\"nope\"}\n"
                 "{\"id\":7,\"op\":\"device\",\"device\":\"pk/c\"}\n");
    j = read_line(fd);
    CHECK_STR(err_code(j), "bad_json");
    CHECK(json_is_null(json_object_get(j, "id")));
    json_decref(j);
    j = read_line(fd);
    CHECK_INT(id_of(j), 6);
    CHECK_STR(err_code(j), "bad_request");
    CHECK(strstr(json_string_value(json_object_get(json_object_get(j, "error"), "message")),
                 "device:") != NULL);
    json_decref(j);
    j = read_line(fd);
    CHECK_INT(id_of(j), 7);
    json_decref(j);

    /* a reply completed after the client left is dropped safely */
    send_str(fd, "{\"id\":8,\"op\":\"status\"}\n");
    for (int i = 0; i < 1000 && n_deferred == 0; i++)
        pump(1);
    CHECK_INT(n_deferred, 1);
    struct ipc_reply *late = deferred[--n_deferred];
    CHECK(ipc_reply_connected(late));
    close(fd);
    pump(50);
    CHECK(!ipc_reply_connected(late));
    ipc_reply_ok(late, json_object());
    struct ipc_stats s;
    ipc_server_stats(srv, &s);
    CHECK_INT(s.connections, 0);
}

static void test_watch(void)
{
    int a = client(), b = client();
    send_str(a, "{\"id\":1,\"op\":\"watch\",\"devices\":[\"pk/a\"],\"kinds\":[\"message\"]}\n");
    send_str(b, "{\"id\":1,\"op\":\"watch\"}\n");
    json_t *j = read_line(a);
    CHECK(json_is_true(json_object_get(j, "ok")));
    json_decref(j);
    j = read_line(b);
    CHECK(json_is_true(json_object_get(j, "ok")));
    json_decref(j);

    json_t *ev =
        json_pack("{s:s,s:s,s:s}", "device", "pk/a", "topic", "/pk/a/user/x", "payload", "1");
    CHECK_INT(ipc_broadcast(srv, IPC_EV_MESSAGE, "pk/a", "/pk/a/user/x", ev), 2);
    json_decref(ev);
    ev = json_pack("{s:s,s:s}", "device", "pk/b", "payload", "2");
    CHECK_INT(ipc_broadcast(srv, IPC_EV_MESSAGE, "pk/b", "/pk/b/user/x", ev), 1);
    json_decref(ev);
    ev = json_pack("{s:s,s:s}", "device", "pk/a", "state", "online");
    CHECK_INT(ipc_broadcast(srv, IPC_EV_STATE, "pk/a", NULL, ev), 1);
    json_decref(ev);

    j = read_line(a);
    CHECK_STR(json_string_value(json_object_get(j, "event")), "message");
    CHECK_STR(json_string_value(json_object_get(j, "payload")), "1");
    json_decref(j);
    j = read_line(b);
    CHECK_STR(json_string_value(json_object_get(j, "payload")), "1");
    json_decref(j);
    j = read_line(b);
    CHECK_STR(json_string_value(json_object_get(j, "payload")), "2");
    json_decref(j);
    j = read_line(b);
    CHECK_STR(json_string_value(json_object_get(j, "event")), "state");
    json_decref(j);
    /* a watching connection still takes requests */
    send_str(a, "{\"id\":9,\"op\":\"device\",\"device\":\"pk/a\"}\n");
    j = read_line(a);
    CHECK_INT(id_of(j), 9);
    json_decref(j);
    close(a);
    close(b);
    pump(20);

    /* a watcher that does not read: events beyond the limit are dropped, memory stays bounded */
    ipc_server_set_watch_limit(srv, 8192);
    int c = client();
    int rcv = 4096;
    setsockopt(c, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
    send_str(c, "{\"id\":1,\"op\":\"watch\"}\n");
    j = read_line(c);
    json_decref(j);
    char blob[1000];
    memset(blob, 'z', sizeof(blob) - 1);
    blob[sizeof(blob) - 1] = '\0';
    int sent = 0, total = 5000;
    for (int i = 0; i < total; i++) {
        ev = json_pack("{s:s,s:i,s:s}", "device", "pk/a", "n", i, "blob", blob);
        int n = ipc_broadcast(srv, IPC_EV_MESSAGE, "pk/a", "/pk/a/user/x", ev);
        json_decref(ev);
        sent += n;
        uv_run(loop, UV_RUN_NOWAIT);
    }
    struct ipc_stats s;
    ipc_server_stats(srv, &s);
    CHECK(s.events_dropped > 0);
    CHECK_INT((long long)s.events_dropped + sent, total);
    CHECK(sent < total / 2); /* the bound held: most were dropped, not queued */
    /* now read everything: the events that were queued, then the dropped notice */
    int got = 0;
    long long dropped = -1;
    while ((j = read_line(c)) != NULL) {
        const char *e = json_string_value(json_object_get(j, "event"));
        if (e && strcmp(e, "dropped") == 0) {
            dropped = json_integer_value(json_object_get(j, "count"));
            json_decref(j);
            break;
        }
        got++;
        json_decref(j);
    }
    CHECK_INT(got, sent);
    CHECK_INT(dropped, (long long)s.events_dropped);
    close(c);
    pump(20);
}

/* Run as root only: a child with another uid connects. Returns what it read as an exit code. */
static int child_as(uid_t uid, const char *request)
{
    pid_t pid = fork();
    if (pid == 0) {
        if (setgid(uid) < 0 || setuid(uid) < 0)
            _exit(90);
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        strcpy(sa.sun_path, sock);
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
            _exit(91);
        if (request && write(fd, request, strlen(request)) < 0)
            _exit(92);
        char buf[512];
        ssize_t n = 0, r;
        while (n < (ssize_t)sizeof(buf) - 1 && (r = read(fd, buf + n, sizeof(buf) - 1 - n)) > 0) {
            n += r;
            if (memchr(buf, '\n', (size_t)n))
                break;
        }
        buf[n > 0 ? n : 0] = '\0';
        if (strstr(buf, "\"forbidden\"")) {
            /* refused at connect: the server closes; a forbidden op leaves it open */
            struct timeval tv = {.tv_usec = 300000};
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
            r = read(fd, buf, sizeof(buf));
            _exit(r == 0 ? 10 : 11);
        }
        _exit(strstr(buf, "\"ok\":true") ? 20 : 30);
    }
    int status = 0;
    for (int i = 0; i < 3000; i++) {
        pump(1);
        if (waitpid(pid, &status, WNOHANG) == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return -1;
}

static void test_peers(void)
{
    if (geteuid() != 0) {
        printf("not root: skipping the peer credential checks\n");
        return;
    }
    chmod(dir, 0755);
    chmod(sock, 0666); /* let file permissions through so SO_PEERCRED decides */
    /* 65534 (nobody) is allowed but not admin; 65533 is not allowed at all */
    CHECK_INT(child_as(65533, NULL), 10);
    CHECK_INT(child_as(65534, "{\"id\":1,\"op\":\"device\",\"device\":\"pk/a\"}\n"), 20);
    CHECK_INT(child_as(65534, "{\"id\":1,\"op\":\"reload\"}\n"), 11);
    struct ipc_stats s;
    ipc_server_stats(srv, &s);
    CHECK_INT(s.refused, 1);
}

static int closed;
static void on_closed(void *data)
{
    closed = 1;
}

int main(void)
{
    static char *allow[] = {"65534"}, *admin[] = {"0"};
    struct config cfg = {0};
    loop = uv_default_loop();
    strcpy(dir, "/tmp/aligw-test-ipc-XXXXXX");
    CHECK(mkdtemp(dir) != NULL);
    snprintf(sock, sizeof(sock), "%s/aligw.sock", dir);
    cfg.api.socket = sock;
    cfg.api.max_line = 1024;
    cfg.api.allow_users = allow;
    cfg.api.n_allow_users = 1;
    cfg.api.admin_users = admin;
    cfg.api.n_admin_users = 1;

    /* a stale socket file (nobody listening) is replaced */
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strcpy(sa.sun_path, sock);
    CHECK_INT(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(fd);

    CHECK_INT(ipc_server_init(&srv, loop, &cfg, handler, NULL), 0);
    CHECK_INT(ipc_server_start(srv), 0);

    /* a second server on the same path refuses: somebody listens */
    struct ipc_server *other;
    CHECK_INT(ipc_server_init(&other, loop, &cfg, handler, NULL), 0);
    CHECK_INT(ipc_server_start(other), -EADDRINUSE);
    ipc_server_close(other, NULL, NULL);
    pump(5);

    test_basics();
    test_watch();
    test_peers();

    ipc_server_close(srv, on_closed, NULL);
    pump(20);
    CHECK(closed);
    CHECK(access(sock, F_OK) < 0);
    rmdir(dir);
    uv_loop_close(loop);
    return check_done();
}
