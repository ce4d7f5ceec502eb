/*
 * fuzz_ipc_request: the local API's input path as the daemon runs it: bytes split into chunks
 * go through the line framer, each line through the parser and validator, and every outcome is
 * turned into a response line. Checks beyond "no crash": each response is one line of valid JSON
 * ending in '\n', a successful parse has an id, and an error always has a message.
 */
#include "ipc_request.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void check_line(char *s, size_t n)
{
    if (!s)
        return; /* ENOMEM only */
    if (n == 0 || s[n - 1] != '\n' || memchr(s, '\n', n - 1))
        abort();
    json_t *j = json_loadb(s, n - 1, 0, NULL);
    if (!j || !json_is_object(j) || !json_object_get(j, "ok"))
        abort();
    json_decref(j);
    free(s);
}

static void on_line(void *ctx, const char *line, size_t len, bool too_long)
{
    size_t n = 0;
    if (too_long) {
        json_t *id = ipc_request_peek_id(line, len);
        char *s = ipc_response_error(id, IPC_ERR_LINE_TOO_LONG, "line too long", &n);
        check_line(s, n);
        json_decref(id);
        return;
    }
    struct ipc_limits lim = {.max_payload = 512, .now_ms = 1700000000000LL};
    struct ipc_request req;
    struct ipc_error err;
    if (ipc_request_parse(line, len, &lim, &req, &err) == 0) {
        if (!req.id)
            abort();
        if (req.op == IPC_OP_WATCH) {
            ipc_watch_matches(&req.u.watch, IPC_EV_MESSAGE, "pk/dn", "/pk/dn/user/x");
            ipc_watch_matches(&req.u.watch, IPC_EV_STATE, "a/b", NULL);
            for (size_t i = 0; i < req.u.watch.n_topics; i++)
                ipc_topic_match(req.u.watch.topics[i], "/sys/pk/dn/thing/service/property/set");
        }
        if (req.op == IPC_OP_PUBLISH && req.u.publish.payload_len > 512)
            abort();
        char *s = ipc_response_ok(req.id, json_pack("{s:s}", "op", ipc_op_name(req.op)), &n);
        check_line(s, n);
        ipc_request_free(&req);
    } else {
        if (!err.message[0])
            abort();
        char *s = ipc_response_error(err.id, err.code, err.message, &n);
        check_line(s, n);
        ipc_error_free(&err);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t chunk = 1 + data[0] % 64;
    size_t max_line = data[1] & 1 ? 4096 : 64 + data[1];
    struct ipc_framer f;
    ipc_framer_init(&f, max_line);
    data += 2;
    size -= 2;
    while (size > 0) {
        size_t n = size < chunk ? size : chunk;
        ipc_framer_feed(&f, (const char *)data, n, on_line, NULL);
        data += n;
        size -= n;
    }
    ipc_framer_free(&f);
    return 0;
}
