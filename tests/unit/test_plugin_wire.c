/* plugin_wire: frames round-trip; a truncated, oversized or malformed frame is refused (these
 * bytes come from a plugin host aligwd does not trust). */
#include "check.h"
#include "plugin_wire.h"

#include <errno.h>
#include <stdlib.h>

int main(void)
{
    struct wire_out w = {0};
    struct wire_in r;
    size_t body = 0, len;

    wire_begin(&w, W_RAW);
    wire_u64(&w, 3);
    wire_i64(&w, -42);
    wire_str(&w, "/pk/dn/user/x");
    wire_bytes(&w, "a\0b", 3);
    wire_str(&w, NULL);
    CHECK_INT(wire_end(&w), 0);

    /* incomplete until the last byte is there */
    for (size_t n = 0; n < w.len; n++)
        CHECK_INT(wire_frame(w.p, n, &body), 0);
    CHECK_INT(wire_frame(w.p, w.len, &body), 1);
    CHECK_INT((long)body, (long)(w.len - 4));
    CHECK(wire_open(&r, w.p + 4, body));
    CHECK_INT(r.type, W_RAW);
    CHECK_INT((long)wire_get_u64(&r), 3);
    CHECK_INT((long)wire_get_i64(&r), -42);
    CHECK_STR(wire_get_str(&r), "/pk/dn/user/x");
    const char *b = wire_get_bytes(&r, &len);
    CHECK(len == 3 && memcmp(b, "a\0b", 3) == 0);
    CHECK_STR(wire_get_str(&r), "");
    CHECK(!r.bad);
    /* reading past the end marks the frame bad and returns zero/empty */
    CHECK_INT((long)wire_get_u64(&r), 0);
    CHECK(r.bad);

    /* a string field holding a NUL is not a string */
    wire_begin(&w, W_LOG);
    wire_bytes(&w, "x\0y", 3);
    CHECK_INT(wire_end(&w), 0);
    CHECK(wire_open(&r, w.p + 4, w.len - 4));
    CHECK_STR(wire_get_str(&r), "");
    CHECK(r.bad);

    /* a length field pointing beyond the frame */
    wire_begin(&w, W_LOG);
    wire_str(&w, "hello");
    CHECK_INT(wire_end(&w), 0);
    w.p[5] = 100; /* the string's length byte */
    CHECK(wire_open(&r, w.p + 4, w.len - 4));
    wire_get_str(&r);
    CHECK(r.bad);

    /* frame lengths: zero and oversized are protocol errors */
    unsigned char hdr[4] = {0};
    CHECK_INT(wire_frame(hdr, 4, &body), -EPROTO);
    uint32_t big = WIRE_MAX_FRAME + 1;
    memcpy(hdr, &big, 4);
    CHECK_INT(wire_frame(hdr, 4, &body), -EPROTO);
    CHECK(!wire_open(&r, "", 0));

    wire_free(&w);
    return check_done();
}
